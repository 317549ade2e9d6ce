//! Builds the application (connections, indexes, listener, relay) and runs
//! it until a signal or a cancellation stops it, then waits for the relay.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use platform::{
    health::Dependencies,
    metrics::Scrape,
    server::{HttpServer, Stop},
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    metrics::OutboxBacklog,
    relay::Relay,
    routes,
    state::{AppState, Shared},
    store::BookStore,
};

/// A request may take this many dependency timeouts before it gets 503.
const REQUEST_DEADLINE_FACTOR: u32 = 3;

pub struct Application {
    server: HttpServer,
    relay: Relay,
}

impl Application {
    /// Connects to MongoDB (which must answer within the dependency timeout,
    /// to create the indexes) and prepares Redis (connected on first use, so
    /// writes are accepted while Redis is down), then binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        crate::metrics::install();
        let client = platform::connect::mongo_client(
            &settings.mongo_url,
            "command-service",
            settings.dependency_timeout,
            settings.mongo_command_metrics,
        )
        .await?;
        let database = client.database(&settings.database);
        let store = BookStore::new(&database);
        store
            .ensure_indexes()
            .await
            .with_context(|| format!("cannot reach MongoDB at {}", settings.mongo_url))?;

        let redis_client = platform::RedisClient::open(&settings.redis_url)?;
        let redis = redis_client.shared(settings.dependency_timeout)?;

        let (relay, outbox) = Relay::new(
            store.clone(),
            redis.clone(),
            &settings,
            redis_client.is_cluster(),
        )?;
        let stop = Stop {
            token: CancellationToken::new(),
            drain: settings.shutdown_drain,
            grace: settings.shutdown_timeout,
        };
        let state = AppState::new(Shared {
            scrape: Scrape::new(OutboxBacklog(store.clone())),
            store,
            outbox,
            dependencies: Dependencies {
                mongo: database,
                redis,
                workers: Vec::new(),
                stopping: stop.token.clone(),
            },
            query_base_url: Arc::from(settings.query_base_url.as_str()),
            api_tokens: settings.api_tokens.clone(),
        });
        if settings.api_tokens.is_empty() {
            tracing::warn!(
                "API_TOKENS is empty: every command will be refused with 401; set API_TOKENS to accept writes"
            );
        }
        // A command is a few MongoDB round trips, each bounded by the driver
        // when the server is unreachable; this bounds one that hangs.
        let router = routes::router(
            state,
            settings.body_limit,
            settings.dependency_timeout * REQUEST_DEADLINE_FACTOR,
        );
        let server = HttpServer::bind(SocketAddr::new(settings.host, settings.port), router, stop)
            .await?
            .with_limits(settings.client_limits);
        Ok(Self { server, relay })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Cancelling this token stops the application as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.server.shutdown_token()
    }

    /// Serves until SIGINT/SIGTERM or the shutdown token, then finishes
    /// in-flight requests and lets the relay publish what it holds.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let relay = self.relay;
        self.server
            .run("command-service", |shutdown| relay.run(shutdown))
            .await
    }
}
