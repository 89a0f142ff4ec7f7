//! Eventual delivery with anti-entropy, on the shipped cores: a long partition with
//! broadcasts on both sides, and restarts of a share of the nodes after they missed
//! traffic. Each run reports whether every node ended with every message (exactly once)
//! and how long after the heal (the restarts) that took, in simulated time.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{MessageKey, Sim, SimConfig, build_overlay, sim_protocol_with_anti_entropy};

/// The anti-entropy interval of these runs: the default (5 s).
const INTERVAL: Duration = plumcast::proto::broadcast::config::ANTI_ENTROPY_INTERVAL;
/// Messages each node's store keeps: more than a run sends, so retention never gives up.
const RETENTION: usize = 10_000;
/// Simulated time between two broadcasts during the split (the downtime).
const GAP: Duration = Duration::from_millis(1500);
/// The resolution of the time to converge.
const STEP: Duration = Duration::from_millis(100);
/// How long after the heal (the restarts) a run waits for every message everywhere.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// What one run found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recovery {
    /// `long-partition` or `restarts`.
    pub scenario: &'static str,
    /// Nodes.
    pub nodes: usize,
    /// Nodes split off (half) or restarted.
    pub affected: usize,
    /// Simulated seconds of the split (of the downtime), broadcasts every 1.5 s.
    pub secs: u64,
    /// Messages broadcast during it.
    pub messages: usize,
    /// Deliveries still missing at the heal (the restarts): messages × nodes that lacked
    /// them.
    pub missing: u64,
    /// Of the messages, the ones every node but the origin delivered by the end.
    pub complete: usize,
    /// Simulated seconds from the heal (the restarts) until every message was at every
    /// node; `None` if not within 300 s.
    pub converged_s: Option<f64>,
    /// Deliveries beyond the first at one node (must be 0: exactly once).
    pub duplicates: u64,
    /// Envelopes sent in anti-entropy repairs (against `missing`: the copies beyond one
    /// per missing delivery are what concurrent exchanges cost).
    pub repaired: u64,
    /// Digests sent, and their bytes with the empty answers (32-byte NodeIds).
    pub digests: u64,
    /// Bytes of those digests and answers.
    pub digest_bytes: u64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

impl Recovery {
    /// A run's description, its outcome not measured yet.
    fn before(scenario: &'static str, nodes: usize, affected: usize, secs: u64) -> Self {
        Self {
            scenario,
            nodes,
            affected,
            secs,
            messages: 0,
            missing: 0,
            complete: 0,
            converged_s: None,
            duplicates: 0,
            repaired: 0,
            digests: 0,
            digest_bytes: 0,
            wall_s: 0.0,
        }
    }
}

fn config(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed);
    cfg.protocol = sim_protocol_with_anti_entropy(INTERVAL, RETENTION);
    cfg
}

/// Broadcast from random live nodes every [`GAP`] for `secs`.
fn traffic(sim: &mut Sim, rng: &mut ChaCha8Rng, secs: u64) -> Vec<MessageKey> {
    let mut keys = Vec::new();
    let count = (Duration::from_secs(secs).as_millis() / GAP.as_millis()) as usize;
    for _ in 0..count {
        let live = sim.live();
        if let Some(k) = sim.broadcast(live[rng.gen_range(0..live.len())]) {
            keys.push(k);
        }
        sim.run_for(GAP);
    }
    keys
}

/// Run until every message of `keys` is at every node but its origin (or [`MAX_WAIT`]);
/// fill in the outcome.
fn converge(sim: &mut Sim, keys: &[MessageKey], mut r: Recovery, started: Instant) -> Recovery {
    let everyone = sim.len() as u32 - 1;
    let complete = |sim: &Sim| keys.iter().filter(|k| sim.track(**k).is_some_and(|t| t.delivered >= everyone)).count();
    let c0 = sim.counters().clone();
    r.missing = keys.iter().map(|k| u64::from(everyone - sim.track(*k).map_or(0, |t| t.delivered.min(everyone)))).sum();
    let mut waited = Duration::ZERO;
    while complete(sim) < keys.len() && waited < MAX_WAIT {
        sim.run_for(STEP);
        waited += STEP;
    }
    let c = sim.counters();
    r.messages = keys.len();
    r.complete = complete(sim);
    r.converged_s = (r.complete == keys.len()).then_some(waited.as_secs_f64());
    r.duplicates = keys.iter().map(|k| u64::from(sim.track(*k).map_or(0, |t| t.duplicates))).sum();
    r.repaired = c.repaired - c0.repaired;
    r.digests = c.digests - c0.digests;
    r.digest_bytes = c.digest_bytes - c0.digest_bytes;
    r.wall_s = started.elapsed().as_secs_f64();
    r
}

/// `n` nodes split in two halves for `secs` (longer than the payload cache, 30 s, and
/// the catch-up window, 10 s), both halves broadcasting, then healed.
pub fn long_partition(n: usize, secs: u64, seed: u64) -> Recovery {
    let started = Instant::now();
    let mut sim = build_overlay(n, config(seed), 10);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    sim.partition((0..n).map(|i| (i % 2) as u8).collect());
    let keys = traffic(&mut sim, &mut rng, secs);
    sim.heal();
    let r = Recovery::before("long-partition", n, n / 2, secs);
    converge(&mut sim, &keys, r, started)
}

/// `n` nodes; `percent` of them (chosen at random, never the bootstrap slot) stop at a
/// quiet moment, keeping their version vector and store as a data dir does, miss `secs`
/// of broadcasts, and restart, each joining through a random live node.
pub fn restarts(n: usize, percent: usize, secs: u64, seed: u64) -> Recovery {
    let started = Instant::now();
    let mut sim = build_overlay(n, config(seed), 10);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Messages before the stop, delivered everywhere: the restarted nodes must not
    // deliver them again.
    let before = traffic(&mut sim, &mut rng, 6);
    sim.run_for(Duration::from_secs(2));
    let mut victims: Vec<u32> = (1..n as u32).collect();
    for i in (1..victims.len()).rev() {
        victims.swap(i, rng.gen_range(0..=i));
    }
    victims.truncate(n * percent / 100);
    sim.stop(&victims);
    let mut keys = traffic(&mut sim, &mut rng, secs);
    for &v in &victims {
        let live = sim.live();
        sim.restart(v, live[rng.gen_range(0..live.len())]);
    }
    keys.extend(before);
    let r = Recovery::before("restarts", n, victims.len(), secs);
    converge(&mut sim, &keys, r, started)
}
