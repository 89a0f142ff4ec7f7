//! The message store: every message a node keeps within its retention, to answer
//! anti-entropy and Grafts the payload cache can no longer answer. [`MemoryStore`] is the
//! default; a host can plug in a durable one through [`MessageStore`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::{Envelope, MessageId, PeerId};

/// A store failed (a durable store could not write): the message was not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// How much a store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreSize {
    /// Messages.
    pub messages: usize,
    /// Payload bytes.
    pub bytes: usize,
    /// Distinct (origin, incarnation) pairs.
    pub incarnations: usize,
    /// Distinct origins.
    pub origins: usize,
}

/// How long and how much a store keeps. Whichever bound is reached first evicts the
/// oldest messages (by the time they were stored); every eviction is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retention {
    /// Age limit. Default [`RETENTION_MAX_AGE`].
    pub max_age: Duration,
    /// Count limit. Default [`RETENTION_MAX_MESSAGES`].
    pub max_messages: usize,
    /// Payload-byte limit. Default [`RETENTION_MAX_BYTES`].
    pub max_bytes: usize,
}

/// [`Retention::max_age`] default: 1 hour, long enough to ride out a partition or a
/// restart that an operator notices and fixes, short enough for an in-memory default.
pub const RETENTION_MAX_AGE: Duration = Duration::from_secs(3600);
/// [`Retention::max_messages`] default: 100,000 messages, ≈ 3 minutes of the 550 msg/s a
/// 2-core machine keeps 50 nodes busy with, or an hour of 28 msg/s.
pub const RETENTION_MAX_MESSAGES: usize = 100_000;
/// [`Retention::max_bytes`] default: 128 MiB of payloads (100,000 messages of 1.3 KiB).
pub const RETENTION_MAX_BYTES: usize = 128 << 20;

impl Default for Retention {
    fn default() -> Self {
        Self { max_age: RETENTION_MAX_AGE, max_messages: RETENTION_MAX_MESSAGES, max_bytes: RETENTION_MAX_BYTES }
    }
}

/// Where a node keeps the messages it can repair others with. Called from the protocol
/// state, synchronously: a durable implementation writes before `append` returns.
pub trait MessageStore<P>: Send {
    /// Keep `envelope` (its id is `id`), stored at `now`. A message already kept is left
    /// as it is.
    ///
    /// # Errors
    /// [`StoreError`] if it could not be kept (a durable store's write failed).
    fn append(&mut self, now: Instant, id: MessageId, envelope: &Envelope<P>) -> Result<(), StoreError>;
    /// The message with this id, if kept.
    fn get(&self, id: &MessageId) -> Option<Envelope<P>>;
    /// Messages of `(origin, incarnation)` with seq > `after`, ascending, at most `max`
    /// messages and (beyond the first) `max_bytes` payload bytes.
    fn range(&self, origin: &P, incarnation: u64, after: u64, max: usize, max_bytes: usize) -> Vec<Envelope<P>>;
    /// Evict what retention no longer covers at `now`; returns how many messages went.
    fn evict(&mut self, now: Instant) -> u64;
    /// What it holds.
    fn size(&self) -> StoreSize;
    /// A copy (the simulator forks whole nodes); a durable store may share its storage.
    fn clone_box(&self) -> Box<dyn MessageStore<P>>;
}

impl<P> Clone for Box<dyn MessageStore<P>> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

impl<P> fmt::Debug for dyn MessageStore<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageStore({:?})", self.size())
    }
}

/// The in-memory store: messages by (origin, incarnation, seq), an id index, and the
/// order they were stored in for eviction.
#[derive(Clone, Debug)]
pub struct MemoryStore<P> {
    by_key: BTreeMap<(P, u64, u64), (MessageId, Envelope<P>)>,
    /// Ids we computed ourselves: a fast non-keyed hash is safe; never iterated.
    by_id: FxHashMap<MessageId, (P, u64, u64)>,
    order: VecDeque<(MessageId, Instant)>,
    bytes: usize,
    retention: Retention,
}

impl<P: PeerId> MemoryStore<P> {
    /// An empty store keeping what `retention` allows.
    pub fn new(retention: Retention) -> Self {
        Self { by_key: BTreeMap::new(), by_id: FxHashMap::default(), order: VecDeque::new(), bytes: 0, retention }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((id, _)) = self.order.pop_front() else { return false };
        if let Some(key) = self.by_id.remove(&id)
            && let Some((_, e)) = self.by_key.remove(&key)
        {
            self.bytes -= e.payload.len();
        }
        true
    }
}

impl<P: PeerId> MessageStore<P> for MemoryStore<P> {
    fn append(&mut self, now: Instant, id: MessageId, envelope: &Envelope<P>) -> Result<(), StoreError> {
        if self.retention.max_messages == 0 || self.by_id.contains_key(&id) {
            return Ok(());
        }
        let key = (envelope.origin.clone(), envelope.incarnation, envelope.seq);
        if let Some((old, e)) = self.by_key.insert(key.clone(), (id, envelope.clone())) {
            // Another payload under the same (origin, incarnation, seq): keep the newer.
            self.by_id.remove(&old);
            self.bytes -= e.payload.len();
        }
        self.by_id.insert(id, key);
        self.order.push_back((id, now));
        self.bytes += envelope.payload.len();
        while (self.by_id.len() > self.retention.max_messages || self.bytes > self.retention.max_bytes)
            && self.evict_oldest()
        {}
        Ok(())
    }

    fn get(&self, id: &MessageId) -> Option<Envelope<P>> {
        self.by_id.get(id).and_then(|k| self.by_key.get(k)).map(|(_, e)| e.clone())
    }

    fn range(&self, origin: &P, incarnation: u64, after: u64, max: usize, max_bytes: usize) -> Vec<Envelope<P>> {
        let lo = (origin.clone(), incarnation, after.saturating_add(1));
        let hi = (origin.clone(), incarnation, u64::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, e) in self.by_key.range(lo..=hi).map(|(_, v)| v) {
            if out.len() >= max || (!out.is_empty() && bytes + e.payload.len() > max_bytes) {
                break;
            }
            bytes += e.payload.len();
            out.push(e.clone());
        }
        out
    }

    fn evict(&mut self, now: Instant) -> u64 {
        let mut evicted = 0;
        while self.order.front().is_some_and(|(_, t)| now.saturating_duration_since(*t) > self.retention.max_age) {
            // Entries replaced by a newer payload under the same key are already gone.
            let gone = self.order.front().is_some_and(|(id, _)| !self.by_id.contains_key(id));
            self.evict_oldest();
            if !gone {
                evicted += 1;
            }
        }
        evicted
    }

    fn size(&self) -> StoreSize {
        let (mut incarnations, mut origins) = (0, 0);
        let mut last: Option<(&P, u64)> = None;
        for (o, i, _) in self.by_key.keys() {
            if last.is_none_or(|(lo, _)| lo != o) {
                origins += 1;
            }
            if last != Some((o, *i)) {
                incarnations += 1;
                last = Some((o, *i));
            }
        }
        StoreSize { messages: self.by_id.len(), bytes: self.bytes, incarnations, origins }
    }

    fn clone_box(&self) -> Box<dyn MessageStore<P>> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn env(origin: u32, incarnation: u64, seq: u64, len: usize) -> Envelope<u32> {
        Envelope::new(origin, incarnation, seq, Bytes::from(vec![seq as u8; len]))
    }

    #[test]
    fn range_returns_what_follows_oldest_first_within_bounds() {
        let t = Instant::now();
        let mut s = MemoryStore::new(Retention::default());
        for seq in [3, 1, 2, 5] {
            let e = env(7, 1, seq, 10);
            s.append(t, e.id(), &e).unwrap();
        }
        let e = env(8, 1, 1, 10);
        s.append(t, e.id(), &e).unwrap();
        let seqs = |v: Vec<Envelope<u32>>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.range(&7, 1, 1, 10, 1 << 20)), vec![2, 3, 5]);
        assert_eq!(seqs(s.range(&7, 1, 0, 2, 1 << 20)), vec![1, 2], "count bound");
        assert_eq!(seqs(s.range(&7, 1, 0, 10, 15)), vec![1], "byte bound, at least one");
        assert_eq!(s.size(), StoreSize { messages: 5, bytes: 50, incarnations: 2, origins: 2 });
        let one = env(7, 1, 3, 10);
        assert_eq!(s.get(&one.id()), Some(one));
    }

    #[test]
    fn retention_evicts_the_oldest_by_count_bytes_and_age() {
        let t = Instant::now();
        let r = Retention { max_age: Duration::from_secs(10), max_messages: 3, max_bytes: 100 };
        let mut s = MemoryStore::new(r);
        for seq in 1..=4 {
            let e = env(1, 1, seq, 10);
            s.append(t + Duration::from_secs(seq), e.id(), &e).unwrap();
        }
        assert_eq!(s.size().messages, 3, "count bound");
        assert!(s.get(&env(1, 1, 1, 10).id()).is_none(), "the oldest went");
        let big = env(2, 1, 1, 95);
        s.append(t + Duration::from_secs(5), big.id(), &big).unwrap();
        assert!(s.size().bytes <= 100, "byte bound: {:?}", s.size());
        let before = s.size().messages as u64;
        assert_eq!(s.evict(t + Duration::from_secs(30)), before, "age");
        assert_eq!(s.size().messages, 0);
    }
}
