//! QUIC transport for plumcast.
//!
//! - [`Identity`]: an Ed25519 key pair (persisted as PKCS#8) and a self-signed rcgen
//!   certificate for it; the [`NodeId`] is the 32-byte public key.
//! - [`server_config`] / [`client_config`]: TLS 1.3 only, Ed25519 only, client auth
//!   mandatory, ALPN [`ALPN`]. Custom rustls verifiers accept a peer only if the
//!   handshake signature proves it holds the key in its certificate, and bind the
//!   connection to that key's [`NodeId`]; a dial that expects a `NodeId` rejects any other.
//! - [`link`]: the task of one connection (handshake, Hello, reader, coalescing writer),
//!   generic over the owner's [`link::Codec`].
//! - Framing: each direction is one unidirectional stream of frames, a 4-byte big-endian
//!   length then a postcard body; the first frame is a [`Hello`] carrying the cluster name
//!   and the sender's advertised address. Frames above the configured maximum close the
//!   connection.
//! - [`bind`]: a quinn endpoint over a [`FaultySocket`], whose [`Faults`] switch can
//!   black-hole the socket (an abrupt crash: no CONNECTION_CLOSE reaches anyone) or drop
//!   every datagram to chosen addresses (a partition; tests).

#![forbid(unsafe_code)]

mod admission;
pub mod ca;
pub mod link;
mod socket;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use admission::{Admission, AllowFileError, BadNodeId, read_allow_file};
pub use socket::{Faults, FaultySocket, Impairment};
pub use tls::{CertificateRefused, client_config, node_id_of, peer_node_id, server_config};

/// ALPN protocol id of plumcast's wire protocol, version 1.
pub const ALPN: &[u8] = b"plumcast/1";

/// The fixed TLS server name. A 64-character hex id is not a valid DNS label, so the
/// name is constant and the verifiers check the `NodeId` instead.
pub const SERVER_NAME: &str = "plumcast";

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Socket or file I/O failed.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// TLS configuration failed.
    #[error("TLS error: {0}")]
    Tls(rustls::Error),
    /// Certificate or key generation failed.
    #[error("certificate error: {0}")]
    Certificate(rcgen::Error),
    /// A key file did not hold an Ed25519 PKCS#8 key.
    #[error("invalid identity key: {0}")]
    InvalidKey(String),
    /// The UDP socket could not be bound to this address.
    #[error("cannot bind UDP {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS's reason.
        reason: std::io::Error,
    },
    /// An identity key file could not be read or created.
    #[error("identity key file {}: {reason}", path.display())]
    IdentityFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The QUIC crypto configuration was rejected.
    #[error("QUIC configuration error: {0}")]
    Config(String),
    /// A frame could not be encoded or decoded.
    #[error("frame error: {0}")]
    Frame(postcard::Error),
    /// A frame of a kind that carries no payload was longer than that kind may be
    /// (checked on its length, before decoding).
    #[error("{what} of {len} bytes, over the {max}-byte limit")]
    Oversized {
        /// Which kind of frame.
        what: &'static str,
        /// Its length, bytes.
        len: usize,
        /// The limit, bytes.
        max: usize,
    },
}

// The errors carry their cause in their message (`{0}`), not as a `source()`: an error
// chain printer (anyhow's `{:#}`) would otherwise print the cause twice.
impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<rustls::Error> for TransportError {
    fn from(e: rustls::Error) -> Self {
        Self::Tls(e)
    }
}

impl From<rcgen::Error> for TransportError {
    fn from(e: rcgen::Error) -> Self {
        Self::Certificate(e)
    }
}

impl From<postcard::Error> for TransportError {
    fn from(e: postcard::Error) -> Self {
        Self::Frame(e)
    }
}

/// A node's identity: its Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// All 64 hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 10 hex characters, for logs.
    pub fn short(&self) -> String {
        self.to_hex()[..10].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// A peer as the membership layer knows it: its id and the address it advertises.
/// Equality, order and hash are the [`NodeId`] alone: the address is metadata (a node
/// restarted at a new address is the same peer). An address learned from another peer is
/// hearsay: dial it expecting this id.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's id.
    pub id: NodeId,
    /// Where it said it can be reached.
    pub addr: SocketAddr,
}

impl PartialEq for PeerInfo {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for PeerInfo {}
impl PartialOrd for PeerInfo {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PeerInfo {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}
impl std::hash::Hash for PeerInfo {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}
impl fmt::Display for PeerInfo {
    /// The short id and the address: `5de0f1ce6a@127.0.0.1:7000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id.short(), self.addr)
    }
}

impl fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id.short(), self.addr)
    }
}

/// An Ed25519 key pair with its self-signed certificate.
#[derive(Clone)]
pub struct Identity {
    pkcs8: Vec<u8>,
    id: NodeId,
    cert: rustls::pki_types::CertificateDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.id.short())
    }
}

impl Identity {
    /// A fresh random identity.
    ///
    /// # Errors
    /// [`TransportError::Certificate`] if key or certificate generation fails.
    pub fn generate() -> Result<Self, TransportError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Self::from_key(key)
    }

    /// An identity from a PKCS#8 DER Ed25519 private key.
    ///
    /// # Errors
    /// [`TransportError::InvalidKey`] if the bytes are not an Ed25519 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, TransportError> {
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der.to_vec().into(), &rcgen::PKCS_ED25519)
            .map_err(|e| TransportError::InvalidKey(e.to_string()))?;
        Self::from_key(key)
    }

    fn from_key(key: rcgen::KeyPair) -> Result<Self, TransportError> {
        let raw = key.public_key_raw();
        let id: [u8; 32] =
            raw.try_into().map_err(|_| TransportError::InvalidKey(format!("public key is {} bytes", raw.len())))?;
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?.self_signed(&key)?;
        Ok(Self { pkcs8: key.serialize_der(), id: NodeId(id), cert: cert.der().clone() })
    }

    /// Load the PKCS#8 key at `path`, or create one there (mode 0600 on Unix, logged at
    /// info level with the new id) if the file does not exist. The directory must exist:
    /// a mistyped path is refused rather than created.
    ///
    /// # Errors
    /// [`TransportError::IdentityFile`] naming the path (missing directory, unreadable or
    /// unwritable file), or [`TransportError::InvalidKey`] for a file that is not a key.
    pub fn load_or_create(path: &Path) -> Result<Self, TransportError> {
        let fail = |reason: String| TransportError::IdentityFile { path: path.to_path_buf(), reason };
        match std::fs::read(path) {
            Ok(der) => Self::from_pkcs8(&der),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if !dir.is_dir() {
                    return Err(fail(format!("directory {} does not exist", dir.display())));
                }
                let id = Self::generate()?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut file = opts.open(path).map_err(|e| fail(format!("cannot create it: {e}")))?;
                std::io::Write::write_all(&mut file, &id.pkcs8).map_err(|e| fail(format!("cannot write it: {e}")))?;
                tracing::info!(path = %path.display(), id = %id.node_id(), "created a new identity");
                Ok(id)
            }
            Err(e) => Err(fail(format!("cannot read it: {e}"))),
        }
    }

    /// This identity presenting `cert` (one a cluster CA issued for its key, see [`ca`])
    /// instead of its self-signed certificate.
    ///
    /// # Errors
    /// [`TransportError::InvalidKey`] if `cert` is not a certificate for this identity's
    /// key.
    pub fn with_certificate(
        mut self,
        cert: rustls::pki_types::CertificateDer<'static>,
    ) -> Result<Self, TransportError> {
        let id = node_id_of(&cert).map_err(|e| TransportError::InvalidKey(format!("the certificate: {e}")))?;
        if id != self.id {
            return Err(TransportError::InvalidKey(format!(
                "the certificate is for node {}, this key is node {}",
                id.short(),
                self.id.short()
            )));
        }
        self.cert = cert;
        Ok(self)
    }

    /// The node id (public key).
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// The private key, PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The self-signed certificate, DER.
    pub fn certificate(&self) -> &rustls::pki_types::CertificateDer<'static> {
        &self.cert
    }
}

/// Transport tuning. Plain data with defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TransportConfig {
    /// QUIC keep-alive interval. The protocol's own heartbeats keep active links busy;
    /// this keeps idle transient links (shuffle replies) from timing out early.
    pub keep_alive: Duration,
    /// QUIC idle timeout (quinn's default is 30 s; membership detects failures sooner).
    pub idle_timeout: Duration,
    /// Largest frame accepted or sent, bytes. Larger frames close the connection.
    pub max_frame_size: usize,
    /// How long a handshake plus Hello exchange may take.
    pub handshake_timeout: Duration,
    /// QUIC flow-control window of the frame stream a peer sends us, bytes. Default
    /// 32 KiB (≈ 100 frames of 256 B payload); quinn's default, 1.25 MB, let a busy
    /// receiver buffer hundreds of ms of traffic, past the Graft timer (max-rate p50
    /// 50 → 20 ms at N = 20 with 32 KiB, docs/performance.md). It caps one link at one
    /// window per round trip (≈ 260 Mbit/s at 1 ms): raise it for fat long links.
    pub stream_receive_window: u32,
    /// Bytes we may have in flight unacknowledged on one connection (quinn default 10 MB).
    pub send_window: u64,
    /// UDP socket receive buffer requested, bytes (`SO_RCVBUF`; 0 keeps the OS default,
    /// 208 KiB on Linux). A burst of datagrams beyond it is dropped by the kernel and costs
    /// a QUIC loss recovery (a latency spike). The kernel caps the request at
    /// `net.core.rmem_max`; the size obtained is logged at debug level. Default 2 MiB.
    pub udp_recv_buffer: usize,
    /// UDP socket send buffer requested, bytes (`SO_SNDBUF`; 0 keeps the OS default; capped
    /// at `net.core.wmem_max`). Default 2 MiB.
    pub udp_send_buffer: usize,
}

/// [`TransportConfig::keep_alive`] default: 2 s, so a transient link stays open through
/// the 10 s idle timeout while the protocol's own heartbeats (100 ms) keep active links busy.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// [`TransportConfig::idle_timeout`] default: 10 s (quinn's is 30 s); membership detects a
/// dead neighbour in ≈ 0.65 s, this only reaps transient links whose peer vanished.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// [`TransportConfig::max_frame_size`] default: 1 MiB, room for a 64 KiB payload with its
/// headers and for the largest catch-up IHave (1,024 announcements), bounded so that one
/// peer cannot make a node buffer more per frame.
pub const MAX_FRAME_SIZE: usize = 1 << 20;
/// [`TransportConfig::handshake_timeout`] default: 5 s for TLS plus the Hello exchange,
/// many round trips even on a WAN; a peer that stalls longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// [`TransportConfig::stream_receive_window`] default: 32 KiB (see the field).
pub const STREAM_RECEIVE_WINDOW: u32 = 32 << 10;
/// [`TransportConfig::send_window`] default: quinn's own, 10 MB.
pub const SEND_WINDOW: u64 = 10_000_000;
/// [`TransportConfig::udp_recv_buffer`] and [`TransportConfig::udp_send_buffer`] default:
/// 2 MiB. Linux's 208 KiB overflowed under bursts (241–508 datagrams dropped per max-rate
/// run at N = 100–200, none with 2 MiB; docs/performance.md).
pub const UDP_BUFFER: usize = 2 << 20;

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            keep_alive: KEEP_ALIVE,
            idle_timeout: IDLE_TIMEOUT,
            max_frame_size: MAX_FRAME_SIZE,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            stream_receive_window: STREAM_RECEIVE_WINDOW,
            send_window: SEND_WINDOW,
            udp_recv_buffer: UDP_BUFFER,
            udp_send_buffer: UDP_BUFFER,
        }
    }
}

impl TransportConfig {
    pub(crate) fn quinn(&self) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|e| TransportError::Config(e.to_string()))?,
        ));
        t.max_concurrent_bidi_streams(0u32.into());
        t.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
        t.stream_receive_window(self.stream_receive_window.into());
        t.send_window(self.send_window);
        Ok(t)
    }
}

/// Unidirectional streams a peer may open at once: each side sends one stream of frames;
/// a little room covers a stream still finishing while a new one opens.
const MAX_UNI_STREAMS: u32 = 4;

/// The wire version this build speaks, sent first in every [`Hello`]. Peers of another
/// version are refused (counted, logged once), since their messages would not decode.
/// Version 1 (plumcast before anti-entropy) sent no version; version 2 added the
/// anti-entropy messages (Digest, Repair) and this field; version 3 numbers each digest
/// and names the digest a repair answers (the development builds of 2026-12-01 between
/// 15:56 and 16:26 UTC sent 2 with a partly changed format; version 3 refuses them);
/// version 4 carries the origin's proof of authorship (a batch signature) in every
/// envelope and settled records in repairs, and hashes the payload into the message id
/// by its own BLAKE3 hash; version 5 says in the [`Hello`] whether the sender signs
/// its messages, and adds topology records (each node's active view and eager links,
/// for the admin endpoint).
pub const WIRE_VERSION: u32 = 5;

/// First frame on every stream: who the sender says it is beyond its TLS key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`WIRE_VERSION`].
    pub version: u32,
    /// Cluster name; peers of another cluster are refused.
    pub cluster: String,
    /// The address the sender advertises for dialing it back.
    pub addr: SocketAddr,
    /// Whether the sender signs its messages and requires its peers' to be signed. Nodes
    /// that differ are refused: a signing node takes every unsigned message for a
    /// forgery, so a mixed cluster would disconnect itself link by link.
    pub signed: bool,
}

/// Application close codes used on plumcast connections.
pub mod close_code {
    /// Graceful close (leave, idle).
    pub const NORMAL: u32 = 0;
    /// A duplicate connection between the same two nodes was retired.
    pub const DUPLICATE: u32 = 1;
    /// Malformed, oversized or unknown frame.
    pub const PROTOCOL: u32 = 2;
    /// The peer belongs to another cluster.
    pub const WRONG_CLUSTER: u32 = 3;
    /// The peer was declared failed or misbehaving.
    pub const FAILED: u32 = 4;
    /// The peer speaks another wire version.
    pub const WRONG_VERSION: u32 = 5;
    /// The peer is no longer on the allow-list.
    pub const NOT_ADMITTED: u32 = 6;
    /// The peer signs its messages and we do not, or the other way round.
    pub const WRONG_SIGNING: u32 = 7;
}

/// Bytes reserved for an encoded frame: a control message or a 256-byte payload fits
/// without growing the buffer.
const FRAME_CAPACITY: usize = 512;

/// Encode `value` as one frame: 4-byte big-endian length, then postcard.
///
/// # Errors
/// [`TransportError::Frame`] if serialization fails.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Bytes, TransportError> {
    // Usually one allocation: the body is encoded after a placeholder for its length.
    let mut frame = Vec::with_capacity(FRAME_CAPACITY);
    frame.extend_from_slice(&[0; 4]);
    let mut frame = postcard::to_extend(value, frame)?;
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Bytes::from(frame))
}

/// Decode a frame body (without the length prefix).
///
/// # Errors
/// [`TransportError::Frame`] for malformed bytes or an unknown message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, TransportError> {
    Ok(postcard::from_bytes(body)?)
}

/// The decoder for incoming frames, refusing frames longer than `max_frame_size`.
pub fn frame_codec(max_frame_size: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame_size)
        .new_codec()
}

/// A UDP socket bound to `addr` with the configured kernel buffers. A buffer size the
/// kernel refuses is logged and the OS default kept (it is a tuning, not a requirement).
fn udp_socket(addr: SocketAddr, config: &TransportConfig) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if config.udp_recv_buffer > 0
        && let Err(e) = socket.set_recv_buffer_size(config.udp_recv_buffer)
    {
        tracing::warn!(%addr, requested = config.udp_recv_buffer, error = %e, "UDP receive buffer not set");
    }
    if config.udp_send_buffer > 0
        && let Err(e) = socket.set_send_buffer_size(config.udp_send_buffer)
    {
        tracing::warn!(%addr, requested = config.udp_send_buffer, error = %e, "UDP send buffer not set");
    }
    tracing::debug!(
        %addr,
        recv_buffer = ?socket.recv_buffer_size(),
        send_buffer = ?socket.send_buffer_size(),
        "UDP socket buffers (Linux reports twice the usable size)"
    );
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Bind a quinn endpoint on `addr` serving and dialing as `identity`.
/// Returns the endpoint and the fault switch of its socket.
///
/// # Errors
/// Socket or TLS configuration errors.
pub fn bind(
    addr: SocketAddr,
    identity: &Identity,
    config: &TransportConfig,
    admission: &Admission,
) -> Result<(quinn::Endpoint, Arc<Faults>), TransportError> {
    let std_socket = udp_socket(addr, config).map_err(|reason| TransportError::Bind { addr, reason })?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let inner = runtime.wrap_udp_socket(std_socket)?;
    let faults = Arc::new(Faults::default());
    let socket = Arc::new(FaultySocket::new(inner, faults.clone()));
    let server = server_config(identity, config, admission)?;
    let mut endpoint =
        quinn::Endpoint::new_with_abstract_socket(quinn::EndpointConfig::default(), Some(server), socket, runtime)?;
    endpoint.set_default_client_config(client_config(identity, None, config, admission)?);
    Ok((endpoint, faults))
}
