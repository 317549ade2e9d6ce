//! `spawn_app()`: the real command-service on a free port, with its own
//! database and stream key, plus direct handles on both servers for
//! assertions.

use std::{net::SocketAddr, time::Duration};

use bson::{doc, Document};
use chrono::{DateTime, Utc};
use command_service::{auth::ApiTokens, config::Settings, startup::Application};
use futures::TryStreamExt;
use platform::RedactedUrl;
use platform::RedisConnection;
use redis::streams::StreamRangeReply;
use serde_json::Value;
use test_support::{eventually, mongo_database, redis_connection, unique, Cleanup, RunningApp};

/// How long a test waits for the relay before giving up.
pub(crate) const RELAY_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    pub(crate) http: reqwest::Client,
    pub(crate) db: mongodb::Database,
    pub(crate) redis: RedisConnection,
    pub(crate) settings: Settings,
    app: RunningApp,
}

/// Settings for a test: fresh database and stream, free port, fast sweep.
pub(crate) async fn test_settings() -> Settings {
    platform::telemetry::init_for_tests("command-service");
    let servers = test_support::servers().await;
    Settings {
        client_limits: platform::limits::ClientLimits::default(),
        host: [127, 0, 0, 1].into(),
        port: 0,
        mongo_url: RedactedUrl::new(servers.mongo_url.clone()),
        database: unique("cmd"),
        redis_url: RedactedUrl::new(servers.redis_url.clone()),
        stream: unique("events"),
        partitions: 1,
        dependency_timeout: Duration::from_secs(1),
        mongo_command_metrics: true,
        shutdown_timeout: Duration::from_secs(10),
        shutdown_drain: Duration::ZERO,
        outbox_sweep_interval: Duration::from_millis(100),
        relay_lease: Duration::from_secs(10),
        query_base_url: "http://query.test".to_owned(),
        body_limit: 16 * 1024,
        api_tokens: ApiTokens::parse(&format!("other-token, {TOKEN}")),
    }
}

/// The stream's partitions, as the service names them.
pub(crate) fn partitions_of(settings: &Settings) -> platform::stream::Partitions {
    platform::stream::Partitions::new(&settings.stream, settings.partitions, false)
        .expect("valid partitions")
}

/// The Redis key of the relay's sweep lease.
pub(crate) fn lease_key(settings: &Settings) -> String {
    format!("{}:relay-lease", settings.stream)
}

/// A token the test settings accept.
pub(crate) const TOKEN: &str = "test-token";

/// The service with fresh settings, whose data is removed after the test.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with_cleanup(test_settings().await).await
}

/// The service with these settings, whose database and stream are removed
/// after the test.
pub(crate) async fn spawn_app_with_cleanup(settings: Settings) -> TestApp {
    let mut keys = partitions_of(&settings).streams();
    keys.push(lease_key(&settings));
    keys.push(format!("{}:layout", settings.stream));
    let cleanup = Cleanup::new(vec![settings.database.clone()], keys);
    let mut app = spawn_app_with(settings).await;
    app.app.clean_up_after(cleanup);
    app
}

pub(crate) async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("command-service builds");
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
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub(crate) async fn post_book(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/books"))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// A request to `path` authenticated with the test token.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(TOKEN)
    }

    /// Creates a valid book and returns its JSON.
    pub(crate) async fn create_book(&self) -> Value {
        let response = self.post_book(&valid_book()).await;
        assert_eq!(response.status().as_u16(), 201);
        response.json().await.expect("a book")
    }

    pub(crate) async fn post_raw(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/books"))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Every document of the write model's `books` collection.
    pub(crate) async fn stored_books(&self) -> Vec<Document> {
        self.db
            .collection::<Document>("books")
            .find(doc! {})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("collect")
    }

    /// Every entry of the event stream, as (type field, decoded data field).
    pub(crate) async fn stream_events(&self) -> Vec<(String, Value)> {
        let mut redis = self.redis.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.settings.stream)
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .expect("XRANGE");
        reply
            .ids
            .iter()
            .map(|entry| {
                let kind: String = entry.get("type").expect("type field");
                let data: String = entry.get("data").expect("data field");
                (kind, serde_json::from_str(&data).expect("data is JSON"))
            })
            .collect()
    }

    /// `PUT /books/{id}` with `body`, authenticated.
    pub(crate) async fn put_book(&self, id: &str, body: &Value) -> reqwest::Response {
        self.request(reqwest::Method::PUT, &format!("/books/{id}"))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// `PATCH /books/{id}` with `body` as a JSON merge patch, authenticated.
    pub(crate) async fn patch_book(&self, id: &str, body: &Value) -> reqwest::Response {
        self.patch_raw(id, "application/merge-patch+json", body.to_string())
            .await
    }

    /// `PATCH /books/{id}` with any body and content type, authenticated.
    pub(crate) async fn patch_raw(
        &self,
        id: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.request(reqwest::Method::PATCH, &format!("/books/{id}"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// `DELETE /books/{id}`, authenticated.
    pub(crate) async fn delete_book(&self, id: &str) -> reqwest::Response {
        self.request(reqwest::Method::DELETE, &format!("/books/{id}"))
            .send()
            .await
            .expect("request sent")
    }

    /// The write-model document of book `id`.
    pub(crate) async fn stored_book(&self, id: &str) -> Document {
        let id = bson::oid::ObjectId::parse_str(id).expect("a book id");
        self.db
            .collection::<Document>("books")
            .find_one(doc! { "_id": id })
            .await
            .expect("find_one")
            .expect("the book is stored")
    }

    /// Waits until the stream holds exactly `count` events and every outbox
    /// is empty, and returns the events. Once it returns, the relay no
    /// longer touches any book document: tests that make one change after
    /// another wait for this in between, because on FerretDB v1 an update is
    /// not atomic and the relay clearing an outbox can undo a change made
    /// meanwhile (shown by `changes::a_change_made_right_after_create_is_kept`).
    pub(crate) async fn wait_until_relayed(&self, count: usize) -> Vec<(String, Value)> {
        eventually(
            &format!("{count} events relayed and every outbox cleared"),
            RELAY_DEADLINE,
            || async {
                let events = self.stream_events().await;
                let cleared = self.stored_books().await.iter().all(|b| {
                    b.get_array("outbox").is_ok_and(|a| a.is_empty()) && !b.contains_key("outboxAt")
                });
                (events.len() == count && cleared).then_some(events)
            },
        )
        .await
    }

    /// Creates a valid book and waits until its creation event is relayed
    /// (the stream then holds `events_before + 1` events).
    pub(crate) async fn create_relayed_book(&self, events_before: usize) -> Value {
        let book = self.create_book().await;
        self.wait_until_relayed(events_before + 1).await;
        book
    }

    /// Stops the service as SIGTERM would and waits for it.
    pub(crate) async fn stop(mut self) {
        self.app.stop().await;
    }
}

pub(crate) fn valid_book() -> Value {
    serde_json::json!({ "title": "Dune", "author": "Frank Herbert", "publishedYear": 1965 })
}

pub(crate) fn timestamp(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .expect("a timestamp is a string")
        .parse()
        .expect("an RFC 3339 timestamp")
}

pub(crate) fn id_of(book: &Value) -> &str {
    book["_id"].as_str().expect("_id is a string")
}

/// Asserts that the write model holds `book` as the service last answered it.
pub(crate) async fn assert_stored_as(app: &TestApp, book: &Value) {
    let stored = app.stored_book(id_of(book)).await;
    assert!(!stored.get_bool("deleted").unwrap_or(false), "{stored}");
    assert_eq!(book["title"], stored.get_str("title").unwrap(), "{stored}");
    assert_eq!(
        book["author"],
        stored.get_str("author").unwrap(),
        "{stored}"
    );
    assert_eq!(
        book["publishedYear"],
        stored.get_i32("publishedYear").unwrap(),
        "{stored}"
    );
    assert_eq!(
        book["version"],
        stored.get_i64("version").unwrap(),
        "{stored}"
    );
    for field in ["createdAt", "updatedAt"] {
        assert_eq!(
            timestamp(&book[field]),
            stored.get_datetime(field).unwrap().to_chrono(),
            "{field} in {stored}"
        );
    }
}

/// Asserts that no event was appended since the stream held `events`: a
/// book created now gives the very next one. (The relay takes events in the
/// order their requests handed them over, so an event of an earlier request
/// would come first.)
pub(crate) async fn assert_no_event_appended(app: &TestApp, events: usize) {
    let marker = app.create_book().await;
    let relayed = eventually("the marker book's event", RELAY_DEADLINE, || async {
        let events = app.stream_events().await;
        events
            .iter()
            .any(|(_, e)| e["bookId"] == marker["_id"])
            .then_some(events)
    })
    .await;
    assert_eq!(
        relayed.len(),
        events + 1,
        "a refused request appended an event: {relayed:?}"
    );
}

/// Asserts that `book` (as last answered, with `events` events in the
/// stream, all relayed) is stored unchanged and that no event was appended.
pub(crate) async fn assert_nothing_written(app: &TestApp, book: &Value, events: usize) {
    assert_stored_as(app, book).await;
    assert_no_event_appended(app, events).await;
}
