//! Opening pinned maps by name, typed. A map whose recorded layout version
//! (`WEIR_ABI`) is not this build's is never read: opening it fails with
//! [`DatapathError::OtherLayout`].

use aya::maps::{Array, HashMap, Map, MapData};

use crate::{pins::PinLayout, DatapathError};

/// Opens the pinned map `name` under `layout`.
pub fn open(layout: &PinLayout, name: &'static str) -> Result<Map, DatapathError> {
    layout.require_existing()?;
    let data = MapData::from_pin(layout.map(name)).map_err(|source| DatapathError::Map { name, source })?;
    check_layout(layout, name, &data)?;
    Map::from_map_data(data).map_err(|source| DatapathError::Map { name, source })
}

/// Fails when the manifest records another layout version for the map
/// behind `data` than this build's (no record: a map from before layout
/// versions, or one the running load just created, is read).
fn check_layout(layout: &PinLayout, name: &'static str, data: &MapData) -> Result<(), DatapathError> {
    let Some(expected) = weir_common::abi::layout_of(name).map(|l| l.version) else { return Ok(()) };
    if name == weir_common::abi::ABI {
        return Ok(());
    }
    let Some(manifest) = crate::migrate::manifest::Manifest::open(layout)? else { return Ok(()) };
    let id = data.info().map_err(|source| DatapathError::Map { name, source })?.id();
    match manifest.record(id) {
        Some((pinned, _)) if pinned != expected => Err(DatapathError::OtherLayout { name, pinned, expected }),
        _ => Ok(()),
    }
}

pub fn hash<K: aya::Pod, V: aya::Pod>(layout: &PinLayout, name: &'static str) -> Result<HashMap<MapData, K, V>, DatapathError> {
    HashMap::try_from(open(layout, name)?).map_err(|source| DatapathError::Map { name, source })
}

pub fn array<V: aya::Pod>(layout: &PinLayout, name: &'static str) -> Result<Array<MapData, V>, DatapathError> {
    Array::try_from(open(layout, name)?).map_err(|source| DatapathError::Map { name, source })
}

/// Opens the pinned map `name` as any typed aya map.
pub fn typed<M: TryFrom<Map, Error = aya::maps::MapError>>(layout: &PinLayout, name: &'static str) -> Result<M, DatapathError> {
    M::try_from(open(layout, name)?).map_err(|source| DatapathError::Map { name, source })
}
