//! `spawn_app()`: the real command-service on a free port, with its own
//! database and stream key, plus direct handles on both servers for
//! assertions.

use std::{net::SocketAddr, time::Duration};

use bson::{doc, Document};
use command_service::{auth::ApiTokens, config::Settings, startup::Application};
use futures::TryStreamExt;
use platform::RedactedUrl;
use redis::{aio::ConnectionManager, streams::StreamRangeReply};
use serde_json::Value;
use test_support::{mongo_database, redis_connection, unique, Cleanup, RunningApp};

pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    pub(crate) http: reqwest::Client,
    pub(crate) db: mongodb::Database,
    pub(crate) redis: ConnectionManager,
    pub(crate) settings: Settings,
    app: RunningApp,
}

/// Settings for a test: fresh database and stream, free port, fast sweep.
pub(crate) async fn test_settings() -> Settings {
    platform::telemetry::init_for_tests("command-service");
    let servers = test_support::servers().await;
    Settings {
        host: [127, 0, 0, 1].into(),
        port: 0,
        mongo_url: RedactedUrl::new(servers.mongo_url.clone()),
        database: unique("cmd"),
        redis_url: RedactedUrl::new(servers.redis_url.clone()),
        stream: unique("events"),
        dependency_timeout: Duration::from_secs(1),
        outbox_sweep_interval: Duration::from_millis(100),
        query_base_url: "http://query.test".to_owned(),
        body_limit: 16 * 1024,
        api_tokens: ApiTokens::parse(&format!("other-token, {TOKEN}")),
    }
}

/// A token the test settings accept.
pub(crate) const TOKEN: &str = "test-token";

/// The service with fresh settings, whose data is removed after the test.
pub(crate) async fn spawn_app() -> TestApp {
    let settings = test_settings().await;
    let cleanup = Cleanup::new(
        vec![settings.database.clone()],
        vec![settings.stream.clone()],
    );
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

    /// Stops the service as SIGTERM would and waits for it.
    pub(crate) async fn stop(mut self) {
        self.app.stop().await;
    }
}

pub(crate) fn valid_book() -> Value {
    serde_json::json!({ "title": "Dune", "author": "Frank Herbert", "publishedYear": 1965 })
}
