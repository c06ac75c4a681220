//! Opening pinned maps by name, typed.

use aya::maps::{Array, HashMap, Map, MapData};

use crate::{pins::PinLayout, DatapathError};

/// Opens the pinned map `name` under `layout`.
pub fn open(layout: &PinLayout, name: &'static str) -> Result<Map, DatapathError> {
    layout.require_existing()?;
    let data = MapData::from_pin(layout.map(name)).map_err(|source| DatapathError::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| DatapathError::Map { name, source })
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
