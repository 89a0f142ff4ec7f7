//! The HyParView state machine of one node.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::RngCore;

use crate::rate::{Kind, Limiter};
use crate::{Config, DownReason, Event, Input, Message, Output, Peer, PhiAccrual, Priority, Stats, Timer};

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
    /// Per-peer budgets of Join, ForwardJoin and Shuffle.
    limits: Limiter<P>,
    stats: Stats,
    out: Vec<Output<P>>,
}

impl<P: Peer, R: RngCore> State<P, R> {
    /// A node `me` with empty views. `rng` is the only source of randomness.
    pub fn new(me: P, config: Config, rng: R) -> Self {
        Self {
            limits: Limiter::new(config.rate_limited_peers),
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

    /// Replace the counters with `stats`: those a node kept before a restart.
    pub fn restore_stats(&mut self, stats: Stats) {
        self.stats = stats;
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
    #[must_use = "the outputs must be performed, in order"]
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
                if !self.limits.allow(now, &from, Kind::Join, self.config.join_rate) {
                    self.stats.joins_limited += 1;
                    return;
                }
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
                if !self.limits.allow(now, &from, Kind::ForwardJoin, self.config.forward_join_rate) {
                    self.stats.forward_joins_limited += 1;
                    return;
                }
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
                if !self.limits.allow(now, &from, Kind::Shuffle, self.config.shuffle_rate) {
                    self.stats.shuffles_limited += 1;
                    return;
                }
                if origin == self.me {
                    return;
                }
                if ttl > 0
                    && self.active.len() > 1
                    && let Some(q) = self.random_active_except(&[&from, &origin])
                {
                    self.out.push(Output::Send { to: q, message: Message::Shuffle { origin, ttl: ttl - 1, nodes } });
                    return;
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
                    if let Some(d) = self.detector(p)
                        && self.phi_of(d, now) > self.config.phi_threshold
                    {
                        failed.push(p.clone());
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
        if self.pending.len() >= crate::config::MAX_PENDING {
            self.stats.neighbor_requests_dropped += 1;
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

    pub(crate) fn add_passive(&mut self, peer: P) {
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
