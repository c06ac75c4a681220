//! Maps as an older agent left them, for the upgrade tests: a table in an
//! earlier layout, recorded in `WEIR_ABI` at that layout's version and
//! pinned where today's map was. The running programs keep today's maps,
//! unpinned, so the only state the next agent can carry over is what its
//! migration converts.

use std::path::Path;

use aya::{
    maps::{HashMap, Map, MapData, MapInfo},
    Pod,
};
use weir_datapath::{
    migrate::{inspect::Shape, manifest::Manifest},
    PinLayout,
};

/// The LRU hash type (`BPF_MAP_TYPE_LRU_HASH`) of every table an upgrade
/// test re-pins.
const LRU_HASH: u32 = 9;

/// Creates the LRU hash `name` with `K` keys and `V` values (an older
/// layout's), the flags and size of the map pinned at `like`; lets `fill`
/// write its entries; records it as `version` of `name`; unpins `replaced`
/// (today's maps it stands for, the programs keep them) and pins it as
/// `name`.
pub fn pin_lru<K: Pod, V: Pod>(
    layout: &PinLayout,
    name: &str,
    version: u32,
    like: &Path,
    replaced: &[&Path],
    fill: impl FnOnce(&mut HashMap<MapData, K, V>),
) {
    let info = MapInfo::from_pin(like).unwrap_or_else(|e| panic!("{}: {e}", like.display()));
    let shape = Shape {
        map_type: LRU_HASH,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        flags: info.map_flags(),
        max_entries: info.max_entries(),
    };
    let obj = aya_obj::Map::new_from_params(shape.map_type, shape.key_size, shape.value_size, shape.max_entries, shape.flags);
    let data = MapData::create(obj, name, None).unwrap_or_else(|e| panic!("a {name} map in layout v{version}: {e}"));
    let id = data.info().expect("the new map's info").id();
    let mut old: HashMap<MapData, K, V> = HashMap::try_from(Map::LruHashMap(data)).expect("an LRU hash");
    fill(&mut old);
    Manifest::open_or_create(layout).expect("WEIR_ABI").set(id, name, version, &shape).expect("the old record");
    for pin in replaced {
        std::fs::remove_file(pin).unwrap_or_else(|e| panic!("unpin {}: {e}", pin.display()));
    }
    old.pin(layout.map(name)).unwrap_or_else(|e| panic!("pin the v{version} {name}: {e}"));
}
