//! The one retry policy of the workspace: waits that double from `base` up
//! to `max`, optionally with full jitter so that writers who collided do
//! not collide again in step.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

/// Waits between tries of one operation; `reset` once it succeeds.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Reconnecting to MongoDB or Redis, retrying a background step.
    pub const DEPENDENCY: Backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30));

    pub const fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// The wait before the next try: `base * 2^failures`, capped at `max`.
    pub fn next_delay(&mut self) -> Duration {
        let wait = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// Like `next_delay`, drawn uniformly from zero to that wait.
    pub fn next_jittered(&mut self) -> Duration {
        // A fresh std hasher is seeded at random: enough for spreading retries.
        let random = RandomState::new().build_hasher().finish();
        self.next_delay()
            .mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(1 << self.failures.min(16))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jittered_waits_stay_under_the_ceiling_and_are_spread_out() {
        let mut waits = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_secs(1));
            for attempt in 0..20u32 {
                let ceiling = (Duration::from_millis(1) * 2u32.pow(attempt.min(16)))
                    .min(Duration::from_secs(1));
                let wait = backoff.next_jittered();
                assert!(wait <= ceiling);
                if attempt == 5 {
                    waits.insert(wait);
                }
            }
        }
        assert!(waits.len() > 10, "{waits:?}");
    }
}
