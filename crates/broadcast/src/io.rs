//! What goes into [`State::handle`](crate::State::handle) and what comes out.

use std::time::Instant;

use crate::{Envelope, Exchange, Message, MessageId, Penalty};

/// Inputs to [`State::handle`](crate::State::handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<P> {
    /// A message from a neighbour.
    Message {
        /// Sender.
        from: P,
        /// The message.
        message: Message<P>,
    },
    /// A timer fired.
    Timer(Timer),
    /// Membership added an active neighbour: it starts eager.
    NeighborUp(P),
    /// Membership removed an active neighbour.
    NeighborDown(P),
}

/// Timers requested by the state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Graft for a missing message; stale when `attempt` is not current.
    Graft {
        /// The missing message.
        id: MessageId,
        /// Which attempt this timer belongs to.
        attempt: u32,
    },
    /// Send the batched IHave announcements.
    IHaveFlush,
    /// Start an anti-entropy exchange with the next partner.
    AntiEntropy,
}

/// A message delivered to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<P> {
    /// Its id.
    pub id: MessageId,
    /// The broadcast.
    pub envelope: Envelope<P>,
    /// Hop count: round + 1 (1 when received straight from the origin, 0 for our own).
    pub hops: u32,
    /// The neighbour it came from (`None` for our own).
    pub from: Option<P>,
    /// Whether anti-entropy recovered it (a [`Message::Repair`]), rather than the tree.
    pub recovered: bool,
}

/// Outputs of [`State::handle`](crate::State::handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<P> {
    /// Send to a neighbour.
    Send {
        /// Destination.
        to: P,
        /// The message.
        message: Message<P>,
    },
    /// Fire `timer` at or after `at`.
    Timer {
        /// Deadline.
        at: Instant,
        /// The timer.
        timer: Timer,
    },
    /// Deliver to the application (exactly once per message).
    Deliver(Delivery<P>),
    /// An anti-entropy exchange this node started ended (or was given up).
    Exchanged(Exchange<P>),
    /// The neighbour sent a forged or rejected message (see [`crate::auth`]): the host
    /// should drop its connection (the node does, and counts it).
    Penalize {
        /// The neighbour (or stranger) that sent it.
        peer: P,
        /// Why.
        reason: Penalty,
    },
}
