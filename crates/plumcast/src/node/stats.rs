//! Views and counters of a running node ([`Node::stats`](super::Node::stats)).

use plumcast_transport::PeerInfo;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::NodeConfig;
use crate::proto;

/// Counters and views of a running node (see [`Node::stats`](super::Node::stats)).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeStats {
    /// The active view.
    pub active_view: Vec<PeerInfo>,
    /// The passive view.
    pub passive_view: Vec<PeerInfo>,
    /// Eager (tree) neighbours.
    pub eager: usize,
    /// Lazy neighbours.
    pub lazy: usize,
    /// HyParView counters.
    pub membership: proto::membership::Stats,
    /// Plumtree counters (anti-entropy included).
    pub broadcast: proto::broadcast::Stats,
    /// What the message store holds (messages, payload bytes, origins, origin incarnations).
    pub store: StoreStats,
    /// Entries (origin, incarnation) in the version vector.
    pub version_vector: usize,
    /// Messages announced (IHave) and not received yet: the missing table, bounded by
    /// `max_missing`, a quarter of it per announcer.
    pub missing: usize,
    /// Payloads in the cache (count, bytes), bounded by the cache limits.
    pub cache: (usize, usize),
    /// Connection tasks running (handshakes and open links) and name lookups, bounded by
    /// [`NodeConfig::max_connections`].
    pub tasks: usize,
    /// Transport and actor counters.
    pub net: NetStats,
    /// Signing and signature checks.
    pub signatures: SignStats,
    /// Each active neighbour: its tree role, its failure detector's φ and its send queue.
    #[serde(default)]
    pub neighbors: Vec<NeighborStats>,
    /// Peers being dialed, with frames waiting for the connection.
    #[serde(default)]
    pub dials_pending: usize,
    /// Messages and bytes sent and received, by message type, since the node started
    /// (not kept in the data dir).
    #[serde(default)]
    pub traffic: Traffic,
    /// Active neighbours lost, by reason, since the node started.
    #[serde(default)]
    pub neighbor_down: NeighborDowns,
    /// Hops of the messages delivered here since the node started (0 for our own).
    #[serde(default)]
    pub delivery_hops: HopHistogram,
    /// Topology records ([`proto::topology`]): received, taken, dropped, forgotten.
    #[serde(default)]
    pub topology: proto::topology::Stats,
    /// Topology records held.
    #[serde(default)]
    pub topology_records: usize,
}

/// The counters of [`NodeStats`], kept in a data dir across restarts (saved every
/// [`COUNTERS_EVERY`] and at shutdown; a SIGKILL loses what changed since the last save).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub membership: proto::membership::Stats,
    pub broadcast: proto::broadcast::Stats,
    pub net: NetStats,
}

/// How often the counters are saved to the data dir.
#[cfg_attr(not(feature = "store"), allow(dead_code))]
pub(crate) const COUNTERS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// One active neighbour, as [`NodeStats::neighbors`] lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NeighborStats {
    /// The neighbour.
    pub peer: PeerInfo,
    /// Whether it is eager for our own broadcasts' tree (on the tree), else lazy.
    pub eager: bool,
    /// Its φ-accrual suspicion level now (HyParView's failure detector; `None` before
    /// its second heartbeat).
    pub phi: Option<f64>,
    /// Frames queued for it and not yet written.
    pub queued_frames: usize,
    /// Bytes of those frames.
    pub queued_bytes: usize,
}

/// The protocol's message types, for [`Traffic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    /// HyParView Join.
    Join,
    /// HyParView ForwardJoin.
    ForwardJoin,
    /// HyParView Neighbor request.
    Neighbor,
    /// HyParView Neighbor reply.
    NeighborReply,
    /// HyParView Disconnect.
    Disconnect,
    /// HyParView Shuffle.
    Shuffle,
    /// HyParView Shuffle reply.
    ShuffleReply,
    /// Heartbeat (the φ-accrual detector's input).
    Heartbeat,
    /// Plumtree eager push (a payload).
    Gossip,
    /// Plumtree lazy push (announcements).
    IHave,
    /// Plumtree Graft.
    Graft,
    /// Plumtree Prune.
    Prune,
    /// Anti-entropy digest.
    Digest,
    /// Anti-entropy repair.
    Repair,
    /// A node's topology record (the admin endpoint's overlay picture).
    Topology,
}

impl MessageKind {
    /// Every kind, in the order of [`Traffic`]'s arrays.
    pub const ALL: [MessageKind; 15] = [
        Self::Join,
        Self::ForwardJoin,
        Self::Neighbor,
        Self::NeighborReply,
        Self::Disconnect,
        Self::Shuffle,
        Self::ShuffleReply,
        Self::Heartbeat,
        Self::Gossip,
        Self::IHave,
        Self::Graft,
        Self::Prune,
        Self::Digest,
        Self::Repair,
        Self::Topology,
    ];

    /// Lower-case name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::ForwardJoin => "forward_join",
            Self::Neighbor => "neighbor",
            Self::NeighborReply => "neighbor_reply",
            Self::Disconnect => "disconnect",
            Self::Shuffle => "shuffle",
            Self::ShuffleReply => "shuffle_reply",
            Self::Heartbeat => "heartbeat",
            Self::Gossip => "gossip",
            Self::IHave => "ihave",
            Self::Graft => "graft",
            Self::Prune => "prune",
            Self::Digest => "digest",
            Self::Repair => "repair",
            Self::Topology => "topology",
        }
    }

    /// The kind of `m`.
    pub fn of<P: proto::Peer>(m: &proto::Message<P>) -> Self {
        use proto::{broadcast::Message as B, membership::Message as M};
        match m {
            proto::Message::Membership(m) => match m {
                M::Join => Self::Join,
                M::ForwardJoin { .. } => Self::ForwardJoin,
                M::Neighbor { .. } => Self::Neighbor,
                M::NeighborReply { .. } => Self::NeighborReply,
                M::Disconnect { .. } => Self::Disconnect,
                M::Shuffle { .. } => Self::Shuffle,
                M::ShuffleReply { .. } => Self::ShuffleReply,
                M::Heartbeat => Self::Heartbeat,
            },
            proto::Message::Broadcast(m) => match m {
                B::Gossip { .. } => Self::Gossip,
                B::IHave(_) => Self::IHave,
                B::Graft { .. } => Self::Graft,
                B::Prune { .. } => Self::Prune,
                B::Digest { .. } => Self::Digest,
                B::Repair { .. } => Self::Repair,
            },
            proto::Message::Topology(_) => Self::Topology,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A count of messages and their bytes (frames, length prefix included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Messages.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Messages and bytes by [`MessageKind`], sent (queued for a peer) and received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    sent: [Count; 15],
    received: [Count; 15],
}

impl Traffic {
    /// What was sent of `kind`.
    pub fn sent(&self, kind: MessageKind) -> Count {
        self.sent[kind.index()]
    }

    /// What was received of `kind`.
    pub fn received(&self, kind: MessageKind) -> Count {
        self.received[kind.index()]
    }

    pub(crate) fn count_sent(&mut self, kind: MessageKind, bytes: usize) {
        let c = &mut self.sent[kind.index()];
        c.messages += 1;
        c.bytes += bytes as u64;
    }

    pub(crate) fn count_received(&mut self, kind: MessageKind, bytes: usize) {
        let c = &mut self.received[kind.index()];
        c.messages += 1;
        c.bytes += bytes as u64;
    }
}

/// Active neighbours lost, by [`proto::DownReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NeighborDowns {
    /// Evicted to make room (they stay in the passive view).
    pub evicted: u64,
    /// Declared failed (φ-accrual detector or a lost connection).
    pub failed: u64,
    /// Left the cluster.
    pub left: u64,
    /// Disconnected for misbehaviour.
    pub misbehaved: u64,
}

impl NeighborDowns {
    pub(crate) fn count(&mut self, reason: proto::DownReason) {
        match reason {
            proto::DownReason::Evicted => self.evicted += 1,
            proto::DownReason::Failed => self.failed += 1,
            proto::DownReason::Left => self.left += 1,
            proto::DownReason::Misbehaved => self.misbehaved += 1,
        }
    }
}

/// Deliveries by hop count: `counts[h]` messages came `h` hops from their origin, the
/// last bucket holds [`HopHistogram::MAX`] hops or more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopHistogram {
    /// Deliveries per hop count, `MAX + 1` buckets.
    pub counts: Vec<u64>,
    /// Sum of all hop counts.
    pub sum: u64,
}

impl Default for HopHistogram {
    fn default() -> Self {
        Self { counts: vec![0; Self::MAX as usize + 1], sum: 0 }
    }
}

impl HopHistogram {
    /// Hop counts at or above this share the last bucket. Plumtree at 10,000 nodes has
    /// a last delivery hop of 8.3–10 with one sender and about 17 with many, optimised
    /// (SRDS 2007, §5; ../shared/papers.md).
    pub const MAX: u32 = 32;

    pub(crate) fn observe(&mut self, hops: u32) {
        let i = hops.min(Self::MAX) as usize;
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += u64::from(hops);
    }

    /// Deliveries counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The message store's size (see [`proto::broadcast::StoreSize`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Messages kept.
    pub messages: usize,
    /// Their payload bytes.
    pub bytes: usize,
    /// Distinct (origin, incarnation) pairs among them.
    pub incarnations: usize,
    /// Distinct origins among them.
    pub origins: usize,
}

/// Transport and actor counters: every drop and refusal shows here.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetStats {
    /// Frames handed to a connection's writer (one that is lost with its connection
    /// afterwards is also counted in [`FrameDrops::connection_lost`]).
    pub frames_sent: u64,
    /// Bytes of those frames (with length prefixes).
    pub bytes_sent: u64,
    /// Frames dropped on the way out, by reason.
    pub frames_dropped: FrameDrops,
    /// Connection tasks that panicked (each logged at error level; the peer's connection
    /// is gone, the node goes on).
    pub task_panics: u64,
    /// Frames received and decoded.
    pub frames_received: u64,
    /// Outgoing connections established.
    pub connections_dialed: u64,
    /// Incoming connections established.
    pub connections_accepted: u64,
    /// Duplicate connections retired (simultaneous dials).
    pub connections_retired: u64,
    /// Idle transient connections closed.
    pub connections_idle_closed: u64,
    /// Dials that failed (unreachable, handshake refused, id mismatch).
    pub dial_failures: u64,
    /// Handshakes refused or failed on either side (including id mismatches).
    pub handshake_failures: u64,
    /// Peers refused because they belong to another cluster.
    pub cluster_mismatches: u64,
    /// Connections refused: the peer speaks another wire version.
    pub version_mismatches: u64,
    /// Connections refused: the peer signs its messages and this node does not, or the
    /// other way round ([`NodeConfig::sign_messages`](crate::NodeConfig::sign_messages)).
    pub signing_mismatches: u64,
    /// Connections closed for a malformed frame or unknown message.
    pub malformed_frames: u64,
    /// Connections closed for a frame above the maximum size.
    pub oversized_frames: u64,
    /// Peers disconnected because their send queue passed the hard limit.
    pub slow_peer_disconnects: u64,
    /// Plumtree frames for a peer that was no longer a neighbour.
    pub unroutable: u64,
    /// Times the actor stopped accepting broadcasts because a peer queue was full.
    pub backpressure_events: u64,
    /// Broadcasts accepted from the application.
    pub broadcasts: u64,
    /// Events handed to the application.
    pub app_events: u64,
    /// Peers refused in a TLS handshake (either side) because they are not on the
    /// allow-list ([`NodeBuilder::allow`](super::NodeBuilder::allow)).
    pub admission_refused: u64,
    /// Links closed because a reloaded allow-list no longer admitted their peer.
    pub admission_closed: u64,
    /// Links closed because their peer sent a message whose signature failed
    /// (`broadcast.forged` counts the messages).
    pub forged_closed: u64,
    /// Links closed because their peer sent a message the validator rejected
    /// (`broadcast.rejected` counts the messages).
    pub rejected_closed: u64,
    /// Incoming connections refused at [`NodeConfig::max_connections`].
    pub connections_refused: u64,
}

/// The work of message signatures (all zero when messages are not signed; see the
/// `sign` module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SignStats {
    /// Signatures made: one per batch of our messages.
    pub signed_batches: u64,
    /// Our messages signed (`signed_messages / signed_batches` is the mean batch size).
    pub signed_messages: u64,
    /// Ed25519 verifications run: one per (origin, batch) first met.
    pub verifications: u64,
    /// Messages whose proof led to a batch root verified before (no Ed25519 work).
    pub cache_hits: u64,
}

/// Outgoing frames dropped, by reason. Nothing the protocol asked to send disappears
/// without one of these counting it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FrameDrops {
    /// The connection was gone before the frame was written: its queue had closed, or the
    /// write failed and the frames still queued were discarded.
    pub connection_lost: u64,
    /// The destination was still being dialed and already had
    /// [`NodeConfig::peer_queue_soft_limit`] frames waiting.
    pub dial_queue_full: u64,
    /// The dial failed; the frames waiting for it were discarded.
    pub dial_failed: u64,
    /// The frame could not be encoded (logged with the error).
    pub unencodable: u64,
}

impl NetStats {
    /// These counters plus `base` (the counters kept in the data dir before a restart).
    pub(crate) fn plus(mut self, base: &NetStats) -> NetStats {
        self.frames_sent += base.frames_sent;
        self.bytes_sent += base.bytes_sent;
        let (d, b) = (&mut self.frames_dropped, &base.frames_dropped);
        d.connection_lost += b.connection_lost;
        d.dial_queue_full += b.dial_queue_full;
        d.dial_failed += b.dial_failed;
        d.unencodable += b.unencodable;
        self.task_panics += base.task_panics;
        self.frames_received += base.frames_received;
        self.connections_dialed += base.connections_dialed;
        self.connections_accepted += base.connections_accepted;
        self.connections_retired += base.connections_retired;
        self.connections_idle_closed += base.connections_idle_closed;
        self.dial_failures += base.dial_failures;
        self.handshake_failures += base.handshake_failures;
        self.cluster_mismatches += base.cluster_mismatches;
        self.version_mismatches += base.version_mismatches;
        self.signing_mismatches += base.signing_mismatches;
        self.malformed_frames += base.malformed_frames;
        self.oversized_frames += base.oversized_frames;
        self.slow_peer_disconnects += base.slow_peer_disconnects;
        self.unroutable += base.unroutable;
        self.backpressure_events += base.backpressure_events;
        self.broadcasts += base.broadcasts;
        self.app_events += base.app_events;
        self.admission_refused += base.admission_refused;
        self.admission_closed += base.admission_closed;
        self.forged_closed += base.forged_closed;
        self.rejected_closed += base.rejected_closed;
        self.connections_refused += base.connections_refused;
        self
    }
}
