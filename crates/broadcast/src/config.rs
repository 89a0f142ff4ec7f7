//! Plumtree configuration: spreading mode, tree kind, timers and bounds, each default
//! with its source.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Retention;

/// Which spanning tree a link belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tree {
    /// One tree for all senders, as in the paper. A link pruned for one sender is lazy
    /// for every sender; with many concurrent senders, prunes on two edges of one cycle
    /// can split the tree, and repairs wait on Graft timers.
    Shared,
    /// One tree per origin (as riak_core's Plumtree): eager/lazy state is kept per origin,
    /// a new origin starts with every neighbour eager. Costs a small map per active origin
    /// (bounded by [`Config::max_trees`]): its lazy links, its tree parent and the round
    /// each lazy neighbour last announced (at most one entry per neighbour). Enables the
    /// optimisation on arrival and parent repair (module docs).
    PerOrigin,
}

/// In which order messages are delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ordering {
    /// As they arrive: lowest latency. Messages of one origin may be delivered out of
    /// order (the tree and repairs race).
    #[default]
    None,
    /// FIFO per origin and incarnation: a message is held back until every earlier one
    /// of its origin's life was delivered, or until [`Config::ordering_max_wait`] gives
    /// up on the gap (counted in [`Stats::ordering_gaps_skipped`](crate::Stats::ordering_gaps_skipped)). A life's first
    /// message seen starts its order (a node that joins late does not wait for history).
    PerOrigin,
}

/// How payloads spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Plumtree: eager push on the tree, lazy push elsewhere.
    Plumtree,
    /// Eager flooding to every neighbour, never pruning: the baseline both papers compare
    /// against (RMR ≈ fanout − 1).
    Flood,
}

/// Plumtree configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// Spreading mode. Default [`Mode::Plumtree`].
    pub mode: Mode,
    /// One shared tree (the paper) or one tree per origin. Default: per origin, which
    /// measured faster for random senders (docs/performance.md).
    pub tree: Tree,
    /// Most per-origin trees kept; the least recently used is forgotten beyond it (its
    /// links turn eager again; counted in [`Stats::trees_evicted`](crate::Stats::trees_evicted)).
    pub max_trees: usize,
    /// Timer 1: wait after the first IHave for a missing payload before grafting, and the
    /// floor of the adaptive wait ([`Config::graft_timeout_max`]). The paper gives no
    /// number (§3.6); iroh-gossip uses 80 ms. LAN default 80 ms.
    pub graft_timeout_1: Duration,
    /// Ceiling of the adaptive timer 1. The wait after a first IHave follows the lag this
    /// node has seen between IHaves and the tree's payloads (RFC 6298's estimator, `srtt +
    /// 4 × rttvar`), never below [`Config::graft_timeout_1`], never above this; at or
    /// below `graft_timeout_1` the timer is the paper's fixed one. LAN default 500 ms.
    pub graft_timeout_max: Duration,
    /// Timer 2: wait for a grafted payload before grafting the next announcer ("about one
    /// round trip", paper §3.6). A floor: the wait is the larger of this and twice the
    /// smoothed RTT to the grafted peer when the node reports it ([`State::set_rtt`](crate::State::set_rtt); the
    /// QUIC node feeds quinn's estimate every 500 ms), so slow links are not given up on
    /// early. LAN default 40 ms.
    pub graft_timeout_2: Duration,
    /// IHave batching window; 0 sends each announcement at once. iroh-gossip: 5 ms.
    pub ihave_batch_window: Duration,
    /// Most announcements in one IHave frame. The node refuses control frames over 64 KiB
    /// before decoding them, so keep this at most 700 (an announcement is at most 93
    /// bytes with a 32-byte origin id).
    pub ihave_batch_max: usize,
    /// Tree optimisation threshold in rounds (paper §3.8, §4: 3 for one sender, 7 for
    /// many); `None` disables the optimisation.
    pub optimization_threshold: Option<u32>,
    /// Message cache bound: number of payloads kept to answer Grafts.
    pub cache_max_messages: usize,
    /// Message cache bound: payload bytes kept.
    pub cache_max_bytes: usize,
    /// Message cache bound: age. iroh-gossip keeps payloads 30 s.
    pub cache_max_age: Duration,
    /// Most missing-message records (IHave seen, payload not) kept at once; further
    /// announcements are dropped and counted in [`Stats::missing_dropped`](crate::Stats::missing_dropped).
    pub max_missing: usize,
    /// Most times one message is sent to one neighbour in answer to its Grafts; further
    /// Grafts for it from that neighbour are refused and counted in
    /// [`Stats::grafts_refused`](crate::Stats::grafts_refused). Bounds Graft amplification
    /// (a Graft of about 40 bytes answered with up to a 64 KiB payload).
    pub max_serves: u32,
    /// Most out-of-order sequence numbers kept above one origin's watermark before the
    /// watermark is forced forward (counted in [`Stats::dedupe_window_overflows`](crate::Stats::dedupe_window_overflows)).
    pub dedupe_window: usize,
    /// Deliver our own broadcasts to ourselves too. Default `false`.
    pub deliver_own: bool,
    /// Catch-up on NeighborUp: a new neighbour is sent IHave announcements for the payloads
    /// cached in this last span, so a message that was spreading while the link was down
    /// (a failure, a partition, a node that broadcast with no neighbour) is grafted instead
    /// of lost. Zero disables it.
    pub catch_up_window: Duration,
    /// Most announcements in one catch-up.
    pub catch_up_max: usize,
    /// Most incarnations (lives) of one origin kept in the version vector; a message of
    /// an older life than every one kept is dropped as stale.
    pub max_incarnations: usize,
    /// What the message store keeps for anti-entropy and late Grafts. `max_messages = 0`
    /// keeps nothing.
    pub retention: Retention,
    /// Anti-entropy period: every period one exchange with the least recently synced
    /// neighbour, and one at once with every new neighbour. `None` turns it off.
    pub anti_entropy_interval: Option<Duration>,
    /// Most heads in one digest piece (a version vector larger than this is sent in
    /// pieces over successive exchanges).
    pub anti_entropy_max_heads: usize,
    /// Messages received more recently than this are not repaired (they may still be
    /// on their way through the tree: repairing them would only make duplicates).
    pub anti_entropy_grace: Duration,
    /// Most messages in one repair.
    pub anti_entropy_max_messages: usize,
    /// Most payload bytes in one repair (beyond its first message).
    pub anti_entropy_max_bytes: usize,
    /// Whether a node that joins for the first time is repaired with the history kept
    /// within retention (`true`), or gets messages from its join on (`false`, the
    /// default). A node restarted from a data dir always catches up.
    pub replay_history: bool,
    /// Delivery order. Default [`Ordering::None`].
    pub ordering: Ordering,
    /// With [`Ordering::PerOrigin`]: how long a message is held back waiting for an
    /// earlier one before the gap is given up.
    pub ordering_max_wait: Duration,
    /// With [`Ordering::PerOrigin`]: most messages held back at once; beyond it the
    /// oldest gap is given up.
    pub ordering_max_held: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

/// [`Config::max_trees`] default: per-origin trees kept. Each costs a few dozen bytes per
/// neighbour; 4,096 active origins per node is ≈ 1 MiB at 5 neighbours, and covers every
/// cluster the simulator runs with random senders (eviction is counted, never silent).
pub const MAX_TREES: usize = 4096;
/// [`Config::graft_timeout_1`] LAN default. Plumtree §3.6 gives no number; iroh-gossip
/// uses 80 ms; 40 ms measured too eager under saturation (RMR 0.6–1.2, docs/performance.md).
pub const GRAFT_TIMEOUT_1: Duration = Duration::from_millis(80);
/// [`Config::graft_timeout_max`] LAN default: half the anti-entropy grace
/// ([`ANTI_ENTROPY_GRACE`], 1 s), so a message the tree is merely late with is grafted
/// before anti-entropy counts it missing; RFC 6298 has no ceiling this low because TCP has
/// no second repair path.
pub const GRAFT_TIMEOUT_MAX: Duration = Duration::from_millis(500);
/// [`Config::graft_timeout_2`] LAN default: "about one round trip" (Plumtree §3.6) as a
/// floor; iroh-gossip uses 40 ms.
pub const GRAFT_TIMEOUT_2: Duration = Duration::from_millis(40);
/// [`Config::ihave_batch_window`] LAN default: iroh-gossip batches IHaves for 5 ms.
pub const IHAVE_BATCH_WINDOW: Duration = Duration::from_millis(5);
/// [`Config::ihave_batch_max`] default: 256 announcements of ≈ 80 bytes make a ≈ 20 KiB
/// frame, under the 32 KiB QUIC stream window the node opens per peer.
pub const IHAVE_BATCH_MAX: usize = 256;
/// [`Config::optimization_threshold`] default: Plumtree §4 uses 3 rounds for one sender
/// and 7 for many; plumcast's default has many senders.
pub const OPTIMIZATION_THRESHOLD: u32 = 7;
/// [`Config::cache_max_messages`] default: 30 s ([`CACHE_MAX_AGE`]) of a cluster-wide
/// rate of ≈ 550 msg/s, the rate at which the 2-core benchmark machine keeps 50 nodes busy.
pub const CACHE_MAX_MESSAGES: usize = 16_384;
/// [`Config::cache_max_bytes`] default: 64 MiB bounds the cache at 16,384 payloads of
/// 4 KiB; larger payloads shorten what is kept (evictions are counted).
pub const CACHE_MAX_BYTES: usize = 64 << 20;
/// [`Config::cache_max_age`] default: iroh-gossip keeps payloads 30 s.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(30);
/// [`Config::max_missing`] default: as many missing-message records as cached payloads.
pub const MAX_MISSING: usize = CACHE_MAX_MESSAGES;
/// [`Config::max_serves`] default: 3. An honest neighbour grafts a message from one
/// announcer at a time and moves on to the next one when a Graft goes unanswered, so it
/// asks one neighbour for one message once, twice when a repair races its own Graft; a
/// third covers a payload lost with its connection.
pub const MAX_SERVES: u32 = 3;
/// [`Config::dedupe_window`] default: out-of-order sequence numbers kept above one
/// origin's watermark; 65,536 is 2 minutes of one origin at 500 msg/s arriving out of order.
pub const DEDUPE_WINDOW: usize = 65_536;
/// [`Config::catch_up_window`] default: one membership round (the Shuffle period, 10 s),
/// within which a failed link is replaced.
pub const CATCH_UP_WINDOW: Duration = Duration::from_secs(10);
/// [`Config::catch_up_max`] default: 1,024 announcements (≈ 80 KiB) fit one frame well
/// under the 1 MiB frame limit.
pub const CATCH_UP_MAX: usize = 1024;
/// [`Config::max_incarnations`] default: 4 lives of one origin (a node restarted three
/// times within retention still has every life's messages recoverable).
pub const MAX_INCARNATIONS: usize = 4;
/// [`Config::anti_entropy_interval`] default: 5 s. At N = 20 with every node an origin a
/// digest of 20 heads is ≈ 0.9 KB with 32-byte ids: ≈ 0.2 KB/s per node sent, under 2% of
/// the payload bandwidth of 100 msg/s of 256 B cluster-wide (the overhead budget).
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(5);
/// [`Config::anti_entropy_max_heads`] default: 128 heads, ≈ 5.6 KB with 32-byte ids,
/// under Corrosion's 8 KiB sync messages; 10,000 origins take 79 exchanges to cover.
pub const ANTI_ENTROPY_MAX_HEADS: usize = 128;
/// [`Config::anti_entropy_grace`] default: 1 s, above the LAN and WAN Graft timers and
/// the tree's own delay (LDH × link latency: ≈ 10 hops × 10 ms in the simulator). Measured:
/// without it 3,877 needless repairs in 120 s at N = 20 (`plumcast sim --anti-entropy-cost`).
pub const ANTI_ENTROPY_GRACE: Duration = Duration::from_secs(1);
/// [`Config::anti_entropy_max_messages`] default: 1,024 messages per repair (with the
/// 256 digests a neighbour may send per interval: ≈ 52,000 messages/s of catch-up from
/// one neighbour, sustained; measured 164–207 k/s for a 50,000-message burst over
/// loopback into memory and 75–77 k/s into a data dir, `plumcast bench --catch-up` and
/// `--store`).
pub const ANTI_ENTROPY_MAX_MESSAGES: usize = 1024;
/// [`Config::anti_entropy_max_bytes`] default: 512 KiB per repair, half the 1 MiB frame
/// limit.
pub const ANTI_ENTROPY_MAX_BYTES: usize = 512 << 10;
/// [`Config::ordering_max_wait`] default: 60 s, twelve anti-entropy intervals: a gap that
/// neither the tree, a Graft nor twelve exchanges filled is taken as lost.
pub const ORDERING_MAX_WAIT: Duration = Duration::from_secs(60);
/// [`Config::ordering_max_held`] default: as many as the payload cache holds.
pub const ORDERING_MAX_HELD: usize = CACHE_MAX_MESSAGES;
/// [`Config::wan`]'s timer 1: iroh-gossip's 80 ms scaled to ≈ 100 ms round trips.
pub const WAN_GRAFT_TIMEOUT_1: Duration = Duration::from_millis(250);
/// [`Config::wan`]'s timer 1 ceiling: three timer 1s, under the 1 s anti-entropy grace.
pub const WAN_GRAFT_TIMEOUT_MAX: Duration = Duration::from_millis(750);
/// [`Config::wan`]'s timer 2: a bit over one 100 ms round trip (Plumtree §3.6).
pub const WAN_GRAFT_TIMEOUT_2: Duration = Duration::from_millis(150);
/// [`Config::wan`]'s IHave batching window: fewer, larger frames where a round trip is long.
pub const WAN_IHAVE_BATCH_WINDOW: Duration = Duration::from_millis(20);

impl Config {
    /// LAN / local preset (see each field).
    pub fn lan() -> Self {
        Self {
            mode: Mode::Plumtree,
            tree: Tree::PerOrigin,
            max_trees: MAX_TREES,
            graft_timeout_1: GRAFT_TIMEOUT_1,
            graft_timeout_max: GRAFT_TIMEOUT_MAX,
            graft_timeout_2: GRAFT_TIMEOUT_2,
            ihave_batch_window: IHAVE_BATCH_WINDOW,
            ihave_batch_max: IHAVE_BATCH_MAX,
            optimization_threshold: Some(OPTIMIZATION_THRESHOLD),
            cache_max_messages: CACHE_MAX_MESSAGES,
            cache_max_bytes: CACHE_MAX_BYTES,
            cache_max_age: CACHE_MAX_AGE,
            max_missing: MAX_MISSING,
            max_serves: MAX_SERVES,
            dedupe_window: DEDUPE_WINDOW,
            deliver_own: false,
            catch_up_window: CATCH_UP_WINDOW,
            catch_up_max: CATCH_UP_MAX,
            max_incarnations: MAX_INCARNATIONS,
            retention: Retention::default(),
            anti_entropy_interval: Some(ANTI_ENTROPY_INTERVAL),
            anti_entropy_max_heads: ANTI_ENTROPY_MAX_HEADS,
            anti_entropy_grace: ANTI_ENTROPY_GRACE,
            anti_entropy_max_messages: ANTI_ENTROPY_MAX_MESSAGES,
            anti_entropy_max_bytes: ANTI_ENTROPY_MAX_BYTES,
            replay_history: false,
            ordering: Ordering::None,
            ordering_max_wait: ORDERING_MAX_WAIT,
            ordering_max_held: ORDERING_MAX_HELD,
        }
    }

    /// WAN preset: graft timers for ~100 ms round trips (iroh-gossip's 80/40 ms scaled
    /// up by the round trip: 250 / 150 ms), IHaves batched for 20 ms.
    pub fn wan() -> Self {
        Self {
            graft_timeout_1: WAN_GRAFT_TIMEOUT_1,
            graft_timeout_max: WAN_GRAFT_TIMEOUT_MAX,
            graft_timeout_2: WAN_GRAFT_TIMEOUT_2,
            ihave_batch_window: WAN_IHAVE_BATCH_WINDOW,
            ..Self::lan()
        }
    }
}
