//! Tables, CSV and plots of scenario rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::scenario::{Kind, Row, Scenario};

/// Paper reference values (../shared/papers.md), as (failed %, reliability %).
pub fn paper_curve(kind: Kind) -> Vec<(f64, f64)> {
    match kind {
        // HyParView Fig. 2 (mean reliability over 1,000 messages after f% failures).
        Kind::Failures => vec![
            (10.0, 100.0),
            (20.0, 100.0),
            (30.0, 100.0),
            (40.0, 100.0),
            (50.0, 100.0),
            (60.0, 100.0),
            (70.0, 100.0),
            (80.0, 100.0),
            (90.0, 99.7),
            (95.0, 90.9),
        ],
        // Plumtree Fig. 6a (reliability of the first broadcast after f% failures).
        Kind::MassiveFailure => vec![
            (10.0, 100.0),
            (20.0, 100.0),
            (30.0, 99.8),
            (40.0, 99.0),
            (50.0, 95.0),
            (60.0, 56.0),
            (70.0, 15.0),
            (80.0, 0.0),
            (90.0, 0.0),
        ],
        _ => vec![],
    }
}

type Key = (String, String, i64);

fn group(rows: &[Row]) -> BTreeMap<Key, Vec<&Row>> {
    let mut g: BTreeMap<Key, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let pct = r.failed_pct.map(|p| (p * 10.0) as i64).unwrap_or(-1);
        g.entry((r.mode.clone(), r.detector.clone(), pct)).or_default().push(r);
    }
    g
}

fn mean(v: &[Option<f64>]) -> Option<f64> {
    let xs: Vec<f64> = v.iter().flatten().copied().collect();
    if xs.is_empty() { None } else { Some(xs.iter().sum::<f64>() / xs.len() as f64) }
}

fn worst(v: &[Option<f64>], higher_is_better: bool) -> Option<f64> {
    let xs = v.iter().flatten().copied();
    if higher_is_better { xs.reduce(f64::min) } else { xs.reduce(f64::max) }
}

fn fmt(x: Option<f64>, pct: bool) -> String {
    match (x, pct) {
        (Some(v), true) => format!("{:.2}%", v * 100.0),
        (Some(v), false) => format!("{v:.3}"),
        (None, _) => "—".into(),
    }
}

/// Markdown table: one line per (mode, detector, level), mean over seeds and worst seed.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| mode | detector | failed % | seeds | reliability (mean / worst) | first-bcast reliability | eventual | RMR (mean / worst) | RMR=0 share | LDH | control/bcast | healing rounds (worst) | components (worst) | heal ms (worst) | duplicates | invariant violations / checks |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((mode, det, pct), rs) in group(rows) {
        let col = |f: fn(&Row) -> Option<f64>| rs.iter().map(|r| f(r)).collect::<Vec<_>>();
        let rel = col(|r| r.reliability);
        let first = col(|r| r.first_reliability);
        let ev = col(|r| r.eventual_reliability);
        let rmr = col(|r| r.rmr);
        let z = col(|r| r.rmr_zero_share);
        let ldh = col(|r| r.ldh);
        let ctl = col(|r| r.control_per_bcast);
        let heal_r = rs.iter().map(|r| r.healing_rounds).collect::<Vec<_>>();
        let worst_heal = if rs.iter().all(|r| !r.healing_measured) {
            "—".to_string()
        } else if heal_r.iter().any(|h| h.is_none()) {
            "not healed".to_string()
        } else {
            heal_r.iter().flatten().max().map(|h| h.to_string()).unwrap_or_else(|| "—".into())
        };
        let comps = rs.iter().filter_map(|r| r.components).max().map(|c| c.to_string()).unwrap_or_else(|| "—".into());
        let heal_ms = col(|r| r.heal_ms);
        let heal_ms = if rs.iter().any(|r| r.heal_ms.is_none()) && rs.iter().any(|r| r.components_during.is_some()) {
            "not healed".to_string()
        } else {
            fmt(worst(&heal_ms, false), false)
        };
        let dups: u64 = rs.iter().map(|r| r.duplicates).sum();
        let viol: u64 = rs.iter().map(|r| r.invariant_violations).sum();
        let checks: u64 = rs.iter().map(|r| r.invariant_checks).sum();
        let _ = writeln!(
            out,
            "| {mode} | {det} | {} | {} | {} / {} | {} | {} | {} / {} | {} | {} | {} | {worst_heal} | {comps} | {heal_ms} | {dups} | {viol} / {checks} |",
            if pct < 0 { "—".to_string() } else { format!("{}", pct as f64 / 10.0) },
            rs.len(),
            fmt(mean(&rel), true),
            fmt(worst(&rel, true), true),
            fmt(mean(&first), true),
            fmt(mean(&ev), true),
            fmt(mean(&rmr), false),
            fmt(worst(&rmr, false), false),
            fmt(mean(&z), true),
            fmt(mean(&ldh), false),
            fmt(mean(&ctl), false),
        );
    }
    out
}

/// CSV of every row (all columns, empty where a metric does not apply).
pub fn csv(rows: &[Row]) -> String {
    let vals: Vec<serde_json::Value> = rows.iter().filter_map(|r| serde_json::to_value(r).ok()).collect();
    let mut cols: Vec<String> = Vec::new();
    for v in &vals {
        if let Some(o) = v.as_object() {
            for k in o.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let mut out = cols.join(",");
    out.push('\n');
    for v in &vals {
        let line: Vec<String> = cols
            .iter()
            .map(|c| match v.get(c) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(x) => x.to_string(),
            })
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Draw our curves beside the paper's values (failure scenarios) as an SVG.
///
/// # Errors
/// A message if drawing fails; `Ok(false)` if the scenario has no figure.
pub fn plot(s: &Scenario, rows: &[Row], path: &Path) -> Result<bool, String> {
    let paper = paper_curve(s.kind);
    if paper.is_empty() {
        return Ok(false);
    }
    let metric: fn(&Row) -> Option<f64> =
        if s.kind == Kind::MassiveFailure { |r| r.first_reliability } else { |r| r.reliability };
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let title = match s.kind {
        Kind::MassiveFailure => format!("{}: first broadcast after the failure (n = {})", s.name, s.nodes),
        _ => format!("{}: mean reliability after the failure (n = {})", s.name, s.nodes),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..100f64, 0f64..101f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("nodes failed at once (%)")
        .y_desc("reliability (%)")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(paper.clone(), BLACK.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("paper")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.draw_series(paper.iter().map(|p| Circle::new(*p, 3, BLACK.filled()))).map_err(|e| e.to_string())?;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN];
    let mut series: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for ((mode, det, pct), rs) in group(rows) {
        if let Some(m) = mean(&rs.iter().map(|r| metric(r)).collect::<Vec<_>>()) {
            series.entry((mode, det)).or_default().push((pct as f64 / 10.0, m * 100.0));
        }
    }
    for (k, ((mode, det), pts)) in series.into_iter().enumerate() {
        let color = palette[k % palette.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("plumcast {mode} ({det} detector)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(true)
}
