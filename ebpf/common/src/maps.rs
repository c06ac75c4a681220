//! Names and sizes of the BPF maps. The names are also the pin file names
//! under `<bpffs>/maps/`, so they are part of the on-disk interface that a
//! restarted agent and the CLI depend on. BPF object names are limited to
//! 15 characters.

/// Per-interface, per-direction packet and byte counters (per-CPU hash).
pub const IF_STATS: &str = "WEIR_IF_STATS";
/// Capacity of [`IF_STATS`]: one entry per pod interface and direction.
pub const IF_STATS_MAX_ENTRIES: u32 = 16_384;

/// Datapath error counters (per-CPU array), indexed by [`crate::stats::DpError`].
pub const DP_ERRORS: &str = "WEIR_DP_ERRORS";
/// Capacity of [`DP_ERRORS`].
pub const DP_ERRORS_MAX_ENTRIES: u32 = 64;

/// Service frontends: FrontendKey → Service (hash).
pub const FRONTENDS: &str = "WEIR_FRONTENDS";
pub const FRONTENDS_MAX_ENTRIES: u32 = 65_536;

/// Backends: backend id (u32) → Backend (hash).
pub const BACKENDS: &str = "WEIR_BACKENDS";
pub const BACKENDS_MAX_ENTRIES: u32 = 262_144;

/// Selection slots of every service: slot → backend id (array of u32).
/// Each service owns `[table_base, table_base + table_len)`.
pub const LB_TABLE: &str = "WEIR_LB_TABLE";
pub const LB_TABLE_MAX_ENTRIES: u32 = 4 * 1024 * 1024;

/// ClientIP session affinity: AffinityKey → AffinityValue (LRU hash).
pub const AFFINITY: &str = "WEIR_AFFINITY";
pub const AFFINITY_MAX_ENTRIES: u32 = 65_536;

/// Conntrack of IPv6 flows: CtKey → CtTail (LRU hash; see `crate::ct`).
/// Before layout v3 it held IPv4 flows too, a migration moves those to
/// [`CT4`]; before layout v4 its values were whole `CtEntry`s, a
/// migration narrows them and moves the masqueraded flows' reverse
/// entries to [`CT6_MASQ`].
pub const CT: &str = "WEIR_CT";
pub const CT6_MAX_ENTRIES: u32 = 65_536;

/// The reverse entries of masqueraded IPv6 flows, keyed without the
/// node's address and keeping the client's: `CtMasqKey6` → `CtMasq6`
/// (LRU hash, layout v2; `weir_logic::ct6`). Counted
/// with [`CT`] in `WEIR_CT_STATS`; sized with it, a quarter of its
/// entries ([`ct6_masq_entries`]). A migration that resizes it has no
/// kernel carry-over (as `WEIR_AFFINITY`): an entry the old programs
/// write between the last copy and the swap is copied right after the
/// swap, and a reply met in between is not translated.
pub const CT6_MASQ: &str = "WEIR_CT6_MASQ";
pub const CT6_MASQ_MAX_ENTRIES: u32 = ct6_masq_entries(CT6_MAX_ENTRIES);

/// [`CT6_MASQ`]'s capacity beside an IPv6 conntrack of `ct6_entries`.
pub const fn ct6_masq_entries(ct6_entries: u32) -> u32 {
    let n = ct6_entries / 4;
    if n < 2 {
        2
    } else {
        n
    }
}

/// Conntrack of IPv4 flows: CtKey4 → CtEntry4 (LRU hash; see `crate::ct`).
pub const CT4: &str = "WEIR_CT4";
pub const CT_MAX_ENTRIES: u32 = 262_144;

/// [`CT4`] being replaced by one of another capacity, during a migration
/// (as [`CT_PREV`] for [`CT`]).
pub const CT4_PREV: &str = "WEIR_CT4_PREV";

/// The conntrack map being replaced, during a migration that rebuilt
/// [`CT`] in the same layout (a new capacity): the programs loaded for the
/// migration see the old map here, and take over an entry they miss in
/// [`CT`] (one the old programs created after the agent's copy). Outside
/// a migration, an empty map of one entry.
pub const CT_PREV: &str = "WEIR_CT_PREV";

/// The same as [`CT_PREV`], during a migration from conntrack's first
/// layout (`crate::ct_v1`): the programs convert what they take over.
pub const CT_PREV_V1: &str = "WEIR_CT_PREV_V1";

/// The same as [`CT_PREV`], during a migration from layout v2 or v3
/// (whole `CtEntry` values): the programs narrow what they take over
/// (`crate::ct::CARRY_OVER_V3`).
pub const CT_PREV_V3: &str = "WEIR_CT_PREV_V3";

/// Runtime configuration: index 0 → DatapathConfig (array).
pub const CONFIG: &str = "WEIR_CONFIG";

/// Drops and rejects per reason (per-CPU array of u64), indexed by DropReason.
pub const DROPS: &str = "WEIR_DROPS";
pub const DROPS_MAX_ENTRIES: u32 = 64;

/// Local endpoints: pod Addr → EndpointInfo (hash).
pub const ENDPOINTS: &str = "WEIR_ENDPOINTS";
pub const ENDPOINTS_MAX_ENTRIES: u32 = 16_384;

/// IP/CIDR → identity: LPM trie over 16-byte addresses.
pub const IPCACHE: &str = "WEIR_IPCACHE";
pub const IPCACHE_MAX_ENTRIES: u32 = 262_144;

/// Policy entries: LPM trie keyed by (endpoint, direction, identity,
/// proto, port). A port range costs at most 30 aligned blocks.
pub const POLICY: &str = "WEIR_POLICY";
pub const POLICY_MAX_ENTRIES: u32 = 1_048_576;

/// (kind, id) → name of a rule, endpoint or identity (hash, not
/// preallocated), for the CLI.
pub const NAMES: &str = "WEIR_NAMES";
pub const NAMES_MAX_ENTRIES: u32 = 131_072;

/// Datapath events (ring buffer), bytes.
pub const EVENTS: &str = "WEIR_EVENTS";
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Events for `weir monitor` (ring buffer), bytes.
pub const MON_EVENTS: &str = "WEIR_MON_EVENTS";
pub const MON_EVENTS_BYTES: u32 = 1 << 20;

/// `weir monitor`'s lease: index 0 → CLOCK_MONOTONIC ns until which the
/// kernel writes `MON_EVENTS` (array of u64).
pub const MON_LEASE: &str = "WEIR_MON_LEASE";

/// Service id → when the agent last programmed it, unix seconds (hash,
/// not preallocated, sized with [`FRONTENDS`]: every service has a
/// frontend entry, so it never fills; written by the agent, read by
/// `weir diff`).
pub const SVC_TIMES: &str = "WEIR_SVC_TIMES";

/// Service id → the frontend it names (`lb::FrontendKey`; hash, not
/// preallocated, sized with [`FRONTENDS`]), for IPv6 frontends: what a
/// conntrack entry that keeps only the service id will need to find the
/// address its replies come from. An id names one frontend for its whole
/// life (see [`LB_IDS`]). Written by the agent beside [`FRONTENDS`].
pub const SVC_ADDRS: &str = "WEIR_SVC_ADDRS";

/// Where the agent's id counters may resume (array of one `lb::LbIds`):
/// every service and backend id ever handed out is below these marks, so
/// an agent start never hands out again an id a flow's entry may still
/// name. Written by the agent only, a block of ids ahead.
pub const LB_IDS: &str = "WEIR_LB_IDS";

/// Pod links: host-side veth ifindex → the addresses routed to it (hash).
pub const LINKS: &str = "WEIR_LINKS";
pub const LINKS_MAX_ENTRIES: u32 = 16_384;

/// Pod links: host-side veth ifindex → the Ethernet header of frames to
/// the pod (`link::LinkMacs`; LRU hash, sized as [`LINKS`]). Written by
/// the kernel only: a pod link's to_pod learns it from a frame the node's
/// stack addressed (one sent there by `fwd::into_pod` for the purpose),
/// and `into_pod` writes it into the frames it delivers straight into the
/// pod. Once an entry is `link::LINK_MACS_FRESH_S` seconds old, the next
/// TCP SYN to the link takes the neighbour output again and the link's
/// to_pod learns it afresh (a corrected neighbour entry). The agent
/// deletes a link's entry when the link goes (a link index can come back,
/// moved in from another namespace or asked for).
pub const LINK_MACS: &str = "WEIR_LINK_MACS";

/// Local pod addresses: address → the pod link (ifindex) routed to it
/// (hash; the same facts as [`LINKS`], keyed the other way).
pub const POD_ADDRS: &str = "WEIR_POD_ADDRS";
pub const POD_ADDRS_MAX_ENTRIES: u32 = 32_768;

/// Fragments in flight: (saddr, daddr, IP id, proto) → ports (LRU hash).
pub const FRAGS: &str = "WEIR_FRAGS";
pub const FRAGS_MAX_ENTRIES: u32 = 8_192;

/// Conntrack counters (per-CPU array of u64), indexed by CtStat.
pub const CT_STATS: &str = "WEIR_CT_STATS";
pub const CT_STATS_MAX_ENTRIES: u32 = 16;

/// Conntrack entries charged to each pod link: ifindex → count (hash).
/// The kernel adds as it creates; the agent's collector rewrites the
/// counts from its scan, and writes until when they hold under
/// [`crate::ct::OWNER_COUNTS_FRESH_UNTIL`] (no link has ifindex 0).
pub const CT_OWNERS: &str = "WEIR_CT_OWNERS";
pub const CT_OWNERS_MAX_ENTRIES: u32 = 16_384;

/// Pod CIDRs of other nodes → the node holding each (LPM trie over
/// 16-byte addresses), for `--routing vxlan`.
pub const TUNNEL: &str = "WEIR_TUNNEL";
pub const TUNNEL_MAX_ENTRIES: u32 = 16_384;

/// Addresses of the cluster's nodes (InternalIPs) → 1 (hash): the only
/// outer sources encapsulated traffic is accepted from.
pub const NODES: &str = "WEIR_NODES";
pub const NODES_MAX_ENTRIES: u32 = 16_384;

/// Uplink ifindex → how it masquerades pod egress (hash).
pub const MASQ: &str = "WEIR_MASQ";
pub const MASQ_MAX_ENTRIES: u32 = 64;

/// Destinations pod egress keeps its source towards (LPM trie over
/// 16-byte addresses): every pod CIDR, every node, link-local, and
/// `--non-masquerade-cidrs`.
pub const NO_MASQ: &str = "WEIR_NO_MASQ";
pub const NO_MASQ_MAX_ENTRIES: u32 = 16_384;

/// Sockets the socket-level programs translated: the socket's cookie (and,
/// for UDP, the backend) → the frontend it stands for and the backend
/// (LRU; `lb::SockRevKey`).
pub const SOCK_REVNAT: &str = "WEIR_SOCK_REVNAT";
pub const SOCK_REVNAT_MAX_ENTRIES: u32 = 65_536;

/// [`SOCK_REVNAT`] for pods' sockets (`--socket-lb-namespaces all`): a
/// table of their own, so that a pod churning connections evicts only
/// pods' entries, never the node's (whose UDP replies and stale-socket
/// sweep depend on theirs).
pub const SOCK_REVNAT_POD: &str = "WEIR_SOCK_REVNAT_POD";
pub const SOCK_REVNAT_POD_MAX_ENTRIES: u32 = 65_536;

/// North-south flows by frontend kind and verdict (per-CPU array of u64,
/// see `stats::NS_VERDICTS`).
pub const NS_FLOWS: &str = "WEIR_NS_FLOWS";
pub const NS_FLOWS_MAX_ENTRIES: u32 = 16;

/// Packets the XDP fast path translated and sent back out (per-CPU array
/// of u64: 0 a client's packet to its backend, 1 a backend's reply).
pub const XDP_STATS: &str = "WEIR_XDP_STATS";
pub const XDP_STATS_MAX_ENTRIES: u32 = 2;

/// loadBalancerSourceRanges: (service id, source prefix) → 1.
pub const SOURCE_RANGES: &str = "WEIR_SOURCE_RANGES";
pub const SOURCE_RANGES_MAX_ENTRIES: u32 = 16_384;

/// Masqueraded flows: CtKey (kind `CT_SNAT_OUT` / `CT_SNAT_IN`) → CtEntry
/// (hash; two entries per flow).
pub const SNAT: &str = "WEIR_SNAT";
pub const SNAT_MAX_ENTRIES: u32 = 131_072;

/// [`SNAT`]'s counterparts of [`CT_PREV`] and [`CT_PREV_V1`]: during a
/// migration that rebuilds it, the old map, from which the programs take
/// over a masquerade they miss (converted from layout v1 for the second).
pub const SNAT_PREV: &str = "WEIR_SNAT_PREV";
pub const SNAT_PREV_V1: &str = "WEIR_SNAT_PREV_V1";

/// Counters of [`SNAT`] (per-CPU array of u64), indexed by CtStat.
pub const SNAT_STATS: &str = "WEIR_SNAT_STATS";
