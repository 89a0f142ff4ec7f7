//! Plumtree (epidemic broadcast trees) as a sans-IO state machine.
//!
//! Implements *Epidemic Broadcast Trees* (Leitão, Pereira, Rodrigues, SRDS 2007): payloads
//! travel by **eager push** along a spanning tree, the other neighbours get **lazy push**
//! IHave announcements (batched), a node that saw an IHave but not the payload sends
//! **Graft** after timer 1 (then to the next announcer after timer 2), and a duplicate
//! payload answers **Prune**, which turns that link lazy. Tree optimisation (§3.8) grafts a
//! lazy link whose announced round beats the tree's by at least a threshold.
//!
//! With one tree per origin ([`Tree::PerOrigin`], the default) two rules go beyond the
//! shared tree: the optimisation also weighs the IHaves that came *before* the payload
//! (the paper's Algorithm 2), and when a tree parent fails ([`Input::NeighborDown`]) the
//! lazy neighbour that announced that origin's last message at the lowest round is grafted
//! at once ([`Stats::parent_repairs`]), instead of after the next IHave and timer 1.
//!
//! The state knows nothing of membership: the host feeds [`Input::NeighborUp`] and
//! [`Input::NeighborDown`]. Dedupe is exact: each origin has a contiguous watermark of
//! sequence numbers plus a bounded window above it (see [`Envelope`]).
//!
//! # Driving contract
//!
//! Call [`State::handle`] (or [`State::broadcast`]) with a monotonic `now`; perform the
//! returned [`Output`]s in order; deliver each timer back at or after its deadline (stale
//! timers do nothing). Same inputs, same outputs: sets are ordered.

#![forbid(unsafe_code)]

pub mod auth;
mod cache;
pub mod config;
mod dedupe;
pub mod exchange;
mod io;
mod lag;
mod message;
mod state;
mod stats;
pub mod store;
mod trees;

use std::fmt::Debug;
use std::hash::Hash;

use serde::Serialize;

pub use auth::{Authenticator, Penalty, Validation, Validator};
pub use config::{Config, Mode, Ordering, Tree};
pub use exchange::{Exchange, ExchangeError, Trigger};
pub use io::{Delivery, Input, Output, Timer};
pub use message::{Announcement, Envelope, Head, Message, MessageId, Settled, message_id};
pub use state::State;
pub use stats::Stats;
pub use store::{MemoryStore, MessageStore, Retention, StoreError, StoreSize};

/// What a peer or origin id must be (the node uses `NodeId`, the simulator `u32`). Its
/// postcard encoding goes into every [`MessageId`], so its `Serialize` must not fail (a
/// derived or array impl cannot with postcard; tested for `u32` and 32-byte keys).
pub trait PeerId: Clone + Eq + Ord + Hash + Debug + Serialize + Send + 'static {}
impl<T: Clone + Eq + Ord + Hash + Debug + Serialize + Send + 'static> PeerId for T {}

#[cfg(test)]
mod tests;
