//! A stable text dump of the service maps, for golden tests and `weir`.
//! It reads the maps themselves, so it shows what the kernel will use.
//!
//! ```text
//! service 10.96.0.10:80/tcp maglev slots=307 affinity=none fallback=no
//!   backend 10.244.0.2:8080 slots=103
//!   backend 10.244.0.3:8080 slots=102 terminating
//! vip 10.96.0.10
//! ```
//! Backends are listed by address; ids and table positions, which depend
//! on history, are left out.

use std::{collections::BTreeMap, fmt::Write as _};

use aya::maps::{HashMap, MapData};
use weir_common::{
    addr::Addr,
    lb::{Backend, FrontendKey, Service, BACKEND_F_TERMINATING, SVC_F_AFFINITY, SVC_F_RANDOM, SVC_F_TERMINATING_FALLBACK, SVC_F_VIP_MARKER},
    maps::{BACKENDS, FRONTENDS, LB_TABLE},
};

use crate::{lb::frontend_of, mmap::MmapU32Array, pinned, pins::PinLayout, DatapathError};

/// Dumps FRONTENDS, BACKENDS and LB_TABLE under `layout`.
pub fn dump(layout: &PinLayout) -> Result<String, DatapathError> {
    let frontends: HashMap<MapData, FrontendKey, Service> = pinned::hash(layout, FRONTENDS)?;
    let backends: HashMap<MapData, u32, Backend> = pinned::hash(layout, BACKENDS)?;
    let table = MmapU32Array::open(layout, LB_TABLE)?;
    let backends: BTreeMap<u32, Backend> = backends.iter().filter_map(Result::ok).collect();
    let mut services: Vec<(FrontendKey, Service)> = frontends.iter().filter_map(Result::ok).collect();
    services.sort_by_key(|(k, _)| (k.addr, k.proto, u16::from_be(k.port)));
    let mut out = String::new();
    let mut vips: Vec<Addr> = Vec::new();
    for (k, s) in &services {
        if s.flags & SVC_F_VIP_MARKER != 0 {
            vips.push(k.addr);
            continue;
        }
        let Some(f) = frontend_of(k) else { continue };
        let mode = if s.flags & SVC_F_RANDOM != 0 { "random" } else { "maglev" };
        let affinity = if s.flags & SVC_F_AFFINITY != 0 { format!("clientip/{}s", s.affinity_timeout_s) } else { "none".into() };
        let fallback = if s.flags & SVC_F_TERMINATING_FALLBACK != 0 { "yes" } else { "no" };
        let _ = writeln!(out, "service {f} {mode} slots={} affinity={affinity} fallback={fallback}", s.table_len);
        let mut slots: BTreeMap<(Addr, u16), (usize, u8)> = BTreeMap::new();
        let w = table.window(s.table_base, s.table_len)?;
        for slot in 0..s.table_len {
            let id = w.get(s.table_base + slot).unwrap_or(0);
            match backends.get(&id) {
                Some(b) => {
                    let e = slots.entry((b.addr, u16::from_be(b.port))).or_insert((0, b.flags));
                    e.0 += 1;
                }
                None => {
                    let _ = writeln!(out, "  ! slot {slot} points at missing backend {id}");
                }
            }
        }
        for ((addr, port), (n, flags)) in slots {
            let term = if flags & BACKEND_F_TERMINATING != 0 { " terminating" } else { "" };
            let _ = writeln!(out, "  backend {addr}:{port} slots={n}{term}");
        }
    }
    for v in vips {
        let _ = writeln!(out, "vip {v}");
    }
    Ok(out)
}
