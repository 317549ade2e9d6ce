//! Builds the application (connections, listener, consumer) and runs it
//! until a signal or a cancellation stops it, then waits for the consumer
//! to finish its batch.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use platform::{
    document::BookDocument,
    health::{Dependencies, WorkerStatus},
    lease::Lease,
    metrics::Scrape,
    server::{HttpServer, Stop},
    stream::Partitions,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    apply::{projector::Projector, stream::EventStream, Consumer},
    config::Settings,
    maintain::reconcile::{self, Reconciler},
    metrics::ConsumerGroup,
    read::{self, lookup::BookLookup},
    read_model::{ActiveGeneration, AuthorSummaries, BookCache, Books, LocalCopy},
    state::{AppState, Shared},
};

/// Reads take no body; this only bounds what a client may send anyway.
const BODY_LIMIT: usize = 16 * 1024;

pub struct Application {
    server: HttpServer,
    consumer: Consumer,
    reconciler: Reconciler,
    generation: ActiveGeneration,
    generation_refresh: Duration,
    dependency_timeout: Duration,
    replica: String,
}

impl Application {
    /// Prepares MongoDB and Redis clients (both connect lazily and
    /// reconnect by themselves) and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        crate::metrics::install();
        let Servers {
            read_db,
            write_books,
            redis_client,
            redis,
            partitions,
        } = Servers::open(&settings).await?;
        let generation = ActiveGeneration::new(&read_db);
        let books = Books::on(generation.clone());
        let summaries = AuthorSummaries::on(generation.clone());
        let mut cache = BookCache::new(
            redis.clone(),
            settings.cache_prefix.clone(),
            settings.cache_ttl,
        );
        if let Some(entries) = NonZeroUsize::new(settings.cache_local_entries) {
            // Key tracking is per connection, and a cluster's keys live on
            // several servers: there, hits are read from Redis.
            match redis_client.node() {
                Some(node) => {
                    let local = LocalCopy::new(node, settings.dependency_timeout, entries)?;
                    cache = cache.with_local_copy(Arc::new(local));
                }
                None => tracing::info!(
                    "CACHE_LOCAL_ENTRIES is ignored on a Redis Cluster: cache hits are read from Redis"
                ),
            }
        }

        let events_lost = Arc::new(Notify::new());
        let reconciler = Reconciler {
            write_books,
            read_model: books.clone(),
            redis: redis.clone(),
            partitions: partitions.clone(),
            group: settings.group.clone(),
            interval: settings.reconcile_interval,
            wake: events_lost.clone(),
            lease: Lease::new(
                format!("{}:reconcile-lease", settings.stream),
                format!("{}:{}", settings.consumer, bson::oid::ObjectId::new()),
                reconcile::LEASE_TTL,
            ),
        };
        let (batches, batches_seen) = watch::channel(0);
        let consumer_status = WorkerStatus::default();
        let consumer = Consumer {
            partitions: partitions.clone(),
            streams: (0..partitions.count())
                .map(|partition| EventStream {
                    client: redis_client.clone(),
                    stream: partitions.stream(partition),
                    group: settings.group.clone(),
                    consumer: settings.consumer.clone(),
                    dead_letter_stream: partitions.key(&settings.dead_letter_stream, partition),
                    batch: settings.batch,
                    block: settings.block,
                    timeout: settings.dependency_timeout,
                    claim_idle: settings.claim_idle,
                })
                .collect(),
            projector: Projector {
                books: books.clone(),
                summaries: summaries.clone(),
                cache: cache.clone(),
                timeout: settings.dependency_timeout,
            },
            batches,
            max_deliveries: settings.max_deliveries.max(1),
            trim_interval: settings.trim_interval,
            events_lost,
            status: consumer_status.clone(),
            partitions_up: (0..partitions.count())
                .map(|_| AtomicBool::new(false))
                .collect(),
            servers: std::sync::Mutex::new(vec![None; partitions.count()]),
        };
        let stop = Stop {
            token: CancellationToken::new(),
            drain: settings.shutdown_drain,
            grace: settings.shutdown_timeout,
        };
        let state = AppState::new(Shared {
            lookup: BookLookup {
                cache,
                books: books.clone(),
            },
            books,
            summaries,
            batches: batches_seen,
            read_your_writes_timeout: settings.read_your_writes_timeout,
            scrape: Scrape::new(ConsumerGroup {
                redis: redis.clone(),
                streams: partitions.streams(),
                group: settings.group.clone(),
                consumer: consumer_status.clone(),
            }),
            dependencies: Dependencies {
                mongo: read_db,
                redis,
                workers: vec![("consumer", consumer_status)],
                stopping: stop.token.clone(),
            },
        });
        // A read may wait for its version, then read MongoDB and Redis; this
        // bounds one whose server hangs.
        let router = read::router(
            state,
            BODY_LIMIT,
            settings.read_your_writes_timeout + settings.dependency_timeout * 3,
        );
        let server = HttpServer::bind(SocketAddr::new(settings.host, settings.port), router, stop)
            .await?
            .with_limits(settings.client_limits);
        Ok(Self {
            server,
            consumer,
            reconciler,
            generation,
            generation_refresh: settings.generation_refresh,
            dependency_timeout: settings.dependency_timeout,
            replica: settings.consumer.clone(),
        })
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
    ///
    /// Beside the server: the consumer and the reconciliation, which both
    /// start once the active read-model generation is known, and the task
    /// that follows that generation.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            server,
            consumer,
            reconciler,
            generation,
            generation_refresh,
            dependency_timeout,
            replica,
        } = self;
        server
            .run("query-service", move |shutdown| {
                let follow = follow_generation(
                    generation.clone(),
                    replica,
                    generation_refresh,
                    dependency_timeout,
                    shutdown.clone(),
                );
                let work = async move {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = generation.loaded() => {}
                    }
                    tokio::join!(consumer.run(shutdown.clone()), reconciler.run(shutdown));
                };
                async move {
                    tokio::join!(follow, work);
                }
            })
            .await
    }
}

/// The handles on the servers; they connect lazily and reconnect by
/// themselves.
pub struct Servers {
    pub read_db: mongodb::Database,
    /// The write model's books, which reconciliation reads.
    pub write_books: mongodb::Collection<BookDocument>,
    pub redis_client: platform::RedisClient,
    pub redis: platform::RedisConnection,
    /// The event stream's partitions, with their names on this Redis.
    pub partitions: Partitions,
}

impl Servers {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let mongo = |url| {
            platform::connect::mongo_client(
                url,
                "query-service",
                settings.dependency_timeout,
                settings.mongo_command_metrics,
            )
        };
        let read_client = mongo(&settings.mongo_url).await?;
        // One client when both models live on the same server.
        let write_client = if settings.write_mongo_url.expose() == settings.mongo_url.expose() {
            read_client.clone()
        } else {
            mongo(&settings.write_mongo_url).await?
        };
        let redis_client = platform::RedisClient::open(&settings.redis_url)?;
        let partitions = Partitions::new(
            &settings.stream,
            settings.partitions,
            redis_client.is_cluster(),
        )?;
        partitions.check_name(&settings.dead_letter_stream)?;
        Ok(Self {
            read_db: read_client.database(&settings.database),
            write_books: write_client
                .database(&settings.write_database)
                .collection("books"),
            redis: redis_client.shared(settings.dependency_timeout)?,
            redis_client,
            partitions,
        })
    }
}

/// Reads the pointer to the active generation every `refresh` until
/// `shutdown`, switching when it changes; a read may take `timeout`.
async fn follow_generation(
    generation: ActiveGeneration,
    replica: String,
    refresh: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match platform::mongo::bounded(timeout, generation.refresh(&replica)).await {
            Ok(Some(named)) => {
                tracing::info!(generation = %named, "switched to another read-model generation")
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "cannot read the active read-model generation"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(refresh) => {}
        }
    }
}
