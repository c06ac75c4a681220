//! PNG plots of the benchmark (plotters, bitmap backend; text with DejaVu
//! Sans from Debian's fonts-dejavu-core through ab_glyph).

use std::path::Path;

use plotters::prelude::*;

use super::report::{medians, Sample};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| format!("{FONT}: not a usable font"))
}

/// One line per dataplane: `metric` against the number of services.
fn line_plot(path: &Path, title: &str, y_label: &str, samples: &[Sample], metric: impl Fn(&Sample) -> f64) -> Result<(), String> {
    let m = medians(samples, metric);
    let xs: Vec<usize> = {
        let mut v: Vec<usize> = m.keys().map(|(n, _)| *n).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let y_max = m.values().copied().fold(0.0f64, f64::max) * 1.15 + 1e-9;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x_max = xs.len().max(1) as f64 - 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..x_max, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    let labels = xs.clone();
    chart
        .configure_mesh()
        .x_labels(xs.len().max(1))
        .x_label_formatter(&|x| labels.get(x.round().max(0.0) as usize).map_or(String::new(), |n| format!("{n}")))
        .x_desc("services")
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    for (dp, color) in [("weir", &BLUE), ("iptables", &RED), ("nftables", &GREEN)] {
        let pts: Vec<(f64, f64)> =
            xs.iter().enumerate().filter_map(|(i, n)| m.get(&(*n, dp)).map(|y| (i as f64, *y))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
            .map_err(|e| e.to_string())?
            .label(dp)
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
    root.present().map_err(|e| e.to_string())
}

/// Writes conn_rate.png, latency_p99.png and programming.png into `dir`.
pub fn write(dir: &Path, samples: &[Sample]) -> Result<(), String> {
    register_font()?;
    line_plot(&dir.join("conn_rate.png"), "New connections per second through the ClusterIP", "connections/s", samples, |s| s.short.per_s)?;
    line_plot(&dir.join("latency_p99.png"), "Request latency p99 (one connection per request)", "µs", samples, |s| s.short.p99_us)?;
    line_plot(&dir.join("programming.png"), "Programming all services", "ms", samples, |s| s.program.cold_ms)?;
    line_plot(&dir.join("one_change.png"), "Programming one endpoint change", "ms", samples, |s| s.program.one_change_ms)
}
