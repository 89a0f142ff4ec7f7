//! The HyParView wire messages.

use serde::{Deserialize, Serialize};

/// Priority of a Neighbor request (paper §4.3): a node with an empty active view asks
/// with `High`, which the receiver must accept (evicting a random neighbour if full);
/// `Low` is accepted only when the receiver has a free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Priority {
    /// Must be accepted.
    High,
    /// Accepted only if the active view has room.
    Low,
}

/// A HyParView wire message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<P> {
    /// A new node asks the contact to add it (paper Alg. 1, `JOIN`). Answered with
    /// [`Message::NeighborReply`] `{ accepted: true }`.
    Join,
    /// Random walk spreading a joiner (paper Alg. 1, `FORWARDJOIN`).
    ForwardJoin {
        /// The node that joined.
        joiner: P,
        /// Remaining walk length, starting at ARWL.
        ttl: u16,
    },
    /// Ask the receiver to make the sender an active neighbour (paper §4.3).
    Neighbor {
        /// See [`Priority`].
        priority: Priority,
    },
    /// Answer to [`Message::Neighbor`] or [`Message::Join`].
    NeighborReply {
        /// Whether the receiver is now in the sender's active view.
        accepted: bool,
    },
    /// The sender removed the receiver from its active view (paper Alg. 1, `DISCONNECT`).
    Disconnect {
        /// `true` when the sender stays in the cluster (eviction): the receiver keeps it
        /// in its passive view. `false` when the sender is leaving.
        alive: bool,
    },
    /// Shuffle random walk (paper §4.4).
    Shuffle {
        /// The node that started the shuffle; the reply goes straight to it.
        origin: P,
        /// Remaining walk length.
        ttl: u16,
        /// The origin itself, ka active and kp passive entries.
        nodes: Vec<P>,
    },
    /// Answer to a Shuffle: as many passive entries as were received.
    ShuffleReply {
        /// Entries for the origin's passive view.
        nodes: Vec<P>,
    },
    /// Keep-alive on an active link; any message counts as one.
    Heartbeat,
}
