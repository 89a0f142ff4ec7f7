//! Tables, CSV and plots of scenario rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use plumcast_sim::{Kind, Row, Scenario};

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
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(&cols);
    for v in &vals {
        let line = cols.iter().map(|c| match v.get(c) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(x) => x.to_string(),
        });
        let _ = w.write_record(line);
    }
    w.into_inner().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Rows read back from a CSV that [`csv`] wrote, to draw the plots again without running
/// the scenario (`plumcast sim <scenario> --replot <csv>`). Columns it does not know are
/// ignored; empty cells are absent metrics.
///
/// # Errors
/// A message naming the line if the CSV cannot be parsed or a value has the wrong type.
pub fn read_csv(text: &str, kind: Kind) -> Result<Vec<Row>, String> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers = r.headers().map_err(err)?.clone();
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| format!("line {}: {e}", i + 2))?;
        let mut obj = serde_json::Map::new();
        for (k, v) in headers.iter().zip(rec.iter()) {
            if v.is_empty() {
                continue;
            }
            // Numbers through the standard parsers, which round-trip exactly.
            let val = if k == "scenario" || k == "mode" || k == "detector" {
                serde_json::Value::String(v.to_string())
            } else if let Ok(n) = v.parse::<u64>() {
                serde_json::Value::from(n)
            } else if let Some(x) = v.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                serde_json::Value::Number(x)
            } else {
                serde_json::Value::String(v.to_string())
            };
            obj.insert(k.to_string(), val);
        }
        let mut row: Row =
            serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| format!("line {}: {e}", i + 2))?;
        row.healing_measured = matches!(kind, Kind::Failures | Kind::MassiveFailure);
        rows.push(row);
    }
    Ok(rows)
}

/// Draw every figure the scenario has into `dir` and return the files written (none for
/// a scenario without paper values): failures: `<name>.svg` (HyParView Fig. 2) and
/// `<name>-healing.svg` (Fig. 4); massive failure: `<name>.svg` (Plumtree Fig. 6a);
/// stable: `<name>.svg` (Plumtree Table 1: LDH and RMR per mode).
///
/// # Errors
/// A message if drawing fails.
pub fn plots(s: &Scenario, rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let main = dir.join(format!("{}.svg", s.name));
    match s.kind {
        Kind::Failures | Kind::MassiveFailure => {
            plot(s, rows, &main)?;
            written.push(main);
            if s.kind == Kind::Failures {
                let healing = dir.join(format!("{}-healing.svg", s.name));
                plot_healing(s, rows, &healing)?;
                written.push(healing);
            }
        }
        Kind::Stable => {
            plot_stable(s, rows, &main)?;
            written.push(main);
        }
        _ => {}
    }
    Ok(written)
}

/// A drawing error as the message the plot functions return.
fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Draw our reliability curves beside the paper's values (failure scenarios) as an SVG.
fn plot(s: &Scenario, rows: &[Row], path: &Path) -> Result<(), String> {
    let paper = paper_curve(s.kind);
    let metric: fn(&Row) -> Option<f64> =
        if s.kind == Kind::MassiveFailure { |r| r.first_reliability } else { |r| r.reliability };
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
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
        .map_err(err)?;
    chart.configure_mesh().x_desc("nodes failed at once (%)").y_desc("reliability (%)").draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(paper.clone(), BLACK.stroke_width(2)))
        .map_err(err)?
        .label("paper")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.draw_series(paper.iter().map(|p| Circle::new(*p, 3, BLACK.filled()))).map_err(err)?;
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
            .map_err(err)?
            .label(format!("plumcast {mode} ({det} detector)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// HyParView Fig. 4 (membership rounds to regain the reliability before the failure):
/// 1 round for f ≤ 60%, 2 at 70–80%, 4 at 90% (../shared/papers.md).
const PAPER_HEALING: [(f64, f64); 9] = [
    (10.0, 1.0),
    (20.0, 1.0),
    (30.0, 1.0),
    (40.0, 1.0),
    (50.0, 1.0),
    (60.0, 1.0),
    (70.0, 2.0),
    (80.0, 2.0),
    (90.0, 4.0),
];

/// Healing rounds (worst seed) beside HyParView Fig. 4. A level where some seed did not
/// heal within the run is drawn as a triangle at the top of the chart.
fn plot_healing(s: &Scenario, rows: &[Row], path: &Path) -> Result<(), String> {
    const TOP: f64 = 6.0;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: membership rounds to heal (n = {})", s.name, s.nodes), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..100f64, -0.2f64..TOP + 0.5)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("nodes failed at once (%)")
        .y_desc("healing rounds (worst seed; triangle: not healed)")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(PAPER_HEALING, BLACK.stroke_width(2)))
        .map_err(err)?
        .label("paper (HyParView Fig. 4)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.draw_series(PAPER_HEALING.iter().map(|p| Circle::new(*p, 3, BLACK.filled()))).map_err(err)?;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN];
    // Per (mode, detector): levels healed (worst seed's rounds) and levels not healed.
    #[derive(Default)]
    struct Healing {
        healed: Vec<(f64, f64)>,
        not_healed: Vec<(f64, f64)>,
    }
    let mut series: BTreeMap<(String, String), Healing> = BTreeMap::new();
    for ((mode, det, pct), rs) in group(rows) {
        let entry = series.entry((mode, det)).or_default();
        let x = pct as f64 / 10.0;
        if rs.iter().any(|r| r.healing_rounds.is_none()) {
            entry.not_healed.push((x, TOP));
        } else if let Some(w) = rs.iter().filter_map(|r| r.healing_rounds).max() {
            entry.healed.push((x, f64::from(w)));
        }
    }
    for (k, ((mode, det), Healing { healed, not_healed })) in series.into_iter().enumerate() {
        let color = palette[k % palette.len()];
        chart
            .draw_series(LineSeries::new(healed.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("plumcast {mode} ({det} detector)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(healed.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(err)?;
        chart.draw_series(not_healed.iter().map(|p| TriangleMarker::new(*p, 6, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// One mode's row of Plumtree Table 1 (n = 10,000, stable).
struct PaperStable {
    mode: &'static str,
    ldh: f64,
    rmr: f64,
}

/// Plumtree Table 1; LDH of the optimised variants where the paper gives them (single
/// sender 8.3, multiple senders ~17).
const PAPER_STABLE: [PaperStable; 3] = [
    PaperStable { mode: "flood", ldh: 8.9, rmr: 3.0 },
    PaperStable { mode: "plumtree-single", ldh: 8.3, rmr: 0.0 },
    PaperStable { mode: "plumtree-multi", ldh: 17.0, rmr: 0.0 },
];

/// One panel of the stable figure: what it shows and where.
struct Panel<'a, A> {
    label: &'a str,
    ours: fn(&Row) -> Option<f64>,
    paper: fn(&PaperStable) -> f64,
    top: f64,
    area: A,
}

/// LDH and RMR per mode (mean over seeds; bars from the best to the worst seed) beside
/// the paper's Table 1, two panels side by side.
fn plot_stable(s: &Scenario, rows: &[Row], path: &Path) -> Result<(), String> {
    let modes: Vec<String> = {
        let mut m: Vec<String> = Vec::new();
        for r in rows {
            if !m.contains(&r.mode) {
                m.push(r.mode.clone());
            }
        }
        m
    };
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(&format!("{}: stable overlay, n = {} (paper: Plumtree Table 1)", s.name, s.nodes), ("sans-serif", 20))
        .map_err(err)?;
    let (left, right) = root.split_horizontally(500);
    let panels = [
        Panel { label: "LDH (hops)", ours: |r| r.ldh, paper: |p| p.ldh, top: 20.0, area: left },
        Panel { label: "RMR", ours: |r| r.rmr, paper: |p| p.rmr, top: 3.5, area: right },
    ];
    for Panel { label, ours: metric, paper: paper_value, top, area } in panels {
        let n = modes.len().max(1) as f64;
        let names = modes.clone();
        let mut chart = ChartBuilder::on(&area)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(modes.len().max(1))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(label)
            .draw()
            .map_err(err)?;
        let paper: Vec<(f64, f64)> = modes
            .iter()
            .enumerate()
            .filter_map(|(i, m)| PAPER_STABLE.iter().find(|p| p.mode == m).map(|p| (i as f64 - 0.12, paper_value(p))))
            .collect();
        chart
            .draw_series(paper.iter().map(|p| Cross::new(*p, 6, BLACK.stroke_width(2))))
            .map_err(err)?
            .label("paper")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, BLACK.stroke_width(2)));
        let mut ours = Vec::new();
        for (i, m) in modes.iter().enumerate() {
            let v: Vec<f64> = rows.iter().filter(|r| &r.mode == m).filter_map(metric).collect();
            if v.is_empty() {
                continue;
            }
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            ours.push((i as f64 + 0.12, mean, lo, hi));
        }
        chart
            .draw_series(ours.iter().map(|&(x, m, _, _)| Circle::new((x, m), 5, RED.filled())))
            .map_err(err)?
            .label("plumcast (mean of seeds)")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
        chart
            .draw_series(ours.iter().map(|&(x, _, lo, hi)| PathElement::new(vec![(x, lo), (x, hi)], RED)))
            .map_err(err)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use plumcast_sim::Scenario;

    use super::*;

    #[test]
    fn small_scenarios_make_a_table() {
        let mut s = Scenario::load("plumtree-stable").unwrap();
        s.nodes = 100;
        s.seeds = vec![1];
        s.broadcasts = 5;
        s.stabilize_rounds = 3;
        let rows = plumcast_sim::scenario::run(&s, 1, &|_, _, _| {});
        assert!(table(&rows).lines().count() >= 2 + rows.len(), "a header, a rule and one line per row");
    }

    #[test]
    fn rows_survive_a_csv_round_trip_and_replot() {
        let mut s = Scenario::load("hyparview-failures").unwrap();
        s.nodes = 100;
        s.seeds = vec![1];
        s.broadcasts = 3;
        s.stabilize_rounds = 3;
        s.fail_pcts = vec![20.0, 95.0];
        let rows = plumcast_sim::scenario::run(&s, 1, &|_, _, _| {});
        let back = read_csv(&csv(&rows), s.kind).unwrap();
        let json = |rows: &[Row]| rows.iter().map(|r| serde_json::to_string(r).unwrap()).collect::<Vec<_>>();
        assert_eq!(json(&rows), json(&back));
        assert_eq!(table(&rows), table(&back));
        let dir = std::env::temp_dir().join(format!("plumcast-sim-replot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = plots(&s, &back, &dir).unwrap();
        assert_eq!(written.len(), 2, "Fig. 2 and Fig. 4");
        assert!(written.iter().all(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 1000)));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(read_csv("seed\nnot-a-number\n", s.kind).is_err(), "a wrong type names its line");
    }
}
