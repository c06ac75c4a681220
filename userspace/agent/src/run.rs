//! The agent's main loop: source events → cluster state → reconcile →
//! maps; link events → program attachment; timers → conntrack GC and full
//! resync; signals → exit with every pin left in place.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use weir_common::maps::{BACKENDS_MAX_ENTRIES, FRONTENDS_MAX_ENTRIES};
use weir_datapath::{
    ct::{monotonic_ns, Conntrack},
    lb::Lb,
    LoadOptions, PinLayout, PodDatapath,
};
use weir_model::{state::Affected, ClusterState, Kind, Warning};
use weir_source::{self as source, SourceEvent};

use crate::{
    endpoint_api::ApiCall,
    endpoints::Endpoints,
    links::NetEvent,
    args::Args,
    links::LinkWatcher,
    metrics::{self, KindLabels, Metrics},
    events,
    pods::PodInterfaces,
    policy::PolicyReconciler,
    reconcile::{Outcome, Reconciler},
};

pub async fn run(args: Args) -> anyhow::Result<()> {
    let layout = PinLayout::new(&args.bpffs);
    if args.install_cni || args.uninstall_cni {
        return cni_install(&args).await;
    }
    if args.cleanup {
        layout.remove_all()?;
        tracing::info!(bpffs = %args.bpffs.display(), "removed all pins; weir's programs are detached");
        return Ok(());
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let metrics = Metrics::new(layout.clone());
    metrics::serve(args.metrics_addr, metrics.clone())
        .await
        .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
    if let Err(error) = crate::health::serve_node(args.healthz_bind_address, metrics.clone()).await {
        tracing::error!(%error, addr = %args.healthz_bind_address, "cannot serve the node health check; going on without it");
    }
    let (api_tx, mut api_rx) = mpsc::channel(256);
    let socket = args.run_dir.join(ENDPOINT_SOCKET);
    crate::endpoint_api::serve(&socket, api_tx, metrics.clone()).await.context("serving the endpoint API weir-cni calls")?;
    tracing::info!(socket = %socket.display(), "serving the endpoint API");
    let mut svc_health = crate::health::ServiceHealth::default();
    // The health checks the services want, followed change by change.
    let mut health_checks = weir_model::health::HealthChecks::default();
    crate::reserved_ports::ensure((args.masquerade_ports.min, args.masquerade_ports.max))?;

    let opts = LoadOptions {
        lb_table_slots: args.lb_table_slots,
        frontends: args.frontends_max_entries,
        backends: args.backends_max_entries,
        ct_entries: args.ct_max_entries,
        ct6_entries: args.ct6_max_entries,
        snat_entries: args.masquerade_max_entries,
        verifier_log: args.bpf_verifier_log_level.into(),
        kernel_log: args.bpf_log_level.into(),
    };
    // The selection table grows at runtime and never shrinks: a larger
    // pinned one keeps its size.
    let opts = opts.keeping_pinned_table(&layout).context("reading the pinned selection table's size")?;
    if opts.lb_table_slots > args.lb_table_slots {
        tracing::info!(slots = opts.lb_table_slots, requested = args.lb_table_slots, "keeping the pinned selection table, which grew past --lb-table-slots");
    }
    // Maps in an older layout or another size are rebuilt, their entries
    // carried over, before anything loads over them; a map this build
    // cannot convert stops the agent here with the datapath untouched.
    let migration = weir_datapath::migrate::prepare(&layout, &opts).context("checking the pinned maps' layouts")?;
    for m in &migration.rebuilt {
        tracing::info!(
            map = %m.name, from_version = m.from_version, to_version = m.to_version, from_entries = m.from_entries,
            to_entries = m.to_entries, copied = m.copied, dropped = m.dropped, renamed = m.renamed, stateful = m.stateful, "migrated a pinned map"
        );
        if m.dropped > 0 {
            tracing::warn!(map = %m.name, dropped = m.dropped, to_entries = m.to_entries, "entries did not fit the rebuilt map");
        }
    }
    if !migration.rebuilt.is_empty() {
        tracing::info!(links = migration.links_swapped, defunct = migration.links_defunct, "migration done: every pinned link runs the new programs");
    }
    let mut dp = PodDatapath::load_with(&layout, &opts).context("loading the pod datapath")?;
    let kernel_logs = !opts.kernel_log.is_off();
    if kernel_logs {
        tracing::info!(level = ?opts.kernel_log, target = crate::bpf_log::TARGET, "kernel debug logs on: every log call at this level runs per packet");
        crate::bpf_log::spawn("pod", dp.kernel_log(crate::bpf_log::ToTracing::new("pod")).context("reading the pod object's kernel logs")?);
    }
    let config_map = weir_datapath::config::ConfigMap::open(&layout).context("opening the datapath configuration")?;
    let mut cfg = args.datapath_config();
    // The node address an earlier agent wrote stays until this one reads
    // the Node: established masqueraded flows are translated with it.
    if let Some(old) = config_map.get() {
        cfg.node_addr = old.node_addr;
        cfg.node_addr6 = old.node_addr6;
    }
    // The socket-level programs act only on this namespace's sockets.
    cfg.netns_cookie = netns_cookie().context("reading this network namespace's cookie")?;
    dp.set_config(&cfg).context("writing the datapath configuration")?;
    let mut ct = Conntrack::open(&layout).context("opening conntrack")?;
    let mut snat = Conntrack::open_table(&layout, weir_datapath::ct::Table::SNAT).context("opening the masquerade table")?;
    let mut snat_refused = 0u64;
    let link_addrs = weir_datapath::links::LinkAddrs::open(&layout).context("opening the pod link map")?;
    let mut pods = PodInterfaces::new(dp, link_addrs, metrics.clone());
    let mut watcher = LinkWatcher::subscribe(args.netlink_rcvbuf).context("subscribing to rtnetlink link and route events")?;
    let existing = watcher.dump().await.context("listing links")?;
    let routes = watcher.dump_routes().await.context("listing routes")?;
    pods.prune_missing(&existing);
    // Addresses before programs: a pod link's programs drop every source
    // address the link does not own.
    for ev in &existing {
        pods.note_link(ev);
    }
    pods.routes(&routes);
    for ev in &existing {
        pods.apply(ev);
    }
    let mut node_dp = weir_datapath::NodeDatapath::load(&layout, &opts).context("loading the node datapath")?;
    if kernel_logs {
        crate::bpf_log::spawn("node", node_dp.kernel_log(crate::bpf_log::ToTracing::new("node")).context("reading the node object's kernel logs")?);
    }
    let _sock_dp = attach_socket_lb(&layout, &opts, args.cgroup_root.clone())?;
    weir_datapath::migrate::stamp(&layout, &opts, concat!("weir-agent ", env!("CARGO_PKG_VERSION"))).context("recording the maps' layout versions")?;
    // Connected UDP sockets the socket programs translated, swept when
    // their backends leave (only with the programs attached).
    let revnat = match &_sock_dp {
        Some(_) => Some(weir_datapath::cgroup::SockRevNat::open(&layout).context("opening the socket reverse-translation map")?),
        None => None,
    };
    let tunnel_maps = weir_datapath::tunnel::TunnelMaps::open(&layout).context("opening the tunnel maps")?;
    let spec = crate::node_net::NodeNetworkSpec {
        routing: args.routing,
        node: args.node_name.clone(),
        tunnel_port: args.tunnel_port,
        explicit_devices: args.devices.clone(),
        tunnel_maps: Some(tunnel_maps),
        masq: Some(crate::node_net::MasqSettings {
            enabled: args.masquerade,
            ports: (args.masquerade_ports.min, args.masquerade_ports.max),
            extra_inside: args.non_masquerade_cidrs.clone(),
            maps: weir_datapath::masq::MasqMaps::open(&layout).context("opening the masquerade maps")?,
        }),
        config: Some(crate::node_net::NodeAddrConfig { map: config_map, cfg }),
    };
    let mut node_net = crate::node_net::NodeNetwork::new(spec, watcher.handle(), node_dp);
    node_net.set_xdp(args.xdp);

    // Adopt what an earlier agent programmed; nothing is flushed.
    let mut lb = Lb::open(&layout).context("opening the service maps")?;
    lb.grow_with(opts, args.lb_table_max_slots.max(opts.lb_table_slots));
    let policy = PolicyReconciler::open(&layout, args.node_name.clone()).context("opening the policy maps")?;
    let mut reconciler = Reconciler::new(lb, policy, args.node_name.clone(), args.nodeport_addresses.clone(), args.masquerade_all);
    events::spawn(&layout, metrics.clone()).context("starting the event reader")?;
    let (tx, mut rx) = mpsc::channel(1024);
    let kube_opts = source::KubeOptions { streaming_lists: args.kube_streaming_lists };
    let lookup = source::spawn_with(&args.source, tx, kube_opts).context("starting the object source")?;

    let mut state = ClusterState::new();
    let (mut endpoints, mut fetch_rx) = Endpoints::load(args.run_dir.join("endpoints.json"), args.node_name.clone(), lookup);
    endpoints.keep_links(&mut state, &link_names(&existing));
    endpoints.restore(&mut state);
    let mut synced = false;
    let mut pending = Affected::default();
    let mut pending_since: Option<Instant> = None;
    // The first collection comes one period after the start: right after
    // the sync it would judge flows by backends the sync just wrote. The
    // per-pod counts are rewritten at once after the sync, though (see
    // there).
    let gc_every = Duration::from_secs(args.ct_gc_interval.max(1));
    let mut gc_tick = tokio::time::interval_at(tokio::time::Instant::now() + gc_every, gc_every);
    ct.set_collection_interval(gc_every);
    // The tables' gauges from the start, not from the first collection.
    let acc = ct.account(monotonic_ns());
    metrics.datapath.set_ct(&acc);
    metrics.set_conntrack_maps(&acc);
    let acc = snat.account(monotonic_ns());
    metrics.set_map("WEIR_SNAT", acc.entries, acc.capacity);
    let mut resync_tick = tokio::time::interval(Duration::from_secs(args.resync_interval.max(1)));
    resync_tick.tick().await; // the first tick fires at once
    metrics.probes.set_thresholds(Duration::from_secs(args.liveness_timeout.max(1)), Duration::from_secs(args.ready_stale_after));
    // The main loop's heartbeat, for /livez.
    let mut beat_tick = tokio::time::interval(Duration::from_secs(1));
    // Whether work happened since the freed memory was last returned.
    let mut heap_dirty = false;
    tracing::info!(bpffs = %args.bpffs.display(), node = ?args.node_name, source = ?args.source, "weir-agent ready");

    loop {
        tokio::select! {
            _ = beat_tick.tick() => {
                metrics.probes.beat();
                // The last changes' temporaries go back to the OS once the
                // agent is idle, not at the allocator's next busy moment.
                if heap_dirty && synced {
                    crate::memory::release_freed();
                    heap_dirty = false;
                }
            }
            Some(call) = api_rx.recv() => {
                match call {
                    ApiCall::Register { reg, reply } => endpoints.enqueue(reg, reply),
                    ApiCall::Unregister { container_id, ifname, reply } => {
                        pending.merge(endpoints.unregister(&mut state, &container_id, &ifname));
                        let _ = reply.send(());
                    }
                }
                settle_registrations(&mut endpoints, &mut state, synced, &mut pending, &mut reconciler, &mut pods, &watcher, &metrics).await;
                metrics.registered_pods.set(endpoints.count() as i64);
            }
            Some(f) = fetch_rx.recv() => {
                endpoints.fetched(f);
                settle_registrations(&mut endpoints, &mut state, synced, &mut pending, &mut reconciler, &mut pods, &watcher, &metrics).await;
            }
            _ = tokio::time::sleep_until(endpoints.wakeup()), if endpoints.is_waiting() => {
                settle_registrations(&mut endpoints, &mut state, synced, &mut pending, &mut reconciler, &mut pods, &watcher, &metrics).await;
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { anyhow::bail!("the object source stopped") };
                heap_dirty = true;
                let mut next = Some(ev);
                // Batch everything already queued into one reconcile.
                while let Some(ev) = next {
                    match ev {
                        SourceEvent::Changes { changes, warnings, at } => {
                            report_warnings(&metrics, &warnings);
                            let mut work = false;
                            for c in changes {
                                let a = state.apply(c);
                                work |= !a.is_empty();
                                pending.merge(a);
                            }
                            // Only a change that is work starts the clock: a
                            // heartbeat must not age the next real change.
                            if work {
                                pending_since = Some(pending_since.map_or(at, |p| p.min(at)));
                            }
                        }
                        SourceEvent::Synced if !synced => {
                            synced = true;
                            let start = Instant::now();
                            let addrs = node_net.sync(&state, &watcher, &metrics).await;
                            reconciler.set_device_addrs(addrs);
                            let out = reconciler.full_sync(&state);
                            let took = start.elapsed();
                            sweep_udp_sockets(revnat.as_ref(), &mut reconciler, &metrics);
                            // The per-pod counts the kernel's quota reads only
                            // grow while no agent rewrites them: a restarted
                            // agent recounts at once (and takes out what
                            // expired); flows of backends that left are judged
                            // at the first collection, as ever.
                            let recount = ct.gc(monotonic_ns());
                            metrics.ct_collected.inc_by(recount.deleted as u64);
                            metrics.datapath.set_ct(&recount.account);
                            metrics.set_conntrack_maps(&recount.account);
                            health_checks.rebuild(&state, args.node_name.as_deref());
                            svc_health.sync(health_checks.by_port(), &metrics).await;
                            pending = Affected::default();
                            pending_since = None;
                            metrics.set_ready();
                            update_gauges(&metrics, &state, &mut reconciler);
                            // Logged once ready and counted: whoever waits
                            // for this line finds /readyz true and the maps'
                            // gauges set (the end of the batch sets them
                            // again, after the memory is packed and freed).
                            log_outcome("initial sync", &out, took, &metrics);
                            // Only once the load's last garbage is freed (the
                            // affected set above holds every service):
                            // otherwise the allocator's first large request
                            // after the sync, on the first change, pays for
                            // consolidating it (20-40 ms at 100,000 services).
                            drop(out);
                            let packing = Instant::now();
                            state.pack();
                            reconciler.pack();
                            let packed_ms = packing.elapsed().as_millis();
                            crate::memory::release_freed();
                            let heap = crate::memory::usage();
                            tracing::info!(committed_kib = heap.committed / 1024, peak_committed_kib = heap.peak_committed / 1024, packed_ms, "heap once synced");
                        }
                        SourceEvent::Synced => {}
                        SourceEvent::WatchHealth { kind, failing } => {
                            if failing {
                                tracing::debug!(kind = kind.as_str(), "the watch failed; /readyz turns false if it lasts");
                            } else {
                                tracing::info!(kind = kind.as_str(), "the watch works again");
                            }
                            metrics.probes.watch_failing(kind.as_str(), failing);
                        }
                    }
                    next = rx.try_recv().ok();
                }
                if synced && !pending.is_empty() {
                    if pending.nodes {
                        let addrs = node_net.sync(&state, &watcher, &metrics).await;
                        pending.all |= reconciler.set_device_addrs(addrs);
                    }
                    let affected = std::mem::take(&mut pending);
                    let out = reconciler.apply(&state, &affected);
                    if out.members_dropped > 0 {
                        sweep_udp_sockets(revnat.as_ref(), &mut reconciler, &metrics);
                    }
                    health_checks.update(&state, &affected, args.node_name.as_deref());
                    svc_health.sync(health_checks.by_port(), &metrics).await;
                    if let Some(at) = pending_since.take() {
                        metrics.programming_latency.observe(at.elapsed().as_secs_f64());
                        log_outcome("reconciled", &out, at.elapsed(), &metrics);
                    }
                }
                if endpoints.is_waiting() {
                    // Registrations waiting for a pod this batch delivered.
                    settle_registrations(&mut endpoints, &mut state, synced, &mut pending, &mut reconciler, &mut pods, &watcher, &metrics).await;
                }
                update_gauges(&metrics, &state, &mut reconciler);
                metrics.registered_pods.set(endpoints.count() as i64);
            }
            ev = watcher.next() => match ev {
                Some(NetEvent::Addr) if synced => {
                    // An uplink's addresses changed: NodePorts follow.
                    let addrs = node_net.sync(&state, &watcher, &metrics).await;
                    if reconciler.set_device_addrs(addrs) {
                        let start = Instant::now();
                        let out = reconciler.apply(&state, &Affected { all: true, ..Affected::default() });
                        log_outcome("node addresses changed", &out, start.elapsed(), &metrics);
                        if out.members_dropped > 0 {
                            sweep_udp_sockets(revnat.as_ref(), &mut reconciler, &metrics);
                        }
                    }
                }
                Some(NetEvent::Overrun) => {
                    metrics.netlink_overruns.inc();
                    match (watcher.dump().await, watcher.dump_routes().await) {
                        (Ok(links), Ok(routes)) => {
                            tracing::warn!(links = links.len(), "rtnetlink events were lost (receive buffer full): listed links and routes again");
                            pending.merge(endpoints.keep_links(&mut state, &link_names(&links)));
                            pods.relist(&links, &routes);
                        }
                        (Err(error), _) | (_, Err(error)) => {
                            tracing::error!(%error, "rtnetlink events were lost and listing links and routes failed; the next resync lists them again");
                        }
                    }
                }
                Some(ev) => {
                    if let NetEvent::Link(crate::links::LinkEvent::Gone { name, .. }) = &ev {
                        let a = endpoints.forget_link(&mut state, name);
                        if synced && !a.is_empty() {
                            let out = reconciler.apply(&state, &a);
                            log_outcome("registered pod's link gone", &out, Duration::ZERO, &metrics);
                        }
                    }
                    pods.apply_net(&ev);
                }
                None => anyhow::bail!("rtnetlink connection closed"),
            },
            _ = gc_tick.tick() => {
                // Flows whose backend is gone are taken out in the same
                // scan (the kernel already re-selects them; see
                // `Lb::drop_members`). Before the first sync the backends
                // are only what the maps held: nothing is judged then.
                let lb = reconciler.lb();
                let out = ct.gc_with(monotonic_ns(), |_, e| synced && !lb.backend_is(e.backend_id, &e.nat_addr, e.nat_port));
                metrics.ct_collected.inc_by(out.deleted as u64);
                let before = metrics.datapath.ct_evicted();
                metrics.datapath.set_ct(&out.account);
                metrics.set_conntrack_maps(&out.account);
                if out.account.evicted > before {
                    tracing::warn!(
                        evicted = out.account.evicted - before,
                        ipv4_entries = out.account.entries_v4,
                        ipv4_capacity = out.account.capacity_v4,
                        ipv6_entries = out.account.entries.saturating_sub(out.account.entries_v4 + out.account.entries_masq6),
                        ipv6_capacity = out.account.capacity.saturating_sub(out.account.capacity_v4 + out.account.capacity_masq6),
                        ipv6_masqueraded_entries = out.account.entries_masq6,
                        ipv6_masqueraded_capacity = out.account.capacity_masq6,
                        "conntrack table full: the LRU evicted entries (raise --ct-max-entries for IPv4 or --ct6-max-entries for IPv6, or lower --ct-max-per-endpoint)"
                    );
                }
                let out = snat.gc(monotonic_ns());
                metrics.set_map("WEIR_SNAT", out.account.entries, out.account.capacity);
                if out.account.insert_failed > snat_refused {
                    tracing::warn!(
                        refused = out.account.insert_failed - snat_refused,
                        entries = out.account.entries,
                        capacity = out.account.capacity,
                        "masquerade table full: new flows out of the cluster were dropped (raise --masquerade-max-entries)"
                    );
                    snat_refused = out.account.insert_failed;
                }
            }
            _ = resync_tick.tick(), if synced => {
                // Links and routes as they are now: repairs whatever a lost
                // event left behind.
                match (watcher.dump().await, watcher.dump_routes().await) {
                    (Ok(links), Ok(routes)) => {
                        pending.merge(endpoints.keep_links(&mut state, &link_names(&links)));
                        pods.relist(&links, &routes);
                    }
                    (Err(error), _) | (_, Err(error)) => tracing::warn!(%error, "listing links and routes for the pod link resync"),
                }
                let addrs = node_net.sync(&state, &watcher, &metrics).await;
                reconciler.set_device_addrs(addrs);
                let start = Instant::now();
                let out = reconciler.resync(&state);
                sweep_udp_sockets(revnat.as_ref(), &mut reconciler, &metrics);
                metrics.repairs.inc_by(out.repairs as u64);
                if out.repairs > 0 || !out.errors.is_empty() || out.map_writes > 0 {
                    log_outcome("resync", &out, start.elapsed(), &metrics);
                }
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: exiting, pins stay in place");
                return Ok(());
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: exiting, pins stay in place");
                return Ok(());
            }
        }
    }
}

/// The endpoint API's socket in `--run-dir`.
const ENDPOINT_SOCKET: &str = "agent.sock";

fn link_names(links: &[crate::links::LinkEvent]) -> std::collections::BTreeSet<String> {
    links
        .iter()
        .filter_map(|e| match e {
            crate::links::LinkEvent::Present { name, .. } => Some(name.clone()),
            crate::links::LinkEvent::Gone { .. } => None,
        })
        .collect()
}

/// Finishes the registrations that can be finished: those whose pod is
/// known (and the agent synced) enter the state; the links are listed
/// (so the new veth has its programs and its routed addresses, whatever
/// events are still queued); everything pending is programmed at once;
/// each is answered with what the datapath now holds.
#[allow(clippy::too_many_arguments)]
async fn settle_registrations(
    endpoints: &mut Endpoints,
    state: &mut ClusterState,
    synced: bool,
    pending: &mut Affected,
    reconciler: &mut Reconciler,
    pods: &mut PodInterfaces,
    watcher: &LinkWatcher,
    metrics: &Metrics,
) {
    let ready = endpoints.poll(state, synced);
    if !synced {
        return;
    }
    if ready.is_empty() {
        // An unregistration (or a link gone) may have left work.
        if !pending.is_empty() {
            let start = Instant::now();
            let out = reconciler.apply(state, &std::mem::take(pending));
            log_outcome("registrations changed", &out, start.elapsed(), metrics);
        }
        return;
    }
    let start = Instant::now();
    for r in &ready {
        pending.merge(endpoints.commit(state, r));
    }
    // The links, and the routes through the registered pods' links alone
    // (a node of a large cluster routes to every other node: 4,000
    // routes the registration need not read).
    match watcher.dump().await {
        Ok(links) => {
            let names: Vec<&str> = ready.iter().map(|r| r.reg.host_interface.as_str()).collect();
            let ifindexes: Vec<u32> = links
                .iter()
                .filter_map(|l| match l {
                    crate::links::LinkEvent::Present { ifindex, name } if names.contains(&name.as_str()) => Some(*ifindex),
                    _ => None,
                })
                .collect();
            match watcher.dump_routes_via(&ifindexes).await {
                Ok(routes) => pods.relist_via(&links, &ifindexes, &routes),
                Err(error) => {
                    tracing::warn!(%error, "listing the registered pods' routes alone; listing every route");
                    match watcher.dump_routes().await {
                        Ok(routes) => pods.relist(&links, &routes),
                        Err(error) => tracing::error!(%error, "listing routes for registered pods"),
                    }
                }
            }
        }
        Err(error) => tracing::error!(%error, "listing links for registered pods"),
    }
    let out = reconciler.apply(state, &std::mem::take(pending));
    log_outcome("registered pods programmed", &out, start.elapsed(), metrics);
    metrics.programming_latency.observe(start.elapsed().as_secs_f64());
    for r in ready {
        let result = crate::endpoints::programmed(&r.reg, pods.link_ready(&r.reg.host_interface, &r.reg.addresses), |ip| reconciler.policy().endpoint(ip));
        match &result {
            Ok(p) => tracing::info!(pod = %format!("{}/{}", r.reg.namespace, r.reg.name), host_interface = %r.reg.host_interface, addresses = ?p.addresses.iter().map(|a| a.address).collect::<Vec<_>>(), took_us = start.elapsed().as_micros() as u64, "pod registered and programmed"),
            Err(e) => tracing::error!(pod = %format!("{}/{}", r.reg.namespace, r.reg.name), reason = %e.message, "registered pod not programmed"),
        }
        r.answer(result);
    }
}

/// Loads the socket object and attaches it to the cgroup hierarchy
/// (`--cgroup-root`, else the cgroup2 mount found). Without a cgroup2
/// hierarchy the node's own processes get no service translation; the
/// rest works.
fn attach_socket_lb(
    layout: &PinLayout,
    opts: &LoadOptions,
    root: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<weir_datapath::cgroup::SockDatapath>> {
    let found = match &root {
        Some(r) => weir_datapath::cgroup::resolve_cgroup_root(r),
        None => weir_datapath::cgroup::default_cgroup_root(),
    };
    let Some(root) = found else {
        tracing::warn!(cgroup_root = ?root, "no cgroup v2 hierarchy found: the node's own processes cannot reach services (pass --cgroup-root)");
        weir_datapath::cgroup::remove_retired(layout).context("removing the links of retired socket programs")?;
        return Ok(None);
    };
    let mut sock = weir_datapath::cgroup::SockDatapath::load(layout, opts).context("loading the socket object")?;
    if !opts.kernel_log.is_off() {
        crate::bpf_log::spawn("sock", sock.kernel_log(crate::bpf_log::ToTracing::new("sock")).context("reading the socket object's kernel logs")?);
    }
    sock.attach(&root).with_context(|| format!("attaching the socket-level load balancer to {}", root.display()))?;
    tracing::info!(cgroup = %root.display(), "socket-level load balancing attached");
    Ok(Some(sock))
}

/// The cookie of the network namespace the agent runs in.
fn netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd, and an out buffer of the size we pass.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Destroys the node's connected UDP sockets whose backend left their
/// frontend (`stale_sockets`). Failures are reported, never fatal.
fn sweep_udp_sockets(revnat: Option<&weir_datapath::cgroup::SockRevNat>, reconciler: &mut Reconciler, metrics: &Metrics) {
    let Some(revnat) = revnat else { return };
    let lb = reconciler.lb();
    let proto = weir_common::lb::PROTO_UDP;
    let result = crate::stale_sockets::sweep(
        |cookie, peer, port| revnat.frontend_of(cookie, peer, port, proto),
        |frontend, port, backend, bport| lb.lists(frontend, port, proto, backend, bport),
    );
    match result {
        Ok(s) => {
            metrics.udp_sockets_destroyed.inc_by(s.destroyed as u64);
        }
        Err(e) => tracing::warn!(error = %weir_datapath::error::chain(&e), "sweeping connected UDP sockets of gone backends"),
    }
}

fn report_warnings(metrics: &Metrics, warnings: &[Warning]) {
    for w in warnings {
        tracing::warn!(input = %w, "rejected input");
        metrics.input_warnings.get_or_create(&KindLabels { kind: w.kind().into() }).inc();
    }
}

fn log_outcome(what: &str, out: &Outcome, took: Duration, metrics: &Metrics) {
    for (object, e) in &out.errors {
        tracing::error!(%object, error = %weir_datapath::error::chain(e), kind = e.kind(), "programming failed");
        metrics.reconcile_errors.get_or_create(&KindLabels { kind: e.kind().into() }).inc();
    }
    tracing::info!(
        services = out.services,
        writes = out.map_writes,
        ct_purged = out.ct_purged,
        policy_writes = out.policy_writes,
        policy = out.policy_path.map(|p| match p {
            crate::policy::PolicyPath::Full => "full",
            crate::policy::PolicyPath::Delta => "delta",
        }),
        repairs = out.repairs,
        errors = out.errors.len(),
        took_us = took.as_micros() as u64,
        work_us = out.work.as_micros() as u64,
        "{what}"
    );
}

fn update_gauges(metrics: &Metrics, state: &ClusterState, reconciler: &mut Reconciler) {
    for (kind, n) in state.counts() {
        metrics.objects.get_or_create(&KindLabels { kind: kind.as_str().into() }).set(n as i64);
    }
    let (frontends, backends, slots) = reconciler.lb().entry_counts();
    let (_, slot_capacity) = reconciler.lb().table_usage();
    let growths = u64::from(reconciler.lb().table_growths());
    let counted = metrics.lb_table_growths.get();
    if growths > counted {
        metrics.lb_table_growths.inc_by(growths - counted);
    }
    metrics.set_map("WEIR_FRONTENDS", frontends as u64, u64::from(FRONTENDS_MAX_ENTRIES));
    metrics.set_map("WEIR_BACKENDS", backends as u64, u64::from(BACKENDS_MAX_ENTRIES));
    metrics.set_map("WEIR_LB_TABLE", u64::from(slots), u64::from(slot_capacity));
    let (eps, ipcache, entries) = reconciler.policy().entry_counts();
    metrics.set_map("WEIR_ENDPOINTS", eps as u64, u64::from(weir_common::maps::ENDPOINTS_MAX_ENTRIES));
    metrics.set_map("WEIR_IPCACHE", ipcache as u64, u64::from(weir_common::maps::IPCACHE_MAX_ENTRIES));
    metrics.set_map("WEIR_POLICY", entries as u64, u64::from(weir_common::maps::POLICY_MAX_ENTRIES));
    for kind in [Kind::NetworkPolicy, Kind::WeirNetworkPolicy, Kind::ClusterNetworkPolicy] {
        metrics.policies_failed_closed.get_or_create(&KindLabels { kind: kind.as_str().into() }).set(reconciler.policy().failed_closed(kind) as i64);
    }
}


/// `--install-cni` / `--uninstall-cni`: an init step, then exit.
async fn cni_install(args: &Args) -> anyhow::Result<()> {
    if args.uninstall_cni {
        weir_cni::install::uninstall(&args.cni_bin_dir, &args.cni_conf_dir)?;
        tracing::info!(bin_dir = %args.cni_bin_dir.display(), conf_dir = %args.cni_conf_dir.display(), "removed weir-cni and its conflist");
        return Ok(());
    }
    let plugin = match &args.cni_plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("weir-cni"),
    };
    let cidrs = match args.pod_cidr.as_deref().context("--install-cni needs --pod-cidr")? {
        "node" => node_pod_cidrs(args.node_name.as_deref().context("--pod-cidr node needs --node-name")?).await?,
        c => c.to_string(),
    };
    let cidrs = ipnet_check::pod_cidrs(&cidrs)?;
    let mtu = match args.cni_mtu {
        Some(m) => Some(m),
        // An IPv6-only cluster's nodes have IPv6 InternalIPs only: its
        // tunnel runs over IPv6.
        None => derived_pod_mtu(args, cidrs.iter().all(|c| c.contains(':'))).await,
    };
    let agent_socket = args.run_dir.join(ENDPOINT_SOCKET);
    let to = weir_cni::install::Install { bin_dir: &args.cni_bin_dir, conf_dir: &args.cni_conf_dir, pod_cidrs: &cidrs, mtu, agent_socket: &agent_socket, fail_open: args.cni_fail_open };
    let written = weir_cni::install::install(&plugin, &to)?;
    tracing::info!(?written, ?mtu, agent_socket = %agent_socket.display(), "installed weir-cni");
    Ok(())
}

/// The pod MTU for the conflist when `--cni-mtu` is not given: the
/// uplink's (the first of `--devices`, else the default route's device)
/// less what `--routing` adds (over an IPv6 underlay with `v6_underlay`).
/// `None` (the plugin's default) when no uplink is found, with a warning.
async fn derived_pod_mtu(args: &Args, v6_underlay: bool) -> Option<u32> {
    let (conn, handle, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, "no rtnetlink connection to read the uplink MTU; pass --cni-mtu");
            return None;
        }
    };
    tokio::spawn(conn);
    let dev = match args.devices.first() {
        Some(name) => crate::devices::ifindex(name),
        None => crate::links::default_route_dev(&handle).await,
    };
    let Some(ifindex) = dev else {
        tracing::warn!(devices = ?args.devices, "no uplink device (no --devices, no default route) to derive the pod MTU from; pass --cni-mtu");
        return None;
    };
    let uplink = crate::links::link_mtu(&handle, ifindex).await?;
    let mtu = crate::node_net::pod_mtu(uplink, args.routing, v6_underlay);
    tracing::info!(ifindex, uplink_mtu = uplink, pod_mtu = mtu, routing = ?args.routing, "derived the pod MTU");
    Some(mtu)
}

/// `--pod-cidr node`: this node's `spec.podCIDRs` (both families in a
/// dual-stack cluster, comma-separated) or `spec.podCIDR`, from the API
/// server (in a DaemonSet: the init container, with NODE_NAME from the
/// downward API).
async fn node_pod_cidrs(name: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Node;
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API (kube::Config::infer)")?;
    let node = kube::Api::<Node>::all(client).get(name).await.with_context(|| format!("reading Node {name}"))?;
    let spec = node.spec.unwrap_or_default();
    match (spec.pod_cidrs.filter(|c| !c.is_empty()), spec.pod_cidr) {
        (Some(all), _) => Ok(all.join(",")),
        (None, Some(one)) => Ok(one),
        (None, None) => anyhow::bail!(
            "Node {name} has no spec.podCIDR: let the controller-manager allocate node CIDRs (--allocate-node-cidrs), or pass --pod-cidr <CIDR>"
        ),
    }
}

/// A minimal CIDR check (address/prefix) for flags.
mod ipnet_check {
    /// A CIDR's family: true for IPv6.
    pub struct Cidr(pub bool);

    impl std::str::FromStr for Cidr {
        type Err = ();

        fn from_str(s: &str) -> Result<Self, ()> {
            let (addr, len) = s.split_once('/').ok_or(())?;
            let addr: std::net::IpAddr = addr.parse().map_err(|_| ())?;
            let len: u8 = len.parse().map_err(|_| ())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len <= max { Ok(Cidr(addr.is_ipv6())) } else { Err(()) }
        }
    }

    /// `--pod-cidr`: one CIDR, or one per family separated by a comma (a
    /// dual-stack node, as `spec.podCIDRs` lists them).
    pub fn pod_cidrs(s: &str) -> anyhow::Result<Vec<String>> {
        let list: Vec<String> = s.split(',').map(|c| c.trim().to_string()).collect();
        let mut families = Vec::new();
        for c in &list {
            let Ok(Cidr(v6)) = c.parse::<Cidr>() else {
                anyhow::bail!("--pod-cidr {c:?} is not a CIDR (like 10.244.1.0/24 or fd00:10:244:1::/64)");
            };
            if families.contains(&v6) {
                anyhow::bail!("--pod-cidr {s:?} names two {} ranges: give one CIDR per address family", if v6 { "IPv6" } else { "IPv4" });
            }
            families.push(v6);
        }
        Ok(list)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pod_cidrs_take_one_range_per_family() {
            assert_eq!(pod_cidrs("10.244.1.0/24").expect("v4"), ["10.244.1.0/24"]);
            assert_eq!(pod_cidrs("10.244.1.0/24, fd00:10:244:1::/64").expect("dual"), ["10.244.1.0/24", "fd00:10:244:1::/64"]);
            assert_eq!(pod_cidrs("fd00:10:244:1::/64").expect("v6 only"), ["fd00:10:244:1::/64"]);
            let two_v4 = pod_cidrs("10.244.1.0/24,10.244.2.0/24").expect_err("two IPv4 ranges");
            assert!(two_v4.to_string().contains("two IPv4 ranges"), "{two_v4}");
            let bad = pod_cidrs("10.244.1.0/24,fd00::/129").expect_err("a bad prefix");
            assert!(bad.to_string().contains("\"fd00::/129\" is not a CIDR"), "{bad}");
        }
    }
}
