//! `WEIR_ABI`: the layout version of each pinned map, keyed by the
//! kernel's map id, and the version of the agent that last wrote it.

use std::mem::size_of;

use aya::maps::{HashMap, MapData};
use weir_common::abi::{AbiKey, AbiRecord, ABI, ABI_KIND_AGENT, ABI_KIND_MAP, ABI_MAX_ENTRIES};

use super::inspect::Shape;
use crate::{pins::PinLayout, DatapathError};

pub struct Manifest {
    map: HashMap<MapData, AbiKey, AbiRecord>,
}

impl Manifest {
    /// The pinned manifest, if an agent wrote one.
    pub fn open(layout: &PinLayout) -> Result<Option<Self>, DatapathError> {
        let path = layout.map(ABI);
        if !path.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(&path).map_err(|source| DatapathError::Map { name: ABI, source })?;
        let map = HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(|source| DatapathError::Map { name: ABI, source })?;
        Ok(Some(Self { map }))
    }

    /// The pinned manifest, created and pinned when there is none.
    pub fn open_or_create(layout: &PinLayout) -> Result<Self, DatapathError> {
        if let Some(m) = Self::open(layout)? {
            return Ok(m);
        }
        let obj = aya_obj::Map::new_from_params(1, size_of::<AbiKey>() as u32, size_of::<AbiRecord>() as u32, ABI_MAX_ENTRIES, 0);
        let data = MapData::create(obj, ABI, None).map_err(|source| DatapathError::Map { name: ABI, source })?;
        let path = layout.map(ABI);
        data.pin(&path).map_err(|source| DatapathError::Pin { path, source })?;
        let map = HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(|source| DatapathError::Map { name: ABI, source })?;
        Ok(Self { map })
    }

    /// The version and shape recorded for map `id`.
    pub fn record(&self, id: u32) -> Option<(u32, Shape)> {
        let r = self.map.get(&AbiKey { kind: ABI_KIND_MAP, id }, 0).ok()?;
        Some((r.version, Shape { map_type: r.map_type, key_size: r.key_size, value_size: r.value_size, flags: r.flags, max_entries: r.max_entries }))
    }

    /// Records that map `id` (pinned as `name`) has layout `version`.
    pub fn set(&mut self, id: u32, name: &str, version: u32, shape: &Shape) -> Result<(), DatapathError> {
        let mut r = AbiRecord { version, map_type: shape.map_type, key_size: shape.key_size, value_size: shape.value_size, flags: shape.flags, max_entries: shape.max_entries, ..Default::default() };
        r.set_name(name);
        self.map
            .insert(AbiKey { kind: ABI_KIND_MAP, id }, r, 0)
            .map_err(|source| crate::error::update_error(ABI, ABI_MAX_ENTRIES, || format!("the record of {name}"), source))
    }

    /// Records the agent that adopted or migrated the datapath.
    pub fn set_agent(&mut self, version: &str) -> Result<(), DatapathError> {
        let mut r = AbiRecord::default();
        r.set_name(version);
        self.map.insert(AbiKey { kind: ABI_KIND_AGENT, id: 0 }, r, 0).map_err(|source| DatapathError::Map { name: ABI, source })
    }

    /// The version of the agent that last wrote the manifest.
    pub fn agent(&self) -> Option<String> {
        self.map.get(&AbiKey { kind: ABI_KIND_AGENT, id: 0 }, 0).ok().map(|r| r.name_str().to_string())
    }

    /// Every map record: (map id, pin name, version).
    pub fn maps(&self) -> Vec<(u32, String, u32)> {
        let mut out: Vec<(u32, String, u32)> = self
            .map
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.kind == ABI_KIND_MAP)
            .map(|(k, r)| (k.id, r.name_str().to_string(), r.version))
            .collect();
        out.sort();
        out
    }

    /// Drops the records of maps that no longer exist.
    pub fn prune(&mut self, live: &[u32]) -> Result<(), DatapathError> {
        for (id, _, _) in self.maps() {
            if !live.contains(&id) {
                match crate::error::deleted(self.map.remove(&AbiKey { kind: ABI_KIND_MAP, id })) {
                    Ok(()) => {}
                    Err(source) => return Err(DatapathError::Map { name: ABI, source }),
                }
            }
        }
        Ok(())
    }
}
