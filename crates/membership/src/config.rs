//! HyParView configuration: view sizes and walk lengths from the paper, timers and
//! detector settings, each default with its source.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Rate;

/// Joins one peer may send: 1 a second, 5 at once. An honest node sends one per
/// (re)join, retried with backoff from 0.5 s ([`Config::rejoin_backoff_min`]).
pub const JOIN_RATE: Rate = Rate { per_second: 1, burst: 5 };

/// ForwardJoins one neighbour may send: 200 a second, 1,000 at once. A neighbour that is
/// a busy bootstrap contact forwards one per node joining through it, so this lets a
/// thousand nodes join at once through one contact; a ForwardJoin costs us one message
/// on, or at the walk's end a Neighbor request (a dial) to the address it names, of which
/// at most [`MAX_PENDING`] wait at once.
pub const FORWARD_JOIN_RATE: Rate = Rate { per_second: 200, burst: 1000 };

/// Neighbor requests waiting for an answer at once; more are dropped and counted
/// ([`Stats::neighbor_requests_dropped`](crate::Stats::neighbor_requests_dropped)). An
/// honest node has at most a few (one per free active slot, plus walk ends).
pub const MAX_PENDING: usize = 64;

/// Shuffles one neighbour may send (its own and those it forwards): 10 a second, 50 at
/// once. An honest node starts one per [`Config::shuffle_interval`] and each walks TTL
/// (6) hops, so a neighbour relays about 6 / interval a second on average.
pub const SHUFFLE_RATE: Rate = Rate { per_second: 10, burst: 50 };

/// Peers whose rates are tracked at once (oldest forgotten past this): about 100 bytes
/// each.
pub const RATE_LIMITED_PEERS: usize = 4096;

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
    /// remembered for [reconnect](crate::State#reconnect) probes. 0 turns reconnect off.
    pub reconnect_capacity: usize,
    /// How long a failed peer is remembered and probed, once per round, before it is
    /// given up (Serf's `reconnect_timeout`; its default is 24 h, ours 1 h).
    pub reconnect_timeout: Duration,
    /// Joins accepted from one peer ([`JOIN_RATE`]); the rest are dropped and counted.
    pub join_rate: Rate,
    /// ForwardJoins accepted from one peer ([`FORWARD_JOIN_RATE`]).
    pub forward_join_rate: Rate,
    /// Shuffles accepted from one peer ([`SHUFFLE_RATE`]).
    pub shuffle_rate: Rate,
    /// Peers whose message rates are tracked ([`RATE_LIMITED_PEERS`]).
    pub rate_limited_peers: usize,
}

impl Default for Config {
    /// The LAN preset ([`Config::lan`]).
    fn default() -> Self {
        Self::lan()
    }
}

/// [`Config::active_view_capacity`] default: HyParView §4, log10(n) + c with c = 1 at
/// n = 10,000.
pub const ACTIVE_VIEW_CAPACITY: usize = 5;
/// [`Config::passive_view_capacity`] default: HyParView §4, k·(log10(n) + c) with k = 6.
pub const PASSIVE_VIEW_CAPACITY: usize = 30;
/// [`Config::active_random_walk_length`] default: HyParView §5, ARWL = 6.
pub const ARWL: u16 = 6;
/// [`Config::passive_random_walk_length`] default: HyParView §5, PRWL = 3.
pub const PRWL: u16 = 3;
/// [`Config::shuffle_active_count`] default: HyParView §5, ka = 3.
pub const SHUFFLE_KA: usize = 3;
/// [`Config::shuffle_passive_count`] default: HyParView §5, kp = 4.
pub const SHUFFLE_KP: usize = 4;
/// [`Config::shuffle_ttl`] default: HyParView §4.4, the same as ARWL.
pub const SHUFFLE_TTL: u16 = ARWL;
/// [`Config::shuffle_interval`] LAN default: 10 s, as Partisan (the paper gives none).
pub const SHUFFLE_INTERVAL: Duration = Duration::from_secs(10);
/// [`Config::heartbeat_interval`] LAN default: 100 ms (any frame counts as one).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// [`Config::phi_threshold`] default: 8, as Hayashibara et al. 2004 and Cassandra.
pub const PHI_THRESHOLD: f64 = 8.0;
/// [`Config::phi_window`] default: 100 inter-arrival samples (see the field).
pub const PHI_WINDOW: usize = 100;
/// [`Config::phi_min_std_dev`] LAN default: 50 ms (loopback has ≈ no variance).
pub const PHI_MIN_STD_DEV: Duration = Duration::from_millis(50);
/// [`Config::phi_acceptable_pause`] LAN default: 250 ms, a 2-core scheduler stall.
pub const PHI_ACCEPTABLE_PAUSE: Duration = Duration::from_millis(250);
/// [`Config::neighbor_request_timeout`] LAN default: 2 s, so one lost handshake does not
/// stall promotion.
pub const NEIGHBOR_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// [`Config::rejoin_backoff_min`] LAN default: 0.5 s.
pub const REJOIN_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// [`Config::rejoin_backoff_max`] LAN default: 30 s.
pub const REJOIN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// [`Config::reconnect_capacity`] default: 16 failed peers remembered.
pub const RECONNECT_CAPACITY: usize = 16;
/// [`Config::reconnect_timeout`] default: 1 h (Serf's is 24 h).
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3600);
/// [`Config::wan`]: a 60 s shuffle, as iroh-gossip.
pub const WAN_SHUFFLE_INTERVAL: Duration = Duration::from_secs(60);
/// [`Config::wan`]: 1 s heartbeats.
pub const WAN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// [`Config::wan`]: σ floored at 200 ms.
pub const WAN_PHI_MIN_STD_DEV: Duration = Duration::from_millis(200);
/// [`Config::wan`]: a 3 s acceptable pause (detection in ≈ 5 s).
pub const WAN_PHI_ACCEPTABLE_PAUSE: Duration = Duration::from_secs(3);
/// [`Config::wan`]: 10 s for a Neighbor request over long round trips.
pub const WAN_NEIGHBOR_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// [`Config::local`]: a 2 s shuffle, so passive views refresh within a demo.
pub const LOCAL_SHUFFLE_INTERVAL: Duration = Duration::from_secs(2);
/// [`Config::local`]: rejoin after 0.2 s at first.
pub const LOCAL_REJOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// [`Config::local`]: rejoin at least every 5 s.
pub const LOCAL_REJOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Config {
    /// LAN preset: paper view sizes, 100 ms heartbeats; an abruptly killed neighbour is
    /// declared down after about 0.65 s of silence (mean 0.1 s + pause 0.25 s + ≈5.6σ
    /// with σ floored at 50 ms), well under the 1 s target and QUIC's 30 s idle timeout.
    pub fn lan() -> Self {
        Self {
            active_view_capacity: ACTIVE_VIEW_CAPACITY,
            passive_view_capacity: PASSIVE_VIEW_CAPACITY,
            active_random_walk_length: ARWL,
            passive_random_walk_length: PRWL,
            shuffle_active_count: SHUFFLE_KA,
            shuffle_passive_count: SHUFFLE_KP,
            shuffle_ttl: SHUFFLE_TTL,
            shuffle_interval: SHUFFLE_INTERVAL,
            heartbeat_interval: HEARTBEAT_INTERVAL,
            phi_threshold: PHI_THRESHOLD,
            phi_window: PHI_WINDOW,
            phi_min_std_dev: PHI_MIN_STD_DEV,
            phi_acceptable_pause: PHI_ACCEPTABLE_PAUSE,
            neighbor_request_timeout: NEIGHBOR_REQUEST_TIMEOUT,
            rejoin_backoff_min: REJOIN_BACKOFF_MIN,
            rejoin_backoff_max: REJOIN_BACKOFF_MAX,
            reconnect_capacity: RECONNECT_CAPACITY,
            reconnect_timeout: RECONNECT_TIMEOUT,
            join_rate: JOIN_RATE,
            forward_join_rate: FORWARD_JOIN_RATE,
            shuffle_rate: SHUFFLE_RATE,
            rate_limited_peers: RATE_LIMITED_PEERS,
        }
    }

    /// WAN preset: 1 s heartbeats with a 3 s acceptable pause (detection in ≈ 5 s), a
    /// 60 s shuffle like iroh-gossip, longer request timeouts.
    pub fn wan() -> Self {
        Self {
            shuffle_interval: WAN_SHUFFLE_INTERVAL,
            heartbeat_interval: WAN_HEARTBEAT_INTERVAL,
            phi_min_std_dev: WAN_PHI_MIN_STD_DEV,
            phi_acceptable_pause: WAN_PHI_ACCEPTABLE_PAUSE,
            neighbor_request_timeout: WAN_NEIGHBOR_REQUEST_TIMEOUT,
            ..Self::lan()
        }
    }

    /// Local preset for many nodes on one dev box: the LAN detector, a 2 s shuffle so
    /// passive views refresh within a demo's lifetime, and faster rejoin.
    pub fn local() -> Self {
        Self {
            shuffle_interval: LOCAL_SHUFFLE_INTERVAL,
            rejoin_backoff_min: LOCAL_REJOIN_BACKOFF_MIN,
            rejoin_backoff_max: LOCAL_REJOIN_BACKOFF_MAX,
            ..Self::lan()
        }
    }
}
