//! plumcast: reliable cluster-wide broadcast over QUIC.
//!
//! Applications join a cluster through one bootstrap address and broadcast messages
//! that every live node delivers exactly once. Membership is HyParView (Leitão, Pereira,
//! Rodrigues, DSN 2007): a small active view of open connections, a larger passive view
//! of backups. Dissemination is Plumtree (Leitão, Pereira, Rodrigues, SRDS 2007): eager
//! push of payloads along a spanning tree, lazy push of IHave announcements on the other
//! links, Graft to repair the tree and Prune to trim it. Both cores are sans-IO state
//! machines ([`proto`]); with the default feature `net`, a [`Node`] runs them on tokio
//! over QUIC.
//!
//! # A node
//!
//! Two nodes on loopback: `b` joins through `a`, broadcasts, and `a` delivers.
//!
//! ```
//! use std::time::Duration;
//! use plumcast::{Event, Node};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), plumcast::Error> {
//! let (a, mut a_events) = Node::builder().spawn().await?; // 127.0.0.1, any free port
//! let (b, _b_events) = Node::builder().bootstrap(a.addr()).spawn().await?;
//! b.wait_for_neighbors(1, Duration::from_secs(10)).await?;
//!
//! let id = b.broadcast("hello, cluster").await?;
//! while let Some(event) = a_events.recv().await {
//!     if let Event::Delivered(m) = event {
//!         assert_eq!((m.id, m.origin, &m.payload[..]), (id, b.id(), &b"hello, cluster"[..]));
//!         break;
//!     }
//! }
//! b.shutdown().await?;
//! a.shutdown().await
//! # }
//! ```
//!
//! An application needs `tokio` with the `rt-multi-thread` (or `rt`) and `macros`
//! features; the node runs on the application's runtime. Instead of the [`Events`]
//! stream, [`NodeBuilder::spawn_with_handler`] calls a [`MessageHandler`] on a thread of
//! its own. [`Node`] is a cheap cloneable handle: share it between tasks.
//!
//! # Tuning
//!
//! - [`NodeBuilder`] has the options applications reach for: bind and advertised
//!   address, bootstrap contacts, cluster name, identity (or an identity file),
//!   [`NodeBuilder::deliver_own`], [`NodeBuilder::tree`], queue sizes, payload limit,
//!   shutdown linger.
//! - [`NodeBuilder::protocol`] takes a [`proto::Config`]: the presets
//!   [`proto::Config::lan`] (the default: the papers' view sizes, failures detected in
//!   about 0.65 s), [`proto::Config::wan`] and [`proto::Config::local`] (many nodes on one
//!   machine), whose fields ([`proto::membership::Config`], [`proto::broadcast::Config`])
//!   each document their default and its source.
//! - [`NodeConfig`] holds everything, as plain data (`serde`, `#[serde(default)]`), with
//!   the defaults in [`config`].
//!
//! # Operating
//!
//! - **Logs** go through `tracing`: install a subscriber (`tracing-subscriber` with an
//!   `EnvFilter` reads `RUST_LOG`, e.g. `RUST_LOG=plumcast=debug`). Warnings say what
//!   failed once (an unreachable bootstrap contact, a node of another cluster); repeats
//!   are logged at debug level.
//! - **Counters**: [`Node::stats`] gives the views, the HyParView and Plumtree counters
//!   and the node's [`NetStats`] (every refused connection, malformed frame, slow peer
//!   and dropped frame, by reason).
//! - **Waiting to join**: [`Node::wait_for_neighbors`] fails with
//!   [`Error::NoNeighbors`], which says why the last dial failed.
//! - **Stopping**: [`Node::shutdown`] leaves gracefully (Disconnect to the neighbours,
//!   flush, close); dropping the last handle leaves in the background without waiting.
//!
//! # Guarantees
//!
//! Every message accepted by [`Node::broadcast`] is delivered exactly once to every node
//! that stays alive and connected while it spreads (its origin only with
//! [`NodeBuilder::deliver_own`]). Nothing is shed: `broadcast` waits while the node is
//! congested, [`Node::try_broadcast`] returns [`Error::Busy`], and a slow application
//! slows its peers through QUIC flow control. Messages of one origin may be delivered out
//! of order; a message cut off by a partition is recovered after the heal only within the
//! 10 s catch-up window. A node's identity is its Ed25519 key ([`NodeId`]), proven in the
//! TLS handshake. Every message is signed by its origin (in batches, see [`sign`]) and
//! checked once by every node before it is stored, delivered or forwarded; a validator
//! ([`NodeBuilder::validator`]) checks its content at the same point.
//!
//! # Features
//!
//! - `net` (default): [`Node`] over tokio and QUIC. Without it only [`proto`] is built.
//! - `test-util`: fault injection for tests (the `test_util` module, `Node::crash`, `Node::faults`).

#![forbid(unsafe_code)]

#[cfg(feature = "net")]
mod node;
pub mod proto;

#[cfg(feature = "net")]
pub use node::config;
/// Ed25519 batch signatures on messages ([`NodeConfig::sign_messages`]).
#[cfg(feature = "net")]
pub use node::sign;

/// Decode one frame body (without its 4-byte length prefix) exactly as a node decodes
/// what a peer sends: the zero-copy Gossip path, the 64 KiB limit on control frames, then
/// postcard. Public for the fuzz targets (`fuzz/`) and for tools that read captures.
///
/// # Errors
/// [`TransportError::Frame`] for malformed bytes, [`TransportError::Oversized`] for a
/// control frame over 64 KiB.
#[cfg(feature = "net")]
pub fn decode_frame(body: Bytes) -> Result<proto::Message<PeerInfo>, TransportError> {
    node::decode_frame(body)
}
/// The admin endpoint's metrics and topology ([`NodeBuilder::http`]).
#[cfg(feature = "admin")]
pub use node::admin::{Metrics, Topology, TopologyNode};
#[cfg(feature = "net")]
pub use node::{
    ADMISSION_POLL, Candidate, Count, Cursor, Delivered, Error, Event, Events, Exchange, FrameDrops, HopHistogram,
    Identity, MessageHandler, MessageKind, NeighborDowns, NeighborStats, NetStats, Node, NodeBuilder, NodeConfig,
    NodeId, NodeStats, Page, Payload, PeerInfo, READ_MAX, SignStats, StoreStats, TopologyRecord, Traffic,
    TransportConfig, TransportError, Validation, ValidatorFn,
};
/// The cluster certificate authority (`plumcast ca`; [`NodeBuilder::cluster_ca_file`]).
#[cfg(feature = "net")]
pub use plumcast_transport::ca;
/// The metrics library [`Metrics`] registers with (the same version, for an application's
/// own registry).
#[cfg(feature = "admin")]
pub use prometheus_client;

pub use bytes::Bytes;
pub use proto::{DownReason, MessageId};

/// Hooks for tests and the demo: black-holing a node's socket and partitioning it from
/// chosen peers, through [`Node::faults`] and [`Node::crash`].
#[cfg(feature = "test-util")]
pub mod test_util {
    pub use plumcast_transport::{Faults, Impairment};
}

/// The README's code blocks, compiled as doctests so the example there stays true.
#[cfg(all(doctest, feature = "net"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
