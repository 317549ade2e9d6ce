//! Builds the application (connections, listener, consumer) and runs it
//! until a signal or a cancellation stops it, then waits for the consumer
//! to finish its batch.

use std::net::SocketAddr;

use platform::{health::Dependencies, server::HttpServer};
use tokio_util::sync::CancellationToken;

use crate::{config::Settings, consumer::Consumer, projection::ReadModel, routes, state::AppState};

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
            dependencies: Dependencies {
                mongo: database,
                redis,
            },
        };
        let router = routes::router(state, BODY_LIMIT);
        let server =
            HttpServer::bind(SocketAddr::new(settings.host, settings.port), router).await?;
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
