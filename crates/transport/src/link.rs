//! The link: one task per QUIC connection that does the handshake and the Hello
//! exchange, then reads frames (decoding them with the owner's [`Codec`]). The owner (the
//! node's actor) hears of everything as [`LinkEvent`]s and gets the connection's send
//! stream in [`Up`]: it writes its frames itself, so a frame sent crosses no task
//! hand-off before quinn's connection driver.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use crate::{
    Hello, NodeId, PeerInfo, TransportError, close_code, decode_body, encode_frame, frame_codec, peer_node_id,
};

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
    pub fn push_to(self, chunks: &mut Vec<Bytes>) {
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
    /// Our frame stream to the peer (the Hello already written on it): the owner writes
    /// the frames, and finishes the stream when it is done with the link.
    pub send: quinn::SendStream,
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
/// (decoded with `codec`, off the owner's task); the send stream goes to the owner in
/// [`LinkEvent::Up`].
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
    let LinkCtx { conn_id, events: net_tx, hello, max_frame, handshake_timeout, dial } = ctx;
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
    let up = LinkEvent::Up(Up {
        peer,
        conn_id,
        conn: conn.clone(),
        send,
        dialed_by_me: dial.is_some(),
        bootstrap: dial.as_ref().is_some_and(|d| d.expected.is_none()),
    });
    if net_tx.send(up.into()).await.is_err() {
        return;
    }
    let reason = loop {
        match frames.next().await {
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
                        let refused =
                            LinkEvent::Refused { peer: Some(peer), after_dial_failed: false, conn_id, kind, reason };
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
        }
    };
    let _ = net_tx.send(LinkEvent::Down { peer: peer.id, conn_id, reason }.into()).await;
}
