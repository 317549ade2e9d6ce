//! The HTTP server of a service and the background work that lives as long
//! as it: both stop on SIGINT/SIGTERM or when the shutdown token is
//! cancelled. The server stops accepting, lets in-flight requests and the
//! background work finish, and returns once they have, or once the grace
//! period is over, whichever comes first.

use std::{
    future::{Future, IntoFuture},
    net::SocketAddr,
    sync::OnceLock,
    time::Duration,
};

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    stop: Stop,
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
        })
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

        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        // The grace period starts when the drain ends.
        let stop_asked = OnceLock::new();
        let grace_over = async {
            shutdown.cancelled().await;
            let _ = stop_asked.set(tokio::time::Instant::now());
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            served = served => served.context("HTTP server failed"),
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
