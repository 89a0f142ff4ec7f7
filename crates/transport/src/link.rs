//! The link: one task per QUIC connection that does the handshake and the Hello
//! exchange, reads frames (decoding them with the owner's [`Codec`]) and writes the frames
//! queued for it, coalesced, as chunks without copying. The owner (the node's actor)
//! keeps the queue and hears of everything as [`LinkEvent`]s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::FramedRead;

use crate::{
    Hello, NodeId, PeerInfo, TransportError, close_code, decode_body, encode_frame, frame_codec, peer_node_id,
};

/// Queued frames are written in batches of up to this many bytes (many frames per QUIC
/// packet, one write call per batch).
const WRITE_BATCH_BYTES: usize = 64 << 10;
/// How long a finished stream waits for the peer to have read everything (leave).
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Decodes the frames of a link (the body after the length prefix), on the link's task.
pub trait Codec: Send + 'static {
    /// What a frame decodes to.
    type Message: Send + 'static;

    /// Decode one frame body.
    ///
    /// # Errors
    /// A [`TransportError`] for a malformed body: the link closes with
    /// [`close_code::PROTOCOL`] and reports [`Refusal::Malformed`].
    fn decode(&self, body: Bytes) -> Result<Decoded<Self::Message>, TransportError>;
}

/// A decoded frame, with bytes of it the owner wants to keep (a Gossip's envelope, to
/// forward without re-encoding).
#[derive(Debug)]
pub struct Decoded<M> {
    /// The message.
    pub message: M,
    /// Bytes of the frame kept as received, if any.
    pub raw: Option<Bytes>,
}

/// One frame as the writer queues it: whole, or a header and a body the body shares with
/// other queues (a forwarded Gossip's envelope goes to every eager peer without a copy).
#[derive(Debug)]
pub enum Frame {
    /// A whole frame, length prefix included.
    Whole(Bytes),
    /// A header (length prefix included) followed by shared body bytes.
    Split {
        /// Length prefix and the bytes before the body.
        head: Bytes,
        /// The body.
        body: Bytes,
    },
}

impl Frame {
    /// Bytes on the stream, length prefix included.
    pub fn len(&self) -> usize {
        match self {
            Frame::Whole(b) => b.len(),
            Frame::Split { head, body } => head.len() + body.len(),
        }
    }

    /// Whether the frame has no bytes at all (never, for a well-formed frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append this frame's chunks to a write batch.
    fn push_to(self, chunks: &mut Vec<Bytes>) {
        match self {
            Frame::Whole(b) => chunks.push(b),
            Frame::Split { head, body } => {
                chunks.push(head);
                chunks.push(body);
            }
        }
    }
}

/// Why a connection was refused or closed by us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake or the Hello exchange failed or timed out.
    Handshake,
    /// The peer's Hello names another cluster.
    WrongCluster,
    /// The peer's Hello names another wire version.
    WrongVersion,
    /// The peer signs its messages and we do not, or the other way round.
    WrongSigning,
    /// A frame did not decode.
    Malformed,
    /// A frame was longer than the maximum.
    Oversized,
}

/// A connection that completed its handshake and Hello exchange.
#[derive(Debug)]
pub struct Up {
    /// The peer: the id its TLS key proves, the address its Hello advertises.
    pub peer: PeerInfo,
    /// The owner's id for this connection.
    pub conn_id: u64,
    /// The connection.
    pub conn: quinn::Connection,
    /// The writer's queue.
    pub tx: mpsc::UnboundedSender<Frame>,
    /// Frames in the writer's queue, shared with it.
    pub depth: Arc<AtomicUsize>,
    /// Bytes of those frames, shared with it.
    pub queued_bytes: Arc<AtomicUsize>,
    /// Whether we dialed it.
    pub dialed_by_me: bool,
    /// Whether it was a dial to a bootstrap address (no expected id).
    pub bootstrap: bool,
}

/// What a link reports to its owner.
#[derive(Debug)]
pub enum LinkEvent<M> {
    /// The connection is ready.
    Up(Up),
    /// A frame arrived.
    Message {
        /// Who sent it.
        from: PeerInfo,
        /// The connection it came on.
        conn_id: u64,
        /// The decoded message.
        message: M,
        /// Bytes of the frame the codec kept.
        raw: Option<Bytes>,
        /// The frame's length, bytes (its 4-byte length prefix included).
        bytes: usize,
    },
    /// The connection ended.
    Down {
        /// The peer.
        peer: NodeId,
        /// The connection.
        conn_id: u64,
        /// Why.
        reason: String,
    },
    /// The connection was refused or closed by us.
    Refused {
        /// The peer, known once TLS and the Hello completed.
        peer: Option<PeerInfo>,
        /// Whether a `DialFailed` for this connection came just before (a dial that failed
        /// in its setup), so the owner has already heard why.
        after_dial_failed: bool,
        /// The connection.
        conn_id: u64,
        /// What went wrong.
        kind: Refusal,
        /// Details, for the log.
        reason: String,
    },
    /// A dial failed (sent before the matching `Refused`, if any).
    DialFailed {
        /// The peer expected at `addr` (`None`: a bootstrap address).
        expected: Option<PeerInfo>,
        /// The address dialed.
        addr: SocketAddr,
        /// How the connection was refused, or `None` if none could be started.
        kind: Option<Refusal>,
        /// Why.
        reason: String,
    },
    /// The writer finished (its queue was dropped and the stream finished, or the
    /// connection failed).
    WriterDone {
        /// The connection.
        conn_id: u64,
    },
}

/// What one link task needs.
pub struct LinkCtx<E> {
    /// The owner's id for this connection.
    pub conn_id: u64,
    /// Where the link reports.
    pub events: mpsc::Sender<E>,
    /// Our Hello.
    pub hello: Hello,
    /// Largest frame accepted, bytes.
    pub max_frame: usize,
    /// How long the handshake and Hello exchange may take.
    pub handshake_timeout: Duration,
    /// Notified when the writer's queue empties.
    pub drained: Arc<Notify>,
    /// Counts the frames this connection's writer discards when the connection fails.
    pub writer_drops: Arc<AtomicU64>,
    /// `Some` when we dialed.
    pub dial: Option<Dial>,
}

/// A connection we dialed.
#[derive(Clone, Copy, Debug)]
pub struct Dial {
    /// The peer we expect (`None` for a bootstrap address: accept the id it proves).
    pub expected: Option<PeerInfo>,
    /// The address dialed.
    pub addr: SocketAddr,
}

/// Why the setup failed when the connection closed under it: a peer that closed it as
/// [`close_code::WRONG_CLUSTER`] told us we are in another cluster.
/// The peer is known by the id its TLS key proved and the address it came from.
fn closed_in_setup(what: &str, e: &quinn::ConnectionError, peer: PeerInfo) -> (String, Refusal, Option<PeerInfo>) {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close_code::WRONG_CLUSTER.into() => {
            ("the peer refused us: it is in another cluster".to_string(), Refusal::WrongCluster, Some(peer))
        }
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close_code::WRONG_VERSION.into() => {
            ("the peer refused us: it speaks another wire version".to_string(), Refusal::WrongVersion, Some(peer))
        }
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close_code::WRONG_SIGNING.into() => (
            "the peer refused us: it signs messages and we do not, or the other way round".to_string(),
            Refusal::WrongSigning,
            Some(peer),
        ),
        _ => (format!("{what}: {e}"), Refusal::Handshake, None),
    }
}

/// Drive one connection to its end: TLS handshake, Hello exchange, then read frames
/// (decoded with `codec`, off the owner's task) and write the frames queued for it.
/// Reports everything through `ctx.events`; a malformed or oversized frame closes this
/// one connection with a reason.
pub async fn run<C, E>(
    connecting: impl std::future::Future<Output = Result<quinn::Connection, quinn::ConnectionError>>,
    ctx: LinkCtx<E>,
    codec: C,
) where
    C: Codec,
    E: From<LinkEvent<C::Message>> + Send + 'static,
{
    let LinkCtx { conn_id, events: net_tx, hello, max_frame, handshake_timeout, drained, writer_drops, dial } = ctx;
    let fail = |reason: String, kind: Refusal, peer: Option<PeerInfo>| {
        let net_tx = net_tx.clone();
        let dial_info = dial.as_ref().map(|d| (d.expected, d.addr));
        async move {
            if let Some((expected, addr)) = dial_info {
                let failed = LinkEvent::DialFailed { expected, addr, kind: Some(kind), reason: reason.clone() };
                let _ = net_tx.send(failed.into()).await;
            }
            let after_dial_failed = dial_info.is_some();
            let _ = net_tx.send(LinkEvent::Refused { peer, after_dial_failed, conn_id, kind, reason }.into()).await;
        }
    };
    let setup = async {
        let conn = connecting.await.map_err(|e| (format!("handshake: {e}"), Refusal::Handshake, None))?;
        let id = peer_node_id(&conn).ok_or_else(|| ("no peer identity".to_string(), Refusal::Handshake, None))?;
        let seen = PeerInfo { id, addr: conn.remote_address() };
        let mut send = conn.open_uni().await.map_err(|e| (format!("open stream: {e}"), Refusal::Handshake, None))?;
        let frame = encode_frame(&hello).map_err(|e| (e.to_string(), Refusal::Handshake, None))?;
        send.write_all(&frame).await.map_err(|e| (format!("write hello: {e}"), Refusal::Handshake, None))?;
        let recv = conn.accept_uni().await.map_err(|e| closed_in_setup("accept stream", &e, seen))?;
        let mut frames = FramedRead::new(recv, frame_codec(max_frame));
        let first = match frames.next().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err((format!("hello: {e}"), Refusal::Malformed, None)),
            None => {
                let closed = conn.close_reason().map(|e| closed_in_setup("hello", &e, seen));
                return Err(
                    closed.unwrap_or_else(|| ("stream closed before hello".to_string(), Refusal::Handshake, None))
                );
            }
        };
        let theirs: Hello = decode_body(&first).map_err(|e| (format!("hello: {e}"), Refusal::Malformed, None))?;
        let peer = PeerInfo { id, addr: theirs.addr };
        if theirs.version != hello.version {
            conn.close(close_code::WRONG_VERSION.into(), b"wrong version");
            return Err((
                format!(
                    "the peer speaks wire version {}, this node {} (see the README on rolling upgrades)",
                    theirs.version, hello.version
                ),
                Refusal::WrongVersion,
                Some(peer),
            ));
        }
        if theirs.cluster != hello.cluster {
            conn.close(close_code::WRONG_CLUSTER.into(), b"wrong cluster");
            return Err((
                format!("the peer is in another cluster ({:?}; we are in {:?})", theirs.cluster, hello.cluster),
                Refusal::WrongCluster,
                Some(peer),
            ));
        }
        if theirs.signed != hello.signed {
            conn.close(close_code::WRONG_SIGNING.into(), b"wrong signing mode");
            let mode = |signed| if signed { "signs its messages" } else { "does not sign (--unsigned)" };
            return Err((
                format!(
                    "the peer {}, this node {}: every node of a cluster must use the same mode",
                    mode(theirs.signed),
                    mode(hello.signed)
                ),
                Refusal::WrongSigning,
                Some(peer),
            ));
        }
        Ok((conn, peer, send, frames))
    };
    let (conn, peer, send, mut frames) = match tokio::time::timeout(handshake_timeout, setup).await {
        Ok(Ok(v)) => v,
        Ok(Err((reason, kind, peer))) => return fail(reason, kind, peer).await,
        Err(_) => return fail("handshake timed out".into(), Refusal::Handshake, None).await,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = Arc::new(AtomicUsize::new(0));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let up = LinkEvent::Up(Up {
        peer,
        conn_id,
        conn: conn.clone(),
        tx,
        depth: depth.clone(),
        queued_bytes: queued_bytes.clone(),
        dialed_by_me: dial.is_some(),
        bootstrap: dial.as_ref().is_some_and(|d| d.expected.is_none()),
    });
    if net_tx.send(up.into()).await.is_err() {
        return;
    }
    let writer = write_frames::<C::Message, E>(
        send,
        rx,
        Queue { depth, queued_bytes, drained, dropped: writer_drops },
        net_tx.clone(),
        conn_id,
    );
    tokio::pin!(writer);
    let mut writer_done = false;
    let reason = loop {
        tokio::select! {
            frame = frames.next() => match frame {
                Some(Ok(body)) => {
                    let len = body.len();
                    match codec.decode(body.freeze()) {
                        Ok(Decoded { message, raw }) => {
                            let event = LinkEvent::Message { from: peer, conn_id, message, raw, bytes: len + 4 };
                            if net_tx.send(event.into()).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let (kind, what) = match e {
                                TransportError::Oversized { .. } => (Refusal::Oversized, "frame too large"),
                                _ => (Refusal::Malformed, "malformed frame"),
                            };
                            conn.close(close_code::PROTOCOL.into(), what.as_bytes());
                            let reason = format!("{what} ({len} bytes): {e}");
                            let refused = LinkEvent::Refused { peer: Some(peer), after_dial_failed: false, conn_id, kind, reason };
                            let _ = net_tx.send(refused.into()).await;
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    let oversized = e.kind() == std::io::ErrorKind::InvalidData;
                    let (kind, code, what) = if oversized {
                        (Refusal::Oversized, close_code::PROTOCOL, "frame too large")
                    } else {
                        break format!("read: {e}");
                    };
                    conn.close(code.into(), what.as_bytes());
                    let reason = format!("{what}: {e}");
                    let refused = LinkEvent::Refused { peer: Some(peer), after_dial_failed: false, conn_id, kind, reason };
                    let _ = net_tx.send(refused.into()).await;
                    return;
                }
                None => break "stream finished".to_string(),
            },
            () = &mut writer, if !writer_done => writer_done = true,
        }
    };
    let _ = net_tx.send(LinkEvent::Down { peer: peer.id, conn_id, reason }.into()).await;
}

/// A writer's side of its send queue: the depth it shares with the actor, the signal that
/// it emptied, and the count of frames it had to discard.
struct Queue {
    depth: Arc<AtomicUsize>,
    queued_bytes: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    dropped: Arc<AtomicU64>,
}

/// Write queued frames, coalescing whatever is queued into one write (many frames per
/// QUIC packet). Frames go to quinn as chunks, without copying: a forwarded Gossip's
/// envelope bytes are shared with the other eager peers' queues. When the actor drops the
/// queue, finish the stream and wait (bounded) until the peer has read everything.
async fn write_frames<M, E: From<LinkEvent<M>>>(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    queue: Queue,
    net_tx: mpsc::Sender<E>,
    conn_id: u64,
) {
    let Queue { depth, queued_bytes, drained, dropped } = queue;
    let mut chunks: Vec<Bytes> = Vec::new();
    while let Some(first) = rx.recv().await {
        chunks.clear();
        let mut bytes = first.len();
        first.push_to(&mut chunks);
        let mut n = 1;
        while bytes < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(f) => {
                    bytes += f.len();
                    f.push_to(&mut chunks);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let written = send.write_all_chunks(&mut chunks).await;
        queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        if written.is_err() {
            depth.fetch_sub(n, Ordering::Relaxed);
            dropped.fetch_add(n as u64, Ordering::Relaxed);
            // The connection is gone; the reader reports it. Keep draining (and counting)
            // so the depth stays honest until the actor drops the queue.
            while let Some(f) = rx.recv().await {
                depth.fetch_sub(1, Ordering::Relaxed);
                queued_bytes.fetch_sub(f.len(), Ordering::Relaxed);
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            let _ = net_tx.send(LinkEvent::WriterDone { conn_id }.into()).await;
            return;
        }
        if depth.fetch_sub(n, Ordering::Relaxed) == n {
            drained.notify_one();
        }
    }
    let _ = send.finish();
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(FINISH_WAIT, send.stopped()).await;
    tracing::debug!(elapsed = ?t.elapsed(), result = ?r, "writer finished");
    let _ = net_tx.send(LinkEvent::WriterDone { conn_id }.into()).await;
}
