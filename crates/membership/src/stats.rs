//! HyParView counters.

use serde::{Deserialize, Serialize};

/// Counters of what this state did. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Join requests answered as contact.
    pub joins_received: u64,
    /// ForwardJoin messages received.
    pub forward_joins_received: u64,
    /// Neighbor requests sent.
    pub neighbor_requests_sent: u64,
    /// Neighbor requests this node refused (Low priority, view full).
    pub neighbor_requests_refused: u64,
    /// Neighbor requests of ours that were refused.
    pub neighbor_requests_rejected: u64,
    /// Neighbor requests of ours that timed out.
    pub neighbor_requests_timed_out: u64,
    /// Active neighbours evicted to make room.
    pub evictions: u64,
    /// Active neighbours declared failed (detector or lost connection).
    pub failures_detected: u64,
    /// Of those, declared by the φ-accrual detector.
    pub phi_suspicions: u64,
    /// Promotions of passive peers into the active view.
    pub promotions: u64,
    /// Shuffles started.
    pub shuffles_sent: u64,
    /// Shuffles accepted (answered) here.
    pub shuffles_accepted: u64,
    /// Bootstrap retries requested.
    pub rejoins: u64,
    /// Passive entries dropped because the passive view was full.
    pub passive_evictions: u64,
    /// Peers dropped for misbehaviour.
    pub misbehaved: u64,
    /// Disconnect messages received from active neighbours.
    pub disconnects_received: u64,
    /// Disconnects sent to peers that sent link traffic while not our neighbour.
    pub strangers_rejected: u64,
    /// Reconnect probes sent to peers that had failed.
    pub reconnects_sent: u64,
    /// Neighbor requests accepted because the requester is a peer we had lost to a
    /// failure (a link restored after a partition or a restart).
    pub links_restored: u64,
    /// Failed peers forgotten after `reconnect_timeout` or to make room.
    pub reconnects_given_up: u64,
    /// Joins dropped: over their sender's [`Config::join_rate`](crate::Config::join_rate).
    pub joins_limited: u64,
    /// ForwardJoins dropped: over their sender's
    /// [`Config::forward_join_rate`](crate::Config::forward_join_rate).
    pub forward_joins_limited: u64,
    /// Neighbor requests not sent: [`MAX_PENDING`](crate::config::MAX_PENDING) were
    /// waiting already.
    pub neighbor_requests_dropped: u64,
    /// Shuffles dropped: over their sender's
    /// [`Config::shuffle_rate`](crate::Config::shuffle_rate).
    pub shuffles_limited: u64,
}
