//! Settings, read once from the environment (see `.env.example`).

use std::{net::IpAddr, time::Duration};

use platform::{env, limits::ClientLimits, RedactedUrl};

use crate::auth::ApiTokens;

#[derive(Debug, Clone)]
pub struct Settings {
    /// What a client may hold of the server (`HTTP_HEADER_READ_TIMEOUT_MS`,
    /// `HTTP_BODY_READ_TIMEOUT_MS`, `HTTP_IDLE_TIMEOUT_MS`,
    /// `MAX_CONCURRENT_REQUESTS`).
    pub client_limits: ClientLimits,
    /// Address to listen on (`HOST`, default 0.0.0.0).
    pub host: IpAddr,
    /// Port to listen on (`PORT`, default 5000; 0 picks a free port).
    pub port: u16,
    /// MongoDB connection string (`MONGO_URL`).
    pub mongo_url: RedactedUrl,
    /// Database of the write model (`WRITE_DB_NAME`, default `books_write`).
    pub database: String,
    /// Redis connection string (`REDIS_URL`).
    pub redis_url: RedactedUrl,
    /// Stream the events are appended to (`EVENTS_STREAM`, default
    /// `books:events`), split into `EVENTS_PARTITIONS` streams (default 1),
    /// tagged for a Redis Cluster when `REDIS_URL` is `redis+cluster://`.
    pub stream: String,
    pub partitions: usize,
    /// How long a MongoDB or Redis operation may wait for its server
    /// (`DEPENDENCY_TIMEOUT_MS`, default 2000).
    pub dependency_timeout: Duration,
    /// Whether MongoDB commands are counted by name in `/metrics`
    /// (`MONGO_COMMAND_METRICS`, default false: it costs CPU per command).
    pub mongo_command_metrics: bool,
    /// How long a stop (SIGTERM) waits for in-flight requests and background
    /// work before the process exits anyway (`SHUTDOWN_TIMEOUT_MS`, default
    /// 10000).
    pub shutdown_timeout: Duration,
    /// How long a stop (SIGTERM) keeps serving with readiness answering
    /// 503 before refusing connections, for load balancers to notice
    /// (`SHUTDOWN_DRAIN_MS`, default 0).
    pub shutdown_drain: Duration,
    /// How often the relay looks for events left pending
    /// (`OUTBOX_SWEEP_INTERVAL_MS`, default 1000).
    pub outbox_sweep_interval: Duration,
    /// How long the sweep's lease lasts without renewal: how soon another
    /// replica takes the sweep over when its holder dies
    /// (`RELAY_LEASE_MS`, default 10000).
    pub relay_lease: Duration,
    /// Base URL of the query service, for the `Location` of created books
    /// (`QUERY_BASE_URL`, default `http://localhost:5001`).
    pub query_base_url: String,
    /// Largest accepted request body in bytes (`BODY_LIMIT_BYTES`, default 16384).
    pub body_limit: usize,
    /// Bearer tokens accepted on commands (`API_TOKENS`, comma-separated;
    /// none by default, which refuses every command).
    pub api_tokens: ApiTokens,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let outbox_sweep_interval = env::millis("OUTBOX_SWEEP_INTERVAL_MS", 1000)?;
        let relay_lease = env::millis("RELAY_LEASE_MS", 10_000)?;
        // The holder renews the lease at every sweep: a lease shorter than
        // the interval would pass between replicas at every tick.
        anyhow::ensure!(
            relay_lease > outbox_sweep_interval,
            "RELAY_LEASE_MS ({relay_lease:?}) must be longer than OUTBOX_SWEEP_INTERVAL_MS ({outbox_sweep_interval:?})"
        );
        Ok(Self {
            client_limits: ClientLimits::from_env()?,
            host: env::parse("HOST", IpAddr::from([0, 0, 0, 0]))?,
            port: env::parse("PORT", 5000)?,
            mongo_url: RedactedUrl::new(env::string("MONGO_URL", "mongodb://127.0.0.1:27017")),
            database: env::string("WRITE_DB_NAME", "books_write"),
            redis_url: RedactedUrl::new(env::string("REDIS_URL", "redis://127.0.0.1:6379")),
            stream: env::string("EVENTS_STREAM", "books:events"),
            partitions: env::parse("EVENTS_PARTITIONS", 1)?,
            dependency_timeout: env::millis("DEPENDENCY_TIMEOUT_MS", 2000)?,
            mongo_command_metrics: env::parse("MONGO_COMMAND_METRICS", false)?,
            shutdown_timeout: env::millis("SHUTDOWN_TIMEOUT_MS", 10_000)?,
            shutdown_drain: env::millis("SHUTDOWN_DRAIN_MS", 0)?,
            outbox_sweep_interval,
            relay_lease,
            query_base_url: env::string("QUERY_BASE_URL", "http://localhost:5001")
                .trim_end_matches('/')
                .to_owned(),
            body_limit: env::parse("BODY_LIMIT_BYTES", 16 * 1024)?,
            api_tokens: ApiTokens::parse(&env::string("API_TOKENS", "")),
        })
    }
}
