//! Ed25519 signatures on messages, one per batch of the origin's messages.
//!
//! A node's [`NodeId`] is its Ed25519 public key, so anyone can check that a message came
//! from its origin with nothing but the message. One signature per message would cost
//! every node one Ed25519 verification per delivery, more CPU than an unsigned delivery
//! takes (docs/performance.md). So the origin signs its messages in batches: the
//! messages it broadcasts together (what was waiting when it signed, at most
//! [`MAX_BATCH`]) are the leaves of a BLAKE3 Merkle tree, and it signs the root once.
//! Each message carries the root's signature and its path to the root: a receiver hashes
//! the path (one BLAKE3 block per level), and verifies the signature only the first time
//! it meets that (origin, root); later messages of the batch find it in a bounded cache.
//!
//! A proof ([`Envelope::proof`](crate::proto::broadcast::Envelope)) is fixed-layout bytes:
//! `signature (64) ‖ batch size (u16 LE) ‖ index (u16 LE) ‖ path (32 per level)`. Its size
//! is checked before anything is read, and the path must have exactly as many hashes as
//! the index and batch size call for. The signature covers
//! `SIGNING_CONTEXT ‖ batch size (u16 LE) ‖ root`, and each leaf is a [`MessageId`],
//! BLAKE3 over `(origin, incarnation, seq)` and the payload: the signature covers all four.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{BufMut, Bytes, BytesMut};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::proto::MessageId;
use crate::proto::broadcast::{Authenticator, Envelope};
use plumcast_transport::{Identity, NodeId};

/// Most messages under one signature. 64 leaves make a path of 6 hashes: a proof of
/// 260 bytes. Larger batches divide the signature's cost further but lengthen every
/// message by 32 bytes per doubling. Measured (`plumcast bench`, N = 20, one sender at
/// max rate, median of 3): 32 gave 98 k deliveries/s signed against 150 k unsigned, 64
/// gave 106 k against 121 k (the unsigned runs vary that much; docs/performance.md).
pub const MAX_BATCH: usize = 64;

/// (origin, root) pairs whose signature was checked and held good, most recent kept: a
/// batch's later messages skip the Ed25519 verification. 4,096 × 64 bytes of key, about
/// 0.5 MiB with the table's overhead.
pub const VERIFIED_ROOTS: usize = 4096;

/// What the signature covers before the batch size and root (domain separation: these
/// bytes are never signed for anything else).
const SIGNING_CONTEXT: &[u8] = b"plumcast message batch v1\0";

/// BLAKE3 key-derivation context of the key that hashes the Merkle tree's inner nodes
/// (keyed BLAKE3 of the two children: one compression per node).
const NODE_CONTEXT: &str = "plumcast 2026-12-01 message batch tree node";

/// Origins whose public key is kept decompressed (about 11 µs saved per verification
/// here): the most recent this many.
const KEYS: usize = 4096;

const SIGNATURE_LEN: usize = 64;
const HEAD_LEN: usize = SIGNATURE_LEN + 2 + 2;
/// Longest path accepted, hashes: a tree of [`MAX_BATCH`] leaves needs 6; peers may batch
/// up to 65,535 (16 levels).
const MAX_PATH: usize = 16;

/// Counters of the signing and checking work, shared by every copy of the authenticator.
#[derive(Debug, Default)]
pub(crate) struct SignCounters {
    /// Signatures made (one per batch).
    pub(crate) signed_batches: AtomicU64,
    /// Our messages signed.
    pub(crate) signed_messages: AtomicU64,
    /// Ed25519 verifications run (cache misses).
    pub(crate) verifications: AtomicU64,
    /// Proofs checked against the cache of verified roots without a verification.
    pub(crate) cache_hits: AtomicU64,
}

/// The node's [`Authenticator`]: signs our batches with the identity's key and checks
/// everyone's proofs against the origin's id. Public for benchmarks and tools; a node
/// makes its own.
pub struct Signatures {
    key: Arc<Ed25519KeyPair>,
    /// Verified (origin, root) → the signature that was verified: a later message of the
    /// batch must carry the same bytes, or a node that verified the root would pass on a
    /// message whose signature fails at the next node (and get an honest hop disconnected).
    verified: HashMap<(NodeId, [u8; 32]), [u8; SIGNATURE_LEN]>,
    order: VecDeque<(NodeId, [u8; 32])>,
    /// Decompressed public keys of recent origins (`None`: not a valid key).
    keys: HashMap<NodeId, Option<ed25519_dalek::VerifyingKey>>,
    keys_order: VecDeque<NodeId>,
    /// The key of the tree's inner-node hash ([`NODE_CONTEXT`]).
    node_key: [u8; 32],
    counters: Arc<SignCounters>,
}

impl Signatures {
    /// Sign with `identity`'s key.
    ///
    /// # Errors
    /// A message naming why ring refused the key (not an Ed25519 PKCS#8 key).
    pub fn new(identity: &Identity) -> Result<Self, String> {
        Self::with_counters(identity, Arc::default())
    }

    /// Ed25519 verifications run so far (cache misses).
    pub fn verifications(&self) -> u64 {
        self.counters.verifications.load(Relaxed)
    }

    pub(crate) fn with_counters(identity: &Identity, counters: Arc<SignCounters>) -> Result<Self, String> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(identity.pkcs8_der())
            .map_err(|e| format!("the identity's key cannot sign messages: {e}"))?;
        debug_assert_eq!(key.public_key().as_ref(), &identity.node_id().0);
        Ok(Self {
            key: Arc::new(key),
            verified: HashMap::new(),
            order: VecDeque::new(),
            keys: HashMap::new(),
            keys_order: VecDeque::new(),
            node_key: node_key(),
            counters,
        })
    }

    /// `origin`'s public key, decompressed once while it stays among the last [`KEYS`].
    fn key_of(&mut self, origin: &NodeId) -> Option<ed25519_dalek::VerifyingKey> {
        if let Some(k) = self.keys.get(origin) {
            return *k;
        }
        let k = ed25519_dalek::VerifyingKey::from_bytes(&origin.0).ok();
        self.keys.insert(*origin, k);
        self.keys_order.push_back(*origin);
        if self.keys_order.len() > KEYS
            && let Some(old) = self.keys_order.pop_front()
        {
            self.keys.remove(&old);
        }
        k
    }

    fn remember(&mut self, entry: (NodeId, [u8; 32]), signature: [u8; SIGNATURE_LEN]) {
        if self.verified.insert(entry, signature).is_none() {
            self.order.push_back(entry);
            if self.order.len() > VERIFIED_ROOTS
                && let Some(old) = self.order.pop_front()
            {
                self.verified.remove(&old);
            }
        }
    }
}

fn node_key() -> [u8; 32] {
    blake3::derive_key(NODE_CONTEXT, b"")
}

/// A Merkle tree's inner node over `left` and `right`.
fn node(key: &[u8; 32], left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(left);
    block[32..].copy_from_slice(right);
    *blake3::keyed_hash(key, &block).as_bytes()
}

/// The levels of the tree over `leaves`, leaves first, root last. A level's odd last node
/// is carried up unchanged.
fn levels(key: &[u8; 32], leaves: &[[u8; 32]]) -> Vec<Vec<[u8; 32]>> {
    let mut levels = vec![leaves.to_vec()];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last().map(Vec::as_slice).unwrap_or_default();
        let up = below.chunks(2).map(|c| if c.len() == 2 { node(key, &c[0], &c[1]) } else { c[0] }).collect();
        levels.push(up);
    }
    levels
}

/// The root from `leaf` at `index` of a batch of `count` and its `path`, or `None` if the
/// path is not exactly as long as that position needs.
fn root_of(key: &[u8; 32], leaf: [u8; 32], mut index: usize, mut count: usize, path: &[u8]) -> Option<[u8; 32]> {
    if count == 0 || index >= count {
        return None;
    }
    let mut at = leaf;
    let mut path = path.chunks_exact(32).map(|c| <&[u8; 32]>::try_from(c).ok());
    while count > 1 {
        if index % 2 == 1 {
            at = node(key, path.next()??, &at);
        } else if index + 1 < count {
            at = node(key, &at, path.next()??);
        }
        index /= 2;
        count = count.div_ceil(2);
    }
    path.next().is_none().then_some(at)
}

/// What the origin signs for a batch of `count` with this `root`.
fn signed_bytes(count: u16, root: &[u8; 32]) -> [u8; SIGNING_CONTEXT.len() + 2 + 32] {
    let mut m = [0u8; SIGNING_CONTEXT.len() + 2 + 32];
    m[..SIGNING_CONTEXT.len()].copy_from_slice(SIGNING_CONTEXT);
    m[SIGNING_CONTEXT.len()..SIGNING_CONTEXT.len() + 2].copy_from_slice(&count.to_le_bytes());
    m[SIGNING_CONTEXT.len() + 2..].copy_from_slice(root);
    m
}

/// Sign `envelope` alone (a batch of one) with `identity`'s key, as its origin: for tools
/// and tests that write envelopes themselves. A node signs its own broadcasts.
///
/// # Errors
/// A message naming why: the key cannot sign, or `identity` is not the envelope's origin.
pub fn sign_alone(identity: &Identity, envelope: &mut Envelope<NodeId>) -> Result<(), String> {
    if envelope.origin != identity.node_id() {
        return Err(format!("{} cannot sign for origin {}", identity.node_id().short(), envelope.origin.short()));
    }
    let mut s = Signatures::new(identity)?;
    envelope.proof = s.sign(&[envelope.id()]).remove(0);
    Ok(())
}

impl Authenticator<NodeId> for Signatures {
    fn sign(&mut self, ids: &[MessageId]) -> Vec<Bytes> {
        let mut proofs = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MAX_BATCH) {
            let leaves: Vec<[u8; 32]> = batch.iter().map(|id| id.0).collect();
            let levels = levels(&self.node_key, &leaves);
            let root = levels.last().and_then(|l| l.first()).copied().unwrap_or_default();
            // MAX_BATCH fits a u16.
            let count = batch.len() as u16;
            let signature = self.key.sign(&signed_bytes(count, &root));
            self.counters.signed_batches.fetch_add(1, Relaxed);
            self.counters.signed_messages.fetch_add(batch.len() as u64, Relaxed);
            for leaf in 0..batch.len() {
                let mut proof = BytesMut::with_capacity(HEAD_LEN + 32 * (levels.len() - 1));
                proof.put_slice(signature.as_ref());
                proof.put_u16_le(count);
                proof.put_u16_le(leaf as u16);
                let mut index = leaf;
                for level in &levels[..levels.len() - 1] {
                    let sibling = index ^ 1;
                    if sibling < level.len() {
                        proof.put_slice(&level[sibling]);
                    }
                    index /= 2;
                }
                proofs.push(proof.freeze());
            }
        }
        // Our own messages need no cache entry: we never verify them.
        proofs
    }

    fn verify(&mut self, envelope: &Envelope<NodeId>, id: &MessageId) -> bool {
        let proof = &envelope.proof[..];
        if proof.len() < HEAD_LEN
            || !(proof.len() - HEAD_LEN).is_multiple_of(32)
            || (proof.len() - HEAD_LEN) / 32 > MAX_PATH
        {
            return false;
        }
        let (signature, rest) = proof.split_at(SIGNATURE_LEN);
        let count = u16::from_le_bytes([rest[0], rest[1]]);
        let index = u16::from_le_bytes([rest[2], rest[3]]);
        let Some(root) = root_of(&self.node_key, id.0, usize::from(index), usize::from(count), &rest[4..]) else {
            return false;
        };
        let entry = (envelope.origin, root);
        if self.verified.get(&entry).is_some_and(|s| s[..] == *signature) {
            self.counters.cache_hits.fetch_add(1, Relaxed);
            return true;
        }
        self.counters.verifications.fetch_add(1, Relaxed);
        let Ok(signature) = <[u8; SIGNATURE_LEN]>::try_from(signature) else { return false };
        // Strict: no small-order keys, no non-canonical encodings, so every node agrees.
        let ok = self.key_of(&envelope.origin).is_some_and(|k| {
            k.verify_strict(&signed_bytes(count, &root), &ed25519_dalek::Signature::from_bytes(&signature)).is_ok()
        });
        if ok {
            self.remember(entry, signature);
        }
        ok
    }

    fn clone_box(&self) -> Box<dyn Authenticator<NodeId>> {
        Box::new(Self {
            key: self.key.clone(),
            verified: self.verified.clone(),
            order: self.order.clone(),
            keys: self.keys.clone(),
            keys_order: self.keys_order.clone(),
            node_key: self.node_key,
            counters: self.counters.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(origin: NodeId, seq: u64, payload: &'static [u8]) -> (Envelope<NodeId>, MessageId) {
        let e = Envelope::new(origin, 1_796_000_000_000, seq, Bytes::from_static(payload));
        let id = e.id();
        (e, id)
    }

    fn signer() -> (Signatures, NodeId, Arc<SignCounters>) {
        let identity = Identity::generate().unwrap();
        let counters = Arc::new(SignCounters::default());
        (Signatures::with_counters(&identity, counters.clone()).unwrap(), identity.node_id(), counters)
    }

    #[test]
    fn every_message_of_every_batch_size_verifies_with_one_verification_per_batch() {
        let (mut origin, me, _) = signer();
        let (mut receiver, _, counters) = signer();
        for count in [1usize, 2, 3, 5, 8, 31, 32, 33, 63, 64, 65, 130] {
            let mut batch: Vec<(Envelope<NodeId>, MessageId)> =
                (0..count as u64).map(|s| envelope(me, 1000 * count as u64 + s, b"payload")).collect();
            let ids: Vec<MessageId> = batch.iter().map(|(_, id)| *id).collect();
            let proofs = origin.sign(&ids);
            assert_eq!(proofs.len(), count);
            for ((e, _), p) in batch.iter_mut().zip(proofs) {
                assert!(p.len() <= HEAD_LEN + 32 * 6, "a proof of {} bytes", p.len());
                e.proof = p;
            }
            let before = counters.verifications.load(Relaxed);
            for (e, id) in &batch {
                assert!(receiver.verify(e, id), "batch of {count}");
            }
            assert_eq!(counters.verifications.load(Relaxed) - before, count.div_ceil(MAX_BATCH) as u64);
        }
    }

    #[test]
    fn a_changed_payload_a_moved_proof_another_origin_or_bad_bytes_fail() {
        let (mut origin, me, _) = signer();
        let (mut receiver, other, _) = signer();
        let mut batch: Vec<(Envelope<NodeId>, MessageId)> = (1..=4).map(|s| envelope(me, s, b"real")).collect();
        let ids: Vec<MessageId> = batch.iter().map(|(_, id)| *id).collect();
        for ((e, _), p) in batch.iter_mut().zip(origin.sign(&ids)) {
            e.proof = p;
        }
        // The real first message verifies (and puts the root in the cache).
        assert!(receiver.verify(&batch[0].0, &batch[0].1));
        // Another payload under the same proof: its id is not a leaf of the root.
        let mut forged = batch[1].0.clone();
        forged.payload = Bytes::from_static(b"forged");
        assert!(!receiver.verify(&forged, &forged.id()));
        // The proof of message 2 on message 3: wrong position.
        let mut moved = batch[2].0.clone();
        moved.proof = batch[1].0.proof.clone();
        assert!(!receiver.verify(&moved, &batch[2].1));
        // The same message claimed by another origin (the cache is keyed by origin too).
        let mut claimed = batch[0].0.clone();
        claimed.origin = other;
        assert!(!receiver.verify(&claimed, &claimed.id()));
        // No proof, a truncated one, one with an extra hash.
        let mut e = batch[3].0.clone();
        for proof in [
            Bytes::new(),
            batch[3].0.proof.slice(..HEAD_LEN - 1),
            [&batch[3].0.proof[..], &[0u8; 32][..]].concat().into(),
        ] {
            e.proof = proof;
            assert!(!receiver.verify(&e, &batch[3].1));
        }
        // A flipped signature bit, at a receiver that has not verified this batch yet (one
        // that has needs only the path: the root is signed already).
        let (mut fresh, _, _) = signer();
        let mut p = batch[3].0.proof.to_vec();
        p[0] ^= 1;
        e.proof = p.into();
        assert!(!fresh.verify(&e, &batch[3].1));
        // Nor at one that verified the batch's root with the real signature: it would
        // pass the bad bytes on to nodes that have not.
        assert!(!receiver.verify(&e, &batch[3].1));
        // And the untouched one still does.
        assert!(fresh.verify(&batch[3].0, &batch[3].1));
    }

    #[test]
    fn the_cache_of_verified_roots_is_bounded() {
        let (mut origin, me, _) = signer();
        let (mut receiver, _, _) = signer();
        for s in 0..(VERIFIED_ROOTS as u64 + 10) {
            let (mut e, id) = envelope(me, s + 1, b"x");
            e.proof = origin.sign(&[id]).remove(0);
            assert!(receiver.verify(&e, &id));
        }
        assert_eq!(receiver.verified.len(), VERIFIED_ROOTS);
        assert_eq!(receiver.order.len(), VERIFIED_ROOTS);
    }
}
