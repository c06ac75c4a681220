//! What the pinned maps are, what this build expects, and what to do
//! about each: create, adopt, rebuild (convert an older layout or resize),
//! or refuse. Reading only: nothing here touches a pin.

use aya::maps::MapInfo;
use aya_obj::maps::PinningType;
use weir_common::abi::{layout_of, MapLayout};

use super::{manifest::Manifest, steps};
use crate::{loader::{sized_maps, LoadOptions}, objects, pins::PinLayout, DatapathError};

/// What the kernel knows of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub flags: u32,
    pub max_entries: u32,
}

impl Shape {
    /// Everything but the capacity.
    fn kind(&self) -> (u32, u32, u32, u32) {
        (self.map_type, self.key_size, self.value_size, self.flags)
    }

    fn describe(&self) -> String {
        format!(
            "{} key {} B value {} B flags {:#x}, {} entries",
            map_type_name(self.map_type),
            self.key_size,
            self.value_size,
            self.flags,
            self.max_entries
        )
    }
}

fn map_type_name(t: u32) -> String {
    let name = match t {
        1 => "hash",
        2 => "array",
        5 => "percpu_hash",
        6 => "percpu_array",
        9 => "lru_hash",
        11 => "lpm_trie",
        27 => "ringbuf",
        _ => return format!("type {t}"),
    };
    name.into()
}

/// One map as this build's objects define it, sized by the load options.
#[derive(Clone, Debug)]
pub struct Expected {
    pub name: String,
    pub shape: Shape,
    pub layout: &'static MapLayout,
}

/// One pinned map as found.
#[derive(Clone, Debug)]
pub struct Pinned {
    pub id: u32,
    pub shape: Shape,
    /// The layout version its manifest record names; `None` for a map
    /// pinned before layout versions existed.
    pub version: Option<u32>,
    /// The manifest's record, when it disagrees with the kernel.
    pub record_mismatch: Option<Shape>,
}

/// What to do with one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Not pinned: the load creates it.
    Create,
    /// Pinned in this build's layout and size.
    Adopt,
    /// Pinned in an older layout, or with another capacity: built anew
    /// beside the old one, its entries converted and copied.
    Rebuild { from_version: u32 },
}

/// A map this agent will not touch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "pinned map {map} is {pinned}; this agent expects {expected}: {why}. Nothing was changed: the running datapath keeps \
     its programs and state (run the agent that pinned it, or `weir-agent --cleanup`, which drops every connection)"
)]
pub struct Refusal {
    pub map: String,
    pub pinned: String,
    pub expected: String,
    pub why: String,
}

/// Every map of the three objects, sized as the loader will size them.
pub fn expected(opts: &LoadOptions) -> Result<Vec<Expected>, DatapathError> {
    let sized = sized_maps(opts);
    let mut out: Vec<Expected> = Vec::new();
    for (object, bytes) in objects::all() {
        let obj = aya_obj::Object::parse(bytes).map_err(|source| DatapathError::Parse { object, source })?;
        let mut names: Vec<&String> = obj.maps.keys().collect();
        names.sort();
        for name in names {
            let map = &obj.maps[name];
            if map.pinning() != PinningType::ByName || out.iter().any(|e| &e.name == name) {
                continue;
            }
            let layout = layout_of(name).ok_or_else(|| DatapathError::NoLayout { name: name.clone() })?;
            let max_entries = sized.iter().find(|(n, _)| n == name).map_or(map.max_entries(), |(_, m)| *m);
            out.push(Expected {
                name: name.clone(),
                shape: Shape { map_type: map.map_type(), key_size: map.key_size(), value_size: map.value_size(), flags: map.map_flags(), max_entries },
                layout,
            });
        }
    }
    Ok(out)
}

/// The kernel's view of the map pinned at `path`, if any.
pub fn pinned_shape(path: &std::path::Path) -> Result<Option<(u32, Shape)>, DatapathError> {
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(path).map_err(|source| DatapathError::PinnedMap { path: path.to_path_buf(), source })?;
    let map_type = info.map_type().map_or(0, |t| t as u32);
    Ok(Some((
        info.id(),
        Shape { map_type, key_size: info.key_size(), value_size: info.value_size(), flags: info.map_flags(), max_entries: info.max_entries() },
    )))
}

/// Finds every expected map's pin and its manifest record.
pub fn pinned(layout: &PinLayout, exp: &Expected, manifest: Option<&Manifest>) -> Result<Option<Pinned>, DatapathError> {
    let Some((id, shape)) = pinned_shape(&layout.map(&exp.name))? else { return Ok(None) };
    let record = manifest.and_then(|m| m.record(id));
    let record_mismatch = record.and_then(|(_, s)| (s.kind() != shape.kind()).then_some(s));
    Ok(Some(Pinned { id, shape, version: record.map(|(v, _)| v), record_mismatch }))
}

/// Whether a map pinned before layout versions has `exp`'s first layout:
/// the same type and flags, and v1's sizes.
fn is_v1(exp: &Expected, pinned: &Shape) -> bool {
    let v1 = steps::v1_sizes(&exp.name).unwrap_or((exp.shape.key_size, exp.shape.value_size));
    (pinned.map_type, pinned.flags, pinned.key_size, pinned.value_size) == (exp.shape.map_type, exp.shape.flags, v1.0, v1.1)
}

/// The action for one map, or why it is refused.
pub fn decide(exp: &Expected, pinned: Option<&Pinned>) -> Result<Action, Refusal> {
    let Some(p) = pinned else { return Ok(Action::Create) };
    let want = exp.layout.version;
    let refuse = |version: Option<u32>, why: String| Refusal {
        map: exp.name.clone(),
        pinned: match version {
            Some(v) => format!("layout v{v} ({})", p.shape.describe()),
            None => format!("unversioned ({})", p.shape.describe()),
        },
        expected: format!("layout v{want} ({})", exp.shape.describe()),
        why,
    };
    if let Some(rec) = p.record_mismatch {
        return Err(refuse(p.version, format!("its manifest record says {}, which the kernel contradicts", rec.describe())));
    }
    let same_kind = p.shape.kind() == exp.shape.kind();
    let have = match p.version {
        Some(v) => v,
        // Pinned before layout versions: its layout is v1 when every size
        // matches v1's (this build's while the map is at v1), and unknown
        // otherwise.
        None if is_v1(exp, &p.shape) => 1,
        None => return Err(refuse(None, "it was pinned by an agent from before layout versions, in a layout no conversion starts from".into())),
    };
    if have > want {
        return Err(refuse(Some(have), format!("it is newer than this agent knows (a downgrade across a layout change, v{have} to v{want}); downgrades are refused")));
    }
    if have == want {
        if !same_kind {
            return Err(refuse(Some(have), "the same layout version with another shape: the map or its record is corrupt".into()));
        }
        if p.shape.max_entries != exp.shape.max_entries {
            return Ok(Action::Rebuild { from_version: have });
        }
        return Ok(Action::Adopt);
    }
    if exp.layout.stateful && !steps::has_chain(&exp.name, have, want) {
        return Err(refuse(Some(have), format!("this agent has no conversion from v{have} to v{want}")));
    }
    Ok(Action::Rebuild { from_version: have })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(name: &str, max: u32) -> Expected {
        let layout = layout_of(name).expect("layout");
        Expected { name: name.into(), shape: Shape { map_type: 9, key_size: layout.key_size, value_size: layout.value_size, flags: 0, max_entries: max }, layout }
    }

    fn pin(e: &Expected, version: Option<u32>, max: u32) -> Pinned {
        Pinned { id: 7, shape: Shape { max_entries: max, ..e.shape }, version, record_mismatch: None }
    }

    const CT: &str = weir_common::maps::CT;

    #[test]
    fn same_layout_and_size_is_adopted_and_a_new_size_rebuilt() {
        let e = exp(CT, 1024);
        assert_eq!(decide(&e, None), Ok(Action::Create));
        assert_eq!(decide(&e, Some(&pin(&e, Some(4), 1024))), Ok(Action::Adopt));
        assert_eq!(decide(&e, Some(&pin(&e, Some(4), 4096))), Ok(Action::Rebuild { from_version: 4 }));
        // v3, whole IPv6 entries: rebuilt (narrowed) at any size.
        let mut v3 = pin(&e, Some(3), 1024);
        v3.shape.value_size = 56;
        assert_eq!(decide(&e, Some(&v3)), Ok(Action::Rebuild { from_version: 3 }));
        // v2, the one table of both families: rebuilt (split) at any size.
        assert_eq!(decide(&e, Some(&pin(&e, Some(2), 1024))), Ok(Action::Rebuild { from_version: 2 }));
    }

    #[test]
    fn unversioned_pins_are_v1_only_when_every_size_matches_v1() {
        // A map still at v1: its own sizes.
        let e = exp(weir_common::maps::FRONTENDS, 1024);
        assert_eq!(decide(&e, Some(&pin(&e, None, 1024))), Ok(Action::Adopt));
        let mut odd = pin(&e, None, 1024);
        odd.shape.value_size = 16;
        let r = decide(&e, Some(&odd)).expect_err("refused");
        assert_eq!(r.map, weir_common::maps::FRONTENDS);
        assert!(r.pinned.contains("value 16 B") && r.expected.contains("value 24 B"), "{r}");
        // Conntrack, at v4 now: v1's 64-byte values are converted, this
        // build's own sizes or any other are not taken for v1.
        let e = exp(CT, 1024);
        let mut v1 = pin(&e, None, 1024);
        v1.shape.value_size = 64;
        assert_eq!(decide(&e, Some(&v1)), Ok(Action::Rebuild { from_version: 1 }));
        let r = decide(&e, Some(&pin(&e, None, 1024))).expect_err("24-byte values were never unversioned");
        assert!(r.pinned.contains("unversioned") && r.expected.contains("layout v4"), "{r}");
    }

    #[test]
    fn an_older_layout_with_its_steps_is_rebuilt() {
        let e = exp(CT, 1024);
        let mut v1 = pin(&e, Some(1), 1024);
        v1.shape.value_size = 64;
        assert_eq!(decide(&e, Some(&v1)), Ok(Action::Rebuild { from_version: 1 }));
    }

    #[test]
    fn newer_layouts_and_missing_conversions_are_refused_naming_both_layouts() {
        let e = exp(CT, 1024);
        let r = decide(&e, Some(&pin(&e, Some(5), 1024))).expect_err("a downgrade is refused");
        assert!(r.to_string().contains("layout v5") && r.to_string().contains("layout v4") && r.why.contains("downgrade"), "{r}");
        let mut newer = e.clone();
        let layout: &'static MapLayout = Box::leak(Box::new(MapLayout { version: 5, ..*e.layout }));
        newer.layout = layout;
        let r = decide(&newer, Some(&pin(&e, Some(4), 1024))).expect_err("no conversion from v4 to v5");
        assert!(r.why.contains("no conversion from v4 to v5"), "{r}");
    }

    #[test]
    fn every_pinned_map_of_the_objects_has_its_layout_and_sizes() {
        let all = expected(&LoadOptions::default()).expect("the embedded objects parse");
        assert!(all.len() >= 30, "{} maps", all.len());
        for l in weir_common::abi::LAYOUTS {
            let e = all.iter().find(|e| e.name == l.name).unwrap_or_else(|| panic!("{} is in LAYOUTS but no object pins it", l.name));
            if e.shape.map_type != 27 {
                assert_eq!((e.shape.key_size, e.shape.value_size), (l.key_size, l.value_size), "{}: the object's sizes differ from LAYOUTS", l.name);
            }
        }
    }

    #[test]
    fn a_record_the_kernel_contradicts_is_refused() {
        let e = exp(CT, 1024);
        let mut p = pin(&e, Some(3), 1024);
        p.record_mismatch = Some(Shape { value_size: 72, ..p.shape });
        assert!(decide(&e, Some(&p)).expect_err("refused").why.contains("contradicts"));
    }
}
