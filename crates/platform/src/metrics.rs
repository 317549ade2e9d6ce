//! Prometheus metrics. Everything a service counts as it happens goes to
//! the process's one recorder (the `metrics` facade's global recorder);
//! `GET /metrics` renders it, followed by the values the service reads
//! only when scraped (a backlog, a lag), in the text exposition format.
//!
//! Every request is counted and timed by method, route template (never the
//! raw path, whose ids would make a series per book) and status, except
//! the scrapes themselves; every MongoDB command a client of
//! `connect::mongo_client` sends is counted by command name.

use std::{
    fmt::Write as _,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRef, MatchedPath, Request, State},
    http::{header, HeaderValue, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The media type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// Where the metrics are served.
pub const PATH: &str = "/metrics";

const REQUESTS: &str = "books_http_requests_total";
const REQUEST_DURATION: &str = "books_http_request_duration_seconds";
const MONGODB_COMMANDS: &str = "books_mongodb_commands_total";
const SHED: &str = "books_http_requests_shed_total";
/// The `route` of a request that matched no route (a 404), so that
/// made-up paths cannot each become a series.
const UNMATCHED: &str = "unmatched";

/// Bucket bounds of every histogram, in seconds: from a cached read to a
/// request cut at its deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// How often recorded latencies are folded into their buckets when no
/// scrape does it, so that memory stays bounded without Prometheus.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed as the global one on first use.
pub fn recorder() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::warn!(%error, "another metrics recorder is installed; /metrics will miss what it records");
        }
        metrics::describe_counter!(
            REQUESTS,
            "HTTP requests answered, by method, route template and status"
        );
        metrics::describe_histogram!(
            REQUEST_DURATION,
            "Time to answer an HTTP request, by method, route template and status"
        );
        metrics::describe_counter!(
            SHED,
            "HTTP requests answered 503 at once because the service was handling as many as MAX_CONCURRENT_REQUESTS allows"
        );
        metrics::describe_counter!(
            MONGODB_COMMANDS,
            "MongoDB commands sent, retries included, by command name (insert, find, update, ...; not the handshakes and heartbeats, which are no commands to the driver's monitoring)"
        );
        handle
    })
}

/// Folds recorded latencies into their buckets every few seconds until
/// `shutdown`.
pub async fn upkeep(shutdown: CancellationToken) {
    let recorder = recorder();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(UPKEEP_INTERVAL) => recorder.run_upkeep(),
        }
    }
}

/// Counts and times a request by method, route template and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    if route.as_deref() == Some(PATH) {
        return next.run(request).await;
    }
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_owned()),
        ("route", route.unwrap_or_else(|| UNMATCHED.to_owned())),
        ("status", response.status().as_str().to_owned()),
    ];
    metrics::counter!(REQUESTS, &labels).increment(1);
    metrics::histogram!(REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// A request was shed: answered 503 at once under overload.
pub(crate) fn request_shed() {
    metrics::counter!(SHED).increment(1);
}

/// The driver started a command named `command`: one increment, and the
/// event's own name moved into the label rather than copied.
pub(crate) fn mongodb_command_started(command: String) {
    metrics::counter!(MONGODB_COMMANDS, "command" => command).increment(1);
}

/// The method as a label: clients may send any token, and each would be a
/// new series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One value read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
}

/// What a service reads when it is scraped. These values go straight
/// into the answer rather than into the process-wide recorder: they
/// describe this service instance, and two instances in one process (as in
/// tests) must not overwrite each other's.
pub trait Collector: Send + Sync + 'static {
    /// The values now; one that cannot be read in time is left out.
    fn collect(&self) -> Pin<Box<dyn Future<Output = Vec<Gauge>> + Send + '_>>;
}

/// The `/metrics` route's state: the service's scrape-time collector.
#[derive(Clone)]
pub struct Scrape(Arc<dyn Collector>);

impl Scrape {
    pub fn new(collector: impl Collector) -> Self {
        Self(Arc::new(collector))
    }
}

/// `/metrics` for any state that holds a `Scrape`.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Scrape: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(metrics))
}

/// This service's metrics in the Prometheus text format.
///
/// Requests, events and cache lookups are counted since the process
/// started; backlogs and lags are read at the scrape, each within a short
/// timeout (one that cannot be read is left out).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    responses(
        (status = 200, description = "The metrics, in the Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String),
        crate::openapi::Unexpected,
    )
)]
async fn metrics(State(Scrape(collector)): State<Scrape>) -> Response {
    let mut text = recorder().render();
    for gauge in collector.collect().await {
        write_gauge(&mut text, &gauge);
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response()
}

fn write_gauge(text: &mut String, gauge: &Gauge) {
    let Gauge { name, help, value } = gauge;
    let _ = write!(
        text,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_is_written_with_its_help_and_type() {
        let mut text = String::new();
        write_gauge(
            &mut text,
            &Gauge {
                name: "books_things",
                help: "Things waiting",
                value: 2.5,
            },
        );
        assert_eq!(
            text,
            "# HELP books_things Things waiting\n# TYPE books_things gauge\nbooks_things 2.5\n\n"
        );
    }

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
