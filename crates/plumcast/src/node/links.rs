//! The node's connections: one open link per peer, the duplicates retired after a
//! simultaneous dial, the frames waiting for a dial, each connection's send queue and
//! writes, and congestion. `Links` never calls the protocol: it returns what happened,
//! and the actor decides.
//!
//! The actor writes the frames itself: [`Links::flush`] hands each queue that has frames
//! and an idle stream to quinn as one batch of chunks (many frames per QUIC packet, no
//! copy), and the actor polls the batches being written ([`Links::next_written`]). A
//! frame sent crosses no task hand-off before quinn's connection driver.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use plumcast_transport::{NodeId, PeerInfo, close_code};
use rustc_hash::FxHashMap;
use tokio::time::Instant;

use plumcast_transport::link::{Frame, Up};

use super::FrameDrops;

/// A duplicate connection stays open this long after it lost the tie-break, so frames
/// already in flight on it arrive (both sides have seen the winner by then).
const RETIRE_GRACE: Duration = Duration::from_secs(5);
/// Queued frames are written in batches of up to this many bytes (one write call per
/// batch; quinn packs the frames into packets).
const WRITE_BATCH_BYTES: usize = 64 << 10;
/// How long a finished stream waits for the peer to have read everything (leave).
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// One open connection (its send queue is its [`Writer`], under the same `conn_id`).
struct Link {
    conn_id: u64,
    conn: quinn::Connection,
    dialed_by_me: bool,
    last_active: Instant,
}

/// One connection's send side: the frames waiting for the stream, and the stream itself
/// when no batch is being written.
struct Writer {
    /// `None` while a batch is being written (the write owns the stream).
    send: Option<quinn::SendStream>,
    queue: VecDeque<Frame>,
    /// Frames queued or being written.
    depth: usize,
    /// Bytes of those frames.
    bytes: usize,
    /// Finish the stream once the queue is written (the link was retired, lost, or left),
    /// and take no more frames.
    finish: bool,
}

/// What a write the actor polled ended with.
pub(crate) enum WriteDone {
    /// A batch was handed to quinn, or failed (the connection is gone).
    Written { conn_id: u64, send: quinn::SendStream, frames: usize, bytes: usize, ok: bool },
    /// The stream was finished and the peer read it (or the wait ran out).
    Finished { conn_id: u64 },
}

type Write = Pin<Box<dyn Future<Output = WriteDone> + Send>>;

/// What [`Links::send`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued on the open link (or counted as dropped, if that link's queue had closed).
    Queued,
    /// Kept until a connection exists: the caller must dial `to` (first frame for it).
    Dial,
    /// Queued, but the peer's queue passed the hard limit: the link was closed as too
    /// slow; the caller reports the lost connection to the protocol.
    TooSlow,
}

/// Counters kept by [`Links`] (copied into [`super::NetStats`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct LinkStats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_dropped: FrameDrops,
    pub connections_dialed: u64,
    pub connections_accepted: u64,
    pub connections_retired: u64,
    pub connections_idle_closed: u64,
    pub slow_peer_disconnects: u64,
    pub backpressure_events: u64,
}

/// Queue bounds of every link, frames.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Above it the node stops accepting broadcasts (congested).
    pub soft: usize,
    /// Above it the peer is disconnected as too slow.
    pub hard: usize,
    /// Bytes queued above which the peer is disconnected as too slow.
    pub hard_bytes: usize,
    /// A link to a peer the protocol no longer uses, idle this long, is closed.
    pub idle: Duration,
}

/// All connections of one node.
pub(crate) struct Links {
    me: NodeId,
    limits: Limits,
    /// Keyed by authenticated ids; FxHash (a lookup per frame sent) is safe here.
    open: FxHashMap<NodeId, Link>,
    retired: HashMap<u64, (quinn::Connection, Instant)>,
    /// Frames for peers being dialed, at most `limits.soft` each.
    dialing: HashMap<NodeId, Vec<Frame>>,
    /// Send sides by `conn_id`: open links, and retired or lost ones finishing.
    writers: FxHashMap<u64, Writer>,
    /// Writers whose stream is idle with frames queued (or to finish): [`Links::flush`].
    ready: Vec<u64>,
    /// Batches being written and streams being finished.
    writes: FuturesUnordered<Write>,
    congested: bool,
    stats: LinkStats,
}

impl Links {
    pub(crate) fn new(me: NodeId, limits: Limits) -> Self {
        Self {
            me,
            limits,
            open: FxHashMap::default(),
            retired: HashMap::new(),
            dialing: HashMap::new(),
            writers: FxHashMap::default(),
            ready: Vec::new(),
            writes: FuturesUnordered::new(),
            congested: false,
            stats: LinkStats::default(),
        }
    }

    /// Whether some peer's queue is past the soft limit (broadcasts wait).
    pub(crate) fn congested(&self) -> bool {
        self.congested
    }

    /// Counters.
    pub(crate) fn stats(&self) -> LinkStats {
        self.stats.clone()
    }

    /// Frames and bytes queued for `peer`, or being written (zero without an open link).
    pub(crate) fn queued(&self, peer: NodeId) -> (usize, usize) {
        self.open.get(&peer).and_then(|l| self.writers.get(&l.conn_id)).map_or((0, 0), |w| (w.depth, w.bytes))
    }

    /// Peers being dialed.
    pub(crate) fn dials_pending(&self) -> usize {
        self.dialing.len()
    }

    /// Count a frame that could not be encoded.
    pub(crate) fn unencodable(&mut self) {
        self.stats.frames_dropped.unencodable += 1;
    }

    /// Queue `frame` for `to`: on its open link, or with the frames waiting for its dial.
    pub(crate) fn send(&mut self, now: Instant, to: PeerInfo, frame: Frame) -> Sent {
        if let Some(link) = self.open.get_mut(&to.id) {
            link.last_active = now;
            let conn_id = link.conn_id;
            let Some((depth, bytes)) = self.enqueue(conn_id, frame) else { return Sent::Queued };
            if depth > self.limits.hard || bytes > self.limits.hard_bytes {
                tracing::warn!(peer = %to, depth, bytes, "peer cannot keep up: disconnecting it");
                self.stats.slow_peer_disconnects += 1;
                self.close(to.id, close_code::FAILED, "too slow");
                return Sent::TooSlow;
            }
            if depth > self.limits.soft && !self.congested {
                self.congested = true;
                self.stats.backpressure_events += 1;
            }
            return Sent::Queued;
        }
        match self.dialing.get_mut(&to.id) {
            Some(frames) if frames.len() < self.limits.soft => {
                frames.push(frame);
                Sent::Queued
            }
            Some(_) => {
                self.stats.frames_dropped.dial_queue_full += 1;
                Sent::Queued
            }
            None => {
                self.dialing.insert(to.id, vec![frame]);
                Sent::Dial
            }
        }
    }

    /// A connection completed its handshake. Simultaneous dials keep the connection
    /// dialed by the smaller `NodeId`, on both sides; the loser stays open for a grace
    /// period so frames in flight arrive. Frames waiting for a dial to this peer go out.
    /// Returns false for a connection to ourselves (closed).
    pub(crate) fn up(&mut self, now: Instant, up: Up) -> bool {
        let Up { peer, conn_id, conn, send, dialed_by_me, .. } = up;
        if peer.id == self.me {
            conn.close(close_code::NORMAL.into(), b"self");
            return false;
        }
        let writer = Writer { send: Some(send), queue: VecDeque::new(), depth: 0, bytes: 0, finish: false };
        self.writers.insert(conn_id, writer);
        if dialed_by_me {
            self.stats.connections_dialed += 1;
        } else {
            self.stats.connections_accepted += 1;
        }
        let new = Link { conn_id, conn, dialed_by_me, last_active: now };
        let new_wins = match self.open.get(&peer.id) {
            None => true,
            Some(old) if old.dialed_by_me == new.dialed_by_me => true,
            Some(_) => new.dialed_by_me == (self.me < peer.id),
        };
        let loser = if new_wins { self.open.insert(peer.id, new) } else { Some(new) };
        if let Some(l) = loser {
            self.stats.connections_retired += 1;
            self.finish(l.conn_id);
            self.retired.insert(l.conn_id, (l.conn, now + RETIRE_GRACE));
        }
        let winner = self.open.get(&peer.id).map(|l| l.conn_id);
        for frame in self.dialing.remove(&peer.id).unwrap_or_default() {
            match winner {
                Some(conn_id) => {
                    self.enqueue(conn_id, frame);
                }
                None => self.stats.frames_dropped.connection_lost += 1,
            }
        }
        true
    }

    /// Frames arrived on connection `conn_id` from `peer`.
    pub(crate) fn heard(&mut self, now: Instant, peer: NodeId, conn_id: u64) {
        if let Some(l) = self.open.get_mut(&peer).filter(|l| l.conn_id == conn_id) {
            l.last_active = now;
        }
    }

    /// Connection `conn_id` to `peer` ended. Returns the peer, with the address it was
    /// reached at, when that was its open link (the protocol must hear of it); `None` for
    /// a retired duplicate or an older connection.
    pub(crate) fn down(&mut self, peer: NodeId, conn_id: u64) -> Option<PeerInfo> {
        self.finish(conn_id);
        if self.retired.remove(&conn_id).is_some() {
            return None;
        }
        if self.open.get(&peer).is_none_or(|l| l.conn_id != conn_id) {
            return None;
        }
        let link = self.open.remove(&peer)?;
        Some(PeerInfo { id: peer, addr: link.conn.remote_address() })
    }

    /// Connection `conn_id` to `peer` was refused after its handshake: forget it if it
    /// was the open link.
    pub(crate) fn refused(&mut self, peer: NodeId, conn_id: u64) {
        self.finish(conn_id);
        if self.open.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
            self.open.remove(&peer);
        }
    }

    /// The dial to `peer` failed: the frames waiting for it are dropped (counted).
    pub(crate) fn dial_failed(&mut self, peer: NodeId) {
        if let Some(frames) = self.dialing.remove(&peer) {
            self.stats.frames_dropped.dial_failed += frames.len() as u64;
        }
    }

    /// The open links, by peer.
    pub(crate) fn open_conns(&self) -> Vec<(NodeId, quinn::Connection)> {
        let mut out: Vec<_> = self.open.iter().map(|(id, l)| (*id, l.conn.clone())).collect();
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }

    /// Close the open link to `peer`, if any, with an application close code.
    pub(crate) fn close(&mut self, peer: NodeId, code: u32, reason: &str) {
        if let Some(l) = self.open.remove(&peer) {
            l.conn.close(code.into(), reason.as_bytes());
            // What was queued will not be written: count it (a batch being written
            // fails with the connection, and is counted when it returns).
            if let Some(w) = self.writers.remove(&l.conn_id) {
                self.stats.frames_dropped.connection_lost += w.queue.len() as u64;
            }
        }
    }

    /// Housekeeping at `now`: close retired duplicates whose grace ran out, and idle links
    /// the protocol no longer uses (`in_use` says which it does); lift congestion once
    /// every queue is below half the soft limit. Returns the round-trip estimates of the
    /// open links, for the Graft retry wait.
    pub(crate) fn sweep(&mut self, now: Instant, in_use: impl Fn(NodeId) -> bool) -> Vec<(NodeId, Duration)> {
        self.retired.retain(|_, (conn, at)| {
            let keep = *at > now;
            if !keep {
                conn.close(close_code::DUPLICATE.into(), b"duplicate");
            }
            keep
        });
        let idle: Vec<NodeId> = self
            .open
            .iter()
            .filter(|(id, l)| {
                !in_use(**id)
                    && now.duration_since(l.last_active) > self.limits.idle
                    && self.writers.get(&l.conn_id).is_none_or(|w| w.depth == 0)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.stats.connections_idle_closed += 1;
            self.close(id, close_code::NORMAL, "idle");
        }
        if self.congested {
            self.recheck_congestion();
        }
        self.open.iter().map(|(id, l)| (*id, l.conn.rtt())).collect()
    }

    /// Congestion ends once every queue is at most half the soft limit.
    pub(crate) fn recheck_congestion(&mut self) {
        let low = self.limits.soft / 2;
        let writers = &self.writers;
        self.congested = self.open.values().any(|l| writers.get(&l.conn_id).is_some_and(|w| w.depth > low));
    }

    /// Take every open link for a graceful leave: each writer finishes its stream after
    /// the last frame queued; returns `(peer, conn_id, connection)`.
    pub(crate) fn drain(&mut self) -> Vec<(NodeId, u64, quinn::Connection)> {
        let links: Vec<_> = self.open.drain().map(|(id, l)| (id, l.conn_id, l.conn)).collect();
        for (_, conn_id, _) in &links {
            self.finish(*conn_id);
        }
        links
    }

    /// Put `frame` on connection `conn_id`'s queue. Returns the new depth and bytes, or
    /// `None` when that queue takes no frames any more (the frame is counted as dropped).
    fn enqueue(&mut self, conn_id: u64, frame: Frame) -> Option<(usize, usize)> {
        let Some(w) = self.writers.get_mut(&conn_id).filter(|w| !w.finish) else {
            self.stats.frames_dropped.connection_lost += 1;
            return None;
        };
        let len = frame.len();
        if w.queue.is_empty() && w.send.is_some() {
            self.ready.push(conn_id);
        }
        w.queue.push_back(frame);
        w.depth += 1;
        w.bytes += len;
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += len as u64;
        Some((w.depth, w.bytes))
    }

    /// Connection `conn_id`'s writer takes no more frames: it writes what is queued, then
    /// finishes the stream.
    fn finish(&mut self, conn_id: u64) {
        if let Some(w) = self.writers.get_mut(&conn_id).filter(|w| !w.finish) {
            w.finish = true;
            if w.send.is_some() {
                self.ready.push(conn_id);
            }
        }
    }

    /// Hand every queue that has frames and an idle stream to quinn as one batch, and
    /// start finishing the streams whose writers are done. Call before the actor waits.
    pub(crate) fn flush(&mut self) {
        for i in 0..self.ready.len() {
            let conn_id = self.ready[i];
            let Some(w) = self.writers.get_mut(&conn_id) else { continue };
            let Some(mut send) = w.send.take() else { continue };
            if w.queue.is_empty() {
                if w.finish {
                    self.writes.push(Box::pin(finish_stream(conn_id, send)));
                } else {
                    w.send = Some(send);
                }
                continue;
            }
            let mut chunks: Vec<Bytes> = Vec::with_capacity(2 * w.queue.len().min(64));
            let (mut frames, mut bytes) = (0, 0);
            while bytes < WRITE_BATCH_BYTES
                && let Some(f) = w.queue.pop_front()
            {
                bytes += f.len();
                frames += 1;
                f.push_to(&mut chunks);
            }
            self.writes.push(Box::pin(async move {
                let ok = send.write_all_chunks(&mut chunks).await.is_ok();
                WriteDone::Written { conn_id, send, frames, bytes, ok }
            }));
        }
        self.ready.clear();
    }

    /// Whether a batch is being written or a stream finished (poll [`Links::next_written`]).
    pub(crate) fn writing(&self) -> bool {
        !self.writes.is_empty()
    }

    /// The next write to end (`None` when none is under way).
    pub(crate) fn next_written(&mut self) -> impl Future<Output = Option<WriteDone>> + '_ {
        self.writes.next()
    }

    /// A write ended. Returns the connection's id when its writer is done: its stream
    /// finished, or its connection failed (the frames it held are counted as dropped).
    pub(crate) fn written(&mut self, done: WriteDone) -> Option<u64> {
        let (conn_id, send, frames, bytes, ok) = match done {
            WriteDone::Finished { conn_id } => {
                self.writers.remove(&conn_id);
                return Some(conn_id);
            }
            WriteDone::Written { conn_id, send, frames, bytes, ok } => (conn_id, send, frames, bytes, ok),
        };
        let Some(w) = self.writers.get_mut(&conn_id) else {
            // The link was closed while the batch was being written.
            if !ok {
                self.stats.frames_dropped.connection_lost += frames as u64;
            }
            return None;
        };
        w.depth -= frames;
        w.bytes -= bytes;
        if !ok {
            self.stats.frames_dropped.connection_lost += (frames + w.queue.len()) as u64;
            self.writers.remove(&conn_id);
            return Some(conn_id);
        }
        let more = !w.queue.is_empty() || w.finish;
        w.send = Some(send);
        if more {
            self.ready.push(conn_id);
        }
        if self.congested && w.depth <= self.limits.soft / 2 {
            self.recheck_congestion();
        }
        None
    }
}

/// Finish `send` and wait, bounded, until the peer has read everything.
async fn finish_stream(conn_id: u64, mut send: quinn::SendStream) -> WriteDone {
    let _ = send.finish();
    let r = tokio::time::timeout(FINISH_WAIT, send.stopped()).await;
    tracing::debug!(result = ?r, "writer finished");
    WriteDone::Finished { conn_id }
}

impl Links {
    /// Close the retired duplicates now (leave).
    pub(crate) fn close_retired(&mut self) {
        for (_, (c, _)) in self.retired.drain() {
            c.close(close_code::NORMAL.into(), b"leave");
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use plumcast_transport::{Identity, TransportConfig, bind};

    use super::*;

    const LIMITS: Limits = Limits { soft: 2, hard: 4, hard_bytes: 1 << 20, idle: Duration::from_secs(10) };
    /// Bound on any wait for a write in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    fn frame() -> Frame {
        Frame::Whole(Bytes::from_static(&[0, 0, 0, 1, 9]))
    }

    /// A link we dialed on `conn`, with its send stream.
    async fn up_of(peer: PeerInfo, conn: &quinn::Connection) -> Up {
        let send = conn.open_uni().await.unwrap();
        Up { peer, conn_id: 1, conn: conn.clone(), send, dialed_by_me: true, bootstrap: false }
    }

    /// A real QUIC connection on loopback (what `Links` keeps), to `peer`'s endpoint, with
    /// the peer's side of it.
    async fn connection() -> (quinn::Connection, quinn::Endpoint, PeerInfo, quinn::Connection) {
        let config = TransportConfig::default();
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (ea, _) =
            bind("127.0.0.1:0".parse().unwrap(), &a, &config, &plumcast_transport::Admission::open()).unwrap();
        let (eb, _) =
            bind("127.0.0.1:0".parse().unwrap(), &b, &config, &plumcast_transport::Admission::open()).unwrap();
        let addr = eb.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let conn = eb.accept().await.unwrap().await.unwrap();
            (eb, conn)
        });
        let conn = ea.connect(addr, plumcast_transport::SERVER_NAME).unwrap().await.unwrap();
        let (eb, theirs) = accept.await.unwrap();
        (conn, eb, PeerInfo { id: b.node_id(), addr }, theirs)
    }

    /// Flush, then poll writes until one ends (bounded by [`WAIT`]).
    async fn next_done(links: &mut Links) -> WriteDone {
        links.flush();
        tokio::time::timeout(WAIT, links.next_written()).await.expect("a write ended in time").expect("a write")
    }

    #[tokio::test]
    async fn every_frame_not_handed_to_quinn_is_counted_as_dropped_by_reason() {
        let now = Instant::now();
        let mut links = Links::new(NodeId([0; 32]), LIMITS);
        let (conn, _endpoint, peer, _theirs) = connection().await;
        // Waiting for a dial: two frames are kept, the third is dropped.
        assert_eq!(links.send(now, peer, frame()), Sent::Dial);
        assert_eq!(links.send(now, peer, frame()), Sent::Queued);
        assert_eq!(links.send(now, peer, frame()), Sent::Queued);
        assert_eq!(links.stats().frames_dropped.dial_queue_full, 1);
        // The dial fails: the two waiting frames are dropped.
        links.dial_failed(peer.id);
        assert_eq!(links.stats().frames_dropped.dial_failed, 2);
        // A link whose connection is gone: the batch written on it fails, and that frame,
        // the one queued behind it and every later one count as lost.
        assert_eq!(links.send(now, peer, frame()), Sent::Dial);
        assert!(links.up(now, up_of(peer, &conn).await));
        conn.close(0u32.into(), b"gone");
        links.flush();
        assert_eq!(links.send(now, peer, frame()), Sent::Queued);
        assert_eq!(links.queued(peer.id), (2, 10), "one frame being written, one queued");
        let done = next_done(&mut links).await;
        assert_eq!(links.written(done), Some(1), "the writer is done: its connection failed");
        assert_eq!(links.stats().frames_dropped.connection_lost, 2, "the batch and the frame behind it");
        assert_eq!(links.queued(peer.id), (0, 0));
        assert_eq!(links.send(now, peer, frame()), Sent::Queued);
        let s = links.stats();
        assert_eq!(s.frames_dropped.connection_lost, 3, "a frame sent after the failure");
        assert_eq!((s.frames_sent, s.bytes_sent), (2, 10), "only frames handed to the writer count as sent");
    }

    #[tokio::test]
    async fn queued_frames_reach_the_peer_in_order_lift_congestion_and_the_stream_finishes_on_leave() {
        let now = Instant::now();
        let mut links = Links::new(NodeId([0; 32]), LIMITS);
        let (conn, _endpoint, peer, theirs) = connection().await;
        assert!(links.up(now, up_of(peer, &conn).await));
        let frames: Vec<Frame> = (1..=3u8).map(|k| Frame::Whole(Bytes::from(vec![0, 0, 0, 1, k]))).collect();
        for f in frames {
            assert_eq!(links.send(now, peer, f), Sent::Queued);
        }
        assert!(links.congested(), "3 frames queued, past the soft limit of 2");
        assert_eq!(links.queued(peer.id), (3, 15));
        while links.queued(peer.id).0 > 0 {
            let done = next_done(&mut links).await;
            assert_eq!(links.written(done), None, "the writer goes on");
        }
        assert!(!links.congested(), "the queue emptied");
        // Leave: the writer finishes its stream, and the peer reads everything, in order.
        let drained = links.drain();
        assert_eq!(drained.len(), 1);
        let done = next_done(&mut links).await;
        assert_eq!(links.written(done), Some(1), "the stream finished");
        assert!(!links.writing());
        let mut recv = theirs.accept_uni().await.unwrap();
        let got = tokio::time::timeout(WAIT, recv.read_to_end(1 << 10)).await.unwrap().unwrap();
        assert_eq!(got, [0, 0, 0, 1, 1, 0, 0, 0, 1, 2, 0, 0, 0, 1, 3]);
        assert_eq!(links.send(now, peer, frame()), Sent::Dial, "no open link after leave");
    }

    #[tokio::test]
    async fn a_queue_past_the_byte_limit_closes_the_link_before_the_frame_limit() {
        let now = Instant::now();
        let limits = Limits { soft: 100, hard: 1000, hard_bytes: 3 * 4096, idle: Duration::from_secs(10) };
        let mut links = Links::new(NodeId([0; 32]), limits);
        let (conn, _endpoint, peer, _theirs) = connection().await;
        links.up(now, up_of(peer, &conn).await);
        let big = || Frame::Whole(Bytes::from(vec![0u8; 4096]));
        for k in 1..=3 {
            assert_eq!(links.send(now, peer, big()), Sent::Queued, "frame {k}");
        }
        assert_eq!(links.queued(peer.id), (3, 3 * 4096));
        assert_eq!(
            links.send(now, peer, big()),
            Sent::TooSlow,
            "4 frames of 4 KiB pass 12 KiB, far below 1,000 frames"
        );
        let s = links.stats();
        assert_eq!(s.slow_peer_disconnects, 1);
        assert_eq!(s.frames_dropped.connection_lost, 4, "the queue of the closed link is counted");
    }

    #[tokio::test]
    async fn a_queue_past_the_hard_limit_closes_the_link_and_says_so() {
        let now = Instant::now();
        let mut links = Links::new(NodeId([0; 32]), LIMITS);
        let (conn, _endpoint, peer, _theirs) = connection().await;
        links.up(now, up_of(peer, &conn).await);
        for k in 1..=LIMITS.hard {
            assert_eq!(links.send(now, peer, frame()), Sent::Queued, "frame {k}");
            assert_eq!(links.congested(), k > LIMITS.soft, "frame {k}");
        }
        assert_eq!(links.send(now, peer, frame()), Sent::TooSlow);
        let s = links.stats();
        assert_eq!((s.frames_sent, s.slow_peer_disconnects, s.backpressure_events), (5, 1, 1));
        assert_eq!(links.down(peer.id, 1), None, "already closed: nothing more to report");
    }
}
