//! The HTTP server of a service and the background work that lives as long
//! as it: both stop on SIGINT/SIGTERM or when the shutdown token is
//! cancelled, and the server returns only once the background work has
//! finished.

use std::{future::Future, net::SocketAddr};

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
}

impl HttpServer {
    /// Binds `address` (port 0 picks a free port).
    pub async fn bind(address: SocketAddr, router: Router) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Self {
            listener,
            router,
            shutdown: CancellationToken::new(),
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
    /// token, until a signal or the token stops both; in-flight requests are
    /// finished and `background` is awaited before returning.
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
        } = self;
        tracing::info!(address = %listener.local_addr()?, "{name} listening");
        let tasks = TaskTracker::new();
        tasks.spawn(crate::shutdown::cancel_on_signal(shutdown.clone()));
        tasks.spawn(background(shutdown.clone()));
        tasks.close();

        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        tasks.wait().await;
        served.context("HTTP server failed")
    }
}
