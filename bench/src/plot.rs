//! The throughput-against-concurrency plot, rendered to PNG with plotters
//! and an embedded font (no system font libraries needed).

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use serde_json::Value as Json;
use std::path::Path;

/// Plots commits/s against concurrency for Concord and both SQLite set-ups,
/// from the `commit` phase's results.
pub fn throughput(commit: &Json, out: &Path) -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("the embedded DejaVu font did not load"))?;
    let series = |path: &[&str]| -> Vec<(f64, f64)> {
        crate::LEVELS
            .iter()
            .filter_map(|l| {
                let v = path.iter().fold(commit, |v, k| &v[*k]);
                v["distinct"][l.to_string()]["per_s"].as_f64().map(|y| (*l as f64, y))
            })
            .collect()
    };
    let lines = [
        ("Concord (group commit)", series(&["concord"]), RGBColor(200, 60, 30)),
        ("SQLite WAL, connection per thread", series(&["sqlite", "per_thread"]), RGBColor(40, 90, 180)),
        ("SQLite WAL, one shared connection", series(&["sqlite", "shared"]), RGBColor(90, 160, 90)),
    ];
    let top = lines.iter().flat_map(|(_, s, _)| s.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.15;
    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Durable commits/s against concurrent writers", ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d((0.8f64..80f64).log_scale(), 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("concurrent invocations / threads (log scale)")
            .y_desc("commits per second")
            .x_labels(8)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 15))
            .draw()?;
        for (name, points, color) in &lines {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(3)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 5, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("rendering {}: {e}", out.display())).context("the throughput plot")
}
