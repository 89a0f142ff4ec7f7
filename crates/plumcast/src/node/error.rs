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
    /// A wait ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The transport could not be set up (socket, TLS, identity).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The configuration is invalid: a bootstrap contact without a port, an empty cluster
    /// name, a payload limit that does not fit a frame. The message names what.
    #[error("invalid configuration: {0}")]
    Config(String),
}
