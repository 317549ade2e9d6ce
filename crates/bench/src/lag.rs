//! Propagation lag: from a `201` on the command side to the query side
//! serving that version. The probe asks `GET /books/{id}?minVersion=1` as
//! soon as the `201` arrives; the query service answers once its consumer
//! applied the event, so the figure includes one loopback round trip.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::{cost::Cost, load::new_histogram, targets::System};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Lag {
    /// Writes per second asked for (0: as fast as the system takes them).
    pub(crate) target_rate: f64,
    /// Writes per second the system took.
    pub(crate) achieved_rate: f64,
    pub(crate) samples: u64,
    pub(crate) errors: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// The first failed probe's error, if any.
    pub(crate) first_error: Option<String>,
    /// What each service spent per write (and its probe's reads).
    pub(crate) cost: Option<Cost>,
}

impl Lag {
    fn from(
        target_rate: f64,
        achieved_rate: f64,
        histogram: &Histogram<u64>,
        (errors, first_error): (u64, Option<String>),
    ) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            target_rate,
            achieved_rate,
            samples: histogram.len(),
            errors,
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
            first_error,
            cost: None,
        }
    }
}

/// One write and its lag in microseconds.
async fn probe(system: &System, n: u64) -> anyhow::Result<u64> {
    let (id, version) = system.create(&format!("Lag probe {n}")).await?;
    let acknowledged = Instant::now();
    system.await_version(&id, version).await?;
    Ok(acknowledged.elapsed().as_micros().max(1) as u64)
}

/// Writes at `rate` per second for `duration` (open loop: a write is sent
/// on schedule whether or not earlier ones answered), each probed.
pub(crate) async fn steady(system: &System, rate: f64, duration: Duration) -> Lag {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut probes = JoinSet::new();
    let mut n = 0;
    while started.elapsed() < duration {
        ticker.tick().await;
        let system = system.clone();
        probes.spawn(async move { probe(&system, n).await });
        n += 1;
    }
    let sent = started.elapsed();
    collect(rate, n as f64 / sent.as_secs_f64(), probes).await
}

/// Writes from `writers` closed-loop workers for `duration`, every write
/// probed: the lag when the write side is saturated.
pub(crate) async fn saturated(system: &System, writers: usize, duration: Duration) -> Lag {
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..writers {
        let system = system.clone();
        workers.spawn(async move {
            let mut histogram = new_histogram();
            let mut errors = Errors::default();
            let mut n = 0u64;
            while started.elapsed() < duration {
                match probe(&system, (worker as u64) << 32 | n).await {
                    Ok(micros) => histogram.saturating_record(micros),
                    Err(error) => errors.add(error),
                }
                n += 1;
            }
            (histogram, errors)
        });
    }
    let mut histogram = new_histogram();
    let mut errors = Errors::default();
    while let Some(done) = workers.join_next().await {
        let (h, e) = done.expect("a lag worker panicked");
        histogram.add(h).expect("same bounds");
        errors.merge(e);
    }
    let rate = (histogram.len() + errors.count) as f64 / started.elapsed().as_secs_f64();
    Lag::from(0.0, rate, &histogram, errors.into_parts())
}

/// Failed probes: how many, and the first one's error.
#[derive(Default)]
struct Errors {
    count: u64,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, error: anyhow::Error) {
        self.count += 1;
        self.first.get_or_insert_with(|| format!("{error:#}"));
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    fn into_parts(self) -> (u64, Option<String>) {
        (self.count, self.first)
    }
}

async fn collect(target: f64, achieved: f64, mut probes: JoinSet<anyhow::Result<u64>>) -> Lag {
    let mut histogram = new_histogram();
    let mut errors = Errors::default();
    while let Some(done) = probes.join_next().await {
        match done.expect("a lag probe panicked") {
            Ok(micros) => histogram.saturating_record(micros),
            Err(error) => errors.add(error),
        }
    }
    Lag::from(target, achieved, &histogram, errors.into_parts())
}
