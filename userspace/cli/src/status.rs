//! `weir status`: is the agent up, which programs are attached where, and
//! how full every map is.

use std::{io::{Read as _, Write as _}, net::SocketAddr, time::Duration};

use serde::Serialize;
use weir_datapath::{inventory::{self, MapFill}, PinLayout};

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
struct Status {
    /// "ready", "starting" or "not running" (nothing answers on the metrics address).
    agent: &'static str,
    attachments: Vec<Attachment>,
    maps: Vec<MapFill>,
}

fn agent_health(addr: SocketAddr) -> &'static str {
    let ask = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: weir\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    match ask() {
        Ok(r) if r.starts_with("HTTP/1.1 200") => "ready",
        Ok(_) => "starting",
        Err(_) => "not running",
    }
}

pub fn run(layout: &PinLayout, metrics_addr: SocketAddr, format: Format) -> anyhow::Result<()> {
    let maps = inventory::maps(layout)?;
    let attachments = layout
        .link_pins()?
        .into_iter()
        .map(|p| Attachment {
            present: ifnames::name_of(p.ifindex).as_deref() == Some(p.ifname.as_str()),
            ifname: p.ifname,
            ifindex: p.ifindex,
            hook: p.hook.as_str().to_string(),
        })
        .collect();
    let st = Status { agent: agent_health(metrics_addr), attachments, maps };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!("agent: {} ({metrics_addr})\n", st.agent);
    let rows: Vec<Vec<String>> = st
        .attachments
        .iter()
        .map(|a| vec![a.ifname.clone(), a.ifindex.to_string(), a.hook.clone(), if a.present { "yes".into() } else { "GONE".into() }])
        .collect();
    print_table(&["INTERFACE", "IFINDEX", "PROGRAM", "PRESENT"], &rows);
    println!();
    let rows: Vec<Vec<String>> = st
        .maps
        .iter()
        .map(|m| {
            let (used, pct) = match m.entries {
                Some(n) => (n.to_string(), format!("{:.1}%", n as f64 * 100.0 / f64::from(m.capacity.max(1)))),
                None => ("-".into(), "-".into()),
            };
            vec![m.name.to_string(), used, m.capacity.to_string(), pct]
        })
        .collect();
    print_table(&["MAP", "ENTRIES", "CAPACITY", "FILL"], &rows);
    Ok(())
}
