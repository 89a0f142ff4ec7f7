//! The Plumtree wire messages and the message identity.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::PeerId;
/// Identifier of one broadcast: BLAKE3 over the postcard encoding of
/// `(origin, incarnation, seq)` followed by the BLAKE3 hash of the payload. Never the
/// payload hash alone: two equal payloads are two messages. The payload goes in by its
/// hash so that a [`Settled`] record (no payload) still names its message exactly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 32]);

impl MessageId {
    /// Lower-case hex of all 32 bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A postcard output that feeds a BLAKE3 hasher through a small buffer: it never runs out
/// of room, so encoding into it cannot fail for lack of space (one `update` for a header
/// of up to 64 bytes).
struct HashOutput<'a> {
    hasher: &'a mut blake3::Hasher,
    buf: [u8; 64],
    len: usize,
}

impl HashOutput<'_> {
    fn flush(&mut self) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl postcard::ser_flavors::Flavor for HashOutput<'_> {
    type Output = ();

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        if self.len == self.buf.len() {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
        Ok(())
    }

    fn try_extend(&mut self, b: &[u8]) -> postcard::Result<()> {
        if self.len + b.len() > self.buf.len() {
            self.flush();
            self.hasher.update(b);
        } else {
            self.buf[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<()> {
        self.flush();
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One broadcast as it travels: who sent it, in which life (`incarnation`, the origin's
/// start time in ms), its per-incarnation sequence number (from 1), and the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// The node that broadcast it.
    pub origin: P,
    /// The origin's incarnation (start time in ms since the Unix epoch in the node).
    pub incarnation: u64,
    /// Sequence number within the incarnation, starting at 1.
    pub seq: u64,
    /// The origin's proof of authorship, opaque to this crate: what the
    /// [`Authenticator`](crate::Authenticator) made of the id when the origin broadcast it
    /// (empty when messages are not signed). Not part of the [`MessageId`].
    pub proof: Bytes,
    /// Application bytes (last on the wire).
    pub payload: Bytes,
}

impl<P: PeerId> Envelope<P> {
    /// An unsigned envelope (empty [`Envelope::proof`]).
    pub fn new(origin: P, incarnation: u64, seq: u64, payload: Bytes) -> Self {
        Self { origin, incarnation, seq, proof: Bytes::new(), payload }
    }

    /// The [`MessageId`] of this envelope (recomputed on receipt, never trusted).
    pub fn id(&self) -> MessageId {
        message_id(&self.origin, self.incarnation, self.seq, blake3::hash(&self.payload).as_bytes())
    }
}

/// The [`MessageId`] of `(origin, incarnation, seq)` with a payload whose BLAKE3 hash is
/// `payload_hash`.
pub fn message_id<P: PeerId>(origin: &P, incarnation: u64, seq: u64, payload_hash: &[u8; 32]) -> MessageId {
    let mut h = blake3::Hasher::new();
    let head = (origin, incarnation, seq);
    let out = HashOutput { hasher: &mut h, buf: [0; 64], len: 0 };
    // The output never fails and integers never do; only a `PeerId` whose `Serialize`
    // returns an error could, which the trait rules out (see `PeerId`).
    postcard::serialize_with_flavor::<_, _, ()>(&head, out).expect("PeerId serialization is infallible");
    h.update(payload_hash);
    MessageId(*h.finalize().as_bytes())
}

/// A message settled without its payload: a node that rejected or ignored it
/// ([`Validator`](crate::Validator)) tells the neighbours behind it, in a
/// [`Message::Repair`], that it will never be delivered, so they stop waiting and asking
/// for it. It carries the origin's proof, checked like a message's (over the id made of
/// the header and `payload_hash`): nobody can settle a message its origin never sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled<P> {
    /// The message's origin.
    pub origin: P,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its sequence number.
    pub seq: u64,
    /// BLAKE3 of its payload.
    pub payload_hash: [u8; 32],
    /// The origin's proof of authorship, as in [`Envelope::proof`].
    pub proof: Bytes,
}

impl<P: PeerId> Settled<P> {
    /// The settled message's id.
    pub fn id(&self) -> MessageId {
        message_id(&self.origin, self.incarnation, self.seq, &self.payload_hash)
    }

    /// What an [`Authenticator`](crate::Authenticator) checks: the envelope without its
    /// payload.
    pub fn envelope(&self) -> Envelope<P> {
        Envelope {
            origin: self.origin.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            proof: self.proof.clone(),
            payload: Bytes::new(),
        }
    }
}

/// A lazy-push announcement: enough to decide exactly whether the payload is missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement<P> {
    /// The message.
    pub id: MessageId,
    /// Its origin.
    pub origin: P,
    /// Its origin's incarnation.
    pub incarnation: u64,
    /// Its sequence number.
    pub seq: u64,
    /// The round at which the announcer would forward it (the receiver's hop count − 1).
    pub round: u32,
}

/// A Plumtree wire message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<P> {
    /// Eager push of a payload (paper Alg. 1, `GOSSIP`). `round` is 0 from the origin.
    Gossip {
        /// Hops travelled minus one.
        round: u32,
        /// The broadcast.
        envelope: Envelope<P>,
    },
    /// Lazy push: a batch of announcements (paper Alg. 1, `IHAVE`).
    IHave(Vec<Announcement<P>>),
    /// Make the link eager again and, with an id, send that payload (paper Alg. 2).
    Graft {
        /// The missing message, or `None` for a tree-optimisation graft.
        id: Option<MessageId>,
        /// Whose tree the link joins ([`Tree::PerOrigin`](crate::Tree::PerOrigin); ignored with a shared tree).
        origin: P,
    },
    /// Make the link lazy (paper Alg. 1, `PRUNE`).
    Prune {
        /// Whose tree the link leaves ([`Tree::PerOrigin`](crate::Tree::PerOrigin); ignored with a shared tree).
        origin: P,
    },
    /// Anti-entropy: one piece of the sender's version vector, every head it keeps with a
    /// key `(origin, incarnation)` in `(after, upto]` (`None`: unbounded on that side).
    /// The receiver sends back, in [`Message::Repair`], the messages the sender lacks, and,
    /// if `reply`, its own heads over the same keys so the sender can repair it too.
    Digest {
        /// Heads in the piece, in key order.
        heads: Vec<Head<P>>,
        /// The piece starts after this key (`None`: at the first key).
        after: Option<(P, u64)>,
        /// The piece ends at this key, inclusive (`None`: at the last key).
        upto: Option<(P, u64)>,
        /// Whether the receiver should answer with its own digest of the same keys.
        reply: bool,
        /// The sender joined recently and wants no history: repair only the keys it lists
        /// (what was sent since its join), not the ones it lacks entirely.
        joined: bool,
        /// The sender's number for this ask, echoed in the answer (its exchange counts
        /// only the answers to its own asks).
        ask: u32,
    },
    /// Anti-entropy: the answer to one [`Message::Digest`], with the messages its sender
    /// lacked, oldest first per origin and incarnation (none when it lacked nothing).
    /// Delivered as recovered and not pushed on through the tree. `settled` names the
    /// messages of the same keys the sender rejected or ignored (it has no payload to
    /// send for them).
    Repair {
        /// The piece answered: the digest's `after`.
        after: Option<(P, u64)>,
        /// The digest's `ask`.
        ask: u32,
        /// The messages.
        envelopes: Vec<Envelope<P>>,
        /// Messages settled without a payload, for the asker to mark seen.
        settled: Vec<Settled<P>>,
        /// Whether the sender had more than the bounds of one repair let it send: the
        /// receiver asks again at once.
        more: bool,
    },
}

/// One entry of a version vector: every message of `(origin, incarnation)` with
/// seq ≤ `seq` was seen (some above it may have been too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head<P> {
    /// The origin.
    pub origin: P,
    /// Its incarnation.
    pub incarnation: u64,
    /// The contiguous watermark: the highest seq with every one below it seen.
    pub seq: u64,
}
