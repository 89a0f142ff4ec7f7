//! φ-accrual failure detector (Hayashibara, Défago, Yared, Katayama, SRDS 2004).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Inter-arrival statistics of one peer's messages and the suspicion level φ derived
/// from them: φ = −log10(P(no message for this long | the peer is alive)), with the
/// inter-arrival time modelled as a normal distribution (window of recent samples).
#[derive(Clone, Debug)]
pub struct PhiAccrual {
    last: Instant,
    window: usize,
    samples: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl PhiAccrual {
    /// A detector for a link that just came up at `now`, seeded with one sample equal to
    /// the expected heartbeat interval so that φ is defined from the start.
    pub fn new(now: Instant, expected_interval: Duration, window: usize) -> Self {
        let mut d = Self { last: now, window: window.max(1), samples: VecDeque::new(), sum: 0.0, sum_sq: 0.0 };
        d.push(expected_interval.as_secs_f64() * 1e3);
        d
    }

    /// Record that something arrived from the peer at `now`.
    pub fn heard(&mut self, now: Instant) {
        let ms = now.saturating_duration_since(self.last).as_secs_f64() * 1e3;
        self.last = now;
        self.push(ms);
    }

    fn push(&mut self, ms: f64) {
        if self.samples.len() == self.window
            && let Some(old) = self.samples.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.samples.push_back(ms);
        self.sum += ms;
        self.sum_sq += ms * ms;
    }

    /// φ at `now`. `min_std_dev` floors the standard deviation; `acceptable_pause` is
    /// added to the mean (both guard against stalls on loopback, where variance is ~0).
    pub fn phi(&self, now: Instant, min_std_dev: Duration, acceptable_pause: Duration) -> f64 {
        let n = self.samples.len().max(1) as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let std = var.sqrt().max(min_std_dev.as_secs_f64() * 1e3).max(1e-3);
        let mean = mean + acceptable_pause.as_secs_f64() * 1e3;
        let t = now.saturating_duration_since(self.last).as_secs_f64() * 1e3;
        // Logistic approximation of the normal CDF (as in Akka / Cassandra).
        let y = (t - mean) / std;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p_later = if t > mean { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
        -p_later.max(f64::MIN_POSITIVE).log10()
    }
}
