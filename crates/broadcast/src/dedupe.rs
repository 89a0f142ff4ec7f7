//! The version vector, which is also the exact dedupe: per origin and incarnation, a
//! contiguous watermark of sequence numbers (the *head*: every seq ≤ it was seen) plus a
//! bounded set seen above it. Anti-entropy exchanges heads; "seen" is exact forever in
//! O(origins × incarnations) memory.

use std::collections::{BTreeMap, BTreeSet};

use crate::PeerId;

/// Whether a message was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not yet: deliver it.
    No,
    /// Already: a duplicate.
    Yes,
    /// From an incarnation older than every one kept of its origin: dropped.
    Stale,
}

/// What was seen of one incarnation of an origin: every seq ≤ `watermark`, plus those in
/// `above` (boxed: absent in the common in-order case).
#[derive(Clone, Debug, Default)]
struct Head {
    watermark: u64,
    // Boxed on purpose: `Option<Box<_>>` is 8 bytes where a `BTreeSet` is 24, and one
    // entry exists per origin per node (10,000² entries in a 10,000-node simulation).
    #[allow(clippy::box_collection)]
    above: Option<Box<BTreeSet<u64>>>,
}

/// A key of the version vector: an origin and one of its incarnations.
pub(crate) type Key<P> = (P, u64);

/// What was seen, per origin and incarnation, in key order (anti-entropy sends it in
/// pieces of consecutive keys). Keys come from peers; a `BTreeMap` needs no hashing, and
/// at most [`Versions::max_incarnations`] incarnations are kept per origin.
#[derive(Clone, Debug)]
pub(crate) struct Versions<P> {
    seen: BTreeMap<Key<P>, Head>,
    /// Most sequence numbers kept above one head's watermark ([`crate::Config::dedupe_window`]).
    window: usize,
    /// Most incarnations kept per origin ([`crate::Config::max_incarnations`]); an older
    /// one than all kept is stale.
    max_incarnations: usize,
}

impl<P: PeerId> Versions<P> {
    pub(crate) fn new(window: usize, max_incarnations: usize) -> Self {
        Self { seen: BTreeMap::new(), window, max_incarnations: max_incarnations.max(1) }
    }

    /// The incarnations of `origin` kept, oldest first.
    fn incarnations<'a>(&'a self, origin: &'a P) -> impl Iterator<Item = u64> + 'a {
        self.seen.range((origin.clone(), 0)..=(origin.clone(), u64::MAX)).map(|((_, i), _)| *i)
    }

    /// Whether `(origin, incarnation, seq)` was seen.
    pub(crate) fn check(&self, origin: &P, incarnation: u64, seq: u64) -> Seen {
        match self.seen.get(&(origin.clone(), incarnation)) {
            Some(h) if seq <= h.watermark || h.above.as_ref().is_some_and(|a| a.contains(&seq)) => Seen::Yes,
            Some(_) => Seen::No,
            None => {
                let mut kept = self.incarnations(origin);
                match kept.next() {
                    Some(oldest) if incarnation < oldest && 1 + kept.count() >= self.max_incarnations => Seen::Stale,
                    _ => Seen::No,
                }
            }
        }
    }

    /// Record `(origin, incarnation, seq)` as seen. A new incarnation beyond
    /// `max_incarnations` forgets the origin's oldest. Returns how many times the window
    /// overflowed, each forcing the watermark past the oldest gap (bounded memory; the
    /// caller counts them). Call only after [`Versions::check`] said `No`.
    pub(crate) fn mark(&mut self, origin: &P, incarnation: u64, seq: u64) -> u64 {
        let key = (origin.clone(), incarnation);
        self.make_room(&key);
        let h = self.seen.entry(key).or_default();
        if seq <= h.watermark {
            return 0;
        }
        if seq == h.watermark + 1 && h.above.is_none() {
            // The common case: in order, nothing pending above.
            h.watermark += 1;
            return 0;
        }
        let above = h.above.get_or_insert_with(Default::default);
        above.insert(seq);
        while above.remove(&(h.watermark + 1)) {
            h.watermark += 1;
        }
        let mut overflows = 0;
        while above.len() > self.window {
            if let Some(first) = above.pop_first() {
                h.watermark = first;
                overflows += 1;
            }
            while above.remove(&(h.watermark + 1)) {
                h.watermark += 1;
            }
        }
        if above.is_empty() {
            h.above = None;
        }
        overflows
    }

    /// Take every seq ≤ `head` of `key` as seen (a node that joined adopts what was sent
    /// before its join instead of asking for it). Does nothing if already that far.
    pub(crate) fn raise(&mut self, key: &Key<P>, head: u64) {
        self.make_room(key);
        let h = self.seen.entry(key.clone()).or_default();
        if head <= h.watermark {
            return;
        }
        h.watermark = head;
        if let Some(above) = h.above.as_mut() {
            above.retain(|s| *s > head);
            while above.remove(&(h.watermark + 1)) {
                h.watermark += 1;
            }
            if above.is_empty() {
                h.above = None;
            }
        }
    }

    /// Whether `key` has an entry.
    pub(crate) fn knows(&self, key: &Key<P>) -> bool {
        self.seen.contains_key(key)
    }

    /// Before a new incarnation of an origin is added: forget its oldest ones beyond
    /// `max_incarnations - 1`.
    fn make_room(&mut self, key: &Key<P>) {
        if self.seen.contains_key(key) {
            return;
        }
        let kept: Vec<u64> = self.incarnations(&key.0).collect();
        let excess = (kept.len() + 1).saturating_sub(self.max_incarnations);
        for oldest in &kept[..excess] {
            self.seen.remove(&(key.0.clone(), *oldest));
        }
    }

    /// The head (contiguous watermark) of one incarnation, 0 if none was seen.
    pub(crate) fn head(&self, key: &Key<P>) -> u64 {
        self.seen.get(key).map_or(0, |h| h.watermark)
    }

    /// Up to `max` heads with keys after `after` (from the first key when `None`), in key
    /// order: one piece of the version vector.
    pub(crate) fn piece(&self, after: Option<&Key<P>>, max: usize) -> Vec<(Key<P>, u64)> {
        let iter: Box<dyn Iterator<Item = (&Key<P>, &Head)>> = match after {
            None => Box::new(self.seen.iter()),
            Some(k) => Box::new(self.seen.range((std::ops::Bound::Excluded(k.clone()), std::ops::Bound::Unbounded))),
        };
        iter.take(max).map(|(k, h)| (k.clone(), h.watermark)).collect()
    }

    /// Every head with a key in `(after, upto]` (unbounded where `None`), in key order.
    pub(crate) fn between<'a>(
        &'a self,
        after: Option<&Key<P>>,
        upto: Option<&Key<P>>,
    ) -> impl Iterator<Item = (&'a Key<P>, u64)> + 'a {
        use std::ops::Bound;
        // Both bounds come from a peer's digest: a piece that ends before it starts is
        // empty (`BTreeMap::range` would panic on it; found by the protocol_state fuzz
        // target).
        let empty = matches!((after, upto), (Some(a), Some(u)) if a >= u);
        let lo = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.clone()));
        let hi = upto.map_or(Bound::Unbounded, |k| Bound::Included(k.clone()));
        let range = if empty { None } else { Some(self.seen.range((lo, hi))) };
        range.into_iter().flatten().map(|(k, h)| (k, h.watermark))
    }

    /// Origin-incarnation entries kept.
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_out_of_order_are_exact() {
        let mut d = Versions::new(8, 4);
        assert_eq!(d.check(&1u32, 5, 1), Seen::No);
        for seq in [1, 2, 4, 6] {
            assert_eq!(d.mark(&1, 5, seq), 0);
        }
        for (seq, want) in
            [(1, Seen::Yes), (2, Seen::Yes), (3, Seen::No), (4, Seen::Yes), (5, Seen::No), (6, Seen::Yes)]
        {
            assert_eq!(d.check(&1, 5, seq), want, "seq {seq}");
        }
        assert_eq!(d.head(&(1, 5)), 2);
        d.mark(&1, 5, 3);
        d.mark(&1, 5, 5);
        // The gaps closed: everything up to 6 is under the watermark, nothing above.
        assert_eq!(d.head(&(1, 5)), 6);
        assert!(d.seen[&(1, 5)].above.is_none());
        assert_eq!(d.check(&2, 5, 1), Seen::No, "another origin");
    }

    #[test]
    fn older_incarnations_are_kept_up_to_the_bound_then_stale() {
        let mut d = Versions::new(8, 2);
        d.mark(&1u32, 5, 1);
        d.mark(&1, 6, 1);
        // Both lives are kept: a message of the older one is still new, not stale.
        assert_eq!(d.check(&1, 5, 2), Seen::No);
        assert_eq!(d.check(&1, 5, 1), Seen::Yes);
        assert_eq!(d.check(&1, 6, 1), Seen::Yes);
        // A third life forgets the oldest; older than every kept one is stale.
        d.mark(&1, 7, 1);
        assert_eq!(d.check(&1, 5, 1), Seen::Stale);
        assert_eq!(d.check(&1, 4, 1), Seen::Stale);
        assert_eq!(d.check(&1, 6, 1), Seen::Yes);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn a_full_window_forces_the_watermark_and_says_so() {
        let mut d = Versions::new(2, 4);
        assert_eq!(d.mark(&1u32, 1, 3), 0);
        assert_eq!(d.mark(&1, 1, 5), 0);
        // A third number above a gap: the oldest gap (1–2) is given up.
        assert_eq!(d.mark(&1, 1, 7), 1);
        assert_eq!(d.head(&(1, 1)), 3);
        assert_eq!(d.check(&1, 1, 2), Seen::Yes, "given up: taken as seen");
        assert_eq!(d.check(&1, 1, 4), Seen::No);
    }

    #[test]
    fn pieces_walk_the_vector_in_key_order() {
        let mut d = Versions::new(8, 4);
        for origin in [3u32, 1, 2] {
            d.mark(&origin, 10, 1);
        }
        d.mark(&1, 11, 1);
        let first = d.piece(None, 2);
        assert_eq!(first, vec![((1, 10), 1), ((1, 11), 1)]);
        let rest = d.piece(Some(&first[1].0), 10);
        assert_eq!(rest, vec![((2, 10), 1), ((3, 10), 1)]);
        let mid: Vec<_> = d.between(Some(&(1, 10)), Some(&(2, 10))).map(|(k, h)| (*k, h)).collect();
        assert_eq!(mid, vec![((1, 11), 1), ((2, 10), 1)]);
    }
}
