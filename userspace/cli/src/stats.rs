//! `weir stats`: interface counters and datapath errors.

use std::collections::BTreeMap;

use serde::Serialize;
use weir_common::stats::Direction;
use weir_datapath::{stats, PinLayout};

use crate::{ifnames, output::{print_table, Format}};

#[derive(Debug, Default, Serialize)]
struct Counters {
    packets: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct InterfaceStats {
    ifindex: u32,
    /// `null` when the interface no longer exists in this network namespace.
    ifname: Option<String>,
    from_pod: Counters,
    to_pod: Counters,
}

#[derive(Debug, Serialize)]
struct StatsReport {
    interfaces: Vec<InterfaceStats>,
    /// Packets dropped or rejected, per reason.
    drops: BTreeMap<&'static str, u64>,
    datapath_errors: BTreeMap<&'static str, u64>,
}

pub fn run(layout: &PinLayout, format: Format) -> anyhow::Result<()> {
    let rows = stats::read_if_stats(layout)?;
    let mut by_if: BTreeMap<u32, InterfaceStats> = BTreeMap::new();
    for row in rows {
        let entry = by_if.entry(row.ifindex).or_insert_with(|| InterfaceStats {
            ifindex: row.ifindex,
            ifname: ifnames::name_of(row.ifindex),
            from_pod: Counters::default(),
            to_pod: Counters::default(),
        });
        let c = Counters { packets: row.stats.packets, bytes: row.stats.bytes };
        match row.direction {
            Direction::FromPod => entry.from_pod = c,
            Direction::ToPod => entry.to_pod = c,
        }
    }
    let errors = stats::read_dp_errors(layout)?;
    let drops = stats::read_drops(layout)?;
    let report = StatsReport {
        interfaces: by_if.into_values().collect(),
        drops: drops.into_iter().map(|(r, n)| (r.as_str(), n)).collect(),
        datapath_errors: errors.into_iter().map(|(e, n)| (e.as_str(), n)).collect(),
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            let rows: Vec<Vec<String>> = report
                .interfaces
                .iter()
                .map(|i| {
                    vec![
                        i.ifname.clone().unwrap_or_else(|| "-".into()),
                        i.ifindex.to_string(),
                        i.from_pod.packets.to_string(),
                        i.from_pod.bytes.to_string(),
                        i.to_pod.packets.to_string(),
                        i.to_pod.bytes.to_string(),
                    ]
                })
                .collect();
            print_table(&["INTERFACE", "IFINDEX", "FROM-POD PKTS", "FROM-POD BYTES", "TO-POD PKTS", "TO-POD BYTES"], &rows);
            let errs: Vec<String> = report
                .datapath_errors
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            if !errs.is_empty() {
                println!("\ndatapath errors: {}", errs.join(" "));
            }
            let drops: Vec<String> =
                report.drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
            if !drops.is_empty() {
                println!("\ndrops and rejects: {}", drops.join(" "));
            }
        }
    }
    Ok(())
}
