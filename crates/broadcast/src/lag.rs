//! The adaptive Graft timer 1: how long the tree's payload trails a message's first IHave
//! at this node.
//!
//! Plumtree (§3.6) arms a fixed timer when an IHave announces a message not yet received
//! and grafts the announcer when it expires. A fixed timer is right while the tree's delay
//! is about the link latency; once queues form along the tree (a busy machine, a slow
//! uplink) the payload trails the IHave of a shorter, idle lazy path by more than the
//! timer, every such message is grafted and arrives twice, and the Prunes that follow
//! reshape the tree, which queues elsewhere: the tree thrashes. TCP met the same problem
//! with its retransmission timer, and this module answers it the same way: RFC 6298's
//! smoothed estimate and variation, here of the *lag* between a message's first IHave and
//! its payload, and a wait of `srtt + 4 × rttvar`, clamped to
//! [`Config::graft_timeout_1`](crate::Config::graft_timeout_1) below and
//! [`Config::graft_timeout_max`](crate::Config::graft_timeout_max) above.
//!
//! Samples, by Karn's rule (RFC 6298 §5): a payload that came before the timer fired is a
//! sample; one that came after a Graft from a neighbour *not* grafted is a sample too (the
//! tree was late, not broken: the timer was too short), and so is the tree's copy arriving
//! as a duplicate after the grafted one; the grafted neighbour's answer is not (its lag
//! measures the repair, not the tree).

use std::time::Duration;

/// RFC 6298 §2: α = 1/8, β = 1/4, K = 4.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lag {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl Lag {
    /// One sample: the lag from a message's first IHave to its payload.
    pub(crate) fn sample(&mut self, lag: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(lag);
                self.rttvar = lag / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(lag);
                self.rttvar = (self.rttvar.saturating_mul(3) + diff) / 4;
                self.srtt = Some((srtt.saturating_mul(7) + lag) / 8);
            }
        }
    }

    /// The wait after a first IHave: `srtt + 4 × rttvar` within `[floor, ceiling]`; the
    /// floor before the first sample (or when `ceiling ≤ floor`, a fixed timer).
    pub(crate) fn timeout(&self, floor: Duration, ceiling: Duration) -> Duration {
        match self.srtt {
            Some(srtt) if ceiling > floor => (srtt + self.rttvar.saturating_mul(4)).clamp(floor, ceiling),
            _ => floor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(80);
    const CEILING: Duration = Duration::from_millis(500);

    #[test]
    fn the_floor_holds_until_lags_approach_it() {
        let mut l = Lag::default();
        assert_eq!(l.timeout(FLOOR, CEILING), FLOOR);
        for _ in 0..50 {
            l.sample(Duration::from_millis(3));
        }
        assert_eq!(l.timeout(FLOOR, CEILING), FLOOR);
    }

    #[test]
    fn queueing_raises_the_wait_to_the_ceiling_and_it_comes_back_down() {
        let mut l = Lag::default();
        for _ in 0..20 {
            l.sample(Duration::from_millis(120));
        }
        let t = l.timeout(FLOOR, CEILING);
        assert!(t > Duration::from_millis(120) && t < Duration::from_millis(200), "{t:?}");
        l.sample(Duration::from_secs(10));
        assert_eq!(l.timeout(FLOOR, CEILING), CEILING);
        for _ in 0..100 {
            l.sample(Duration::from_millis(2));
        }
        assert_eq!(l.timeout(FLOOR, CEILING), FLOOR);
    }

    #[test]
    fn a_ceiling_at_the_floor_is_the_papers_fixed_timer() {
        let mut l = Lag::default();
        l.sample(Duration::from_secs(1));
        assert_eq!(l.timeout(FLOOR, FLOOR), FLOOR);
        assert_eq!(l.timeout(FLOOR, Duration::ZERO), FLOOR);
    }
}
