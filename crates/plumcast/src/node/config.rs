//! Node configuration, each default with its source.

use std::net::SocketAddr;
use std::time::Duration;

use plumcast_transport::TransportConfig;
use serde::{Deserialize, Serialize};

use crate::proto;

/// [`NodeConfig::cluster`] default.
pub const DEFAULT_CLUSTER: &str = "plumcast";
/// [`NodeConfig::max_payload_size`] default, bytes: 64 KiB, one UDP datagram's worth of
/// application data (larger payloads belong in a blob store with their hash broadcast).
pub const MAX_PAYLOAD_SIZE: usize = 64 << 10;
/// [`NodeConfig::broadcast_queue`] default: 128 broadcasts, enough to keep the actor busy
/// between two wake-ups at max rate, small enough that `broadcast` pushes back within ms.
pub const BROADCAST_QUEUE: usize = 128;
/// [`NodeConfig::app_queue`] default: 4,096 events (≈ 1 MiB of 256-byte messages) before a
/// slow application stops the node reading from its peers.
pub const APP_QUEUE: usize = 4096;
/// [`NodeConfig::peer_queue_soft_limit`] default: 64 frames. Deeper queues raised latency
/// past the Graft timer under load (512 → 64: max-rate p50 halved, docs/performance.md).
pub const PEER_QUEUE_SOFT_LIMIT: usize = 64;
/// [`NodeConfig::peer_queue_hard_limit`] default: 262,144 frames (≈ 64 MiB of 256-byte
/// messages) before a peer is disconnected as too slow; far above the soft limit, so only
/// a peer that stopped reading for seconds reaches it.
pub const PEER_QUEUE_HARD_LIMIT: usize = 1 << 18;
/// [`NodeConfig::peer_queue_hard_bytes`] default: 64 MiB, the same ≈ 64 MiB the frame
/// limit allows of 256-byte messages; without it 262,144 frames of 64 KiB payloads would
/// be 16 GiB for one peer that stopped reading.
pub const PEER_QUEUE_HARD_BYTES: usize = 64 << 20;
/// [`NodeConfig::shutdown_linger`] default: 2 s for the Disconnects to be acknowledged
/// (many round trips on any LAN; systemd's stop timeout is 90 s).
pub const SHUTDOWN_LINGER: Duration = Duration::from_secs(2);
/// [`NodeConfig::max_connections`] default: 1,024 connections, open or in their
/// handshake. A node has about 5 active and a few transient links; the rest is room for
/// being a bootstrap contact of many joiners at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// [`NodeConfig::idle_link_timeout`] default: a transient link (Shuffle reply, probe) idle
/// for 10 s, one membership round, is closed.
pub const IDLE_LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Node configuration. Plain data with `#[serde(default)]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NodeConfig {
    /// UDP address to bind. Default `127.0.0.1:0` (an ephemeral loopback port).
    pub bind: SocketAddr,
    /// Address other nodes should dial; default: the bound address.
    pub advertise: Option<SocketAddr>,
    /// Bootstrap contacts, `IP:PORT` or `HOST:PORT`. Empty: this node starts a cluster.
    pub bootstrap: Vec<String>,
    /// Cluster name, exchanged in the handshake: nodes of other clusters are refused.
    pub cluster: String,
    /// Protocol parameters (presets: `proto::Config::{lan, wan, local}`).
    pub protocol: proto::Config,
    /// QUIC parameters.
    pub transport: TransportConfig,
    /// Largest payload accepted by `broadcast`, bytes. Default 64 KiB.
    pub max_payload_size: usize,
    /// Broadcasts queued towards the actor before `broadcast` waits / `try_broadcast`
    /// returns `Busy`.
    pub broadcast_queue: usize,
    /// Events queued towards the application before the node stops reading from peers.
    pub app_queue: usize,
    /// Frames queued for one peer above which the node stops accepting new broadcasts
    /// (backpressure). Nothing is shed: IHave announcements are queued too, because a
    /// node that lost its eager parent learns of a message only through them.
    pub peer_queue_soft_limit: usize,
    /// Frames queued for one peer above which the peer is disconnected as too slow
    /// (counted; HyParView replaces it).
    pub peer_queue_hard_limit: usize,
    /// Bytes queued for one peer above which it is disconnected as too slow, as with
    /// [`NodeConfig::peer_queue_hard_limit`] (a Gossip payload shared by several queues
    /// counts in each).
    pub peer_queue_hard_bytes: usize,
    /// How long `shutdown` waits for queued frames to be acknowledged.
    pub shutdown_linger: Duration,
    /// A connection to a peer in neither view, idle this long, is closed.
    pub idle_link_timeout: Duration,
    /// Sign our messages and accept only messages whose origin's signature checks
    /// (default true, as gossipsub's strict mode). Every node of a cluster must agree: a
    /// signing node drops an unsigned message as forged and disconnects its sender. See
    /// the `sign` module's docs for the batch signatures and docs/performance.md for what
    /// they cost.
    pub sign_messages: bool,
    /// Most connections at once, counting those still in their TLS handshake (and the
    /// node's own name lookups); an incoming one past it is refused at once (QUIC
    /// CONNECTION_REFUSED, counted in [`NetStats::connections_refused`](crate::NetStats::connections_refused)).
    /// Default [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Serve the admin HTTP endpoint (`/metrics`, `/topology`, the live page) on this TCP
    /// address (default none). Needs the `admin` cargo feature; see the `admin` module.
    pub http: Option<SocketAddr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            advertise: None,
            bootstrap: Vec::new(),
            cluster: DEFAULT_CLUSTER.to_string(),
            protocol: proto::Config::lan(),
            transport: TransportConfig::default(),
            max_payload_size: MAX_PAYLOAD_SIZE,
            broadcast_queue: BROADCAST_QUEUE,
            app_queue: APP_QUEUE,
            peer_queue_soft_limit: PEER_QUEUE_SOFT_LIMIT,
            peer_queue_hard_limit: PEER_QUEUE_HARD_LIMIT,
            peer_queue_hard_bytes: PEER_QUEUE_HARD_BYTES,
            shutdown_linger: SHUTDOWN_LINGER,
            idle_link_timeout: IDLE_LINK_TIMEOUT,
            sign_messages: true,
            max_connections: MAX_CONNECTIONS,
            http: None,
        }
    }
}

/// Check that a bootstrap contact is `IP:PORT` or `HOST:PORT` with a port in 1–65535.
/// Whether a host name resolves is learnt when it is dialed (and retried with backoff).
///
/// # Errors
/// A message naming the contact and what is wrong with it.
pub fn check_contact(contact: &str) -> Result<(), String> {
    if contact.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = contact.rsplit_once(':') else {
        return Err(format!("bootstrap contact {contact:?} has no port: write HOST:PORT or IP:PORT"));
    };
    if host.is_empty() {
        return Err(format!("bootstrap contact {contact:?} has no host: write HOST:PORT or IP:PORT"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("bootstrap contact {contact:?}: {port:?} is not a port (1–65535)")),
    }
}
