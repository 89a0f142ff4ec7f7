//! One task per QUIC connection: handshake, Hello exchange, frame reader and writer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use plumcast_transport::{Hello, NodeId, PeerInfo, close_code, decode_body, encode_frame, frame_codec, peer_node_id};

use super::wire::{self, Frame};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::FramedRead;

use crate::proto;

/// Why a connection was refused or closed by us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Handshake,
    WrongCluster,
    Malformed,
    Oversized,
}

/// A connection that completed its handshake and Hello exchange.
pub(crate) struct Up {
    pub peer: PeerInfo,
    pub conn_id: u64,
    pub conn: quinn::Connection,
    pub tx: mpsc::UnboundedSender<Frame>,
    pub depth: Arc<AtomicUsize>,
    pub dialed_by_me: bool,
    pub bootstrap: bool,
}

pub(crate) enum NetEvent {
    Up(Up),
    Message {
        from: PeerInfo,
        conn_id: u64,
        message: proto::Message<PeerInfo>,
        /// A Gossip's envelope bytes as received, to forward without re-encoding.
        envelope: Option<Bytes>,
    },
    Down {
        peer: NodeId,
        conn_id: u64,
        reason: String,
    },
    Refused {
        /// Known once TLS completed.
        peer: Option<PeerInfo>,
        conn_id: u64,
        kind: Refusal,
        reason: String,
    },
    DialFailed {
        expected: Option<PeerInfo>,
        addr: SocketAddr,
        reason: String,
    },
    /// A bootstrap host name was looked up.
    Resolved {
        contact: String,
        addr: Option<SocketAddr>,
    },
    WriterDone {
        conn_id: u64,
    },
}

pub(crate) struct ConnCtx {
    pub conn_id: u64,
    pub net_tx: mpsc::Sender<NetEvent>,
    pub hello: Hello,
    pub max_frame: usize,
    pub handshake_timeout: Duration,
    pub drained: Arc<Notify>,
    /// Counts the frames this connection's writer discards when the connection fails.
    pub writer_drops: Arc<AtomicU64>,
    /// `Some` when we dialed: the peer we expect (None for a bootstrap address).
    pub dial: Option<Dial>,
}

pub(crate) struct Dial {
    pub expected: Option<PeerInfo>,
    pub addr: SocketAddr,
}

/// Drive one connection to its end. Reports everything to the actor through `net_tx`.
pub(crate) async fn run(
    connecting: impl std::future::Future<Output = Result<quinn::Connection, quinn::ConnectionError>>,
    ctx: ConnCtx,
) {
    let ConnCtx { conn_id, net_tx, hello, max_frame, handshake_timeout, drained, writer_drops, dial } = ctx;
    let fail = |reason: String, kind: Refusal, peer: Option<PeerInfo>| {
        let net_tx = net_tx.clone();
        let dial_info = dial.as_ref().map(|d| (d.expected, d.addr));
        async move {
            if let Some((expected, addr)) = dial_info {
                let _ = net_tx.send(NetEvent::DialFailed { expected, addr, reason: reason.clone() }).await;
            }
            let _ = net_tx.send(NetEvent::Refused { peer, conn_id, kind, reason }).await;
        }
    };
    let setup = async {
        let conn = connecting.await.map_err(|e| (format!("handshake: {e}"), Refusal::Handshake, None))?;
        let id = peer_node_id(&conn).ok_or_else(|| ("no peer identity".to_string(), Refusal::Handshake, None))?;
        let mut send = conn.open_uni().await.map_err(|e| (format!("open stream: {e}"), Refusal::Handshake, None))?;
        let frame = encode_frame(&hello).map_err(|e| (e.to_string(), Refusal::Handshake, None))?;
        send.write_all(&frame).await.map_err(|e| (format!("write hello: {e}"), Refusal::Handshake, None))?;
        let recv = conn.accept_uni().await.map_err(|e| (format!("accept stream: {e}"), Refusal::Handshake, None))?;
        let mut frames = FramedRead::new(recv, frame_codec(max_frame));
        let first = match frames.next().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err((format!("hello: {e}"), Refusal::Malformed, None)),
            None => return Err(("stream closed before hello".to_string(), Refusal::Handshake, None)),
        };
        let theirs: Hello = decode_body(&first).map_err(|e| (format!("hello: {e}"), Refusal::Malformed, None))?;
        let peer = PeerInfo { id, addr: theirs.addr };
        if theirs.cluster != hello.cluster {
            conn.close(close_code::WRONG_CLUSTER.into(), b"wrong cluster");
            return Err((
                format!("peer is in cluster {:?}, we are in {:?}", theirs.cluster, hello.cluster),
                Refusal::WrongCluster,
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
    let up = NetEvent::Up(Up {
        peer,
        conn_id,
        conn: conn.clone(),
        tx,
        depth: depth.clone(),
        dialed_by_me: dial.is_some(),
        bootstrap: dial.as_ref().is_some_and(|d| d.expected.is_none()),
    });
    if net_tx.send(up).await.is_err() {
        return;
    }
    let writer = write_frames(send, rx, Queue { depth, drained, dropped: writer_drops }, net_tx.clone(), conn_id);
    tokio::pin!(writer);
    let mut writer_done = false;
    let reason = loop {
        tokio::select! {
            frame = frames.next() => match frame {
                Some(Ok(body)) => {
                    let len = body.len();
                    match wire::decode(body.freeze()) {
                        Ok(wire::Decoded { message, envelope }) => {
                            let event = NetEvent::Message { from: peer, conn_id, message, envelope };
                            if net_tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            conn.close(close_code::PROTOCOL.into(), b"malformed frame");
                            let reason = format!("malformed frame ({len} bytes): {e}");
                            let refused = NetEvent::Refused { peer: Some(peer), conn_id, kind: Refusal::Malformed, reason };
                            let _ = net_tx.send(refused).await;
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
                    let _ = net_tx.send(NetEvent::Refused { peer: Some(peer), conn_id, kind, reason }).await;
                    return;
                }
                None => break "stream finished".to_string(),
            },
            () = &mut writer, if !writer_done => writer_done = true,
        }
    };
    let _ = net_tx.send(NetEvent::Down { peer: peer.id, conn_id, reason }).await;
}

/// A writer's side of its send queue: the depth it shares with the actor, the signal that
/// it emptied, and the count of frames it had to discard.
struct Queue {
    depth: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    dropped: Arc<AtomicU64>,
}

/// Write queued frames, coalescing whatever is queued into one write (many frames per
/// QUIC packet). Frames go to quinn as chunks, without copying: a forwarded Gossip's
/// envelope bytes are shared with the other eager peers' queues. When the actor drops the
/// queue, finish the stream and wait (bounded) until the peer has read everything.
async fn write_frames(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    queue: Queue,
    net_tx: mpsc::Sender<NetEvent>,
    conn_id: u64,
) {
    let Queue { depth, drained, dropped } = queue;
    let mut chunks: Vec<Bytes> = Vec::new();
    while let Some(first) = rx.recv().await {
        chunks.clear();
        let mut bytes = first.len();
        first.push_to(&mut chunks);
        let mut n = 1;
        while bytes < 64 << 10 {
            match rx.try_recv() {
                Ok(f) => {
                    bytes += f.len();
                    f.push_to(&mut chunks);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if send.write_all_chunks(&mut chunks).await.is_err() {
            depth.fetch_sub(n, Ordering::Relaxed);
            dropped.fetch_add(n as u64, Ordering::Relaxed);
            // The connection is gone; the reader reports it. Keep draining (and counting)
            // so the depth stays honest until the actor drops the queue.
            while let Some(_f) = rx.recv().await {
                depth.fetch_sub(1, Ordering::Relaxed);
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            let _ = net_tx.send(NetEvent::WriterDone { conn_id }).await;
            return;
        }
        if depth.fetch_sub(n, Ordering::Relaxed) == n {
            drained.notify_one();
        }
    }
    let _ = send.finish();
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    tracing::debug!(elapsed = ?t.elapsed(), result = ?r, "writer finished");
    let _ = net_tx.send(NetEvent::WriterDone { conn_id }).await;
}
