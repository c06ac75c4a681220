//! Map definitions. Names and sizes come from `weir_common::maps`; every map
//! is pinned by name so a restarted agent and the CLI find the same state.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtEntry4, CtKey, CtKey4, CtMasq6, CtMasqKey6, CtTail},
    ct_v1::CtEntryV1,
    event::DatapathEvent,
    frag::{FragKey, FragValue},
    link::{LinkInfo, LinkMacs},
    masq::MasqDevice,
    tunnel::TunnelEndpoint,
    lb::{AffinityKey, AffinityValue, Backend, FrontendKey, LbIds, Service, SockRevKey, SockRevValue, SourceRangeKey},
    maps::*,
    policy::{EndpointInfo, IpInfo, IpcacheKeyData, PolicyKeyData, PolicyValue, RuleName, NameKey},
    stats::{IfStats, IfStatsKey},
};

#[map(name = "WEIR_IF_STATS")]
pub static IF_STATS: PerCpuHashMap<IfStatsKey, IfStats> = PerCpuHashMap::pinned(IF_STATS_MAX_ENTRIES, 0);

#[map(name = "WEIR_DP_ERRORS")]
pub static DP_ERRORS: PerCpuArray<u64> = PerCpuArray::pinned(DP_ERRORS_MAX_ENTRIES, 0);

#[map(name = "WEIR_DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DROPS_MAX_ENTRIES, 0);

#[map(name = "WEIR_FRONTENDS")]
pub static FRONTENDS: HashMap<FrontendKey, Service> = HashMap::pinned(FRONTENDS_MAX_ENTRIES, 0);

#[map(name = "WEIR_BACKENDS")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(BACKENDS_MAX_ENTRIES, 0);

#[map(name = "WEIR_LB_TABLE")]
/// Memory-mappable, so userspace writes and verifies slots without a
/// syscall per slot.
pub static LB_TABLE: Array<u32> = Array::pinned(LB_TABLE_MAX_ENTRIES, aya_ebpf::bindings::BPF_F_MMAPABLE);

#[map(name = "WEIR_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(AFFINITY_MAX_ENTRIES, 0);

/// IPv6 flows, without their addresses (see `weir_common::ct`).
#[map(name = "WEIR_CT")]
pub static CT: LruHashMap<CtKey, CtTail> = LruHashMap::pinned(CT6_MAX_ENTRIES, 0);

/// The reverse entries of masqueraded IPv6 flows, keyed without the
/// node's address, with the client's (see `weir_common::maps::CT6_MASQ`).
#[map(name = "WEIR_CT6_MASQ")]
pub static CT6_MASQ: LruHashMap<CtMasqKey6, CtMasq6> = LruHashMap::pinned(CT6_MASQ_MAX_ENTRIES, 0);

/// IPv4 flows (see `weir_common::ct`).
#[map(name = "WEIR_CT4")]
pub static CT4: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(CT_MAX_ENTRIES, 0);

/// See `weir_common::maps::CT4_PREV`.
#[map(name = "WEIR_CT4_PREV")]
pub static CT4_PREV: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(1, 0);

/// See `weir_common::maps::CT_PREV`.
#[map(name = "WEIR_CT_PREV")]
pub static CT_PREV: LruHashMap<CtKey, CtTail> = LruHashMap::pinned(1, 0);

/// See `weir_common::maps::CT_PREV_V3`.
#[map(name = "WEIR_CT_PREV_V3")]
pub static CT_PREV_V3: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(1, 0);

/// See `weir_common::maps::CT_PREV_V1`.
#[map(name = "WEIR_CT_PREV_V1")]
pub static CT_PREV_V1: LruHashMap<CtKey, CtEntryV1> = LruHashMap::pinned(1, 0);
#[map(name = "WEIR_CT_STATS")]
pub static CT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(CT_STATS_MAX_ENTRIES, 0);

#[map(name = "WEIR_CT_OWNERS")]
pub static CT_OWNERS: HashMap<u32, u64> = HashMap::pinned(CT_OWNERS_MAX_ENTRIES, 0);

#[map(name = "WEIR_LINKS")]
pub static LINKS: HashMap<u32, LinkInfo> = HashMap::pinned(LINKS_MAX_ENTRIES, 0);

#[map(name = "WEIR_LINK_MACS")]
pub static LINK_MACS: LruHashMap<u32, LinkMacs> = LruHashMap::pinned(LINKS_MAX_ENTRIES, 0);

#[map(name = "WEIR_POD_ADDRS")]
pub static POD_ADDRS: HashMap<Addr, u32> = HashMap::pinned(POD_ADDRS_MAX_ENTRIES, 0);

#[map(name = "WEIR_TUNNEL")]
pub static TUNNEL: LpmTrie<Addr, TunnelEndpoint> = LpmTrie::pinned(TUNNEL_MAX_ENTRIES, 0);

#[map(name = "WEIR_NODES")]
pub static NODES: HashMap<Addr, u32> = HashMap::pinned(NODES_MAX_ENTRIES, 0);

#[map(name = "WEIR_MASQ")]
pub static MASQ: HashMap<u32, MasqDevice> = HashMap::pinned(MASQ_MAX_ENTRIES, 0);

#[map(name = "WEIR_NO_MASQ")]
pub static NO_MASQ: LpmTrie<Addr, u32> = LpmTrie::pinned(NO_MASQ_MAX_ENTRIES, 0);

#[map(name = "WEIR_NS_FLOWS")]
pub static NS_FLOWS: PerCpuArray<u64> = PerCpuArray::pinned(NS_FLOWS_MAX_ENTRIES, 0);

#[map(name = "WEIR_XDP_STATS")]
pub static XDP_STATS: PerCpuArray<u64> = PerCpuArray::pinned(XDP_STATS_MAX_ENTRIES, 0);

#[map(name = "WEIR_SOCK_REVNAT")]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::pinned(SOCK_REVNAT_MAX_ENTRIES, 0);

#[map(name = "WEIR_SOCK_REVNAT_POD")]
pub static SOCK_REVNAT_POD: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::pinned(SOCK_REVNAT_POD_MAX_ENTRIES, 0);

#[map(name = "WEIR_SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> = LpmTrie::pinned(SOURCE_RANGES_MAX_ENTRIES, 0);

#[map(name = "WEIR_SNAT")]
pub static SNAT: HashMap<CtKey, CtEntry> = HashMap::pinned(SNAT_MAX_ENTRIES, 0);

/// See `weir_common::maps::SNAT_PREV`.
#[map(name = "WEIR_SNAT_PREV")]
pub static SNAT_PREV: HashMap<CtKey, CtEntry> = HashMap::pinned(1, 0);

/// See `weir_common::maps::SNAT_PREV_V1`.
#[map(name = "WEIR_SNAT_PREV_V1")]
pub static SNAT_PREV_V1: HashMap<CtKey, CtEntryV1> = HashMap::pinned(1, 0);

#[map(name = "WEIR_SNAT_STATS")]
pub static SNAT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(CT_STATS_MAX_ENTRIES, 0);

#[map(name = "WEIR_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGS_MAX_ENTRIES, 0);

#[map(name = "WEIR_CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

#[map(name = "WEIR_ENDPOINTS")]
pub static ENDPOINTS: HashMap<Addr, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX_ENTRIES, 0);

#[map(name = "WEIR_IPCACHE")]
pub static IPCACHE: LpmTrie<IpcacheKeyData, IpInfo> = LpmTrie::pinned(IPCACHE_MAX_ENTRIES, 0);

#[map(name = "WEIR_POLICY")]
pub static POLICY: LpmTrie<PolicyKeyData, PolicyValue> = LpmTrie::pinned(POLICY_MAX_ENTRIES, 0);

/// Written by the agent and read by the CLI only; defined here so that
/// loading the object creates and pins it with the others.
#[map(name = "WEIR_NAMES")]
pub static NAMES: HashMap<NameKey, RuleName> = HashMap::pinned(NAMES_MAX_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Written by the agent and read by the CLI only (see [`NAMES`]).
#[map(name = "WEIR_SVC_TIMES")]
pub static SVC_TIMES: HashMap<u32, u64> = HashMap::pinned(FRONTENDS_MAX_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Written by the agent beside [`FRONTENDS`]; read by no program yet
/// (see `weir_common::maps::SVC_ADDRS`).
#[map(name = "WEIR_SVC_ADDRS")]
pub static SVC_ADDRS: HashMap<u32, FrontendKey> = HashMap::pinned(FRONTENDS_MAX_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Written and read by the agent only (see [`NAMES`]).
#[map(name = "WEIR_LB_IDS")]
pub static LB_IDS: Array<LbIds> = Array::pinned(1, 0);

#[map(name = "WEIR_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "WEIR_MON_EVENTS")]
pub static MON_EVENTS: RingBuf = RingBuf::pinned(MON_EVENTS_BYTES, 0);

/// CLOCK_MONOTONIC ns until which `weir monitor` is watching.
#[map(name = "WEIR_MON_LEASE")]
pub static MON_LEASE: Array<u64> = Array::pinned(1, 0);

/// Copies a map value out of a lookup result.
#[inline(always)]
pub fn read<V: Copy>(p: Option<*const V>) -> Option<V> {
    // SAFETY: the pointer comes from a successful map lookup and is valid
    // for this program run; the value is plain data.
    p.map(|p| unsafe { *p })
}

/// Per-CPU scratch space for the large structures of the service path,
/// which would not fit the 512-byte BPF stack alongside the call chain.
#[repr(C)]
pub struct Scratch {
    pub fkey: CtKey,
    pub rkey: CtKey,
    pub fwd: CtEntry,
    pub rev: CtEntry,
    pub frontend: FrontendKey,
    pub backend: Backend,
    /// The policy path's conntrack key and entry.
    pub pkey: CtKey,
    pub pentry: CtEntry,
    pub event: DatapathEvent,
    /// The policy decision's inputs (see `policy::judge`).
    pub judge_tuple: crate::policy::Tuple,
    pub judge_ep: EndpointInfo,
    /// Its decision, for the debug log (`debug::weir_log_policy`).
    pub judge_decision: weir_logic::policy::Decision,
    /// Where `fwd::redirect_v4` sent the last packet, for the debug log
    /// (`debug::note_fwd`).
    pub fwd_what: u32,
    pub fwd_value: u32,
    /// The IPv6 addresses of the debug record being written, one slot per
    /// address it prints (`debug::ep6`).
    pub log_addrs: [Addr; 4],
    /// The first fragment's key and ports, recorded once it passed.
    pub frag_key: FragKey,
    pub frag_val: FragValue,
    /// A conntrack entry read back (races, collisions, ICMP errors).
    pub other: CtEntry,
    /// The header an ICMP error quotes.
    pub icmp_inner: crate::quoted::Inner,
    /// A packet's addresses and ports before `lb` translated it (to undo
    /// the translation, or log it).
    pub orig: crate::hdr::Tuple,
    /// The IPv6 packet the pod hooks judge (`pod_v6`).
    pub v6: crate::hdr::Ipv6Pkt,
    /// The flags of the frontend `lb::forward` matched last.
    pub svc_flags: u32,
    /// The frontend `lb::frontend` found for the packet (valid when it
    /// returned other than `lb::FRONT_NONE`), for `lb::forward`.
    pub svc: Service,
    /// What `lb::frontend` returned for the packet.
    pub front: u32,
    /// An entry conntrack takes over from the previous layout's map
    /// (`conntrack::carry_over`), converted.
    pub carried: CtEntry,
    /// An IPv4 key and entry on their way into `WEIR_CT4`, narrowed
    /// (`conntrack`).
    pub key4: CtKey4,
    pub entry4: CtEntry4,
    /// An IPv6 entry on its way into `WEIR_CT`, narrowed (`conntrack`).
    pub tail: CtTail,
    /// A masqueraded IPv6 flow's reverse key, and its entry on the way in,
    /// as `WEIR_CT6_MASQ` holds them (`conntrack`).
    pub masq_key: CtMasqKey6,
    pub masq: CtMasq6,
}

#[map(name = "WEIR_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU value; a program run never migrates CPU and does not
    // nest with itself on one CPU for the same hook.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
