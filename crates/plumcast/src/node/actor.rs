//! The node actor: the loop that owns `proto::State`, the links and the timers, and the
//! dispatch of every input and output. Inputs that outputs give rise to (a peer dropped
//! as too slow) are queued and handled after the current batch: the actor never
//! re-enters itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plumcast_transport::{Hello, Identity, NodeId, PeerInfo, client_config, close_code, encode_frame};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use plumcast_transport::link::{self, Dial, Frame, LinkCtx, LinkEvent, Refusal, Up};

use super::links::{Limits, Links, Sent};
use super::timers::Timers;
use super::wire::{EnvelopeCache, WireCodec};
use super::{
    BroadcastCmd, Control, Cursor, Delivered, Error, Event, Exchange, NetStats, NodeConfig, NodeStats, Page, Reach,
};
use crate::proto::{self, broadcast, membership};

type Proto = proto::State<PeerInfo, ChaCha8Rng>;

/// Period of the housekeeping sweep (retired and idle connections, RTT estimates).
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Longest a broadcast waits staged for its batch's signature when broadcasts come
/// faster than one per STAGE_WAIT (slower ones are signed as soon as the loop is idle):
/// the most batching adds to a message's latency.
const STAGE_WAIT: Duration = Duration::from_millis(1);
/// Events from the connection tasks queued towards the actor; a full queue makes the
/// readers wait (QUIC flow control then pushes back on the peers).
const NET_QUEUE: usize = 1024;
/// How long `leave` waits for the endpoint to finish closing its connections.
const ENDPOINT_CLOSE_WAIT: Duration = Duration::from_millis(100);
/// An hour: the sleep of a loop iteration with no timer pending.
const NO_TIMER: Duration = Duration::from_secs(3600);
/// Most failures remembered as already warned about; the set is cleared when full, so a
/// stream of strangers cannot grow it (they are warned about again, at worst).
const WARNED_MAX: usize = 1024;

/// Failures already logged as warnings: a contact retried with backoff, or a peer of
/// another cluster dialing again, is logged at debug level after the first time.
#[derive(Default)]
struct Warned(BTreeSet<String>);

impl Warned {
    /// Whether `key` is new (and remember it).
    fn first(&mut self, key: String) -> bool {
        if self.0.len() >= WARNED_MAX {
            self.0.clear();
        }
        self.0.insert(key)
    }
}

/// What reaches the actor from its tasks: the links' reports, and bootstrap name lookups.
enum NetEvent {
    Link(LinkEvent<proto::Message<PeerInfo>>),
    /// A bootstrap host name was looked up: its first address of our family, or why not.
    Resolved {
        contact: String,
        addr: Result<SocketAddr, String>,
    },
}

impl From<LinkEvent<proto::Message<PeerInfo>>> for NetEvent {
    fn from(e: LinkEvent<proto::Message<PeerInfo>>) -> Self {
        Self::Link(e)
    }
}

/// What a data dir gave back at start (see [`super::NodeBuilder::data_dir`]).
pub(crate) struct Restored {
    pub dir: Arc<super::durable::DataDir>,
    pub store: Box<dyn broadcast::MessageStore<NodeId>>,
    /// Delivered before this life: never again.
    pub delivered: Vec<(NodeId, u64, u64)>,
    /// Stored but not taken by the application before the restart: delivered at start.
    pub undelivered: Vec<broadcast::Envelope<NodeId>>,
    /// The counters of the last life.
    pub counters: Option<super::durable::Counters>,
    /// Whether the dir had a last life (a restart: catch up on everything missed).
    pub lived: bool,
}

/// What the actor is started with (built by [`super::NodeBuilder`]).
pub(crate) struct ActorInit {
    pub config: NodeConfig,
    pub identity: Identity,
    pub me: PeerInfo,
    pub incarnation: u64,
    pub seed: u64,
    pub endpoint: quinn::Endpoint,
    pub bcast_rx: mpsc::Receiver<BroadcastCmd>,
    pub ctl_rx: mpsc::Receiver<Control>,
    pub app_tx: mpsc::Sender<Event>,
    pub reach_tx: watch::Sender<Reach>,
    pub restored: Option<Restored>,
    pub validator: Option<super::ValidatorFn>,
    /// Our signer and checker of signatures, with its counters (none: unsigned).
    pub signatures: Option<(super::sign::Signatures, Arc<super::sign::SignCounters>)>,
    pub admission: AdmissionInit,
}

/// Who may connect, and where the list comes from (to reload it).
pub(crate) struct AdmissionInit {
    pub admission: plumcast_transport::Admission,
    pub allow: Option<BTreeSet<NodeId>>,
    pub allow_file: Option<std::path::PathBuf>,
    pub certificate_file: Option<std::path::PathBuf>,
    pub cluster_ca_file: Option<std::path::PathBuf>,
}

/// Counters the actor itself keeps (the links keep theirs).
#[derive(Clone, Debug, Default)]
struct ActorStats {
    frames_received: u64,
    dial_failures: u64,
    handshake_failures: u64,
    cluster_mismatches: u64,
    version_mismatches: u64,
    signing_mismatches: u64,
    traffic: super::Traffic,
    neighbor_down: super::NeighborDowns,
    delivery_hops: super::HopHistogram,
    malformed_frames: u64,
    oversized_frames: u64,
    task_panics: u64,
    broadcasts: u64,
    app_events: u64,
    admission_closed: u64,
    forged_closed: u64,
    rejected_closed: u64,
    connections_refused: u64,
}

pub(crate) struct Actor {
    config: NodeConfig,
    identity: Identity,
    me: PeerInfo,
    proto: Proto,
    endpoint: quinn::Endpoint,
    bcast_rx: mpsc::Receiver<BroadcastCmd>,
    ctl_rx: mpsc::Receiver<Control>,
    app_tx: mpsc::Sender<Event>,
    reach_tx: watch::Sender<Reach>,
    net_tx: mpsc::Sender<NetEvent>,
    net_rx: mpsc::Receiver<NetEvent>,
    /// The connection and lookup tasks.
    tasks: JoinSet<()>,
    links: Links,
    /// The links' signal that a writer's queue emptied (to lift congestion).
    drained: Arc<Notify>,
    timers: Timers,
    /// Bootstrap dials (and name lookups) not yet answered.
    bootstrap_inflight: usize,
    /// Whether "rejoining" was logged since the active view was last non-empty.
    rejoin_logged: bool,
    warned: Warned,
    next_conn_id: u64,
    /// Events for the application, handed over at the end of each loop iteration.
    backlog: VecDeque<Event>,
    /// Protocol inputs that outputs gave rise to, handled after the current batch.
    follow_ups: VecDeque<proto::Input<PeerInfo>>,
    /// The envelope bytes of the last Gossip, shared by every eager push of it.
    envelopes: EnvelopeCache,
    /// The outputs of one protocol input, reused (no allocation per input).
    scratch: Vec<proto::Output<PeerInfo>>,
    stats: ActorStats,
    /// The data dir, if any (views saved on change, pending writes flushed).
    data: Option<Arc<super::durable::DataDir>>,
    /// The views last saved to the data dir.
    saved_views: Vec<SocketAddr>,
    /// The transport counters of the lives before this one (from the data dir).
    net_base: NetStats,
    /// When the counters were last saved to the data dir.
    counters_saved: Instant,
    /// Who may connect (shared with the TLS verifiers).
    admission: AdmissionInit,
    /// When the allow-list file was last read.
    admission_read: Instant,
    /// [`super::Node::exchange`] callers, per peer, in the order their exchanges started.
    exchange_waiters: BTreeMap<NodeId, VecDeque<oneshot::Sender<Result<Exchange, Error>>>>,
    /// The time of the event being handled: read once per event (a frame, a timer batch,
    /// a broadcast), so timers armed while handling it start from when it arrived.
    now: Instant,
    /// The signing counters, when messages are signed.
    sign_counters: Option<Arc<super::sign::SignCounters>>,
    /// When the oldest of our staged (numbered, not yet signed) broadcasts was staged.
    staged_since: Option<Instant>,
    /// When the application's last broadcast came in.
    last_broadcast: Option<Instant>,
    /// Broadcasts come faster than one per STAGE_WAIT: a batch waits to fill (up to
    /// STAGE_WAIT) instead of being signed whenever the loop is idle.
    filling: bool,
}

impl Actor {
    pub(crate) fn new(init: ActorInit) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(init.seed);
        let mut backlog = VecDeque::new();
        let mut net_base = NetStats::default();
        let (mut proto, data) = match init.restored {
            None => (proto::State::new(init.me, init.incarnation, init.config.protocol.clone(), rng), None),
            Some(r) => {
                let mut p =
                    proto::State::with_store(init.me, init.incarnation, init.config.protocol.clone(), rng, r.store);
                for (origin, incarnation, seq) in &r.delivered {
                    p.restore_delivered(origin, *incarnation, *seq);
                }
                for e in r.undelivered {
                    p.restore_delivered(&e.origin, e.incarnation, e.seq);
                    // Our own messages are not delivered to us (unless asked), and ours
                    // were never recorded as taken.
                    if e.origin != init.me.id || init.config.protocol.broadcast.deliver_own {
                        let d = broadcast::Delivery { id: e.id(), envelope: e, hops: 0, from: None, recovered: true };
                        backlog.push_back(Event::Delivered(Delivered::from(d)));
                    }
                }
                if r.lived {
                    p.restarted();
                }
                if let Some(c) = r.counters {
                    p.restore_stats(c.membership, c.broadcast);
                    net_base = c.net;
                }
                (p, Some(r.dir))
            }
        };
        let sign_counters = init.signatures.map(|(s, counters)| {
            proto.set_authenticator(Box::new(s));
            counters
        });
        if let Some(v) = init.validator {
            proto.set_validator(Box::new(super::event::AppValidator(v)));
        }
        let (net_tx, net_rx) = mpsc::channel(NET_QUEUE);
        let limits = Limits {
            soft: init.config.peer_queue_soft_limit,
            hard: init.config.peer_queue_hard_limit,
            hard_bytes: init.config.peer_queue_hard_bytes,
            idle: init.config.idle_link_timeout,
        };
        let links = Links::new(init.me.id, limits);
        Self {
            drained: links.drained().clone(),
            links,
            config: init.config,
            identity: init.identity,
            me: init.me,
            proto,
            endpoint: init.endpoint,
            bcast_rx: init.bcast_rx,
            ctl_rx: init.ctl_rx,
            app_tx: init.app_tx,
            reach_tx: init.reach_tx,
            net_tx,
            net_rx,
            tasks: JoinSet::new(),
            timers: Timers::default(),
            bootstrap_inflight: 0,
            rejoin_logged: false,
            warned: Warned::default(),
            next_conn_id: 0,
            backlog,
            data,
            saved_views: Vec::new(),
            net_base,
            counters_saved: Instant::now(),
            exchange_waiters: BTreeMap::new(),
            admission: init.admission,
            admission_read: Instant::now(),
            follow_ups: VecDeque::new(),
            envelopes: EnvelopeCache::default(),
            scratch: Vec::new(),
            stats: ActorStats::default(),
            now: Instant::now(),
            sign_counters,
            staged_since: None,
            last_broadcast: None,
            filling: false,
        }
    }

    pub(crate) async fn run(mut self) {
        debug!(addr = %self.me.addr, id = %self.me.id, "node listening");
        if let Some(d) = &self.data {
            self.tasks.spawn(d.recorder().flush_forever());
        }
        self.flush_app().await;
        let contacts = self.config.bootstrap.clone();
        self.spawn_bootstrap(contacts);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Due timers first: a steady stream of peer frames must not starve heartbeats
            // and failure detection (the select below is biased towards peer input).
            if self.timers.next().is_some_and(|at| at <= Instant::now()) {
                self.fire_timers();
            }
            if self.staged_since.is_some_and(|t| t.elapsed() >= STAGE_WAIT) {
                self.flush_staged();
            }
            let next_timer = self.timers.next();
            let accept_broadcasts = !self.links.congested();
            tokio::select! {
                biased;
                ctl = self.ctl_rx.recv() => match ctl {
                    Some(Control::Shutdown(reply)) => {
                        self.leave().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Control::Neighbors(reply)) => self.reply_neighbors(reply),
                    Some(Control::Exchange(peer, reply)) => self.start_exchange(peer, reply),
                    Some(Control::ReloadAdmission(reply)) => {
                        let _ = reply.send(self.reload_admission());
                    }
                    Some(Control::ReadAfter(cursor, max, reply)) => {
                        let _ = reply.send(self.read_after(&cursor, max));
                    }
                    Some(Control::VersionVector(reply)) => {
                        let _ = reply.send(Cursor::from(self.proto.broadcast_state().version_vector()));
                    }
                    Some(Control::Stats(reply)) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Some(Control::Topology(reply)) => {
                        let now = self.now.into_std();
                        let records = self
                            .proto
                            .topology()
                            .values()
                            .map(|k| (k.record.clone(), now.saturating_duration_since(k.heard), k.failed))
                            .collect();
                        let _ = reply.send(records);
                    }
                    None => {
                        // Every Node handle was dropped: leave without anyone waiting.
                        self.leave().await;
                        return;
                    }
                },
                Some(ev) = self.net_rx.recv() => self.on_net(ev),
                () = tokio::time::sleep_until(next_timer.unwrap_or_else(|| Instant::now() + NO_TIMER)), if next_timer.is_some() => self.fire_timers(),
                Some(cmd) = self.bcast_rx.recv(), if accept_broadcasts => self.on_broadcast(cmd),
                () = self.drained.notified(), if !accept_broadcasts => self.links.recheck_congestion(),
                Some(incoming) = self.endpoint.accept() => self.accept(incoming),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => self.on_task_done(done),
                _ = sweep.tick() => self.sweep(),
                // Nothing else is ready: sign and send what was staged.
                () = std::future::ready(()), if self.staged_since.is_some() && !self.filling => self.flush_staged(),
                () = tokio::time::sleep_until(self.staged_since.unwrap_or(self.now) + STAGE_WAIT), if self.staged_since.is_some() && self.filling => self.flush_staged(),
            }
            self.flush_app().await;
        }
    }

    /// Hand queued events to the application, waiting while its queue is full: this is
    /// where a slow application pushes back on the whole node.
    async fn flush_app(&mut self) {
        while let Some(ev) = self.backlog.pop_front() {
            self.stats.app_events += 1;
            if self.app_tx.send(ev).await.is_err() {
                // The application dropped its stream: nobody to deliver to.
                self.backlog.clear();
            }
        }
    }

    /// A connection task ended. Its errors reached us as events; a panic did not.
    fn on_task_done(&mut self, done: Result<(), tokio::task::JoinError>) {
        if let Err(e) = done
            && e.is_panic()
        {
            self.stats.task_panics += 1;
            tracing::error!(error = %e, "a connection task panicked");
        }
    }

    fn reply_neighbors(&self, reply: oneshot::Sender<Vec<PeerInfo>>) {
        let _ = reply.send(self.proto.membership().active_view().to_vec());
    }

    fn snapshot(&self) -> NodeStats {
        let m = self.proto.membership();
        let b = self.proto.broadcast_state();
        let l = self.links.stats();
        let a = &self.stats;
        let net = NetStats {
            frames_sent: l.frames_sent,
            bytes_sent: l.bytes_sent,
            frames_dropped: l.frames_dropped,
            task_panics: a.task_panics,
            frames_received: a.frames_received,
            connections_dialed: l.connections_dialed,
            connections_accepted: l.connections_accepted,
            connections_retired: l.connections_retired,
            connections_idle_closed: l.connections_idle_closed,
            dial_failures: a.dial_failures,
            handshake_failures: a.handshake_failures,
            cluster_mismatches: a.cluster_mismatches,
            version_mismatches: a.version_mismatches,
            signing_mismatches: a.signing_mismatches,
            malformed_frames: a.malformed_frames,
            oversized_frames: a.oversized_frames,
            slow_peer_disconnects: l.slow_peer_disconnects,
            unroutable: self.proto.unroutable(),
            backpressure_events: l.backpressure_events,
            broadcasts: a.broadcasts,
            app_events: a.app_events,
            admission_refused: self.admission.admission.refused(),
            admission_closed: a.admission_closed,
            forged_closed: a.forged_closed,
            rejected_closed: a.rejected_closed,
            connections_refused: a.connections_refused,
        }
        .plus(&self.net_base);
        NodeStats {
            active_view: m.active_view().to_vec(),
            passive_view: m.passive_view().to_vec(),
            eager: b.eager_peers().len(),
            lazy: b.lazy_peers().len(),
            membership: m.stats().clone(),
            broadcast: b.stats().clone(),
            store: {
                let z = b.store_size();
                super::StoreStats {
                    messages: z.messages,
                    bytes: z.bytes,
                    incarnations: z.incarnations,
                    origins: z.origins,
                }
            },
            version_vector: b.versions_len(),
            missing: b.missing_len(),
            cache: b.cache_len(),
            tasks: self.tasks.len(),
            signatures: self.sign_counters.as_ref().map_or_else(super::SignStats::default, |c| {
                use std::sync::atomic::Ordering::Relaxed;
                super::SignStats {
                    signed_batches: c.signed_batches.load(Relaxed),
                    signed_messages: c.signed_messages.load(Relaxed),
                    verifications: c.verifications.load(Relaxed),
                    cache_hits: c.cache_hits.load(Relaxed),
                }
            }),
            net,
            neighbors: {
                let eager = b.eager_peers();
                let now = self.now.into_std();
                m.active_view()
                    .iter()
                    .map(|p| {
                        let (queued_frames, queued_bytes) = self.links.queued(p.id);
                        super::NeighborStats {
                            peer: *p,
                            eager: eager.contains(&p.id),
                            phi: m.phi(now, p),
                            queued_frames,
                            queued_bytes,
                        }
                    })
                    .collect()
            },
            dials_pending: self.links.dials_pending(),
            traffic: a.traffic.clone(),
            neighbor_down: a.neighbor_down,
            delivery_hops: a.delivery_hops.clone(),
            topology: self.proto.topology_stats(),
            topology_records: self.proto.topology().len(),
        }
    }

    /// Start an exchange the application asked for; `reply` gets its report.
    fn start_exchange(&mut self, peer: NodeId, reply: oneshot::Sender<Result<Exchange, Error>>) {
        self.now = Instant::now();
        let mut out = std::mem::take(&mut self.scratch);
        match self.proto.exchange(self.now.into_std(), &peer) {
            Ok(outputs) => {
                out.extend(outputs);
                self.exchange_waiters.entry(peer).or_default().push_back(reply);
            }
            Err(reason) => {
                let _ = reply.send(Err(Error::Exchange { peer, reason }));
            }
        }
        self.perform(out);
        self.run_follow_ups();
    }

    /// Up to `max` stored messages after `cursor`, and the cursor advanced over them.
    fn read_after(&self, cursor: &Cursor, max: usize) -> Page {
        let (envelopes, full) = self.proto.broadcast_state().read_after(cursor.heads(), max, usize::MAX);
        let mut next = cursor.clone();
        let messages: Vec<Delivered> = envelopes
            .into_iter()
            .map(|e| {
                let d = broadcast::Delivery { id: e.id(), envelope: e, hops: 0, from: None, recovered: false };
                let d = Delivered::from(d);
                next.advance(&d);
                d
            })
            .collect();
        Page { messages, cursor: next, full }
    }

    fn on_broadcast(&mut self, cmd: BroadcastCmd) {
        self.now = Instant::now();
        self.stats.broadcasts += 1;
        if self.sign_counters.is_some() && self.data.is_none() {
            // Signed in a batch with whatever else is staged: when the batch is full, or
            // after STAGE_WAIT, or, if broadcasts come slower than one per STAGE_WAIT,
            // as soon as the loop has nothing else to do. The id
            // is final already. (With a data dir each broadcast is durable before it
            // returns, so it is signed and stored alone.)
            let id = self.proto.stage(cmd.payload);
            let _ = cmd.reply.send(id);
            self.filling = self.last_broadcast.is_some_and(|t| self.now.saturating_duration_since(t) < STAGE_WAIT);
            self.last_broadcast = Some(self.now);
            self.staged_since.get_or_insert(self.now);
            if self.proto.staged_len() >= super::sign::MAX_BATCH {
                self.flush_staged();
            }
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        let (id, outputs) = self.proto.broadcast(self.now.into_std(), cmd.payload);
        out.extend(outputs);
        self.perform(out);
        self.run_follow_ups();
        let _ = cmd.reply.send(id);
    }

    /// Sign the staged broadcasts (one signature) and send them.
    fn flush_staged(&mut self) {
        self.now = Instant::now();
        self.staged_since = None;
        let mut out = std::mem::take(&mut self.scratch);
        out.extend(self.proto.flush_staged(self.now.into_std()));
        self.perform(out);
        self.run_follow_ups();
    }

    fn fire_timers(&mut self) {
        self.now = Instant::now();
        while let Some(timer) = self.timers.pop_due(self.now) {
            self.input(proto::Input::Timer(timer));
        }
    }

    /// Feed one input to the protocol and carry out its outputs, then the inputs those
    /// gave rise to.
    fn input(&mut self, input: proto::Input<PeerInfo>) {
        self.follow_ups.push_back(input);
        self.run_follow_ups();
    }

    fn run_follow_ups(&mut self) {
        while let Some(input) = self.follow_ups.pop_front() {
            let mut out = std::mem::take(&mut self.scratch);
            out.extend(self.proto.handle(self.now.into_std(), input));
            self.perform(out);
        }
    }

    /// Carry out the protocol's outputs, in order, then keep the buffer for the next
    /// input.
    fn perform(&mut self, mut out: Vec<proto::Output<PeerInfo>>) {
        for o in out.drain(..) {
            match o {
                proto::Output::Send { to, message } => self.send(to, &message),
                proto::Output::Disconnect { peer } => self.links.close(peer.id, close_code::FAILED, "declared failed"),
                proto::Output::Timer { at, timer } => self.timers.set(Instant::from_std(at), timer),
                proto::Output::Rejoin => {
                    if self.bootstrap_inflight == 0 && !self.config.bootstrap.is_empty() {
                        if self.rejoin_logged {
                            debug!("both views empty: retrying the bootstrap contacts");
                        } else {
                            info!("both views empty: rejoining through the bootstrap contacts (with backoff)");
                            self.rejoin_logged = true;
                        }
                        let contacts = self.config.bootstrap.clone();
                        self.spawn_bootstrap(contacts);
                    }
                }
                proto::Output::Event(e) => self.on_event(e),
                proto::Output::Penalize { peer, reason } => {
                    match reason {
                        broadcast::Penalty::Forged => self.stats.forged_closed += 1,
                        broadcast::Penalty::Rejected => self.stats.rejected_closed += 1,
                    }
                    if self.warned.first(format!("penalized {peer} {}", reason.as_str())) {
                        warn!(peer = %peer, reason = reason.as_str(), "closing the link of a peer that sent a {} message (further ones at debug level)", reason.as_str());
                    } else {
                        debug!(peer = %peer, reason = reason.as_str(), "closing the link of a peer that sent a bad message");
                    }
                    self.links.close(peer, close_code::FAILED, &format!("sent a {} message", reason.as_str()));
                }
            }
        }
        self.scratch = out;
    }

    fn on_event(&mut self, e: proto::Event<PeerInfo>) {
        let ev = match e {
            proto::Event::Neighbor(membership::Event::NeighborUp(p)) => {
                debug!(peer = %p, "neighbor up");
                self.rejoin_logged = false;
                self.publish_reach();
                self.save_views();
                Event::NeighborUp(p)
            }
            proto::Event::Neighbor(membership::Event::NeighborDown { peer, reason }) => {
                debug!(peer = %peer, reason = reason.as_str(), "neighbor down");
                self.stats.neighbor_down.count(reason);
                self.publish_reach();
                Event::NeighborDown { peer, reason }
            }
            proto::Event::Delivered(d) => {
                self.stats.delivery_hops.observe(d.hops);
                Event::Delivered(Delivered::from(d))
            }
            proto::Event::Exchanged(x) => {
                debug!(
                    peer = %x.peer.short(), trigger = ?x.trigger, complete = x.complete,
                    sent = x.sent_messages, received = x.received_messages, recovered = x.recovered,
                    ms = x.duration.as_millis() as u64, "anti-entropy exchange"
                );
                if x.trigger == broadcast::Trigger::Requested
                    && let Some(waiters) = self.exchange_waiters.get_mut(&x.peer)
                {
                    if let Some(w) = waiters.pop_front() {
                        let _ = w.send(Ok(x.clone()));
                    }
                    if waiters.is_empty() {
                        self.exchange_waiters.remove(&x.peer);
                    }
                }
                Event::Exchanged(x)
            }
        };
        self.backlog.push_back(ev);
    }

    fn send(&mut self, to: PeerInfo, message: &proto::Message<PeerInfo>) {
        if to.id == self.me.id {
            return;
        }
        // IHave announcements are queued like everything else, even to a congested peer:
        // shedding one can leave a node that lost its eager parent without any way to
        // learn of the message (measured: 3 of 12 max-rate runs incomplete with shedding,
        // 0 of 12 without; docs/performance.md).
        // Eager push emits the same Gossip for every eager peer in a row: its envelope
        // bytes (as received, or encoded once) are shared, only the round is written anew.
        let frame = match message {
            proto::Message::Broadcast(broadcast::Message::Gossip { round, envelope }) => {
                self.envelopes.gossip(*round, envelope)
            }
            _ => encode_frame(message).map(Frame::Whole),
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                warn!(peer = %to, error = %e, "cannot encode a frame: dropped");
                self.links.unencodable();
                return;
            }
        };
        self.stats.traffic.count_sent(super::MessageKind::of(message), frame.len());
        match self.links.send(self.now, to, frame) {
            Sent::Queued => {}
            Sent::Dial => self.dial(Some(to), to.addr),
            Sent::TooSlow => {
                self.follow_ups.push_back(proto::Input::Membership(membership::Input::ConnectionLost { peer: to }))
            }
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            version: plumcast_transport::WIRE_VERSION,
            cluster: self.config.cluster.clone(),
            addr: self.me.addr,
            signed: self.sign_counters.is_some(),
        }
    }

    fn ctx(&mut self, dial: Option<Dial>) -> LinkCtx<NetEvent> {
        self.next_conn_id += 1;
        LinkCtx {
            conn_id: self.next_conn_id,
            events: self.net_tx.clone(),
            hello: self.hello(),
            max_frame: self.config.transport.max_frame_size,
            handshake_timeout: self.config.transport.handshake_timeout,
            drained: self.drained.clone(),
            writer_drops: self.links.writer_drops().clone(),
            dial,
        }
    }

    fn dial(&mut self, expected: Option<PeerInfo>, addr: SocketAddr) {
        let ctx = self.ctx(Some(Dial { expected, addr }));
        let cfg = match client_config(
            &self.identity,
            expected.map(|p| p.id),
            &self.config.transport,
            &self.admission.admission,
        ) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "client config");
                return;
            }
        };
        match self.endpoint.connect_with(cfg, addr, plumcast_transport::SERVER_NAME) {
            Ok(connecting) => {
                self.tasks.spawn(link::run(connecting, ctx, WireCodec));
            }
            Err(e) => {
                let net_tx = self.net_tx.clone();
                let reason = e.to_string();
                self.tasks.spawn(async move {
                    let _ = net_tx.send(LinkEvent::DialFailed { expected, addr, kind: None, reason }.into()).await;
                });
            }
        }
    }

    fn accept(&mut self, incoming: quinn::Incoming) {
        // Every connection task, in its handshake or open, and the name lookups.
        if self.tasks.len() >= self.config.max_connections {
            self.stats.connections_refused += 1;
            if self.warned.first("connection cap".into()) {
                warn!(
                    max = self.config.max_connections,
                    from = %incoming.remote_address(),
                    "refusing incoming connections: at the connection limit (further refusals at debug level)"
                );
            } else {
                debug!(from = %incoming.remote_address(), "refused an incoming connection: at the connection limit");
            }
            incoming.refuse();
            return;
        }
        let ctx = self.ctx(None);
        match incoming.accept() {
            Ok(connecting) => {
                self.tasks.spawn(link::run(connecting, ctx, WireCodec));
            }
            Err(e) => {
                self.stats.handshake_failures += 1;
                debug!(error = %e, "incoming connection failed");
            }
        }
    }

    /// Resolve and dial every bootstrap contact (no expected id: accept the one proven).
    fn spawn_bootstrap(&mut self, contacts: Vec<String>) {
        for contact in contacts {
            self.bootstrap_inflight += 1;
            match contact.parse::<SocketAddr>() {
                Ok(addr) => self.dial(None, addr),
                Err(_) => {
                    let net_tx = self.net_tx.clone();
                    let ipv4 = self.me.addr.is_ipv4();
                    self.tasks.spawn(async move {
                        let family = if ipv4 { "IPv4" } else { "IPv6" };
                        let addr = match tokio::net::lookup_host(contact.as_str()).await {
                            Ok(mut it) => it.find(|a| a.is_ipv4() == ipv4).ok_or(format!("it has no {family} address")),
                            Err(e) => Err(e.to_string()),
                        };
                        let _ = net_tx.send(NetEvent::Resolved { contact, addr }).await;
                    });
                }
            }
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        // Read per event: the loop-top clock read happened before `select!` slept (up to
        // a heartbeat period), and timers armed from a stale `now` fire early.
        self.now = Instant::now();
        let ev = match ev {
            NetEvent::Link(ev) => ev,
            NetEvent::Resolved { contact, addr: Ok(addr) } => {
                debug!(%contact, %addr, "bootstrap contact resolved");
                // The in-flight bootstrap count carries over to the dial.
                return self.dial(None, addr);
            }
            NetEvent::Resolved { contact, addr: Err(reason) } => {
                self.stats.dial_failures += 1;
                let reason = format!("cannot resolve {contact}: {reason}");
                return self.bootstrap_unreachable(&contact, None, reason);
            }
        };
        match ev {
            LinkEvent::Up(up) => self.on_up(up),
            LinkEvent::Message { from, conn_id, message, raw, bytes } => {
                self.stats.frames_received += 1;
                self.stats.traffic.count_received(super::MessageKind::of(&message), bytes);
                if let Some(bytes) = raw {
                    self.envelopes.received(&message, bytes);
                }
                self.links.heard(self.now, from.id, conn_id);
                self.input(proto::Input::Message { from, message });
            }
            LinkEvent::Down { peer, conn_id, reason } => {
                if let Some(info) = self.links.down(peer, conn_id) {
                    debug!(peer = %peer.short(), %reason, "connection lost");
                    self.input(proto::Input::Membership(membership::Input::ConnectionLost { peer: info }));
                }
            }
            LinkEvent::Refused { peer, after_dial_failed, conn_id, kind, reason } => {
                self.on_refused(peer, after_dial_failed, conn_id, kind, reason)
            }
            LinkEvent::DialFailed { expected: Some(p), reason, .. } => {
                self.stats.dial_failures += 1;
                debug!(peer = %p, %reason, "dial failed");
                self.dial_failed(format!("dialing {p}: {reason}"));
                self.links.dial_failed(p.id);
                self.input(proto::Input::Membership(membership::Input::ConnectionLost { peer: p }));
            }
            LinkEvent::DialFailed { expected: None, addr, kind, reason } => {
                self.stats.dial_failures += 1;
                self.bootstrap_unreachable(&addr.to_string(), kind, reason);
            }
            LinkEvent::WriterDone { .. } => {}
        }
    }

    /// Publish the active view's size to the handles waiting on it.
    fn publish_reach(&self) {
        let active = self.proto.membership().active_view().len();
        self.reach_tx.send_modify(|r| r.active = active);
    }

    /// Remember the last dial failure for [`super::Node::wait_for_neighbors`]'s error.
    fn dial_failed(&self, reason: String) {
        self.reach_tx.send_modify(|r| r.last_dial_failure = Some(reason));
    }

    /// A bootstrap contact could not be reached; when none is left in flight, the
    /// protocol retries later with backoff. Each contact's kind of failure is warned
    /// about once (a retry failing the same way is logged at debug level).
    fn bootstrap_unreachable(&mut self, contact: &str, kind: Option<Refusal>, reason: String) {
        if self.warned.first(format!("bootstrap {contact} {kind:?}")) {
            if kind == Some(Refusal::WrongCluster) {
                warn!(
                    %contact, %reason,
                    "bootstrap contact belongs to another cluster (check the cluster name); retrying with backoff"
                );
            } else if kind == Some(Refusal::WrongSigning) {
                warn!(
                    %contact, %reason,
                    "bootstrap contact uses the other signing mode (check --unsigned); retrying with backoff"
                );
            } else {
                warn!(%contact, %reason, "bootstrap contact unreachable; retrying with backoff");
            }
        } else {
            debug!(%contact, %reason, "bootstrap contact unreachable");
        }
        self.dial_failed(format!("bootstrap contact {contact}: {reason}"));
        self.bootstrap_inflight = self.bootstrap_inflight.saturating_sub(1);
        if self.bootstrap_inflight == 0 {
            self.input(proto::Input::Membership(membership::Input::JoinFailed));
        }
    }

    fn on_refused(
        &mut self,
        peer: Option<PeerInfo>,
        after_dial_failed: bool,
        conn_id: u64,
        kind: Refusal,
        reason: String,
    ) {
        match kind {
            Refusal::Handshake => self.stats.handshake_failures += 1,
            Refusal::WrongCluster => self.stats.cluster_mismatches += 1,
            Refusal::WrongVersion => self.stats.version_mismatches += 1,
            Refusal::WrongSigning => self.stats.signing_mismatches += 1,
            Refusal::Malformed => self.stats.malformed_frames += 1,
            Refusal::Oversized => self.stats.oversized_frames += 1,
        }
        // The peer is known once TLS and the Hello completed.
        let who = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        // A failed dial was logged with its DialFailed; a peer refused for a reason it
        // keeps giving (another cluster, a malformed frame) is warned about once.
        let quiet = kind == Refusal::Handshake
            || after_dial_failed
            || !self.warned.first(format!("{kind:?} {:?}", peer.map(|p| p.id)));
        if quiet {
            debug!(peer = %who, ?kind, %reason, "connection refused");
        } else if kind == Refusal::WrongCluster {
            warn!(peer = %who, %reason, "refused a node of another cluster (further attempts are logged at debug level)");
        } else if kind == Refusal::WrongVersion {
            warn!(peer = %who, %reason, "refused a node of another wire version (further attempts are logged at debug level)");
        } else if kind == Refusal::WrongSigning {
            warn!(peer = %who, %reason, "refused a node of the other signing mode (further attempts are logged at debug level)");
        } else {
            warn!(peer = %who, ?kind, %reason, "connection refused (further ones of this peer and kind at debug level)");
        }
        if let Some(p) = peer {
            self.links.refused(p.id, conn_id);
            if kind != Refusal::Handshake {
                self.input(proto::Input::Membership(membership::Input::Misbehaved { peer: p }));
            }
        }
    }

    fn on_up(&mut self, up: Up) {
        let (peer, bootstrap) = (up.peer, up.bootstrap);
        if bootstrap {
            self.bootstrap_inflight = self.bootstrap_inflight.saturating_sub(1);
        }
        if self.links.up(self.now, up) && bootstrap {
            self.input(proto::Input::Membership(membership::Input::Join { contact: peer }));
        }
    }

    fn sweep(&mut self) {
        let m = self.proto.membership();
        let in_use = |id: NodeId| {
            let p = PeerInfo { id, addr: self.me.addr };
            m.is_active(&p) || m.pending().any(|q| q.id == id)
        };
        let rtts = self.links.sweep(Instant::now(), in_use);
        self.save_views();
        let a = &self.admission;
        if (a.allow_file.is_some() || a.cluster_ca_file.is_some() || a.certificate_file.is_some())
            && self.admission_read.elapsed() >= super::ADMISSION_POLL
            && let Err(e) = self.reload_admission()
            && self.warned.first(format!("admission {e}"))
        {
            warn!(error = %e, "cannot read the allow-list again; the list in force is kept");
        }
        if self.counters_saved.elapsed() >= super::stats::COUNTERS_EVERY {
            self.save_counters();
        }
        // Graft retry waits follow quinn's RTT estimate (Plumtree §3.6: about one round trip).
        for (id, rtt) in rtts {
            self.proto.set_rtt(id, rtt);
        }
    }

    /// Keep the active and passive views in the data dir when they changed (a restart
    /// rejoins through them).
    fn save_views(&mut self) {
        let Some(d) = &self.data else { return };
        let m = self.proto.membership();
        let mut views: Vec<SocketAddr> = m.active_view().iter().chain(m.passive_view()).map(|p| p.addr).collect();
        views.sort_unstable();
        if !views.is_empty() && views != self.saved_views {
            debug!(views = views.len(), "saving the views to the data dir");
            if let Err(e) = d.save_peers(&views) {
                if self.warned.first("save views".into()) {
                    warn!(error = %e, "cannot save the views to the data dir (further failures at debug level)");
                } else {
                    debug!(error = %e, "cannot save the views to the data dir");
                }
            }
            self.saved_views = views;
        }
    }

    /// Read the allow-list, the cluster CA certificate and our own certificate again, and
    /// close the links to peers that no longer pass; returns how many ids the list admits.
    /// Nothing is changed if any of them cannot be read.
    fn reload_admission(&mut self) -> Result<usize, Error> {
        self.admission_read = Instant::now();
        let a = &self.admission;
        let ids = super::allowed_ids(a.allow.as_ref(), a.allow_file.as_deref()).map_err(Error::Config)?;
        let ca = a.cluster_ca_file.as_deref().map(plumcast_transport::ca::load_certificate).transpose()?;
        let cert = a.certificate_file.as_deref().map(plumcast_transport::ca::load_certificate).transpose()?;
        let identity = match cert {
            Some(c) if c != *self.identity.certificate() => Some(self.identity.clone().with_certificate(c)?),
            _ => None,
        };
        let n = ids.as_ref().map_or(0, std::collections::BTreeSet::len);
        if ids != a.admission.ids() {
            info!(ids = n, "allow-list reloaded");
        }
        if ca.is_some() {
            a.admission.set_ca(ca)?;
        }
        a.admission.set(ids);
        if let Some(id) = identity {
            // Our own certificate was renewed: new handshakes present it.
            let t = &self.config.transport;
            let server = plumcast_transport::server_config(&id, t, &self.admission.admission)?;
            let client = client_config(&id, None, t, &self.admission.admission)?;
            self.endpoint.set_server_config(Some(server));
            self.endpoint.set_default_client_config(client);
            self.identity = id;
            info!("own certificate reloaded");
        }
        let m = self.proto.membership();
        let known: Vec<PeerInfo> = m.active_view().iter().chain(m.passive_view()).copied().collect();
        for (id, conn) in self.links.open_conns() {
            if self.admission.admission.passes_connection(&conn) {
                continue;
            }
            self.stats.admission_closed += 1;
            warn!(peer = %id.short(), "closing the link to a peer that no longer passes admission");
            self.links.close(id, close_code::NOT_ADMITTED, "not admitted");
            if let Some(p) = known.iter().find(|p| p.id == id) {
                self.follow_ups.push_back(proto::Input::Membership(membership::Input::ConnectionLost { peer: *p }));
            }
        }
        self.run_follow_ups();
        Ok(n)
    }

    /// Keep the counters in the data dir (a restart goes on counting from them).
    fn save_counters(&mut self) {
        self.counters_saved = Instant::now();
        let Some(d) = &self.data else { return };
        let s = self.snapshot();
        let counters = super::durable::Counters { membership: s.membership, broadcast: s.broadcast, net: s.net };
        if let Err(e) = d.save_counters(&counters) {
            if self.warned.first("save counters".into()) {
                warn!(error = %e, "cannot save the counters to the data dir (further failures at debug level)");
            } else {
                debug!(error = %e, "cannot save the counters to the data dir");
            }
        }
    }

    /// Graceful leave: Disconnect to the neighbours, flush, close, drain tasks.
    async fn leave(&mut self) {
        if self.staged_since.is_some() {
            // Broadcasts whose ids were returned go out before we leave.
            self.flush_staged();
        }
        self.save_views();
        let neighbors: Vec<NodeId> = self.proto.membership().active_view().iter().map(|p| p.id).collect();
        self.input(proto::Input::Membership(membership::Input::Leave));
        self.flush_app().await;
        // Wait for the writers of active links (they carry our Disconnect); transient
        // links may point at dead peers and would only burn the linger. Dropping the
        // queues lets each writer finish its stream after the last frame.
        let links = self.links.drain();
        let mut waiting: Vec<u64> =
            links.iter().filter(|(id, _, _)| neighbors.contains(id)).map(|(_, conn_id, _)| *conn_id).collect();
        let deadline = Instant::now() + self.config.shutdown_linger;
        while !waiting.is_empty() {
            tokio::select! {
                Some(ev) = self.net_rx.recv() => {
                    if let NetEvent::Link(LinkEvent::WriterDone { conn_id } | LinkEvent::Down { conn_id, .. }) = ev {
                        waiting.retain(|c| *c != conn_id);
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        debug!(unflushed = waiting.len(), "leave: writers flushed");
        for (_, _, c) in links {
            c.close(close_code::NORMAL.into(), b"leave");
        }
        self.links.close_retired();
        self.endpoint.close(close_code::NORMAL.into(), b"leave");
        let _ = tokio::time::timeout(ENDPOINT_CLOSE_WAIT, self.endpoint.wait_idle()).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.save_counters();
        if let Some(d) = &self.data {
            d.recorder().flush();
        }
        info!("node left");
    }
}
