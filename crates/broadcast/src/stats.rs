//! Plumtree counters.

use serde::{Deserialize, Serialize};

/// Counters. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Messages broadcast here.
    pub broadcasts: u64,
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Gossip (payload) messages sent.
    pub gossip_sent: u64,
    /// Gossip messages received.
    pub gossip_received: u64,
    /// Of those, duplicates (each answered with Prune).
    pub duplicates: u64,
    /// Announcements sent (inside IHave batches).
    pub announcements_sent: u64,
    /// IHave frames sent.
    pub ihave_sent: u64,
    /// Announcements received.
    pub announcements_received: u64,
    /// Grafts sent (including optimisation grafts).
    pub grafts_sent: u64,
    /// Grafts sent for a message whose payload then came from a neighbour not grafted too,
    /// before or after the grafted copy: the tree was late, not broken (each one raises the adaptive timer 1, see
    /// [`Config::graft_timeout_max`](crate::Config::graft_timeout_max)).
    pub grafts_overtaken: u64,
    /// Messages a Graft delivered whose tree copy could no longer be checked for: the
    /// table of them holds [`Config::max_missing`](crate::Config::max_missing), oldest
    /// forgotten first (each is a lag sample lost, nothing else).
    pub graft_lag_forgotten: u64,
    /// The adaptive Graft timer 1 now, µs (a gauge: the wait after a message's first
    /// IHave, [`Config::graft_timeout_1`](crate::Config::graft_timeout_1) until lags raise it).
    pub graft_timeout_us: u64,
    /// Grafts (no payload asked) sent because a Prune, received or sent on a duplicate,
    /// left no link of an origin's tree eager here: the lazy neighbour that announced it at the lowest round is taken as
    /// the tree parent at once.
    pub upstream_repairs: u64,
    /// Grafts received.
    pub grafts_received: u64,
    /// Grafts for a message no longer cached.
    pub graft_misses: u64,
    /// Grafts refused: that neighbour had been sent that message
    /// [`Config::max_serves`](crate::Config::max_serves) times already.
    pub grafts_refused: u64,
    /// Prunes sent.
    pub prunes_sent: u64,
    /// Prunes received.
    pub prunes_received: u64,
    /// Tree optimisations performed (§3.8).
    pub optimizations: u64,
    /// Tree parents replaced at once when they failed ([`Tree::PerOrigin`](crate::Tree::PerOrigin)): the lazy
    /// neighbour with the lowest announced round was grafted without waiting for a message.
    pub parent_repairs: u64,
    /// Payloads evicted from the cache.
    pub cache_evictions: u64,
    /// Announcements dropped because `max_missing` records were in use.
    pub missing_dropped: u64,
    /// Missing-message records that expired unanswered.
    pub missing_expired: u64,
    /// Messages from an incarnation older than every one kept of their origin, dropped.
    pub stale_incarnation: u64,
    /// Times an origin's dedupe window overflowed and its watermark was forced forward.
    pub dedupe_window_overflows: u64,
    /// Per-origin trees forgotten because `max_trees` were in use.
    pub trees_evicted: u64,
    /// Catch-up announcements sent to new neighbours.
    pub catch_ups: u64,
    /// Grafts without payload sent to a pruned peer whose payload arrived first (the
    /// Prune/payload race, see `on_gossip`).
    pub regrafts: u64,
    /// Anti-entropy digests sent (exchanges started, and replies).
    pub digests_sent: u64,
    /// Heads sent in digests.
    pub digest_heads_sent: u64,
    /// Digests received.
    pub digests_received: u64,
    /// Digests ignored: from a non-neighbour, or over the per-neighbour rate.
    pub digests_ignored: u64,
    /// Repair messages sent, and the envelopes in them.
    pub repairs_sent: u64,
    /// Envelopes sent in repairs.
    pub repaired_sent: u64,
    /// Envelopes received in repairs.
    pub repaired_received: u64,
    /// Messages delivered through anti-entropy (a subset of `delivered`).
    pub recovered: u64,
    /// Grafts answered from the message store after the payload cache had evicted them.
    pub store_grafts: u64,
    /// Messages the store refused (a durable store's write failed).
    pub store_errors: u64,
    /// Messages evicted from the store by retention.
    pub store_evictions: u64,
    /// With per-origin ordering: messages held back for an earlier one.
    pub ordering_held: u64,
    /// With per-origin ordering: gaps given up (waited too long, or too many held).
    pub ordering_gaps_skipped: u64,
    /// Messages whose proof of authorship failed ([`Authenticator`](crate::Authenticator)):
    /// dropped, not marked seen, their sender penalised.
    pub forged: u64,
    /// Messages the [`Validator`](crate::Validator) rejected (dropped, settled, sender
    /// penalised).
    pub rejected: u64,
    /// Messages the [`Validator`](crate::Validator) ignored (dropped, settled).
    pub ignored: u64,
    /// Announcements not recorded as missing because their announcer already had a
    /// quarter of the missing table ([`Config::max_missing`](crate::Config::max_missing)).
    pub missing_over_share: u64,
    /// Messages marked seen on a neighbour's [`Settled`](crate::Settled) record (it
    /// rejected or ignored them; their proof checked).
    pub settled_received: u64,
    /// Settled records forgotten, oldest first, because the table held
    /// [`Config::max_missing`](crate::Config::max_missing) of them: a neighbour asking
    /// for such a message afterwards is no longer told it was settled.
    pub settled_forgotten: u64,
    /// Keys of the version vector a new node took as seen without their history (heads
    /// heard in digests during its first two anti-entropy intervals, taken after
    /// [`Config::anti_entropy_grace`](crate::Config::anti_entropy_grace);
    /// [`Config::replay_history`](crate::Config::replay_history) off).
    pub history_adopted: u64,
    /// Keys a new node heard of while it already held
    /// [`Config::max_missing`](crate::Config::max_missing) heads to adopt: their history
    /// is repaired and delivered (as recovered) instead.
    pub history_over_bound: u64,
}
