//! What goes into [`State::handle`](crate::State::handle) and what comes out.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::Message;
/// Why an active neighbour went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DownReason {
    /// Removed to make room for another peer (either side), or the peer sent
    /// `Disconnect { alive: true }`. It stays in the passive view.
    Evicted,
    /// The failure detector declared it dead or its connection was lost.
    Failed,
    /// It left the cluster (`Disconnect { alive: false }`).
    Left,
    /// It sent something invalid and was disconnected.
    Misbehaved,
}

impl DownReason {
    /// Lower-case name, as printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::Failed => "failed",
            Self::Left => "left",
            Self::Misbehaved => "misbehaved",
        }
    }
}

/// Membership events for the layer above (Plumtree) and the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<P> {
    /// The peer entered the active view: the Neighbor handshake completed.
    NeighborUp(P),
    /// The peer left the active view.
    NeighborDown {
        /// The peer.
        peer: P,
        /// Why.
        reason: DownReason,
    },
}

/// A timer the state asked for. Each carries what it needs to recognise itself as stale.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer<P> {
    /// Periodic Shuffle (one membership round).
    Shuffle,
    /// Periodic heartbeat and failure-detector check.
    Heartbeat,
    /// Retry the bootstrap addresses; `attempt` counts from 0.
    Rejoin {
        /// Attempt number of this retry; a timer whose attempt is not current is stale.
        attempt: u32,
    },
    /// A Neighbor request or Join to `peer` that may have gone unanswered.
    NeighborTimeout {
        /// The peer asked.
        peer: P,
        /// Identifies the request; a later request to the same peer has another nonce.
        nonce: u64,
    },
}

/// Inputs to [`State::handle`](crate::State::handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<P> {
    /// Join the cluster through `contact` (a bootstrap peer the host has reached).
    Join {
        /// The contact node.
        contact: P,
    },
    /// A message received from an authenticated peer.
    Message {
        /// The sender, as proven by the transport.
        from: P,
        /// The message.
        message: Message<P>,
    },
    /// A timer requested earlier fired.
    Timer(Timer<P>),
    /// The connection to `peer` closed, or dialing it failed.
    ConnectionLost {
        /// The peer.
        peer: P,
    },
    /// The peer broke the protocol (malformed frame, wrong cluster): drop it for good.
    Misbehaved {
        /// The peer.
        peer: P,
    },
    /// Joining through the bootstrap addresses failed (none reachable): schedule a retry
    /// with backoff if both views are empty.
    JoinFailed,
    /// Leave gracefully: `Disconnect { alive: false }` to every active neighbour.
    Leave,
}

/// What the host must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<P> {
    /// Send `message` to `to`, dialing it first if there is no connection.
    Send {
        /// Destination.
        to: P,
        /// The message.
        message: Message<P>,
    },
    /// Close the connection to `peer` now (failed or misbehaving peer).
    Disconnect {
        /// The peer.
        peer: P,
    },
    /// Call `handle(Input::Timer(timer))` at or after `at`.
    Timer {
        /// Deadline.
        at: Instant,
        /// The timer to fire.
        timer: Timer<P>,
    },
    /// Both views are empty: dial the bootstrap addresses again and feed
    /// [`Input::Join`] for each contact reached.
    Rejoin,
    /// An event for the layers above.
    Event(Event<P>),
}
