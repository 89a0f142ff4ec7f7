//! Scenarios: TOML descriptions of an experiment, and the code that runs each kind.

use std::time::Duration;

use plumcast::proto::{Mode, Tree};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::engine::{Detector, Latency, MessageKey, Sim, SimConfig};
use crate::overlay::overlay_stats;

/// What a scenario measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// HyParView paper Fig. 2 / Fig. 4: fail f% at once, mean reliability over the next
    /// broadcasts (no membership round in between), and healing rounds.
    Failures,
    /// Plumtree paper Fig. 2 / Table 1: stable overlay, RMR, LDH, control messages.
    Stable,
    /// Plumtree paper Fig. 6: reliability of the first broadcast after f% fail at once,
    /// and eventual delivery of broadcasts sent during the failure window.
    MassiveFailure,
    /// Constant churn: crashes (and as many fresh joins) every round.
    Churn,
    /// Many nodes join through one contact at the same moment.
    ConcurrentJoin,
    /// Split in two, heal, measure the time back to one component.
    PartitionHeal,
}

/// Broadcast mode of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunMode {
    /// Plumtree, one sender (node 0 of the live nodes), on the node's default per-origin
    /// tree: for one sender the same tree as the paper's, but the optimisation on arrival
    /// and the repair of a failed parent apply (they are per-origin rules).
    PlumtreeSingle,
    /// Plumtree (one shared tree, as the paper), a random live sender per broadcast.
    PlumtreeMulti,
    /// Plumtree with one tree per origin (the node's default), random senders.
    PlumtreeMultiPerOrigin,
    /// Eager flooding, random senders: the papers' baseline.
    Flood,
}

impl RunMode {
    /// Name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlumtreeSingle => "plumtree-single",
            Self::PlumtreeMulti => "plumtree-multi",
            Self::PlumtreeMultiPerOrigin => "plumtree-multi-per-origin",
            Self::Flood => "flood",
        }
    }
}

fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3, 4]
}
fn default_detectors() -> Vec<Detector> {
    vec![Detector::Paper]
}
fn default_modes() -> Vec<RunMode> {
    vec![RunMode::PlumtreeMulti]
}
fn default_latency() -> Latency {
    Latency::Static { ms: 10.0 }
}
fn default_stabilize_rounds() -> u32 {
    50
}
fn default_broadcast_gap_ms() -> u64 {
    400
}
fn default_churn_joins() -> bool {
    true
}

/// A scenario file (`crates/sim/scenarios/*.toml`). Fields a kind does not use are ignored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, as in the table.
    pub name: String,
    /// What it measures.
    pub kind: Kind,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Seeds; every figure is a mean over them, the worst seed reported too.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Failure-detection models to run.
    #[serde(default = "default_detectors")]
    pub detectors: Vec<Detector>,
    /// Broadcast modes to run.
    #[serde(default = "default_modes")]
    pub modes: Vec<RunMode>,
    /// Link latency.
    #[serde(default = "default_latency")]
    pub latency: Latency,
    /// Message loss probability.
    #[serde(default)]
    pub loss: f64,
    /// Membership rounds (shuffle periods) after the joins, before measuring (paper: 50).
    #[serde(default = "default_stabilize_rounds")]
    pub stabilize_rounds: u32,
    /// Failure percentages (failures, massive-failure).
    #[serde(default)]
    pub fail_pcts: Vec<f64>,
    /// Measured broadcasts (per failure level, or in all).
    #[serde(default)]
    pub broadcasts: usize,
    /// Unmeasured broadcasts first (stable, churn).
    #[serde(default)]
    pub warmup: usize,
    /// Virtual time between broadcasts, ms.
    #[serde(default = "default_broadcast_gap_ms")]
    pub broadcast_gap_ms: u64,
    /// Plumtree optimisation threshold override (rounds); absent keeps the default.
    #[serde(default)]
    pub optimization_threshold: Option<u32>,
    /// Churn: crashes per round.
    #[serde(default)]
    pub churn_per_round: usize,
    /// Churn: each crashed node comes back at once as a fresh node joining through a
    /// random live one (default). `false` is the Plumtree paper's churn: failures only, so
    /// the cluster shrinks by `churn_per_round` every round.
    #[serde(default = "default_churn_joins")]
    pub churn_joins: bool,
    /// Churn / partition: rounds to run.
    #[serde(default)]
    pub rounds: usize,
    /// Churn: broadcasts per round.
    #[serde(default)]
    pub broadcasts_per_round: usize,
    /// Partition: how long the two halves stay apart, ms.
    #[serde(default)]
    pub partition_ms: u64,
    /// Stable, multiple senders: draw senders from this many fixed nodes instead of from
    /// every live node (a few publishers, many subscribers). Absent: any live node.
    #[serde(default)]
    pub senders: Option<usize>,
}

/// The embedded scenarios, by name.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("hyparview-failures", include_str!("../scenarios/hyparview-failures.toml")),
    ("plumtree-stable", include_str!("../scenarios/plumtree-stable.toml")),
    ("plumtree-massive-failure", include_str!("../scenarios/plumtree-massive-failure.toml")),
    ("churn", include_str!("../scenarios/churn.toml")),
    ("churn-failures-only", include_str!("../scenarios/churn-failures-only.toml")),
    ("concurrent-join", include_str!("../scenarios/concurrent-join.toml")),
    ("partition-heal", include_str!("../scenarios/partition-heal.toml")),
    ("plumtree-few-senders", include_str!("../scenarios/plumtree-few-senders.toml")),
];

/// Errors loading a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Neither an embedded name nor a readable file.
    #[error("no embedded scenario named {0:?} and no such file")]
    NotFound(String),
    /// The TOML is invalid.
    #[error("invalid scenario: {0}")]
    Invalid(#[from] toml::de::Error),
    /// The file could not be read.
    #[error("cannot read the scenario: {0}")]
    Io(#[from] std::io::Error),
    /// The parameters cannot describe a run (say, churn that would crash every node).
    #[error("scenario {name:?} cannot run: {why}")]
    Inconsistent {
        /// The scenario's name.
        name: String,
        /// What is wrong, with the numbers.
        why: String,
    },
}

impl Scenario {
    /// An embedded scenario by name, or a TOML file by path.
    ///
    /// # Errors
    /// [`ScenarioError`] if neither exists or the TOML is invalid.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((_, text)) = EMBEDDED.iter().find(|(n, _)| *n == name_or_path) {
            let s: Self = toml::from_str(text)?;
            s.validate()?;
            return Ok(s);
        }
        let path = std::path::Path::new(name_or_path);
        if !path.exists() {
            return Err(ScenarioError::NotFound(name_or_path.to_string()));
        }
        let s: Self = toml::from_str(&std::fs::read_to_string(path)?)?;
        s.validate()?;
        Ok(s)
    }

    /// Check that the parameters describe a run; call it again after overriding fields
    /// (the CLI's `--nodes`, `--seeds`).
    ///
    /// # Errors
    /// [`ScenarioError::Inconsistent`] naming the problem: fewer than 2 nodes, no seed,
    /// or churn that would crash every node (`churn_per_round` × `rounds` ≥ `nodes` without
    /// joins; `churn_per_round` ≥ `nodes` with them).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |why: String| Err(ScenarioError::Inconsistent { name: self.name.clone(), why });
        if self.nodes < 2 {
            return bad(format!("{} nodes; at least 2 are needed", self.nodes));
        }
        if self.seeds.is_empty() {
            return bad("no seed".into());
        }
        if self.kind == Kind::Churn {
            let crashes = if self.churn_joins { self.churn_per_round } else { self.churn_per_round * self.rounds };
            if crashes >= self.nodes {
                return bad(format!(
                    "{} crashes per round for {} rounds ({}) would crash all {} nodes",
                    self.churn_per_round,
                    self.rounds,
                    if self.churn_joins { "each replaced by a join" } else { "no joins" },
                    self.nodes
                ));
            }
        }
        Ok(())
    }
}

/// Peak memory of one job (one seed's overlay and its forks), bytes per node: 1,148 MiB
/// at 10,000 nodes (`plumcast sim --bench --quick`, docs/simulation.md).
pub const MEMORY_PER_NODE: u64 = 120 << 10;
/// CPU time per node and membership round of 10 s, µs: building 10,000 nodes with 10
/// rounds took 2–3 s (`plumcast sim --bench`).
pub const CPU_US_PER_NODE_ROUND: f64 = 25.0;
/// CPU time per node and broadcast (with the 400 ms of membership traffic beside it),
/// µs: 10,000 nodes × 1,000 broadcasts took 122–140 s (`plumcast sim --bench --quick`).
pub const CPU_US_PER_NODE_BROADCAST: f64 = 12.0;

/// What a scenario will cost before it runs: an order of magnitude, from the
/// [`MEMORY_PER_NODE`], [`CPU_US_PER_NODE_ROUND`] and [`CPU_US_PER_NODE_BROADCAST`]
/// measurements. Checked against two measured scenarios: `hyparview-failures` ≈ 75
/// CPU-minutes estimated against 85 measured, `churn` ≈ 16 against ≈ 10.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Runs: seeds × detectors × modes (a progress bar's length).
    pub runs: u64,
    /// Peak memory of one job, bytes (`--jobs N` takes about N times this).
    pub memory_per_job: u64,
    /// CPU time of the whole scenario, seconds (divide by `--jobs` for wall time).
    pub cpu_seconds: f64,
}

impl Scenario {
    /// The [`Estimate`] of running this scenario.
    #[must_use]
    pub fn estimate(&self) -> Estimate {
        let n = self.nodes as f64;
        let per_run_runs = (self.detectors.len() * self.modes.len()) as f64;
        // Failure levels: the broadcasts run once per level, over the survivors.
        let (bcasts, rounds) = match self.kind {
            Kind::Failures | Kind::MassiveFailure => {
                let survivors: f64 = self.fail_pcts.iter().map(|p| 1.0 - p / 100.0).sum();
                (self.broadcasts as f64 * survivors, 0.0)
            }
            Kind::Churn => ((self.warmup + self.rounds * self.broadcasts_per_round) as f64, self.rounds as f64),
            Kind::PartitionHeal => (self.broadcasts as f64, self.rounds as f64 + self.partition_ms as f64 / 10_000.0),
            Kind::Stable | Kind::ConcurrentJoin => ((self.warmup + self.broadcasts) as f64, 0.0),
        };
        let build = n * f64::from(self.stabilize_rounds) * CPU_US_PER_NODE_ROUND;
        let run = n * (bcasts * CPU_US_PER_NODE_BROADCAST + rounds * CPU_US_PER_NODE_ROUND);
        let per_seed = build + per_run_runs * run;
        Estimate {
            runs: (self.seeds.len() * self.detectors.len() * self.modes.len()) as u64,
            memory_per_job: self.nodes as u64 * MEMORY_PER_NODE,
            cpu_seconds: self.seeds.len() as f64 * per_seed / 1e6,
        }
    }
}

/// One result row. Keys are named after the metrics; absent ones do not apply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Broadcast mode.
    pub mode: String,
    /// Detector model.
    pub detector: String,
    /// Nodes at the start.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Percent of nodes failed (or churned per round).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_pct: Option<f64>,
    /// Mean fraction of live nodes that delivered (0–1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reliability: Option<f64>,
    /// Fraction delivered in the end (after repairs) of broadcasts sent during a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eventual_reliability: Option<f64>,
    /// Reliability of the first broadcast after the failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_reliability: Option<f64>,
    /// Mean RMR (payload messages only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmr: Option<f64>,
    /// Fraction of broadcasts (from the 3rd on) with RMR exactly 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmr_zero_share: Option<f64>,
    /// Mean last delivery hop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldh: Option<f64>,
    /// Control messages (IHave frames, Graft, Prune) per broadcast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_per_bcast: Option<f64>,
    /// Payload messages per broadcast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_per_bcast: Option<f64>,
    /// Mean virtual latency to the last delivery, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Membership rounds until reliability is back to 100%.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healing_rounds: Option<u32>,
    /// Whether this kind measures healing rounds (absent then means "not healed").
    #[serde(skip)]
    pub healing_measured: bool,
    /// Connected components of the active-view overlay at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub components: Option<usize>,
    /// Asymmetric active links at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asymmetric_links: Option<usize>,
    /// Components while partitioned (partition-heal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub components_during: Option<usize>,
    /// Virtual ms until one component again (partition-heal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_ms: Option<f64>,
    /// Mean clustering coefficient (stable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clustering: Option<f64>,
    /// Mean shortest path (stable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg_shortest_path: Option<f64>,
    /// Share of nodes with in-degree exactly 5 (stable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_degree_5_share: Option<f64>,
    /// Duplicate deliveries seen (must be 0).
    pub duplicates: u64,
    /// Sampled invariant checks (after every measured broadcast) and violations found.
    pub invariant_checks: u64,
    /// Violations found by those checks (must be 0).
    pub invariant_violations: u64,
    /// Events processed.
    pub events: u64,
    /// Wall-clock seconds for this row.
    pub wall_s: f64,
}

/// Progress callback: (runs done, runs in total, label). Called from the worker threads
/// when `jobs` > 1, hence `Sync`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64, &str) + Sync);

/// Build an overlay of `n` nodes: joins one at a time through a random earlier node
/// (100 ms apart), then `rounds` membership rounds.
pub fn build_overlay(n: usize, cfg: SimConfig, rounds: u32) -> Sim {
    build_overlay_with_gap(n, cfg, rounds, Duration::from_millis(100))
}

/// [`build_overlay`] with another virtual gap between two joins. Every joined node runs
/// its Shuffle timer meanwhile, so at 100,000 nodes a 100 ms gap means 10,000 s of
/// virtual time and ~1,000 shuffle rounds before the last join; the speed benchmark uses
/// 1 ms (about 60 joins overlap: a ForwardJoin walk takes ~60 ms).
pub fn build_overlay_with_gap(n: usize, cfg: SimConfig, rounds: u32, gap: Duration) -> Sim {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
    let shuffle = cfg.protocol.membership.shuffle_interval;
    let mut sim = Sim::new(n, cfg);
    sim.start(0, None);
    for i in 1..n as u32 {
        let contact = rng.gen_range(0..i);
        sim.start(i, Some(contact));
        sim.run_for(gap);
    }
    sim.run_for(shuffle * rounds);
    sim
}

fn sim_config(s: &Scenario, seed: u64, detector: Detector) -> SimConfig {
    let mut cfg = SimConfig::new(seed);
    cfg.latency = s.latency;
    cfg.loss = s.loss;
    cfg.detector = detector;
    if let Some(t) = s.optimization_threshold {
        cfg.protocol.broadcast.optimization_threshold = Some(t);
    }
    cfg
}

fn set_mode(sim: &mut Sim, mode: RunMode) {
    let m = if mode == RunMode::Flood { Mode::Flood } else { Mode::Plumtree };
    sim.set_broadcast_mode(m);
    let tree = if mode == RunMode::PlumtreeMulti { Tree::Shared } else { Tree::PerOrigin };
    sim.set_broadcast_tree(tree);
}

fn pick_sender(sim: &Sim, mode: RunMode, rng: &mut ChaCha8Rng) -> Option<u32> {
    let live = sim.live();
    if live.is_empty() {
        return None;
    }
    Some(if mode == RunMode::PlumtreeSingle { live[0] } else { live[rng.gen_range(0..live.len())] })
}

/// Result of one measured broadcast.
struct Shot {
    reliability: f64,
    rmr: f64,
    ldh: u32,
    payload: u64,
    latency_ms: f64,
    duplicates: u32,
    /// The broadcast's track key, to read it again later.
    key: MessageKey,
}

fn shoot(sim: &mut Sim, origin: u32, gap: Duration) -> Option<Shot> {
    let key = sim.broadcast(origin)?;
    sim.run_for(gap);
    sim.check_sampled();
    let (reliability, rmr) = settled(sim, key)?;
    let t = sim.track(key)?;
    Some(Shot {
        reliability,
        rmr,
        ldh: t.ldh,
        payload: t.payload_msgs,
        latency_ms: (t.last_delivery_at - t.sent_at) as f64 / 1000.0,
        duplicates: t.duplicates,
        key,
    })
}

/// Reliability and RMR of a tracked broadcast as they stand now (after repairs had time).
fn settled(sim: &Sim, key: MessageKey) -> Option<(f64, f64)> {
    let t = sim.track(key)?;
    let rel = (t.delivered as f64 / t.expected.max(1) as f64).min(1.0);
    let rmr = if t.delivered == 0 { 0.0 } else { t.payload_msgs as f64 / t.delivered as f64 - 1.0 };
    Some((rel, rmr))
}

fn crash_fraction(sim: &mut Sim, pct: f64, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let mut live = sim.live();
    live.shuffle(rng);
    let k = ((live.len() as f64) * pct / 100.0).round() as usize;
    let victims: Vec<u32> = live.into_iter().take(k).collect();
    sim.crash_many(&victims);
    victims
}

/// Run every (detector, mode, seed, level) of a scenario, `jobs` seeds at a time on
/// their own threads (each holds one seed's simulation: ≈ 1.2 GiB at 10,000 nodes). The
/// rows are the same whatever `jobs` is: each seed is deterministic on its own.
pub fn run(s: &Scenario, jobs: usize, progress: Progress<'_>) -> Vec<Row> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let total = (s.detectors.len() * s.modes.len() * s.seeds.len()) as u64;
    let done = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, s.seeds.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = s.seeds.get(k) else { break };
                    let rows = run_seed(s, seed, &done, total, progress);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((k, rows));
                }
            });
        }
    });
    progress(total, total, "done");
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    // Rows in the scenario's seed order whatever order the jobs finished in.
    results.sort_by_key(|(k, _)| *k);
    results.into_iter().flat_map(|(_, rows)| rows).collect()
}

/// Every run of one seed: one stabilised overlay, forked per detector, mode and level
/// (the detector model only matters once something fails).
fn run_seed(
    s: &Scenario,
    seed: u64,
    done: &std::sync::atomic::AtomicU64,
    total: u64,
    progress: Progress<'_>,
) -> Vec<Row> {
    use std::sync::atomic::Ordering;
    let mut rows = Vec::new();
    let t0 = std::time::Instant::now();
    let base = if s.kind == Kind::ConcurrentJoin {
        None
    } else {
        progress(done.load(Ordering::Relaxed), total, &format!("{} seed {seed}: building {} nodes", s.name, s.nodes));
        Some(build_overlay(s.nodes, sim_config(s, seed, Detector::Paper), s.stabilize_rounds))
    };
    let build_s = t0.elapsed().as_secs_f64();
    for &detector in &s.detectors {
        let base = base.clone().map(|mut b| {
            b.set_detector(detector);
            b
        });
        for &mode in &s.modes {
            let label = format!("{} {} {} seed {seed}", s.name, mode.as_str(), detector.as_str());
            progress(done.load(Ordering::Relaxed), total, &label);
            let mut head = Row {
                scenario: s.name.clone(),
                mode: mode.as_str().into(),
                detector: detector.as_str().into(),
                nodes: s.nodes,
                seed,
                ..Row::default()
            };
            head.wall_s = build_s;
            let new = match s.kind {
                Kind::Failures => failures(s, base.clone(), mode, head, seed),
                Kind::Stable => stable(s, base.clone(), mode, head, seed),
                Kind::MassiveFailure => massive_failure(s, base.clone(), mode, head, seed),
                Kind::Churn => churn(s, base.clone(), mode, head, seed),
                Kind::ConcurrentJoin => concurrent_join(s, detector, head, seed),
                Kind::PartitionHeal => partition_heal(s, base.clone(), head, seed),
            };
            rows.extend(new);
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    rows
}

fn finish(mut row: Row, sim: &Sim, t0: std::time::Instant) -> Row {
    row.events = sim.counters().events;
    row.invariant_checks = sim.counters().invariant_checks;
    row.invariant_violations = sim.counters().invariant_violations;
    row.wall_s += t0.elapsed().as_secs_f64();
    row
}

fn failures(s: &Scenario, base: Option<Sim>, mode: RunMode, head: Row, seed: u64) -> Vec<Row> {
    let Some(base) = base else { return vec![] };
    let mut rows = Vec::new();
    let gap = Duration::from_millis(s.broadcast_gap_ms);
    for &pct in &s.fail_pcts {
        let t0 = std::time::Instant::now();
        let mut sim = base.clone();
        set_mode(&mut sim, mode);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (pct * 1000.0) as u64);
        crash_fraction(&mut sim, pct, &mut rng);
        // Healing rounds (Fig. 4) on a fork: rounds with shuffles until 10 broadcasts
        // in a row reach every live node.
        // The probe asks whether the overlay is whole again, not how fast Plumtree's lazy
        // repair is: each probe broadcast gets 2 s (several Graft timer periods).
        let mut heal = sim.clone();
        let healing_rounds = rounds_to_full_reliability(&mut heal, mode, &mut rng, PROBE_GAP, 10, 20);
        // Reliability (Fig. 2): no membership round in between, reactive repairs run.
        sim.shuffle_paused = true;
        let (mut rel, mut dups, mut k) = (0.0, 0u64, 0);
        // Eventual delivery: each broadcast is read again PROBE_GAP after it was sent,
        // when every Graft retry is long over (late, not lost).
        let lag = PROBE_GAP.as_micros().div_ceil(gap.as_micros().max(1)) as usize;
        let (mut pending, mut eventual, mut ek) = (std::collections::VecDeque::new(), 0.0, 0);
        let mut settle = |sim: &mut Sim, key| {
            if let Some((r, _)) = settled(sim, key) {
                eventual += r;
                ek += 1;
            }
            sim.forget_track(key);
        };
        for _ in 0..s.broadcasts {
            let Some(o) = pick_sender(&sim, mode, &mut rng) else { break };
            if let Some(x) = shoot(&mut sim, o, gap) {
                rel += x.reliability;
                dups += u64::from(x.duplicates);
                k += 1;
                pending.push_back(x.key);
            }
            while pending.len() > lag {
                let key = pending.pop_front().expect("non-empty");
                settle(&mut sim, key);
            }
        }
        sim.run_for(PROBE_GAP);
        for key in pending {
            settle(&mut sim, key);
        }
        let mut row = head.clone();
        row.failed_pct = Some(pct);
        row.reliability = Some(rel / k.max(1) as f64);
        row.eventual_reliability = Some(eventual / ek.max(1) as f64);
        row.healing_rounds = healing_rounds;
        row.healing_measured = true;
        row.duplicates = dups;
        row.components = Some(overlay_stats(&sim, seed).components);
        rows.push(finish(row, &sim, t0));
    }
    rows
}

/// Time each healing probe broadcast gets before its reliability is read.
const PROBE_GAP: Duration = Duration::from_secs(2);

/// Membership rounds (with shuffles) until `probes` broadcasts in a row reach every live
/// node; `None` if not within `max_rounds`.
fn rounds_to_full_reliability(
    sim: &mut Sim,
    mode: RunMode,
    rng: &mut ChaCha8Rng,
    gap: Duration,
    probes: usize,
    max_rounds: u32,
) -> Option<u32> {
    for r in 0..=max_rounds {
        let ok = (0..probes).all(|_| {
            pick_sender(sim, mode, rng).and_then(|o| shoot(sim, o, gap)).is_some_and(|x| x.reliability >= 1.0)
        });
        if ok {
            return Some(r);
        }
        sim.run_for(membership_round(sim));
    }
    None
}

/// One membership round: the Shuffle period of the simulated nodes.
fn membership_round(sim: &Sim) -> Duration {
    sim.config().protocol.membership.shuffle_interval
}

fn stable(s: &Scenario, base: Option<Sim>, mode: RunMode, mut row: Row, seed: u64) -> Vec<Row> {
    let Some(mut sim) = base else { return vec![] };
    let t0 = std::time::Instant::now();
    set_mode(&mut sim, mode);
    let gap = Duration::from_millis(s.broadcast_gap_ms);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xb0);
    let pick = |sim: &Sim, rng: &mut ChaCha8Rng| match s.senders {
        Some(k) if mode != RunMode::PlumtreeSingle && k > 0 => {
            let live = sim.live();
            live.get(rng.gen_range(0..k.min(live.len()).max(1))).copied()
        }
        _ => pick_sender(sim, mode, rng),
    };
    for _ in 0..s.warmup {
        if let Some(o) = pick(&sim, &mut rng) {
            shoot(&mut sim, o, gap);
        }
    }
    let before = sim.counters().clone();
    let mut shots = Vec::new();
    for _ in 0..s.broadcasts {
        let Some(o) = pick(&sim, &mut rng) else { break };
        if let Some(x) = shoot(&mut sim, o, gap) {
            shots.push(x);
        }
        sim.clear_tracks();
    }
    let c = sim.counters();
    let control = (c.ihave_frames + c.grafts + c.prunes) - (before.ihave_frames + before.grafts + before.prunes);
    let k = shots.len().max(1) as f64;
    row.reliability = Some(shots.iter().map(|x| x.reliability).sum::<f64>() / k);
    row.rmr = Some(shots.iter().map(|x| x.rmr).sum::<f64>() / k);
    let tail: Vec<&Shot> = shots.iter().skip(2).collect();
    row.rmr_zero_share = Some(tail.iter().filter(|x| x.rmr.abs() < 1e-9).count() as f64 / tail.len().max(1) as f64);
    row.ldh = Some(shots.iter().map(|x| x.ldh as f64).sum::<f64>() / k);
    row.payload_per_bcast = Some(shots.iter().map(|x| x.payload as f64).sum::<f64>() / k);
    row.control_per_bcast = Some(control as f64 / k);
    row.latency_ms = Some(shots.iter().map(|x| x.latency_ms).sum::<f64>() / k);
    row.duplicates = shots.iter().map(|x| u64::from(x.duplicates)).sum();
    let o = overlay_stats(&sim, seed);
    row.components = Some(o.components);
    row.clustering = Some(o.clustering);
    row.avg_shortest_path = Some(o.avg_shortest_path);
    row.in_degree_5_share = Some(o.in_degree_hist.get(5).copied().unwrap_or(0) as f64 / o.nodes.max(1) as f64);
    row.asymmetric_links = Some(o.asymmetric_links);
    vec![finish(row, &sim, t0)]
}

fn massive_failure(s: &Scenario, base: Option<Sim>, mode: RunMode, head: Row, seed: u64) -> Vec<Row> {
    let Some(base) = base else { return vec![] };
    let gap = Duration::from_millis(s.broadcast_gap_ms);
    let mut rows = Vec::new();
    for &pct in &s.fail_pcts {
        let t0 = std::time::Instant::now();
        let mut sim = base.clone();
        set_mode(&mut sim, mode);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa11 ^ (pct * 1000.0) as u64);
        // Warm the tree first (RMR settles after a few broadcasts).
        for _ in 0..5 {
            if let Some(o) = pick_sender(&sim, mode, &mut rng) {
                shoot(&mut sim, o, gap);
            }
        }
        crash_fraction(&mut sim, pct, &mut rng);
        // Broadcasts sent during the failure window: all at once, right after the crash.
        let mut keys = Vec::new();
        for _ in 0..s.broadcasts.max(1) {
            if let Some(o) = pick_sender(&sim, mode, &mut rng)
                && let Some(k) = sim.broadcast(o)
            {
                keys.push(k);
            }
            sim.run_for(Duration::from_millis(1));
        }
        sim.run_for(gap);
        let rel = |sim: &Sim, k| settled(sim, k).map_or(0.0, |(r, _)| r);
        let first = keys.first().map(|k| rel(&sim, *k)).unwrap_or(0.0);
        // Eventual: let repairs run for 3 membership rounds.
        sim.run_for(membership_round(&sim) * 3);
        let eventual = keys.iter().map(|k| rel(&sim, *k)).sum::<f64>() / keys.len().max(1) as f64;
        let mut row = head.clone();
        row.failed_pct = Some(pct);
        row.first_reliability = Some(first);
        row.eventual_reliability = Some(eventual);
        row.duplicates = keys.iter().filter_map(|k| sim.track(*k)).map(|t| u64::from(t.duplicates)).sum();
        // Reliability is back within how many rounds?
        row.healing_rounds = rounds_to_full_reliability(&mut sim, mode, &mut rng, PROBE_GAP, 5, 10);
        row.healing_measured = true;
        rows.push(finish(row, &sim, t0));
    }
    rows
}

fn churn(s: &Scenario, base: Option<Sim>, mode: RunMode, mut row: Row, seed: u64) -> Vec<Row> {
    let Some(mut sim) = base else { return vec![] };
    let t0 = std::time::Instant::now();
    set_mode(&mut sim, mode);
    let gap = Duration::from_millis(s.broadcast_gap_ms);
    let round = membership_round(&sim);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc4);
    // Warm-up broadcasts before the churn starts, not measured: a cold tree's first
    // broadcasts flood it (RMR ≈ 3), which is the bootstrap cost `plumtree-stable`
    // reports, not the cost of churn.
    for _ in 0..s.warmup {
        if let Some(o) = pick_sender(&sim, mode, &mut rng) {
            shoot(&mut sim, o, gap);
        }
    }
    sim.clear_tracks();
    let mut shots = Vec::new();
    // (eventual reliability, RMR) of each broadcast, read at the end of its round.
    let mut ends = Vec::new();
    // With one sender, the sender itself never crashes: a new sender is a new origin,
    // whose first broadcast floods its per-origin tree (the cold start that
    // `plumtree-stable` measures), not the cost of churn. Random senders may crash.
    let keep = if mode == RunMode::PlumtreeSingle { sim.live().first().copied() } else { None };
    for _ in 0..s.rounds {
        let mut live = sim.live();
        live.shuffle(&mut rng);
        let victims: Vec<u32> = live.iter().copied().filter(|v| Some(*v) != keep).take(s.churn_per_round).collect();
        sim.crash_many(&victims);
        if s.churn_joins {
            // Each crashed slot comes back as a fresh node joining through a random live one.
            let live = sim.live();
            for v in victims {
                let contact = live[rng.gen_range(0..live.len())];
                sim.start(v, Some(contact));
            }
        }
        let mut used = Duration::ZERO;
        let mut keys = Vec::new();
        for _ in 0..s.broadcasts_per_round {
            if let Some(o) = pick_sender(&sim, mode, &mut rng) {
                if let Some(x) = shoot(&mut sim, o, gap) {
                    keys.push(x.key);
                    shots.push(x);
                }
                used += gap;
            }
        }
        if round > used {
            sim.run_for(round - used);
        }
        ends.extend(keys.iter().filter_map(|k| settled(&sim, *k)));
        sim.clear_tracks();
    }
    let k = shots.len().max(1) as f64;
    row.failed_pct = Some(100.0 * s.churn_per_round as f64 / s.nodes as f64);
    row.reliability = Some(shots.iter().map(|x| x.reliability).sum::<f64>() / k);
    let e = ends.len().max(1) as f64;
    row.eventual_reliability = Some(ends.iter().map(|x| x.0).sum::<f64>() / e);
    // RMR counts every payload message, those of Graft repairs after the read-out too.
    row.rmr = Some(ends.iter().map(|x| x.1).sum::<f64>() / e);
    row.ldh = Some(shots.iter().map(|x| x.ldh as f64).sum::<f64>() / k);
    row.duplicates = shots.iter().map(|x| u64::from(x.duplicates)).sum();
    row.components = Some(overlay_stats(&sim, seed).components);
    vec![finish(row, &sim, t0)]
}

fn concurrent_join(s: &Scenario, detector: Detector, mut row: Row, seed: u64) -> Vec<Row> {
    let t0 = std::time::Instant::now();
    let cfg = sim_config(s, seed, detector);
    let shuffle = cfg.protocol.membership.shuffle_interval;
    let mut sim = Sim::new(s.nodes, cfg);
    sim.start(0, None);
    for i in 1..s.nodes as u32 {
        sim.start(i, Some(0));
    }
    sim.run_for(shuffle * s.stabilize_rounds.max(1));
    let o = overlay_stats(&sim, seed);
    row.components = Some(o.components);
    row.asymmetric_links = Some(o.asymmetric_links);
    // Everyone delivers?
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gap = Duration::from_millis(s.broadcast_gap_ms);
    let mut rel = 0.0;
    for _ in 0..s.broadcasts.max(1) {
        if let Some(x) = pick_sender(&sim, RunMode::PlumtreeMulti, &mut rng).and_then(|o| shoot(&mut sim, o, gap)) {
            rel += x.reliability;
            row.duplicates += u64::from(x.duplicates);
        }
    }
    row.reliability = Some(rel / s.broadcasts.max(1) as f64);
    vec![finish(row, &sim, t0)]
}

fn partition_heal(s: &Scenario, base: Option<Sim>, mut row: Row, seed: u64) -> Vec<Row> {
    let Some(mut sim) = base else { return vec![] };
    let t0 = std::time::Instant::now();
    let n = sim.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9a);
    let mut ids: Vec<usize> = (0..n).collect();
    ids.shuffle(&mut rng);
    let mut group = vec![0u8; n];
    for i in ids.into_iter().take(n / 2) {
        group[i] = 1;
    }
    sim.partition(group);
    sim.run_for(Duration::from_millis(s.partition_ms));
    let during = overlay_stats(&sim, seed).components;
    sim.heal();
    let start = sim.now_us();
    let step = Duration::from_millis(500);
    let limit = membership_round(&sim) * s.rounds.max(1) as u32;
    let mut healed = None;
    while Duration::from_micros(sim.now_us() - start) <= limit {
        if overlay_stats(&sim, seed).components == 1 {
            healed = Some((sim.now_us() - start) as f64 / 1000.0);
            break;
        }
        sim.run_for(step);
    }
    row.heal_ms = healed;
    row.components = Some(overlay_stats(&sim, seed).components);
    row.components_during = Some(during);
    let gap = Duration::from_millis(s.broadcast_gap_ms);
    let mut rel = 0.0;
    let mut keys = Vec::new();
    for _ in 0..s.broadcasts.max(1) {
        if let Some(x) = pick_sender(&sim, RunMode::PlumtreeMulti, &mut rng).and_then(|o| shoot(&mut sim, o, gap)) {
            rel += x.reliability;
            keys.push(x.key);
        }
    }
    row.reliability = Some(rel / s.broadcasts.max(1) as f64);
    // Eventual: let repairs run for 3 membership rounds.
    sim.run_for(membership_round(&sim) * 3);
    let ends: Vec<f64> = keys.iter().filter_map(|k| settled(&sim, *k)).map(|x| x.0).collect();
    row.eventual_reliability = Some(ends.iter().sum::<f64>() / ends.len().max(1) as f64);
    vec![finish(row, &sim, t0)]
}
