//! Starts the whole system in-process, each test with its own databases,
//! stream, consumer group and consumer name, and gives tests what they need
//! to look behind the HTTP APIs: the write and read databases and the Redis
//! streams.

use std::{fmt::Display, future::Future, time::Duration};

use bson::{doc, oid::ObjectId, Document};
use command_service::config::Settings as CommandSettings;
use platform::{stream::Partitions, RedactedUrl, RedisConnection};
use query_service::config::Settings as QuerySettings;
use redis::streams::{
    StreamId, StreamInfoGroup, StreamInfoGroupsReply, StreamRangeReply, StreamReadReply,
};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use test_support::{eventually, servers, unique};
use tokio::{sync::oneshot, task::JoinHandle};

/// How long an eventually-consistent check may take on a loaded machine.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);
/// How long the query service may take to project a few hundred events
/// (FerretDB's upserts slow down as a collection grows).
pub(crate) const BULK_DEADLINE: Duration = Duration::from_secs(30);
/// How long a service may take to stop gracefully.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// A valid `POST /books` body.
pub(crate) fn book(title: &str) -> Value {
    json!({ "title": title, "author": "Frank Herbert", "publishedYear": 1965 })
}

/// One service running on a task of the test's runtime.
struct Service {
    url: String,
    /// Dropping or sending on it cancels the service's shutdown token, as
    /// SIGTERM would.
    stop: oneshot::Sender<()>,
    stopped: JoinHandle<Result<(), String>>,
}

impl Service {
    fn run<F, E>(
        address: std::net::SocketAddr,
        cancel: impl FnOnce() + Send + 'static,
        serve: F,
    ) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let (stop, stop_requested) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = stop_requested.await;
            cancel();
        });
        let stopped = tokio::spawn(async move { serve.await.map_err(|e| format!("{e:#}")) });
        Self {
            url: format!("http://{address}"),
            stop,
            stopped,
        }
    }

    /// Stops the service gracefully and checks that it stopped cleanly.
    async fn stop(self) {
        let _ = self.stop.send(());
        let outcome = tokio::time::timeout(STOP_DEADLINE, self.stopped)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within {STOP_DEADLINE:?}", self.url));
        outcome
            .expect("the service task panicked")
            .unwrap_or_else(|error| panic!("{} stopped with an error: {error}", self.url));
    }
}

async fn start_query(settings: QuerySettings) -> Service {
    let app = query_service::startup::Application::build(settings)
        .await
        .expect("query-service builds");
    let token = app.shutdown_token();
    Service::run(
        app.local_addr(),
        move || token.cancel(),
        app.run_until_stopped(),
    )
}

async fn start_command(settings: CommandSettings) -> Service {
    let app = command_service::startup::Application::build(settings)
        .await
        .expect("command-service builds");
    let token = app.shutdown_token();
    Service::run(
        app.local_addr(),
        move || token.cancel(),
        app.run_until_stopped(),
    )
}

/// Both services, an HTTP client, and direct handles on their stores.
pub(crate) struct TestSystem {
    pub(crate) http: reqwest::Client,
    pub(crate) command_url: String,
    /// The running query-service's base URL; it changes on every restart.
    pub(crate) query_url: String,
    command: Service,
    query: Option<Service>,
    query_settings: QuerySettings,
    /// The command service's write model.
    pub(crate) write_db: mongodb::Database,
    /// The query service's read model.
    pub(crate) read_db: mongodb::Database,
    redis: RedisConnection,
    /// The events stream's name; with several partitions, or on a Redis
    /// Cluster, each partition's key is derived from it (see `Partitions`).
    pub(crate) stream: String,
    pub(crate) dead_letter_stream: String,
    /// The partitions the services use (`EVENTS_PARTITIONS`, `REDIS_URL`).
    partitions: Partitions,
}

/// Both services with fresh names and short timings.
pub(crate) async fn spawn_system() -> TestSystem {
    spawn_system_with(|_| {}).await
}

/// The bearer token the test systems accept.
pub(crate) const TOKEN: &str = "e2e-token";

/// A client that sends the test token with every request (reads ignore it).
fn authenticated_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("a header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// Like [`spawn_system`], letting the test change the command service's
/// settings (e.g. its Redis URL) before it starts.
pub(crate) async fn spawn_system_with(customize: impl FnOnce(&mut CommandSettings)) -> TestSystem {
    platform::telemetry::init_for_tests("e2e");
    let servers = servers().await;
    let stream = unique("events");
    let write_database = unique("w");
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);

    let mut query = QuerySettings::from_env().expect("query settings");
    query.host = localhost;
    query.port = 0;
    query.mongo_url = RedactedUrl::new(servers.mongo_url.as_str());
    query.redis_url = RedactedUrl::new(servers.redis_url.as_str());
    query.database = unique("r");
    query.write_mongo_url = RedactedUrl::new(servers.mongo_url.as_str());
    query.write_database = write_database.clone();
    query.reconcile_interval = Duration::ZERO;
    query.generation_refresh = Duration::from_millis(100);
    query.stream = stream.clone();
    query.dead_letter_stream = format!("{stream}:dead");
    query.group = unique("group");
    query.consumer = unique("consumer");
    query.block = Duration::from_millis(200);
    query.batch = 256;
    query.dependency_timeout = Duration::from_secs(1);
    // These tests count the entries of the stream: keep them all.
    query.trim_interval = Duration::ZERO;
    let query_service = start_query(query.clone()).await;

    let mut command = CommandSettings::from_env().expect("command settings");
    command.host = localhost;
    command.port = 0;
    command.mongo_url = RedactedUrl::new(servers.mongo_url.as_str());
    command.redis_url = RedactedUrl::new(servers.redis_url.as_str());
    command.database = write_database;
    command.stream = stream.clone();
    command.outbox_sweep_interval = Duration::from_millis(100);
    command.dependency_timeout = Duration::from_secs(1);
    command.body_limit = 16 * 1024;
    command.query_base_url = query_service.url.clone();
    command.api_tokens = command_service::auth::ApiTokens::parse(TOKEN);
    customize(&mut command);
    let command_service = start_command(command.clone()).await;

    let mongo = mongodb::Client::with_uri_str(&servers.mongo_url)
        .await
        .expect("a MongoDB client");
    let redis = test_support::redis_connection().await;
    let partitions = Partitions::new(&stream, query.partitions, is_cluster(&servers.redis_url))
        .expect("valid partitions");
    assert_eq!(
        command.partitions, query.partitions,
        "both services split the stream alike"
    );
    TestSystem {
        http: authenticated_client(),
        command_url: command_service.url.clone(),
        query_url: query_service.url.clone(),
        command: command_service,
        query: Some(query_service),
        write_db: mongo.database(&command.database),
        read_db: mongo.database(&query.database),
        redis,
        stream,
        dead_letter_stream: query.dead_letter_stream.clone(),
        query_settings: query,
        partitions,
    }
}

/// Whether the tests' Redis is a cluster (a `redis+cluster://` URL).
pub(crate) fn is_cluster(redis_url: &str) -> bool {
    redis_url.starts_with("redis+cluster://")
}

impl TestSystem {
    pub(crate) async fn post_book(&self, body: &Value) -> Response {
        self.http
            .post(format!("{}/books", self.command_url))
            .json(body)
            .send()
            .await
            .expect("POST /books answers")
    }

    /// POSTs a valid book, checks it was created and returns the answer.
    pub(crate) async fn create_book(&self, body: &Value) -> Value {
        let response = self.post_book(body).await;
        let status = response.status();
        let answer = response.text().await.expect("a body");
        assert_eq!(
            status,
            StatusCode::CREATED,
            "POST /books {body} answered {answer}"
        );
        serde_json::from_str(&answer).expect("a JSON book")
    }

    pub(crate) async fn get_book(&self, id: &str) -> Response {
        self.http
            .get(format!("{}/books/{id}", self.query_url))
            .send()
            .await
            .expect("GET /books/{id} answers")
    }

    /// The body of `GET /books/{id}` when it is 200, else `None`.
    pub(crate) async fn read_book(&self, id: &str) -> Option<Value> {
        let response = self.get_book(id).await;
        if response.status() != StatusCode::OK {
            return None;
        }
        Some(response.json().await.expect("a JSON book"))
    }

    /// Waits until the query service serves exactly `expected` (a book as
    /// JSON, `_id` included).
    pub(crate) async fn await_book(&self, expected: &Value) {
        let id = expected["_id"].as_str().expect("a book has an _id");
        eventually(
            &format!("GET /books/{id} to answer {expected}"),
            DEADLINE,
            || async move { self.read_book(id).await.filter(|book| book == expected) },
        )
        .await;
    }

    /// Stops the query service gracefully, as SIGTERM would.
    pub(crate) async fn stop_query(&mut self) {
        self.query
            .take()
            .expect("query-service is running")
            .stop()
            .await;
    }

    /// Starts a new query-service instance with the same settings (read
    /// database, group and consumer name) as the first one.
    pub(crate) async fn start_query(&mut self) {
        assert!(self.query.is_none(), "query-service is already running");
        let query = start_query(self.query_settings.clone()).await;
        self.query_url = query.url.clone();
        self.query = Some(query);
    }

    /// Stops both services (checking they stop cleanly) and removes what
    /// the test created. A failed test skips this and leaves its data for
    /// inspection.
    pub(crate) async fn shutdown(mut self) {
        if let Some(query) = self.query.take() {
            query.stop().await;
        }
        self.command.stop().await;
        self.write_db.drop().await.expect("drop the write database");
        self.read_db.drop().await.expect("drop the read database");
        let mut pipe = redis::pipe();
        for key in [&self.stream, &self.dead_letter_stream]
            .into_iter()
            .flat_map(|base| self.partitions.keys(base))
            .chain([format!("{}:layout", self.stream)])
        {
            pipe.cmd("DEL").arg(key).ignore();
        }
        pipe.query_async::<()>(&mut self.redis)
            .await
            .expect("delete the streams");
    }

    /// The read model's document for a book, as stored.
    pub(crate) async fn read_document(&self, id: &str) -> Option<Document> {
        let id = ObjectId::parse_str(id).expect("a book id");
        self.read_db
            .collection::<Document>("books")
            .find_one(doc! { "_id": id })
            .await
            .expect("read the read model")
    }

    /// The write model's document for a book, as stored.
    pub(crate) async fn write_document(&self, id: &str) -> Option<Document> {
        let id = ObjectId::parse_str(id).expect("a book id");
        self.write_db
            .collection::<Document>("books")
            .find_one(doc! { "_id": id })
            .await
            .expect("read the write model")
    }

    /// How many documents a database's `books` collection holds.
    pub(crate) async fn count_books(&self, db: &mongodb::Database) -> u64 {
        db.collection::<Document>("books")
            .count_documents(doc! {})
            .await
            .expect("count books")
    }

    /// Every entry of `stream` (the events or the dead letters), in each
    /// of its partitions, oldest first.
    pub(crate) async fn entries(&self, stream: &str) -> Vec<StreamId> {
        let mut entries = Vec::new();
        for key in self.partitions.keys(stream) {
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .query_async(&mut self.redis.clone())
                .await
                .expect("XRANGE");
            entries.extend(reply.ids);
        }
        entries.sort_by_key(|entry| entry_id(&entry.id));
        entries
    }

    /// The `bookId` of every event in the events stream, oldest first.
    pub(crate) async fn streamed_book_ids(&self) -> Vec<String> {
        self.entries(&self.stream)
            .await
            .iter()
            .filter_map(|entry| field(entry, "data"))
            .filter_map(|data| serde_json::from_str::<Value>(&data).ok())
            .filter_map(|event| event["bookId"].as_str().map(str::to_owned))
            .collect()
    }

    /// The id of the newest entry of the events stream.
    pub(crate) async fn last_entry_id(&self) -> String {
        let mut entries = self.entries(&self.stream).await;
        entries.pop().expect("the events stream has entries").id
    }

    /// How many entries `stream` holds, all partitions together.
    pub(crate) async fn stream_len(&self, stream: &str) -> usize {
        let mut len = 0;
        for key in self.partitions.keys(stream) {
            len += redis::cmd("XLEN")
                .arg(key)
                .query_async::<usize>(&mut self.redis.clone())
                .await
                .expect("XLEN");
        }
        len
    }

    /// Appends an entry to the events stream, as a producer would, and
    /// returns its id.
    pub(crate) async fn inject(&self, fields: &[(&str, &str)]) -> String {
        let fields = fields
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()));
        self.inject_at_once(&[fields.collect()]).await.remove(0)
    }

    /// Appends entries to the events stream in one MULTI/EXEC, so that the
    /// consumer reads them in one batch; returns their ids. They go to the
    /// partition of the first entry's book (the first partition if it
    /// names none).
    pub(crate) async fn inject_at_once(&self, entries: &[Vec<(&str, String)>]) -> Vec<String> {
        let book_id = entries
            .first()
            .and_then(|fields| fields.iter().find(|(name, _)| *name == "data"))
            .and_then(|(_, data)| serde_json::from_str::<Value>(data).ok())
            .and_then(|event| event["bookId"].as_str().map(str::to_owned));
        let partition = book_id.map_or(0, |id| self.partitions.of(&id));
        let mut pipe = redis::pipe();
        pipe.atomic();
        for fields in entries {
            let add = pipe
                .cmd("XADD")
                .arg(self.partitions.stream(partition))
                .arg("*");
            for (name, value) in fields {
                add.arg(*name).arg(value);
            }
        }
        pipe.query_async(&mut self.redis.clone())
            .await
            .expect("XADD")
    }

    /// Reads every new entry as the query service's consumer, without
    /// acknowledging any: what a crash between delivery and XACK leaves
    /// behind. Returns how many entries were delivered.
    pub(crate) async fn deliver_without_ack(&self) -> usize {
        let mut delivered = 0;
        for stream in self.partitions.streams() {
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.query_settings.group)
                .arg(&self.query_settings.consumer)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query_async(&mut self.redis.clone())
                .await
                .expect("XREADGROUP");
            delivered += reply.map_or(0, |r| r.keys.iter().map(|k| k.ids.len()).sum::<usize>());
        }
        delivered
    }

    /// The query service's consumer group on each partition, once it
    /// exists on every one.
    async fn groups(&self) -> Option<Vec<StreamInfoGroup>> {
        let mut groups = Vec::new();
        for stream in self.partitions.streams() {
            let reply: StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut self.redis.clone())
                .await
                .ok()?;
            groups.push(
                reply
                    .groups
                    .into_iter()
                    .find(|g| g.name == self.query_settings.group)?,
            );
        }
        Some(groups)
    }

    /// The query service's consumer group, all partitions together: their
    /// pending entries summed, the newest entry delivered.
    pub(crate) async fn group(&self) -> Option<StreamInfoGroup> {
        let groups = self.groups().await?;
        let mut all = groups.first()?.clone();
        all.pending = groups.iter().map(|g| g.pending).sum();
        all.last_delivered_id = groups
            .iter()
            .map(|g| g.last_delivered_id.clone())
            .max_by_key(|id| entry_id(id))
            .unwrap_or_default();
        Some(all)
    }

    /// Waits until the group has been handed the entry `id` (or a later one)
    /// and, in every partition, every entry there is now, and has
    /// acknowledged everything it was handed.
    pub(crate) async fn await_consumed(&self, id: &str, deadline: Duration) {
        let wanted = entry_id(id);
        eventually(
            &format!("entry {id} to be consumed and acknowledged"),
            deadline,
            || async move {
                let groups = self.groups().await?;
                let mut delivered = (0, 0);
                for (group, stream) in groups.iter().zip(self.partitions.streams()) {
                    let newest: StreamRangeReply = redis::cmd("XREVRANGE")
                        .arg(stream)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut self.redis.clone())
                        .await
                        .ok()?;
                    let last = entry_id(&group.last_delivered_id);
                    let caught_up = newest.ids.first().is_none_or(|e| last >= entry_id(&e.id));
                    if group.pending > 0 || !caught_up {
                        return None;
                    }
                    delivered = delivered.max(last);
                }
                (delivered >= wanted).then_some(())
            },
        )
        .await;
    }
}

/// A stream entry id (`<ms>-<seq>`) as a comparable pair.
fn entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (
        ms.parse().expect("an entry id's time"),
        seq.parse().expect("an entry id's sequence"),
    )
}

/// A field of a stream entry, as text.
pub(crate) fn field(entry: &StreamId, name: &str) -> Option<String> {
    entry.get(name)
}
