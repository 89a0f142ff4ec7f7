//! Reading the message store from where an application left off: a [`Cursor`] (a version
//! vector) and the [`Page`]s read after it ([`Node::read_after`](super::Node::read_after)).

use std::collections::BTreeMap;

use plumcast_transport::NodeId;
use serde::{Deserialize, Serialize};

use super::Delivered;
use crate::proto::broadcast::Head;

/// A position in the cluster's history: per (origin, incarnation), the highest seq the
/// application is done with. A version vector, in key order; serde-serializable so that an
/// application can keep it with its own state and resume from it after a restart.
///
/// A cursor covers every message of an (origin, incarnation) up to its head; a key it
/// lacks is covered up to 0 (nothing of it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    heads: BTreeMap<(NodeId, u64), u64>,
}

impl Cursor {
    /// The empty cursor: everything the store holds is after it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The head of `(origin, incarnation)`: every seq up to it is covered (0: none).
    pub fn head(&self, origin: &NodeId, incarnation: u64) -> u64 {
        self.heads.get(&(*origin, incarnation)).copied().unwrap_or(0)
    }

    /// Cover `message`, and everything of its origin and incarnation below it. An
    /// application that records the messages it handled from the live stream calls this for
    /// each; with [`Ordering::None`](crate::proto::Ordering::None) a message can be delivered before an
    /// earlier one of its origin, which this cursor then also covers: use
    /// [`Ordering::PerOrigin`](crate::proto::Ordering::PerOrigin) for a cursor without such gaps.
    pub fn advance(&mut self, message: &Delivered) {
        let head = self.heads.entry((message.origin, message.incarnation)).or_insert(0);
        *head = (*head).max(message.seq);
    }

    /// Entries (origin, incarnation).
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// Whether it has no entry.
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    pub(crate) fn heads(&self) -> &BTreeMap<(NodeId, u64), u64> {
        &self.heads
    }
}

impl From<Vec<Head<NodeId>>> for Cursor {
    fn from(heads: Vec<Head<NodeId>>) -> Self {
        Self { heads: heads.into_iter().map(|h| ((h.origin, h.incarnation), h.seq)).collect() }
    }
}

/// Messages read from the store after a cursor ([`Node::read_after`](super::Node::read_after)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The messages, oldest first per origin and incarnation, in key order. Their `hops`
    /// is 0 and `recovered` false: they come from the store, not from a peer.
    pub messages: Vec<Delivered>,
    /// The cursor advanced over `messages`: pass it to the next read.
    pub cursor: Cursor,
    /// Whether the page was full: there may be more after `cursor`.
    pub full: bool,
}
