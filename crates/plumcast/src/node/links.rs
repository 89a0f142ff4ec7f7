//! The node's connections: one open link per peer, the duplicates retired after a
//! simultaneous dial, the frames waiting for a dial, and congestion. `Links` never calls
//! the protocol: it returns what happened, and the actor decides.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use plumcast_transport::{NodeId, PeerInfo, close_code};
use rustc_hash::FxHashMap;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use plumcast_transport::link::{Frame, Up};

use super::FrameDrops;

/// A duplicate connection stays open this long after it lost the tie-break, so frames
/// already in flight on it arrive (both sides have seen the winner by then).
const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// One open connection with its writer's queue.
struct Link {
    conn_id: u64,
    conn: quinn::Connection,
    tx: mpsc::UnboundedSender<Frame>,
    depth: Arc<AtomicUsize>,
    queued_bytes: Arc<AtomicUsize>,
    dialed_by_me: bool,
    last_active: Instant,
}

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
    congested: bool,
    /// Signalled by a writer whose queue emptied (to lift congestion).
    drained: Arc<Notify>,
    /// Frames the writers discarded when their connection failed.
    writer_drops: Arc<AtomicU64>,
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
            congested: false,
            drained: Arc::new(Notify::new()),
            writer_drops: Arc::new(AtomicU64::new(0)),
            stats: LinkStats::default(),
        }
    }

    /// The signal a writer gives when its queue empties.
    pub(crate) fn drained(&self) -> &Arc<Notify> {
        &self.drained
    }

    /// The counter the writers add their discarded frames to.
    pub(crate) fn writer_drops(&self) -> &Arc<AtomicU64> {
        &self.writer_drops
    }

    /// Whether some peer's queue is past the soft limit (broadcasts wait).
    pub(crate) fn congested(&self) -> bool {
        self.congested
    }

    /// Counters, with the writers' discards included.
    pub(crate) fn stats(&self) -> LinkStats {
        let mut s = self.stats.clone();
        s.frames_dropped.connection_lost += self.writer_drops.load(Ordering::Relaxed);
        s
    }

    /// Count a frame that could not be encoded.
    /// Frames and bytes queued for `peer` (zero without an open link).
    pub(crate) fn queued(&self, peer: NodeId) -> (usize, usize) {
        self.open
            .get(&peer)
            .map_or((0, 0), |l| (l.depth.load(Ordering::Relaxed), l.queued_bytes.load(Ordering::Relaxed)))
    }

    /// Peers being dialed.
    pub(crate) fn dials_pending(&self) -> usize {
        self.dialing.len()
    }

    pub(crate) fn unencodable(&mut self) {
        self.stats.frames_dropped.unencodable += 1;
    }

    /// Queue `frame` for `to`: on its open link, or with the frames waiting for its dial.
    pub(crate) fn send(&mut self, now: Instant, to: PeerInfo, frame: Frame) -> Sent {
        if let Some(link) = self.open.get_mut(&to.id) {
            link.last_active = now;
            let Some((depth, bytes)) = enqueue(link, frame, &mut self.stats) else { return Sent::Queued };
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
        let Up { peer, conn_id, conn, tx, depth, queued_bytes, dialed_by_me, .. } = up;
        if peer.id == self.me {
            conn.close(close_code::NORMAL.into(), b"self");
            return false;
        }
        if dialed_by_me {
            self.stats.connections_dialed += 1;
        } else {
            self.stats.connections_accepted += 1;
        }
        let new = Link { conn_id, conn, tx, depth, queued_bytes, dialed_by_me, last_active: now };
        let new_wins = match self.open.get(&peer.id) {
            None => true,
            Some(old) if old.dialed_by_me == new.dialed_by_me => true,
            Some(_) => new.dialed_by_me == (self.me < peer.id),
        };
        let loser = if new_wins { self.open.insert(peer.id, new) } else { Some(new) };
        if let Some(l) = loser {
            self.stats.connections_retired += 1;
            self.retired.insert(l.conn_id, (l.conn, now + RETIRE_GRACE));
        }
        for frame in self.dialing.remove(&peer.id).unwrap_or_default() {
            match self.open.get(&peer.id) {
                Some(link) => {
                    enqueue(link, frame, &mut self.stats);
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
                    && l.depth.load(Ordering::Relaxed) == 0
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
        self.congested = self.open.values().any(|l| l.depth.load(Ordering::Relaxed) > low);
    }

    /// Take every open link for a graceful leave: their queues are dropped (each writer
    /// finishes its stream after the last frame); returns `(peer, conn_id, connection)`.
    pub(crate) fn drain(&mut self) -> Vec<(NodeId, u64, quinn::Connection)> {
        self.open.drain().map(|(id, l)| (id, l.conn_id, l.conn)).collect()
    }
}

impl Links {
    /// Close the retired duplicates now (leave).
    pub(crate) fn close_retired(&mut self) {
        for (_, (c, _)) in self.retired.drain() {
            c.close(close_code::NORMAL.into(), b"leave");
        }
    }
}

/// Put `frame` on `link`'s queue. Returns the new depth, or `None` when the queue had
/// closed (the frame is counted as dropped).
fn enqueue(link: &Link, frame: Frame, stats: &mut LinkStats) -> Option<(usize, usize)> {
    let len = frame.len();
    let depth = link.depth.fetch_add(1, Ordering::Relaxed) + 1;
    let bytes = link.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
    if link.tx.send(frame).is_err() {
        link.depth.fetch_sub(1, Ordering::Relaxed);
        link.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        stats.frames_dropped.connection_lost += 1;
        return None;
    }
    stats.frames_sent += 1;
    stats.bytes_sent += len as u64;
    Some((depth, bytes))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use plumcast_transport::{Identity, TransportConfig, bind};

    use super::*;

    const LIMITS: Limits = Limits { soft: 2, hard: 4, hard_bytes: 1 << 20, idle: Duration::from_secs(10) };

    fn frame() -> Frame {
        Frame::Whole(Bytes::from_static(&[0, 0, 0, 1, 9]))
    }

    /// A link we dialed on `conn`, its writer's queue `tx`, sharing `depth` and `queued`.
    fn up_of(
        peer: PeerInfo,
        conn: quinn::Connection,
        tx: mpsc::UnboundedSender<Frame>,
        depth: Arc<AtomicUsize>,
        queued: Arc<AtomicUsize>,
    ) -> Up {
        Up { peer, conn_id: 1, conn, tx, depth, queued_bytes: queued, dialed_by_me: true, bootstrap: false }
    }

    /// A real QUIC connection on loopback (what `Links` keeps), to `peer`'s endpoint.
    async fn connection() -> (quinn::Connection, quinn::Endpoint, PeerInfo) {
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
        let (eb, _theirs) = accept.await.unwrap();
        (conn, eb, PeerInfo { id: b.node_id(), addr })
    }

    #[tokio::test]
    async fn every_frame_not_handed_to_a_writer_is_counted_as_dropped_by_reason() {
        let now = Instant::now();
        let mut links = Links::new(NodeId([0; 32]), LIMITS);
        let (conn, _endpoint, peer) = connection().await;
        // Waiting for a dial: two frames are kept, the third is dropped.
        assert_eq!(links.send(now, peer, frame()), Sent::Dial);
        assert_eq!(links.send(now, peer, frame()), Sent::Queued);
        assert_eq!(links.send(now, peer, frame()), Sent::Queued);
        assert_eq!(links.stats().frames_dropped.dial_queue_full, 1);
        // The dial fails: the two waiting frames are dropped.
        links.dial_failed(peer.id);
        assert_eq!(links.stats().frames_dropped.dial_failed, 2);
        // A link whose writer is gone: nothing counts as sent, everything as lost.
        assert_eq!(links.send(now, peer, frame()), Sent::Dial);
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        let depth = Arc::new(AtomicUsize::new(0));
        assert!(links.up(now, up_of(peer, conn, tx, depth.clone(), Arc::default())));
        assert_eq!(links.send(now, peer, frame()), Sent::Queued);
        let s = links.stats();
        assert_eq!((s.frames_sent, s.bytes_sent), (0, 0), "nothing reached a writer");
        assert_eq!(s.frames_dropped.connection_lost, 2, "the flushed dial frame and the new one");
        assert_eq!(depth.load(Ordering::Relaxed), 0);
        // A writer that discarded frames after a failed write adds them here.
        links.writer_drops().fetch_add(3, Ordering::Relaxed);
        assert_eq!(links.stats().frames_dropped.connection_lost, 5);
    }

    #[tokio::test]
    async fn a_queue_past_the_byte_limit_closes_the_link_before_the_frame_limit() {
        let now = Instant::now();
        let limits = Limits { soft: 100, hard: 1000, hard_bytes: 3 * 4096, idle: Duration::from_secs(10) };
        let mut links = Links::new(NodeId([0; 32]), limits);
        let (conn, _endpoint, peer) = connection().await;
        let (tx, _rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        links.up(now, up_of(peer, conn, tx, Arc::default(), queued.clone()));
        let big = || Frame::Whole(Bytes::from(vec![0u8; 4096]));
        for k in 1..=3 {
            assert_eq!(links.send(now, peer, big()), Sent::Queued, "frame {k}");
        }
        assert_eq!(queued.load(Ordering::Relaxed), 3 * 4096);
        assert_eq!(
            links.send(now, peer, big()),
            Sent::TooSlow,
            "4 frames of 4 KiB pass 12 KiB, far below 1,000 frames"
        );
        assert_eq!(links.stats().slow_peer_disconnects, 1);
    }

    #[tokio::test]
    async fn a_queue_past_the_hard_limit_closes_the_link_and_says_so() {
        let now = Instant::now();
        let mut links = Links::new(NodeId([0; 32]), LIMITS);
        let (conn, _endpoint, peer) = connection().await;
        let (tx, _rx) = mpsc::unbounded_channel();
        links.up(now, up_of(peer, conn, tx, Arc::default(), Arc::default()));
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
