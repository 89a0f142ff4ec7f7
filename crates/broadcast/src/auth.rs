//! Who wrote a message, and whether the application wants it: the two checks a message
//! passes once, the first time it is seen, before it is stored, delivered or forwarded.
//!
//! The state asks them in this order, only for a message it has not seen (a duplicate is
//! never checked again), and marks the message seen only after the [`Authenticator`]
//! accepted it: a forged copy that arrives first cannot shadow the real one.
//!
//! Both are plain synchronous calls (sans-IO): an [`Authenticator`] holds keys and a
//! cache, a [`Validator`] is the application's rule. Neither may block.

use bytes::Bytes;

use crate::{Envelope, MessageId};

/// Signs our own messages and checks everyone's proofs of authorship.
///
/// The state hands it the ids of the messages it broadcasts together (one or more, see
/// [`State::flush_staged`](crate::State::flush_staged)), and, for every message not
/// seen before, the envelope with its recomputed id. What a proof is (a signature per
/// message, one over a batch) is the authenticator's business; the state only carries the
/// bytes in [`Envelope::proof`].
pub trait Authenticator<P>: Send {
    /// Proofs for our own messages `ids`, in the same order (one per id).
    fn sign(&mut self, ids: &[MessageId]) -> Vec<Bytes>;
    /// Whether `envelope` (whose id is `id`) was written by its origin.
    fn verify(&mut self, envelope: &Envelope<P>, id: &MessageId) -> bool;
    /// A copy for [`State`](crate::State)'s `Clone`.
    fn clone_box(&self) -> Box<dyn Authenticator<P>>;
}

impl<P> Clone for Box<dyn Authenticator<P>> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// The application's verdict on a message's content ([`Validator::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Validation {
    /// Store, deliver and forward it.
    Accept,
    /// Invalid: drop it, count it ([`Stats::rejected`](crate::Stats::rejected)) and
    /// penalise the neighbour that sent it ([`Output::Penalize`](crate::Output::Penalize)).
    Reject,
    /// Drop it quietly (counted in [`Stats::ignored`](crate::Stats::ignored)), no penalty:
    /// valid but unwanted (too old for the application, say).
    Ignore,
}

/// The application's check of a message's content, run once per message after its
/// proof of authorship (so it sees only authentic messages) and before it is stored,
/// delivered or forwarded. A message rejected or ignored is settled: it is marked seen, so
/// anti-entropy never asks for it again and FIFO delivery does not wait for it.
pub trait Validator<P>: Send {
    /// The verdict on `envelope` (whose id is `id`). Must not block: it runs on the
    /// node's protocol loop.
    fn validate(&mut self, envelope: &Envelope<P>, id: &MessageId) -> Validation;
    /// A copy for [`State`](crate::State)'s `Clone`.
    fn clone_box(&self) -> Box<dyn Validator<P>>;
}

impl<P> Clone for Box<dyn Validator<P>> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Why a neighbour is penalised ([`Output::Penalize`](crate::Output::Penalize)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Penalty {
    /// It sent a message whose proof of authorship failed.
    Forged,
    /// It sent a message the [`Validator`] rejected.
    Rejected,
}

impl Penalty {
    /// Lower-case name, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forged => "forged",
            Self::Rejected => "rejected",
        }
    }
}
