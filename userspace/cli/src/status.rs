//! `weir status`: is the agent up, which programs are attached where, and
//! how full every map is.

use std::{io::{Read as _, Write as _}, net::SocketAddr, time::Duration};

use serde::Serialize;
use weir_datapath::{
    ct::{monotonic_ns, Conntrack, CtAccount},
    inventory::{self, MapFill},
    links::LinkAddrs as LinkMap,
    PinLayout,
};

use crate::{ifnames, output::{print_table, Format}};

#[derive(Debug, Serialize)]
struct Attachment {
    ifname: String,
    ifindex: u32,
    hook: String,
    /// The interface still exists in this network namespace.
    present: bool,
}

#[derive(Debug, Serialize)]
struct LinkAddrs {
    ifindex: u32,
    ifname: Option<String>,
    /// The addresses routed to the link: the only sources it may send from.
    addrs: Vec<std::net::IpAddr>,
}

#[derive(Debug, Serialize)]
struct Status {
    /// "ready", "starting" or "not running" (nothing answers on the metrics address).
    agent: &'static str,
    /// The running agent's version ("weir-agent 0.1.0"), from its answer.
    agent_version: Option<String>,
    attachments: Vec<Attachment>,
    links: Vec<LinkAddrs>,
    /// `null` while conntrack is pinned in another layout than this
    /// build's (an upgrade under way): it is not read then.
    conntrack: Option<CtAccount>,
    maps: Vec<MapFill>,
    /// The agent that last adopted or migrated the datapath (from WEIR_ABI).
    datapath_agent: Option<String>,
    /// Each map's pinned layout version beside this build's.
    layouts: Vec<weir_datapath::migrate::MapStatus>,
    /// Maps a migration has staged and not yet committed.
    migration_in_progress: Vec<String>,
}

/// The agent's state, and its version from the answer's `Server` header.
fn agent_health(addr: SocketAddr) -> (&'static str, Option<String>) {
    let ask = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let Ok(answer) = ask() else { return ("not running", None) };
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    let server = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("server"))
        .map(|(_, v)| v.trim().replacen('/', " ", 1));
    (if answer.starts_with("HTTP/1.1 200") { "ready" } else { "starting" }, server)
}

/// The pinned layout version of `map` when it differs from this build's.
fn other_layout(layouts: &[weir_datapath::migrate::MapStatus], map: &str) -> Option<u32> {
    layouts.iter().find(|l| l.name == map).and_then(|l| l.pinned_version.filter(|v| *v != l.expected_version))
}

pub fn run(layout: &PinLayout, metrics_addr: SocketAddr, format: Format) -> anyhow::Result<()> {
    let maps = inventory::maps(layout)?;
    let tc = layout.link_pins()?.into_iter().map(|p| (p.ifname, p.ifindex, p.hook.as_str()));
    let xdp = weir_datapath::xdp::pinned_on(layout)?.into_iter().map(|(n, i)| (n, i, weir_datapath::xdp::XDP_PROGRAM));
    let attachments = tc
        .chain(xdp)
        .map(|(ifname, ifindex, hook)| Attachment {
            present: ifnames::name_of(ifindex).as_deref() == Some(ifname.as_str()),
            ifname,
            ifindex,
            hook: hook.to_string(),
        })
        .collect();
    let links = LinkMap::open(layout)?
        .all()
        .into_iter()
        .map(|(ifindex, addrs)| LinkAddrs { ifindex, ifname: ifnames::name_of(ifindex), addrs })
        .collect();
    let (datapath_agent, layouts) = weir_datapath::migrate::status(layout)?;
    // Conntrack is read through both IPv6 maps' layouts: either in
    // another (an older agent's datapath, or a migration under way) is not
    // read.
    let other = [weir_common::maps::CT, weir_common::maps::CT6_MASQ].iter().any(|m| other_layout(&layouts, m).is_some());
    let conntrack = if other { None } else { Some(Conntrack::open(layout)?.account(monotonic_ns())) };
    let migration_in_progress = layouts.iter().filter(|l| l.staged).map(|l| l.name.clone()).collect();
    let (agent, agent_version) = agent_health(metrics_addr);
    let st = Status { agent, agent_version, attachments, links, conntrack, maps, datapath_agent, layouts, migration_in_progress };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    match &st.agent_version {
        Some(v) => println!("agent: {}, {v} ({metrics_addr})", st.agent),
        None => println!("agent: {} ({metrics_addr})", st.agent),
    }
    println!("datapath written by: {}", st.datapath_agent.as_deref().unwrap_or("unknown (no layout manifest)"));
    let differ: Vec<String> = st
        .layouts
        .iter()
        .filter(|l| l.pinned_version.is_some_and(|v| v != l.expected_version) || (l.pinned_version.is_none() && l.max_entries.is_some()))
        .map(|l| format!("{} v{} (this weir: v{})", l.name, l.pinned_version.map_or("?".into(), |v| v.to_string()), l.expected_version))
        .collect();
    if differ.is_empty() {
        println!("map layouts: every pinned map at this weir's layout versions");
    } else {
        println!("map layouts differing from this weir's: {}", differ.join(", "));
    }
    if !st.migration_in_progress.is_empty() {
        println!("MIGRATION IN PROGRESS or interrupted (the next agent start finishes it): {}", st.migration_in_progress.join(", "));
    }
    println!();
    let rows: Vec<Vec<String>> = st
        .attachments
        .iter()
        .map(|a| vec![a.ifname.clone(), a.ifindex.to_string(), a.hook.clone(), if a.present { "yes".into() } else { "GONE".into() }])
        .collect();
    print_table(&["INTERFACE", "IFINDEX", "PROGRAM", "PRESENT"], &rows);
    println!();
    let rows: Vec<Vec<String>> = st
        .links
        .iter()
        .map(|l| {
            let addrs: Vec<String> = l.addrs.iter().map(ToString::to_string).collect();
            vec![l.ifname.clone().unwrap_or_else(|| "?".into()), l.ifindex.to_string(), addrs.join(",")]
        })
        .collect();
    print_table(&["POD LINK", "IFINDEX", "SOURCES ALLOWED"], &rows);
    println!();
    if let Some(c) = &st.conntrack {
        let (v6, cap6) = (c.entries.saturating_sub(c.entries_v4 + c.entries_masq6), c.capacity.saturating_sub(c.capacity_v4 + c.capacity_masq6));
        let pct = |n: u64, of: u64| n as f64 * 100.0 / of.max(1) as f64;
        println!(
            "conntrack: {} entries ({} live); IPv4 {} of {} ({:.1}%), IPv6 {} of {} ({:.1}%), IPv6 masqueraded replies {} of {} ({:.1}%); evicted {}, insert failures {}, refused by quota {}, halves rebuilt {}, ports remapped {}",
            c.entries,
            c.live,
            c.entries_v4,
            c.capacity_v4,
            pct(c.entries_v4, c.capacity_v4),
            v6,
            cap6,
            pct(v6, cap6),
            c.entries_masq6,
            c.capacity_masq6,
            pct(c.entries_masq6, c.capacity_masq6),
            c.evicted,
            c.insert_failed,
            c.quota_refused,
            c.half_rebuilt,
            c.port_remapped
        );
        if c.evicted > 0 {
            println!("  the table filled up: raise --ct-max-entries (IPv4) or --ct6-max-entries (IPv6), or lower --ct-max-per-endpoint");
        }
        if c.quota_lifted > 0 {
            println!("  {} new flows were admitted past a pod's stale count: no agent collected for three --ct-gc-intervals, so the per-pod share was not enforced", c.quota_lifted);
        }
        let s = &c.share;
        if s.limit > 0 && s.fullest_link != 0 {
            let name = ifnames::name_of(s.fullest_link).unwrap_or_else(|| "?".into());
            println!(
                "  per-pod share: {} entries; the fullest pod link, {name} ({}), holds {} ({:.1}%)",
                s.limit,
                s.fullest_link,
                s.fullest_entries,
                pct(s.fullest_entries, s.limit)
            );
            if s.fullest_entries * 10 >= s.limit * 9 {
                println!("  that pod is nearing or at its share: beyond it its new flows are refused (ct_quota); raise --ct-max-per-endpoint, or both tables (the default share grows with them)");
            }
        }
    } else if let Some(v) = other_layout(&st.layouts, weir_common::maps::CT) {
        let mine = weir_common::abi::layout_of(weir_common::maps::CT).map_or(0, |l| l.version);
        println!("conntrack: pinned in layout v{v}, this weir reads v{mine}: not read (the next agent start migrates it)");
    }
    println!();
    let rows: Vec<Vec<String>> = st
        .maps
        .iter()
        .map(|m| {
            let (used, pct) = match m.entries {
                Some(n) => (n.to_string(), format!("{:.1}%", n as f64 * 100.0 / f64::from(m.capacity.max(1)))),
                None => ("-".into(), "-".into()),
            };
            let version = st.layouts.iter().find(|l| l.name == m.name).map_or("-".into(), |l| match l.pinned_version {
                Some(v) => format!("v{v}"),
                None => "?".into(),
            });
            vec![m.name.to_string(), version, used, m.capacity.to_string(), pct]
        })
        .collect();
    print_table(&["MAP", "LAYOUT", "ENTRIES", "CAPACITY", "FILL"], &rows);
    Ok(())
}
