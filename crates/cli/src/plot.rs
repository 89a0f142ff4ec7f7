//! `plumcast plot`: draw the scaling curve (deliveries/s, p99, RSS per node against N) from
//! `plumcast bench` JSON lines.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// File of `plumcast bench` JSON lines (other lines are skipped).
    input: PathBuf,
    /// The SVG to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let rows: Vec<Value> =
        text.lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect();
    anyhow::ensure!(!rows.is_empty(), "no JSON rows in {}", a.input.display());
    let series = |mode: &str, key: &str, scale: f64| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r["mode"] == mode)
            .filter_map(|r| Some((r["nodes"].as_f64()?, r[key].as_f64()? * scale)))
            .collect();
        v.sort_by(|x, y| x.0.total_cmp(&y.0));
        v
    };
    let max_n = rows.iter().filter_map(|r| r["nodes"].as_f64()).fold(0.0, f64::max) * 1.05;
    let root = SVGBackend::new(&a.out, (1200, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((1, 3));
    let specs = [
        ("deliveries/s (thousands)", "deliveries_per_s", 1e-3),
        ("latency p99 (ms)", "lat_p99_ms", 1.0),
        ("RSS per node (MiB)", "rss_per_node_bytes", 1.0 / (1 << 20) as f64),
    ];
    for (panel, (title, key, scale)) in panels.iter().zip(specs) {
        let all: Vec<(f64, f64)> = ["single", "random"].iter().flat_map(|m| series(m, key, scale)).collect();
        let max_y = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_n, 0f64..max_y)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.configure_mesh().x_desc("nodes (N)").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        for (mode, color) in [("single", RED), ("random", BLUE)] {
            let pts = series(mode, key, scale);
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(format!("{mode} sender"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("wrote {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
