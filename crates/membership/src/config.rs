//! HyParView configuration: view sizes and walk lengths from the paper, timers and
//! detector settings, each default with its source.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::State;

/// HyParView configuration. All durations are wall-clock spans handed to the host as
/// absolute timer deadlines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// Active view capacity (open, symmetric links). Paper §4: log10(n) + c with c = 1,
    /// which is 5 at n = 10,000.
    pub active_view_capacity: usize,
    /// Passive view capacity (backups). Paper §4: k·(log10(n) + c) with k = 6, i.e. 30.
    pub passive_view_capacity: usize,
    /// Active random walk length (ForwardJoin TTL). Paper §5: ARWL = 6.
    pub active_random_walk_length: u16,
    /// Passive random walk length: the ForwardJoin step at which the joiner is put into
    /// the passive view. Paper §5: PRWL = 3.
    pub passive_random_walk_length: u16,
    /// Active-view entries per Shuffle (ka). Paper §5: 3.
    pub shuffle_active_count: usize,
    /// Passive-view entries per Shuffle (kp). Paper §5: 4.
    pub shuffle_passive_count: usize,
    /// Random-walk TTL of a Shuffle. Paper §4.4 uses the same as ARWL: 6.
    pub shuffle_ttl: u16,
    /// Period of the Shuffle (one membership *round*). The paper gives none; 10 s follows
    /// Partisan, iroh-gossip uses 60 s.
    pub shuffle_interval: Duration,
    /// Heartbeat period on every active link (ms scale). Any frame from a peer counts as
    /// a heartbeat; this is the floor for an idle link.
    pub heartbeat_interval: Duration,
    /// φ above which an active peer is declared failed. Hayashibara et al. 2004 and
    /// Cassandra use 8 (0.3 s mean detection, 0.022 false suspicions/s on a WAN).
    pub phi_threshold: f64,
    /// Number of inter-arrival samples the φ detector keeps (paper: 1,000; fewer adapt
    /// faster to a link that went from busy to idle).
    pub phi_window: usize,
    /// Floor of the φ detector's standard deviation. Loopback shows almost no variance,
    /// so without a floor a single scheduler stall would look like a death.
    pub phi_min_std_dev: Duration,
    /// Pause added to the expected inter-arrival time before φ rises (GC / scheduler
    /// stalls on a busy 2-core machine; Akka's `acceptable-heartbeat-pause`).
    pub phi_acceptable_pause: Duration,
    /// How long a Neighbor request (or Join) may stay unanswered before the peer is
    /// treated as unreachable and the next passive peer is tried.
    pub neighbor_request_timeout: Duration,
    /// First delay before retrying the bootstrap addresses when both views are empty;
    /// doubles on every attempt up to [`Config::rejoin_backoff_max`].
    pub rejoin_backoff_min: Duration,
    /// Largest delay between two bootstrap retries.
    pub rejoin_backoff_max: Duration,
    /// How many peers that failed (detector, lost connection, unanswered request) are
    /// remembered for [reconnect](State#reconnect) probes. 0 turns reconnect off.
    pub reconnect_capacity: usize,
    /// How long a failed peer is remembered and probed, once per round, before it is
    /// given up (Serf's `reconnect_timeout`; its default is 24 h, ours 1 h).
    pub reconnect_timeout: Duration,
}

impl Default for Config {
    /// The LAN preset ([`Config::lan`]).
    fn default() -> Self {
        Self::lan()
    }
}

impl Config {
    /// LAN preset: paper view sizes, 100 ms heartbeats; an abruptly killed neighbour is
    /// declared down after about 0.65 s of silence (mean 0.1 s + pause 0.25 s + ≈5.6σ
    /// with σ floored at 50 ms), well under the 1 s target and QUIC's 30 s idle timeout.
    pub fn lan() -> Self {
        Self {
            active_view_capacity: 5,
            passive_view_capacity: 30,
            active_random_walk_length: 6,
            passive_random_walk_length: 3,
            shuffle_active_count: 3,
            shuffle_passive_count: 4,
            shuffle_ttl: 6,
            shuffle_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(100),
            phi_threshold: 8.0,
            phi_window: 100,
            phi_min_std_dev: Duration::from_millis(50),
            phi_acceptable_pause: Duration::from_millis(250),
            neighbor_request_timeout: Duration::from_secs(2),
            rejoin_backoff_min: Duration::from_millis(500),
            rejoin_backoff_max: Duration::from_secs(30),
            reconnect_capacity: 16,
            reconnect_timeout: Duration::from_secs(3600),
        }
    }

    /// WAN preset: 1 s heartbeats with a 3 s acceptable pause (detection in ≈ 5 s), a
    /// 60 s shuffle like iroh-gossip, longer request timeouts.
    pub fn wan() -> Self {
        Self {
            shuffle_interval: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(1),
            phi_min_std_dev: Duration::from_millis(200),
            phi_acceptable_pause: Duration::from_secs(3),
            neighbor_request_timeout: Duration::from_secs(10),
            ..Self::lan()
        }
    }

    /// Local preset for many nodes on one dev box: the LAN detector, a 2 s shuffle so
    /// passive views refresh within a demo's lifetime, and faster rejoin.
    pub fn local() -> Self {
        Self {
            shuffle_interval: Duration::from_secs(2),
            rejoin_backoff_min: Duration::from_millis(200),
            rejoin_backoff_max: Duration::from_secs(5),
            ..Self::lan()
        }
    }
}
