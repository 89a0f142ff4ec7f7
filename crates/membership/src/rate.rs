//! Per-peer rate limits on the membership messages a peer can use to make us work or to
//! fill our views: Join, ForwardJoin and Shuffle (GCRA, the virtual-scheduling form of a
//! token bucket: one deadline per peer and kind, no floating point).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// At most `per_second` messages a second on average, `burst` at once. `per_second` 0:
/// no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Sustained rate, messages per second.
    pub per_second: u32,
    /// Messages accepted back to back before the rate applies.
    pub burst: u32,
}

/// Which limit a message counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Join,
    ForwardJoin,
    Shuffle,
}

/// The theoretical arrival time of each (peer, kind)'s next message, for at most `cap`
/// pairs (a peer that makes us forget it starts afresh: memory stays bounded).
#[derive(Clone, Debug)]
pub(crate) struct Limiter<P> {
    next: BTreeMap<(P, Kind), Instant>,
    cap: usize,
}

impl<P: Ord + Clone> Limiter<P> {
    pub(crate) fn new(cap: usize) -> Self {
        Self { next: BTreeMap::new(), cap: cap.max(1) }
    }

    /// Whether `peer` may send one more message of `kind` at `now` under `rate` (and
    /// count it if so).
    pub(crate) fn allow(&mut self, now: Instant, peer: &P, kind: Kind, rate: Rate) -> bool {
        if rate.per_second == 0 {
            return true;
        }
        let every = Duration::from_secs(1) / rate.per_second;
        let tolerance = every.saturating_mul(rate.burst.saturating_sub(1));
        let key = (peer.clone(), kind);
        let tat = self.next.get(&key).copied().map_or(now, |t| t.max(now));
        if tat.saturating_duration_since(now) > tolerance {
            return false;
        }
        if !self.next.contains_key(&key) && self.next.len() >= self.cap {
            // Full: forget the pairs whose limit has run out (they are as if new), then,
            // if none has, the first in key order.
            self.next.retain(|_, t| *t > now);
            if self.next.len() >= self.cap {
                self.next.pop_first();
            }
        }
        self.next.insert(key, tat.checked_add(every).unwrap_or(tat));
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.next.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_per_peer_and_kind() {
        let t0 = Instant::now();
        let mut l = Limiter::new(16);
        let rate = Rate { per_second: 10, burst: 5 };
        let allowed = (0..20).filter(|_| l.allow(t0, &1u32, Kind::Join, rate)).count();
        assert_eq!(allowed, 5, "the burst, all at once");
        assert!(l.allow(t0, &2u32, Kind::Join, rate), "another peer has its own budget");
        assert!(l.allow(t0, &1u32, Kind::Shuffle, rate), "another kind too");
        // One more every 100 ms.
        assert!(!l.allow(t0 + Duration::from_millis(50), &1u32, Kind::Join, rate));
        assert!(l.allow(t0 + Duration::from_millis(100), &1u32, Kind::Join, rate));
        assert!(!l.allow(t0 + Duration::from_millis(150), &1u32, Kind::Join, rate));
        // After a quiet second the burst is back.
        let later = t0 + Duration::from_secs(2);
        assert_eq!((0..20).filter(|_| l.allow(later, &1u32, Kind::Join, rate)).count(), 5);
    }

    #[test]
    fn the_table_is_bounded_by_its_capacity() {
        let t0 = Instant::now();
        let mut l = Limiter::new(100);
        let rate = Rate { per_second: 1, burst: 1 };
        for p in 0..10_000u32 {
            assert!(l.allow(t0, &p, Kind::Join, rate));
            assert!(l.len() <= 100);
        }
    }
}
