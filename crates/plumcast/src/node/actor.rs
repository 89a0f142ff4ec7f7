//! The node actor: owns `proto::State`, the connection table and the timers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use plumcast_transport::{Hello, Identity, NodeId, PeerInfo, client_config, close_code, encode_frame};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::conn::{self, ConnCtx, Dial, NetEvent, Refusal, Up};
use super::wire::{EnvelopeCache, Frame};
use super::{BroadcastCmd, Control, Delivered, Event, NetStats, NodeConfig, NodeStats};
use crate::proto::{self, broadcast};

type Proto = proto::State<PeerInfo, ChaCha8Rng>;
type Timer = proto::Timer<PeerInfo>;

/// A duplicate connection stays open this long after it lost the tie-break, so frames
/// already in flight on it arrive (both sides have seen the winner by then).
const RETIRE_GRACE: Duration = Duration::from_secs(5);
/// Period of the housekeeping sweep (retired and idle connections).
const SWEEP_EVERY: Duration = Duration::from_millis(500);

pub(crate) struct Parts {
    pub config: NodeConfig,
    pub identity: Identity,
    pub me: PeerInfo,
    pub incarnation: u64,
    pub seed: u64,
    pub endpoint: quinn::Endpoint,
    pub bcast_rx: mpsc::Receiver<BroadcastCmd>,
    pub ctl_rx: mpsc::Receiver<Control>,
    pub app_tx: mpsc::Sender<Event>,
    pub neighbors_tx: watch::Sender<usize>,
}

struct Link {
    conn_id: u64,
    conn: quinn::Connection,
    tx: mpsc::UnboundedSender<Frame>,
    depth: Arc<AtomicUsize>,
    dialed_by_me: bool,
    last_active: Instant,
}

struct Pending {
    frames: Vec<Frame>,
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
    neighbors_tx: watch::Sender<usize>,
    net_tx: mpsc::Sender<NetEvent>,
    net_rx: mpsc::Receiver<NetEvent>,
    tasks: JoinSet<()>,
    /// Keyed by authenticated ids; FxHash (a lookup per frame sent) is safe here.
    links: FxHashMap<NodeId, Link>,
    retired: HashMap<u64, (quinn::Connection, Instant)>,
    dialing: HashMap<NodeId, Pending>,
    bootstrap_inflight: usize,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    next_conn_id: u64,
    backlog: VecDeque<Event>,
    congested: bool,
    drained: Arc<Notify>,
    /// Frames the connection writers discarded when their connection failed.
    writer_drops: Arc<AtomicU64>,
    left_to: Vec<NodeId>,
    /// The envelope bytes of the last Gossip, shared by every eager push of it.
    envelopes: EnvelopeCache,
    /// The outputs of one protocol input, reused.
    scratch: Vec<proto::Output<PeerInfo>>,
    stats: NetStats,
    /// The time of this loop iteration (one clock read per iteration, not per frame).
    now: Instant,
}

impl Actor {
    pub(crate) fn new(p: Parts) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(p.seed);
        let proto = proto::State::new(p.me, p.incarnation, p.config.protocol.clone(), rng);
        let (net_tx, net_rx) = mpsc::channel(1024);
        Self {
            config: p.config,
            identity: p.identity,
            me: p.me,
            proto,
            endpoint: p.endpoint,
            bcast_rx: p.bcast_rx,
            ctl_rx: p.ctl_rx,
            app_tx: p.app_tx,
            neighbors_tx: p.neighbors_tx,
            net_tx,
            net_rx,
            tasks: JoinSet::new(),
            links: FxHashMap::default(),
            retired: HashMap::new(),
            dialing: HashMap::new(),
            bootstrap_inflight: 0,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            next_conn_id: 0,
            backlog: VecDeque::new(),
            congested: false,
            drained: Arc::new(Notify::new()),
            writer_drops: Arc::new(AtomicU64::new(0)),
            left_to: Vec::new(),
            envelopes: EnvelopeCache::default(),
            scratch: Vec::new(),
            now: Instant::now(),
            stats: NetStats::default(),
        }
    }

    pub(crate) async fn run(mut self) {
        info!(addr = %self.me.addr, id = %self.me.id, "node listening");
        let contacts = self.config.bootstrap.clone();
        self.spawn_bootstrap(contacts);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.now = Instant::now();
            // Due timers first: a steady stream of peer frames must not starve heartbeats
            // and failure detection (the select below is biased towards peer input).
            if self.timers.peek().is_some_and(|Reverse((at, _, _))| *at <= self.now) {
                self.fire_timers();
            }
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let far = self.now + Duration::from_secs(3600);
            let accept_broadcasts = !self.congested;
            tokio::select! {
                biased;
                ctl = self.ctl_rx.recv() => match ctl {
                    Some(Control::Shutdown(reply)) => {
                        self.leave().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Control::Neighbors(reply)) => self.reply_neighbors(reply),
                    Some(Control::Stats(reply)) => {
                        let _ = reply.send(self.snapshot());
                    }
                    None => {
                        // Every Node handle was dropped: leave without anyone waiting.
                        self.leave().await;
                        return;
                    }
                },
                Some(ev) = self.net_rx.recv() => self.on_net(ev),
                () = tokio::time::sleep_until(next_timer.unwrap_or(far)), if next_timer.is_some() => self.fire_timers(),
                Some(cmd) = self.bcast_rx.recv(), if accept_broadcasts => self.on_broadcast(cmd),
                () = self.drained.notified(), if self.congested => self.recheck_congestion(),
                Some(incoming) = self.endpoint.accept() => self.accept(incoming),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => self.on_task_done(done),
                _ = sweep.tick() => self.sweep(),
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
        if let Err(e) = done {
            if e.is_panic() {
                self.stats.task_panics += 1;
                tracing::error!(error = %e, "a connection task panicked");
            }
        }
    }

    fn reply_neighbors(&self, reply: oneshot::Sender<Vec<PeerInfo>>) {
        let _ = reply.send(self.proto.membership().active_view().to_vec());
    }

    fn snapshot(&self) -> NodeStats {
        let m = self.proto.membership();
        let b = self.proto.broadcast_state();
        let mut net = self.stats.clone();
        net.unroutable = self.proto.unroutable();
        net.frames_dropped.connection_lost += self.writer_drops.load(Ordering::Relaxed);
        NodeStats {
            active_view: m.active_view().to_vec(),
            passive_view: m.passive_view().to_vec(),
            eager: b.eager_peers().len(),
            lazy: b.lazy_peers().len(),
            membership: m.stats().clone(),
            broadcast: b.stats().clone(),
            net,
        }
    }

    fn on_broadcast(&mut self, cmd: BroadcastCmd) {
        self.now = Instant::now();
        self.stats.broadcasts += 1;
        let mut out = std::mem::take(&mut self.scratch);
        let (id, outputs) = self.proto.broadcast(self.now.into_std(), cmd.payload);
        out.extend(outputs);
        self.perform(out);
        let _ = cmd.reply.send(id);
    }

    fn fire_timers(&mut self) {
        self.now = Instant::now();
        let now = self.now;
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, timer))) = self.timers.pop() else { break };
            self.input(proto::Input::Timer(timer));
        }
    }

    fn input(&mut self, input: proto::Input<PeerInfo>) {
        let mut out = std::mem::take(&mut self.scratch);
        out.extend(self.proto.handle(self.now.into_std(), input));
        self.perform(out);
    }

    /// Carry out the protocol's outputs, in order, then keep the buffer for the next
    /// input (no allocation per input; a nested input takes a fresh one).
    fn perform(&mut self, mut out: Vec<proto::Output<PeerInfo>>) {
        for o in out.drain(..) {
            match o {
                proto::Output::Send { to, message } => self.send(to, &message),
                proto::Output::Disconnect { peer } => self.close_link(peer.id, close_code::FAILED, "declared failed"),
                proto::Output::Timer { at, timer } => {
                    self.timer_seq += 1;
                    self.timers.push(Reverse((Instant::from_std(at), self.timer_seq, timer)));
                }
                proto::Output::Rejoin => {
                    if self.bootstrap_inflight == 0 && !self.config.bootstrap.is_empty() {
                        info!("both views empty: retrying the bootstrap addresses");
                        let addrs = self.config.bootstrap.clone();
                        self.spawn_bootstrap(addrs);
                    }
                }
                proto::Output::Event(e) => self.on_event(e),
            }
        }
        self.scratch = out;
    }

    fn on_event(&mut self, e: proto::Event<PeerInfo>) {
        let ev = match e {
            proto::Event::NeighborUp(p) => {
                debug!(peer = ?p, "neighbor up");
                self.neighbors_tx.send_replace(self.proto.membership().active_view().len());
                Event::NeighborUp(p)
            }
            proto::Event::NeighborDown { peer, reason } => {
                debug!(peer = ?peer, reason = reason.as_str(), "neighbor down");
                self.neighbors_tx.send_replace(self.proto.membership().active_view().len());
                Event::NeighborDown { peer, reason }
            }
            proto::Event::Delivered(d) => Event::Delivered(Delivered {
                id: d.id,
                origin: d.envelope.origin,
                incarnation: d.envelope.incarnation,
                seq: d.envelope.seq,
                hops: d.hops,
                payload: d.envelope.payload,
            }),
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
                warn!(peer = ?to, error = %e, "cannot encode a frame: dropped");
                self.stats.frames_dropped.unencodable += 1;
                return;
            }
        };
        if let Some(link) = self.links.get_mut(&to.id) {
            let depth = link.depth.fetch_add(1, Ordering::Relaxed) + 1;
            link.last_active = self.now;
            let len = frame.len() as u64;
            if link.tx.send(frame).is_err() {
                link.depth.fetch_sub(1, Ordering::Relaxed);
                self.stats.frames_dropped.connection_lost += 1;
                return;
            }
            self.stats.frames_sent += 1;
            self.stats.bytes_sent += len;
            if depth > self.config.peer_queue_hard_limit {
                warn!(peer = ?to, depth, "peer cannot keep up: disconnecting it");
                self.stats.slow_peer_disconnects += 1;
                self.close_link(to.id, close_code::FAILED, "too slow");
                self.input(proto::Input::ConnectionLost { peer: to });
            } else if depth > self.config.peer_queue_soft_limit && !self.congested {
                self.congested = true;
                self.stats.backpressure_events += 1;
            }
            return;
        }
        match self.dialing.get_mut(&to.id) {
            Some(p) => {
                if p.frames.len() < self.config.peer_queue_soft_limit {
                    p.frames.push(frame);
                } else {
                    self.stats.frames_dropped.dial_queue_full += 1;
                }
            }
            None => {
                self.dialing.insert(to.id, Pending { frames: vec![frame] });
                self.dial(Some(to), to.addr);
            }
        }
    }

    fn recheck_congestion(&mut self) {
        let low = self.config.peer_queue_soft_limit / 2;
        self.congested = self.links.values().any(|l| l.depth.load(Ordering::Relaxed) > low);
    }

    fn hello(&self) -> Hello {
        Hello { cluster: self.config.cluster.clone(), addr: self.me.addr }
    }

    fn ctx(&mut self, dial: Option<Dial>) -> ConnCtx {
        self.next_conn_id += 1;
        ConnCtx {
            conn_id: self.next_conn_id,
            net_tx: self.net_tx.clone(),
            hello: self.hello(),
            max_frame: self.config.transport.max_frame_size,
            handshake_timeout: self.config.transport.handshake_timeout,
            drained: self.drained.clone(),
            writer_drops: self.writer_drops.clone(),
            dial,
        }
    }

    fn dial(&mut self, expected: Option<PeerInfo>, addr: SocketAddr) {
        let ctx = self.ctx(Some(Dial { expected, addr }));
        let cfg = match client_config(&self.identity, expected.map(|p| p.id), &self.config.transport) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "client config");
                return;
            }
        };
        match self.endpoint.connect_with(cfg, addr, plumcast_transport::SERVER_NAME) {
            Ok(connecting) => {
                self.tasks.spawn(conn::run(connecting, ctx));
            }
            Err(e) => {
                let net_tx = self.net_tx.clone();
                let reason = e.to_string();
                self.tasks.spawn(async move {
                    let _ = net_tx.send(NetEvent::DialFailed { expected, addr, reason }).await;
                });
            }
        }
    }

    fn accept(&mut self, incoming: quinn::Incoming) {
        let ctx = self.ctx(None);
        match incoming.accept() {
            Ok(connecting) => {
                self.tasks.spawn(conn::run(connecting, ctx));
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
                        let resolved = tokio::net::lookup_host(contact.as_str()).await;
                        let addr = resolved.ok().and_then(|mut it| it.find(|a| a.is_ipv4() == ipv4));
                        let _ = net_tx.send(NetEvent::Resolved { contact, addr }).await;
                    });
                }
            }
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        // The loop-top clock read happened before `select!` slept (up to a heartbeat
        // period): timers armed from a stale `now` fire early (a Graft before the payload).
        self.now = Instant::now();
        match ev {
            NetEvent::Up(up) => self.on_up(up),
            NetEvent::Message { from, conn_id, message, envelope } => {
                self.stats.frames_received += 1;
                if let Some(bytes) = envelope {
                    self.envelopes.received(&message, bytes);
                }
                if let Some(l) = self.links.get_mut(&from.id).filter(|l| l.conn_id == conn_id) {
                    l.last_active = self.now;
                }
                self.input(proto::Input::Message { from, message });
            }
            NetEvent::Down { peer, conn_id, reason } => {
                if self.retired.remove(&conn_id).is_some() {
                    return;
                }
                if self.links.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
                    debug!(peer = %peer.short(), %reason, "connection lost");
                    let link = self.links.remove(&peer);
                    let info =
                        PeerInfo { id: peer, addr: link.map(|l| l.conn.remote_address()).unwrap_or(self.me.addr) };
                    self.input(proto::Input::ConnectionLost { peer: info });
                }
            }
            NetEvent::Refused { peer, conn_id, kind, reason } => {
                match kind {
                    Refusal::Handshake => self.stats.handshake_failures += 1,
                    Refusal::WrongCluster => self.stats.cluster_mismatches += 1,
                    Refusal::Malformed => self.stats.malformed_frames += 1,
                    Refusal::Oversized => self.stats.oversized_frames += 1,
                }
                if kind == Refusal::Handshake {
                    debug!(peer = ?peer, %reason, "handshake failed");
                } else {
                    warn!(peer = ?peer, ?kind, %reason, "connection refused");
                }
                if let Some(p) = peer {
                    if self.links.get(&p.id).is_some_and(|l| l.conn_id == conn_id) {
                        self.links.remove(&p.id);
                    }
                    if kind != Refusal::Handshake {
                        self.input(proto::Input::Misbehaved { peer: p });
                    }
                }
            }
            NetEvent::Resolved { contact, addr } => match addr {
                // The in-flight bootstrap count carries over to the dial.
                Some(addr) => self.dial(None, addr),
                None => self.on_net(NetEvent::DialFailed {
                    expected: None,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    reason: format!("cannot resolve {contact}"),
                }),
            },
            NetEvent::DialFailed { expected, addr, reason } => {
                self.stats.dial_failures += 1;
                match expected {
                    Some(p) => {
                        debug!(peer = ?p, %reason, "dial failed");
                        if let Some(pending) = self.dialing.remove(&p.id) {
                            self.stats.frames_dropped.dial_failed += pending.frames.len() as u64;
                        }
                        self.input(proto::Input::ConnectionLost { peer: p });
                    }
                    None => {
                        warn!(%addr, %reason, "bootstrap contact unreachable");
                        self.bootstrap_inflight = self.bootstrap_inflight.saturating_sub(1);
                        if self.bootstrap_inflight == 0 {
                            self.input(proto::Input::JoinFailed);
                        }
                    }
                }
            }
            NetEvent::WriterDone { .. } => {}
        }
    }

    fn on_up(&mut self, up: Up) {
        let Up { peer, conn_id, conn, tx, depth, dialed_by_me, bootstrap } = up;
        if bootstrap {
            self.bootstrap_inflight = self.bootstrap_inflight.saturating_sub(1);
        }
        if peer.id == self.me.id {
            conn.close(close_code::NORMAL.into(), b"self");
            return;
        }
        if dialed_by_me {
            self.stats.connections_dialed += 1;
        } else {
            self.stats.connections_accepted += 1;
        }
        let new = Link { conn_id, conn, tx, depth, dialed_by_me, last_active: Instant::now() };
        // Simultaneous dials: keep the connection dialed by the smaller NodeId, on both
        // sides; the loser stays open for a grace period so frames in flight arrive.
        let new_wins = match self.links.get(&peer.id) {
            None => true,
            Some(old) if old.dialed_by_me == new.dialed_by_me => true,
            Some(_) => {
                let smaller_is_me = self.me.id < peer.id;
                new.dialed_by_me == smaller_is_me
            }
        };
        let loser = if new_wins { self.links.insert(peer.id, new) } else { Some(new) };
        if let Some(l) = loser {
            self.stats.connections_retired += 1;
            self.retired.insert(l.conn_id, (l.conn, Instant::now() + RETIRE_GRACE));
        }
        if let Some(p) = self.dialing.remove(&peer.id) {
            for f in p.frames {
                self.push_frame(peer.id, f);
            }
        }
        if bootstrap {
            self.input(proto::Input::Join { contact: peer });
        }
    }

    fn push_frame(&mut self, peer: NodeId, frame: Frame) {
        let Some(l) = self.links.get(&peer) else {
            self.stats.frames_dropped.connection_lost += 1;
            return;
        };
        l.depth.fetch_add(1, Ordering::Relaxed);
        let len = frame.len() as u64;
        if l.tx.send(frame).is_err() {
            l.depth.fetch_sub(1, Ordering::Relaxed);
            self.stats.frames_dropped.connection_lost += 1;
        } else {
            self.stats.frames_sent += 1;
            self.stats.bytes_sent += len;
        }
    }

    fn close_link(&mut self, peer: NodeId, code: u32, reason: &str) {
        if let Some(l) = self.links.remove(&peer) {
            l.conn.close(code.into(), reason.as_bytes());
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        self.retired.retain(|_, (conn, at)| {
            if *at <= now {
                conn.close(close_code::DUPLICATE.into(), b"duplicate");
                false
            } else {
                true
            }
        });
        let m = self.proto.membership();
        let idle: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(id, l)| {
                let p = PeerInfo { id: **id, addr: self.me.addr };
                !m.is_active(&p)
                    && !m.pending().any(|q| q.id == **id)
                    && now.duration_since(l.last_active) > self.config.idle_link_timeout
                    && l.depth.load(Ordering::Relaxed) == 0
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.stats.connections_idle_closed += 1;
            self.close_link(id, close_code::NORMAL, "idle");
        }
        if self.congested {
            self.recheck_congestion();
        }
        // Graft retry waits follow quinn's RTT estimate (Plumtree §3.6: about one round trip).
        for (id, l) in &self.links {
            self.proto.set_rtt(*id, l.conn.rtt());
        }
    }

    /// Graceful leave: Disconnect to the neighbours, flush, close, drain tasks.
    async fn leave(&mut self) {
        self.left_to = self.proto.membership().active_view().iter().map(|p| p.id).collect();
        self.input(proto::Input::Leave);
        self.flush_app().await;
        // Wait for the writers of active links (they carry our Disconnect); transient
        // links may point at dead peers and would only burn the linger.
        let links: Vec<(NodeId, Link)> = self.links.drain().collect();
        let mut waiting: Vec<u64> =
            links.iter().filter(|(id, _)| self.left_to.contains(id)).map(|(_, l)| l.conn_id).collect();
        // Dropping the queues lets each writer finish its stream after the last frame.
        let conns: Vec<quinn::Connection> = links.into_iter().map(|(_, l)| l.conn).collect();
        let deadline = Instant::now() + self.config.shutdown_linger;
        while !waiting.is_empty() {
            tokio::select! {
                Some(ev) = self.net_rx.recv() => match ev {
                    NetEvent::WriterDone { conn_id } | NetEvent::Down { conn_id, .. } => waiting.retain(|c| *c != conn_id),
                    _ => {}
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        debug!(unflushed = waiting.len(), "leave: writers flushed");
        for c in conns {
            c.close(close_code::NORMAL.into(), b"leave");
        }
        for (_, (c, _)) in self.retired.drain() {
            c.close(close_code::NORMAL.into(), b"leave");
        }
        self.endpoint.close(close_code::NORMAL.into(), b"leave");
        let _ = tokio::time::timeout(Duration::from_millis(100), self.endpoint.wait_idle()).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        info!("node left");
    }
}
