//! Connections to MongoDB and Redis with bounded timeouts, so that a server
//! that is down makes a request fail fast instead of hang.

use std::{fmt, num::NonZeroUsize, time::Duration};

use anyhow::Context;
use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    caching::{CacheConfig, CacheMode},
    ProtocolVersion,
};

/// A connection URL that may hold a password: its `Debug` and `Display`
/// forms hide the credentials, so settings can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The real URL, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:password@host... -> scheme://***@host...
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                write!(f, "{}://***{}", &self.0[..scheme_end], &self.0[at..])
            }
            _ => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A MongoDB client whose operations give up after `timeout` when no server
/// can be reached, writing with majority and journal acknowledgement unless
/// the URL says otherwise. The driver connects lazily and reconnects by
/// itself.
pub async fn mongo_client(
    url: &RedactedUrl,
    app_name: &str,
    timeout: Duration,
) -> anyhow::Result<mongodb::Client> {
    let mut options = ClientOptions::parse(url.expose())
        .await
        .with_context(|| format!("invalid MONGO_URL {url}"))?;
    options.app_name = Some(app_name.to_owned());
    // A write is answered (201, or XACK on the read side) only once it is
    // journaled on a majority: a server crash cannot take it back.
    // (FerretDB accepts and ignores write concerns.)
    if options.write_concern.is_none() {
        options.write_concern = Some(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build(),
        );
    }
    options.server_selection_timeout = Some(timeout);
    options.connect_timeout = Some(timeout);
    mongodb::Client::with_options(options).context("cannot build the MongoDB client")
}

/// A Redis client for `url`, checked for syntax only (no connection yet).
pub fn redis_client(url: &RedactedUrl) -> anyhow::Result<redis::Client> {
    redis::Client::open(url.expose()).with_context(|| format!("invalid REDIS_URL {url}"))
}

/// A multiplexed Redis connection that connects on first use, reconnects by
/// itself, and bounds every command by `timeout`. Redis being down at start
/// is therefore not an error: commands fail until it is back.
pub fn redis_manager(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))
}

/// The longest a key stays in the in-process copy of
/// [`redis_near_cache_manager`] without being asked from Redis again.
pub const NEAR_CACHE_TTL: Duration = Duration::from_secs(30);

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// Like [`redis_manager`], but the commands that opt in (see
/// `redis::Cmd::set_cache_config`) are answered from an in-process copy of
/// up to `entries` keys, kept coherent by Redis itself: the connection
/// speaks RESP3 and has key tracking on, so Redis pushes an invalidation
/// for every key of the copy that anyone changes, expires or flushes. A
/// reconnect discards the whole copy, since invalidations may have been
/// missed meanwhile, and each key is asked again after at most
/// `NEAR_CACHE_TTL`, which bounds how long an invalidation lost without the
/// socket closing (a silent network cut) can leave the copy behind.
pub fn redis_near_cache_manager(
    client: &redis::Client,
    timeout: Duration,
    entries: NonZeroUsize,
) -> redis::RedisResult<ConnectionManager> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let config = manager_config(timeout).set_cache_config(
        CacheConfig::new()
            .set_mode(CacheMode::OptIn)
            .set_size(entries)
            .set_default_client_ttl(NEAR_CACHE_TTL),
    );
    ConnectionManager::new_lazy_with_config(client, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_logs() {
        let url = RedactedUrl::new("mongodb://admin:s3cret@db:27017/books");
        assert_eq!(url.to_string(), "mongodb://***@db:27017/books");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "mongodb://admin:s3cret@db:27017/books");
    }

    #[test]
    fn urls_without_credentials_show_as_they_are() {
        let url = RedactedUrl::new("redis://127.0.0.1:6379");
        assert_eq!(url.to_string(), "redis://127.0.0.1:6379");
    }
}
