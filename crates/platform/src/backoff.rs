//! How long to wait before trying again: exponential, with full jitter, so
//! that writers who collided do not collide again in step.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

/// A wait drawn uniformly from zero to `base * 2^attempt`, capped at `max`
/// (`attempt` counts from 0).
pub fn jittered(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.min(16)).min(max);
    // A fresh std hasher is seeded at random: enough for spreading retries.
    let random = RandomState::new().build_hasher().finish();
    ceiling.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_under_the_doubling_ceiling_and_the_cap() {
        let (base, max) = (Duration::from_millis(2), Duration::from_millis(50));
        for attempt in 0..20 {
            let ceiling = (base * 2u32.pow(attempt.min(16))).min(max);
            for _ in 0..50 {
                assert!(jittered(attempt, base, max) <= ceiling);
            }
        }
    }

    #[test]
    fn waits_are_spread_out() {
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| jittered(5, Duration::from_millis(1), Duration::from_secs(1)))
            .collect();
        assert!(waits.len() > 10, "{waits:?}");
    }
}
