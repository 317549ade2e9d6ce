//! Connections to MongoDB and Redis with bounded timeouts, so that a server
//! that is down makes a request fail fast instead of hang.

use std::{fmt, time::Duration};

use anyhow::Context;
use mongodb::{
    event::{command::CommandEvent, EventHandler},
    options::{Acknowledgment, ClientOptions, WriteConcern},
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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
/// the URL says otherwise. With `count_commands` it counts every command
/// it sends by name (`books_mongodb_commands_total`): off by default, as
/// the driver then copies every command and reply for the handler (20 to
/// 40% more CPU per request, measured). The driver connects lazily and
/// reconnects by itself.
pub async fn mongo_client(
    url: &RedactedUrl,
    app_name: &str,
    timeout: Duration,
    count_commands: bool,
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
    if count_commands {
        options.command_event_handler = Some(EventHandler::callback(|event| {
            if let CommandEvent::Started(started) = event {
                crate::metrics::mongodb_command_started(started.command_name);
            }
        }));
    }
    mongodb::Client::with_options(options).context("cannot build the MongoDB client")
}

/// A Redis client for `url`, checked for syntax only (no connection yet).
pub fn redis_client(url: &RedactedUrl) -> anyhow::Result<redis::Client> {
    redis::Client::open(url.expose()).with_context(|| format!("invalid REDIS_URL {url}"))
}

/// `client`, speaking RESP3 (which server pushes, such as the
/// invalidations of client-side caching, need).
pub fn resp3(client: &redis::Client) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// A multiplexed Redis connection that connects on first use, reconnects by
/// itself, and bounds every command by `timeout`. Redis being down at start
/// is therefore not an error: commands fail until it is back.
pub fn redis_manager(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
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
