//! Builds the application (connections, listener, consumer) and runs it
//! until a signal or a cancellation stops it, then waits for the consumer
//! to finish its batch.

use std::net::SocketAddr;

use platform::{health::Dependencies, server::HttpServer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::BookCache, config::Settings, consumer::Consumer, lookup::BookLookup,
    projection::ReadModel, projector::Projector, routes, state::AppState, summary::AuthorSummaries,
};

/// Reads take no body; this only bounds what a client may send anyway.
const BODY_LIMIT: usize = 16 * 1024;

pub struct Application {
    server: HttpServer,
    consumer: Consumer,
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
        let summaries = AuthorSummaries::new(&database);

        let redis_client = platform::connect::redis_client(&settings.redis_url)?;
        let redis = platform::connect::redis_manager(&redis_client, settings.dependency_timeout)?;
        let cache = BookCache::new(
            redis.clone(),
            settings.cache_prefix.clone(),
            settings.cache_ttl,
        );

        let (batches, batches_seen) = watch::channel(0);
        let consumer = Consumer {
            client: redis_client,
            projector: Projector {
                read_model: read_model.clone(),
                summaries: summaries.clone(),
                cache: cache.clone(),
            },
            batches,
            stream: settings.stream.clone(),
            group: settings.group.clone(),
            name: settings.consumer.clone(),
            dead_letter_stream: settings.dead_letter_stream.clone(),
            batch: settings.batch,
            block: settings.block,
            timeout: settings.dependency_timeout,
            claim_idle: settings.claim_idle,
            max_deliveries: settings.max_deliveries.max(1),
            trim_interval: settings.trim_interval,
        };
        let state = AppState {
            lookup: BookLookup {
                cache,
                read_model: read_model.clone(),
            },
            read_model,
            summaries,
            batches: batches_seen,
            read_your_writes_timeout: settings.read_your_writes_timeout,
            dependencies: Dependencies {
                mongo: database,
                redis,
            },
        };
        let router = routes::router(state, BODY_LIMIT);
        let server = HttpServer::bind(
            SocketAddr::new(settings.host, settings.port),
            router,
            settings.shutdown_timeout,
        )
        .await?;
        Ok(Self { server, consumer })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Cancelling this token stops the application as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.server.shutdown_token()
    }

    /// Serves until SIGINT/SIGTERM or the shutdown token, then finishes
    /// in-flight requests and the consumer's current batch.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let consumer = self.consumer;
        self.server
            .run("query-service", |shutdown| consumer.run(shutdown))
            .await
    }
}
