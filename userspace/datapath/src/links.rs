//! `WEIR_LINKS` (pod link → the addresses routed to it) and
//! `WEIR_POD_ADDRS` (address → its pod link): the only source addresses
//! the kernel accepts from a pod link, and the addresses a packet from
//! outside the node may never claim. Written in an order where a lookup
//! meets the old or the new owner of an address, never nothing while it
//! stays on its link. A link that goes loses its learned frame header
//! (`WEIR_LINK_MACS`, the kernel's) too.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, MapData};
use weir_common::{
    addr::Addr,
    link::{LinkInfo, LinkMacs, LINK_ADDRS_MAX},
    maps::{LINKS, LINKS_MAX_ENTRIES, LINK_MACS, POD_ADDRS, POD_ADDRS_MAX_ENTRIES},
};

use crate::{error::{is_missing, update_error}, pinned, pins::PinLayout, DatapathError};

/// The pinned link maps.
pub struct LinkAddrs {
    map: HashMap<MapData, u32, LinkInfo>,
    by_addr: HashMap<MapData, Addr, u32>,
    macs: HashMap<MapData, u32, LinkMacs>,
}

fn addrs_of(info: &LinkInfo) -> Vec<Addr> {
    info.addrs[..(info.count as usize).min(LINK_ADDRS_MAX)].to_vec()
}

impl LinkAddrs {
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self { map: pinned::hash(layout, LINKS)?, by_addr: pinned::hash(layout, POD_ADDRS)?, macs: pinned::hash(layout, LINK_MACS)? })
    }

    /// Forgets the addresses `old` of `ifindex` that are not in `keep`
    /// (unless another link owns them by now).
    fn drop_addrs(&mut self, ifindex: u32, old: &[Addr], keep: &[Addr]) -> Result<(), DatapathError> {
        for a in old.iter().filter(|a| !keep.contains(a)) {
            if self.by_addr.get(a, 0).ok() == Some(ifindex) {
                match self.by_addr.remove(a) {
                    Ok(()) => {}
                    Err(e) if is_missing(&e) => {}
                    Err(source) => return Err(DatapathError::Map { name: POD_ADDRS, source }),
                }
            }
        }
        Ok(())
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
        let old = self.map.get(&ifindex, 0).ok();
        if old == Some(info) && addrs_of(&info).iter().all(|a| self.by_addr.get(a, 0).ok() == Some(ifindex)) {
            return Ok(());
        }
        let new = addrs_of(&info);
        for a in &new {
            self.by_addr
                .insert(a, ifindex, 0)
                .map_err(|source| update_error(POD_ADDRS, POD_ADDRS_MAX_ENTRIES, || format!("address {} of pod link {ifindex}", std::net::IpAddr::from(*a)), source))?;
        }
        self.map
            .insert(ifindex, info, 0)
            .map_err(|source| update_error(LINKS, LINKS_MAX_ENTRIES, || format!("pod link {ifindex}"), source))?;
        self.drop_addrs(ifindex, &old.map(|o| addrs_of(&o)).unwrap_or_default(), &new)
    }

    /// Forgets `ifindex`.
    pub fn remove(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let old = self.map.get(&ifindex, 0).ok();
        match self.map.remove(&ifindex) {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(source) => return Err(DatapathError::Map { name: LINKS, source }),
        }
        self.drop_addrs(ifindex, &old.map(|o| addrs_of(&o)).unwrap_or_default(), &[])?;
        match self.macs.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(source) => Err(DatapathError::Map { name: LINK_MACS, source }),
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
