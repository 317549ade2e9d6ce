//! `spawn_app()`: the real query-service on a free port with its own read
//! database, stream key, consumer group and cache key prefix, plus helpers
//! to put events on the stream as the command side would.

use std::{net::SocketAddr, time::Duration};

use bson::oid::ObjectId;
use chrono::{SubsecRound, Utc};
use domain::{Author, Book, BookDraft, BookEvent, BookId, BookState, EventType};
use platform::{stream::Partitions, RedactedUrl, RedisConnection};
use query_service::{config::Settings, read_model::cache::epoch_of, startup::Application};
use redis::streams::{StreamInfoGroup, StreamInfoGroupsReply, StreamInfoStreamReply};
use serde_json::Value;
use test_support::{eventually, mongo_database, redis_connection, unique, Cleanup, RunningApp};

pub(crate) const DEADLINE: Duration = Duration::from_secs(10);
/// How long a burst of events may take to be consumed on a loaded machine.
pub(crate) const BULK_DEADLINE: Duration = Duration::from_secs(30);

pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    pub(crate) http: reqwest::Client,
    pub(crate) db: mongodb::Database,
    pub(crate) redis: RedisConnection,
    pub(crate) settings: Settings,
    app: RunningApp,
}

/// Settings for a test: fresh database, stream and group, free port.
pub(crate) async fn test_settings() -> Settings {
    platform::telemetry::init_for_tests("query-service");
    let servers = test_support::servers().await;
    let stream = unique("events");
    Settings {
        client_limits: platform::limits::ClientLimits::default(),
        host: [127, 0, 0, 1].into(),
        port: 0,
        mongo_url: RedactedUrl::new(servers.mongo_url.clone()),
        database: unique("read"),
        write_mongo_url: RedactedUrl::new(servers.mongo_url.clone()),
        // Tests that need a write model set their own.
        write_database: unique("write"),
        reconcile_interval: Duration::ZERO,
        generation_refresh: Duration::from_millis(100),
        redis_url: RedactedUrl::new(servers.redis_url.clone()),
        dead_letter_stream: format!("{stream}:dead"),
        stream,
        group: unique("group"),
        consumer: "consumer-1".to_owned(),
        batch: 64,
        block: Duration::from_millis(200),
        dependency_timeout: Duration::from_secs(1),
        mongo_command_metrics: true,
        shutdown_timeout: Duration::from_secs(10),
        shutdown_drain: Duration::ZERO,
        cache_prefix: format!("{}:", unique("cache")),
        cache_ttl: Duration::from_secs(3600),
        cache_local_entries: 1000,
        read_your_writes_timeout: Duration::from_secs(1),
        claim_idle: Duration::from_secs(60),
        max_deliveries: 10,
        trim_interval: Duration::ZERO,
        partitions: 1,
    }
}

/// Removes what an app with `settings` leaves on the servers: its database,
/// streams and cache entries.
pub(crate) fn cleanup_for(settings: &Settings) -> Cleanup {
    let partitions = partitions_of(settings);
    let mut keys = partitions.streams();
    keys.extend(partitions.keys(&settings.dead_letter_stream));
    keys.push(format!("{}:layout", settings.stream));
    Cleanup::new(
        vec![settings.database.clone(), settings.write_database.clone()],
        keys,
    )
    .with_key_prefixes(vec![settings.cache_prefix.clone()])
}

/// The stream's partitions, as a service with `settings` names them.
pub(crate) fn partitions_of(settings: &Settings) -> Partitions {
    Partitions::new(&settings.stream, settings.partitions, false).expect("valid partitions")
}

/// The service with fresh settings, whose data is removed after the test.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_cleaned_app_with(test_settings().await).await
}

/// The service with these settings, whose data is removed after the test.
pub(crate) async fn spawn_cleaned_app_with(settings: Settings) -> TestApp {
    let cleanup = cleanup_for(&settings);
    let mut app = spawn_app_with(settings).await;
    app.app.clean_up_after(cleanup);
    app
}

pub(crate) async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("query-service builds");
    let address = app.local_addr();
    let running = RunningApp::spawn(app.shutdown_token(), app.run_until_stopped());
    TestApp {
        address,
        http: reqwest::Client::new(),
        db: mongo_database(&settings.database).await,
        redis: redis_connection().await,
        settings,
        app: running,
    }
}

impl TestApp {
    /// The stream's partitions, as the service names them.
    pub(crate) fn partitions(&self) -> Partitions {
        partitions_of(&self.settings)
    }

    /// The write model the app reconciles with.
    pub(crate) fn write_books(&self) -> mongodb::Collection<bson::Document> {
        self.db
            .client()
            .database(&self.settings.write_database)
            .collection("books")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub(crate) async fn get_book(&self, id: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/books/{id}")))
            .send()
            .await
            .expect("request sent")
    }

    /// `GET /books` with these query parameters.
    pub(crate) async fn list(&self, params: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .get(self.url("/books"))
            .query(params)
            .send()
            .await
            .expect("request sent")
    }

    /// The body of a 200 answer of `GET /books` with these parameters.
    pub(crate) async fn list_page(&self, params: &[(&str, &str)]) -> Value {
        let response = self.list(params).await;
        assert_eq!(response.status(), 200, "GET /books {params:?}");
        response.json().await.expect("a JSON page")
    }

    /// The titles of the first page of `GET /books` with these parameters.
    pub(crate) async fn list_titles(&self, params: &[(&str, &str)]) -> Vec<String> {
        titles(&self.list_page(params).await)
    }

    /// `GET /authors/{name}`, the name URL-encoded.
    pub(crate) async fn get_author(&self, name: &str) -> reqwest::Response {
        let mut url = reqwest::Url::parse(&self.url("/authors")).expect("a URL");
        url.path_segments_mut().expect("a base URL").push(name);
        self.http.get(url).send().await.expect("request sent")
    }

    /// The Redis key of book `id`'s cache entry, in the epoch of the
    /// tests' one Redis server.
    pub(crate) async fn cache_key(&self, id: &str) -> String {
        let epoch = epoch_of(&[redis_server_id(&mut self.redis.clone()).await]);
        format!("{}{epoch}:{id}", self.settings.cache_prefix)
    }

    /// The fields of book `id`'s cache entry (empty when there is none).
    pub(crate) async fn cache_entry(&self, id: &str) -> std::collections::HashMap<String, String> {
        let mut redis = self.redis.clone();
        redis::cmd("HGETALL")
            .arg(self.cache_key(id).await)
            .query_async(&mut redis)
            .await
            .expect("HGETALL")
    }

    /// The book's JSON once the read model serves it at `version`.
    pub(crate) async fn wait_for_version(&self, id: &str, version: u64) -> Value {
        eventually(
            &format!("book {id} at version {version}"),
            DEADLINE,
            || async {
                let response = self.get_book(id).await;
                if response.status() != 200 {
                    return None;
                }
                let body: Value = response.json().await.ok()?;
                (body["version"] == version).then_some(body)
            },
        )
        .await
    }

    /// Appends a stream entry with these fields, as the relay would.
    pub(crate) async fn xadd(&self, fields: &[(&str, &str)]) -> String {
        let mut redis = self.redis.clone();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.settings.stream).arg("*");
        for (name, value) in fields {
            cmd.arg(*name).arg(*value);
        }
        cmd.query_async(&mut redis).await.expect("XADD")
    }

    pub(crate) async fn publish(&self, event: &BookEvent) -> String {
        let mut redis = self.redis.clone();
        xadd_event(&mut redis, &self.settings.stream, event).await
    }

    /// The service's dead-letter stream, as an operator sees it.
    pub(crate) fn dead_letters(&self) -> query_service::maintain::dead_letters::DeadLetters {
        query_service::maintain::dead_letters::DeadLetters {
            redis: self.redis.clone(),
            partitions: self.partitions(),
            dead_letter_stream: self.settings.dead_letter_stream.clone(),
        }
    }

    /// How many entries the dead-letter stream holds.
    pub(crate) async fn dead_letter_count(&self) -> u64 {
        let mut redis = self.redis.clone();
        redis::cmd("XLEN")
            .arg(&self.settings.dead_letter_stream)
            .query_async(&mut redis)
            .await
            .expect("XLEN")
    }

    /// Waits until the group holds no entry pending.
    pub(crate) async fn wait_until_nothing_pending(&self) {
        eventually("nothing left pending", DEADLINE, || async {
            (self.pending_count().await == 0).then_some(())
        })
        .await;
    }

    /// Stores an unreadable summary of `book`'s author, so that every event
    /// of `book` fails to apply; returns its `_id` (the author key), to
    /// remove it.
    pub(crate) async fn break_summary_of(&self, book: &Book) -> String {
        let key = book.state.author.key();
        self.db
            .collection::<bson::Document>("authors")
            .insert_one(bson::doc! { "_id": &key, "rev": "not a revision", "books": 42 })
            .await
            .expect("insert");
        key
    }

    /// Entries delivered to the group but not acknowledged.
    pub(crate) async fn pending_count(&self) -> u64 {
        self.group_info().await.map_or(0, |g| g.pending as u64)
    }

    async fn group_info(&self) -> Option<StreamInfoGroup> {
        let mut redis = self.redis.clone();
        let reply: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.settings.stream)
            .query_async(&mut redis)
            .await
            .ok()?;
        reply
            .groups
            .into_iter()
            .find(|g| g.name == self.settings.group)
    }

    /// Waits until the group has been delivered every entry of the stream
    /// and has acknowledged all of them.
    pub(crate) async fn wait_until_consumed(&self) {
        eventually(
            "every entry consumed and acknowledged",
            BULK_DEADLINE,
            || async {
                let mut redis = self.redis.clone();
                let stream: StreamInfoStreamReply = redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(&self.settings.stream)
                    .query_async(&mut redis)
                    .await
                    .ok()?;
                let group = self.group_info().await?;
                (group.last_delivered_id == stream.last_generated_id && group.pending == 0)
                    .then_some(())
            },
        )
        .await;
    }

    /// Stops the service as SIGTERM would and waits for it.
    pub(crate) async fn stop(mut self) {
        self.app.stop().await;
    }

    /// Waits until a failed delivery was handed back (its delivery count
    /// reset to zero), as the consumer does for an outage: the event stays
    /// unacknowledged and never counts towards dead-lettering.
    pub(crate) async fn wait_until_a_delivery_is_given_back(&self) {
        eventually("a failed delivery given back", DEADLINE, || async {
            let mut redis = self.redis.clone();
            let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&self.settings.stream)
                .arg(&self.settings.group)
                .arg("-")
                .arg("+")
                .arg(10)
                .query_async(&mut redis)
                .await
                .ok()?;
            pending
                .ids
                .iter()
                .any(|entry| entry.times_delivered == 0)
                .then_some(())
        })
        .await;
    }

    /// Starts the stop, as SIGTERM would, without waiting for it.
    pub(crate) fn begin_stop(&self) {
        self.app.begin_stop();
    }
}

/// The tests' one Redis server as the consumer names it (run id and
/// replication id), after which the cache names its epoch.
pub(crate) async fn redis_server_id(redis: &mut RedisConnection) -> String {
    let mut field = async |section: &str, name: &str| {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut *redis)
            .await
            .expect("INFO");
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .expect("the field")
            .trim()
            .to_owned()
    };
    let run = field("server", "run_id:").await;
    let replication = field("replication", "master_replid:").await;
    format!("{run}:{replication}")
}

/// Appends `event` to `stream` as the command side's relay does.
pub(crate) async fn xadd_event(
    redis: &mut RedisConnection,
    stream: &str,
    event: &BookEvent,
) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("type")
        .arg(event.event_type.as_str())
        .arg("data")
        .arg(event.to_json())
        .query_async(redis)
        .await
        .expect("XADD")
}

/// The command side's document of `book`, as its write model holds it
/// once the event is published.
pub(crate) fn write_document(book: &Book) -> bson::Document {
    bson::doc! {
        "_id": ObjectId::parse_str(book.id.as_str()).unwrap(),
        "title": book.state.title.as_str(),
        "author": book.state.author.as_str(),
        "publishedYear": book.state.published_year.value(),
        "createdAt": bson::DateTime::from_chrono(book.state.created_at),
        "updatedAt": bson::DateTime::from_chrono(book.state.updated_at),
        "version": i64::try_from(book.version).unwrap(),
        "outbox": [],
    }
}

/// The command side's tombstone of a book deleted at `version`.
pub(crate) fn write_tombstone(book: &Book, version: u64) -> bson::Document {
    bson::doc! {
        "_id": ObjectId::parse_str(book.id.as_str()).unwrap(),
        "updatedAt": bson::DateTime::now(),
        "version": i64::try_from(version).unwrap(),
        "deleted": true,
        "outbox": [],
    }
}

/// A book as the command side would create it.
pub(crate) fn new_book(title: &str) -> Book {
    new_book_by(title, "Ursula K. Le Guin", 1969)
}

/// A book by `author` published in `year`, created now.
pub(crate) fn new_book_by(title: &str, author: &str, year: i64) -> Book {
    let id = BookId::parse(&ObjectId::new().to_hex()).unwrap();
    let draft = BookDraft::parse(title, author, year).unwrap();
    Book::create(id, draft, Utc::now().trunc_subsecs(3))
}

/// Books made from `(title, author, year)`, created one second apart in
/// this order, so that creation order is known whatever the clock does.
pub(crate) fn books_in_creation_order(specs: &[(&str, &str, i64)]) -> Vec<Book> {
    let start = Utc::now().trunc_subsecs(3);
    specs
        .iter()
        .enumerate()
        .map(|(i, (title, author, year))| {
            let mut book = new_book_by(title, author, *year);
            let at = start + chrono::Duration::seconds(i64::try_from(i).unwrap());
            book.state.created_at = at;
            book.state.updated_at = at;
            book
        })
        .collect()
}

/// `book` at `version` after `change`, as an update event would carry it.
pub(crate) fn revised(book: &Book, version: u64, change: impl FnOnce(&mut BookState)) -> Book {
    let mut next = book.clone();
    next.version = version;
    change(&mut next.state);
    next.state.updated_at =
        book.state.created_at + chrono::Duration::seconds(i64::try_from(version).unwrap());
    next
}

/// An author name, for `revised`.
pub(crate) fn author(name: &str) -> Author {
    Author::parse(name).unwrap()
}

/// The `title` of each item of a `GET /books` page.
pub(crate) fn titles(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|b| b["title"].as_str().expect("a title").to_owned())
        .collect()
}

/// The event of `book` changed to `title` at `version`.
pub(crate) fn updated(book: &Book, title: &str, version: u64) -> BookEvent {
    let mut event = BookEvent::created(book, None);
    event.event_id = uuid::Uuid::now_v7();
    event.event_type = EventType::BookUpdated;
    event.version = version;
    let state = event.book.as_mut().unwrap();
    state.title = domain::Title::parse(title).unwrap();
    state.updated_at += chrono::Duration::seconds(i64::try_from(version).unwrap());
    event.occurred_at = state.updated_at;
    event
}

pub(crate) fn deleted(book: &Book, version: u64) -> BookEvent {
    let mut event = BookEvent::created(book, None);
    event.event_id = uuid::Uuid::now_v7();
    event.event_type = EventType::BookDeleted;
    event.version = version;
    event.book = None;
    event
}

/// Creates consumer group `group` on `stream`, from its first entry.
pub(crate) async fn create_group(redis: &mut RedisConnection, stream: &str, group: &str) {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(redis)
        .await
        .expect("XGROUP CREATE");
}
