//! The payload cache: the messages a node can still answer a Graft (or a catch-up) with,
//! bounded in count, bytes and age.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::{Envelope, MessageId};

/// One cached payload.
#[derive(Clone, Debug)]
pub(crate) struct Cached<P> {
    pub(crate) envelope: Envelope<P>,
    /// The round we forward with (0 for our own messages).
    pub(crate) send_round: u32,
    /// The neighbour that delivered it first (`None` for our own).
    pub(crate) parent: Option<P>,
    /// When it was cached (set by [`PayloadCache::insert`]).
    pub(crate) at: Option<Instant>,
}

/// Payloads by id, oldest first in `order`. Overflow policy: the oldest entry goes first,
/// whichever bound is hit (count, bytes, age); every eviction is returned for counting.
#[derive(Clone, Debug)]
pub(crate) struct PayloadCache<P> {
    /// Keys are ids we computed ourselves, so a fast non-keyed hash is safe here; the map
    /// is never iterated (`order` is), so its order cannot reach any output.
    map: FxHashMap<MessageId, Cached<P>>,
    order: VecDeque<(MessageId, Instant)>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    max_age: Duration,
}

impl<P> PayloadCache<P> {
    pub(crate) fn new(max_messages: usize, max_bytes: usize, max_age: Duration) -> Self {
        Self { map: FxHashMap::default(), order: VecDeque::new(), bytes: 0, max_messages, max_bytes, max_age }
    }

    /// Cache `entry` under `id` at `now`; returns how many older entries were evicted to
    /// keep within the count and byte bounds.
    pub(crate) fn insert(&mut self, now: Instant, id: MessageId, mut entry: Cached<P>) -> u64 {
        entry.at = Some(now);
        self.bytes += entry.envelope.payload.len();
        match self.map.insert(id, entry) {
            Some(old) => self.bytes -= old.envelope.payload.len(),
            None => self.order.push_back((id, now)),
        }
        let mut evicted = 0;
        while (self.map.len() > self.max_messages || self.bytes > self.max_bytes) && self.evict_oldest() {
            evicted += 1;
        }
        evicted
    }

    pub(crate) fn get(&self, id: &MessageId) -> Option<&Cached<P>> {
        self.map.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &MessageId) -> Option<&mut Cached<P>> {
        self.map.get_mut(id)
    }

    /// Evict the entries older than the age bound; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> u64 {
        let mut evicted = 0;
        while self.order.front().is_some_and(|(_, t)| now.saturating_duration_since(*t) > self.max_age) {
            self.evict_oldest();
            evicted += 1;
        }
        evicted
    }

    /// The entries cached within `window` of `now`, newest first, at most `max`.
    pub(crate) fn recent(
        &self,
        now: Instant,
        window: Duration,
        max: usize,
    ) -> impl Iterator<Item = (MessageId, &Cached<P>)> + '_ {
        self.order
            .iter()
            .rev()
            .take_while(move |(_, at)| now.saturating_duration_since(*at) <= window)
            .filter_map(|(id, _)| self.map.get(id).map(|c| (*id, c)))
            .take(max)
    }

    /// Entries and payload bytes held.
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.map.len(), self.bytes)
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((id, _)) = self.order.pop_front() else { return false };
        if let Some(c) = self.map.remove(&id) {
            self.bytes -= c.envelope.payload.len();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(seq: u64, len: usize) -> (MessageId, Cached<u32>) {
        let envelope = Envelope::new(1u32, 1, seq, Bytes::from(vec![0; len]));
        (envelope.id(), Cached { envelope, send_round: 0, parent: None, at: None })
    }

    #[test]
    fn bounds_evict_the_oldest_and_count_it() {
        let t0 = Instant::now();
        let mut c = PayloadCache::new(2, 10, Duration::from_secs(30));
        let (a, ea) = entry(1, 4);
        let (b, eb) = entry(2, 4);
        let (d, ed) = entry(3, 4);
        assert_eq!(c.insert(t0, a, ea), 0);
        assert_eq!(c.insert(t0, b, eb), 0);
        assert_eq!(c.insert(t0, d, ed), 1, "count bound");
        assert!(c.get(&a).is_none() && c.get(&b).is_some());
        let (e, ee) = entry(4, 9);
        assert_eq!(c.insert(t0, e, ee), 2, "byte bound: 4 + 4 + 9 > 10");
        assert_eq!(c.len(), (1, 9));
    }

    #[test]
    fn age_and_recent_follow_insertion_time() {
        let t0 = Instant::now();
        let mut c = PayloadCache::new(16, 1 << 20, Duration::from_secs(30));
        let ids: Vec<MessageId> = (1..=3)
            .map(|seq| {
                let (id, e) = entry(seq, 1);
                c.insert(t0 + Duration::from_secs(seq * 10), id, e);
                id
            })
            .collect();
        let at = t0 + Duration::from_secs(35);
        let recent: Vec<MessageId> = c.recent(at, Duration::from_secs(20), 8).map(|(id, _)| id).collect();
        assert_eq!(recent, vec![ids[2], ids[1]], "newest first, within 20 s");
        assert_eq!(c.recent(at, Duration::from_secs(60), 1).count(), 1, "at most max");
        assert_eq!(c.expire(t0 + Duration::from_secs(41)), 1, "the first is 31 s old");
        assert_eq!(c.len(), (2, 2));
    }

    #[test]
    fn inserting_an_id_again_keeps_the_byte_count_right() {
        let mut c = PayloadCache::new(16, 1 << 20, Duration::from_secs(30));
        let (id, e) = entry(1, 5);
        c.insert(Instant::now(), id, e.clone());
        c.insert(Instant::now(), id, e);
        assert_eq!(c.len(), (1, 5));
    }
}
