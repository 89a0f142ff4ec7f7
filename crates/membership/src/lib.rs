//! HyParView membership as a sans-IO state machine.
//!
//! Implements *HyParView: a membership protocol for reliable gossip-based broadcast*
//! (Leitão, Pereira, Rodrigues, DSN 2007): a small symmetric **active view** of open
//! connections, a larger **passive view** of backups, Join / ForwardJoin random walks
//! (ARWL, PRWL), Neighbor requests with priority, Disconnect, periodic Shuffle, and
//! passive-view promotion when an active peer fails. Failure of an active peer is judged
//! by heartbeats and a φ-accrual failure detector (Hayashibara et al., SRDS 2004).
//!
//! # Driving contract
//!
//! The state never reads a clock, opens a socket or spawns a task. The host:
//!
//! 1. calls [`State::handle`] with a monotonic `now` and one [`Input`];
//! 2. performs every returned [`Output`] in order: [`Output::Send`] (dial the peer first
//!    if there is no connection), [`Output::Disconnect`] (close the connection now),
//!    [`Output::Timer`] (call `handle(Input::Timer(timer))` at or after `at`; stale or
//!    duplicate timers are harmless), [`Output::Rejoin`] (dial the bootstrap addresses
//!    again and feed [`Input::Join`] for each peer reached), and [`Output::Event`];
//! 3. feeds [`Input::ConnectionLost`] when a connection to a peer closes or a dial fails.
//!
//! Given the same seed for the injected RNG and the same inputs, the outputs are identical:
//! views are `Vec`s and all random choices index into them.

#![forbid(unsafe_code)]

pub mod config;
mod io;
mod message;
mod phi;
pub mod rate;
mod state;
mod stats;

use std::fmt::Debug;
use std::hash::Hash;

pub use config::Config;
pub use io::{DownReason, Event, Input, Output, Timer};
pub use message::{Message, Priority};
pub use phi::PhiAccrual;
pub use rate::Rate;
pub use state::State;
pub use stats::Stats;

/// What a peer handle must be: cheap to clone, totally ordered (for deterministic
/// iteration) and hashable. The simulator uses `u32`; the QUIC node uses a `PeerInfo`
/// whose equality is its `NodeId` alone.
pub trait Peer: Clone + Eq + Ord + Hash + Debug {}
impl<T: Clone + Eq + Ord + Hash + Debug> Peer for T {}

#[cfg(test)]
mod tests;
