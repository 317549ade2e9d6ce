//! Builds the application (connections, listener, consumer) and runs it
//! until a signal or a cancellation stops it, then waits for the consumer
//! to finish its batch.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Settings, consumer::Consumer, projection::ReadModel, routes, state::AppState};

pub struct Application {
    listener: TcpListener,
    router: Router,
    consumer: Consumer,
    shutdown: CancellationToken,
}

impl Application {
    /// Prepares MongoDB and Redis clients (both connect lazily and
    /// reconnect by themselves) and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let client = platform::connect::mongo_client(
            &settings.mongo_url,
            "query-service",
            settings.dependency_timeout,
        )
        .await?;
        let database = client.database(&settings.database);
        let read_model = ReadModel::new(&database);

        let redis_client = platform::connect::redis_client(&settings.redis_url)?;
        let redis = platform::connect::redis_manager(&redis_client, settings.dependency_timeout)?;

        let consumer = Consumer {
            client: redis_client,
            read_model: read_model.clone(),
            stream: settings.stream.clone(),
            group: settings.group.clone(),
            name: settings.consumer.clone(),
            dead_letter_stream: settings.dead_letter_stream.clone(),
            batch: settings.batch,
            block: settings.block,
            timeout: settings.dependency_timeout,
        };
        let state = AppState {
            read_model,
            database,
            redis,
        };
        let router = routes::router(state, 16 * 1024);
        let address = SocketAddr::new(settings.host, settings.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Self {
            listener,
            router,
            consumer,
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
    /// in-flight requests and the consumer's current batch.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            consumer,
            shutdown,
        } = self;
        tracing::info!(address = %listener.local_addr()?, "query-service listening");
        let tasks = TaskTracker::new();
        tasks.spawn(platform::shutdown::cancel_on_signal(shutdown.clone()));
        tasks.spawn(consumer.run(shutdown.clone()));
        tasks.close();

        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        tasks.wait().await;
        served.context("HTTP server failed")
    }
}
