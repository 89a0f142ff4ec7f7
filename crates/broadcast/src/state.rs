//! The Plumtree state machine of one node: eager and lazy push, Graft and Prune, tree
//! optimisation and parent repair, over the dedupe, the payload cache and the trees.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::{Authenticator, Penalty, Validation, Validator};
use crate::cache::{Cached, PayloadCache};
use crate::dedupe::{Key, Seen, Versions};
use crate::exchange::{EXCHANGE_TIMEOUT_INTERVALS, Open};
use crate::lag::Lag;
use crate::store::MessageStore;
use crate::trees::Trees;
use crate::{
    Announcement, Config, Delivery, Envelope, ExchangeError, Head, Input, MemoryStore, Message, MessageId, Mode,
    Output, PeerId, Settled, Stats, StoreSize, Timer, Tree, Trigger,
};

/// How often, at most, expired payloads and missing records are swept: an entry lives at
/// most this long past its age limit, and the per-input cost is one comparison.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// One neighbour's announcements may fill at most 1 / MISSING_SHARE of the missing table
/// ([`Config::max_missing`]): IHaves of made-up ids from one peer cannot crowd out the
/// announcements of the others.
const MISSING_SHARE: usize = 4;

/// Who settled a message without delivering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SettledBy {
    /// Our validator.
    Us,
    /// A neighbour's repair said so: if the payload comes after all, our own validator
    /// decides (a member cannot censor a message by calling it settled).
    Neighbor,
}

/// A message announced (IHave) but not received yet.
#[derive(Clone, Debug)]
struct Missing<P> {
    origin: P,
    /// Its origin's incarnation and its sequence number (as announced).
    incarnation: u64,
    seq: u64,
    /// The first announcer, whose share of the table this record counts against.
    owner: P,
    since: Instant,
    announcers: VecDeque<P>,
    /// Announcers grafted so far (a payload from one of them is no lag sample).
    grafted: Vec<P>,
    /// The announcer with the lowest round so far (first wins ties), for the
    /// optimisation on arrival (paper §3.8, Algorithm 2).
    best: Option<(P, u32)>,
    attempt: u32,
    armed: bool,
}

/// A message delivered by the neighbour this node grafted for it, kept until the tree's
/// own copy arrives (a lag sample: the tree was late, not broken) or the table's bound.
#[derive(Clone)]
struct Grafted<P> {
    /// When its first IHave came.
    since: Instant,
    /// The neighbours grafted for it.
    peers: Vec<P>,
}

/// Where a Gossip came from: a neighbour shapes the tree, anyone else only delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    Neighbor,
    Stranger,
}

/// Most digests answered per neighbour per anti-entropy interval: a catch-up asks again
/// after every full repair, so this bounds a neighbour's catch-up to 256 repairs of
/// [`Config::anti_entropy_max_messages`] per interval (≈ 52,000 messages/s with the
/// defaults), and what a hostile neighbour can make us send.
const DIGESTS_PER_INTERVAL: u32 = 256;

/// A neighbour not synced with for this many anti-entropy intervals is the next partner,
/// even if it is on the tree of the origins in the piece (every neighbour is synced with
/// at least this often).
const OVERDUE_INTERVALS: u32 = 4;

/// A first-time node's window for adopting the history instead of asking for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fresh {
    /// Not new (restored from a data dir, replaying history, or the window is over).
    No,
    /// New, no neighbour yet: the window starts at the first one.
    BeforeFirstNeighbor,
    /// New until then (two anti-entropy intervals after the first neighbour).
    Until(Instant),
}

/// Anti-entropy bookkeeping.
#[derive(Clone, Debug)]
struct AntiEntropy<P> {
    armed: bool,
    /// Whether this node is new and wants no history (it adopts the heads it hears of
    /// instead of asking for them).
    fresh: Fresh,
    /// The next periodic piece starts after this key (`None`: at the first).
    cursor: Option<Key<P>>,
    /// When each neighbour was last synced with (partner choice: least recently).
    last_sync: BTreeMap<P, Instant>,
    /// When each neighbour became one (the repair grace applies to older messages only).
    neighbor_since: BTreeMap<P, Instant>,
    /// The exchanges this node started and that are still open, one per neighbour.
    exchanges: BTreeMap<P, Open<P>>,
    /// The number of the last digest sent.
    asks: u32,
    /// Digests answered per neighbour in the current window, and the window's start.
    budget: BTreeMap<P, (Instant, u32)>,
    /// Heads a new node heard of in digests, for keys it had seen nothing of: the history
    /// it takes as seen once [`Config::anti_entropy_grace`] has passed (at most
    /// [`Config::max_missing`] keys), with the time each was heard, oldest first.
    adopt: Adopt<P>,
}

/// `head`, but below the lowest seq of `key` in `announced`.
fn below<P: Ord>(announced: &BTreeMap<Key<P>, u64>, key: &Key<P>, head: u64) -> u64 {
    announced.get(key).map_or(head, |s| s.saturating_sub(1).min(head))
}

/// The history a new node will take as seen ([`AntiEntropy::adopt`]). Not at once: a
/// digest can overtake messages sent after the join that are still on their way through
/// the tree (their announcement dropped because the link was not yet a neighbour on this
/// side, say); marked seen, they would be dropped as duplicates when they came, and
/// never delivered. Until then, digests advertise the adopted heads, so neighbours do not
/// repair the history.
#[derive(Clone, Debug)]
struct Adopt<P> {
    heads: BTreeMap<Key<P>, u64>,
    order: VecDeque<(Instant, Key<P>)>,
}

impl<P> Default for Adopt<P> {
    fn default() -> Self {
        Self { heads: BTreeMap::new(), order: VecDeque::new() }
    }
}

impl<P> Default for AntiEntropy<P> {
    fn default() -> Self {
        Self {
            armed: false,
            fresh: Fresh::No,
            cursor: None,
            last_sync: BTreeMap::new(),
            neighbor_since: BTreeMap::new(),
            exchanges: BTreeMap::new(),
            asks: 0,
            budget: BTreeMap::new(),
            adopt: Adopt::default(),
        }
    }
}

/// Messages of one origin's life held back, by seq, with the time each was held (`None`:
/// a settled message that is never delivered, kept only to fill its place in the order).
type Held<P> = BTreeMap<u64, (Instant, Option<Delivery<P>>)>;

/// Per (origin, incarnation): the next seq to deliver and the messages held back for it.
#[derive(Clone, Debug)]
struct Holdback<P> {
    next: BTreeMap<Key<P>, u64>,
    held: BTreeMap<Key<P>, Held<P>>,
    count: usize,
}

impl<P> Default for Holdback<P> {
    fn default() -> Self {
        Self { next: BTreeMap::new(), held: BTreeMap::new(), count: 0 }
    }
}

/// The Plumtree state of one node.
#[derive(Clone)]
pub struct State<P> {
    me: P,
    incarnation: u64,
    next_seq: u64,
    config: Config,
    neighbors: BTreeSet<P>,
    trees: Trees<P>,
    versions: Versions<P>,
    /// Per-origin FIFO hold-back ([`crate::Ordering::PerOrigin`]).
    holdback: Holdback<P>,
    cache: PayloadCache<P>,
    store: Box<dyn MessageStore<P>>,
    /// Signs our messages and checks the proofs of others' (none: unsigned).
    auth: Option<Box<dyn Authenticator<P>>>,
    /// The application's check of content (none: everything authentic is accepted).
    validator: Option<Box<dyn Validator<P>>>,
    /// Messages settled without delivery (rejected or ignored here, or settled by a
    /// neighbour), to pass on in repairs; the most recent [`Config::max_missing`].
    settled: BTreeMap<(P, u64, u64), (Settled<P>, SettledBy)>,
    settled_order: VecDeque<(P, u64, u64)>,
    /// Our messages numbered by [`State::stage`] and not yet sent.
    staged: Vec<(MessageId, Envelope<P>)>,
    anti_entropy: AntiEntropy<P>,
    /// Keyed by peer-announced ids, so SipHash; looked up, and iterated only to forget a
    /// neighbour (no output depends on its order).
    missing: HashMap<MessageId, Missing<P>>,
    missing_order: VecDeque<(MessageId, Instant)>,
    /// Missing records per first announcer (see [`MISSING_SHARE`]).
    missing_owned: HashMap<P, usize>,
    /// Times each (neighbour, message) was served in answer to a Graft, for the most
    /// recent [`Config::max_missing`] of them (peer-chosen ids, so SipHash).
    served: HashMap<(P, MessageId), u32>,
    served_order: VecDeque<(P, MessageId)>,
    ihave_queue: BTreeMap<P, Vec<Announcement<P>>>,
    /// Smoothed round-trip time per neighbour, as reported by the transport.
    rtt: BTreeMap<P, Duration>,
    /// The IHave-to-payload lag behind the adaptive timer 1 (module `lag`).
    lag: Lag,
    /// Messages a Graft delivered, awaiting the tree's copy (at most
    /// [`Config::max_missing`], oldest forgotten first; peer-announced ids, so SipHash).
    grafted: HashMap<MessageId, Grafted<P>>,
    grafted_order: VecDeque<MessageId>,
    ihave_armed: bool,
    next_expiry: Option<Instant>,
    stats: Stats,
    out: Vec<Output<P>>,
}

impl<P: PeerId> State<P> {
    /// A node `me` in life `incarnation` (the node passes its start time in ms), with an
    /// in-memory message store keeping [`Config::retention`].
    pub fn new(me: P, incarnation: u64, config: Config) -> Self {
        let store = Box::new(MemoryStore::new(config.retention));
        Self::with_store(me, incarnation, config, store)
    }

    /// Like [`State::new`], keeping messages in `store` (a durable one, say).
    pub fn with_store(me: P, incarnation: u64, config: Config, store: Box<dyn MessageStore<P>>) -> Self {
        Self {
            store,
            auth: None,
            validator: None,
            staged: Vec::new(),
            settled: BTreeMap::new(),
            settled_order: VecDeque::new(),
            anti_entropy: AntiEntropy {
                fresh: if config.replay_history { Fresh::No } else { Fresh::BeforeFirstNeighbor },
                ..AntiEntropy::default()
            },
            me,
            incarnation,
            next_seq: 1,
            neighbors: BTreeSet::new(),
            trees: Trees::new(config.tree, config.max_trees),
            versions: Versions::new(config.dedupe_window, config.max_incarnations),
            holdback: Holdback::default(),
            cache: PayloadCache::new(config.cache_max_messages, config.cache_max_bytes, config.cache_max_age),
            missing: HashMap::new(),
            missing_order: VecDeque::new(),
            missing_owned: HashMap::new(),
            served: HashMap::new(),
            served_order: VecDeque::new(),
            ihave_queue: BTreeMap::new(),
            rtt: BTreeMap::new(),
            lag: Lag::default(),
            grafted: HashMap::new(),
            grafted_order: VecDeque::new(),
            ihave_armed: false,
            next_expiry: None,
            stats: Stats { graft_timeout_us: config.graft_timeout_1.as_micros() as u64, ..Stats::default() },
            out: Vec::new(),
            config,
        }
    }

    /// Neighbours on the tree of `origin` (payloads from it go here); with a shared tree
    /// the origin does not matter.
    pub fn eager_peers_for(&self, origin: &P) -> BTreeSet<P> {
        self.neighbors.iter().filter(|p| !self.trees.is_lazy(origin, p)).cloned().collect()
    }

    /// Neighbours off the tree of `origin` (announcements go here).
    pub fn lazy_peers_for(&self, origin: &P) -> BTreeSet<P> {
        self.neighbors.iter().filter(|p| self.trees.is_lazy(origin, p)).cloned().collect()
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

    /// The transport's smoothed round-trip estimate to neighbour `peer` (ignored for
    /// non-neighbours; forgotten on NeighborDown). Sets the Graft retry wait
    /// ([`Config::graft_timeout_2`]).
    pub fn set_rtt(&mut self, peer: P, rtt: Duration) {
        if self.neighbors.contains(&peer) {
            self.rtt.insert(peer, rtt);
        }
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
        self.cache.len()
    }

    /// Record `(origin, incarnation, seq)` as seen without delivering it: what a node
    /// delivered before a restart (the host reads it back from its data dir).
    pub fn restore_delivered(&mut self, origin: &P, incarnation: u64, seq: u64) {
        // A restarted node catches up on what it missed: it is not new.
        self.not_new();
        if self.versions.check(origin, incarnation, seq) == Seen::No {
            self.stats.dedupe_window_overflows += self.versions.mark(origin, incarnation, seq);
        }
    }

    /// Raise the version vector to `heads` (every seq up to each head counts as seen, and
    /// is never delivered again): a host that keeps the vector rather than one record per
    /// delivery restores it this way. Keys beyond [`Config::max_incarnations`] per origin
    /// make room as new incarnations do. The node is then taken as restarted
    /// ([`State::restarted`]): it catches up on what it missed.
    pub fn restore_version_vector(&mut self, heads: &[Head<P>]) {
        self.not_new();
        for h in heads {
            self.versions.raise(&(h.origin.clone(), h.incarnation), h.seq);
        }
    }

    /// The message store (to hand over to the next life of a restarted node, say).
    pub fn store(&self) -> &dyn MessageStore<P> {
        self.store.as_ref()
    }

    /// This node lived before (a restart from a data dir): it catches up on everything it
    /// missed within retention, instead of getting messages from its join on as a node
    /// that joins for the first time does ([`Config::replay_history`]).
    pub fn restarted(&mut self) {
        self.not_new();
    }

    /// This node catches up on what it missed: no history is taken as seen.
    fn not_new(&mut self) {
        self.anti_entropy.fresh = Fresh::No;
        self.anti_entropy.adopt = Adopt::default();
    }

    /// Replace the counters with `stats`: those a node kept in its data dir before a
    /// restart (call it after [`State::restore_delivered`]).
    pub fn restore_stats(&mut self, stats: Stats) {
        self.stats = stats;
    }

    /// What the message store holds.
    pub fn store_size(&self) -> StoreSize {
        self.store.size()
    }

    /// The version vector, in key order: for every (origin, incarnation) kept, the head
    /// (every seq up to it was seen here). An application keeps one as a cursor for
    /// [`State::read_after`].
    pub fn version_vector(&self) -> Vec<Head<P>> {
        let piece = self.versions.piece(None, usize::MAX);
        piece.into_iter().map(|((origin, incarnation), seq)| Head { origin, incarnation, seq }).collect()
    }

    /// Messages in the store after `cursor` (a version vector the application got from
    /// [`State::version_vector`] or built from what it processed): for each (origin,
    /// incarnation) in the version vector, the stored ones with a seq above the cursor's
    /// head (above 0 for a key the cursor lacks), oldest first, in key order. At most `max`
    /// messages and, beyond the first, `max_bytes` of payload; the `bool` says the page
    /// was full (there may be more: ask again with the cursor advanced over it). A message evicted by retention, or of an incarnation the version vector
    /// no longer keeps ([`Config::max_incarnations`]), is not returned.
    pub fn read_after(
        &self,
        cursor: &BTreeMap<(P, u64), u64>,
        max: usize,
        max_bytes: usize,
    ) -> (Vec<Envelope<P>>, bool) {
        let mut out: Vec<Envelope<P>> = Vec::new();
        let mut bytes = 0usize;
        for (key, _) in self.versions.between(None, None) {
            let from = cursor.get(&key).copied().unwrap_or(0);
            let room = max.saturating_sub(out.len());
            if room == 0 || (!out.is_empty() && bytes >= max_bytes) {
                return (out, true);
            }
            let found = self.store.range(&key.0, key.1, from, room, max_bytes.saturating_sub(bytes).max(1));
            bytes += found.iter().map(|e| e.payload.len()).sum::<usize>();
            out.extend(found);
        }
        let full = out.len() >= max || (!out.is_empty() && bytes >= max_bytes);
        (out, full)
    }

    /// Entries (origin, incarnation) in the version vector.
    pub fn versions_len(&self) -> usize {
        self.versions.len()
    }

    /// The version vector's head of `(origin, incarnation)`: every seq up to it was seen.
    pub fn head(&self, origin: &P, incarnation: u64) -> u64 {
        self.versions.head(&(origin.clone(), incarnation))
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
        self.trees.set_kind(tree);
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Broadcast `payload`: eager push to the eager set, IHave to the lazy set (paper
    /// Alg. 1, `Broadcast`). Returns the new message's id and the outputs. The same as
    /// [`State::stage`] then [`State::flush_staged`].
    #[must_use = "the outputs must be performed, in order"]
    pub fn broadcast(&mut self, now: Instant, payload: Bytes) -> (MessageId, std::vec::Drain<'_, Output<P>>) {
        let id = self.stage(payload);
        (id, self.flush_staged(now))
    }

    /// Number our next message and keep it until [`State::flush_staged`], which signs
    /// every staged message at once (one proof over the lot when the [`Authenticator`]
    /// batches). Returns its id, final already: the proof is not part of it.
    pub fn stage(&mut self, payload: Bytes) -> MessageId {
        let envelope = Envelope::new(self.me.clone(), self.incarnation, self.next_seq, payload);
        self.next_seq += 1;
        let id = envelope.id();
        self.mark_seen(&envelope);
        self.staged.push((id, envelope));
        id
    }

    /// How many messages [`State::stage`] numbered that were not sent yet.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Sign the staged messages and broadcast them, oldest first.
    #[must_use = "the outputs must be performed, in order"]
    pub fn flush_staged(&mut self, now: Instant) -> std::vec::Drain<'_, Output<P>> {
        self.expire(now);
        let mut staged = std::mem::take(&mut self.staged);
        if let Some(auth) = self.auth.as_mut() {
            let ids: Vec<MessageId> = staged.iter().map(|(id, _)| *id).collect();
            for ((_, e), proof) in staged.iter_mut().zip(auth.sign(&ids)) {
                e.proof = proof;
            }
        }
        for (id, envelope) in staged.drain(..) {
            self.stats.broadcasts += 1;
            if self.config.deliver_own {
                self.stats.delivered += 1;
                self.deliver(now, Delivery { id, envelope: envelope.clone(), hops: 0, from: None, recovered: false });
            }
            self.store_append(now, id, &envelope);
            self.push(now, id, &envelope, 0, None);
            self.cache_insert(now, id, Cached { envelope, send_round: 0, parent: None, at: None });
        }
        self.staged = staged;
        self.out.drain(..)
    }

    /// Sign our messages and check everyone's proofs with `auth` (see [`Authenticator`]);
    /// from now on a message whose proof fails is dropped ([`Stats::forged`]) and its
    /// sender penalised ([`Output::Penalize`]).
    pub fn set_authenticator(&mut self, auth: Box<dyn Authenticator<P>>) {
        self.auth = Some(auth);
    }

    /// Check the content of every authentic message with `validator` (see [`Validator`]).
    pub fn set_validator(&mut self, validator: Box<dyn Validator<P>>) {
        self.validator = Some(validator);
    }

    /// Run the [`Authenticator`] then the [`Validator`] on a message not seen before, and
    /// carry out their verdict. True: take it. False: it was dropped (counted; a forged one
    /// is left unseen so the real one still gets in, a rejected or ignored one is settled).
    fn admit(&mut self, now: Instant, from: &P, envelope: &Envelope<P>, id: &MessageId) -> bool {
        if !self.authentic(from, envelope, id) {
            return false;
        }
        let verdict = self.validator.as_mut().map_or(Validation::Accept, |v| v.validate(envelope, id));
        match verdict {
            Validation::Accept => return true,
            Validation::Reject => {
                self.stats.rejected += 1;
                self.out.push(Output::Penalize { peer: from.clone(), reason: Penalty::Rejected });
            }
            Validation::Ignore => self.stats.ignored += 1,
        }
        self.mark_seen(envelope);
        self.forget_missing(id);
        self.settle(now, envelope);
        let settled = Settled {
            origin: envelope.origin.clone(),
            incarnation: envelope.incarnation,
            seq: envelope.seq,
            payload_hash: *blake3::hash(&envelope.payload).as_bytes(),
            proof: envelope.proof.clone(),
        };
        self.remember_settled(settled, SettledBy::Us);
        false
    }

    /// Whether the [`Authenticator`] (if any) takes `envelope`'s proof; if not, it is
    /// counted as forged and `from` penalised.
    fn authentic(&mut self, from: &P, envelope: &Envelope<P>, id: &MessageId) -> bool {
        let ok = self.auth.as_mut().is_none_or(|auth| auth.verify(envelope, id));
        if !ok {
            self.stats.forged += 1;
            self.out.push(Output::Penalize { peer: from.clone(), reason: Penalty::Forged });
        }
        ok
    }

    /// Keep `s` to pass on in repairs, forgetting the oldest past [`Config::max_missing`].
    fn remember_settled(&mut self, s: Settled<P>, by: SettledBy) {
        let key = (s.origin.clone(), s.incarnation, s.seq);
        if self.settled.insert(key.clone(), (s, by)).is_none() {
            self.settled_order.push_back(key);
            if self.settled_order.len() > self.config.max_missing.max(1)
                && let Some(old) = self.settled_order.pop_front()
                && self.settled.remove(&old).is_some()
            {
                self.stats.settled_forgotten += 1;
            }
        }
    }

    /// A neighbour's [`Settled`] record: checked like a message (the origin's proof over
    /// the id), then marked seen and released from FIFO order. False if its proof failed.
    fn on_settled(&mut self, now: Instant, from: &P, s: Settled<P>) -> bool {
        if self.versions.check(&s.origin, s.incarnation, s.seq) != Seen::No {
            return true;
        }
        let id = s.id();
        let envelope = s.envelope();
        if !self.authentic(from, &envelope, &id) {
            return false;
        }
        self.stats.settled_received += 1;
        self.mark_seen(&envelope);
        self.forget_missing(&id);
        self.settle(now, &envelope);
        self.remember_settled(s, SettledBy::Neighbor);
        true
    }

    /// Process one input at `now`. Never panics on peer input.
    #[must_use = "the outputs must be performed, in order"]
    pub fn handle(&mut self, now: Instant, input: Input<P>) -> std::vec::Drain<'_, Output<P>> {
        self.expire(now);
        match input {
            Input::Message { from, message } => self.on_message(now, from, message),
            Input::Timer(Timer::Graft { id, attempt }) => self.on_graft_timer(now, id, attempt),
            Input::Timer(Timer::IHaveFlush) => {
                self.ihave_armed = false;
                self.flush_ihave();
            }
            Input::Timer(Timer::AntiEntropy) => self.on_anti_entropy_timer(now),
            Input::NeighborUp(p) => {
                if p != self.me {
                    // A new neighbour starts eager in every tree.
                    self.trees.neighbor_up(&p);
                    self.neighbors.insert(p.clone());
                    self.anti_entropy.neighbor_since.insert(p.clone(), now);
                    self.catch_up(now, p.clone());
                    // Anti-entropy at once with a new neighbour, from the first key.
                    if let Some(every) = self.config.anti_entropy_interval {
                        if self.anti_entropy.fresh == Fresh::BeforeFirstNeighbor {
                            self.anti_entropy.fresh = Fresh::Until(now + every.saturating_mul(2));
                        }
                        self.start_exchange(now, p, Trigger::NeighborUp);
                        self.arm_anti_entropy(now);
                    }
                }
            }
            Input::NeighborDown(p) => self.on_neighbor_down(now, p),
        }
        self.out.drain(..)
    }

    fn on_neighbor_down(&mut self, now: Instant, p: P) {
        self.neighbors.remove(&p);
        if let Some(open) = self.anti_entropy.exchanges.remove(&p) {
            self.out.push(Output::Exchanged(open.close(now, false)));
        }
        for (origin, q) in self.trees.neighbor_down(&p) {
            // The tree parent of `origin` failed: graft at once the lazy neighbour that
            // announced this origin's messages at the lowest round, so the next message
            // need not wait for a Graft timer (a departure from the paper, where the
            // repair waits for the next IHave and timer 1).
            self.stats.parent_repairs += 1;
            self.stats.grafts_sent += 1;
            self.out.push(Output::Send { to: q, message: Message::Graft { id: None, origin } });
        }
        self.ihave_queue.remove(&p);
        self.rtt.remove(&p);
        self.anti_entropy.last_sync.remove(&p);
        self.anti_entropy.neighbor_since.remove(&p);
        self.anti_entropy.budget.remove(&p);
        for m in self.missing.values_mut() {
            m.announcers.retain(|a| a != &p);
            if m.best.as_ref().is_some_and(|(b, _)| b == &p) {
                m.best = None;
            }
        }
    }

    /// Move `p` off the tree of `origin` (only a neighbour, only with Plumtree), and keep
    /// an upstream for that tree if `p` was its last eager link.
    fn set_lazy(&mut self, origin: &P, p: &P) {
        if self.config.mode != Mode::Plumtree || !self.neighbors.contains(p) {
            return;
        }
        if self.trees.set_lazy(origin, p) {
            self.stats.trees_evicted += 1;
        }
        self.keep_upstream(origin, p);
    }

    /// The wait after a message's first IHave before grafting (module `lag`).
    fn graft_timeout_1(&self) -> Duration {
        self.lag.timeout(self.config.graft_timeout_1, self.config.graft_timeout_max)
    }

    /// A payload from neighbour `from` for a message announced first at `m.since`: a lag
    /// sample unless `from` was grafted for it (Karn's rule, module `lag`).
    fn lag_sample(&mut self, now: Instant, from: &P, id: MessageId, m: &Missing<P>) {
        if m.grafted.contains(from) {
            // The Graft's answer: remember it until the tree's copy shows up, if it does.
            if self.grafted_order.len() >= self.config.max_missing.max(1)
                && let Some(old) = self.grafted_order.pop_front()
                && self.grafted.remove(&old).is_some()
            {
                self.stats.graft_lag_forgotten += 1;
            }
            self.grafted_order.push_back(id);
            self.grafted.insert(id, Grafted { since: m.since, peers: m.grafted.clone() });
            return;
        }
        if !m.grafted.is_empty() {
            self.stats.grafts_overtaken += 1;
        }
        self.sample_lag(now.saturating_duration_since(m.since));
    }

    /// A duplicate of message `id` from neighbour `from`: if a Graft delivered it and
    /// `from` was not grafted, the tree delivered it too, late: a lag sample.
    fn late_tree_copy(&mut self, now: Instant, from: &P, id: &MessageId) {
        let Some(g) = self.grafted.get(id) else { return };
        if g.peers.contains(from) {
            return;
        }
        let since = g.since;
        self.grafted.remove(id);
        self.stats.grafts_overtaken += 1;
        self.sample_lag(now.saturating_duration_since(since));
    }

    fn sample_lag(&mut self, lag: Duration) {
        self.lag.sample(lag);
        self.stats.graft_timeout_us = self.graft_timeout_1().as_micros() as u64;
    }

    /// After `not` left the tree of `origin` ([`State::set_lazy`]): if no link
    /// of that tree is eager any more, graft at once the lazy neighbour that announced the
    /// origin at the lowest round, so the next message is pushed here instead of waiting
    /// for an IHave and timer 1. Only with one tree per origin (the rounds compare).
    fn keep_upstream(&mut self, origin: &P, not: &P) {
        if self.config.tree != Tree::PerOrigin || *origin == self.me {
            return;
        }
        if !self.neighbors.iter().all(|p| self.trees.is_lazy(origin, p)) {
            return;
        }
        let Some(q) = self.trees.best_announcer(origin, not) else { return };
        self.trees.set_eager(origin, &q);
        self.trees.set_parent(origin, &q);
        self.stats.upstream_repairs += 1;
        self.stats.grafts_sent += 1;
        self.out.push(Output::Send { to: q, message: Message::Graft { id: None, origin: origin.clone() } });
    }

    /// How long to wait for the payload after grafting `p` (paper §3.6: about one round
    /// trip; never less than [`Config::graft_timeout_2`]).
    fn graft_wait(&self, p: &P) -> Duration {
        let rtt = self.rtt.get(p).copied().unwrap_or_default();
        self.config.graft_timeout_2.max(rtt.saturating_mul(2))
    }

    fn on_message(&mut self, now: Instant, from: P, message: Message<P>) {
        if !self.neighbors.contains(&from) {
            // Not a neighbour (yet, or any more): still take payloads, but do not let it
            // shape the tree.
            if let Message::Gossip { round, envelope } = message {
                self.on_gossip(now, Sender::Stranger, from, round, envelope);
            }
            return;
        }
        match message {
            Message::Gossip { round, envelope } => self.on_gossip(now, Sender::Neighbor, from, round, envelope),
            Message::IHave(anns) => self.on_ihave(now, from, anns),
            Message::Graft { id, origin } => {
                self.stats.grafts_received += 1;
                self.trees.set_eager(&origin, &from);
                if let Some(id) = id {
                    if self.served.get(&(from.clone(), id)).is_some_and(|n| *n >= self.config.max_serves) {
                        self.stats.grafts_refused += 1;
                        return;
                    }
                    let message = match self.cache.get(&id) {
                        Some(c) => Some(Message::Gossip { round: c.send_round, envelope: c.envelope.clone() }),
                        // Evicted from the cache but still within retention: the round it
                        // travelled at is forgotten, so it goes out as from the origin.
                        None => self.store.get(&id).map(|envelope| {
                            self.stats.store_grafts += 1;
                            Message::Gossip { round: 0, envelope }
                        }),
                    };
                    match message {
                        // Only messages served are counted (a Graft for an unknown id
                        // takes no room in the record).
                        Some(message) if self.may_serve(&from, id) => {
                            self.stats.gossip_sent += 1;
                            self.out.push(Output::Send { to: from, message });
                        }
                        Some(_) => self.stats.grafts_refused += 1,
                        None => self.stats.graft_misses += 1,
                    }
                }
            }
            Message::Prune { origin } => {
                self.stats.prunes_received += 1;
                self.set_lazy(&origin, &from);
            }
            Message::Digest { heads, after, upto, reply, joined, ask } => {
                self.on_digest(now, from, heads, (after, upto), reply, joined, ask)
            }
            Message::Repair { after, ask, envelopes, settled, more } => {
                for s in settled {
                    if !self.on_settled(now, &from, s) {
                        return;
                    }
                }
                self.on_repair(now, from, (ask, after), envelopes, more)
            }
        }
    }

    fn on_gossip(&mut self, now: Instant, sender: Sender, from: P, round: u32, envelope: Envelope<P>) {
        self.stats.gossip_received += 1;
        let id = envelope.id();
        let neighbor = sender == Sender::Neighbor;
        match self.versions.check(&envelope.origin, envelope.incarnation, envelope.seq) {
            Seen::Stale => {
                self.stats.stale_incarnation += 1;
                return;
            }
            Seen::Yes if self.settled_by_neighbor(&envelope) => {
                // Settled by a neighbour's word, and here is the payload after all: our
                // own validator decides.
                self.settled.remove(&(envelope.origin.clone(), envelope.incarnation, envelope.seq));
            }
            Seen::Yes => {
                self.stats.duplicates += 1;
                if neighbor {
                    self.late_tree_copy(now, &from, &id);
                    if self.config.mode == Mode::Plumtree {
                        self.stats.prunes_sent += 1;
                        let prune = Message::Prune { origin: envelope.origin.clone() };
                        self.out.push(Output::Send { to: from.clone(), message: prune });
                        self.set_lazy(&envelope.origin, &from);
                    }
                }
                return;
            }
            Seen::No => {}
        }
        if !self.admit(now, &from, &envelope, &id) {
            return;
        }
        self.mark_seen(&envelope);
        let missing = self.forget_missing(&id);
        if let Some(m) = missing.as_ref().filter(|_| neighbor) {
            self.lag_sample(now, &from, id, m);
        }
        self.stats.delivered += 1;
        if neighbor {
            if self.config.mode == Mode::Plumtree && self.trees.is_lazy(&envelope.origin, &from) {
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
            self.trees.set_eager(&envelope.origin, &from);
            self.trees.set_parent(&envelope.origin, &from);
        }
        self.deliver(
            now,
            Delivery {
                id,
                envelope: envelope.clone(),
                hops: round.saturating_add(1),
                from: Some(from.clone()),
                recovered: false,
            },
        );
        self.store_append(now, id, &envelope);
        let send_round = round.saturating_add(1);
        self.push(now, id, &envelope, send_round, Some(&from));
        // Paper §3.8 (Algorithm 2): an IHave that came before the payload and announced it
        // `threshold` rounds earlier than the tree delivered it. Only with one tree per
        // origin: on a shared tree the rounds of one origin say nothing about the next
        // origin's, and the swaps thrashed (docs/performance.md).
        let swap = match (neighbor, self.config.tree, missing.and_then(|m| m.best)) {
            (true, Tree::PerOrigin, Some(best)) => Some((envelope.origin.clone(), best)),
            _ => None,
        };
        self.cache_insert(now, id, Cached { envelope, send_round, parent: Some(from), at: None });
        if let Some((origin, (announcer, announced))) = swap {
            self.maybe_swap_parent(id, &origin, round, announcer, announced);
        }
    }

    fn on_ihave(&mut self, now: Instant, from: P, anns: Vec<Announcement<P>>) {
        for a in anns {
            self.stats.announcements_received += 1;
            self.trees.announced(&a.origin, &from, a.round);
            match self.versions.check(&a.origin, a.incarnation, a.seq) {
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
            let owned = self.missing_owned.entry(from.clone()).or_default();
            if *owned >= (self.config.max_missing / MISSING_SHARE).max(1) {
                self.stats.missing_over_share += 1;
                continue;
            }
            *owned += 1;
            self.missing.insert(
                a.id,
                Missing {
                    owner: from.clone(),
                    origin: a.origin.clone(),
                    incarnation: a.incarnation,
                    seq: a.seq,
                    since: now,
                    announcers: VecDeque::from([from.clone()]),
                    grafted: Vec::new(),
                    best: Some((from.clone(), a.round)),
                    attempt: 0,
                    armed: true,
                },
            );
            self.missing_order.push_back((a.id, now));
            self.out
                .push(Output::Timer { at: now + self.graft_timeout_1(), timer: Timer::Graft { id: a.id, attempt: 0 } });
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
        self.trees.set_parent(origin, &announcer);
        self.stats.optimizations += 1;
        self.stats.grafts_sent += 1;
        self.stats.prunes_sent += 1;
        self.trees.set_eager(origin, &announcer);
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
                m.grafted.push(p.clone());
                let origin = m.origin.clone();
                let timer = Timer::Graft { id, attempt: m.attempt };
                let wait = self.graft_wait(&p);
                self.out.push(Output::Timer { at: now + wait, timer });
                self.stats.grafts_sent += 1;
                self.trees.set_eager(&origin, &p);
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
        self.trees.touch(&envelope.origin);
        let mut lazy = Vec::new();
        for p in &self.neighbors {
            if Some(p) == except {
                continue;
            }
            if !flood && self.trees.is_lazy(&envelope.origin, p) {
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
        let anns: Vec<Announcement<P>> = self
            .cache
            .recent(now, self.config.catch_up_window, self.config.catch_up_max)
            .map(|(id, c)| Announcement {
                id,
                origin: c.envelope.origin.clone(),
                incarnation: c.envelope.incarnation,
                seq: c.envelope.seq,
                round: c.send_round,
            })
            .collect();
        if !anns.is_empty() {
            self.stats.catch_ups += 1;
            self.stats.announcements_sent += anns.len() as u64;
            // In frames of at most `ihave_batch_max`, as every IHave: a receiver refuses
            // control frames over 64 KiB, and 1,024 announcements are 75–95 KiB.
            for chunk in anns.chunks(self.config.ihave_batch_max.max(1)) {
                self.stats.ihave_sent += 1;
                self.out.push(Output::Send { to: p.clone(), message: Message::IHave(chunk.to_vec()) });
            }
        }
    }

    fn flush_ihave(&mut self) {
        for (p, anns) in std::mem::take(&mut self.ihave_queue) {
            self.send_ihave(p, anns);
        }
    }

    /// Send `p` the announcements queued for it now, before a digest: a digest must not
    /// overtake them. A new node takes a digest's heads it does not know as history
    /// (marked seen) unless an announcement named the message first; a message announced
    /// after the digest was then dropped as a duplicate and never delivered there.
    fn flush_ihave_to(&mut self, p: &P) {
        if let Some(anns) = self.ihave_queue.remove(p) {
            self.send_ihave(p.clone(), anns);
        }
    }

    fn send_ihave(&mut self, to: P, anns: Vec<Announcement<P>>) {
        if anns.is_empty() {
            return;
        }
        self.stats.ihave_sent += 1;
        self.stats.announcements_sent += anns.len() as u64;
        self.out.push(Output::Send { to, message: Message::IHave(anns) });
    }

    /// Whether `e` was marked seen only because a neighbour settled it.
    fn settled_by_neighbor(&self, e: &Envelope<P>) -> bool {
        self.settled
            .get(&(e.origin.clone(), e.incarnation, e.seq))
            .is_some_and(|(s, by)| *by == SettledBy::Neighbor && s.payload_hash == *blake3::hash(&e.payload).as_bytes())
    }

    /// Remove the missing record of `id`, if any, from the table and its owner's share.
    fn forget_missing(&mut self, id: &MessageId) -> Option<Missing<P>> {
        let m = self.missing.remove(id)?;
        if let Some(n) = self.missing_owned.get_mut(&m.owner) {
            *n -= 1;
            if *n == 0 {
                self.missing_owned.remove(&m.owner);
            }
        }
        Some(m)
    }

    fn mark_seen(&mut self, e: &Envelope<P>) {
        self.stats.dedupe_window_overflows += self.versions.mark(&e.origin, e.incarnation, e.seq);
    }

    /// Hand `d` to the application, or hold it back until its origin's earlier messages
    /// were delivered ([`crate::Ordering::PerOrigin`]).
    fn deliver(&mut self, now: Instant, d: Delivery<P>) {
        if self.config.ordering == crate::Ordering::None || d.from.is_none() {
            self.out.push(Output::Deliver(d));
            return;
        }
        let key = (d.envelope.origin.clone(), d.envelope.incarnation);
        let seq = d.envelope.seq;
        let next = *self.holdback.next.entry(key.clone()).or_insert(seq);
        if seq < next {
            // Its gap was given up earlier: deliver it late rather than never.
            self.out.push(Output::Deliver(d));
            return;
        }
        if seq > next {
            self.stats.ordering_held += 1;
            self.holdback.held.entry(key).or_default().insert(seq, (now, Some(d)));
            self.holdback.count += 1;
            if self.holdback.count > self.config.ordering_max_held {
                self.skip_oldest_gap();
            }
            return;
        }
        self.out.push(Output::Deliver(d));
        self.release(key, seq + 1);
    }

    /// A message that will never be delivered (rejected or ignored) no longer holds back
    /// its origin's later ones ([`crate::Ordering::PerOrigin`]).
    fn settle(&mut self, now: Instant, e: &Envelope<P>) {
        if self.config.ordering == crate::Ordering::None {
            return;
        }
        let key = (e.origin.clone(), e.incarnation);
        let next = *self.holdback.next.entry(key.clone()).or_insert(e.seq);
        if e.seq == next {
            self.release(key, e.seq + 1);
        } else if e.seq > next {
            // Held as a gap filler: released in turn, delivering nothing.
            self.holdback.held.entry(key).or_default().insert(e.seq, (now, None));
            self.holdback.count += 1;
            if self.holdback.count > self.config.ordering_max_held {
                self.skip_oldest_gap();
            }
        }
    }

    /// Deliver the held messages of `key` from `next` on while they are contiguous.
    fn release(&mut self, key: Key<P>, mut next: u64) {
        if let Some(held) = self.holdback.held.get_mut(&key) {
            while let Some((_, d)) = held.remove(&next) {
                self.holdback.count -= 1;
                if let Some(d) = d {
                    self.out.push(Output::Deliver(d));
                }
                next += 1;
            }
            if held.is_empty() {
                self.holdback.held.remove(&key);
            }
        }
        self.holdback.next.insert(key, next);
    }

    /// Give up the gap before the oldest held message (by hold time), counted.
    fn skip_oldest_gap(&mut self) {
        let oldest = self
            .holdback
            .held
            .iter()
            .filter_map(|(k, h)| h.iter().next().map(|(seq, (t, _))| (*t, k.clone(), *seq)))
            .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        if let Some((_, key, seq)) = oldest {
            self.stats.ordering_gaps_skipped += 1;
            self.release(key, seq);
        }
    }

    /// Give up every gap whose first held message waited past `ordering_max_wait`.
    fn expire_holdback(&mut self, now: Instant) {
        let max = self.config.ordering_max_wait;
        let due: Vec<(Key<P>, u64)> = self
            .holdback
            .held
            .iter()
            .filter_map(|(k, h)| h.iter().next().map(|(seq, (t, _))| (k, *seq, *t)))
            .filter(|(_, _, t)| now.saturating_duration_since(*t) > max)
            .map(|(k, seq, _)| (k.clone(), seq))
            .collect();
        for (key, seq) in due {
            self.stats.ordering_gaps_skipped += 1;
            self.release(key, seq);
        }
    }

    fn store_append(&mut self, now: Instant, id: MessageId, e: &Envelope<P>) {
        if self.store.append(now, id, e).is_err() {
            self.stats.store_errors += 1;
        }
    }

    fn arm_anti_entropy(&mut self, now: Instant) {
        if let Some(every) = self.config.anti_entropy_interval
            && !self.anti_entropy.armed
            && !self.neighbors.is_empty()
        {
            self.anti_entropy.armed = true;
            self.out.push(Output::Timer { at: now + every, timer: Timer::AntiEntropy });
        }
    }

    /// One periodic exchange: the next piece of the version vector to a neighbour off
    /// the tree of the piece's origins (the tree already pushes their messages to the
    /// others), the least recently synced among those; a neighbour not synced for
    /// [`OVERDUE_INTERVALS`] goes first. Ties in neighbour order.
    fn on_anti_entropy_timer(&mut self, now: Instant) {
        self.anti_entropy.armed = false;
        let every = self.config.anti_entropy_interval.unwrap_or(Duration::from_secs(1));
        let overdue = every.saturating_mul(OVERDUE_INTERVALS);
        let max = self.config.anti_entropy_max_heads.max(1);
        let origins: BTreeSet<P> =
            self.versions.piece(self.anti_entropy.cursor.as_ref(), max).into_iter().map(|((o, _), _)| o).collect();
        let last = &self.anti_entropy.last_sync;
        let partner = self
            .neighbors
            .iter()
            .min_by_key(|p| {
                let synced = last.get(*p).copied();
                let due = synced.is_none_or(|t| now.saturating_duration_since(t) >= overdue);
                let on_tree = origins.iter().filter(|o| !self.trees.is_lazy(o, p)).count();
                (!due, on_tree, synced)
            })
            .cloned();
        if let Some(p) = partner {
            self.start_exchange(now, p, Trigger::Periodic);
        }
        self.arm_anti_entropy(now);
    }

    /// Start an anti-entropy exchange with neighbour `peer` now: the application's
    /// `gossipWith(peer)`. Every piece of the version vector goes out at once (a vector of
    /// `n` entries takes ⌈n / [`Config::anti_entropy_max_heads`]⌉ digests); the exchange
    /// is reported in an [`Output::Exchanged`] with [`Trigger::Requested`] when the
    /// neighbour has answered them all, or given up as incomplete after
    /// [`EXCHANGE_TIMEOUT_INTERVALS`] anti-entropy intervals. An exchange with `peer`
    /// still open is reported incomplete and replaced.
    ///
    /// # Errors
    /// [`ExchangeError::NotNeighbor`] when `peer` is not a neighbour, [`ExchangeError::Off`]
    /// when anti-entropy is off.
    #[must_use = "the outputs must be performed, in order"]
    pub fn exchange(&mut self, now: Instant, peer: P) -> Result<std::vec::Drain<'_, Output<P>>, ExchangeError> {
        if self.config.anti_entropy_interval.is_none() {
            return Err(ExchangeError::Off);
        }
        if !self.neighbors.contains(&peer) {
            return Err(ExchangeError::NotNeighbor);
        }
        self.expire(now);
        self.start_exchange(now, peer, Trigger::Requested);
        Ok(self.out.drain(..))
    }

    /// Open an exchange with `peer` and send its digests: the piece at the periodic cursor
    /// ([`Trigger::Periodic`]), the first piece ([`Trigger::NeighborUp`]) or all of them
    /// ([`Trigger::Requested`]).
    fn start_exchange(&mut self, now: Instant, peer: P, trigger: Trigger) {
        if let Some(old) = self.anti_entropy.exchanges.remove(&peer) {
            self.out.push(Output::Exchanged(old.close(now, false)));
        }
        let mut open = Open::new(peer.clone(), trigger, now);
        let mut after = match trigger {
            Trigger::Periodic => self.anti_entropy.cursor.clone(),
            Trigger::NeighborUp | Trigger::Requested => None,
        };
        loop {
            open.report.digests += 1;
            let (next, ask) = self.send_digest(now, peer.clone(), after.clone(), true);
            open.pending.insert(ask, after);
            if trigger == Trigger::Periodic {
                self.anti_entropy.cursor = next;
                break;
            }
            match next {
                Some(k) if trigger == Trigger::Requested => after = Some(k),
                _ => break,
            }
        }
        self.anti_entropy.exchanges.insert(peer, open);
    }

    /// Give up the exchanges that waited [`EXCHANGE_TIMEOUT_INTERVALS`] for an answer.
    fn expire_exchanges(&mut self, now: Instant) {
        let every = self.config.anti_entropy_interval.unwrap_or(Duration::from_secs(1));
        let timeout = every.saturating_mul(EXCHANGE_TIMEOUT_INTERVALS);
        let due: Vec<P> = self
            .anti_entropy
            .exchanges
            .iter()
            .filter(|(_, o)| now.saturating_duration_since(o.last) >= timeout)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            if let Some(open) = self.anti_entropy.exchanges.remove(&p) {
                self.out.push(Output::Exchanged(open.close(now, false)));
            }
        }
    }

    /// Send `to` the piece of our version vector after key `after`; returns where the
    /// next piece starts (`None`: the vector was covered to its end) and the ask's number.
    fn send_digest(&mut self, now: Instant, to: P, after: Option<Key<P>>, reply: bool) -> (Option<Key<P>>, u32) {
        let max = self.config.anti_entropy_max_heads.max(1);
        let piece = self.versions.piece(after.as_ref(), max);
        let upto = if piece.len() < max { None } else { piece.last().map(|(k, _)| k.clone()) };
        let heads: Vec<Head<P>> = piece
            .into_iter()
            .map(|((origin, incarnation), seq)| {
                let seq = self.advertised(&(origin.clone(), incarnation), seq);
                Head { origin, incarnation, seq }
            })
            .collect();
        self.flush_ihave_to(&to);
        self.stats.digests_sent += 1;
        self.stats.digest_heads_sent += heads.len() as u64;
        self.anti_entropy.last_sync.insert(to.clone(), now);
        let joined = self.wants_no_history(now);
        let ask = self.next_ask();
        let message = Message::Digest { heads, after, upto: upto.clone(), reply, joined, ask };
        self.out.push(Output::Send { to, message });
        (upto, ask)
    }

    /// A number for the next digest.
    fn next_ask(&mut self) -> u32 {
        self.anti_entropy.asks = self.anti_entropy.asks.wrapping_add(1);
        self.anti_entropy.asks
    }

    /// Whether this node joined for the first time within the last two anti-entropy
    /// intervals (and wants no history, [`Config::replay_history`] being off).
    fn is_fresh(&self, now: Instant) -> bool {
        match self.anti_entropy.fresh {
            Fresh::BeforeFirstNeighbor => true,
            Fresh::Until(t) => now < t,
            Fresh::No => false,
        }
    }

    /// Whether our digests say we want no history: new, or still to take some as seen.
    fn wants_no_history(&self, now: Instant) -> bool {
        self.is_fresh(now) || !self.anti_entropy.adopt.heads.is_empty()
    }

    /// The head our digests give for `key`, whose seen watermark is `head`: at least the
    /// history still to be taken as seen.
    fn advertised(&self, key: &Key<P>, head: u64) -> u64 {
        self.anti_entropy.adopt.heads.get(key).map_or(head, |h| head.max(*h))
    }

    /// Take as seen the history heard of at least [`Config::anti_entropy_grace`] ago, but
    /// not over a message announced to us and still missing: an announcement names a
    /// message sent after our join, or one of the last seconds before it (the catch-up).
    fn adopt_history(&mut self, now: Instant) {
        let grace = self.config.anti_entropy_grace;
        let due = |order: &VecDeque<(Instant, Key<P>)>| {
            order.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) >= grace)
        };
        if !due(&self.anti_entropy.adopt.order) {
            return;
        }
        let announced = self.lowest_announced();
        while due(&self.anti_entropy.adopt.order) {
            let Some((_, key)) = self.anti_entropy.adopt.order.pop_front() else { break };
            let Some(head) = self.anti_entropy.adopt.heads.remove(&key) else { continue };
            self.versions.raise(&key, below(&announced, &key, head));
            self.stats.history_adopted += 1;
        }
    }

    /// The lowest seq announced to us and still missing, per key.
    fn lowest_announced(&self) -> BTreeMap<Key<P>, u64> {
        let mut announced: BTreeMap<Key<P>, u64> = BTreeMap::new();
        for m in self.missing.values() {
            let lowest = announced.entry((m.origin.clone(), m.incarnation)).or_insert(m.seq);
            *lowest = (*lowest).min(m.seq);
        }
        announced
    }

    /// Whether a digest from `from` is within its budget for this interval.
    fn digest_allowed(&mut self, now: Instant, from: &P) -> bool {
        let window = self.config.anti_entropy_interval.unwrap_or(Duration::from_secs(1));
        let (start, count) = self.anti_entropy.budget.entry(from.clone()).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= window {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= DIGESTS_PER_INTERVAL
    }

    /// A neighbour's piece of its version vector: repair what it lacks of the keys in
    /// `(after, upto]` (oldest first, within the bounds of one repair), and, if asked,
    /// send our heads of the same keys when it has something we lack.
    #[allow(clippy::too_many_arguments)]
    fn on_digest(
        &mut self,
        now: Instant,
        from: P,
        heads: Vec<Head<P>>,
        (after, upto): (Option<Key<P>>, Option<Key<P>>),
        reply: bool,
        joined: bool,
        ask: u32,
    ) {
        self.stats.digests_received += 1;
        if self.config.anti_entropy_interval.is_none() || !self.digest_allowed(now, &from) {
            self.stats.digests_ignored += 1;
            return;
        }
        let theirs: BTreeMap<Key<P>, u64> = heads.into_iter().map(|h| ((h.origin, h.incarnation), h.seq)).collect();
        if self.is_fresh(now) {
            // New here: what was sent before our join is not ours to ask for. It is taken
            // as seen after the grace ([`Adopt`]). An origin life that began after ours
            // (incarnations are start times in ms) has no history from before our join:
            // nothing of it is skipped.
            let room = self.config.max_missing.max(1);
            let announced = self.lowest_announced();
            for (key, head) in &theirs {
                let adopt = &mut self.anti_entropy.adopt;
                if self.versions.knows(key) || key.1 > self.incarnation || adopt.heads.contains_key(key) {
                    continue;
                }
                if adopt.heads.len() >= room {
                    // Its history will be repaired and delivered (as recovered).
                    self.stats.history_over_bound += 1;
                    continue;
                }
                adopt.heads.insert(key.clone(), below(&announced, key, *head));
                adopt.order.push_back((now, key.clone()));
                // Listed in our digests from now on, at the adopted head (nothing marked
                // seen): a neighbour repairs what was announced above it at once.
                self.versions.raise(key, 0);
            }
        }
        let (max, max_bytes) = (self.config.anti_entropy_max_messages.max(1), self.config.anti_entropy_max_bytes);
        let mut envelopes: Vec<Envelope<P>> = Vec::new();
        let mut settled: Vec<Settled<P>> = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        let mine: Vec<(Key<P>, u64)> = self.versions.between(after.as_ref(), upto.as_ref()).collect();
        for (key, my_head) in &mine {
            let Some(their_head) = theirs.get(key).copied().or((!joined).then_some(0)) else {
                // A node that just joined lacks this origin entirely: it wants no history.
                continue;
            };
            if *my_head <= their_head {
                continue;
            }
            let room = max - envelopes.len();
            let room_bytes = max_bytes.saturating_sub(bytes);
            if room == 0 || (room_bytes == 0 && !envelopes.is_empty()) {
                more = true;
                break;
            }
            // What we settled without a payload in that range: the asker stops waiting.
            let lo = (key.0.clone(), key.1, their_head.saturating_add(1));
            let hi = (key.0.clone(), key.1, *my_head);
            settled.extend(self.settled.range(lo..=hi).take(max).map(|(_, (s, _))| s.clone()));
            let mut found = self.store.range(&key.0, key.1, their_head, room, room_bytes.max(1));
            // Messages younger than the grace may still be on their way through the tree:
            // repair up to the first of them (no gaps), the next exchange covers the rest.
            // Only towards a neighbour that was one already when we got them: a newer
            // neighbour cannot be getting them through the tree.
            let grace = self.config.anti_entropy_grace;
            let since = self.anti_entropy.neighbor_since.get(&from).copied();
            if let Some(young) = found.iter().position(|e| {
                self.cache
                    .get(&e.id())
                    .and_then(|c| c.at)
                    .is_some_and(|t| now.saturating_duration_since(t) < grace && since.is_some_and(|s| s < t))
            }) {
                found.truncate(young);
            }
            bytes += found.iter().map(|e| e.payload.len()).sum::<usize>();
            let full = found.len() == room || bytes >= max_bytes;
            envelopes.extend(found);
            if full {
                more = true;
                break;
            }
        }
        // Our heads of the same keys first, if the neighbour is ahead of us on any of
        // them: its answer to them is then counted in its exchange, which our repair
        // below closes.
        let behind = theirs.iter().any(|(k, h)| self.advertised(k, self.versions.head(k)) < *h);
        if reply && behind {
            let max_heads = self.config.anti_entropy_max_heads.max(1);
            let piece: Vec<Head<P>> = mine
                .into_iter()
                .take(max_heads)
                .map(|((origin, incarnation), seq)| {
                    let seq = self.advertised(&(origin.clone(), incarnation), seq);
                    Head { origin, incarnation, seq }
                })
                .collect();
            let upto =
                if piece.len() == max_heads { piece.last().map(|h| (h.origin.clone(), h.incarnation)) } else { upto };
            self.flush_ihave_to(&from);
            self.stats.digests_sent += 1;
            self.stats.digest_heads_sent += piece.len() as u64;
            let joined = self.wants_no_history(now);
            let ask = self.next_ask();
            let message = Message::Digest { heads: piece, after: after.clone(), upto, reply: false, joined, ask };
            self.out.push(Output::Send { to: from.clone(), message });
        }
        // Every digest is answered, with nothing when nothing is missing: the answer ends
        // the piece in the sender's exchange.
        if !envelopes.is_empty() {
            self.stats.repairs_sent += 1;
            self.stats.repaired_sent += envelopes.len() as u64;
            if let Some(open) = self.anti_entropy.exchanges.get_mut(&from) {
                open.report.sent_messages += envelopes.len() as u64;
                open.report.sent_bytes += bytes as u64;
            }
        }
        self.out.push(Output::Send { to: from, message: Message::Repair { after, ask, envelopes, settled, more } });
    }

    /// The answer to our digest number `ask` (the piece after `after`): deliver each
    /// message not seen yet, marked recovered, and keep it; they are not pushed on (every
    /// node repairs itself). Then ask for the piece again if the neighbour had more, and
    /// count the answer in our exchange with it if the ask was one of the exchange's.
    fn on_repair(
        &mut self,
        now: Instant,
        from: P,
        (ask, after): (u32, Option<Key<P>>),
        envelopes: Vec<Envelope<P>>,
        more: bool,
    ) {
        let (mut new, received, mut bytes) = (0u64, envelopes.len() as u64, 0u64);
        for envelope in envelopes {
            self.stats.repaired_received += 1;
            bytes += envelope.payload.len() as u64;
            if self.versions.check(&envelope.origin, envelope.incarnation, envelope.seq) != Seen::No {
                continue;
            }
            let id = envelope.id();
            if !self.admit(now, &from, &envelope, &id) {
                continue;
            }
            self.mark_seen(&envelope);
            self.forget_missing(&id);
            self.stats.delivered += 1;
            self.stats.recovered += 1;
            new += 1;
            self.store_append(now, id, &envelope);
            self.deliver(now, Delivery { id, envelope, hops: 0, from: Some(from.clone()), recovered: true });
        }
        let ours = self.anti_entropy.exchanges.get(&from).is_some_and(|o| o.pending.contains_key(&ask));
        // The neighbour had more than one repair holds: ask for the same piece again. An
        // ask of an open exchange always goes on to the end of its piece (its report says
        // what moved); any other only if this answer brought something new: two exchanges
        // started at once (one from each side) answer the same keys, and the later copy
        // must not keep a second chain going.
        let again = (more && (ours || new > 0)).then(|| self.send_digest(now, from.clone(), after.clone(), false).1);
        if !ours {
            return;
        }
        let Some(open) = self.anti_entropy.exchanges.get_mut(&from) else { return };
        open.last = now;
        open.pending.remove(&ask);
        open.report.received_messages += received;
        open.report.received_bytes += bytes;
        open.report.recovered += new;
        if let Some(next) = again {
            open.report.digests += 1;
            open.pending.insert(next, after);
        }
        if open.pending.is_empty()
            && let Some(open) = self.anti_entropy.exchanges.remove(&from)
        {
            self.out.push(Output::Exchanged(open.close(now, true)));
        }
    }

    /// Whether `peer` may be sent message `id` once more in answer to a Graft (and count
    /// it): at most [`Config::max_serves`] times per (neighbour, message), remembered for
    /// the last [`Config::max_missing`] pairs served.
    fn may_serve(&mut self, peer: &P, id: MessageId) -> bool {
        let key = (peer.clone(), id);
        if let Some(n) = self.served.get_mut(&key) {
            if *n >= self.config.max_serves {
                return false;
            }
            *n += 1;
            return true;
        }
        if self.config.max_serves == 0 {
            return false;
        }
        if self.served_order.len() >= self.config.max_missing.max(1)
            && let Some(old) = self.served_order.pop_front()
        {
            self.served.remove(&old);
        }
        self.served.insert(key.clone(), 1);
        self.served_order.push_back(key);
        true
    }

    fn cache_insert(&mut self, now: Instant, id: MessageId, entry: Cached<P>) {
        self.stats.cache_evictions += self.cache.insert(now, id, entry);
    }

    /// Drop cached payloads and missing records older than `cache_max_age`, at most once
    /// per [`EXPIRY_SWEEP`] of `now`.
    fn expire(&mut self, now: Instant) {
        if self.next_expiry.is_some_and(|t| now < t) {
            return;
        }
        self.next_expiry = Some(now + EXPIRY_SWEEP);
        self.stats.cache_evictions += self.cache.expire(now);
        self.stats.store_evictions += self.store.evict(now);
        if self.holdback.count > 0 {
            self.expire_holdback(now);
        }
        if !self.anti_entropy.exchanges.is_empty() {
            self.expire_exchanges(now);
        }
        self.adopt_history(now);
        let max = self.config.cache_max_age;
        while let Some((id, t)) = self.missing_order.front().copied() {
            if now.saturating_duration_since(t) <= max {
                break;
            }
            self.missing_order.pop_front();
            if self.missing.get(&id).is_some_and(|m| m.since == t) {
                self.forget_missing(&id);
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

#[cfg(test)]
impl<P: PeerId> State<P> {
    /// No tree keeps a lazy link to a peer that is not a neighbour.
    pub(crate) fn lazy_links_are_neighbors(&self) -> bool {
        self.trees.all_lazy().all(|p| self.neighbors.contains(p))
    }
}
