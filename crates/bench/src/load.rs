//! The load generator: closed-loop workers that run one operation as fast
//! as it answers for a fixed time, each recording its latencies in an HDR
//! histogram, merged at the end. Every figure of a run (the system's routes
//! and their floors) comes from this same loop, so their ratios compare
//! like with like.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cost::Cost;

/// One operation, given the worker's number and its iteration.
pub(crate) type Operation = Arc<
    dyn Fn(usize, u64) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync,
>;

/// Wraps an async closure as an `Operation`.
pub(crate) fn operation<F, Fut>(f: F) -> Operation
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |worker, iteration| Box::pin(f(worker, iteration)))
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Measurement {
    pub(crate) concurrency: usize,
    /// Successful operations after the warm-up.
    pub(crate) requests: u64,
    /// Every operation sent, the warm-up's and the failed ones included.
    pub(crate) sent: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) throughput: f64,
    /// Latencies of successful operations, in milliseconds.
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// The first error seen, to tell a broken run from a slow one.
    pub(crate) first_error: Option<String>,
    /// What each service spent per operation sent, for the system's own
    /// routes (not the floors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cost: Option<Cost>,
}

impl Measurement {
    pub(crate) fn from_histogram(
        concurrency: usize,
        histogram: &Histogram<u64>,
        (sent, errors): (u64, u64),
        elapsed: Duration,
        first_error: Option<String>,
    ) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let requests = histogram.len();
        Self {
            concurrency,
            requests,
            sent,
            errors,
            seconds: elapsed.as_secs_f64(),
            throughput: requests as f64 / elapsed.as_secs_f64(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
            first_error,
            cost: None,
        }
    }
}

/// A histogram of latencies in microseconds, from 1 µs to a minute.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `op` from `concurrency` workers for `duration` after a short
/// warm-up that is not measured.
pub(crate) async fn closed_loop(
    op: &Operation,
    concurrency: usize,
    duration: Duration,
) -> Measurement {
    let warm_up = (duration / 10).min(Duration::from_millis(500));
    let start = Instant::now();
    let measure_from = start + warm_up;
    let end = measure_from + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                let mut errors = 0u64;
                let mut first_error = None;
                let mut iteration = 0u64;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let outcome = op(worker, iteration).await;
                    iteration += 1;
                    if began < measure_from {
                        continue;
                    }
                    match outcome {
                        Ok(()) => {
                            let micros = began.elapsed().as_micros().max(1) as u64;
                            histogram.saturating_record(micros);
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{error:#}"));
                        }
                    }
                }
                (histogram, iteration, errors, first_error)
            })
        })
        .collect();
    let mut histogram = new_histogram();
    let (mut sent, mut errors) = (0, 0);
    let mut first_error = None;
    for worker in workers {
        let (h, s, e, first) = worker.await.expect("a load worker panicked");
        histogram.add(h).expect("histograms with the same bounds");
        sent += s;
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    Measurement::from_histogram(
        concurrency,
        &histogram,
        (sent, errors),
        elapsed,
        first_error,
    )
}
