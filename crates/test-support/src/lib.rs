//! Helpers shared by the service tests and the end-to-end tests.
//!
//! Tests run against real servers. Their addresses come from `TEST_MONGO_URL`
//! / `TEST_REDIS_URL`, else `MONGO_URL` / `REDIS_URL` (what
//! `scripts/test.sh` sets after starting FerretDB and Redis). When neither is
//! set and a Docker engine is reachable, MongoDB 7 and Redis 7 containers are
//! started once per test binary with testcontainers.

mod app;
mod cleanup;
mod containers;
pub mod logs;
pub mod metrics;
mod proxy;

use std::{future::Future, time::Duration};

pub use app::{assert_problem, RunningApp};
pub use cleanup::Cleanup;
pub use proxy::TcpProxy;

/// Addresses of the servers the tests use.
#[derive(Debug, Clone)]
pub struct Servers {
    pub mongo_url: String,
    pub redis_url: String,
}

static SERVERS: tokio::sync::OnceCell<Servers> = tokio::sync::OnceCell::const_new();

/// The servers for this test run (see the crate docs for where they come from).
pub async fn servers() -> &'static Servers {
    SERVERS
        .get_or_init(|| async {
            let from_env = |names: [&str; 2]| {
                names
                    .iter()
                    .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
            };
            let mongo = from_env(["TEST_MONGO_URL", "MONGO_URL"]);
            let redis = from_env(["TEST_REDIS_URL", "REDIS_URL"]);
            match (mongo, redis) {
                (Some(mongo_url), Some(redis_url)) => Servers {
                    mongo_url,
                    redis_url,
                },
                (mongo, redis) => containers::start(mongo, redis).await,
            }
        })
        .await
}

/// A handle on database `name` of the tests' MongoDB, for assertions.
pub async fn mongo_database(name: &str) -> mongodb::Database {
    let client = mongodb::Client::with_uri_str(&servers().await.mongo_url)
        .await
        .expect("a MongoDB client");
    client.database(name)
}

/// A connection to the tests' Redis (one server or a cluster), for
/// assertions and injected entries.
pub async fn redis_connection() -> platform::RedisConnection {
    let url = platform::RedactedUrl::new(servers().await.redis_url.as_str());
    platform::RedisClient::open(&url)
        .expect("a Redis URL")
        .shared(std::time::Duration::from_secs(5))
        .expect("a Redis connection")
}

/// A name no other test uses: `prefix` plus 12 random hex digits. Databases
/// and stream keys get one each, so tests run in parallel.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// Polls `check` every 20 ms until it returns `Some`, and returns that
/// value; panics naming `what` when `deadline` passes first.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= give_up {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `host:port` of a `mongodb://` or `redis://` URL (credentials, path
/// and options dropped), for pointing a proxy at it.
pub(crate) fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = &rest[..end];
    // A MongoDB seed list: the first host is enough for a proxy.
    host.split(',').next().unwrap_or(host).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_drops_scheme_credentials_and_options() {
        assert_eq!(host_port("mongodb://u:p@db:27017/books?x=1"), "db:27017");
        assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(host_port("redis://127.0.0.1:6379/0"), "127.0.0.1:6379");
        assert_eq!(host_port("mongodb://a:1,b:2/?replicaSet=rs"), "a:1");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("t"), unique("t"));
    }
}
