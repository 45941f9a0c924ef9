//! Exponential backoff with jitter, for reconnecting and retrying.

use std::time::Duration;

/// First wait after a failure, in milliseconds: short, because a broker that
/// restarts is usually back within a second or two.
const INITIAL_DELAY_MS: u64 = 100;

/// Doubling waits from 100 ms up to a cap, each with ±25 % jitter so that a
/// fleet of workers does not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff whose waits never exceed `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(INITIAL_DELAY_MS).min(max),
            max,
        }
    }

    /// The wait before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = 0.75 + fastrand::f64() * 0.5;
        base.mul_f64(jitter).min(self.max)
    }

    /// Back to the first, short wait (after a success).
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(INITIAL_DELAY_MS).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_secs(1));
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(waits[0] <= Duration::from_millis(125));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
        assert!(waits[9] >= Duration::from_millis(750));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(125));
    }
}
