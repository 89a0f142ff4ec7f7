//! `plumcast top HOST:PORT`: a node's admin endpoint in the terminal (ratatui), for hosts
//! without a browser: neighbours, the tree, rates and drops, every second.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use prometheus_parse::{Scrape, Value};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node's admin endpoint (`plumcast node --http`): HOST:PORT, or PORT on 127.0.0.1.
    addr: String,
    /// Print one frame (two scrapes one second apart, for the rates) as text and exit.
    #[arg(long)]
    once: bool,
    /// Seconds between updates.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
}

/// One scrape of both endpoints.
struct Sample {
    at: Instant,
    metrics: Scrape,
    topology: serde_json::Value,
}

fn base(addr: &str) -> String {
    if addr.parse::<u16>().is_ok() { format!("http://127.0.0.1:{addr}") } else { format!("http://{addr}") }
}

fn fetch(base: &str) -> anyhow::Result<Sample> {
    let get = |path: &str| -> anyhow::Result<String> {
        let url = format!("{base}{path}");
        let mut r = ureq::get(&url).call().with_context(|| format!("GET {url}"))?;
        r.body_mut().read_to_string().with_context(|| format!("reading {url}"))
    };
    let text = get("/metrics")?;
    let metrics = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).context("parsing /metrics")?;
    let topology = serde_json::from_str(&get("/topology")?).context("parsing /topology")?;
    Ok(Sample { at: Instant::now(), metrics, topology })
}

/// Samples of `metric` by the value of `label` (or "" without labels).
fn by_label(s: &Scrape, metric: &str, label: &str) -> BTreeMap<String, f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter_map(|x| {
            let v = match x.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => return None,
            };
            Some((x.labels.get(label).unwrap_or("").to_string(), v))
        })
        .collect()
}

fn one(s: &Scrape, metric: &str) -> f64 {
    by_label(s, metric, "").values().sum()
}

/// Per-second rate of `metric` between two samples.
fn rate(a: &Sample, b: &Sample, metric: &str) -> f64 {
    let dt = b.at.saturating_duration_since(a.at).as_secs_f64().max(1e-3);
    (one(&b.metrics, metric) - one(&a.metrics, metric)).max(0.0) / dt
}

/// Every non-zero drop, refusal and loss, a line each (or one line saying there is none).
fn drop_lines(m: &Scrape) -> Vec<Line<'static>> {
    let mut drops: Vec<(String, f64)> = by_label(m, "plumcast_dropped_total", "reason").into_iter().collect();
    for (metric, prefix) in [
        ("plumcast_connections_refused_total", "refused"),
        ("plumcast_connections_closed_total", "closed"),
        ("plumcast_neighbor_down_total", "neighbour"),
    ] {
        drops.extend(by_label(m, metric, "reason").into_iter().map(|(k, v)| (format!("{prefix} {k}"), v)));
    }
    let lines: Vec<Line> =
        drops.into_iter().filter(|(_, v)| *v > 0.0).map(|(k, v)| Line::from(format!("{k:<34} {v:>10.0}"))).collect();
    if lines.is_empty() { vec![Line::from("nothing dropped, refused or lost")] } else { lines }
}

/// Draw one frame from the last two samples.
fn draw(f: &mut ratatui::Frame, prev: &Sample, now: &Sample, addr: &str) {
    let m = &now.metrics;
    let t = &now.topology;
    let me = t["me"].as_str().unwrap_or("?");
    let nodes = t["nodes"].as_array().cloned().unwrap_or_default();
    let mine = nodes.iter().find(|n| n["short"] == me);
    let eager: Vec<String> = mine
        .and_then(|n| n["eager"].as_array())
        .map(|v| v.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let active: Vec<String> = mine
        .and_then(|n| n["active_view"].as_array())
        .map(|v| v.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let lines = drop_lines(m);
    let bottom_height = u16::try_from(lines.len() + 2).unwrap_or(u16::MAX);
    let [head, middle, bottom] =
        Layout::vertical([Constraint::Length(4), Constraint::Min(6), Constraint::Length(bottom_height)])
            .areas(f.area());
    let up = nodes.iter().filter(|n| n["health"] == "up").count();
    let down = nodes.iter().filter(|n| n["health"] == "down").count();
    let header = vec![
        Line::from(format!(
            "node {me} at {addr}   active view {}   passive view {}   nodes known {} ({up} up, {down} down)",
            one(m, "plumcast_active_view_peers"),
            one(m, "plumcast_passive_view_peers"),
            nodes.len()
        )),
        Line::from(format!(
            "deliveries {:.0}/s   broadcasts {:.0}/s   duplicates {:.0}/s   Grafts {:.1}/s   Prunes {:.1}/s   received {:.0} B/s",
            rate(prev, now, "plumcast_deliveries_total"),
            rate(prev, now, "plumcast_broadcasts_total"),
            rate(prev, now, "plumcast_duplicate_payloads_total"),
            rate(prev, now, "plumcast_grafts_sent_total"),
            rate(prev, now, "plumcast_prunes_sent_total"),
            rate(prev, now, "plumcast_received_bytes_total"),
        )),
    ];
    f.render_widget(Paragraph::new(header).block(Block::default().borders(Borders::ALL).title(" plumcast top ")), head);
    let phi = by_label(m, "plumcast_neighbor_phi", "peer");
    let frames = by_label(m, "plumcast_queued_frames", "peer");
    let bytes = by_label(m, "plumcast_queued_bytes", "peer");
    let rows = active.iter().map(|p| {
        let health = nodes.iter().find(|n| n["short"] == p.as_str()).and_then(|n| n["health"].as_str()).unwrap_or("?");
        let role = if eager.contains(p) { "eager" } else { "lazy" };
        let colour = match health {
            "up" => Color::Green,
            "suspect" => Color::Yellow,
            _ => Color::Red,
        };
        Row::new(vec![
            Cell::from(p.clone()),
            Cell::from(health.to_string()).style(Style::default().fg(colour)),
            Cell::from(role),
            Cell::from(phi.get(p).map_or("–".into(), |v| format!("{v:.2}"))),
            Cell::from(format!("{:.0}", frames.get(p).copied().unwrap_or(0.0))),
            Cell::from(format!("{:.0}", bytes.get(p).copied().unwrap_or(0.0))),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(12),
    ];
    let table = Table::new(rows, widths)
        .header(
            Row::new(vec!["neighbour", "health", "tree", "φ", "queued", "queued B"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title(" active view (tree: our own broadcasts') "));
    f.render_widget(table, middle);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" drops, refusals, losses (totals) ")),
        bottom,
    );
}

/// The frame as text (for `--once`).
fn render_text(prev: &Sample, now: &Sample, addr: &str) -> anyhow::Result<String> {
    // As tall as the content: the header, a row per neighbour, a line per drop.
    let neighbours = now.topology["nodes"].as_array().map_or(0, |n| n.len());
    let height = 4 + (neighbours + 3).max(6) + drop_lines(&now.metrics).len() + 2;
    let mut term = Terminal::new(TestBackend::new(110, u16::try_from(height).unwrap_or(60).min(60)))
        .map_err(|e| anyhow!("{e}"))?;
    term.draw(|f| draw(f, prev, now, addr)).map_err(|e| anyhow!("{e}"))?;
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let url = base(&a.addr);
    let interval = Duration::from_secs_f64(a.interval.clamp(0.1, 60.0));
    let mut prev = fetch(&url)?;
    if a.once || !std::io::stdout().is_terminal() {
        std::thread::sleep(interval);
        let now = fetch(&url)?;
        print!("{}", render_text(&prev, &now, &a.addr)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut term = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        loop {
            let now = fetch(&url)?;
            term.draw(|f| draw(f, &prev, &now, &a.addr))?;
            prev = now;
            let until = Instant::now() + interval;
            while Instant::now() < until {
                use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
                if event::poll(until.saturating_duration_since(Instant::now()))?
                    && let Event::Key(k) = event::read()?
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}
