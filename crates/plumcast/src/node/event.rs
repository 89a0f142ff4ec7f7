//! What the node tells the application: delivered messages and neighbour changes, as a
//! stream ([`Events`]) or through a [`MessageHandler`].

use bytes::Bytes;
use plumcast_transport::{NodeId, PeerInfo};
use tokio::sync::mpsc;

#[cfg(doc)]
use super::NodeConfig;
use crate::proto::{self, DownReason, MessageId};

/// A broadcast delivered to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Message id (hash over origin, incarnation, seq and payload).
    pub id: MessageId,
    /// The node that broadcast it.
    pub origin: NodeId,
    /// The origin's incarnation (its start time, ms since the Unix epoch).
    pub incarnation: u64,
    /// Sequence number within that incarnation, from 1.
    pub seq: u64,
    /// Hops travelled: 1 when received straight from the origin (0 when recovered).
    pub hops: u32,
    /// Whether anti-entropy recovered it (a repair from a neighbour after a partition, a
    /// restart or a loss), rather than the broadcast tree.
    pub recovered: bool,
    /// The application bytes.
    pub payload: Bytes,
}

impl From<proto::Delivery<NodeId>> for Delivered {
    fn from(d: proto::Delivery<NodeId>) -> Self {
        let e = d.envelope;
        Self {
            id: d.id,
            origin: e.origin,
            incarnation: e.incarnation,
            seq: e.seq,
            hops: d.hops,
            recovered: d.recovered,
            payload: e.payload,
        }
    }
}

/// A message not seen before, shown to the application's validator
/// ([`NodeBuilder::validator`](super::NodeBuilder::validator)) after its signature checked
/// and before it is stored, delivered or forwarded.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Message id.
    pub id: MessageId,
    /// The node that broadcast it (its signature checked, when messages are signed).
    pub origin: NodeId,
    /// The origin's incarnation.
    pub incarnation: u64,
    /// Sequence number within that incarnation.
    pub seq: u64,
    /// The application bytes.
    pub payload: &'a Bytes,
}

/// The application's validator: [`Validation::Accept`](proto::broadcast::Validation),
/// `Reject` (dropped, counted, the neighbour that sent it disconnected) or `Ignore`
/// (dropped quietly). Runs on the node's protocol loop, once per message: it must not
/// block.
pub type ValidatorFn = std::sync::Arc<dyn Fn(&Candidate<'_>) -> proto::broadcast::Validation + Send + Sync>;

/// The core's [`Validator`](proto::broadcast::Validator) over a [`ValidatorFn`].
#[derive(Clone)]
pub(crate) struct AppValidator(pub(crate) ValidatorFn);

impl proto::broadcast::Validator<NodeId> for AppValidator {
    fn validate(&mut self, e: &proto::Envelope<NodeId>, id: &MessageId) -> proto::broadcast::Validation {
        (self.0)(&Candidate { id: *id, origin: e.origin, incarnation: e.incarnation, seq: e.seq, payload: &e.payload })
    }

    fn clone_box(&self) -> Box<dyn proto::broadcast::Validator<NodeId>> {
        Box::new(self.clone())
    }
}

/// What one anti-entropy exchange with a neighbour moved each way, and how long it took
/// (see [`proto::broadcast::Exchange`]).
pub type Exchange = proto::broadcast::Exchange<NodeId>;

/// What the node tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A broadcast was delivered (exactly once per message).
    Delivered(Delivered),
    /// A peer entered the active view.
    NeighborUp(PeerInfo),
    /// A peer left the active view.
    NeighborDown {
        /// The peer.
        peer: PeerInfo,
        /// Why.
        reason: DownReason,
    },
    /// An anti-entropy exchange this node started ended (the periodic ones every
    /// [`proto::broadcast::Config::anti_entropy_interval`], one with each new neighbour,
    /// and those asked for with [`Node::exchange`](super::Node::exchange)).
    Exchanged(Exchange),
}

/// Application callbacks. They run on one dedicated thread, in delivery order; a slow
/// handler slows the cluster's senders down (backpressure) and loses nothing.
pub trait MessageHandler: Send + 'static {
    /// A broadcast from another node (or our own with [`NodeBuilder::deliver_own`](super::NodeBuilder::deliver_own)).
    fn on_message(&mut self, message: &Delivered);
    /// A peer entered the active view. Default: nothing.
    fn on_neighbor_up(&mut self, _peer: &PeerInfo) {}
    /// A peer left the active view. Default: nothing.
    fn on_neighbor_down(&mut self, _peer: &PeerInfo, _reason: DownReason) {}
    /// An anti-entropy exchange ended (see [`Event::Exchanged`]). Default: nothing.
    fn on_exchange(&mut self, _exchange: &Exchange) {}
}

/// The event stream, for applications that prefer pulling to a [`MessageHandler`].
/// Bounded ([`NodeConfig::app_queue`]): while it is full the node stops reading from its
/// peers; nothing is dropped. Dropping it discards further events.
#[derive(Debug)]
pub struct Events {
    pub(super) rx: mpsc::Receiver<Event>,
    /// With a data dir: records each delivery as it is taken.
    pub(super) recorder: Option<super::durable::Recorder>,
}

impl Events {
    /// The next event, or `None` once the node has stopped and all events were read.
    pub async fn recv(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await;
        self.taken(ev)
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        let ev = self.rx.try_recv().ok();
        self.taken(ev)
    }

    /// With a data dir, a delivery taken from the stream is recorded as delivered.
    fn taken(&self, ev: Option<Event>) -> Option<Event> {
        if let (Some(r), Some(Event::Delivered(d))) = (&self.recorder, &ev) {
            r.delivered(d.origin, d.incarnation, d.seq);
        }
        ev
    }
}
