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
    shutdown: CancellationToken,
    grace: Duration,
}

impl HttpServer {
    /// Binds `address` (port 0 picks a free port). Once told to stop, the
    /// server gives in-flight requests and background work `grace` to
    /// finish.
    pub async fn bind(
        address: SocketAddr,
        router: Router,
        grace: Duration,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Self {
            listener,
            router,
            shutdown: CancellationToken::new(),
            grace,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Cancelling this token stops the server as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves, running `background` beside the server with the shutdown
    /// token, until a signal or the token stops both; in-flight requests and
    /// `background` then have the grace period to finish.
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
            shutdown,
            grace,
        } = self;
        tracing::info!(address = %listener.local_addr()?, "{name} listening");
        let tasks = TaskTracker::new();
        tasks.spawn(crate::shutdown::cancel_on_signal(shutdown.clone()));
        tasks.spawn(background(shutdown.clone()));
        tasks.close();

        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        // The grace period starts when the stop is asked for.
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
