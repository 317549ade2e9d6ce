//! The HTTP server of a service and the background work that lives as long
//! as it: both stop on SIGINT/SIGTERM or when the shutdown token is
//! cancelled. The server stops accepting, lets in-flight requests and the
//! background work finish, and returns once they have, or once the grace
//! period is over, whichever comes first. Each connection is held to the
//! server's `ClientLimits`.

use std::{future::Future, net::SocketAddr, sync::Arc, sync::OnceLock, time::Duration};

use anyhow::Context;
use axum::{body::Body, Router};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::limits::{self, ClientLimits, Clocked, ConnectionClock};

pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    stop: Stop,
    limits: ClientLimits,
}

/// How a server stops.
#[derive(Debug, Clone)]
pub struct Stop {
    /// Cancelled by SIGINT/SIGTERM, or by whoever holds it: the stop
    /// starts.
    pub token: CancellationToken,
    /// How long the server keeps serving after the stop starts, readiness
    /// answering 503, so load balancers take the instance out first.
    pub drain: Duration,
    /// How long in-flight requests and background work then have to finish.
    pub grace: Duration,
}

impl HttpServer {
    /// Binds `address` (port 0 picks a free port).
    pub async fn bind(address: SocketAddr, router: Router, stop: Stop) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Self {
            listener,
            router,
            stop,
            limits: ClientLimits::default(),
        })
    }

    /// Holds clients to `limits` rather than the defaults.
    pub fn with_limits(self, limits: ClientLimits) -> Self {
        Self { limits, ..self }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Cancelling this token stops the server as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop.token.clone()
    }

    /// Serves, running `background` (and the metrics' upkeep) beside the
    /// server, until a signal or the token starts the stop; after the drain period, the server stops
    /// accepting, and in-flight requests and `background` (whose token is
    /// cancelled then) have the grace period to finish.
    pub async fn run<F>(
        self,
        name: &str,
        background: impl FnOnce(CancellationToken) -> F,
    ) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Self {
            listener,
            router,
            stop:
                Stop {
                    token,
                    drain,
                    grace,
                },
            limits,
        } = self;
        tracing::info!(address = %listener.local_addr()?, "{name} listening");
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(crate::shutdown::cancel_on_signal(token.clone()));
        tasks.spawn({
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    () = token.cancelled() => {}
                    // Stopped for another reason (the server failed).
                    () = shutdown.cancelled() => return,
                }
                if !drain.is_zero() {
                    tracing::info!(?drain, "stopping: draining before refusing connections");
                    tokio::time::sleep(drain).await;
                }
                shutdown.cancel();
            }
        });
        tasks.spawn(background(shutdown.clone()));
        tasks.spawn(crate::metrics::upkeep(shutdown.clone()));
        tasks.close();

        let served = serve(listener, router, limits, shutdown.clone());
        // The grace period starts when the drain ends.
        let stop_asked = OnceLock::new();
        let grace_over = async {
            shutdown.cancelled().await;
            let _ = stop_asked.set(tokio::time::Instant::now());
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            () = served => Ok(()),
            () = grace_over => {
                tracing::warn!(?grace, "in-flight requests did not finish in time; stopping anyway");
                Ok(())
            }
        };
        shutdown.cancel();
        // What is left of the grace period goes to the background work (a
        // consumer finishing its batch, the relay its publication); what it
        // cannot finish is redelivered or republished after a restart.
        let deadline = *stop_asked.get_or_init(tokio::time::Instant::now) + grace;
        if tokio::time::timeout_at(deadline, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "background work did not stop in time; stopping anyway"
            );
        }
        served
    }
}

/// Accepts connections until `shutdown`, each held to `limits`, then lets
/// the requests in flight finish.
async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ClientLimits,
    shutdown: CancellationToken,
) {
    let router = router
        .layer(axum::middleware::from_fn_with_state(
            limits.body_read,
            limits::body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(Semaphore::new(limits.max_in_flight)),
            limits::shed_load,
        ));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The connection's clock bounds request heads; hyper's own timer would
    // also run while a kept-alive connection waits, as a second idle limit.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    let connections = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let clock = ConnectionClock::new(limits);
        let io = TokioIo::new(Clocked::new(stream, clock.clone()));
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let in_flight = clock.request();
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(Body::new)).await;
                    drop(in_flight);
                    response
                }
            });
        let connection = connections.watch(
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}
