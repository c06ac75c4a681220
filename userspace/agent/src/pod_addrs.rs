//! Which addresses the node routes to each pod link, from host-route
//! events: the pure model behind `WEIR_LINKS` (source validation). A route
//! is keyed by (table, address), so `ip route replace` that moves an
//! address to another link moves it here too; a link that goes away takes
//! its routes with it (the kernel flushes them without telling).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use crate::links::{HostRoute, RouteEvent};

#[derive(Default)]
pub struct PodAddresses {
    routes: HashMap<(u32, IpAddr), u32>,
}

impl PodAddresses {
    /// Applies one event; returns the links whose addresses may have changed.
    pub fn apply(&mut self, ev: &RouteEvent) -> Vec<u32> {
        match *ev {
            RouteEvent::Present(r) => match self.routes.insert((r.table, r.addr), r.ifindex) {
                Some(old) if old != r.ifindex => vec![old, r.ifindex],
                Some(_) => vec![],
                None => vec![r.ifindex],
            },
            RouteEvent::Gone(r) => match self.routes.get(&(r.table, r.addr)) {
                Some(i) if *i == r.ifindex => {
                    self.routes.remove(&(r.table, r.addr));
                    vec![r.ifindex]
                }
                _ => vec![],
            },
        }
    }

    /// Replaces everything with a dump; returns the links that changed.
    pub fn replace(&mut self, dump: &[HostRoute]) -> Vec<u32> {
        let before = self.by_link();
        self.routes = dump.iter().map(|r| ((r.table, r.addr), r.ifindex)).collect();
        let after = self.by_link();
        let links: BTreeSet<u32> = before.keys().chain(after.keys()).copied().collect();
        links.into_iter().filter(|l| before.get(l) != after.get(l)).collect()
    }

    /// Replaces the routes through `links` with a dump of those links
    /// alone; returns the links that changed (a route the dump moved here
    /// from another link changes that one too).
    pub fn replace_for(&mut self, links: &[u32], dump: &[HostRoute]) -> Vec<u32> {
        let before = self.by_link();
        self.routes.retain(|_, i| !links.contains(i));
        for r in dump.iter().filter(|r| links.contains(&r.ifindex)) {
            self.routes.insert((r.table, r.addr), r.ifindex);
        }
        let after = self.by_link();
        let changed: BTreeSet<u32> = before.keys().chain(after.keys()).copied().collect();
        changed.into_iter().filter(|l| before.get(l) != after.get(l)).collect()
    }

    /// Forgets every route through `ifindex` (the link is gone).
    pub fn forget_link(&mut self, ifindex: u32) {
        self.routes.retain(|_, i| *i != ifindex);
    }

    /// The addresses routed to `ifindex`, sorted.
    pub fn of(&self, ifindex: u32) -> Vec<IpAddr> {
        let set: BTreeSet<IpAddr> = self.routes.iter().filter(|(_, i)| **i == ifindex).map(|((_, a), _)| *a).collect();
        set.into_iter().collect()
    }

    fn by_link(&self) -> BTreeMap<u32, BTreeSet<IpAddr>> {
        let mut m: BTreeMap<u32, BTreeSet<IpAddr>> = BTreeMap::new();
        for ((_, a), i) in &self.routes {
            m.entry(*i).or_default().insert(*a);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(addr: &str, ifindex: u32) -> HostRoute {
        HostRoute { table: 254, addr: addr.parse().expect("addr"), ifindex }
    }

    #[test]
    fn routes_give_each_link_its_addresses() {
        let mut p = PodAddresses::default();
        assert_eq!(p.apply(&RouteEvent::Present(r("10.0.0.2", 5))), vec![5]);
        assert_eq!(p.apply(&RouteEvent::Present(r("fd00::2", 5))), vec![5]);
        assert_eq!(p.apply(&RouteEvent::Present(r("10.0.0.3", 6))), vec![6]);
        assert_eq!(p.of(5), vec!["10.0.0.2".parse::<IpAddr>().expect("v4"), "fd00::2".parse().expect("v6")]);
        assert_eq!(p.apply(&RouteEvent::Present(r("10.0.0.2", 5))), Vec::<u32>::new(), "no change");
    }

    #[test]
    fn a_replaced_route_moves_the_address() {
        let mut p = PodAddresses::default();
        p.apply(&RouteEvent::Present(r("10.0.0.2", 5)));
        assert_eq!(p.apply(&RouteEvent::Present(r("10.0.0.2", 6))), vec![5, 6]);
        assert!(p.of(5).is_empty());
        assert_eq!(p.of(6).len(), 1);
        assert_eq!(p.apply(&RouteEvent::Gone(r("10.0.0.2", 5))), Vec::<u32>::new(), "a stale delete changes nothing");
        assert_eq!(p.apply(&RouteEvent::Gone(r("10.0.0.2", 6))), vec![6]);
        assert!(p.of(6).is_empty());
    }

    #[test]
    fn a_dump_of_some_links_replaces_theirs_alone() {
        let mut p = PodAddresses::default();
        p.apply(&RouteEvent::Present(r("10.0.0.2", 5)));
        p.apply(&RouteEvent::Present(r("10.0.0.3", 6)));
        p.apply(&RouteEvent::Present(r("10.0.0.9", 7)));
        // Link 6 lost 10.0.0.3 and gained 10.0.0.4; 10.0.0.9 moved from 7 to 6.
        assert_eq!(p.replace_for(&[6], &[r("10.0.0.4", 6), r("10.0.0.9", 6)]), vec![6, 7]);
        assert_eq!(p.of(5).len(), 1, "link 5 is not in the dump and keeps its route");
        assert_eq!(p.of(6), vec!["10.0.0.4".parse::<IpAddr>().expect("v4"), "10.0.0.9".parse().expect("v4")]);
        assert!(p.of(7).is_empty());
        assert_eq!(p.replace_for(&[6], &[r("10.0.0.4", 6), r("10.0.0.9", 6)]), Vec::<u32>::new(), "the same dump again changes nothing");
    }

    #[test]
    fn a_dump_replaces_everything_and_names_what_changed() {
        let mut p = PodAddresses::default();
        p.apply(&RouteEvent::Present(r("10.0.0.2", 5)));
        p.apply(&RouteEvent::Present(r("10.0.0.3", 6)));
        assert_eq!(p.replace(&[r("10.0.0.3", 6), r("10.0.0.4", 7)]), vec![5, 7]);
        p.forget_link(6);
        assert!(p.of(6).is_empty());
    }
}
