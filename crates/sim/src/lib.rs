//! A deterministic discrete-event simulator over `plumcast::proto`.
//!
//! It drives the exact state machines the QUIC node runs (no re-implementation), with
//! `u32` peers, a seeded RNG, virtual time, per-link latency (static or uniform), message
//! loss, optional per-node uplink bandwidth, crashes and restarts, partitions and heals,
//! and churn. Connection loss reaches a node as a delayed input under one of two labelled
//! models ([`Detector`]): `paper` (a send to a dead peer fails at once, as TCP in PeerSim)
//! and `shipped` (the φ-accrual detector's delay). Every figure says which model made it.
//!
//! The simulator returns rows ([`Row`]); tables, CSV and plots are the CLI's.
//!
//! No tokio, no sockets, no wall clock in the protocol path: `cargo tree -p plumcast-sim
//! -i tokio` is empty.

#![forbid(unsafe_code)]

mod engine;
mod overlay;
pub mod recovery;
pub mod scenario;

pub use engine::{
    AntiEntropyCost, Counters, Detector, DigestSizes, Latency, MessageKey, NodeState, Sim, SimConfig, Track,
    anti_entropy_cost, digest_sizes, sim_protocol, sim_protocol_with_anti_entropy,
};
pub use overlay::{OverlayStats, overlay_stats};
pub use recovery::Recovery;
pub use scenario::{Kind, Row, RunMode, Scenario, ScenarioError, build_overlay, build_overlay_with_gap};

#[cfg(test)]
mod tests;
