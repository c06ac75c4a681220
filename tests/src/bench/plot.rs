//! PNG plots of the benchmark (plotters, bitmap backend; text with DejaVu
//! Sans from Debian's fonts-dejavu-core through ab_glyph).

use std::path::Path;

use plotters::prelude::*;

use std::collections::BTreeMap;

use super::report::{medians, vip_medians, Sample};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| format!("{FONT}: not a usable font"))
}

/// A dataplane's line: its name, colour and points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// How a chart's y axis is drawn.
#[derive(Clone, Copy, PartialEq)]
enum YScale {
    Linear,
    /// For figures spanning orders of magnitude (programming times).
    Log,
}

/// One line per dataplane: a figure per cell (services, dataplane)
/// against the number of services, on a log-scale N axis.
fn line_plot(path: &Path, title: &str, y_label: &str, y_scale: YScale, m: BTreeMap<(usize, &'static str), f64>) -> Result<(), String> {
    let xs: Vec<f64> = {
        let mut v: Vec<usize> = m.keys().map(|(n, _)| *n).collect();
        v.sort_unstable();
        v.dedup();
        v.into_iter().map(|n| n as f64).collect()
    };
    let x_min = xs.first().copied().unwrap_or(1.0) / 2.0;
    let x_max = xs.last().copied().unwrap_or(10.0) * 2.0;
    let positive = m.values().copied().filter(|v| *v > 0.0);
    let y_max = positive.clone().fold(0.0f64, f64::max) * 1.15 + 1e-9;
    let y_min = positive.fold(f64::INFINITY, f64::min).min(y_max) / 2.0;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 24)).margin(16).x_label_area_size(44).y_label_area_size(90);
    let series: Vec<Series> = [("weir", BLUE), ("iptables", RED), ("nftables", GREEN)]
        .into_iter()
        .map(|(dp, c)| {
            // A log axis cannot show a zero; a linear one shows a failed cell as one.
            let shown = |y: &&f64| y_scale == YScale::Linear || **y > 0.0;
            (dp, c, xs.iter().filter_map(|n| m.get(&(*n as usize, dp)).filter(shown).map(|y| (*n, *y))).collect())
        })
        .collect();
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart.map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("services (log scale)")
                .y_desc(y_label)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| if y.abs() >= 100.0 { format!("{y:.0}") } else { format!("{y:.2}") })
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(|e| e.to_string())?;
            for (dp, color, pts) in &series {
                let color = *color;
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
                    .map_err(|e| e.to_string())?
                    .label(*dp)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, color.filled()))).map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 16))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    match y_scale {
        YScale::Linear => draw!(builder.build_cartesian_2d((x_min..x_max).log_scale(), 0f64..y_max)),
        YScale::Log => draw!(builder.build_cartesian_2d((x_min..x_max).log_scale(), (y_min..y_max).log_scale())),
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes one chart per metric into `dir`. A measurement's point is the
/// median over every ClusterIP slice of the cell's repetitions, the
/// figure results.md prints; programming and memory, one figure per
/// repetition, are the median of those.
pub fn write(dir: &Path, samples: &[Sample]) -> Result<(), String> {
    use YScale::{Linear, Log};
    register_font()?;
    let plot = |file: &str, title: &str, y_label: &str, y_scale: YScale, m| line_plot(&dir.join(file), title, y_label, y_scale, m);
    plot("udp_flows.png", "New UDP flows per second through a ClusterIP", "flows/s", Linear, vip_medians(samples, |s| &s.udp, |l| l.per_s))?;
    let short = |f: fn(&super::measure::Latency) -> f64| vip_medians(samples, |s| &s.concurrent_short, f);
    plot("conn_rate_concurrent.png", "New TCP connections per second, 32 in flight", "connections/s", Linear, short(|l| l.per_s))?;
    // As the table: no p99.9 where the median slice holds fewer than
    // 1,000 samples (it would be the maximum).
    let enough = short(|l| l.samples as f64);
    let mut p999 = short(|l| l.p999_us);
    p999.retain(|cell, _| enough.get(cell).is_some_and(|n| *n >= 1000.0));
    plot("latency_p999_concurrent.png", "Short-connection latency p99.9, 32 in flight", "µs", Linear, p999)?;
    let keepalive = vip_medians(samples, |s| &s.concurrent_keepalive, |l| l.per_s);
    plot("keepalive_concurrent.png", "Keep-alive requests per second, 32 connections", "requests/s", Linear, keepalive)?;
    plot("conn_rate.png", "New connections per second, one at a time", "connections/s", Linear, vip_medians(samples, |s| &s.short, |l| l.per_s))?;
    plot("latency_p99.png", "Request latency p99 (one connection per request)", "µs", Linear, vip_medians(samples, |s| &s.short, |l| l.p99_us))?;
    plot("throughput.png", "iperf3 throughput through a ClusterIP", "Gbit/s", Linear, vip_medians(samples, |s| &s.throughput, |l| l.per_s))?;
    plot("memory_per_flow.png", "Kernel memory per tracked flow", "bytes", Linear, medians(samples, |s| s.memory.bytes_per_flow))?;
    plot("programming.png", "Programming all services", "ms (log scale)", Log, medians(samples, |s| s.program.cold_ms))?;
    plot("one_change.png", "Programming one endpoint change", "ms (log scale)", Log, medians(samples, |s| s.program.one_change_ms))
}
