//! The sans-IO composition of HyParView ([`plumcast_membership`]) and Plumtree
//! ([`plumcast_broadcast`]): one [`State`] per node, one wire [`Message`] type.
//!
//! # Driving contract
//!
//! Exactly as for the two cores: call [`State::handle`] / [`State::broadcast`] with a
//! monotonic `now`, perform the [`Output`]s in order, feed timers back when due (stale ones
//! are harmless), and report lost connections with [`membership::Input::ConnectionLost`]. The same
//! seed and inputs give the same outputs; the simulator and the QUIC node drive this very
//! code.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[doc(inline)]
pub use plumcast_broadcast as broadcast;
pub use plumcast_broadcast::{Delivery, Envelope, MessageId, Mode, Ordering, Tree};
#[doc(inline)]
pub use plumcast_membership as membership;
pub use plumcast_membership::DownReason;

pub mod topology;

/// A peer handle as the membership layer sees it (for the node: `NodeId` + address), with
/// the stable id the broadcast layer uses (for the node: the `NodeId`).
pub trait Peer: membership::Peer + Serialize + DeserializeOwned {
    /// The stable identity (origin of broadcasts, key of eager/lazy sets).
    type Id: broadcast::PeerId + DeserializeOwned;
    /// This peer's id.
    fn id(&self) -> Self::Id;
}

impl Peer for u32 {
    type Id = u32;
    fn id(&self) -> u32 {
        *self
    }
}

/// Protocol configuration: both layers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// HyParView parameters.
    pub membership: membership::Config,
    /// Plumtree parameters.
    pub broadcast: broadcast::Config,
    /// Topology records (the admin endpoint's overlay picture; on by default, every 2 s).
    pub topology: topology::Config,
}

impl Config {
    /// LAN preset (the default).
    pub fn lan() -> Self {
        Self {
            membership: membership::Config::lan(),
            broadcast: broadcast::Config::lan(),
            topology: topology::Config::default(),
        }
    }
    /// WAN preset.
    pub fn wan() -> Self {
        Self {
            membership: membership::Config::wan(),
            broadcast: broadcast::Config::wan(),
            topology: topology::Config::default(),
        }
    }
    /// Local preset: many nodes on one dev box.
    pub fn local() -> Self {
        Self {
            membership: membership::Config::local(),
            broadcast: broadcast::Config::lan(),
            topology: topology::Config::default(),
        }
    }
}

/// A wire message: one of either layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<P: Peer> {
    /// HyParView.
    Membership(membership::Message<P>),
    /// Plumtree.
    Broadcast(broadcast::Message<P::Id>),
    /// A node's topology record ([`topology`]).
    Topology(topology::Record<P>),
}

/// Timers of either layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer<P> {
    /// HyParView timer.
    Membership(membership::Timer<P>),
    /// Plumtree timer.
    Broadcast(broadcast::Timer),
    /// Time to announce our topology record.
    Topology,
}

/// Inputs to [`State::handle`]: a frame or a timer of either layer, or a membership input
/// (join, lost connection, misbehaviour, failed join, leave) lifted as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<P: Peer> {
    /// A frame from an authenticated peer.
    Message {
        /// The sender.
        from: P,
        /// The message.
        message: Message<P>,
    },
    /// A timer fired.
    Timer(Timer<P>),
    /// A membership input that is neither a message nor a timer
    /// ([`membership::Input::Join`], `ConnectionLost`, `Misbehaved`, `JoinFailed`, `Leave`).
    Membership(membership::Input<P>),
}

impl<P: Peer> From<membership::Input<P>> for Input<P> {
    /// A membership message or timer becomes the composed one; the rest is lifted as is.
    fn from(input: membership::Input<P>) -> Self {
        match input {
            membership::Input::Message { from, message } => {
                Self::Message { from, message: Message::Membership(message) }
            }
            membership::Input::Timer(t) => Self::Timer(Timer::Membership(t)),
            other => Self::Membership(other),
        }
    }
}

impl<P: Peer> From<Timer<P>> for Input<P> {
    fn from(timer: Timer<P>) -> Self {
        Self::Timer(timer)
    }
}

/// Events for the application: the membership layer's neighbour events as they are, and
/// deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<P: Peer> {
    /// A peer entered or left the active view.
    Neighbor(membership::Event<P>),
    /// A broadcast to deliver (exactly once per message).
    Delivered(Delivery<P::Id>),
    /// An anti-entropy exchange this node started ended, or was given up.
    Exchanged(broadcast::Exchange<P::Id>),
}

impl<P: Peer> From<membership::Event<P>> for Event<P> {
    fn from(e: membership::Event<P>) -> Self {
        Self::Neighbor(e)
    }
}

/// What the host must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<P: Peer> {
    /// Send to a peer (dial first if needed).
    Send {
        /// Destination.
        to: P,
        /// The message.
        message: Message<P>,
    },
    /// Close the connection to the peer now.
    Disconnect {
        /// The peer.
        peer: P,
    },
    /// Fire the timer at or after `at`.
    Timer {
        /// Deadline.
        at: Instant,
        /// The timer.
        timer: Timer<P>,
    },
    /// Dial the bootstrap addresses again and feed [`membership::Input::Join`] for each.
    Rejoin,
    /// The peer with this id sent a forged or rejected message: close its connection.
    /// When it was a neighbour, the membership layer has already dropped it as
    /// misbehaved (its [`Output::Disconnect`] comes first).
    Penalize {
        /// The peer's id.
        peer: P::Id,
        /// Why.
        reason: broadcast::Penalty,
    },
    /// An application event.
    Event(Event<P>),
}

impl<P: Peer> From<membership::Output<P>> for Output<P> {
    fn from(o: membership::Output<P>) -> Self {
        match o {
            membership::Output::Send { to, message } => Self::Send { to, message: Message::Membership(message) },
            membership::Output::Disconnect { peer } => Self::Disconnect { peer },
            membership::Output::Timer { at, timer } => Self::Timer { at, timer: Timer::Membership(timer) },
            membership::Output::Rejoin => Self::Rejoin,
            membership::Output::Event(e) => Self::Event(e.into()),
        }
    }
}

/// One node's protocol state: HyParView + Plumtree.
#[derive(Clone)]
pub struct State<P: Peer, R> {
    membership: membership::State<P, R>,
    broadcast: broadcast::State<P::Id>,
    peers: BTreeMap<P::Id, P>,
    unroutable: u64,
    out: Vec<Output<P>>,
    /// The membership layer's outputs of one input, reused (no allocation per input).
    membership_out: Vec<membership::Output<P>>,
    /// The broadcast layer's outputs of one input, reused.
    broadcast_out: Vec<broadcast::Output<P::Id>>,
    topology: topology::Table<P>,
    incarnation: u64,
    /// Whether a [`Timer::Topology`] is pending.
    topology_armed: bool,
}

impl<P: Peer, R: RngCore> State<P, R> {
    /// A node `me` in life `incarnation` (start time in ms), with its only RNG.
    pub fn new(me: P, incarnation: u64, config: Config, rng: R) -> Self {
        let store = Box::new(broadcast::MemoryStore::new(config.broadcast.retention));
        Self::with_store(me, incarnation, config, rng, store)
    }

    /// Like [`State::new`], keeping messages in `store` (the node's durable store).
    pub fn with_store(
        me: P,
        incarnation: u64,
        config: Config,
        rng: R,
        store: Box<dyn broadcast::MessageStore<P::Id>>,
    ) -> Self {
        let id = me.id();
        Self {
            topology: topology::Table::new(config.topology),
            incarnation,
            topology_armed: false,
            membership: membership::State::new(me, config.membership, rng),
            broadcast: broadcast::State::with_store(id, incarnation, config.broadcast, store),
            peers: BTreeMap::new(),
            unroutable: 0,
            out: Vec::new(),
            membership_out: Vec::new(),
            broadcast_out: Vec::new(),
        }
    }

    /// The HyParView state (views, stats).
    pub fn membership(&self) -> &membership::State<P, R> {
        &self.membership
    }

    /// The Plumtree state (eager/lazy sets, stats).
    pub fn broadcast_state(&self) -> &broadcast::State<P::Id> {
        &self.broadcast
    }

    /// Record `(origin, incarnation, seq)` as delivered before this life (a restart
    /// from a data dir): it will never be delivered again.
    pub fn restore_delivered(&mut self, origin: &P::Id, incarnation: u64, seq: u64) {
        self.broadcast.restore_delivered(origin, incarnation, seq);
    }

    /// Raise the version vector to `heads` (see [`broadcast::State::restore_version_vector`]).
    pub fn restore_version_vector(&mut self, heads: &[broadcast::Head<P::Id>]) {
        self.broadcast.restore_version_vector(heads);
    }

    /// This node lived before (a restart from a data dir): it catches up on what it missed
    /// (see [`broadcast::State::restarted`]).
    pub fn restarted(&mut self) {
        self.broadcast.restarted();
    }

    /// Replace both layers' counters with those kept before a restart (call it after
    /// [`State::restore_delivered`]).
    pub fn restore_stats(&mut self, membership: membership::Stats, broadcast: broadcast::Stats) {
        self.membership.restore_stats(membership);
        self.broadcast.restore_stats(broadcast);
    }

    /// Start an anti-entropy exchange with neighbour `peer` now (see
    /// [`broadcast::State::exchange`]); it is reported in an [`Event::Exchanged`].
    ///
    /// # Errors
    /// [`broadcast::ExchangeError`] when `peer` is not a neighbour or anti-entropy is off.
    #[must_use = "the outputs must be performed, in order"]
    pub fn exchange(
        &mut self,
        now: Instant,
        peer: &P::Id,
    ) -> Result<std::vec::Drain<'_, Output<P>>, broadcast::ExchangeError> {
        let mut b = std::mem::take(&mut self.broadcast_out);
        let result = self.broadcast.exchange(now, peer.clone()).map(|out| b.extend(out));
        self.absorb_broadcast(now, &mut b);
        self.broadcast_out = b;
        result.map(|()| self.out.drain(..))
    }

    /// Switch the broadcast mode (Plumtree or eager flooding) for the next messages.
    pub fn set_broadcast_mode(&mut self, mode: Mode) {
        self.broadcast.set_mode(mode);
    }

    /// Switch between one shared tree and per-origin trees (all links eager again).
    pub fn set_broadcast_tree(&mut self, tree: Tree) {
        self.broadcast.set_tree(tree);
    }

    /// The transport's smoothed round-trip time to neighbour `peer` (sets Plumtree's
    /// Graft retry wait, see [`broadcast::State::set_rtt`]).
    pub fn set_rtt(&mut self, peer: P::Id, rtt: Duration) {
        self.broadcast.set_rtt(peer, rtt);
    }

    /// Plumtree messages addressed to a peer that was no longer a neighbour (dropped).
    pub fn unroutable(&self) -> u64 {
        self.unroutable
    }

    /// Broadcast `payload` to the cluster. Returns its id and the outputs.
    #[must_use = "the outputs must be performed, in order"]
    pub fn broadcast(&mut self, now: Instant, payload: Bytes) -> (MessageId, std::vec::Drain<'_, Output<P>>) {
        let mut b = std::mem::take(&mut self.broadcast_out);
        let (id, out) = self.broadcast.broadcast(now, payload);
        b.extend(out);
        self.absorb_broadcast(now, &mut b);
        self.broadcast_out = b;
        (id, self.out.drain(..))
    }

    /// Number our next message and keep it for [`State::flush_staged`] (see
    /// [`broadcast::State::stage`]): its id is final already.
    pub fn stage(&mut self, payload: Bytes) -> MessageId {
        self.broadcast.stage(payload)
    }

    /// Sign and broadcast every staged message (see [`broadcast::State::flush_staged`]).
    #[must_use = "the outputs must be performed, in order"]
    pub fn flush_staged(&mut self, now: Instant) -> std::vec::Drain<'_, Output<P>> {
        let mut b = std::mem::take(&mut self.broadcast_out);
        b.extend(self.broadcast.flush_staged(now));
        self.absorb_broadcast(now, &mut b);
        self.broadcast_out = b;
        self.out.drain(..)
    }

    /// How many staged messages wait for [`State::flush_staged`].
    pub fn staged_len(&self) -> usize {
        self.broadcast.staged_len()
    }

    /// Sign and check messages with `auth` (see [`broadcast::Authenticator`]).
    pub fn set_authenticator(&mut self, auth: Box<dyn broadcast::Authenticator<P::Id>>) {
        self.broadcast.set_authenticator(auth);
    }

    /// Check message content with `validator` (see [`broadcast::Validator`]).
    pub fn set_validator(&mut self, validator: Box<dyn broadcast::Validator<P::Id>>) {
        self.broadcast.set_validator(validator);
    }

    /// Process one input at `now`. Never panics on peer input.
    #[must_use = "the outputs must be performed, in order"]
    pub fn handle(&mut self, now: Instant, input: Input<P>) -> std::vec::Drain<'_, Output<P>> {
        match input {
            Input::Message { from, message: Message::Membership(message) } => {
                self.membership_input(now, membership::Input::Message { from, message })
            }
            Input::Message { from, message: Message::Broadcast(message) } => {
                if !self.membership.heard(now, &from) {
                    // Plumtree traffic from a peer that is not our neighbour: it still
                    // lists us, so answer like a stray heartbeat (Disconnect).
                    let stray = membership::Message::Heartbeat;
                    self.membership_input(now, membership::Input::Message { from: from.clone(), message: stray });
                }
                self.broadcast_input(now, broadcast::Input::Message { from: from.id(), message });
            }
            Input::Timer(Timer::Membership(t)) => self.membership_input(now, membership::Input::Timer(t)),
            Input::Timer(Timer::Broadcast(t)) => self.broadcast_input(now, broadcast::Input::Timer(t)),
            Input::Membership(input) => self.membership_input(now, input),
            Input::Message { from, message: Message::Topology(record) } => self.on_topology(now, &from, &record),
            Input::Timer(Timer::Topology) => self.announce_topology(now),
        }
        self.out.drain(..)
    }

    /// The topology records this node holds (not its own), by node id.
    pub fn topology(&self) -> &BTreeMap<P::Id, topology::Known<P>> {
        self.topology.records()
    }

    /// Counters of the topology channel.
    pub fn topology_stats(&self) -> topology::Stats {
        self.topology.stats
    }

    /// A neighbour's record: kept and passed on to our other neighbours if new here.
    fn on_topology(&mut self, now: Instant, from: &P, record: &topology::Record<P>) {
        if !self.peers.contains_key(&from.id()) {
            return;
        }
        let me = self.membership.me().id();
        if self.topology.receive(now, &me, &from.id(), record) {
            let origin = record.node.id();
            for p in self.membership.active_view() {
                let id = p.id();
                if id != from.id() && id != origin {
                    self.out.push(Output::Send { to: p.clone(), message: Message::Topology(record.clone()) });
                }
            }
        }
    }

    /// Send our record to the active view and arm the next announcement (while we have
    /// neighbours; the next NeighborUp arms it again).
    fn announce_topology(&mut self, now: Instant) {
        self.topology_armed = false;
        self.topology.expire(now);
        let Some(interval) = self.topology.interval() else { return };
        let view = self.membership.active_view().to_vec();
        if view.is_empty() {
            return;
        }
        let ids = view.iter().map(Peer::id).collect();
        let eager = self.broadcast.eager_peers().into_iter().collect();
        let record = self.topology.own(self.membership.me().clone(), self.incarnation, ids, eager);
        for p in view {
            self.out.push(Output::Send { to: p, message: Message::Topology(record.clone()) });
        }
        self.topology_armed = true;
        self.out.push(Output::Timer { at: now + interval, timer: Timer::Topology });
    }

    /// Feed the Plumtree state, reusing a scratch buffer (no allocation per call).
    fn broadcast_input(&mut self, now: Instant, input: broadcast::Input<P::Id>) {
        let mut b = std::mem::take(&mut self.broadcast_out);
        b.extend(self.broadcast.handle(now, input));
        self.absorb_broadcast(now, &mut b);
        self.broadcast_out = b;
    }

    fn membership_input(&mut self, now: Instant, input: membership::Input<P>) {
        let mut m = std::mem::take(&mut self.membership_out);
        m.extend(self.membership.handle(now, input));
        // Plumtree hears of neighbour changes after this batch's membership messages are
        // out: an accepted Neighbor request's reply must reach the peer before our first
        // Plumtree frame (catch-up IHave, Graft), or the peer, which does not list us as
        // a neighbour yet, would drop it.
        let mut changes = Vec::new();
        for o in m.drain(..) {
            match &o {
                membership::Output::Event(membership::Event::NeighborUp(p)) => changes.push((true, p.clone())),
                membership::Output::Event(membership::Event::NeighborDown { peer, reason }) => {
                    if *reason == DownReason::Failed {
                        self.topology.failed(&peer.id());
                    }
                    changes.push((false, peer.clone()))
                }
                _ => {}
            }
            self.out.push(o.into());
        }
        self.membership_out = m;
        if changes.iter().any(|(up, _)| *up) && !self.topology_armed && self.topology.config.interval.is_some() {
            // The first neighbour: announce soon (the record then lists it).
            self.topology_armed = true;
            self.out.push(Output::Timer { at: now + Duration::from_millis(100), timer: Timer::Topology });
        }
        for (up, p) in changes {
            if up {
                self.peers.insert(p.id(), p.clone());
                self.broadcast_input(now, broadcast::Input::NeighborUp(p.id()));
            } else {
                self.peers.remove(&p.id());
                self.broadcast_input(now, broadcast::Input::NeighborDown(p.id()));
            }
        }
    }

    fn absorb_broadcast(&mut self, now: Instant, out: &mut Vec<broadcast::Output<P::Id>>) {
        for o in out.drain(..) {
            match o {
                broadcast::Output::Send { to, message } => match self.peers.get(&to) {
                    Some(p) => self.out.push(Output::Send { to: p.clone(), message: Message::Broadcast(message) }),
                    None => self.unroutable += 1,
                },
                broadcast::Output::Timer { at, timer } => {
                    self.out.push(Output::Timer { at, timer: Timer::Broadcast(timer) })
                }
                broadcast::Output::Deliver(d) => self.out.push(Output::Event(Event::Delivered(d))),
                broadcast::Output::Exchanged(x) => self.out.push(Output::Event(Event::Exchanged(x))),
                broadcast::Output::Penalize { peer, reason } => {
                    if let Some(p) = self.peers.get(&peer).cloned() {
                        self.membership_input(now, membership::Input::Misbehaved { peer: p });
                    }
                    self.out.push(Output::Penalize { peer, reason });
                }
            }
        }
    }
}
