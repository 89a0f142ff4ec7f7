//! Anti-entropy exchanges as the application sees them: what one exchange with one
//! neighbour moved each way, and how long it took.
//!
//! An exchange starts when this node sends a neighbour a digest asking for an answer (the
//! periodic one, the one to a new neighbour, or one the application asked for with
//! [`State::exchange`](crate::State::exchange)). Every digest piece is answered with one
//! [`Message::Repair`](crate::Message::Repair) naming the piece (empty when nothing was
//! missing); a repair that says `more` is asked again. The exchange ends when every piece
//! is answered without `more`, and is reported in an [`Output::Exchanged`](crate::Output).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::dedupe::Key;

/// Why an exchange was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trigger {
    /// The periodic exchange ([`Config::anti_entropy_interval`](crate::Config::anti_entropy_interval)): one piece of the version vector.
    Periodic,
    /// A new neighbour: the first piece, at once.
    NeighborUp,
    /// The application asked ([`State::exchange`](crate::State::exchange)): the whole
    /// version vector, in pieces.
    Requested,
}

/// What one anti-entropy exchange moved. Message counts are envelopes; byte counts are
/// their payload bytes (the wire adds about 50 bytes of header per message, see
/// `docs/performance.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange<P> {
    /// The neighbour.
    pub peer: P,
    /// Why it was started.
    pub trigger: Trigger,
    /// When the first digest was sent.
    pub started: Instant,
    /// From the first digest to the last answer (to the time it was given up, when not
    /// `complete`).
    pub duration: Duration,
    /// Digest pieces this node sent in it (first asks and asks again after `more`).
    pub digests: u32,
    /// Messages this node sent the neighbour while the exchange was open (the answers
    /// to the neighbour's digests).
    pub sent_messages: u64,
    /// Their payload bytes.
    pub sent_bytes: u64,
    /// Messages the neighbour sent in answer to this exchange's digests.
    pub received_messages: u64,
    /// Their payload bytes.
    pub received_bytes: u64,
    /// Of the messages received, those that were new here (delivered as recovered).
    pub recovered: u64,
    /// Whether every piece was answered. `false`: the neighbour went down, did not answer
    /// within [`EXCHANGE_TIMEOUT_INTERVALS`] anti-entropy intervals (it had used up its
    /// digest budget, or a frame was lost), or a new exchange with it replaced this one.
    pub complete: bool,
}

/// An exchange still open gives up after this many anti-entropy intervals (10 s with the
/// defaults): a neighbour's answer to a piece is one round trip plus the repair's
/// transfer, far below.
pub const EXCHANGE_TIMEOUT_INTERVALS: u32 = 2;

/// An exchange in progress with one neighbour.
#[derive(Clone, Debug)]
pub(crate) struct Open<P> {
    pub(crate) report: Exchange<P>,
    /// The asks not answered yet, with the piece each asked for (by the key it starts
    /// after).
    pub(crate) pending: BTreeMap<u32, Option<Key<P>>>,
    /// When the last answer came.
    pub(crate) last: Instant,
}

impl<P: Clone> Open<P> {
    pub(crate) fn new(peer: P, trigger: Trigger, now: Instant) -> Self {
        let report = Exchange {
            peer,
            trigger,
            started: now,
            duration: Duration::ZERO,
            digests: 0,
            sent_messages: 0,
            sent_bytes: 0,
            received_messages: 0,
            received_bytes: 0,
            recovered: 0,
            complete: false,
        };
        Self { report, pending: BTreeMap::new(), last: now }
    }

    /// The report, closed at `end`.
    pub(crate) fn close(mut self, end: Instant, complete: bool) -> Exchange<P> {
        self.report.duration = end.saturating_duration_since(self.report.started);
        self.report.complete = complete;
        self.report
    }
}

/// Why [`State::exchange`](crate::State::exchange) could not start an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The peer is not a neighbour (exchanges run over active-view links only).
    #[error("the peer is not a neighbour")]
    NotNeighbor,
    /// Anti-entropy is off ([`Config::anti_entropy_interval`](crate::Config::anti_entropy_interval) is `None`).
    #[error("anti-entropy is off")]
    Off,
}
