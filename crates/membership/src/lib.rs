//! HyParView membership as a sans-IO state machine.
//!
//! Implements *HyParView: a membership protocol for reliable gossip-based broadcast*
//! (Leitão, Pereira, Rodrigues, DSN 2007): a small symmetric **active view** of open
//! connections, a larger **passive view** of backups, Join / ForwardJoin random walks
//! (ARWL, PRWL), Neighbor requests with priority, Disconnect, periodic Shuffle, and
//! passive-view promotion when an active peer fails. Failure of an active peer is judged
//! by heartbeats and a φ-accrual failure detector (Hayashibara et al., SRDS 2004).
//!
//! # Driving contract
//!
//! The state never reads a clock, opens a socket or spawns a task. The host:
//!
//! 1. calls [`State::handle`] with a monotonic `now` and one [`Input`];
//! 2. performs every returned [`Output`] in order: [`Output::Send`] (dial the peer first
//!    if there is no connection), [`Output::Disconnect`] (close the connection now),
//!    [`Output::Timer`] (call `handle(Input::Timer(timer))` at or after `at`; stale or
//!    duplicate timers are harmless), [`Output::Rejoin`] (dial the bootstrap addresses
//!    again and feed [`Input::Join`] for each peer reached), and [`Output::Event`];
//! 3. feeds [`Input::ConnectionLost`] when a connection to a peer closes or a dial fails.
//!
//! Given the same seed for the injected RNG and the same inputs, the outputs are identical:
//! views are `Vec`s and all random choices index into them.

#![forbid(unsafe_code)]

mod phi;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};

pub use phi::PhiAccrual;

/// What a peer handle must be: cheap to clone, totally ordered (for deterministic
/// iteration) and hashable. The simulator uses `u32`; the QUIC node uses a `PeerInfo`
/// whose equality is its `NodeId` alone.
pub trait Peer: Clone + Eq + Ord + Hash + Debug {}
impl<T: Clone + Eq + Ord + Hash + Debug> Peer for T {}

/// HyParView configuration. All durations are wall-clock spans handed to the host as
/// absolute timer deadlines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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

/// Priority of a Neighbor request (paper §4.3): a node with an empty active view asks
/// with `High`, which the receiver must accept (evicting a random neighbour if full);
/// `Low` is accepted only when the receiver has a free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Priority {
    /// Must be accepted.
    High,
    /// Accepted only if the active view has room.
    Low,
}

/// A HyParView wire message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<P> {
    /// A new node asks the contact to add it (paper Alg. 1, `JOIN`). Answered with
    /// [`Message::NeighborReply`] `{ accepted: true }`.
    Join,
    /// Random walk spreading a joiner (paper Alg. 1, `FORWARDJOIN`).
    ForwardJoin {
        /// The node that joined.
        joiner: P,
        /// Remaining walk length, starting at ARWL.
        ttl: u16,
    },
    /// Ask the receiver to make the sender an active neighbour (paper §4.3).
    Neighbor {
        /// See [`Priority`].
        priority: Priority,
    },
    /// Answer to [`Message::Neighbor`] or [`Message::Join`].
    NeighborReply {
        /// Whether the receiver is now in the sender's active view.
        accepted: bool,
    },
    /// The sender removed the receiver from its active view (paper Alg. 1, `DISCONNECT`).
    Disconnect {
        /// `true` when the sender stays in the cluster (eviction): the receiver keeps it
        /// in its passive view. `false` when the sender is leaving.
        alive: bool,
    },
    /// Shuffle random walk (paper §4.4).
    Shuffle {
        /// The node that started the shuffle; the reply goes straight to it.
        origin: P,
        /// Remaining walk length.
        ttl: u16,
        /// The origin itself, ka active and kp passive entries.
        nodes: Vec<P>,
    },
    /// Answer to a Shuffle: as many passive entries as were received.
    ShuffleReply {
        /// Entries for the origin's passive view.
        nodes: Vec<P>,
    },
    /// Keep-alive on an active link; any message counts as one.
    Heartbeat,
}

/// Why an active neighbour went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DownReason {
    /// Removed to make room for another peer (either side), or the peer sent
    /// `Disconnect { alive: true }`. It stays in the passive view.
    Evicted,
    /// The failure detector declared it dead or its connection was lost.
    Failed,
    /// It left the cluster (`Disconnect { alive: false }`).
    Left,
    /// It sent something invalid and was disconnected.
    Misbehaved,
}

impl DownReason {
    /// Lower-case name, as printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::Failed => "failed",
            Self::Left => "left",
            Self::Misbehaved => "misbehaved",
        }
    }
}

/// Membership events for the layer above (Plumtree) and the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<P> {
    /// The peer entered the active view: the Neighbor handshake completed.
    NeighborUp(P),
    /// The peer left the active view.
    NeighborDown {
        /// The peer.
        peer: P,
        /// Why.
        reason: DownReason,
    },
}

/// A timer the state asked for. Each carries what it needs to recognise itself as stale.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer<P> {
    /// Periodic Shuffle (one membership round).
    Shuffle,
    /// Periodic heartbeat and failure-detector check.
    Heartbeat,
    /// Retry the bootstrap addresses; `attempt` counts from 0.
    Rejoin {
        /// Attempt number of this retry; a timer whose attempt is not current is stale.
        attempt: u32,
    },
    /// A Neighbor request or Join to `peer` that may have gone unanswered.
    NeighborTimeout {
        /// The peer asked.
        peer: P,
        /// Identifies the request; a later request to the same peer has another nonce.
        nonce: u64,
    },
}

/// Inputs to [`State::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<P> {
    /// Join the cluster through `contact` (a bootstrap peer the host has reached).
    Join {
        /// The contact node.
        contact: P,
    },
    /// A message received from an authenticated peer.
    Message {
        /// The sender, as proven by the transport.
        from: P,
        /// The message.
        message: Message<P>,
    },
    /// A timer requested earlier fired.
    Timer(Timer<P>),
    /// The connection to `peer` closed, or dialing it failed.
    ConnectionLost {
        /// The peer.
        peer: P,
    },
    /// The peer broke the protocol (malformed frame, wrong cluster): drop it for good.
    Misbehaved {
        /// The peer.
        peer: P,
    },
    /// Joining through the bootstrap addresses failed (none reachable): schedule a retry
    /// with backoff if both views are empty.
    JoinFailed,
    /// Leave gracefully: `Disconnect { alive: false }` to every active neighbour.
    Leave,
}

/// What the host must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<P> {
    /// Send `message` to `to`, dialing it first if there is no connection.
    Send {
        /// Destination.
        to: P,
        /// The message.
        message: Message<P>,
    },
    /// Close the connection to `peer` now (failed or misbehaving peer).
    Disconnect {
        /// The peer.
        peer: P,
    },
    /// Call `handle(Input::Timer(timer))` at or after `at`.
    Timer {
        /// Deadline.
        at: Instant,
        /// The timer to fire.
        timer: Timer<P>,
    },
    /// Both views are empty: dial the bootstrap addresses again and feed
    /// [`Input::Join`] for each contact reached.
    Rejoin,
    /// An event for the layers above.
    Event(Event<P>),
}

/// Counters of what this state did. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Join requests answered as contact.
    pub joins_received: u64,
    /// ForwardJoin messages received.
    pub forward_joins_received: u64,
    /// Neighbor requests sent.
    pub neighbor_requests_sent: u64,
    /// Neighbor requests this node refused (Low priority, view full).
    pub neighbor_requests_refused: u64,
    /// Neighbor requests of ours that were refused.
    pub neighbor_requests_rejected: u64,
    /// Neighbor requests of ours that timed out.
    pub neighbor_requests_timed_out: u64,
    /// Active neighbours evicted to make room.
    pub evictions: u64,
    /// Active neighbours declared failed (detector or lost connection).
    pub failures_detected: u64,
    /// Of those, declared by the φ-accrual detector.
    pub phi_suspicions: u64,
    /// Promotions of passive peers into the active view.
    pub promotions: u64,
    /// Shuffles started.
    pub shuffles_sent: u64,
    /// Shuffles accepted (answered) here.
    pub shuffles_accepted: u64,
    /// Bootstrap retries requested.
    pub rejoins: u64,
    /// Passive entries dropped because the passive view was full.
    pub passive_evictions: u64,
    /// Peers dropped for misbehaviour.
    pub misbehaved: u64,
    /// Disconnect messages received from active neighbours.
    pub disconnects_received: u64,
    /// Disconnects sent to peers that sent link traffic while not our neighbour.
    pub strangers_rejected: u64,
    /// Reconnect probes sent to peers that had failed.
    pub reconnects_sent: u64,
    /// Neighbor requests accepted because the requester is a peer we had lost to a
    /// failure (a link restored after a partition or a restart).
    pub links_restored: u64,
    /// Failed peers forgotten after `reconnect_timeout` or to make room.
    pub reconnects_given_up: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    nonce: u64,
    priority: Priority,
}

/// The HyParView state of one node. See the crate docs for the driving contract.
///
/// # Reconnect
///
/// HyParView (DSN 2007) assumes failures are permanent: a peer that fails is dropped from
/// both views. After a network partition heals that leaves two overlays that never meet
/// again, since each side's passive view has purged the other. Like Serf's reconnect of
/// failed members, the state remembers up to `reconnect_capacity` peers lost to a failure
/// (for `reconnect_timeout`) and, once per round, sends one of them a Neighbor request
/// (`Low`, or `High` when the active view is empty). A node that receives a Neighbor
/// request from a peer *it* had also lost to a failure accepts it even with a full active
/// view (evicting a random neighbour, as for `High`): it is a broken link being restored,
/// and one restored link joins the two sides again. Each remembered peer is restored at most once, so the upheaval is bounded.
#[derive(Clone)]
pub struct State<P, R> {
    me: P,
    config: Config,
    rng: R,
    active: Vec<P>,
    passive: Vec<P>,
    pending: BTreeMap<P, Pending>,
    /// Peers that refused our Neighbor request this round, with the priority we asked at.
    rejected: BTreeMap<P, Priority>,
    /// One φ detector per active peer (≤ active capacity: a Vec scans faster than a map).
    detectors: Vec<(P, PhiAccrual)>,
    last_shuffle_sent: Vec<P>,
    /// Peers lost to a failure, with when, oldest first (≤ `reconnect_capacity`).
    departed: Vec<(P, Instant)>,
    timers_started: bool,
    rejoin_attempt: u32,
    rejoin_scheduled: bool,
    next_nonce: u64,
    left: bool,
    stats: Stats,
    out: Vec<Output<P>>,
}

impl<P: Peer, R: RngCore> State<P, R> {
    /// A node `me` with empty views. `rng` is the only source of randomness.
    pub fn new(me: P, config: Config, rng: R) -> Self {
        Self {
            me,
            config,
            rng,
            active: Vec::new(),
            passive: Vec::new(),
            pending: BTreeMap::new(),
            rejected: BTreeMap::new(),
            detectors: Vec::new(),
            last_shuffle_sent: Vec::new(),
            departed: Vec::new(),
            timers_started: false,
            rejoin_attempt: 0,
            rejoin_scheduled: false,
            next_nonce: 0,
            left: false,
            stats: Stats::default(),
            out: Vec::new(),
        }
    }

    /// This node.
    pub fn me(&self) -> &P {
        &self.me
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The active view, in insertion order (≤ `active_view_capacity`).
    pub fn active_view(&self) -> &[P] {
        &self.active
    }

    /// The passive view (≤ `passive_view_capacity`).
    pub fn passive_view(&self) -> &[P] {
        &self.passive
    }

    /// Peers asked to become neighbours that have not answered yet.
    pub fn pending(&self) -> impl Iterator<Item = &P> {
        self.pending.keys()
    }

    /// Whether `peer` is an active neighbour.
    pub fn is_active(&self, peer: &P) -> bool {
        self.active.contains(peer)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The current φ of an active neighbour, if it is one.
    pub fn phi(&self, now: Instant, peer: &P) -> Option<f64> {
        self.detector(peer).map(|d| self.phi_of(d, now))
    }

    /// Record that something arrived from `peer` at `now` (any frame counts as a
    /// heartbeat for the φ-accrual detector). Cheap; call it for every frame.
    ///
    /// Returns whether `peer` is an active neighbour or a pending one. Traffic that only
    /// flows along active links (heartbeats, ForwardJoin, Shuffle, Plumtree messages) from
    /// a peer that is neither means the peer still lists us: the host should feed that
    /// message as an [`Input::Message`] so the state can answer `Disconnect`.
    pub fn heard(&mut self, now: Instant, peer: &P) -> bool {
        match self.detectors.iter_mut().find(|(p, _)| p == peer) {
            Some((_, d)) => {
                d.heard(now);
                true
            }
            None => self.pending.contains_key(peer),
        }
    }

    /// A peer that sent link traffic although it is not our neighbour: tell it, so that
    /// active views stay symmetric (it then moves us to its passive view and refills).
    fn reject_stranger(&mut self, from: &P) {
        if !self.active.contains(from) && !self.pending.contains_key(from) {
            self.stats.strangers_rejected += 1;
            self.out.push(Output::Send { to: from.clone(), message: Message::Disconnect { alive: true } });
            self.add_passive(from.clone());
        }
    }

    /// Process one input at time `now` (monotonic) and return what to do, in order.
    /// Never panics on peer input.
    pub fn handle(&mut self, now: Instant, input: Input<P>) -> std::vec::Drain<'_, Output<P>> {
        self.start_timers(now);
        match input {
            Input::Join { contact } => self.on_join_command(now, contact),
            Input::Message { from, message } => {
                if from != self.me && !self.left {
                    if let Some((_, d)) = self.detectors.iter_mut().find(|(p, _)| *p == from) {
                        d.heard(now);
                    }
                    self.on_message(now, from, message);
                }
            }
            Input::Timer(timer) => self.on_timer(now, timer),
            Input::ConnectionLost { peer } => self.on_connection_lost(now, peer),
            Input::Misbehaved { peer } => {
                self.stats.misbehaved += 1;
                self.pending.remove(&peer);
                self.passive.retain(|p| p != &peer);
                self.forget_departed(&peer);
                if self.remove_active(&peer) {
                    self.event_down(peer.clone(), DownReason::Misbehaved);
                }
                self.out.push(Output::Disconnect { peer });
                self.fill_active(now);
            }
            Input::JoinFailed => self.maybe_schedule_rejoin(now),
            Input::Leave => self.on_leave(),
        }
        self.out.drain(..)
    }

    fn start_timers(&mut self, now: Instant) {
        if self.timers_started {
            return;
        }
        self.timers_started = true;
        self.out.push(Output::Timer { at: now + self.config.shuffle_interval, timer: Timer::Shuffle });
        self.out.push(Output::Timer { at: now + self.config.heartbeat_interval, timer: Timer::Heartbeat });
    }

    fn on_join_command(&mut self, now: Instant, contact: P) {
        if contact == self.me || self.active.contains(&contact) || self.left {
            return;
        }
        self.out.push(Output::Send { to: contact.clone(), message: Message::Join });
        self.add_pending(now, contact, Priority::High);
    }

    fn add_pending(&mut self, now: Instant, peer: P, priority: Priority) {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.pending.insert(peer.clone(), Pending { nonce, priority });
        self.out.push(Output::Timer {
            at: now + self.config.neighbor_request_timeout,
            timer: Timer::NeighborTimeout { peer, nonce },
        });
    }

    fn on_message(&mut self, now: Instant, from: P, message: Message<P>) {
        let was_departed = self.forget_departed(&from);
        match message {
            Message::Join => {
                self.stats.joins_received += 1;
                self.pending.remove(&from);
                self.add_active(now, from.clone());
                self.out.push(Output::Send { to: from.clone(), message: Message::NeighborReply { accepted: true } });
                // Paper Alg. 1: ForwardJoin(newNode, ARWL) to every other active peer.
                for q in self.active.iter().filter(|q| **q != from) {
                    self.out.push(Output::Send {
                        to: q.clone(),
                        message: Message::ForwardJoin {
                            joiner: from.clone(),
                            ttl: self.config.active_random_walk_length,
                        },
                    });
                }
            }
            Message::ForwardJoin { joiner, ttl } => {
                self.stats.forward_joins_received += 1;
                self.reject_stranger(&from);
                if joiner == self.me {
                    return;
                }
                // Paper Alg. 1: accept when the walk ends or we have only the sender.
                if ttl == 0 || self.active.len() <= 1 {
                    self.request_neighbor(now, joiner, Priority::High);
                    return;
                }
                if ttl == self.config.passive_random_walk_length {
                    self.add_passive(joiner.clone());
                }
                let next = self.random_active_except(&[&from, &joiner]);
                match next {
                    Some(q) => {
                        self.out.push(Output::Send { to: q, message: Message::ForwardJoin { joiner, ttl: ttl - 1 } })
                    }
                    None => self.request_neighbor(now, joiner, Priority::High),
                }
            }
            Message::Neighbor { priority } => {
                let accept = self.active.contains(&from)
                    || priority == Priority::High
                    || was_departed
                    || self.active.len() < self.config.active_view_capacity
                    || self.pending.contains_key(&from);
                if accept {
                    if was_departed && !self.active.contains(&from) {
                        self.stats.links_restored += 1;
                    }
                    self.pending.remove(&from);
                    self.add_active(now, from.clone());
                } else {
                    self.stats.neighbor_requests_refused += 1;
                    self.add_passive(from.clone());
                }
                self.out.push(Output::Send { to: from, message: Message::NeighborReply { accepted: accept } });
            }
            Message::NeighborReply { accepted } => {
                if let Some(p) = self.pending.remove(&from) {
                    if accepted {
                        self.add_active(now, from);
                    } else {
                        self.stats.neighbor_requests_rejected += 1;
                        self.rejected.insert(from.clone(), p.priority);
                        self.add_passive(from);
                        self.fill_active(now);
                    }
                } else if accepted && !self.active.contains(&from) {
                    // A late acceptance we no longer want: keep the views symmetric.
                    self.out.push(Output::Send { to: from.clone(), message: Message::Disconnect { alive: true } });
                    self.add_passive(from);
                }
            }
            Message::Disconnect { alive } => {
                self.pending.remove(&from);
                if self.remove_active(&from) {
                    self.stats.disconnects_received += 1;
                    let reason = if alive { DownReason::Evicted } else { DownReason::Left };
                    self.event_down(from.clone(), reason);
                }
                if alive {
                    self.add_passive(from);
                } else {
                    self.passive.retain(|p| p != &from);
                }
                self.fill_active(now);
            }
            Message::Shuffle { origin, ttl, nodes } => {
                self.reject_stranger(&from);
                if origin == self.me {
                    return;
                }
                if ttl > 0 && self.active.len() > 1 {
                    if let Some(q) = self.random_active_except(&[&from, &origin]) {
                        self.out
                            .push(Output::Send { to: q, message: Message::Shuffle { origin, ttl: ttl - 1, nodes } });
                        return;
                    }
                }
                self.stats.shuffles_accepted += 1;
                let nodes: Vec<P> = nodes.into_iter().take(self.shuffle_len()).collect();
                let reply = self.sample(&self.passive.clone(), nodes.len());
                self.out.push(Output::Send { to: origin, message: Message::ShuffleReply { nodes: reply.clone() } });
                self.integrate(nodes, &reply);
            }
            Message::ShuffleReply { nodes } => {
                let sent = std::mem::take(&mut self.last_shuffle_sent);
                let nodes: Vec<P> = nodes.into_iter().take(self.shuffle_len()).collect();
                self.integrate(nodes, &sent);
            }
            Message::Heartbeat => self.reject_stranger(&from),
        }
    }

    fn shuffle_len(&self) -> usize {
        1 + self.config.shuffle_active_count + self.config.shuffle_passive_count
    }

    fn on_timer(&mut self, now: Instant, timer: Timer<P>) {
        if self.left {
            return;
        }
        match timer {
            Timer::Shuffle => {
                self.out.push(Output::Timer { at: now + self.config.shuffle_interval, timer: Timer::Shuffle });
                self.rejected.clear();
                self.fill_active(now);
                self.reconnect(now);
                if let Some(q) = self.random_active_except(&[]) {
                    let others: Vec<P> = self.active.iter().filter(|p| **p != q).cloned().collect();
                    let mut nodes = self.sample(&others, self.config.shuffle_active_count);
                    nodes.extend(self.sample(&self.passive.clone(), self.config.shuffle_passive_count));
                    self.last_shuffle_sent = nodes.clone();
                    nodes.insert(0, self.me.clone());
                    self.stats.shuffles_sent += 1;
                    self.out.push(Output::Send {
                        to: q,
                        message: Message::Shuffle { origin: self.me.clone(), ttl: self.config.shuffle_ttl, nodes },
                    });
                }
                self.maybe_schedule_rejoin(now);
            }
            Timer::Heartbeat => {
                self.out.push(Output::Timer { at: now + self.config.heartbeat_interval, timer: Timer::Heartbeat });
                let mut failed = Vec::new();
                for p in &self.active {
                    self.out.push(Output::Send { to: p.clone(), message: Message::Heartbeat });
                    if let Some(d) = self.detector(p) {
                        if self.phi_of(d, now) > self.config.phi_threshold {
                            failed.push(p.clone());
                        }
                    }
                }
                for p in failed {
                    self.stats.phi_suspicions += 1;
                    self.fail_peer(now, p);
                }
                self.fill_active(now);
            }
            Timer::Rejoin { attempt } => {
                if attempt != self.rejoin_attempt || !self.rejoin_scheduled {
                    return;
                }
                self.rejoin_scheduled = false;
                if self.active.is_empty() && self.passive.is_empty() && self.pending.is_empty() {
                    self.stats.rejoins += 1;
                    self.rejoin_attempt += 1;
                    self.out.push(Output::Rejoin);
                    self.maybe_schedule_rejoin(now);
                }
            }
            Timer::NeighborTimeout { peer, nonce } => {
                if self.pending.get(&peer).is_some_and(|p| p.nonce == nonce) {
                    self.pending.remove(&peer);
                    self.stats.neighbor_requests_timed_out += 1;
                    self.passive.retain(|p| p != &peer);
                    self.depart(now, peer);
                    self.fill_active(now);
                }
            }
        }
    }

    fn on_connection_lost(&mut self, now: Instant, peer: P) {
        // A lost link to a passive peer we were not using says nothing about it; an
        // unanswered request or a dead active link does.
        if self.pending.remove(&peer).is_some() {
            self.passive.retain(|p| p != &peer);
            self.depart(now, peer.clone());
        }
        if self.active.contains(&peer) {
            self.fail_peer(now, peer);
        }
        self.fill_active(now);
    }

    fn on_leave(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        for p in std::mem::take(&mut self.active) {
            self.out.push(Output::Send { to: p.clone(), message: Message::Disconnect { alive: false } });
            self.event_down(p, DownReason::Left);
        }
        self.detectors.clear();
        self.pending.clear();
        self.departed.clear();
    }

    fn fail_peer(&mut self, now: Instant, peer: P) {
        self.stats.failures_detected += 1;
        self.remove_active(&peer);
        self.passive.retain(|p| p != &peer);
        self.depart(now, peer.clone());
        self.out.push(Output::Disconnect { peer: peer.clone() });
        self.event_down(peer, DownReason::Failed);
    }

    /// Remember a peer lost to a failure (keeping its first departure time).
    fn depart(&mut self, now: Instant, peer: P) {
        if self.config.reconnect_capacity == 0 || peer == self.me || self.departed.iter().any(|(p, _)| *p == peer) {
            return;
        }
        if self.departed.len() >= self.config.reconnect_capacity {
            self.departed.remove(0);
            self.stats.reconnects_given_up += 1;
        }
        self.departed.push((peer, now));
    }

    /// Forget a departed peer (it spoke, or misbehaved). Returns whether it was one.
    fn forget_departed(&mut self, peer: &P) -> bool {
        match self.departed.iter().position(|(p, _)| p == peer) {
            Some(i) => {
                self.departed.remove(i);
                true
            }
            None => false,
        }
    }

    /// Once per round: drop expired departed peers and probe one of the rest with a `Low`
    /// Neighbor request (see [reconnect](State#reconnect)). Its timeout or lost
    /// connection keeps it remembered; any answer forgets it.
    fn reconnect(&mut self, now: Instant) {
        let timeout = self.config.reconnect_timeout;
        let before = self.departed.len();
        self.departed.retain(|(_, at)| now.saturating_duration_since(*at) < timeout);
        self.stats.reconnects_given_up += (before - self.departed.len()) as u64;
        let candidates: Vec<P> = self
            .departed
            .iter()
            .map(|(p, _)| p)
            .filter(|p| !self.active.contains(p) && !self.pending.contains_key(*p))
            .cloned()
            .collect();
        if self.ask_one_of(now, &candidates) {
            self.stats.reconnects_sent += 1;
        }
    }

    /// Send a Neighbor request to a random one of `candidates`: `High` when the active view
    /// is empty (it cannot be refused, paper §4.3), `Low` otherwise. False if none.
    fn ask_one_of(&mut self, now: Instant, candidates: &[P]) -> bool {
        if candidates.is_empty() {
            return false;
        }
        let q = candidates[self.index(candidates.len())].clone();
        let priority = if self.active.is_empty() { Priority::High } else { Priority::Low };
        self.request_neighbor(now, q, priority);
        true
    }

    /// Peers lost to a failure that reconnect still probes (≤ `reconnect_capacity`).
    pub fn departed(&self) -> impl Iterator<Item = &P> {
        self.departed.iter().map(|(p, _)| p)
    }

    /// Paper §4.3: promote passive peers until the active view (plus requests in flight)
    /// is full. `High` priority when the active view is empty.
    fn fill_active(&mut self, now: Instant) {
        if self.left {
            return;
        }
        while self.active.len() + self.pending.len() < self.config.active_view_capacity {
            // With an empty active view the request is High priority and cannot be
            // refused, so peers that refused a Low request earlier are fair game again.
            let isolated = self.active.is_empty();
            let candidates: Vec<P> = self
                .passive
                .iter()
                .filter(|p| {
                    !self.pending.contains_key(*p)
                        && match self.rejected.get(*p) {
                            None => true,
                            // A peer that refused even a High request is not asked again
                            // this round (no request storm against a broken peer).
                            Some(Priority::High) => false,
                            Some(Priority::Low) => isolated,
                        }
                })
                .cloned()
                .collect();
            if !self.ask_one_of(now, &candidates) {
                break;
            }
            self.stats.promotions += 1;
        }
        self.maybe_schedule_rejoin(now);
    }

    fn request_neighbor(&mut self, now: Instant, peer: P, priority: Priority) {
        if peer == self.me || self.active.contains(&peer) || self.pending.contains_key(&peer) {
            return;
        }
        self.stats.neighbor_requests_sent += 1;
        self.out.push(Output::Send { to: peer.clone(), message: Message::Neighbor { priority } });
        self.add_pending(now, peer, priority);
    }

    fn maybe_schedule_rejoin(&mut self, now: Instant) {
        if self.rejoin_scheduled || self.left {
            return;
        }
        if self.active.is_empty() && self.passive.is_empty() && self.pending.is_empty() {
            let shift = self.rejoin_attempt.min(16);
            let delay = self.config.rejoin_backoff_min.saturating_mul(1 << shift).min(self.config.rejoin_backoff_max);
            self.rejoin_scheduled = true;
            self.out.push(Output::Timer { at: now + delay, timer: Timer::Rejoin { attempt: self.rejoin_attempt } });
        }
    }

    /// Add to the active view, evicting a random neighbour if full (paper Alg. 1,
    /// `addNodeActiveView` / `dropRandomElementFromActiveView`).
    fn add_active(&mut self, now: Instant, peer: P) {
        if peer == self.me || self.active.contains(&peer) {
            return;
        }
        self.passive.retain(|p| p != &peer);
        if self.active.len() >= self.config.active_view_capacity {
            let i = self.index(self.active.len());
            let victim = self.active.remove(i);
            self.detectors.retain(|(p, _)| *p != victim);
            self.stats.evictions += 1;
            self.out.push(Output::Send { to: victim.clone(), message: Message::Disconnect { alive: true } });
            self.add_passive(victim.clone());
            self.event_down(victim, DownReason::Evicted);
        }
        self.active.push(peer.clone());
        self.detectors
            .push((peer.clone(), PhiAccrual::new(now, self.config.heartbeat_interval, self.config.phi_window)));
        self.rejoin_attempt = 0;
        self.rejoin_scheduled = false;
        self.out.push(Output::Event(Event::NeighborUp(peer)));
    }

    fn remove_active(&mut self, peer: &P) -> bool {
        self.detectors.retain(|(p, _)| p != peer);
        let before = self.active.len();
        self.active.retain(|p| p != peer);
        before != self.active.len()
    }

    fn add_passive(&mut self, peer: P) {
        if peer == self.me || self.active.contains(&peer) || self.passive.contains(&peer) {
            return;
        }
        if self.passive.len() >= self.config.passive_view_capacity {
            if self.config.passive_view_capacity == 0 {
                return;
            }
            let i = self.index(self.passive.len());
            self.passive.remove(i);
            self.stats.passive_evictions += 1;
        }
        self.passive.push(peer);
    }

    /// Paper §4.4: add received entries to the passive view, making room by dropping the
    /// entries we sent first, then random ones.
    fn integrate(&mut self, nodes: Vec<P>, sent: &[P]) {
        let mut sent: Vec<P> = sent.to_vec();
        for n in nodes {
            if n == self.me || self.active.contains(&n) || self.passive.contains(&n) || self.pending.contains_key(&n) {
                continue;
            }
            if self.passive.len() >= self.config.passive_view_capacity {
                if let Some(pos) = sent.iter().position(|s| self.passive.contains(s)) {
                    let s = sent.remove(pos);
                    self.passive.retain(|p| p != &s);
                } else if !self.passive.is_empty() {
                    let i = self.index(self.passive.len());
                    self.passive.remove(i);
                }
                self.stats.passive_evictions += 1;
            }
            if self.passive.len() < self.config.passive_view_capacity {
                self.passive.push(n);
            }
        }
    }

    fn event_down(&mut self, peer: P, reason: DownReason) {
        self.out.push(Output::Event(Event::NeighborDown { peer, reason }));
    }

    fn random_active_except(&mut self, except: &[&P]) -> Option<P> {
        let c: Vec<P> = self.active.iter().filter(|p| !except.contains(p)).cloned().collect();
        if c.is_empty() { None } else { Some(c[self.index(c.len())].clone()) }
    }

    /// Up to `k` distinct entries of `from`, chosen at random (partial Fisher–Yates).
    fn sample(&mut self, from: &[P], k: usize) -> Vec<P> {
        let mut v = from.to_vec();
        let k = k.min(v.len());
        for i in 0..k {
            let j = i + self.index(v.len() - i);
            v.swap(i, j);
        }
        v.truncate(k);
        v
    }

    fn index(&mut self, len: usize) -> usize {
        debug_assert!(len > 0);
        (self.rng.next_u64() % len as u64) as usize
    }

    fn detector(&self, peer: &P) -> Option<&PhiAccrual> {
        self.detectors.iter().find(|(p, _)| p == peer).map(|(_, d)| d)
    }

    fn phi_of(&self, d: &PhiAccrual, now: Instant) -> f64 {
        d.phi(now, self.config.phi_min_std_dev, self.config.phi_acceptable_pause)
    }
}

#[cfg(test)]
mod tests;
