//! The version vector, which is also the exact dedupe: per origin and incarnation, a
//! contiguous watermark of sequence numbers (the *head*: every seq ≤ it was seen) plus a
//! bounded set seen above it. Anti-entropy exchanges heads; "seen" is exact forever in
//! O(origins × incarnations) memory.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

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

impl Head {
    fn contains(&self, seq: u64) -> bool {
        seq <= self.watermark || self.above.as_ref().is_some_and(|a| a.contains(&seq))
    }

    /// Record `seq`; returns how many times the window of `window` numbers above the
    /// watermark overflowed.
    fn mark(&mut self, seq: u64, window: usize) -> u64 {
        if seq <= self.watermark {
            return 0;
        }
        if seq == self.watermark + 1 && self.above.is_none() {
            // The common case: in order, nothing pending above.
            self.watermark += 1;
            return 0;
        }
        let above = self.above.get_or_insert_with(Default::default);
        above.insert(seq);
        while above.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        let mut overflows = 0;
        while above.len() > window {
            if let Some(first) = above.pop_first() {
                self.watermark = first;
                overflows += 1;
            }
            while above.remove(&(self.watermark + 1)) {
                self.watermark += 1;
            }
        }
        if above.is_empty() {
            self.above = None;
        }
        overflows
    }

    fn raise(&mut self, head: u64) {
        if head <= self.watermark {
            return;
        }
        self.watermark = head;
        if let Some(above) = self.above.as_mut() {
            above.retain(|s| *s > head);
            while above.remove(&(self.watermark + 1)) {
                self.watermark += 1;
            }
            if above.is_empty() {
                self.above = None;
            }
        }
    }
}

/// The incarnations kept of one origin, oldest first, each with its [`Head`]. Inline for
/// the common single incarnation, so a lookup touches one map entry and no other
/// allocation.
#[derive(Clone, Debug)]
enum Lives {
    One((u64, Head)),
    Many(Vec<(u64, Head)>),
}

impl Lives {
    fn as_slice(&self) -> &[(u64, Head)] {
        match self {
            Lives::One(l) => std::slice::from_ref(l),
            Lives::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [(u64, Head)] {
        match self {
            Lives::One(l) => std::slice::from_mut(l),
            Lives::Many(v) => v,
        }
    }

    fn get(&self, incarnation: u64) -> Option<&Head> {
        self.as_slice().iter().find(|(i, _)| *i == incarnation).map(|(_, h)| h)
    }

    /// The head of `incarnation`, added if new. Before adding, the oldest incarnations
    /// beyond `max - 1` are forgotten.
    fn head_mut(&mut self, incarnation: u64, max: usize) -> &mut Head {
        let at = match self.as_slice().iter().position(|(i, _)| *i == incarnation) {
            Some(at) => at,
            None => {
                let mut kept = match std::mem::replace(self, Lives::Many(Vec::new())) {
                    Lives::One(l) => vec![l],
                    Lives::Many(v) => v,
                };
                let excess = (kept.len() + 1).saturating_sub(max);
                kept.drain(..excess.min(kept.len()));
                let at = kept.partition_point(|(i, _)| *i < incarnation);
                kept.insert(at, (incarnation, Head::default()));
                *self = if kept.len() == 1 { Lives::One(kept.remove(0)) } else { Lives::Many(kept) };
                at
            }
        };
        &mut self.as_mut_slice()[at].1
    }
}

/// A key of the version vector: an origin and one of its incarnations.
pub(crate) type Key<P> = (P, u64);

/// What was seen, per origin and incarnation, in key order (anti-entropy sends it in
/// pieces of consecutive keys). Keys come from peers; a `BTreeMap` needs no hashing, and
/// at most [`Versions::max_incarnations`] incarnations are kept per origin. One map entry
/// per origin holds its incarnations: a check or a mark is one descent of the map.
#[derive(Clone, Debug)]
pub(crate) struct Versions<P> {
    seen: BTreeMap<P, Lives>,
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

    fn get(&self, key: &Key<P>) -> Option<&Head> {
        self.seen.get(&key.0)?.get(key.1)
    }

    /// Whether `(origin, incarnation, seq)` was seen.
    pub(crate) fn check(&self, origin: &P, incarnation: u64, seq: u64) -> Seen {
        let Some(lives) = self.seen.get(origin) else { return Seen::No };
        let kept = lives.as_slice();
        match kept.iter().find(|(i, _)| *i == incarnation) {
            Some((_, h)) if h.contains(seq) => Seen::Yes,
            Some(_) => Seen::No,
            None if kept.first().is_some_and(|(oldest, _)| incarnation < *oldest)
                && kept.len() >= self.max_incarnations =>
            {
                Seen::Stale
            }
            None => Seen::No,
        }
    }

    /// The head of `key`, added if new (forgetting the origin's oldest incarnations
    /// beyond `max_incarnations - 1` first).
    fn head_mut(&mut self, key: &Key<P>) -> &mut Head {
        let max = self.max_incarnations;
        match self.seen.entry(key.0.clone()) {
            std::collections::btree_map::Entry::Vacant(v) => {
                &mut v.insert(Lives::One((key.1, Head::default()))).as_mut_slice()[0].1
            }
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut().head_mut(key.1, max),
        }
    }

    /// Record `(origin, incarnation, seq)` as seen. A new incarnation beyond
    /// `max_incarnations` forgets the origin's oldest. Returns how many times the window
    /// overflowed, each forcing the watermark past the oldest gap (bounded memory; the
    /// caller counts them). Call only after [`Versions::check`] said `No`.
    pub(crate) fn mark(&mut self, origin: &P, incarnation: u64, seq: u64) -> u64 {
        let window = self.window;
        self.head_mut(&(origin.clone(), incarnation)).mark(seq, window)
    }

    /// Take every seq ≤ `head` of `key` as seen (a node that joined adopts what was sent
    /// before its join instead of asking for it). Does nothing if already that far.
    pub(crate) fn raise(&mut self, key: &Key<P>, head: u64) {
        self.head_mut(key).raise(head);
    }

    /// Whether `key` has an entry.
    pub(crate) fn knows(&self, key: &Key<P>) -> bool {
        self.get(key).is_some()
    }

    /// The head (contiguous watermark) of one incarnation, 0 if none was seen.
    pub(crate) fn head(&self, key: &Key<P>) -> u64 {
        self.get(key).map_or(0, |h| h.watermark)
    }

    /// Every head from the origin `from` on (all when `None`), in key order.
    fn heads_from<'a>(&'a self, from: Option<&P>) -> impl Iterator<Item = (Key<P>, u64)> + 'a {
        let lo = from.map_or(Bound::Unbounded, |o| Bound::Included(o.clone()));
        self.seen
            .range((lo, Bound::Unbounded))
            .flat_map(|(o, lives)| lives.as_slice().iter().map(move |(i, h)| ((o.clone(), *i), h.watermark)))
    }

    /// Up to `max` heads with keys after `after` (from the first key when `None`), in key
    /// order: one piece of the version vector.
    pub(crate) fn piece(&self, after: Option<&Key<P>>, max: usize) -> Vec<(Key<P>, u64)> {
        self.heads_from(after.map(|k| &k.0)).skip_while(|(k, _)| after.is_some_and(|a| k <= a)).take(max).collect()
    }

    /// Every head with a key in `(after, upto]` (unbounded where `None`), in key order.
    pub(crate) fn between<'a>(
        &'a self,
        after: Option<&'a Key<P>>,
        upto: Option<&'a Key<P>>,
    ) -> impl Iterator<Item = (Key<P>, u64)> + 'a {
        // Both bounds come from a peer's digest: a piece that ends before it starts is
        // empty (a `BTreeMap::range` over it would panic; found by the protocol_state fuzz
        // target).
        let empty = matches!((after, upto), (Some(a), Some(u)) if a >= u);
        let heads = if empty { None } else { Some(self.heads_from(after.map(|k| &k.0))) };
        heads
            .into_iter()
            .flatten()
            .skip_while(move |(k, _)| after.is_some_and(|a| k <= a))
            .take_while(move |(k, _)| upto.is_none_or(|u| k <= u))
    }

    /// Origin-incarnation entries kept (counted over the origins: for stats, not for a
    /// hot path).
    pub(crate) fn len(&self) -> usize {
        self.seen.values().map(|l| l.as_slice().len()).sum()
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
        assert!(d.get(&(1, 5)).is_some_and(|h| h.above.is_none()));
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
        let mid: Vec<_> = d.between(Some(&(1, 10)), Some(&(2, 10))).collect();
        assert_eq!(mid, vec![((1, 11), 1), ((2, 10), 1)]);
    }

    /// The layout before one map entry per origin: one entry per (origin, incarnation),
    /// the oldest incarnations forgotten the same way. The heads share [`Head`]'s code.
    #[derive(Default)]
    struct Flat {
        seen: BTreeMap<Key<u32>, Head>,
    }

    impl Flat {
        fn check(&self, max: usize, o: u32, i: u64, seq: u64) -> Seen {
            match self.seen.get(&(o, i)) {
                Some(h) if h.contains(seq) => Seen::Yes,
                Some(_) => Seen::No,
                None => {
                    let kept: Vec<u64> = self.seen.range((o, 0)..=(o, u64::MAX)).map(|(k, _)| k.1).collect();
                    match kept.first() {
                        Some(oldest) if i < *oldest && kept.len() >= max => Seen::Stale,
                        _ => Seen::No,
                    }
                }
            }
        }

        fn head_mut(&mut self, max: usize, key: Key<u32>) -> &mut Head {
            if !self.seen.contains_key(&key) {
                let kept: Vec<u64> = self.seen.range((key.0, 0)..=(key.0, u64::MAX)).map(|(k, _)| k.1).collect();
                let excess = (kept.len() + 1).saturating_sub(max);
                for oldest in &kept[..excess] {
                    self.seen.remove(&(key.0, *oldest));
                }
            }
            self.seen.entry(key).or_default()
        }
    }

    proptest::proptest! {
        /// Checks, marks and raises on a few origins and incarnations give the same
        /// answers, heads, pieces and ranges as one map entry per (origin, incarnation).
        #[test]
        fn the_per_origin_layout_answers_as_one_entry_per_incarnation(
            max in 1usize..4,
            ops in proptest::collection::vec((0u8..3, 0u32..4, 0u64..5, 0u64..12), 1..200),
            after in proptest::option::of((0u32..4, 0u64..5)),
            upto in proptest::option::of((0u32..4, 0u64..5)),
        ) {
            let mut v = Versions::new(3, max);
            let mut flat = Flat::default();
            for (op, o, i, seq) in ops {
                proptest::prop_assert_eq!(v.check(&o, i, seq), flat.check(max, o, i, seq));
                match op {
                    0 => {}
                    1 if v.check(&o, i, seq) == Seen::No => {
                        proptest::prop_assert_eq!(v.mark(&o, i, seq), flat.head_mut(max, (o, i)).mark(seq, 3));
                    }
                    1 => {}
                    _ => {
                        v.raise(&(o, i), seq);
                        flat.head_mut(max, (o, i)).raise(seq);
                    }
                }
                proptest::prop_assert_eq!(v.len(), flat.seen.len());
                proptest::prop_assert_eq!(v.head(&(o, i)), flat.seen.get(&(o, i)).map_or(0, |h| h.watermark));
            }
            let all: Vec<(Key<u32>, u64)> = flat.seen.iter().map(|(k, h)| (*k, h.watermark)).collect();
            proptest::prop_assert_eq!(v.piece(None, usize::MAX), all.clone());
            let after_piece: Vec<_> = all.iter().filter(|(k, _)| after.is_none_or(|a| *k > a)).take(3).cloned().collect();
            proptest::prop_assert_eq!(v.piece(after.as_ref(), 3), after_piece);
            let empty = matches!((after, upto), (Some(a), Some(u)) if a >= u);
            let range: Vec<_> = all
                .iter()
                .filter(|(k, _)| !empty && after.is_none_or(|a| *k > a) && upto.is_none_or(|u| *k <= u))
                .cloned()
                .collect();
            proptest::prop_assert_eq!(v.between(after.as_ref(), upto.as_ref()).collect::<Vec<_>>(), range);
        }
    }
}
