//! The discrete-event engine: virtual time, links, crashes, partitions, and the real
//! `plumcast::proto::State` of every node.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use plumcast::proto::{self, broadcast, membership};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// The protocol state the simulator drives: the shipped code, with `u32` peers.
pub type NodeState = proto::State<u32, ChaCha8Rng>;

/// Per-link one-way latency.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Latency {
    /// The same delay on every message, ms.
    Static {
        /// Delay, ms.
        ms: f64,
    },
    /// Uniformly drawn per message between `min_ms` and `max_ms`.
    Uniform {
        /// Smallest delay, ms.
        min_ms: f64,
        /// Largest delay, ms.
        max_ms: f64,
    },
}

/// How a node learns that a connection is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// As TCP in PeerSim (the papers' setting): a send to a dead or unreachable peer fails
    /// at once, and the neighbours of a crashed node (or the two ends of a link cut by a
    /// partition) learn it at once, as a broken TCP connection tells both ends.
    Paper,
    /// As the shipped node: sends to a dead peer vanish silently; every node with the dead
    /// peer in its active view is told after the φ-accrual detection delay drawn from its
    /// configuration (mean interval + acceptable pause + a few σ, plus up to one heartbeat
    /// period of check granularity).
    Shipped,
}

impl Detector {
    /// `paper` or `shipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::Shipped => "shipped",
        }
    }
}

/// Simulator parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Protocol configuration of every node (see [`sim_protocol`]).
    pub protocol: proto::Config,
    /// Link latency.
    pub latency: Latency,
    /// Probability that a message is lost (0–1). The shipped node runs over QUIC, which
    /// retransmits; loss here models a lossy datagram network without retransmission.
    pub loss: f64,
    /// Failure-detection model.
    pub detector: Detector,
    /// Optional uplink bandwidth per node, bytes per ms: a node's sends queue behind each
    /// other (message size estimated from its payload plus 64 bytes of headers).
    pub uplink_bytes_per_ms: Option<f64>,
    /// Seed of the simulator's own RNG (latency, loss, choices); node RNGs derive from it.
    pub seed: u64,
    /// Payload size of simulated broadcasts, bytes.
    pub payload_size: usize,
}

/// The protocol configuration used in simulations: the LAN preset, with heartbeats
/// switched off (a period of 10⁶ s). Failure detection is modelled by [`Detector`]
/// instead: simulating 100 ms heartbeats on 50,000 links would dominate the event count.
pub fn sim_protocol() -> proto::Config {
    let mut c = proto::Config::lan();
    c.membership.heartbeat_interval = Duration::from_secs(1_000_000);
    // The papers' setting: one shared tree (scenarios switch per run mode).
    c.broadcast.tree = proto::Tree::Shared;
    // Broadcasts in scenarios are hundreds of ms apart, so a 5 ms batching window never
    // batches anything; sending IHave at once saves one timer event per node and message.
    c.broadcast.ihave_batch_window = Duration::ZERO;
    // Graft timers must outlast the tree's own delay (about LDH × link latency, 100 ms
    // and more at 10 ms per hop), or every lazy link that is a few hops shorter than the
    // tree triggers a Graft and a duplicate. The LAN values assume sub-ms links.
    c.broadcast.graft_timeout_1 = Duration::from_millis(200);
    c.broadcast.graft_timeout_2 = Duration::from_millis(50);
    // Anti-entropy and the message store are off by default, as in both papers; the
    // scenarios that measure them turn them on ([`sim_protocol_with_anti_entropy`]).
    // Keeping every message at every node would also cost 10,000 × broadcasts envelopes.
    c.broadcast.anti_entropy_interval = None;
    c.broadcast.retention.max_messages = 0;
    // Topology records are for the admin page; flooding them would cost every node a
    // record of every other per interval.
    c.topology = proto::topology::Config::off();
    c
}

/// [`sim_protocol`] with anti-entropy every `interval` and a store of `retention_messages`
/// messages per node.
pub fn sim_protocol_with_anti_entropy(interval: Duration, retention_messages: usize) -> proto::Config {
    let mut c = sim_protocol();
    c.broadcast.anti_entropy_interval = Some(interval);
    c.broadcast.retention.max_messages = retention_messages;
    c
}

impl SimConfig {
    /// Paper-like defaults: static 10 ms links, no loss, the paper detector.
    pub fn new(seed: u64) -> Self {
        Self {
            protocol: sim_protocol(),
            latency: Latency::Static { ms: 10.0 },
            loss: 0.0,
            detector: Detector::Paper,
            uplink_bytes_per_ms: None,
            seed,
            payload_size: 16,
        }
    }
}

#[derive(Clone)]
enum Ev {
    Deliver { from: u32, to: u32, to_inc: u32, msg: proto::Message<u32> },
    Timer { node: u32, inc: u32, timer: proto::Timer<u32> },
    Lost { node: u32, inc: u32, peer: u32 },
    Join { node: u32, inc: u32, contact: u32 },
}

impl Ev {
    /// The node the event happens at.
    fn node(&self) -> u32 {
        match self {
            Ev::Deliver { to, .. } => *to,
            Ev::Timer { node, .. } | Ev::Lost { node, .. } | Ev::Join { node, .. } => *node,
        }
    }
}

/// An event's place in the order of events: virtual time (µs), then a tie-break. One
/// queue breaks ties first in, first out: `a` counts every event scheduled, `b` is 0.
/// Lanes ([`Sim::set_lanes`]) break them by the node whose step made the event (`a`) and
/// how many events that node had made (`b`): no global counter, so lanes running on
/// their own threads make the same events in the same order, whatever their number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EventKey {
    at: u64,
    a: u64,
    b: u64,
}

/// Event storage: the heap orders small `(key, slot)` entries; the events themselves
/// stay put in a slab, so heap operations move 40 bytes instead of whole messages.
#[derive(Clone, Default)]
struct Slab {
    items: Vec<Option<Ev>>,
    free: Vec<u32>,
}

impl Slab {
    fn insert(&mut self, ev: Ev) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(ev);
                i
            }
            None => {
                self.items.push(Some(ev));
                (self.items.len() - 1) as u32
            }
        }
    }

    fn take(&mut self, i: u32) -> Option<Ev> {
        let ev = self.items.get_mut(i as usize)?.take();
        self.free.push(i);
        ev
    }
}

#[derive(Clone)]
struct Slot {
    state: Option<Box<NodeState>>,
    inc: u32,
    /// What a stopped node keeps, as a data dir would ([`Sim::stop`]).
    kept: Option<Kept>,
    /// Events this slot's steps made (the last part of their [`EventKey`]).
    made: u64,
    /// When the slot's uplink is free again, µs ([`SimConfig::uplink_bytes_per_ms`]).
    uplink_free: u64,
    /// The links' draws for this slot's sends (latency, loss) and its rejoin contact:
    /// one stream per slot, so the draws do not depend on the order lanes run in.
    net_rng: ChaCha8Rng,
}

/// A priority queue of events by [`EventKey`]: messages pushed in key order (most of
/// them: with a static latency a message sent now arrives after every message sent
/// before it) go to the back of a run, in O(1); timers and the rest to a binary heap.
/// Pops take the least key of the two, so the order is the one the heap alone gives.
#[derive(Clone, Default)]
struct EventQueue {
    run: VecDeque<(EventKey, u32)>,
    heap: BinaryHeap<Reverse<(EventKey, u32)>>,
}

impl EventQueue {
    /// Queue `ev` (kept in `slab`) under `key`.
    fn insert(&mut self, slab: &mut Slab, key: EventKey, ev: Ev) {
        let message = matches!(ev, Ev::Deliver { .. });
        let slot = slab.insert(ev);
        if message && self.run.back().is_none_or(|(last, _)| *last <= key) {
            self.run.push_back((key, slot));
        } else {
            self.heap.push(Reverse((key, slot)));
        }
    }

    /// Whether the least key is the run's (false: the heap's, or both are empty).
    fn run_first(&self) -> bool {
        match (self.run.front(), self.heap.peek()) {
            (Some(r), Some(Reverse(h))) => r.0 <= h.0,
            (run, _) => run.is_some(),
        }
    }

    fn peek(&self) -> Option<(EventKey, u32)> {
        if self.run_first() { self.run.front().copied() } else { self.heap.peek().map(|Reverse(e)| *e) }
    }

    fn pop(&mut self) -> Option<(EventKey, u32)> {
        if self.run_first() { self.run.pop_front() } else { self.heap.pop().map(|Reverse(e)| e) }
    }

    fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }
}

/// The events of the nodes `lo..hi`, in order, and what their steps count.
#[derive(Clone, Default)]
struct Lane {
    lo: u32,
    hi: u32,
    queue: EventQueue,
    slab: Slab,
    /// Events made for nodes of other lanes while this lane ran on its own.
    outbox: Vec<(EventKey, Ev)>,
    /// Counters and track updates while this lane ran on its own (merged after).
    counters: Counters,
    notes: Vec<Note>,
    buf: Vec<proto::Output<u32>>,
}

impl Lane {
    fn next(&self) -> Option<EventKey> {
        self.queue.peek().map(|(k, _)| k)
    }

    fn push(&mut self, key: EventKey, ev: Ev) {
        self.queue.insert(&mut self.slab, key, ev);
    }
}

/// A change to a [`Track`], made where the tracks cannot be reached (a lane on its own
/// thread) and applied after. Every change commutes with the others.
#[derive(Clone)]
enum Note {
    Delivered { key: MessageKey, node: u32, hops: u32, at: u64 },
    Payload { key: MessageKey, msgs: u64 },
}

fn apply_note(tracks: &mut FxHashMap<MessageKey, Track>, note: Note) {
    match note {
        Note::Delivered { key, node, hops, at } => {
            if let Some(t) = tracks.get_mut(&key) {
                let (w, b) = (node as usize / 64, node as usize % 64);
                if t.seen[w] & (1 << b) != 0 {
                    t.duplicates += 1;
                } else {
                    t.seen[w] |= 1 << b;
                    t.delivered += 1;
                    t.ldh = t.ldh.max(hops);
                    t.last_delivery_at = t.last_delivery_at.max(at);
                }
            }
        }
        Note::Payload { key, msgs } => {
            if let Some(t) = tracks.get_mut(&key) {
                t.payload_msgs += msgs;
            }
        }
    }
}

/// Where a step's track updates go: straight to the tracks, or to a lane's notes.
enum Tracks<'b> {
    Direct(&'b mut FxHashMap<MessageKey, Track>),
    Noted(&'b mut Vec<Note>),
}

/// What every step reads and nothing changes while lanes run: the configuration, the
/// partition, and which incarnation of each slot is alive.
struct Env<'a> {
    cfg: &'a SimConfig,
    base: Instant,
    group: &'a [u8],
    alive: &'a [bool],
    incs: &'a [u32],
    shuffle_paused: bool,
}

/// One step's view: the shared [`Env`], the lane of the node it runs, the slots it may
/// change (`nodes[0]` is slot `offset`), and where new events and counts go.
struct Step<'a, 'b> {
    env: &'b Env<'a>,
    now: u64,
    lo: u32,
    hi: u32,
    queue: &'b mut EventQueue,
    slab: &'b mut Slab,
    outbox: &'b mut Vec<(EventKey, Ev)>,
    counters: &'b mut Counters,
    tracks: Tracks<'b>,
    buf: &'b mut Vec<proto::Output<u32>>,
    nodes: &'b mut [Slot],
    offset: u32,
    trace: Option<&'b mut std::hash::DefaultHasher>,
    /// The count of events scheduled, in first-in-first-out order (one queue).
    fifo: Option<&'b mut u64>,
    /// The simulator's own RNG, which one FIFO queue draws the links from; lanes draw
    /// from each sending slot's own.
    rng: Option<&'b mut ChaCha8Rng>,
}

impl Step<'_, '_> {
    /// The RNG for a draw on behalf of slot `i`.
    fn rng_for(&mut self, i: u32) -> &mut ChaCha8Rng {
        match self.rng.as_deref_mut() {
            Some(r) => r,
            None => &mut self.nodes[(i - self.offset) as usize].net_rng,
        }
    }
}

/// A stopped node's version vector and message store.
struct Kept {
    heads: Vec<broadcast::Head<u32>>,
    store: Box<dyn broadcast::MessageStore<u32>>,
}

impl Clone for Kept {
    fn clone(&self) -> Self {
        Self { heads: self.heads.clone(), store: self.store.clone_box() }
    }
}

/// The slot a node whose views ran empty rejoins through first (the first node started;
/// a random live node when it is down).
const BOOTSTRAP_SLOT: u32 = 0;

/// Which broadcast a [`Track`] follows: its origin's slot, the incarnation of the node in
/// that slot (a restarted slot counts its sequence numbers from 1 again), and its seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// The origin's slot.
    pub origin: u32,
    /// The origin's incarnation.
    pub incarnation: u64,
    /// Its sequence number within the incarnation.
    pub seq: u64,
}

impl MessageKey {
    /// The key of the message `e` carries.
    pub fn of(e: &broadcast::Envelope<u32>) -> Self {
        Self { origin: e.origin, incarnation: e.incarnation, seq: e.seq }
    }
}

/// What happened to one broadcast.
#[derive(Clone, Debug)]
pub struct Track {
    /// The origin.
    pub origin: u32,
    /// Virtual send time, µs.
    pub sent_at: u64,
    /// Live nodes other than the origin when it was sent.
    pub expected: u32,
    /// Nodes that delivered it (each once).
    pub delivered: u32,
    /// Deliveries beyond the first to one node life (must stay 0: it counts exactly-once
    /// violations). A slot restarted while the broadcast spreads is a new node: its new
    /// life may deliver the message again, and that is counted in `delivered`, not here.
    pub duplicates: u32,
    /// Largest hop count among deliveries (LDH).
    pub ldh: u32,
    /// Payload (Gossip) messages sent for it.
    pub payload_msgs: u64,
    /// Virtual time of the last delivery, µs.
    pub last_delivery_at: u64,
    seen: Vec<u64>,
}

/// Global counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Events processed.
    pub events: u64,
    /// Messages delivered to a node.
    pub messages: u64,
    /// Messages dropped by loss.
    pub lost: u64,
    /// Messages sent to a dead or partitioned peer.
    pub undeliverable: u64,
    /// IHave announcements sent.
    pub announcements: u64,
    /// IHave frames sent.
    pub ihave_frames: u64,
    /// Graft messages sent.
    pub grafts: u64,
    /// Prune messages sent.
    pub prunes: u64,
    /// Membership messages sent.
    pub membership_msgs: u64,
    /// Plumtree Graft timers fired (most are stale: the payload came first).
    pub graft_timers: u64,
    /// IHave batch flush timers fired.
    pub ihave_timers: u64,
    /// Membership timers fired.
    pub membership_timers: u64,
    /// Anti-entropy timers fired.
    pub anti_entropy_timers: u64,
    /// Anti-entropy digests sent.
    pub digests: u64,
    /// Bytes of those digests and of the empty answers to them, as on the wire (32-byte NodeIds).
    pub digest_bytes: u64,
    /// Anti-entropy repairs sent.
    pub repairs: u64,
    /// Envelopes in them.
    pub repaired: u64,
    /// Sampled invariant checks run (scenario runs check after every measured broadcast).
    pub invariant_checks: u64,
    /// Of those, checks that found a violation (the first is printed with the seed).
    pub invariant_violations: u64,
}

/// A simulated cluster. `Clone` forks the whole world (used to run several failure
/// levels from one stabilised overlay).
#[derive(Clone)]
pub struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: u64,
    rng: ChaCha8Rng,
    nodes: Vec<Slot>,
    /// The event queues, one per range of slots; they run on their own threads for one
    /// lookahead of virtual time at a time ([`Sim::run_until`]).
    lanes: Vec<Lane>,
    group: Vec<u8>,
    /// Which slots run a node, and each slot's incarnation (read by every lane).
    alive: Vec<bool>,
    incs: Vec<u32>,
    /// While true, Shuffle timers are deferred (the papers' "no membership cycle").
    pub shuffle_paused: bool,
    tracks: FxHashMap<MessageKey, Track>,
    /// A running hash of every output every node produced, in order ([`Sim::trace_outputs`]).
    output_trace: Option<std::hash::DefaultHasher>,
    counters: Counters,
    /// Events one step made for another lane's nodes (moved there after the step).
    outbox: Vec<(EventKey, Ev)>,
    /// Events scheduled so far while one queue orders them first in, first out; `None`
    /// once [`Sim::set_lanes`] switched to lanes.
    fifo: Option<u64>,
}

/// Fewer events queued than this run one by one even with several lanes.
const PARALLEL_MIN_EVENTS: usize = 256;

/// The lane of slot `i`.
fn lane_of(lanes: &[Lane], i: u32) -> usize {
    lanes.iter().position(|l| i < l.hi).unwrap_or(lanes.len().saturating_sub(1))
}

/// Run `lane`'s events due before `end` µs (its slots are `nodes`, from `lane.lo`),
/// on its own: what it makes for other lanes waits in its outbox, its counts and track
/// changes in its notes. Returns the time of its last event (at least `start`).
fn run_lane(env: &Env<'_>, lane: &mut Lane, nodes: &mut [Slot], start: u64, end: u64) -> u64 {
    let mut now = start;
    let Lane { lo, hi, queue, slab, outbox, counters, notes, buf } = lane;
    while let Some((key, slot)) = queue.peek() {
        if key.at >= end {
            break;
        }
        queue.pop();
        now = now.max(key.at);
        let Some(ev) = slab.take(slot) else { continue };
        let mut step = Step {
            env,
            now,
            lo: *lo,
            hi: *hi,
            queue: &mut *queue,
            slab: &mut *slab,
            outbox: &mut *outbox,
            counters: &mut *counters,
            tracks: Tracks::Noted(&mut *notes),
            buf: &mut *buf,
            nodes: &mut *nodes,
            offset: *lo,
            trace: None,
            fifo: None,
            rng: None,
        };
        step.run(ev);
    }
    now
}

impl Sim {
    /// An empty simulation with room for `n` nodes (none started), on one queue that
    /// breaks ties in time first in, first out (the order every scenario's figures were
    /// measured in); [`Sim::set_lanes`] spreads it over threads.
    pub fn new(n: usize, cfg: SimConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let nodes = (0..n)
            .map(|i| Slot {
                state: None,
                inc: 0,
                kept: None,
                made: 0,
                uplink_free: 0,
                net_rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6e65_745f_726e_6700 ^ ((i as u64) << 1)),
            })
            .collect();
        Self {
            base: Instant::now(),
            now: 0,
            rng,
            nodes,
            lanes: vec![Lane { lo: 0, hi: n as u32, ..Lane::default() }],
            group: vec![0; n],
            alive: vec![false; n],
            incs: vec![0; n],
            shuffle_paused: false,
            tracks: FxHashMap::default(),
            output_trace: None,
            counters: Counters::default(),
            outbox: Vec::new(),
            fifo: Some(0),
            cfg,
        }
    }

    /// Spread the slots over `lanes` event queues (at least 1) from now on, each run on
    /// its own thread for one lookahead of virtual time at a time ([`Sim::run_until`]);
    /// the queued events move with their nodes. From then on ties in time are broken by
    /// node (see `EventKey`), not first in, first out: the rows differ from one FIFO
    /// queue's, and are the same for every number of lanes, 1 included.
    pub fn set_lanes(&mut self, lanes: usize) {
        self.fifo = None;
        let n = self.nodes.len();
        let k = lanes.clamp(1, n.max(1));
        let mut events = Vec::new();
        for lane in &mut self.lanes {
            while let Some((key, slot)) = lane.queue.pop() {
                if let Some(ev) = lane.slab.take(slot) {
                    events.push((key, ev));
                }
            }
        }
        self.lanes =
            (0..k).map(|j| Lane { lo: (n * j / k) as u32, hi: (n * (j + 1) / k) as u32, ..Lane::default() }).collect();
        for (key, ev) in events {
            let j = lane_of(&self.lanes, ev.node());
            self.lanes[j].push(key, ev);
        }
    }

    /// Event queues the slots are spread over ([`Sim::set_lanes`]).
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Number of node slots.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no node slots.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual time now, µs.
    pub fn now_us(&self) -> u64 {
        self.now
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Events waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.lanes.iter().map(|l| l.queue.len()).sum()
    }

    /// Global counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether node `i` is running.
    pub fn is_alive(&self, i: u32) -> bool {
        self.alive.get(i as usize).copied().unwrap_or(false)
    }

    /// The running nodes.
    pub fn live(&self) -> Vec<u32> {
        (0..self.nodes.len() as u32).filter(|i| self.is_alive(*i)).collect()
    }

    /// The protocol state of node `i`, if running.
    pub fn state(&self, i: u32) -> Option<&NodeState> {
        self.nodes.get(i as usize).and_then(|s| s.state.as_deref())
    }

    /// Change the failure-detection model from now on.
    pub fn set_detector(&mut self, detector: Detector) {
        self.cfg.detector = detector;
    }

    /// Limit every node's uplink to `bytes_per_ms` from now on (`None`: unlimited), as
    /// [`SimConfig::uplink_bytes_per_ms`].
    pub fn set_uplink(&mut self, bytes_per_ms: Option<f64>) {
        self.cfg.uplink_bytes_per_ms = bytes_per_ms;
    }

    /// Switch every node (and nodes started later) to Plumtree or eager flooding.
    pub fn set_broadcast_mode(&mut self, mode: proto::Mode) {
        self.cfg.protocol.broadcast.mode = mode;
        for s in self.nodes.iter_mut().filter_map(|s| s.state.as_mut()) {
            s.set_broadcast_mode(mode);
        }
    }

    /// Switch every node (and nodes started later) to a shared or per-origin tree.
    pub fn set_broadcast_tree(&mut self, tree: proto::Tree) {
        self.cfg.protocol.broadcast.tree = tree;
        for s in self.nodes.iter_mut().filter_map(|s| s.state.as_mut()) {
            s.set_broadcast_tree(tree);
        }
    }

    /// Run `f` as a step of node `node` at the current time, with every slot in reach;
    /// events it makes for other lanes are queued there after it.
    fn with_step<R>(&mut self, node: u32, f: impl FnOnce(&mut Step<'_, '_>) -> R) -> R {
        let k = lane_of(&self.lanes, node);
        let Sim {
            cfg,
            base,
            now,
            rng,
            nodes,
            lanes,
            group,
            alive,
            incs,
            shuffle_paused,
            tracks,
            output_trace,
            counters,
            outbox,
            fifo,
        } = self;
        let env = Env { cfg, base: *base, group, alive, incs, shuffle_paused: *shuffle_paused };
        let Lane { lo, hi, queue, slab, buf, .. } = &mut lanes[k];
        let mut step = Step {
            env: &env,
            now: *now,
            lo: *lo,
            hi: *hi,
            queue,
            slab,
            outbox,
            counters,
            tracks: Tracks::Direct(tracks),
            buf,
            nodes,
            offset: 0,
            trace: output_trace.as_mut(),
            rng: fifo.is_some().then_some(&mut *rng),
            fifo: fifo.as_mut(),
        };
        let r = f(&mut step);
        for (key, ev) in self.outbox.drain(..) {
            let k = lane_of(&self.lanes, ev.node());
            self.lanes[k].push(key, ev);
        }
        r
    }

    /// Start node `i` (fresh state, next incarnation) and join it through `contact`
    /// (`None`: it is the first node).
    pub fn start(&mut self, i: u32, contact: Option<u32>) {
        let slot = &mut self.nodes[i as usize];
        slot.inc += 1;
        let inc = slot.inc;
        let rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ (u64::from(i) << 20) ^ u64::from(inc));
        slot.state = Some(Box::new(proto::State::new(i, u64::from(inc), self.cfg.protocol.clone(), rng)));
        self.alive[i as usize] = true;
        self.incs[i as usize] = inc;
        let now = self.now;
        match contact {
            Some(c) => self.with_step(i, |s| s.schedule(i, now, Ev::Join { node: i, inc, contact: c })),
            // Arm the periodic timers of a first node.
            None => self.with_step(i, |s| s.input(i, proto::Input::Membership(membership::Input::JoinFailed))),
        }
    }

    /// Stop node `i` as [`Sim::crash`] does, keeping what a data dir keeps (its version
    /// vector and message store) for [`Sim::restart`]. The version vector is kept as
    /// heads: stop a node when it has no gap (no broadcast in flight), or what it saw
    /// above a gap is delivered again after the restart.
    pub fn stop(&mut self, victims: &[u32]) {
        for &v in victims {
            if let Some(slot) = self.nodes.get_mut(v as usize)
                && let Some(state) = slot.state.as_ref()
            {
                let b = state.broadcast_state();
                slot.kept = Some(Kept { heads: b.version_vector(), store: b.store().clone_box() });
            }
        }
        self.crash_many(victims);
    }

    /// Start a node stopped with [`Sim::stop`] again (next incarnation), from what it
    /// kept, joining through `contact`: it catches up on what it missed by anti-entropy
    /// and delivers nothing twice. A slot with nothing kept starts fresh ([`Sim::start`]).
    pub fn restart(&mut self, i: u32, contact: u32) {
        let Some(kept) = self.nodes.get_mut(i as usize).and_then(|s| s.kept.take()) else {
            return self.start(i, Some(contact));
        };
        let slot = &mut self.nodes[i as usize];
        slot.inc += 1;
        let inc = slot.inc;
        let rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ (u64::from(i) << 20) ^ u64::from(inc));
        let mut state = proto::State::with_store(i, u64::from(inc), self.cfg.protocol.clone(), rng, kept.store);
        // Restoring the vector also marks the node as restarted (it catches up).
        state.restore_version_vector(&kept.heads);
        slot.state = Some(Box::new(state));
        self.alive[i as usize] = true;
        self.incs[i as usize] = inc;
        let now = self.now;
        self.with_step(i, |s| s.schedule(i, now, Ev::Join { node: i, inc, contact }));
    }

    /// Crash node `i` abruptly. With [`Detector::Shipped`], every live node that has it
    /// in its active view learns it after the detection delay.
    pub fn crash(&mut self, i: u32) {
        self.crash_many(&[i]);
    }

    /// Crash several nodes at the same instant.
    pub fn crash_many(&mut self, victims: &[u32]) {
        for &v in victims {
            if let Some(slot) = self.nodes.get_mut(v as usize) {
                slot.state = None;
                self.alive[v as usize] = false;
            }
        }
        self.notify_lost_links(|sim, a, b| !sim.is_alive(b) && sim.is_alive(a));
    }

    /// Split the nodes into groups (`group[i]`); messages between groups are dropped.
    pub fn partition(&mut self, group: Vec<u8>) {
        self.group = group;
        self.notify_lost_links(|sim, a, b| sim.group[a as usize] != sim.group[b as usize]);
    }

    /// Heal every partition.
    pub fn heal(&mut self) {
        self.group = vec![0; self.nodes.len()];
    }

    fn notify_lost_links(&mut self, broken: impl Fn(&Sim, u32, u32) -> bool) {
        let mut lost = Vec::new();
        for a in self.live() {
            if let Some(s) = self.state(a) {
                for &b in s.membership().active_view() {
                    if broken(self, a, b) {
                        lost.push((a, b));
                    }
                }
            }
        }
        for (a, b) in lost {
            let delay = self.detection_delay_us();
            let inc = self.nodes[a as usize].inc;
            let at = self.now + delay;
            self.with_step(a, |s| s.schedule(a, at, Ev::Lost { node: a, inc, peer: b }));
        }
    }

    /// The shipped detector's delay: the mean inter-arrival (one heartbeat period of the
    /// LAN preset, 100 ms) plus the acceptable pause plus ≈5.6 σ (σ at its floor), where φ
    /// crosses 8, plus up to one heartbeat period until the next check.
    fn detection_delay_us(&mut self) -> u64 {
        if self.cfg.detector == Detector::Paper {
            return 0;
        }
        let m = &self.cfg.protocol.membership;
        let period = Duration::from_millis(100);
        let base = period + m.phi_acceptable_pause + m.phi_min_std_dev.mul_f64(5.6);
        let jitter = self.rng.gen_range(0..=period.as_micros() as u64);
        base.as_micros() as u64 + jitter
    }

    /// The least link latency, µs: no event a step makes for another node is due sooner,
    /// so lanes can run that far ahead of each other.
    fn lookahead_us(&self) -> u64 {
        let ms = match self.cfg.latency {
            Latency::Static { ms } => ms,
            Latency::Uniform { min_ms, .. } => min_ms,
        };
        (ms * 1000.0).max(1.0) as u64
    }

    /// From now on, hash every output of every node in the order produced (its node, the
    /// virtual time, and the output with deadlines as virtual µs): two runs from one seed
    /// must give the same [`Sim::output_hash`]. Costs a postcard encoding per message,
    /// and runs the lanes one event at a time (the hash follows the order of events).
    pub fn trace_outputs(&mut self) {
        self.output_trace.get_or_insert_with(std::hash::DefaultHasher::new);
    }

    /// The hash of the outputs since [`Sim::trace_outputs`] (`None` when not tracing).
    pub fn output_hash(&self) -> Option<u64> {
        self.output_trace.as_ref().map(std::hash::Hasher::finish)
    }

    /// Broadcast from node `i`; returns the key of its [`Track`].
    pub fn broadcast(&mut self, i: u32) -> Option<MessageKey> {
        if !self.is_alive(i) {
            return None;
        }
        let payload = Bytes::from(vec![0u8; self.cfg.payload_size]);
        let expected = self.live().len().saturating_sub(1) as u32;
        let n = self.nodes.len();
        let sent_at = self.now;
        self.with_step(i, |s| {
            let now = s.instant();
            let mut buf = std::mem::take(s.buf);
            let state = s.slot(i).state.as_mut()?;
            let (_, out) = state.broadcast(now, payload);
            buf.extend(out);
            let b = state.broadcast_state();
            let key = MessageKey { origin: i, incarnation: b.incarnation(), seq: b.stats().broadcasts };
            if let Tracks::Direct(t) = &mut s.tracks {
                t.insert(
                    key,
                    Track {
                        origin: i,
                        sent_at,
                        expected,
                        delivered: 0,
                        duplicates: 0,
                        ldh: 0,
                        payload_msgs: 0,
                        last_delivery_at: sent_at,
                        seen: vec![0; n.div_ceil(64)],
                    },
                );
            }
            s.apply(i, &mut buf);
            *s.buf = buf;
            Some(key)
        })
    }

    /// The record of a broadcast.
    pub fn track(&self, key: MessageKey) -> Option<&Track> {
        self.tracks.get(&key)
    }

    /// Forget one broadcast's record.
    pub fn forget_track(&mut self, key: MessageKey) {
        self.tracks.remove(&key);
    }

    /// Forget broadcast records (bounded memory in long runs).
    pub fn clear_tracks(&mut self) {
        self.tracks.clear();
    }

    /// The lane holding the earliest event.
    fn earliest(&self) -> Option<(usize, EventKey)> {
        self.lanes.iter().enumerate().filter_map(|(k, l)| l.next().map(|key| (k, key))).min_by_key(|(_, key)| *key)
    }

    /// Process one event. Returns false when the queue is empty.
    pub fn step(&mut self) -> bool {
        let Some((k, _)) = self.earliest() else { return false };
        let Some((key, slot)) = self.lanes[k].queue.pop() else { return false };
        self.now = self.now.max(key.at);
        let Some(ev) = self.lanes[k].slab.take(slot) else { return true };
        self.with_step(ev.node(), |s| s.run(ev));
        true
    }

    /// Run every event due at or before `t_us`, then set the clock to `t_us`. With
    /// several lanes (and no output trace), each lane runs on its own thread for one
    /// lookahead of virtual time (the least link latency) at a time: no event one lane
    /// makes for another is due within it (conservative synchronisation).
    pub fn run_until(&mut self, t_us: u64) {
        let lookahead = self.lookahead_us();
        while let Some((_, key)) = self.earliest() {
            if key.at > t_us {
                break;
            }
            if self.lanes.len() > 1
                && self.output_trace.is_none()
                && lookahead > 1
                && self.queue_len() >= PARALLEL_MIN_EVENTS
            {
                self.window(key.at.saturating_add(lookahead).min(t_us.saturating_add(1)));
            } else {
                self.step();
            }
        }
        self.now = self.now.max(t_us);
    }

    /// Every lane runs its events due before `end` µs on its own thread; then the events
    /// they made for each other, their counts and their track changes are merged.
    fn window(&mut self, end: u64) {
        let Sim { cfg, base, now, nodes, lanes, group, alive, incs, shuffle_paused, tracks, counters, .. } = self;
        let env = Env { cfg, base: *base, group, alive, incs, shuffle_paused: *shuffle_paused };
        let start = *now;
        let mut parts = Vec::with_capacity(lanes.len());
        let mut rest: &mut [Slot] = nodes;
        for lane in lanes.iter_mut() {
            let (mine, others) = rest.split_at_mut((lane.hi - lane.lo) as usize);
            parts.push((lane, mine));
            rest = others;
        }
        let env = &env;
        let latest = std::thread::scope(|s| {
            let mut parts = parts.into_iter();
            let first = parts.next();
            let others: Vec<_> =
                parts.map(|(lane, slots)| s.spawn(move || run_lane(env, lane, slots, start, end))).collect();
            let mut latest = first.map_or(start, |(lane, slots)| run_lane(env, lane, slots, start, end));
            for h in others {
                match h.join() {
                    Ok(t) => latest = latest.max(t),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            latest
        });
        *now = latest;
        let mut moved = Vec::new();
        for lane in lanes.iter_mut() {
            counters.add(&std::mem::take(&mut lane.counters));
            for note in lane.notes.drain(..) {
                apply_note(tracks, note);
            }
            moved.append(&mut lane.outbox);
        }
        for (key, ev) in moved {
            let k = lane_of(lanes, ev.node());
            lanes[k].push(key, ev);
        }
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d.as_micros() as u64);
    }

    /// Check the per-node invariants; `Err` names the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        for i in self.live() {
            let Some(s) = self.state(i) else { continue };
            let m = s.membership();
            let c = m.config();
            if m.active_view().len() > c.active_view_capacity {
                return Err(format!("node {i}: active view {} > {}", m.active_view().len(), c.active_view_capacity));
            }
            if m.passive_view().len() > c.passive_view_capacity {
                return Err(format!("node {i}: passive view over capacity"));
            }
            if m.active_view().contains(&i) || m.passive_view().contains(&i) {
                return Err(format!("node {i}: itself in a view"));
            }
            if m.active_view().iter().any(|p| m.passive_view().contains(p)) {
                return Err(format!("node {i}: active ∩ passive ≠ ∅"));
            }
            if m.departed().count() > c.reconnect_capacity {
                return Err(format!("node {i}: departed list over its bound"));
            }
            let b = s.broadcast_state();
            let bc = b.config();
            let (count, bytes) = b.cache_len();
            if count > bc.cache_max_messages || bytes > bc.cache_max_bytes || b.missing_len() > bc.max_missing {
                return Err(format!("node {i}: cache or missing map over its bound"));
            }
            if b.neighbors().len() != m.active_view().len()
                || m.active_view().iter().any(|p| !b.neighbors().contains(p))
            {
                return Err(format!("node {i}: Plumtree neighbours differ from the active view"));
            }
        }
        Ok(())
    }

    /// Run [`Sim::check_invariants`] and count the result; the first violation is printed
    /// to stderr with the seed so the run can be replayed.
    pub fn check_sampled(&mut self) {
        self.counters.invariant_checks += 1;
        if let Err(e) = self.check_invariants() {
            if self.counters.invariant_violations == 0 {
                eprintln!("invariant violated (seed {}, t = {} µs): {e}", self.cfg.seed, self.now);
            }
            self.counters.invariant_violations += 1;
        }
    }

    /// Links one live node holds in its active view while the other live end does not,
    /// as `(holder, peer)` pairs, at this instant; with the shared tree also links that
    /// one end pushes eagerly while the other treats them as lazy (Plumtree keeps both
    /// ends of a link in the same state: Prune and Graft act on both).
    fn asymmetric_links(&self) -> BTreeSet<(u32, u32)> {
        let mut out = BTreeSet::new();
        // Each node's eager set once (with the shared tree only), not once per link end.
        let eager: Vec<BTreeSet<u32>> = if self.cfg.protocol.broadcast.tree == proto::Tree::Shared {
            (0..self.nodes.len() as u32)
                .map(|i| self.state(i).map(|s| s.broadcast_state().eager_peers()).unwrap_or_default())
                .collect()
        } else {
            Vec::new()
        };
        let eager_of = |i: u32, p: u32| eager.get(i as usize).is_some_and(|e| e.contains(&p));
        for i in self.live() {
            let Some(s) = self.state(i) else { continue };
            for &p in s.membership().active_view() {
                let Some(o) = self.state(p) else { continue };
                if !o.membership().is_active(&i) || eager_of(i, p) != eager_of(p, i) {
                    out.insert((i, p));
                }
            }
        }
        out
    }

    /// Active views (and, with the shared tree, eager links) are symmetric among live
    /// nodes, observed for `window` of virtual time
    /// (the simulation runs meanwhile): a link that one end holds and the other does not in
    /// every sample, 10 ms apart, is a violation. One instant is not enough, because the
    /// overlay never stops changing (Shuffle, refills from the passive view): an accepted
    /// Neighbor request whose reply is in flight, or a Disconnect on its way, is asymmetric
    /// for one link latency. A stale link heals when the other end rejects its next
    /// heartbeat (100 ms by default), so 1 s is a fair window. `Err` names one link and the
    /// seed.
    pub fn check_symmetry_over(&mut self, window: Duration) -> Result<(), String> {
        let step = Duration::from_millis(10);
        let mut persistent = self.asymmetric_links();
        let mut waited = Duration::ZERO;
        while !persistent.is_empty() && waited < window {
            self.run_for(step);
            waited += step;
            let now = self.asymmetric_links();
            persistent.retain(|l| now.contains(l));
        }
        match persistent.first() {
            Some((i, p)) => Err(format!(
                "seed {}: node {i} has {p} active (eager: {}), not vice versa, for {} ms",
                self.cfg.seed,
                self.state(*i).is_some_and(|s| s.broadcast_state().eager_peers().contains(p)),
                window.as_millis()
            )),
            None => Ok(()),
        }
    }

    /// Live nodes' active-view adjacency (undirected, live peers only).
    pub fn adjacency(&self) -> Vec<Vec<u32>> {
        let mut adj = vec![Vec::new(); self.nodes.len()];
        for i in self.live() {
            if let Some(s) = self.state(i) {
                for &p in s.membership().active_view() {
                    if self.is_alive(p) {
                        adj[i as usize].push(p);
                        if !self.state(p).is_some_and(|o| o.membership().is_active(&i)) {
                            adj[p as usize].push(i);
                        }
                    }
                }
            }
        }
        for a in adj.iter_mut() {
            a.sort_unstable();
            a.dedup();
        }
        adj
    }
}

/// The bytes of a digest as the node sends it: the simulator's `u32` origins widened to
/// 32-byte NodeIds, encoded with postcard inside `proto::Message`, plus the 4-byte frame
/// length prefix.
fn wire_digest_bytes(
    heads: &[broadcast::Head<u32>],
    after: Option<&(u32, u64)>,
    upto: Option<&(u32, u64)>,
    reply: bool,
) -> u64 {
    let heads: Vec<broadcast::Head<[u8; 32]>> = heads
        .iter()
        .map(|h| broadcast::Head { origin: wide(h.origin), incarnation: h.incarnation, seq: h.seq })
        .collect();
    let message: broadcast::Message<[u8; 32]> = broadcast::Message::Digest {
        heads,
        after: after.map(|(o, i)| (wide(*o), *i)),
        upto: upto.map(|(o, i)| (wide(*o), *i)),
        reply,
        joined: false,
        ask: u32::MAX,
    };
    // One byte more for the `proto::Message::Broadcast` variant tag.
    postcard::to_allocvec(&message).map_or(0, |v| v.len() as u64 + 1 + 4)
}

/// A simulator peer id widened to a 32-byte NodeId, as the node's ids are on the wire.
fn wide(o: u32) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&o.to_le_bytes());
    id
}

/// Bytes on the wire of an empty [`broadcast::Message::Repair`] (the answer to a digest
/// that found nothing missing), with 32-byte NodeIds, its length prefix included.
fn wire_answer_bytes(after: Option<&(u32, u64)>) -> u64 {
    let message: broadcast::Message<[u8; 32]> = broadcast::Message::Repair {
        after: after.map(|(o, i)| (wide(*o), *i)),
        ask: u32::MAX,
        envelopes: Vec::new(),
        settled: Vec::new(),
        more: false,
    };
    postcard::to_allocvec(&message).map_or(0, |v| v.len() as u64 + 1 + 4)
}

/// The size of anti-entropy digests between two nodes that have seen the same messages
/// of `origins` origins (the steady state), as [`digest_sizes`] measures it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DigestSizes {
    /// Origins in both version vectors.
    pub origins: usize,
    /// Largest digest sent, bytes on the wire (32-byte NodeIds).
    pub max_digest_bytes: u64,
    /// Exchanges until the whole version vector was sent once.
    pub exchanges_to_cover: u64,
    /// Bytes of all digests of those exchanges and of their (empty) answers.
    pub bytes_to_cover: u64,
    /// Frames other than digests and empty answers in those exchanges (0 when nothing is
    /// missing).
    pub other_frames: u64,
}

/// Measure anti-entropy digests with the shipped broadcast core: two nodes that both
/// delivered one message from each of `origins` origins run periodic exchanges until
/// the first node's vector was covered; digests are sized as the node encodes them.
pub fn digest_sizes(origins: usize) -> DigestSizes {
    let t = Instant::now();
    let config = sim_protocol_with_anti_entropy(Duration::from_secs(5), 0).broadcast;
    let mut a = broadcast::State::new(u32::MAX, 1, config.clone());
    let mut b = broadcast::State::new(u32::MAX - 1, 1, config);
    for o in 0..origins as u32 {
        // A real incarnation: a start time in ms (2026), a 6-byte varint, as on the wire.
        let e = broadcast::Envelope::new(o, 1_796_000_000_000, 1, Bytes::from_static(b"x"));
        for s in [&mut a, &mut b] {
            let _ = s.handle(
                t,
                broadcast::Input::Message {
                    from: o,
                    message: broadcast::Message::Gossip { round: 0, envelope: e.clone() },
                },
            );
        }
    }
    let (ida, idb) = (u32::MAX, u32::MAX - 1);
    let _ = a.handle(t, broadcast::Input::NeighborUp(idb)).count();
    let _ = b.handle(t, broadcast::Input::NeighborUp(ida)).count();
    let mut out =
        DigestSizes { origins, max_digest_bytes: 0, exchanges_to_cover: 0, bytes_to_cover: 0, other_frames: 0 };
    let mut covered = 0usize;
    while covered < origins.max(1) {
        out.exchanges_to_cover += 1;
        let at = t + Duration::from_secs(5 * out.exchanges_to_cover);
        let mut queue: Vec<(bool, broadcast::Message<u32>)> = a
            .handle(at, broadcast::Input::Timer(broadcast::Timer::AntiEntropy))
            .filter_map(|o| if let broadcast::Output::Send { message, .. } = o { Some((true, message)) } else { None })
            .collect();
        while let Some((from_a, message)) = queue.pop() {
            if let broadcast::Message::Digest { heads, after, upto, reply, .. } = &message {
                let bytes = wire_digest_bytes(heads, after.as_ref(), upto.as_ref(), *reply);
                out.max_digest_bytes = out.max_digest_bytes.max(bytes);
                out.bytes_to_cover += bytes;
                if from_a {
                    covered += heads.len();
                }
            } else if let broadcast::Message::Repair { after, envelopes, .. } = &message
                && envelopes.is_empty()
            {
                out.bytes_to_cover += wire_answer_bytes(after.as_ref());
            } else {
                out.other_frames += 1;
            }
            let (to, from) = if from_a { (&mut b, ida) } else { (&mut a, idb) };
            let replies: Vec<_> = to
                .handle(at, broadcast::Input::Message { from, message })
                .filter_map(|o| {
                    if let broadcast::Output::Send { message, .. } = o { Some((!from_a, message)) } else { None }
                })
                .collect();
            queue.extend(replies);
        }
    }
    out
}

/// The steady-state cost of anti-entropy, as [`anti_entropy_cost`] measures it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AntiEntropyCost {
    /// Nodes (every one an origin).
    pub nodes: usize,
    /// Broadcasts per second, cluster-wide.
    pub rate: f64,
    /// Payload size, bytes.
    pub size: usize,
    /// Simulated seconds measured.
    pub secs: f64,
    /// Digest bytes sent per second per node, with the empty answers to them, as on the
    /// wire (32-byte NodeIds).
    pub digest_bytes_per_s_per_node: f64,
    /// Payload bytes delivered per second per node.
    pub payload_bytes_per_s_per_node: f64,
    /// Digest bytes over payload bytes.
    pub overhead: f64,
    /// Envelopes repaired (0 with no loss: nothing was missing).
    pub repaired: u64,
}

/// Anti-entropy's cost with no loss: `n` nodes with the default interval (5 s), random
/// senders at `rate` broadcasts per second of `size` bytes for `secs` simulated seconds.
pub fn anti_entropy_cost(n: usize, rate: f64, size: usize, secs: u64, seed: u64) -> AntiEntropyCost {
    let mut cfg = SimConfig::new(seed);
    cfg.protocol = sim_protocol_with_anti_entropy(broadcast::config::ANTI_ENTROPY_INTERVAL, 100_000);
    cfg.payload_size = size;
    let mut sim = crate::build_overlay(n, cfg, 10);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (c0, t0) = (sim.counters().clone(), sim.now_us());
    let gap = Duration::from_secs_f64(1.0 / rate);
    let count = (rate * secs as f64) as usize;
    for _ in 0..count {
        let live = sim.live();
        let o = live[rng.gen_range(0..live.len())];
        sim.broadcast(o);
        sim.run_for(gap);
        sim.clear_tracks();
    }
    let c = sim.counters();
    let measured = (sim.now_us() - t0) as f64 / 1e6;
    let digest = (c.digest_bytes - c0.digest_bytes) as f64 / measured / n as f64;
    let payload = count as f64 * (n - 1) as f64 * size as f64 / measured / n as f64;
    AntiEntropyCost {
        nodes: n,
        rate,
        size,
        secs: measured,
        digest_bytes_per_s_per_node: digest,
        payload_bytes_per_s_per_node: payload,
        overhead: digest / payload,
        repaired: c.repaired - c0.repaired,
    }
}
impl Step<'_, '_> {
    fn slot(&mut self, i: u32) -> &mut Slot {
        &mut self.nodes[(i - self.offset) as usize]
    }

    fn is_alive(&self, i: u32) -> bool {
        self.env.alive.get(i as usize).copied().unwrap_or(false)
    }

    fn instant(&self) -> Instant {
        self.env.base + Duration::from_micros(self.now)
    }

    /// Queue `ev`, made by a step of `src`, at `at` µs.
    fn schedule(&mut self, src: u32, at: u64, ev: Ev) {
        let key = match self.fifo.as_deref_mut() {
            Some(seq) => {
                *seq += 1;
                EventKey { at, a: *seq, b: 0 }
            }
            None => {
                let slot = self.slot(src);
                slot.made += 1;
                EventKey { at, a: u64::from(src), b: slot.made }
            }
        };
        if (self.lo..self.hi).contains(&ev.node()) {
            self.queue.insert(self.slab, key, ev);
        } else {
            self.outbox.push((key, ev));
        }
    }

    fn note(&mut self, note: Note) {
        match &mut self.tracks {
            Tracks::Direct(t) => apply_note(t, note),
            Tracks::Noted(n) => n.push(note),
        }
    }

    fn latency_us(&mut self, from: u32) -> u64 {
        let ms = match self.env.cfg.latency {
            Latency::Static { ms } => ms,
            Latency::Uniform { min_ms, max_ms } => {
                if max_ms > min_ms {
                    self.rng_for(from).gen_range(min_ms..max_ms)
                } else {
                    min_ms
                }
            }
        };
        (ms * 1000.0).max(1.0) as u64
    }

    fn trace(&mut self, i: u32, o: &proto::Output<u32>) {
        use std::hash::{Hash, Hasher};
        let (base, now) = (self.env.base, self.now);
        let Some(h) = self.trace.as_mut() else { return };
        (i, now).hash(h);
        match o {
            proto::Output::Send { to, message } => {
                (0u8, to).hash(h);
                // Every message type is postcard-encodable: an error would be a bug here.
                h.write(&postcard::to_stdvec(message).expect("a message encodes"));
            }
            proto::Output::Disconnect { peer } => (1u8, peer).hash(h),
            proto::Output::Timer { at, timer } => {
                (2u8, at.saturating_duration_since(base).as_micros(), timer).hash(h);
            }
            proto::Output::Rejoin => 3u8.hash(h),
            proto::Output::Event(e) => (4u8, format!("{e:?}")).hash(h),
            proto::Output::Penalize { peer, reason } => (5u8, peer, reason.as_str()).hash(h),
        }
    }

    fn input(&mut self, i: u32, input: proto::Input<u32>) {
        let now = self.instant();
        let mut buf = std::mem::take(self.buf);
        let Some(state) = self.slot(i).state.as_mut() else {
            *self.buf = buf;
            return;
        };
        buf.extend(state.handle(now, input));
        self.apply(i, &mut buf);
        *self.buf = buf;
    }

    fn apply(&mut self, i: u32, buf: &mut Vec<proto::Output<u32>>) {
        let inc = self.env.incs[i as usize];
        for o in buf.drain(..) {
            self.trace(i, &o);
            match o {
                proto::Output::Send { to, message } => self.send(i, to, message),
                proto::Output::Disconnect { peer } => {
                    // Closing a connection reaches the other side.
                    if self.is_alive(peer) && self.env.group[peer as usize] == self.env.group[i as usize] {
                        let at = self.now + self.latency_us(i);
                        let pinc = self.env.incs[peer as usize];
                        self.schedule(i, at, Ev::Lost { node: peer, inc: pinc, peer: i });
                    }
                }
                proto::Output::Timer { at, timer } => {
                    let at = at.saturating_duration_since(self.env.base).as_micros() as u64;
                    self.schedule(i, at.max(self.now), Ev::Timer { node: i, inc, timer });
                }
                proto::Output::Rejoin => {
                    let contact = if self.is_alive(BOOTSTRAP_SLOT) && BOOTSTRAP_SLOT != i {
                        BOOTSTRAP_SLOT
                    } else {
                        let live: Vec<u32> = (0..self.env.alive.len() as u32).filter(|p| self.is_alive(*p)).collect();
                        let pick = self.rng_for(i).gen_range(0..live.len().max(1));
                        live.get(pick).copied().unwrap_or(i)
                    };
                    let now = self.now;
                    self.schedule(i, now, Ev::Join { node: i, inc, contact });
                }
                proto::Output::Event(proto::Event::Delivered(d)) => {
                    let e = &d.envelope;
                    let key = MessageKey::of(e);
                    let at = self.now;
                    self.note(Note::Delivered { key, node: i, hops: d.hops, at });
                }
                proto::Output::Event(_) => {}
                // The simulator's nodes neither sign nor validate: nothing is penalised.
                proto::Output::Penalize { .. } => {}
            }
        }
    }

    fn send(&mut self, from: u32, to: u32, msg: proto::Message<u32>) {
        let counters = &mut *self.counters;
        // The payloads sent: one Gossip's, or a repair's (no allocation for the first).
        let mut payload = None;
        let mut repaired: &[broadcast::Envelope<u32>] = &[];
        match &msg {
            proto::Message::Broadcast(broadcast::Message::Gossip { envelope, .. }) => {
                payload = Some(MessageKey::of(envelope))
            }
            proto::Message::Broadcast(broadcast::Message::IHave(a)) => {
                counters.ihave_frames += 1;
                counters.announcements += a.len() as u64;
            }
            proto::Message::Broadcast(broadcast::Message::Graft { .. }) => counters.grafts += 1,
            proto::Message::Broadcast(broadcast::Message::Prune { .. }) => counters.prunes += 1,
            proto::Message::Broadcast(broadcast::Message::Digest { heads, after, upto, reply, .. }) => {
                counters.digests += 1;
                counters.digest_bytes += wire_digest_bytes(heads, after.as_ref(), upto.as_ref(), *reply);
            }
            proto::Message::Broadcast(broadcast::Message::Repair { after, envelopes, .. }) if envelopes.is_empty() => {
                // The answer to a digest that found nothing missing: control bytes.
                counters.digest_bytes += wire_answer_bytes(after.as_ref());
            }
            proto::Message::Broadcast(broadcast::Message::Repair { envelopes, .. }) => {
                counters.repairs += 1;
                counters.repaired += envelopes.len() as u64;
                repaired = envelopes;
            }
            // Records are off in the simulator (sim_protocol); counted with membership.
            proto::Message::Membership(_) | proto::Message::Topology(_) => counters.membership_msgs += 1,
        }
        for key in payload.into_iter().chain(repaired.iter().map(MessageKey::of)) {
            self.note(Note::Payload { key, msgs: 1 });
        }
        let reachable = self.is_alive(to) && self.env.group[to as usize] == self.env.group[from as usize];
        if !reachable {
            self.counters.undeliverable += 1;
            if self.env.cfg.detector == Detector::Paper {
                let inc = self.env.incs[from as usize];
                let now = self.now;
                self.schedule(from, now, Ev::Lost { node: from, inc, peer: to });
            }
            return;
        }
        let loss = self.env.cfg.loss;
        if loss > 0.0 && self.rng_for(from).gen_bool(loss.min(1.0)) {
            self.counters.lost += 1;
            return;
        }
        let mut at = self.now + self.latency_us(from);
        if let Some(rate) = self.env.cfg.uplink_bytes_per_ms {
            let size = match &msg {
                proto::Message::Broadcast(broadcast::Message::Gossip { envelope, .. }) => envelope.payload.len() + 64,
                _ => 64,
            };
            let tx_us = (size as f64 / rate * 1000.0) as u64;
            let now = self.now;
            let slot = self.slot(from);
            let free = slot.uplink_free.max(now) + tx_us;
            slot.uplink_free = free;
            at += free - now;
        }
        let to_inc = self.env.incs[to as usize];
        self.schedule(from, at, Ev::Deliver { from, to, to_inc, msg });
    }

    /// Carry out one event taken from the queue.
    fn run(&mut self, ev: Ev) {
        self.counters.events += 1;
        match ev {
            Ev::Deliver { from, to, to_inc, msg } => {
                if self.env.incs[to as usize] == to_inc && self.env.group[to as usize] == self.env.group[from as usize]
                {
                    self.counters.messages += 1;
                    self.input(to, proto::Input::Message { from, message: msg });
                }
            }
            Ev::Timer { node, inc, timer } => {
                if self.env.incs[node as usize] != inc {
                    return;
                }
                if self.env.shuffle_paused && timer == proto::Timer::Membership(membership::Timer::Shuffle) {
                    let at = self.now + self.env.cfg.protocol.membership.shuffle_interval.as_micros() as u64;
                    self.schedule(node, at, Ev::Timer { node, inc, timer });
                    return;
                }
                match &timer {
                    proto::Timer::Broadcast(broadcast::Timer::Graft { .. }) => self.counters.graft_timers += 1,
                    proto::Timer::Broadcast(broadcast::Timer::IHaveFlush) => self.counters.ihave_timers += 1,
                    proto::Timer::Broadcast(broadcast::Timer::AntiEntropy) => self.counters.anti_entropy_timers += 1,
                    proto::Timer::Membership(_) | proto::Timer::Topology => self.counters.membership_timers += 1,
                }
                self.input(node, proto::Input::Timer(timer));
            }
            Ev::Lost { node, inc, peer } => {
                if self.env.incs[node as usize] == inc {
                    self.input(node, proto::Input::Membership(membership::Input::ConnectionLost { peer }));
                }
            }
            Ev::Join { node, inc, contact } => {
                if self.env.incs[node as usize] == inc {
                    self.input(node, proto::Input::Membership(membership::Input::Join { contact }));
                }
            }
        }
    }
}

impl Counters {
    /// Add `o`'s counts to these.
    fn add(&mut self, o: &Counters) {
        let Counters {
            events,
            messages,
            lost,
            undeliverable,
            announcements,
            ihave_frames,
            grafts,
            prunes,
            membership_msgs,
            graft_timers,
            ihave_timers,
            membership_timers,
            anti_entropy_timers,
            digests,
            digest_bytes,
            repairs,
            repaired,
            invariant_checks,
            invariant_violations,
        } = o;
        self.events += events;
        self.messages += messages;
        self.lost += lost;
        self.undeliverable += undeliverable;
        self.announcements += announcements;
        self.ihave_frames += ihave_frames;
        self.grafts += grafts;
        self.prunes += prunes;
        self.membership_msgs += membership_msgs;
        self.graft_timers += graft_timers;
        self.ihave_timers += ihave_timers;
        self.membership_timers += membership_timers;
        self.anti_entropy_timers += anti_entropy_timers;
        self.digests += digests;
        self.digest_bytes += digest_bytes;
        self.repairs += repairs;
        self.repaired += repaired;
        self.invariant_checks += invariant_checks;
        self.invariant_violations += invariant_violations;
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    /// Messages in key order, messages out of it and timers, mixed: the queue pops them in
    /// the order a binary heap alone gives.
    #[test]
    fn the_event_queue_pops_in_the_order_of_a_heap_alone() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut q, mut slab) = (EventQueue::default(), Slab::default());
        let mut heap = BinaryHeap::new();
        let (mut popped, mut expected) = (Vec::new(), Vec::new());
        let (mut seq, mut to_run) = (0u64, 0u64);
        for now in (0..5_000u64).map(|t| t * 100) {
            // Every event due by now, as the engine runs them.
            while let Some((key, slot)) = q.peek().filter(|(k, _)| k.at <= now) {
                assert_eq!(q.pop(), Some((key, slot)));
                popped.push((key, slab.take(slot).is_some()));
                let Reverse((k, _)) = heap.pop().expect("the heap holds as many");
                expected.push((k, true));
            }
            seq += 1;
            // Mostly one static latency after now (in order); some sooner, a few later (each
            // sends the in-order ones after it to the heap until the clock catches up).
            let at = match rng.gen_range(0..1_000) {
                0..100 => now + rng.gen_range(0..10_000),
                100..103 => now + rng.gen_range(10_000..20_000),
                _ => now + 10_000,
            };
            let key = EventKey { at, a: seq, b: 0 };
            let ev = if rng.gen_bool(0.8) {
                Ev::Deliver {
                    from: 0,
                    to: 1,
                    to_inc: 1,
                    msg: proto::Message::Broadcast(broadcast::Message::IHave(vec![])),
                }
            } else {
                Ev::Lost { node: 1, inc: 1, peer: 0 }
            };
            let before = q.run.len();
            q.insert(&mut slab, key, ev);
            to_run += (q.run.len() - before) as u64;
            heap.push(Reverse((key, 0u32)));
        }
        assert_eq!(q.len(), heap.len());
        while let Some((key, slot)) = q.pop() {
            popped.push((key, slab.take(slot).is_some()));
            let Reverse((k, _)) = heap.pop().expect("the heap holds as many");
            expected.push((k, true));
        }
        assert!(heap.is_empty());
        assert_eq!(popped, expected);
        // Both parts were used (every event pushed was popped once).
        let pushed = popped.len() as u64;
        assert!(to_run > 1_000 && pushed - to_run > 300, "{to_run} of {pushed} to the run");
    }
}
