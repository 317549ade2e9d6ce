//! What the load generator calls: the system's routes over HTTP, and the
//! floors they are compared with, driven by the same loop: a trivial axum
//! handler (the HTTP floor) and the raw driver operations behind each route.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use anyhow::{bail, Context};
use bson::{doc, Document};
use mongodb::Collection;
use platform::RedactedUrl;
use serde_json::{json, Value};

/// Authors the created books are spread over.
const AUTHORS: u32 = 1000;

/// One of the two services.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Service {
    Command,
    Query,
}

/// The running system, through its HTTP APIs.
#[derive(Clone)]
pub(crate) struct System {
    http: reqwest::Client,
    command_url: Arc<str>,
    query_url: Arc<str>,
    authorization: Arc<str>,
}

impl System {
    pub(crate) fn new(command_url: &str, query_url: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: client()?,
            command_url: Arc::from(command_url.trim_end_matches('/')),
            query_url: Arc::from(query_url.trim_end_matches('/')),
            authorization: Arc::from(format!("Bearer {token}")),
        })
    }

    /// `POST /books`; the new book's id and version. Books spread over
    /// `AUTHORS` authors, as a catalogue's do: each change recomputes its
    /// author's summary from that author's books.
    pub(crate) async fn create(&self, title: &str) -> anyhow::Result<(String, u64)> {
        let author = format!("Author {}", rand::random::<u32>() % AUTHORS);
        let response = self
            .http
            .post(format!("{}/books", self.command_url))
            .header("authorization", &*self.authorization)
            .json(&json!({ "title": title, "author": author, "publishedYear": 2024 }))
            .send()
            .await?;
        if response.status() != 201 {
            bail!("POST /books answered {}", response.status());
        }
        let book: Value = response.json().await?;
        let id = book["_id"].as_str().context("a created book has an _id")?;
        let version = book["version"].as_u64().context("and a version")?;
        Ok((id.to_owned(), version))
    }

    /// `GET /books/{id}`, which must answer 200.
    pub(crate) async fn read(&self, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}/books/{id}", self.query_url))
            .send()
            .await?;
        if response.status() != 200 {
            bail!("GET /books/{id} answered {}", response.status());
        }
        response.bytes().await?;
        Ok(())
    }

    /// The body `GET /books/{id}` answers, for the HTTP floor to serve.
    pub(crate) async fn read_body(&self, id: &str) -> anyhow::Result<bytes::Bytes> {
        Ok(self
            .http
            .get(format!("{}/books/{id}", self.query_url))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?)
    }

    /// Waits until the query side serves `id` at `version` or later
    /// (`?minVersion=`, asked again after each 503 not-caught-up).
    pub(crate) async fn await_version(&self, id: &str, version: u64) -> anyhow::Result<()> {
        self.await_version_within(id, version, std::time::Duration::from_secs(60))
            .await
    }

    /// Waits, up to `limit`, until the query side serves `version` of book
    /// `id`.
    pub(crate) async fn await_version_within(
        &self,
        id: &str,
        version: u64,
        limit: std::time::Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let response = self
                .http
                .get(format!(
                    "{}/books/{id}?minVersion={version}",
                    self.query_url
                ))
                .send()
                .await?;
            match response.status().as_u16() {
                200 => {
                    response.bytes().await?;
                    return Ok(());
                }
                503 if Instant::now() < deadline => continue,
                503 => bail!("the query side did not serve version {version} within {limit:?}"),
                status => bail!("GET /books/{id}?minVersion={version} answered {status}"),
            }
        }
    }

    /// `service`'s `/metrics`, as text.
    pub(crate) async fn metrics(&self, service: Service) -> anyhow::Result<String> {
        let base = match service {
            Service::Command => &self.command_url,
            Service::Query => &self.query_url,
        };
        Ok(self
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// The query side's consumer group: entries not yet read plus entries
    /// read but not acknowledged (`books_consumer_group_lag` and
    /// `books_consumer_group_pending` of its `/metrics`).
    pub(crate) async fn unacknowledged(&self) -> anyhow::Result<f64> {
        let text = self.metrics(Service::Query).await?;
        let gauge = |name: &str| {
            text.lines()
                .find_map(|line| {
                    let (series, value) = line.rsplit_once(' ')?;
                    (series == name || series.starts_with(&format!("{name}{{")))
                        .then(|| value.parse::<f64>().ok())
                        .flatten()
                })
                .with_context(|| format!("the query side's /metrics has no {name}"))
        };
        Ok(gauge("books_consumer_group_lag")? + gauge("books_consumer_group_pending")?)
    }

    /// `GET /books?limit=20`, the first page.
    pub(crate) async fn list(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}/books?limit=20", self.query_url))
            .send()
            .await?;
        if response.status() != 200 {
            bail!("GET /books answered {}", response.status());
        }
        response.bytes().await?;
        Ok(())
    }
}

/// One HTTP client for every run: keep-alive, no proxy, no retries.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(None)
        .build()?)
}

/// The HTTP floor: an axum server in this process whose only handler
/// answers a fixed book body, the least any route can cost.
pub(crate) async fn http_floor(body: bytes::Bytes) -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().route(
        "/books/{id}",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// The raw driver operations behind the routes, with the services' own
/// client settings (write concern, timeouts).
#[derive(Clone)]
pub(crate) struct Drivers {
    /// A scratch collection in the write database, dropped at the end.
    pub(crate) scratch: Collection<Document>,
    /// The read model's books.
    pub(crate) read_books: Collection<Document>,
    pub(crate) redis: platform::RedisConnection,
    /// A scratch stream, deleted at the end.
    pub(crate) scratch_stream: Arc<str>,
    /// A scratch hash shaped like a cache entry, for the cached read's floor
    /// (the service's own keys carry an epoch of its Redis servers).
    pub(crate) cache_entry: Arc<str>,
}

impl Drivers {
    pub(crate) async fn connect(
        mongo_url: &str,
        redis_url: &str,
        write_db: &str,
        read_db: &str,
        cache_prefix: &str,
        run: &str,
    ) -> anyhow::Result<Self> {
        let timeout = std::time::Duration::from_secs(5);
        // Counting commands, as the services do under `scripts/bench.sh`.
        let mongo =
            platform::connect::mongo_client(&RedactedUrl::new(mongo_url), "bench", timeout, true)
                .await?;
        let redis = platform::RedisClient::open(&RedactedUrl::new(redis_url))?;
        let drivers = Self {
            scratch: mongo
                .database(write_db)
                .collection(&format!("bench_floor_{run}")),
            read_books: mongo.database(read_db).collection("books"),
            redis: redis.shared(timeout)?,
            scratch_stream: Arc::from(format!("bench:floor:{run}")),
            cache_entry: Arc::from(format!("{cache_prefix}bench-floor:{run}")),
        };
        let body = r#"{"_id":"65a1b2c3d4e5f60718293a4b","title":"Benchmark","author":"Benchmark Author","publishedYear":2024,"createdAt":"2026-01-01T00:00:00.000Z","updatedAt":"2026-01-01T00:00:00.000Z","version":1}"#;
        let _: () = redis::cmd("HSET")
            .arg(&*drivers.cache_entry)
            .arg("v")
            .arg(1)
            .arg("body")
            .arg(body)
            .query_async(&mut drivers.redis.clone())
            .await?;
        Ok(drivers)
    }

    /// A create's floor: one document insert and one XADD.
    pub(crate) async fn insert_and_append(&self, n: u64) -> anyhow::Result<()> {
        let event = format!(r#"{{"type":"bookCreated","n":{n}}}"#);
        self.scratch
            .insert_one(doc! {
                "title": "Benchmark", "author": "Benchmark Author", "publishedYear": 2024,
                "version": 1_i64, "outbox": [&event], "outboxAt": bson::DateTime::now(),
            })
            .await?;
        let _: String = redis::cmd("XADD")
            .arg(&*self.scratch_stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("data")
            .arg(&event)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// A cached read's floor: one HGETALL of a cache entry.
    pub(crate) async fn cache_read(&self) -> anyhow::Result<()> {
        let _: redis::Value = redis::cmd("HGETALL")
            .arg(&*self.cache_entry)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// A list's floor: one find of 20 books in creation order.
    pub(crate) async fn find_page(&self) -> anyhow::Result<()> {
        use futures::TryStreamExt;
        let _: Vec<Document> = self
            .read_books
            .find(doc! { "deleted": false })
            .sort(doc! { "createdAt": 1, "_id": 1 })
            .limit(20)
            .await?
            .try_collect()
            .await?;
        Ok(())
    }

    /// Drops the write and read databases: those of a system started for
    /// the run.
    pub(crate) async fn drop_databases(&self) {
        let _ = self
            .scratch
            .client()
            .database(self.scratch.namespace().db.as_str())
            .drop()
            .await;
        let _ = self
            .read_books
            .client()
            .database(self.read_books.namespace().db.as_str())
            .drop()
            .await;
    }

    /// Removes the scratch collection, stream and cache entry.
    pub(crate) async fn clean_up(&self) {
        let _ = self.scratch.drop().await;
        for key in [&*self.scratch_stream, &*self.cache_entry] {
            let _: redis::RedisResult<()> = redis::cmd("DEL")
                .arg(key)
                .query_async(&mut self.redis.clone())
                .await;
        }
    }
}
