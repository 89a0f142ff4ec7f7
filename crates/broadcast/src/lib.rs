//! Plumtree (epidemic broadcast trees) as a sans-IO state machine.
//!
//! Implements *Epidemic Broadcast Trees* (Leitão, Pereira, Rodrigues, SRDS 2007): payloads
//! travel by **eager push** along a spanning tree, the other neighbours get **lazy push**
//! IHave announcements (batched), a node that saw an IHave but not the payload sends
//! **Graft** after timer 1 (then to the next announcer after timer 2), and a duplicate
//! payload answers **Prune**, which turns that link lazy. Tree optimisation (§3.8) grafts a
//! lazy link whose announced round beats the tree's by at least a threshold.
//!
//! With one tree per origin ([`Tree::PerOrigin`], the default) two rules go beyond the
//! shared tree: the optimisation also weighs the IHaves that came *before* the payload
//! (the paper's Algorithm 2), and when a tree parent fails ([`Input::NeighborDown`]) the
//! lazy neighbour that announced that origin's last message at the lowest round is grafted
//! at once ([`Stats::parent_repairs`]), instead of after the next IHave and timer 1.
//!
//! The state knows nothing of membership: the host feeds [`Input::NeighborUp`] and
//! [`Input::NeighborDown`]. Dedupe is exact: each origin has a contiguous watermark of
//! sequence numbers plus a bounded window above it (see [`Envelope`]).
//!
//! # Driving contract
//!
//! Call [`State::handle`] (or [`State::broadcast`]) with a monotonic `now`; perform the
//! returned [`Output`]s in order; deliver each timer back at or after its deadline (stale
//! timers do nothing). Same inputs, same outputs: sets are ordered.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// What a peer or origin id must be (the node uses `NodeId`, the simulator `u32`). Its
/// postcard encoding goes into every [`MessageId`], so its `Serialize` must not fail (a
/// derived or array impl cannot with postcard; tested for `u32` and 32-byte keys).
pub trait PeerId: Clone + Eq + Ord + Hash + Debug + Serialize {}
impl<T: Clone + Eq + Ord + Hash + Debug + Serialize> PeerId for T {}

/// Identifier of one broadcast: BLAKE3 over the postcard encoding of
/// `(origin, incarnation, seq)` followed by the payload. Never the payload hash alone:
/// two equal payloads are two messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 32]);

impl MessageId {
    /// Lower-case hex of all 32 bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A postcard output that feeds a BLAKE3 hasher through a small buffer: it never runs out
/// of room, so encoding into it cannot fail for lack of space (one `update` for a header
/// of up to 64 bytes).
struct HashOutput<'a> {
    hasher: &'a mut blake3::Hasher,
    buf: [u8; 64],
    len: usize,
}

impl HashOutput<'_> {
    fn flush(&mut self) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl postcard::ser_flavors::Flavor for HashOutput<'_> {
    type Output = ();

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        if self.len == self.buf.len() {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
        Ok(())
    }

    fn try_extend(&mut self, b: &[u8]) -> postcard::Result<()> {
        if self.len + b.len() > self.buf.len() {
            self.flush();
            self.hasher.update(b);
        } else {
            self.buf[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<()> {
        self.flush();
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One broadcast as it travels: who sent it, in which life (`incarnation`, the origin's
/// start time in ms), its per-incarnation sequence number (from 1), and the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// The node that broadcast it.
    pub origin: P,
    /// The origin's incarnation (start time in ms since the Unix epoch in the node).
    pub incarnation: u64,
    /// Sequence number within the incarnation, starting at 1.
    pub seq: u64,
    /// Application bytes.
    pub payload: Bytes,
}

impl<P: PeerId> Envelope<P> {
    /// The [`MessageId`] of this envelope (recomputed on receipt, never trusted).
    pub fn id(&self) -> MessageId {
        let mut h = blake3::Hasher::new();
        let head = (&self.origin, self.incarnation, self.seq);
        let out = HashOutput { hasher: &mut h, buf: [0; 64], len: 0 };
        // The output never fails and integers never do; only a `PeerId` whose `Serialize`
        // returns an error could, which the trait rules out (see `PeerId`).
        postcard::serialize_with_flavor::<_, _, ()>(&head, out).expect("PeerId serialization is infallible");
        h.update(&self.payload);
        MessageId(*h.finalize().as_bytes())
    }
}

/// A lazy-push announcement: enough to decide exactly whether the payload is missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement<P> {
    /// The message.
    pub id: MessageId,
    /// Its origin.
    pub origin: P,
    /// Its origin's incarnation.
    pub incarnation: u64,
    /// Its sequence number.
    pub seq: u64,
    /// The round at which the announcer would forward it (the receiver's hop count − 1).
    pub round: u32,
}

/// A Plumtree wire message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<P> {
    /// Eager push of a payload (paper Alg. 1, `GOSSIP`). `round` is 0 from the origin.
    Gossip {
        /// Hops travelled minus one.
        round: u32,
        /// The broadcast.
        envelope: Envelope<P>,
    },
    /// Lazy push: a batch of announcements (paper Alg. 1, `IHAVE`).
    IHave(Vec<Announcement<P>>),
    /// Make the link eager again and, with an id, send that payload (paper Alg. 2).
    Graft {
        /// The missing message, or `None` for a tree-optimisation graft.
        id: Option<MessageId>,
        /// Whose tree the link joins ([`Tree::PerOrigin`]; ignored with a shared tree).
        origin: P,
    },
    /// Make the link lazy (paper Alg. 1, `PRUNE`).
    Prune {
        /// Whose tree the link leaves ([`Tree::PerOrigin`]; ignored with a shared tree).
        origin: P,
    },
}

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
pub struct Config {
    /// Spreading mode. Default [`Mode::Plumtree`].
    pub mode: Mode,
    /// One shared tree (the paper) or one tree per origin. Default: per origin, which
    /// measured faster for random senders (docs/performance.md).
    pub tree: Tree,
    /// Most per-origin trees kept; the least recently used is forgotten beyond it (its
    /// links turn eager again; counted in [`Stats::trees_evicted`]).
    pub max_trees: usize,
    /// Timer 1: wait after the first IHave for a missing payload before grafting. The
    /// paper gives no number (§3.6); iroh-gossip uses 80 ms. LAN default 80 ms.
    pub graft_timeout_1: Duration,
    /// Timer 2: wait for a grafted payload before grafting the next announcer ("about one
    /// round trip", paper §3.6). A floor: the wait is the larger of this and twice the
    /// smoothed RTT to the grafted peer when the node reports it ([`State::set_rtt`]; the
    /// QUIC node feeds quinn's estimate every 500 ms), so slow links are not given up on
    /// early. LAN default 40 ms.
    pub graft_timeout_2: Duration,
    /// IHave batching window; 0 sends each announcement at once. iroh-gossip: 5 ms.
    pub ihave_batch_window: Duration,
    /// Most announcements in one IHave frame.
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
    /// announcements are dropped and counted in [`Stats::missing_dropped`].
    pub max_missing: usize,
    /// Most out-of-order sequence numbers kept above one origin's watermark before the
    /// watermark is forced forward (counted in [`Stats::dedupe_window_overflows`]).
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
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

impl Config {
    /// LAN / local preset (see each field).
    pub fn lan() -> Self {
        Self {
            mode: Mode::Plumtree,
            tree: Tree::PerOrigin,
            max_trees: 4096,
            graft_timeout_1: Duration::from_millis(80),
            graft_timeout_2: Duration::from_millis(40),
            ihave_batch_window: Duration::from_millis(5),
            ihave_batch_max: 256,
            optimization_threshold: Some(7),
            cache_max_messages: 16_384,
            cache_max_bytes: 64 << 20,
            cache_max_age: Duration::from_secs(30),
            max_missing: 16_384,
            dedupe_window: 65_536,
            deliver_own: false,
            catch_up_window: Duration::from_secs(10),
            catch_up_max: 1024,
        }
    }

    /// WAN preset: graft timers for ~100 ms round trips (iroh-gossip's 80/40 ms scaled up).
    pub fn wan() -> Self {
        Self {
            graft_timeout_1: Duration::from_millis(250),
            graft_timeout_2: Duration::from_millis(150),
            ihave_batch_window: Duration::from_millis(20),
            ..Self::lan()
        }
    }
}

/// Inputs to [`State::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<P> {
    /// A message from a neighbour.
    Message {
        /// Sender.
        from: P,
        /// The message.
        message: Message<P>,
    },
    /// A timer fired.
    Timer(Timer),
    /// Membership added an active neighbour: it starts eager.
    NeighborUp(P),
    /// Membership removed an active neighbour.
    NeighborDown(P),
}

/// Timers requested by the state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Graft for a missing message; stale when `attempt` is not current.
    Graft {
        /// The missing message.
        id: MessageId,
        /// Which attempt this timer belongs to.
        attempt: u32,
    },
    /// Send the batched IHave announcements.
    IHaveFlush,
}

/// A message delivered to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<P> {
    /// Its id.
    pub id: MessageId,
    /// The broadcast.
    pub envelope: Envelope<P>,
    /// Hop count: round + 1 (1 when received straight from the origin, 0 for our own).
    pub hops: u32,
    /// The neighbour it came from (`None` for our own).
    pub from: Option<P>,
}

/// Outputs of [`State::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<P> {
    /// Send to a neighbour.
    Send {
        /// Destination.
        to: P,
        /// The message.
        message: Message<P>,
    },
    /// Fire `timer` at or after `at`.
    Timer {
        /// Deadline.
        at: Instant,
        /// The timer.
        timer: Timer,
    },
    /// Deliver to the application (exactly once per message).
    Deliver(Delivery<P>),
}

/// Counters. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages broadcast here.
    pub broadcasts: u64,
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Gossip (payload) messages sent.
    pub gossip_sent: u64,
    /// Gossip messages received.
    pub gossip_received: u64,
    /// Of those, duplicates (each answered with Prune).
    pub duplicates: u64,
    /// Announcements sent (inside IHave batches).
    pub announcements_sent: u64,
    /// IHave frames sent.
    pub ihave_sent: u64,
    /// Announcements received.
    pub announcements_received: u64,
    /// Grafts sent (including optimisation grafts).
    pub grafts_sent: u64,
    /// Grafts received.
    pub grafts_received: u64,
    /// Grafts for a message no longer cached.
    pub graft_misses: u64,
    /// Prunes sent.
    pub prunes_sent: u64,
    /// Prunes received.
    pub prunes_received: u64,
    /// Tree optimisations performed (§3.8).
    pub optimizations: u64,
    /// Tree parents replaced at once when they failed ([`Tree::PerOrigin`]): the lazy
    /// neighbour with the lowest announced round was grafted without waiting for a message.
    pub parent_repairs: u64,
    /// Payloads evicted from the cache.
    pub cache_evictions: u64,
    /// Announcements dropped because `max_missing` records were in use.
    pub missing_dropped: u64,
    /// Missing-message records that expired unanswered.
    pub missing_expired: u64,
    /// Messages from an older incarnation of their origin, dropped.
    pub stale_incarnation: u64,
    /// Times an origin's dedupe window overflowed and its watermark was forced forward.
    pub dedupe_window_overflows: u64,
    /// Per-origin trees forgotten because `max_trees` were in use.
    pub trees_evicted: u64,
    /// Catch-up announcements sent to new neighbours.
    pub catch_ups: u64,
    /// Grafts without payload sent to a pruned peer whose payload arrived first (the
    /// Prune/payload race, see `on_gossip`).
    pub regrafts: u64,
}

/// Exact dedupe state of one origin: every seq ≤ `watermark` was seen, plus those in
/// `above` (boxed: absent in the common in-order case, keeping the entry at 24 bytes).
#[derive(Clone, Debug)]
struct OriginSeen {
    incarnation: u64,
    watermark: u64,
    // Boxed on purpose: `Option<Box<_>>` is 8 bytes where a `BTreeSet` is 24, and one
    // entry exists per origin per node (10,000² entries in a 10,000-node simulation).
    #[allow(clippy::box_collection)]
    above: Option<Box<BTreeSet<u64>>>,
}

#[derive(Clone, Debug)]
struct Cached<P> {
    envelope: Envelope<P>,
    /// The round we forward with (0 for our own messages).
    send_round: u32,
    parent: Option<P>,
}

#[derive(Clone, Debug)]
struct Missing<P> {
    origin: P,
    since: Instant,
    announcers: VecDeque<P>,
    /// The announcer with the lowest round so far (first wins ties), for the
    /// optimisation on arrival (paper §3.8, Algorithm 2).
    best: Option<(P, u32)>,
    attempt: u32,
    armed: bool,
}

/// One origin's tree at this node ([`Tree::PerOrigin`]); exists once a link is lazy in it.
#[derive(Clone)]
struct OriginTree<P> {
    /// Neighbours on lazy push for this origin.
    lazy: Vec<P>,
    /// Tree clock of the last use, for least-recently-used eviction.
    used: u64,
    /// The neighbour that delivered this origin's last message first (tree parent).
    parent: Option<P>,
    /// The round each lazy neighbour announced in its last IHave for this origin; at most
    /// one entry per neighbour.
    announced: Vec<(P, u32)>,
}

/// The Plumtree state of one node.
#[derive(Clone)]
pub struct State<P> {
    me: P,
    incarnation: u64,
    next_seq: u64,
    config: Config,
    neighbors: BTreeSet<P>,
    /// The shared tree's lazy links ([`Tree::Shared`]).
    shared_lazy: BTreeSet<P>,
    /// Per-origin lazy links and a last-use stamp ([`Tree::PerOrigin`]). Ordered: parent
    /// repair walks it on NeighborDown and emits Grafts in its order.
    trees: BTreeMap<P, OriginTree<P>>,
    tree_clock: u64,
    seen: HashMap<P, OriginSeen>,
    /// Keys are ids we computed ourselves, so a fast non-keyed hash is safe here; maps
    /// keyed by peer-chosen values (origins, announced ids) keep SipHash.
    cache: FxHashMap<MessageId, Cached<P>>,
    cache_order: VecDeque<(MessageId, Instant)>,
    cache_bytes: usize,
    missing: HashMap<MessageId, Missing<P>>,
    missing_order: VecDeque<(MessageId, Instant)>,
    ihave_queue: BTreeMap<P, Vec<Announcement<P>>>,
    /// Smoothed round-trip time per neighbour, as reported by the transport.
    rtt: BTreeMap<P, Duration>,
    ihave_armed: bool,
    next_expiry: Option<Instant>,
    stats: Stats,
    out: Vec<Output<P>>,
}

impl<P: PeerId> State<P> {
    /// A node `me` in life `incarnation` (the node passes its start time in ms).
    pub fn new(me: P, incarnation: u64, config: Config) -> Self {
        Self {
            me,
            incarnation,
            next_seq: 1,
            config,
            neighbors: BTreeSet::new(),
            shared_lazy: BTreeSet::new(),
            trees: BTreeMap::new(),
            tree_clock: 0,
            seen: HashMap::default(),
            cache: FxHashMap::default(),
            cache_order: VecDeque::new(),
            cache_bytes: 0,
            missing: HashMap::default(),
            missing_order: VecDeque::new(),
            ihave_queue: BTreeMap::new(),
            rtt: BTreeMap::new(),
            ihave_armed: false,
            next_expiry: None,
            stats: Stats::default(),
            out: Vec::new(),
        }
    }

    /// Neighbours on the tree of `origin` (payloads from it go here); with a shared tree
    /// the origin does not matter.
    pub fn eager_peers_for(&self, origin: &P) -> BTreeSet<P> {
        self.neighbors.iter().filter(|p| !self.is_lazy(origin, p)).cloned().collect()
    }

    /// Neighbours off the tree of `origin` (announcements go here).
    pub fn lazy_peers_for(&self, origin: &P) -> BTreeSet<P> {
        self.neighbors.iter().filter(|p| self.is_lazy(origin, p)).cloned().collect()
    }

    /// Eager neighbours of our own broadcasts' tree (of the shared tree).
    pub fn eager_peers(&self) -> BTreeSet<P> {
        self.eager_peers_for(&self.me)
    }

    /// Lazy neighbours of our own broadcasts' tree (of the shared tree).
    pub fn lazy_peers(&self) -> BTreeSet<P> {
        self.lazy_peers_for(&self.me)
    }

    /// Neighbours (eager or lazy).
    pub fn neighbors(&self) -> &BTreeSet<P> {
        &self.neighbors
    }

    /// Per-origin trees held.
    pub fn trees_len(&self) -> usize {
        self.trees.len()
    }

    fn is_lazy(&self, origin: &P, p: &P) -> bool {
        match self.config.tree {
            Tree::Shared => self.shared_lazy.contains(p),
            Tree::PerOrigin => self.trees.get(origin).is_some_and(|t| t.lazy.contains(p)),
        }
    }

    /// Move `p` off the tree of `origin`.
    fn set_lazy(&mut self, origin: &P, p: &P) {
        if self.config.mode != Mode::Plumtree || !self.neighbors.contains(p) {
            return;
        }
        match self.config.tree {
            Tree::Shared => {
                self.shared_lazy.insert(p.clone());
            }
            Tree::PerOrigin => {
                self.tree_clock += 1;
                let clock = self.tree_clock;
                if !self.trees.contains_key(origin) && self.trees.len() >= self.config.max_trees {
                    // Forget the least recently used tree (its links turn eager again).
                    if let Some(old) = self.trees.iter().min_by_key(|(_, t)| t.used).map(|(k, _)| k.clone()) {
                        self.trees.remove(&old);
                        self.stats.trees_evicted += 1;
                    }
                }
                let t = self.trees.entry(origin.clone()).or_insert_with(|| OriginTree {
                    lazy: Vec::new(),
                    used: clock,
                    parent: None,
                    announced: Vec::new(),
                });
                t.used = clock;
                if !t.lazy.contains(p) {
                    t.lazy.push(p.clone());
                }
            }
        }
    }

    /// Put `p` on the tree of `origin`.
    fn set_eager(&mut self, origin: &P, p: &P) {
        match self.config.tree {
            Tree::Shared => {
                self.shared_lazy.remove(p);
            }
            Tree::PerOrigin => {
                if let Some(t) = self.trees.get_mut(origin) {
                    t.lazy.retain(|q| q != p);
                }
            }
        }
    }

    /// The transport's smoothed round-trip estimate to neighbour `peer` (ignored for
    /// non-neighbours; forgotten on NeighborDown). Sets the Graft retry wait
    /// ([`Config::graft_timeout_2`]).
    pub fn set_rtt(&mut self, peer: P, rtt: Duration) {
        if self.neighbors.contains(&peer) {
            self.rtt.insert(peer, rtt);
        }
    }

    /// How long to wait for the payload after grafting `p` (paper §3.6: about one round
    /// trip; never less than [`Config::graft_timeout_2`]).
    fn graft_wait(&self, p: &P) -> Duration {
        let rtt = self.rtt.get(p).copied().unwrap_or_default();
        self.config.graft_timeout_2.max(rtt.saturating_mul(2))
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Payloads cached, and their bytes.
    pub fn cache_len(&self) -> (usize, usize) {
        (self.cache.len(), self.cache_bytes)
    }

    /// Missing-message records in use.
    pub fn missing_len(&self) -> usize {
        self.missing.len()
    }

    /// Switch between Plumtree and eager flooding (the simulator's baseline). Takes effect
    /// for the next message; the eager and lazy sets are kept.
    pub fn set_mode(&mut self, mode: Mode) {
        self.config.mode = mode;
    }

    /// Switch between one shared tree and per-origin trees. All links start eager again.
    pub fn set_tree(&mut self, tree: Tree) {
        self.config.tree = tree;
        self.shared_lazy.clear();
        self.trees.clear();
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Broadcast `payload`: eager push to the eager set, IHave to the lazy set (paper
    /// Alg. 1, `Broadcast`). Returns the new message's id and the outputs.
    pub fn broadcast(&mut self, now: Instant, payload: Bytes) -> (MessageId, std::vec::Drain<'_, Output<P>>) {
        self.expire(now);
        let envelope = Envelope { origin: self.me.clone(), incarnation: self.incarnation, seq: self.next_seq, payload };
        self.next_seq += 1;
        let id = envelope.id();
        self.stats.broadcasts += 1;
        self.mark_seen(&envelope);
        if self.config.deliver_own {
            self.stats.delivered += 1;
            self.out.push(Output::Deliver(Delivery { id, envelope: envelope.clone(), hops: 0, from: None }));
        }
        self.push(now, id, &envelope, 0, None);
        self.cache_insert(now, id, envelope, 0, None);
        (id, self.out.drain(..))
    }

    /// Process one input at `now`. Never panics on peer input.
    pub fn handle(&mut self, now: Instant, input: Input<P>) -> std::vec::Drain<'_, Output<P>> {
        self.expire(now);
        match input {
            Input::Message { from, message } => self.on_message(now, from, message),
            Input::Timer(Timer::Graft { id, attempt }) => self.on_graft_timer(now, id, attempt),
            Input::Timer(Timer::IHaveFlush) => {
                self.ihave_armed = false;
                self.flush_ihave();
            }
            Input::NeighborUp(p) => {
                if p != self.me {
                    // A new neighbour starts eager in every tree.
                    self.shared_lazy.remove(&p);
                    for t in self.trees.values_mut() {
                        t.lazy.retain(|q| q != &p);
                    }
                    self.neighbors.insert(p.clone());
                    self.catch_up(now, p);
                }
            }
            Input::NeighborDown(p) => {
                self.neighbors.remove(&p);
                self.shared_lazy.remove(&p);
                let mut repairs = Vec::new();
                for (origin, t) in &mut self.trees {
                    t.lazy.retain(|q| q != &p);
                    t.announced.retain(|(q, _)| q != &p);
                    if t.parent.take_if(|q| q == &p).is_some() {
                        // The shallowest announcer. One deeper than we were may sit in
                        // our own subtree; grafting it closes a cycle that no message
                        // enters, which costs what the paper's repair costs anyway (the
                        // next message's IHaves and timer 1 graft a real parent) plus one
                        // duplicate, so it is not excluded: excluding rounds deeper than
                        // ours measured worse (churn, one sender: RMR 0.074 against 0.067).
                        let best = t.announced.iter().filter(|(q, _)| t.lazy.contains(q)).min_by_key(|(_, r)| *r);
                        if let Some((q, _)) = best {
                            repairs.push((origin.clone(), q.clone()));
                        }
                    }
                }
                for (origin, q) in repairs {
                    // The tree parent of `origin` failed: graft at once the lazy neighbour
                    // that announced this origin's messages at the lowest round, so the
                    // next message need not wait for a Graft timer (a departure from the
                    // paper, where the repair waits for the next IHave and timer 1).
                    self.stats.parent_repairs += 1;
                    self.stats.grafts_sent += 1;
                    self.set_eager(&origin, &q);
                    if let Some(t) = self.trees.get_mut(&origin) {
                        t.parent = Some(q.clone());
                    }
                    self.out.push(Output::Send { to: q, message: Message::Graft { id: None, origin } });
                }
                self.ihave_queue.remove(&p);
                self.rtt.remove(&p);
                for m in self.missing.values_mut() {
                    m.announcers.retain(|a| a != &p);
                    if m.best.as_ref().is_some_and(|(b, _)| b == &p) {
                        m.best = None;
                    }
                }
            }
        }
        self.out.drain(..)
    }

    fn on_message(&mut self, now: Instant, from: P, message: Message<P>) {
        if !self.neighbors.contains(&from) {
            // Not a neighbour (yet, or any more): still take payloads and answer grafts,
            // but do not let it shape the tree.
            if let Message::Gossip { round, envelope } = message {
                self.on_gossip(now, None, from, round, envelope);
            }
            return;
        }
        match message {
            Message::Gossip { round, envelope } => self.on_gossip(now, Some(()), from, round, envelope),
            Message::IHave(anns) => self.on_ihave(now, from, anns),
            Message::Graft { id, origin } => {
                self.stats.grafts_received += 1;
                self.set_eager(&origin, &from);
                if let Some(id) = id {
                    match self.cache.get(&id) {
                        Some(c) => {
                            let message = Message::Gossip { round: c.send_round, envelope: c.envelope.clone() };
                            self.stats.gossip_sent += 1;
                            self.out.push(Output::Send { to: from, message });
                        }
                        None => self.stats.graft_misses += 1,
                    }
                }
            }
            Message::Prune { origin } => {
                self.stats.prunes_received += 1;
                self.set_lazy(&origin, &from);
            }
        }
    }

    fn on_gossip(&mut self, now: Instant, neighbor: Option<()>, from: P, round: u32, envelope: Envelope<P>) {
        self.stats.gossip_received += 1;
        let id = envelope.id();
        match self.check_seen(&envelope) {
            Seen::Stale => {
                self.stats.stale_incarnation += 1;
                return;
            }
            Seen::Yes => {
                self.stats.duplicates += 1;
                if self.config.mode == Mode::Plumtree && neighbor.is_some() {
                    self.set_lazy(&envelope.origin, &from);
                    self.stats.prunes_sent += 1;
                    self.out.push(Output::Send { to: from, message: Message::Prune { origin: envelope.origin } });
                }
                return;
            }
            Seen::No => {}
        }
        self.mark_seen(&envelope);
        let missing = self.missing.remove(&id);
        self.stats.delivered += 1;
        if neighbor.is_some() {
            if self.config.mode == Mode::Plumtree && self.is_lazy(&envelope.origin, &from) {
                // A payload from a peer we pruned, sent before our Prune reached it: it
                // becomes our parent for this message, but its side of the link is lazy
                // by now. Without this Graft (no payload asked) a duplicate from our old
                // parent would make us prune that one too, and no one would push to us
                // any more: every later message would wait for a Graft timer.
                self.stats.regrafts += 1;
                self.out.push(Output::Send {
                    to: from.clone(),
                    message: Message::Graft { id: None, origin: envelope.origin.clone() },
                });
            }
            self.set_eager(&envelope.origin, &from);
            if let Some(t) = self.trees.get_mut(&envelope.origin) {
                t.parent = Some(from.clone());
            }
        }
        self.out.push(Output::Deliver(Delivery {
            id,
            envelope: envelope.clone(),
            hops: round.saturating_add(1),
            from: Some(from.clone()),
        }));
        let send_round = round.saturating_add(1);
        self.push(now, id, &envelope, send_round, Some(&from));
        // Paper §3.8 (Algorithm 2): an IHave that came before the payload and announced it
        // `threshold` rounds earlier than the tree delivered it. Only with one tree per
        // origin: on a shared tree the rounds of one origin say nothing about the next
        // origin's, and the swaps thrashed (docs/performance.md).
        let swap = match (neighbor, self.config.tree, missing.and_then(|m| m.best)) {
            (Some(()), Tree::PerOrigin, Some(best)) => Some((envelope.origin.clone(), best)),
            _ => None,
        };
        self.cache_insert(now, id, envelope, send_round, Some(from));
        if let Some((origin, (announcer, announced))) = swap {
            self.maybe_swap_parent(id, &origin, round, announcer, announced);
        }
    }

    fn on_ihave(&mut self, now: Instant, from: P, anns: Vec<Announcement<P>>) {
        for a in anns {
            self.stats.announcements_received += 1;
            if let Some(t) = self.trees.get_mut(&a.origin) {
                match t.announced.iter_mut().find(|(q, _)| q == &from) {
                    Some(e) => e.1 = a.round,
                    None => t.announced.push((from.clone(), a.round)),
                }
            }
            let probe =
                Envelope { origin: a.origin.clone(), incarnation: a.incarnation, seq: a.seq, payload: Bytes::new() };
            match self.check_seen(&probe) {
                Seen::Stale => continue,
                Seen::Yes => {
                    self.maybe_optimize(&from, &a);
                    continue;
                }
                Seen::No => {}
            }
            if let Some(m) = self.missing.get_mut(&a.id) {
                if !m.announcers.contains(&from) {
                    m.announcers.push_back(from.clone());
                }
                if m.best.as_ref().is_none_or(|(_, r)| a.round < *r) {
                    m.best = Some((from.clone(), a.round));
                }
                if !m.armed {
                    m.armed = true;
                    let timer = Timer::Graft { id: a.id, attempt: m.attempt };
                    self.out.push(Output::Timer { at: now + self.config.graft_timeout_2, timer });
                }
                continue;
            }
            if self.missing.len() >= self.config.max_missing {
                self.stats.missing_dropped += 1;
                continue;
            }
            self.missing.insert(
                a.id,
                Missing {
                    origin: a.origin.clone(),
                    since: now,
                    announcers: VecDeque::from([from.clone()]),
                    best: Some((from.clone(), a.round)),
                    attempt: 0,
                    armed: true,
                },
            );
            self.missing_order.push_back((a.id, now));
            self.out.push(Output::Timer {
                at: now + self.config.graft_timeout_1,
                timer: Timer::Graft { id: a.id, attempt: 0 },
            });
        }
    }

    /// Paper §3.8: a lazy link that announces a message `threshold` rounds earlier than
    /// the tree delivered it replaces the tree link it came through.
    fn maybe_optimize(&mut self, from: &P, a: &Announcement<P>) {
        let Some(received_round) = self.cache.get(&a.id).map(|c| c.send_round.saturating_sub(1)) else { return };
        self.maybe_swap_parent(a.id, &a.origin, received_round, from.clone(), a.round);
    }

    /// Make `announcer` (a lazy link that announced message `id` at round `announced`) the
    /// tree parent instead of the link that delivered it at round `received`, if the
    /// announcement is at least the threshold earlier: Graft (no payload) to the one,
    /// Prune to the other (paper §3.8).
    fn maybe_swap_parent(&mut self, id: MessageId, origin: &P, received: u32, announcer: P, announced: u32) {
        let Some(threshold) = self.config.optimization_threshold else { return };
        if self.config.mode != Mode::Plumtree || received < announced.saturating_add(threshold) {
            return;
        }
        let Some(c) = self.cache.get_mut(&id) else { return };
        let Some(parent) = c.parent.clone() else { return };
        if parent == announcer {
            return;
        }
        c.parent = Some(announcer.clone());
        c.send_round = announced.saturating_add(1);
        if let Some(t) = self.trees.get_mut(origin) {
            t.parent = Some(announcer.clone());
        }
        self.stats.optimizations += 1;
        self.stats.grafts_sent += 1;
        self.stats.prunes_sent += 1;
        self.set_eager(origin, &announcer);
        self.out.push(Output::Send { to: announcer, message: Message::Graft { id: None, origin: origin.clone() } });
        self.set_lazy(origin, &parent);
        self.out.push(Output::Send { to: parent, message: Message::Prune { origin: origin.clone() } });
    }

    fn on_graft_timer(&mut self, now: Instant, id: MessageId, attempt: u32) {
        let Some(m) = self.missing.get_mut(&id) else { return };
        if m.attempt != attempt || !m.armed {
            return;
        }
        match m.announcers.pop_front() {
            Some(p) => {
                m.attempt += 1;
                let origin = m.origin.clone();
                let timer = Timer::Graft { id, attempt: m.attempt };
                let wait = self.graft_wait(&p);
                self.out.push(Output::Timer { at: now + wait, timer });
                self.stats.grafts_sent += 1;
                self.set_eager(&origin, &p);
                self.out.push(Output::Send { to: p, message: Message::Graft { id: Some(id), origin } });
            }
            None => {
                m.armed = false;
                m.attempt += 1;
            }
        }
    }

    /// Eager push to the eager set (all neighbours when flooding), lazy push to the rest.
    fn push(&mut self, now: Instant, id: MessageId, envelope: &Envelope<P>, round: u32, except: Option<&P>) {
        let flood = self.config.mode == Mode::Flood;
        if let (Tree::PerOrigin, Some(t)) = (self.config.tree, self.trees.get_mut(&envelope.origin)) {
            self.tree_clock += 1;
            t.used = self.tree_clock;
        }
        let mut lazy = Vec::new();
        for p in &self.neighbors {
            if Some(p) == except {
                continue;
            }
            if !flood && self.is_lazy(&envelope.origin, p) {
                lazy.push(p.clone());
                continue;
            }
            self.stats.gossip_sent += 1;
            self.out
                .push(Output::Send { to: p.clone(), message: Message::Gossip { round, envelope: envelope.clone() } });
        }
        for p in lazy {
            let ann = Announcement {
                id,
                origin: envelope.origin.clone(),
                incarnation: envelope.incarnation,
                seq: envelope.seq,
                round,
            };
            let q = self.ihave_queue.entry(p).or_default();
            q.push(ann);
            if q.len() >= self.config.ihave_batch_max {
                // A full batch goes out at once.
                self.flush_ihave();
            }
        }
        if !self.ihave_queue.is_empty() {
            if self.config.ihave_batch_window.is_zero() {
                self.flush_ihave();
            } else if !self.ihave_armed {
                self.ihave_armed = true;
                self.out.push(Output::Timer { at: now + self.config.ihave_batch_window, timer: Timer::IHaveFlush });
            }
        }
    }

    /// Announce recently cached payloads to a new neighbour (newest first, bounded).
    fn catch_up(&mut self, now: Instant, p: P) {
        if self.config.catch_up_window.is_zero() || self.config.catch_up_max == 0 || self.config.mode == Mode::Flood {
            return;
        }
        let mut anns = Vec::new();
        for (id, at) in self.cache_order.iter().rev() {
            if now.saturating_duration_since(*at) > self.config.catch_up_window
                || anns.len() >= self.config.catch_up_max
            {
                break;
            }
            if let Some(c) = self.cache.get(id) {
                let e = &c.envelope;
                let ann = Announcement {
                    id: *id,
                    origin: e.origin.clone(),
                    incarnation: e.incarnation,
                    seq: e.seq,
                    round: c.send_round,
                };
                anns.push(ann);
            }
        }
        if !anns.is_empty() {
            self.stats.catch_ups += 1;
            self.stats.ihave_sent += 1;
            self.stats.announcements_sent += anns.len() as u64;
            self.out.push(Output::Send { to: p, message: Message::IHave(anns) });
        }
    }

    fn flush_ihave(&mut self) {
        for (p, anns) in std::mem::take(&mut self.ihave_queue) {
            if anns.is_empty() {
                continue;
            }
            self.stats.ihave_sent += 1;
            self.stats.announcements_sent += anns.len() as u64;
            self.out.push(Output::Send { to: p, message: Message::IHave(anns) });
        }
    }

    fn check_seen(&self, e: &Envelope<P>) -> Seen {
        match self.seen.get(&e.origin) {
            None => Seen::No,
            Some(s) if e.incarnation < s.incarnation => Seen::Stale,
            Some(s) if e.incarnation > s.incarnation => Seen::No,
            Some(s) => {
                if e.seq <= s.watermark || s.above.as_ref().is_some_and(|a| a.contains(&e.seq)) {
                    Seen::Yes
                } else {
                    Seen::No
                }
            }
        }
    }

    fn mark_seen(&mut self, e: &Envelope<P>) {
        let s = self.seen.entry(e.origin.clone()).or_insert(OriginSeen {
            incarnation: e.incarnation,
            watermark: 0,
            above: None,
        });
        if e.incarnation > s.incarnation {
            *s = OriginSeen { incarnation: e.incarnation, watermark: 0, above: None };
        }
        if e.seq <= s.watermark {
            return;
        }
        if e.seq == s.watermark + 1 && s.above.is_none() {
            // The common case: in order, nothing pending above.
            s.watermark += 1;
            return;
        }
        let above = s.above.get_or_insert_with(Default::default);
        above.insert(e.seq);
        while above.remove(&(s.watermark + 1)) {
            s.watermark += 1;
        }
        while above.len() > self.config.dedupe_window {
            // Bounded memory: give up on the oldest gap. Counted, never silent.
            if let Some(first) = above.pop_first() {
                s.watermark = first;
                self.stats.dedupe_window_overflows += 1;
            }
            while above.remove(&(s.watermark + 1)) {
                s.watermark += 1;
            }
        }
        if above.is_empty() {
            s.above = None;
        }
    }

    fn cache_insert(&mut self, now: Instant, id: MessageId, envelope: Envelope<P>, send_round: u32, parent: Option<P>) {
        self.cache_bytes += envelope.payload.len();
        if self.cache.insert(id, Cached { envelope, send_round, parent }).is_none() {
            self.cache_order.push_back((id, now));
        }
        while self.cache.len() > self.config.cache_max_messages || self.cache_bytes > self.config.cache_max_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((id, _)) = self.cache_order.pop_front() else { return false };
        if let Some(c) = self.cache.remove(&id) {
            self.cache_bytes -= c.envelope.payload.len();
            self.stats.cache_evictions += 1;
        }
        true
    }

    /// Drop cached payloads and missing records older than `cache_max_age`. Runs at most
    /// once per second of `now` (an entry lives at most 1 s past its age limit), so the
    /// per-input cost is one comparison.
    fn expire(&mut self, now: Instant) {
        if self.next_expiry.is_some_and(|t| now < t) {
            return;
        }
        self.next_expiry = Some(now + Duration::from_secs(1));
        let max = self.config.cache_max_age;
        while self.cache_order.front().is_some_and(|(_, t)| now.saturating_duration_since(*t) > max) {
            self.evict_oldest();
        }
        while let Some((id, t)) = self.missing_order.front().copied() {
            if now.saturating_duration_since(t) <= max {
                break;
            }
            self.missing_order.pop_front();
            if self.missing.get(&id).is_some_and(|m| m.since == t) {
                self.missing.remove(&id);
                self.stats.missing_expired += 1;
            }
        }
        // Records delivered early leave stale order entries; keep the queue bounded.
        if self.missing_order.len() > 2 * self.config.max_missing.max(1) {
            let missing = &self.missing;
            self.missing_order.retain(|(id, t)| missing.get(id).is_some_and(|m| m.since == *t));
        }
    }
}

enum Seen {
    No,
    Yes,
    Stale,
}

#[cfg(test)]
mod tests;
