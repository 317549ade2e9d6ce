//! Builds the application (connections, indexes, listener, relay) and runs
//! it until a signal or a cancellation stops it, then waits for the relay.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Settings, relay::Relay, routes, state::AppState, store::BookStore};

pub struct Application {
    listener: TcpListener,
    router: Router,
    relay: Relay,
    shutdown: CancellationToken,
}

impl Application {
    /// Connects to MongoDB (which must answer within the dependency timeout,
    /// to create the indexes) and prepares Redis (connected on first use, so
    /// writes are accepted while Redis is down), then binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let client = platform::connect::mongo_client(
            &settings.mongo_url,
            "command-service",
            settings.dependency_timeout,
        )
        .await?;
        let database = client.database(&settings.database);
        let store = BookStore::new(&database);
        store
            .ensure_indexes()
            .await
            .with_context(|| format!("cannot reach MongoDB at {}", settings.mongo_url))?;

        let redis_client = platform::connect::redis_client(&settings.redis_url)?;
        let redis = platform::connect::redis_manager(&redis_client, settings.dependency_timeout)?;

        let (relay, outbox) = Relay::new(
            store.clone(),
            redis.clone(),
            settings.stream.clone(),
            settings.outbox_sweep_interval,
        );
        let state = AppState {
            store,
            outbox,
            database,
            redis,
            query_base_url: Arc::from(settings.query_base_url.as_str()),
        };
        let router = routes::router(state, settings.body_limit);
        let address = SocketAddr::new(settings.host, settings.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Self {
            listener,
            router,
            relay,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Cancelling this token stops the application as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGINT/SIGTERM or the shutdown token, then finishes
    /// in-flight requests and lets the relay publish what it holds.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            relay,
            shutdown,
        } = self;
        tracing::info!(address = %listener.local_addr()?, "command-service listening");
        let tasks = TaskTracker::new();
        tasks.spawn(platform::shutdown::cancel_on_signal(shutdown.clone()));
        tasks.spawn(relay.run(shutdown.clone()));
        tasks.close();

        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        tasks.wait().await;
        served.context("HTTP server failed")
    }
}
