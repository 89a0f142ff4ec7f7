//! The protocol's timers, as a deadline-ordered heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use plumcast_transport::PeerInfo;
use tokio::time::Instant;

use crate::proto;

type Timer = proto::Timer<PeerInfo>;

/// Pending timers, earliest first; two timers due at the same instant fire in the order
/// they were set. Stale timers are not removed: the protocol ignores them when they fire.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    set: u64,
}

impl Timers {
    /// Fire `timer` at or after `at`.
    pub(crate) fn set(&mut self, at: Instant, timer: Timer) {
        self.set += 1;
        self.heap.push(Reverse((at, self.set, timer)));
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The earliest timer due at `now`, removed.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse((_, _, t))| t)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::{broadcast, membership};

    #[test]
    fn due_timers_come_out_earliest_first_then_in_the_order_set() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set(t0 + Duration::from_millis(20), proto::Timer::Membership(membership::Timer::Shuffle));
        t.set(t0 + Duration::from_millis(10), proto::Timer::Broadcast(broadcast::Timer::IHaveFlush));
        t.set(t0 + Duration::from_millis(10), proto::Timer::Membership(membership::Timer::Heartbeat));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(10)));
        assert!(t.pop_due(t0).is_none(), "nothing due yet");
        let due: Vec<Timer> = std::iter::from_fn(|| t.pop_due(t0 + Duration::from_millis(15))).collect();
        assert_eq!(
            due,
            vec![
                proto::Timer::Broadcast(broadcast::Timer::IHaveFlush),
                proto::Timer::Membership(membership::Timer::Heartbeat)
            ]
        );
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(20)));
    }
}
