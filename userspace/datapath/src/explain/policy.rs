//! The policy half of an explanation: the sender's egress and the
//! receiver's ingress, judged as the kernel judges them for each entry.

use aya::maps::lpm_trie::Key;
use std::net::IpAddr;
use weir_common::{
    addr::Addr,
    ct::{CT_POLICY, CT_STATE_CLOSED, CT_STATE_CLOSING},
    lb::PROTO_TCP,
    policy::{IpInfo, PolicyKeyData, PolicyValue, DIR_EGRESS, DIR_INGRESS, POLICY_PREFIX_FULL},
};
use weir_logic::policy::{decide, PolicyMaps};

use super::{ct_key, proto_name, Entry, Explanation, Maps, Packet, PolicyStep};

impl PolicyMaps for Maps {
    fn ipcache(&self, addr: &Addr) -> Option<IpInfo> {
        self.ipcache.get(&Key::new(128, *addr), 0).ok()
    }

    fn policy(&self, key: &PolicyKeyData) -> Option<PolicyValue> {
        self.policy.get(&Key::new(POLICY_PREFIX_FULL, *key), 0).ok()
    }
}

impl Maps {
    /// As `policy::tracked` for a first packet (a TCP SYN): the opener's
    /// own entry unless a SYN reopens it; a reply only for UDP.
    pub(super) fn policy_tracked(&self, src: Addr, dst: Addr, p: &Packet, now: u64) -> bool {
        let tcp = p.proto == PROTO_TCP;
        let own = self.ct_alive(&ct_key(src, dst, p.sport, p.dport, p.proto, CT_POLICY), now);
        if own.is_some_and(|e| !(tcp && (e.state == CT_STATE_CLOSING || e.state == CT_STATE_CLOSED))) {
            return true;
        }
        !tcp && self.ct_alive(&ct_key(dst, src, p.dport, p.sport, p.proto, CT_POLICY), now).is_some()
    }

    /// Judges the flow `src` → `to`:`to_port` (translated) and records each
    /// step in `x`. A pod sender's egress counts only from a pod; a flow
    /// from outside is judged on the client's own address (before any
    /// masquerade), and the node's own flows are always admitted. Returns
    /// the reason when a step denies.
    pub(super) fn policy_steps(&self, x: &mut Explanation, p: &Packet, entry: &Entry, src: Addr, to: Addr, to_port: u16) -> Option<String> {
        let src_ep = if *entry == Entry::Pod { self.endpoints.get(&src, 0).ok() } else { None };
        let dst_ep = self.endpoints.get(&to, 0).ok();
        if let (Some(s), Some(d)) = (src_ep, dst_ep) {
            if s.id == d.id {
                x.reason = "a pod may always reach itself".into();
                return None;
            }
        }
        let from_node = *entry == Entry::Host;
        for (direction, ep, ep_addr, peer) in [(DIR_EGRESS, src_ep, src, to), (DIR_INGRESS, dst_ep, to, src)] {
            let Some(ep) = ep else { continue };
            let d = decide(self, &ep, direction, &peer, p.proto, to_port);
            let dir = if direction == DIR_EGRESS { "egress" } else { "ingress" };
            x.policy.push(PolicyStep {
                direction: dir,
                endpoint: IpAddr::from(ep_addr),
                endpoint_id: ep.id,
                isolated: d.isolated,
                allowed: d.allowed || from_node,
                peer_identity: d.peer_identity,
                matched_identity: d.matched_identity,
                rule: d.rule,
                flags: d.flags,
                note_rule: d.note_rule,
                from_node,
            });
            if !d.allowed && !from_node {
                let why = if d.rule == 0 { "no rule allows".to_string() } else { format!("rule {} denies", d.rule) };
                return Some(format!("denied by the {dir} policy of {} ({why} identity {} on {}/{to_port})", IpAddr::from(ep_addr), d.peer_identity, proto_name(p.proto)));
            }
        }
        None
    }
}
