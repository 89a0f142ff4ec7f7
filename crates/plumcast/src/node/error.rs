//! Errors of the node API.

use std::time::Duration;

use plumcast_transport::TransportError;

#[cfg(doc)]
use super::{Node, NodeConfig};

/// Errors of the [`Node`] API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload is larger than [`NodeConfig::max_payload_size`]; nothing was sent.
    #[error("payload of {size} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// The payload's size, bytes.
        size: usize,
        /// The configured maximum, bytes.
        max: usize,
    },
    /// `try_broadcast` found the broadcast queue full; retry later or use `broadcast`.
    #[error("the node is busy: its broadcast queue is full")]
    Busy,
    /// The node has shut down or crashed.
    #[error("the node has stopped")]
    Stopped,
    /// [`Node::wait_for_neighbors`] ran out of time before the active view held enough
    /// peers.
    #[error(
        "timed out after {waited:?} with {have} of {wanted} neighbour(s){}",
        .last_dial_failure.as_ref().map(|r| format!("; last dial failure: {r}")).unwrap_or_default()
    )]
    NoNeighbors {
        /// How long it waited.
        waited: Duration,
        /// The neighbours asked for.
        wanted: usize,
        /// The active view's size when the wait ended.
        have: usize,
        /// Why the last dial (bootstrap contact or peer) failed, if one did.
        last_dial_failure: Option<String>,
    },
    /// The transport could not be set up (socket, TLS, identity).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The data dir cannot be used: in use by another process, another schema version,
    /// an identity that differs from the one given, or a disk error. The message names
    /// the dir and what is wrong.
    #[error("data dir {}: {reason}", path.display())]
    DataDir {
        /// The data dir.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// [`Node::exchange`] could not start: the peer is not a neighbour, or anti-entropy
    /// is off.
    #[error("cannot start an anti-entropy exchange with {peer}: {reason}")]
    Exchange {
        /// The peer asked for.
        peer: plumcast_transport::NodeId,
        /// Why not.
        reason: crate::proto::broadcast::ExchangeError,
    },
    /// The configuration is invalid: a bootstrap contact without a port, an empty cluster
    /// name, a payload limit that does not fit a frame. The message names what.
    #[error("invalid configuration: {0}")]
    Config(String),
}
