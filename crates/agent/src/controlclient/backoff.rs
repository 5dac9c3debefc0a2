//! Reconnect delays, sans-IO: exponential growth with "equal jitter" up to a cap.
//!
//! The client task asks [`Backoff::next_delay`] for the wait before each retry, passing a random
//! number, and calls [`Backoff::reset`] after a session that worked. Keeping randomness and time
//! outside makes the schedule testable.

use std::time::Duration;

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays start near `base`, double per failure and never exceed `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// Forgets earlier failures.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The wait before the next attempt. `unit` in `[0, 1)` picks the jitter: the delay lies in
    /// `[d/2, d)` where `d = min(max, base * 2^failures)`, so clients that lost the server at
    /// the same moment spread out instead of returning in lockstep.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let exp = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let d = self.base.saturating_mul(1u32 << exp).min(self.max);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        d / 2 + d.mul_f64(unit / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let lows: Vec<u128> = (0..10).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(
            lows,
            vec![250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000]
        );
        let high = b.next_delay(0.999).as_millis();
        assert!((29_000..30_000).contains(&high), "{high}");
        assert_eq!(b.failures(), 11);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(250));
        // Garbage jitter input cannot break the bound.
        assert!(b.next_delay(f64::NAN) <= Duration::from_secs(30));
        assert!(b.next_delay(7.0) <= Duration::from_secs(30));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_delay(0.5) <= Duration::from_secs(30));
        }
    }
}
