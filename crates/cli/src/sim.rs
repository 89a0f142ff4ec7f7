//! `plumcast sim`: run a simulator scenario (embedded name or TOML path).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use plumcast_sim::{Detector, Scenario, SimConfig, build_overlay_with_gap, scenario};

use crate::report;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Embedded scenario name (hyparview-failures, plumtree-stable, plumtree-few-senders,
    /// plumtree-massive-failure, churn, churn-failures-only, concurrent-join,
    /// partition-heal; see --list) or a path to a TOML file.
    scenario: Option<String>,
    /// Comma-separated seeds (overrides the scenario's).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Number of nodes (overrides the scenario's).
    #[arg(long)]
    nodes: Option<usize>,
    /// Measured broadcasts (overrides the scenario's).
    #[arg(long)]
    broadcasts: Option<usize>,
    /// Detector models, comma-separated: paper, shipped (overrides the scenario's).
    #[arg(long, value_delimiter = ',')]
    detectors: Option<Vec<String>>,
    /// Where to write CSV and plots (default: a new folder for this run under the system
    /// temp dir, `plumcast-sim/<scenario>-<unix time>-<pid>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object per row on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Speed benchmark instead of a scenario: n = 10,000 with 1,000 broadcasts, and
    /// n = 100,000 with 100 broadcasts (events/s, wall time, peak RSS); with --nodes and
    /// --broadcasts, one run of that size.
    #[arg(long)]
    bench: bool,
    /// With --bench: only the 10,000-node run.
    #[arg(long)]
    quick: bool,
    /// List the embedded scenarios.
    #[arg(long)]
    list: bool,
    /// Anti-entropy's steady-state cost instead of a scenario: N = 20, every node an
    /// origin, 100 broadcasts/s of 256 B in total, the default 5 s interval, 120 s; and
    /// the digest sizes at 10, 1,000 and 10,000 origins.
    #[arg(long)]
    anti_entropy_cost: bool,
    /// Eventual delivery with anti-entropy instead of a scenario: a 60 s partition with both
    /// halves broadcasting, and 10% of the nodes stopped for 60 s of broadcasts and
    /// restarted from what they kept; at --nodes (default 10,000), seed 1 or --seeds.
    #[arg(long)]
    recovery: bool,
    /// Seeds simulated at once, each on its own thread (memory grows with it: ≈ 1.2 GiB
    /// per seed at 10,000 nodes). Results do not depend on it.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// With --bench: threads of the broadcast phase, each running the events of one
    /// range of nodes for one link latency of virtual time at a time (default: one per
    /// processor). 0 runs one first-in-first-out queue, the order of the scenarios; any
    /// other count gives the same rows as 1.
    #[arg(long)]
    lanes: Option<usize>,
    /// Draw the scenario's plots (and print its table) from a CSV an earlier run wrote,
    /// without simulating: `plumcast sim hyparview-failures --replot docs/sim/hyparview-failures.csv --out docs/sim`.
    #[arg(long, value_name = "CSV")]
    replot: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.list {
        list()?;
        return Ok(ExitCode::SUCCESS);
    }
    if a.bench {
        let only = match (a.nodes, a.broadcasts) {
            (Some(n), Some(b)) => Some((n, b)),
            (None, None) => None,
            _ => anyhow::bail!("--bench takes --nodes and --broadcasts together (or neither)"),
        };
        let lanes = a.lanes.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
        return bench(a.quick, only, lanes);
    }
    if a.anti_entropy_cost {
        let c = plumcast_sim::anti_entropy_cost(20, 100.0, 256, 120, 1);
        println!("| nodes | msg/s (all) | size B | digest B/s per node | payload B/s per node | overhead | repaired |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2}% | {} |",
            c.nodes,
            c.rate,
            c.size,
            c.digest_bytes_per_s_per_node,
            c.payload_bytes_per_s_per_node,
            c.overhead * 100.0,
            c.repaired
        );
        println!(
            "\n| origins | largest digest B | exchanges to cover the vector | bytes to cover it |\n|---|---|---|---|"
        );
        for n in [10, 1_000, 10_000] {
            let d = plumcast_sim::digest_sizes(n);
            println!("| {n} | {} | {} | {} |", d.max_digest_bytes, d.exchanges_to_cover, d.bytes_to_cover);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.recovery {
        let n = a.nodes.unwrap_or(10_000);
        let seeds = a.seeds.clone().unwrap_or_else(|| vec![1]);
        println!(
            "| scenario | nodes | affected | s | messages | missing at heal | complete | converged s | duplicates | repaired | digests | digest MB | wall s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for seed in seeds {
            for r in
                [plumcast_sim::recovery::long_partition(n, 60, seed), plumcast_sim::recovery::restarts(n, 10, 60, seed)]
            {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
                    r.scenario,
                    r.nodes,
                    r.affected,
                    r.secs,
                    r.messages,
                    r.missing,
                    r.complete,
                    r.converged_s.map_or("not within 300".into(), |s| format!("{s:.1}")),
                    r.duplicates,
                    r.repaired,
                    r.digests,
                    r.digest_bytes as f64 / 1e6,
                    r.wall_s
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let name = a.scenario.as_deref().context("name a scenario (see --list) or use --bench")?;
    let mut s = Scenario::load(name)?;
    if let Some(seeds) = a.seeds {
        s.seeds = seeds;
    }
    if let Some(n) = a.nodes {
        s.nodes = n;
    }
    if let Some(b) = a.broadcasts {
        s.broadcasts = b;
    }
    if let Some(d) = a.detectors {
        s.detectors = d
            .iter()
            .map(|x| match x.as_str() {
                "paper" => Ok(Detector::Paper),
                "shipped" => Ok(Detector::Shipped),
                other => Err(anyhow::anyhow!("unknown detector {other:?} (paper, shipped)")),
            })
            .collect::<Result<_, _>>()?;
    }
    s.validate()?;
    let out = a.out.unwrap_or_else(|| own_folder(&s.name));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if let Some(csv) = a.replot {
        let text = std::fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
        let rows = report::read_csv(&text, s.kind).map_err(|e| anyhow::anyhow!("{}: {e}", csv.display()))?;
        print!("{}", report::table(&rows));
        let written = report::plots(&s, &rows, &out).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        for w in &written {
            eprintln!("wrote {}", w.display());
        }
        if written.is_empty() {
            eprintln!("{} has no plot (no paper values to draw beside)", s.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let est = s.estimate();
    eprintln!(
        "{}: {} runs, ≈ {} per job, ≈ {} of CPU; writing to {}",
        s.name,
        est.runs,
        gib(est.memory_per_job),
        minutes(est.cpu_seconds),
        out.display()
    );
    let rows = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let rows = scenario::run(&s, a.jobs, &|done, total, label| {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(label.to_string());
        });
        bar.finish_and_clear();
        rows
    } else {
        let lines = ProgressLines::new();
        scenario::run(&s, a.jobs, &|done, total, label| lines.update(done, total, label))
    };
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!("{} ({} nodes, seeds {:?}): {}\n", s.name, s.nodes, s.seeds, s.description);
        print!("{}", report::table(&rows));
    }
    let csv = out.join(format!("{}.csv", s.name));
    std::fs::write(&csv, report::csv(&rows))?;
    let written = report::plots(&s, &rows, &out).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    eprintln!("wrote {}", csv.display());
    for w in &written {
        eprintln!("wrote {}", w.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--list`: each embedded scenario with its size and what it costs.
fn list() -> anyhow::Result<()> {
    println!("{:26} {:>7} {:>5} {:>9} {:>9}  description", "scenario", "nodes", "runs", "mem/job", "CPU");
    for (name, _) in scenario::EMBEDDED {
        let s = Scenario::load(name)?;
        let e = s.estimate();
        println!(
            "{name:26} {:>7} {:>5} {:>9} {:>9}  {}",
            s.nodes,
            e.runs,
            gib(e.memory_per_job),
            minutes(e.cpu_seconds),
            s.description
        );
    }
    println!(
        "\nruns = seeds × detectors × modes; one job simulates one seed at a time (--jobs N: N × mem/job).\n\
         Memory and CPU are estimates from `plumcast sim --bench` (within about 3×); wall time ≈ CPU / jobs."
    );
    Ok(())
}

/// A folder of its own for a run without `--out`, so concurrent runs never overwrite
/// each other: `<temp>/plumcast-sim/<scenario>-<unix seconds>-<pid>`.
fn own_folder(scenario: &str) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    std::env::temp_dir().join("plumcast-sim").join(format!("{scenario}-{secs}-{}", std::process::id()))
}

fn gib(bytes: u64) -> String {
    let g = bytes as f64 / f64::from(1u32 << 30);
    if g >= 1.0 { format!("{g:.1} GiB") } else { format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20)) }
}

fn minutes(secs: f64) -> String {
    if secs >= 120.0 { format!("{:.0} min", secs / 60.0) } else { format!("{secs:.0} s") }
}

/// Progress when stderr is not a terminal (a log file, CI): one line when a run
/// finishes, and one every [`ProgressLines::EVERY`] in between.
struct ProgressLines {
    start: Instant,
    /// Runs done and the time of the last line.
    last: std::sync::Mutex<(u64, Instant)>,
}

impl ProgressLines {
    const EVERY: Duration = Duration::from_secs(30);

    fn new() -> Self {
        let now = Instant::now();
        Self { start: now, last: std::sync::Mutex::new((0, now)) }
    }

    fn update(&self, done: u64, total: u64, label: &str) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if done != last.0 || last.1.elapsed() >= Self::EVERY {
            *last = (done, Instant::now());
            eprintln!("[{:.0} s] {done}/{total} runs: {label}", self.start.elapsed().as_secs_f64());
        }
    }
}

fn peak_rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn bench(quick: bool, only: Option<(usize, usize)>, lanes: usize) -> anyhow::Result<ExitCode> {
    let one;
    let runs: &[(usize, usize)] = if let Some(run) = only {
        one = [run];
        &one
    } else if std::env::var_os("PLUMCAST_SIM_BENCH_SMALL").is_some() {
        &[(10_000, 100)]
    } else if quick {
        &[(10_000, 1_000)]
    } else {
        &[(10_000, 1_000), (100_000, 100)]
    };
    println!(
        "| nodes | broadcasts | lanes | build s | broadcast phase s | total s | events | events/s | reliability | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &(n, b) in runs {
        let t0 = Instant::now();
        // Joins 1 ms apart (≈ 60 walks in flight at once, as in concurrent-join) then 10
        // rounds: at 100,000 nodes a 10 ms gap spent 1,000 s of virtual time (≈ 5 M
        // shuffles) before the last join. The broadcasts' reliability shows the overlay.
        let mut sim = build_overlay_with_gap(n, SimConfig::new(1), 10, Duration::from_millis(1));
        let build = t0.elapsed().as_secs_f64();
        if lanes > 0 {
            sim.set_lanes(lanes);
        }
        let t1 = Instant::now();
        let c0 = sim.counters().clone();
        let live = sim.live();
        let mut rel = 0.0;
        for k in 0..b {
            let o = live[(k * 7919) % live.len()];
            if let Some(key) = sim.broadcast(o) {
                sim.run_for(Duration::from_millis(400));
                if let Some(t) = sim.track(key) {
                    rel += t.delivered as f64 / t.expected.max(1) as f64;
                }
            }
            sim.clear_tracks();
        }
        let phase = t1.elapsed().as_secs_f64();
        let total = t0.elapsed().as_secs_f64();
        let events = sim.counters().events;
        println!(
            "| {n} | {b} | {} | {build:.1} | {phase:.1} | {total:.1} | {events} | {:.0} | {:.4}% | {:.0} |",
            if lanes > 0 { lanes.to_string() } else { "FIFO".to_string() },
            events as f64 / total,
            rel / b as f64 * 100.0,
            peak_rss_bytes() as f64 / (1 << 20) as f64
        );
        // Broadcast phase only (the counters also ran during the overlay build).
        let c = sim.counters();
        let per = |now: u64, before: u64| (now - before) as f64 / b as f64;
        eprintln!(
            "per broadcast: events {:.0}, messages {:.0}, announcements {:.0}, IHave frames {:.0}, graft timers {:.0}, IHave timers {:.0}, membership timers {:.0}, grafts {:.0}, prunes {:.0}; queue {}",
            per(c.events, c0.events),
            per(c.messages, c0.messages),
            per(c.announcements, c0.announcements),
            per(c.ihave_frames, c0.ihave_frames),
            per(c.graft_timers, c0.graft_timers),
            per(c.ihave_timers, c0.ihave_timers),
            per(c.membership_timers, c0.membership_timers),
            per(c.grafts, c0.grafts),
            per(c.prunes, c0.prunes),
            sim.queue_len(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
