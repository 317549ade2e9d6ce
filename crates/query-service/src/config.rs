//! Settings, read once from the environment (see `.env.example`).

use std::{net::IpAddr, time::Duration};

use platform::{env, limits::ClientLimits, RedactedUrl};

#[derive(Debug, Clone)]
pub struct Settings {
    /// What a client may hold of the server (`HTTP_HEADER_READ_TIMEOUT_MS`,
    /// `HTTP_BODY_READ_TIMEOUT_MS`, `HTTP_IDLE_TIMEOUT_MS`,
    /// `MAX_CONCURRENT_REQUESTS`).
    pub client_limits: ClientLimits,
    /// Address to listen on (`HOST`, default 0.0.0.0).
    pub host: IpAddr,
    /// Port to listen on (`PORT`, default 5001; 0 picks a free port).
    pub port: u16,
    /// MongoDB connection string (`MONGO_URL`).
    pub mongo_url: RedactedUrl,
    /// Database of the read model (`READ_DB_NAME`, default `books_read`).
    pub database: String,
    /// MongoDB connection string of the write model, which reconciliation
    /// reads (`WRITE_MONGO_URL`, default `MONGO_URL`; read access is enough).
    pub write_mongo_url: RedactedUrl,
    /// Database of the write model (`WRITE_DB_NAME`, default `books_write`).
    pub write_database: String,
    /// How often the read model is reconciled with the write model, besides
    /// at start and when Redis lost the consumer group
    /// (`RECONCILE_INTERVAL_MS`, default 300000; 0 only then).
    pub reconcile_interval: Duration,
    /// How often the pointer to the active read-model generation is read,
    /// so a rebuild's switch reaches every replica
    /// (`READ_MODEL_REFRESH_MS`, default 1000).
    pub generation_refresh: Duration,
    /// Redis connection string (`REDIS_URL`).
    pub redis_url: RedactedUrl,
    /// Stream the events are read from (`EVENTS_STREAM`, default
    /// `books:events`), split into `EVENTS_PARTITIONS` streams (default 1),
    /// tagged for a Redis Cluster when `REDIS_URL` is `redis+cluster://`.
    pub stream: String,
    pub partitions: usize,
    /// Consumer group shared by every replica (`CONSUMER_GROUP`, default `query-service`).
    pub group: String,
    /// This replica's name in the group; keep it stable across restarts so a
    /// restarted replica finishes its own pending events
    /// (`CONSUMER_NAME`, default the host name).
    pub consumer: String,
    /// Where events that can never be applied go (`DEAD_LETTER_STREAM`,
    /// default `<EVENTS_STREAM>:dead`; one per partition, tagged like it).
    pub dead_letter_stream: String,
    /// Most events read per batch (`CONSUMER_BATCH`, default 256).
    pub batch: usize,
    /// How long one read waits for new events (`CONSUMER_BLOCK_MS`, default 2000).
    pub block: Duration,
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
    /// Prefix of the Redis keys of the book cache; the key of a book is the
    /// prefix followed by its id (`CACHE_KEY_PREFIX`, default `books:cache:`).
    pub cache_prefix: String,
    /// How long a cached book lives in Redis unless a newer version replaces
    /// it first (`CACHE_TTL_SECS`, default 3600).
    pub cache_ttl: Duration,
    /// How many cached books each process also keeps in memory, kept
    /// coherent by Redis's key tracking (`CACHE_LOCAL_ENTRIES`, default
    /// 10000; 0 reads every hit from Redis; off on a Redis Cluster).
    pub cache_local_entries: usize,
    /// How long `GET /books/{id}?minVersion=N` waits for version N before
    /// answering 503 (`READ_YOUR_WRITES_TIMEOUT_MS`, default 1000).
    pub read_your_writes_timeout: Duration,
    /// How long an entry may stay pending at another consumer of the group
    /// before this one claims it (`CLAIM_IDLE_MS`, default 60000).
    pub claim_idle: Duration,
    /// Deliveries after which an event that still fails to apply goes to
    /// the dead-letter stream (`MAX_DELIVERIES`, default 10).
    pub max_deliveries: u64,
    /// How often the stream is trimmed of the entries every consumer group
    /// has acknowledged (`STREAM_TRIM_INTERVAL_MS`, default 10000; 0 never
    /// trims).
    pub trim_interval: Duration,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let stream = env::string("EVENTS_STREAM", "books:events");
        let mongo_url = env::string("MONGO_URL", "mongodb://127.0.0.1:27017");
        Ok(Self {
            client_limits: ClientLimits::from_env()?,
            host: env::parse("HOST", IpAddr::from([0, 0, 0, 0]))?,
            port: env::parse("PORT", 5001)?,
            write_mongo_url: RedactedUrl::new(env::string("WRITE_MONGO_URL", &mongo_url)),
            mongo_url: RedactedUrl::new(mongo_url),
            database: env::string("READ_DB_NAME", "books_read"),
            write_database: env::string("WRITE_DB_NAME", "books_write"),
            reconcile_interval: env::millis("RECONCILE_INTERVAL_MS", 300_000)?,
            generation_refresh: env::millis("READ_MODEL_REFRESH_MS", 1000)?,
            redis_url: RedactedUrl::new(env::string("REDIS_URL", "redis://127.0.0.1:6379")),
            dead_letter_stream: env::string("DEAD_LETTER_STREAM", &format!("{stream}:dead")),
            stream,
            partitions: env::parse("EVENTS_PARTITIONS", 1)?,
            group: env::string("CONSUMER_GROUP", "query-service"),
            consumer: env::string("CONSUMER_NAME", &env::string("HOSTNAME", "query-service-1")),
            batch: env::parse("CONSUMER_BATCH", 256)?,
            block: env::millis("CONSUMER_BLOCK_MS", 2000)?,
            dependency_timeout: env::millis("DEPENDENCY_TIMEOUT_MS", 2000)?,
            mongo_command_metrics: env::parse("MONGO_COMMAND_METRICS", false)?,
            shutdown_timeout: env::millis("SHUTDOWN_TIMEOUT_MS", 10_000)?,
            shutdown_drain: env::millis("SHUTDOWN_DRAIN_MS", 0)?,
            cache_prefix: env::string("CACHE_KEY_PREFIX", "books:cache:"),
            cache_ttl: Duration::from_secs(env::parse("CACHE_TTL_SECS", 3600)?),
            cache_local_entries: env::parse("CACHE_LOCAL_ENTRIES", 10_000)?,
            read_your_writes_timeout: env::millis("READ_YOUR_WRITES_TIMEOUT_MS", 1000)?,
            claim_idle: env::millis("CLAIM_IDLE_MS", 60_000)?,
            max_deliveries: env::parse("MAX_DELIVERIES", 10)?,
            trim_interval: env::millis("STREAM_TRIM_INTERVAL_MS", 10_000)?,
        })
    }
}
