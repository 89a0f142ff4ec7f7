//! plumcast: reliable cluster-wide broadcast over QUIC.
//!
//! Membership is HyParView (Leitão, Pereira, Rodrigues, DSN 2007), dissemination is
//! Plumtree (Epidemic Broadcast Trees, SRDS 2007). [`proto`] composes the two sans-IO
//! cores and is always built; with the default feature `net`, `Node` runs them on tokio
//! over QUIC.

#![forbid(unsafe_code)]

#[cfg(feature = "net")]
mod node;
pub mod proto;

#[cfg(feature = "net")]
pub use node::{
    Delivered, Error, Event, Events, FrameDrops, Identity, MessageHandler, NetStats, Node, NodeBuilder, NodeConfig,
    NodeId, NodeStats, Payload, PeerInfo, TransportConfig, TransportError,
};

#[cfg(feature = "test-util")]
pub use node::Faults;

pub use bytes::Bytes;
#[cfg(feature = "net")]
pub use node::check_contact;
pub use proto::{DownReason, MessageId};

/// The README's code blocks, compiled as doctests so the example there stays true.
#[cfg(all(doctest, feature = "net"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
