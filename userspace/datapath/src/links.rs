//! `WEIR_LINKS`: the addresses routed to each pod link, which are the only
//! source addresses the kernel accepts from that link.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, MapData};
use weir_common::{
    addr::Addr,
    link::{LinkInfo, LINK_ADDRS_MAX},
    maps::{LINKS, LINKS_MAX_ENTRIES},
};

use crate::{error::update_error, pinned, pins::PinLayout, DatapathError};

/// The pinned link map.
pub struct LinkAddrs {
    map: HashMap<MapData, u32, LinkInfo>,
}

impl LinkAddrs {
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self { map: pinned::hash(layout, LINKS)? })
    }

    /// Sets the addresses of `ifindex` (sorted, so the value is stable);
    /// an empty set removes the link.
    pub fn set(&mut self, ifindex: u32, addrs: &[IpAddr]) -> Result<(), DatapathError> {
        if addrs.is_empty() {
            return self.remove(ifindex);
        }
        if addrs.len() > LINK_ADDRS_MAX {
            return Err(DatapathError::LinkAddrsFull { ifindex, count: addrs.len(), max: LINK_ADDRS_MAX });
        }
        let mut sorted = addrs.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut info = LinkInfo { count: sorted.len() as u32, ..LinkInfo::default() };
        for (slot, a) in info.addrs.iter_mut().zip(&sorted) {
            *slot = Addr::from(*a);
        }
        if self.map.get(&ifindex, 0).ok() == Some(info) {
            return Ok(());
        }
        self.map
            .insert(ifindex, info, 0)
            .map_err(|source| update_error(LINKS, LINKS_MAX_ENTRIES, || format!("pod link {ifindex}"), source))
    }

    /// Forgets `ifindex`.
    pub fn remove(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        match self.map.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(DatapathError::Map { name: LINKS, source }),
        }
    }

    /// Every link and its addresses.
    pub fn all(&self) -> BTreeMap<u32, Vec<IpAddr>> {
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(ifindex, info)| (ifindex, info.addrs[..(info.count as usize).min(LINK_ADDRS_MAX)].iter().map(|a| IpAddr::from(*a)).collect()))
            .collect()
    }
}
