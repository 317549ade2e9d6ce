//! Connections to MongoDB and Redis with bounded timeouts, so that a server
//! that is down makes a request fail fast instead of hang.

use std::{fmt, time::Duration};

use anyhow::Context;
use mongodb::{
    event::{command::CommandEvent, EventHandler},
    options::{Acknowledgment, ClientOptions, WriteConcern},
};
use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    AsyncConnectionConfig, RedisFuture, Value,
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

/// Where Redis is: one server (`redis://host:port`), or a Redis Cluster
/// (`redis+cluster://[user:password@]host:port,host:port,...`, its seed
/// nodes).
#[derive(Clone)]
pub enum RedisClient {
    Node(redis::Client),
    /// The seed nodes' URLs.
    Cluster(Vec<String>),
}

impl RedisClient {
    /// A client for `url`, checked for syntax only (no connection yet).
    pub fn open(url: &RedactedUrl) -> anyhow::Result<Self> {
        let invalid = || format!("invalid REDIS_URL {url}");
        let Some(seeds) = cluster_seeds(url.expose()) else {
            return Ok(Self::Node(
                redis::Client::open(url.expose()).with_context(invalid)?,
            ));
        };
        let seeds = seeds.with_context(invalid)?;
        // Parsed now, so a typo fails at start rather than at first use.
        ClusterClient::new(seeds.iter().map(String::as_str)).with_context(invalid)?;
        Ok(Self::Cluster(seeds))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The client of the one server; `None` on a cluster.
    pub fn node(&self) -> Option<&redis::Client> {
        match self {
            Self::Node(client) => Some(client),
            Self::Cluster(_) => None,
        }
    }

    /// A multiplexed connection for the whole process: it connects on first
    /// use, reconnects by itself (follows the cluster's slots as they move),
    /// and bounds every command by `timeout`. Redis being down at start is
    /// therefore not an error: commands fail until it is back.
    pub fn shared(&self, timeout: Duration) -> redis::RedisResult<RedisConnection> {
        match self {
            Self::Node(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map(RedisConnection::Node)
            }
            Self::Cluster(seeds) => Ok(RedisConnection::Cluster(
                cluster_client(seeds, timeout, timeout, 3)?
                    .get_pending_async_connection_with_config(
                        ClusterConfig::new()
                            .set_connection_timeout(timeout)
                            .set_response_timeout(timeout),
                    ),
            )),
        }
    }

    /// A connection of its own, opened now, for commands that block for up
    /// to `block` (it would hold up a shared one meanwhile); other waits are
    /// bounded by `timeout`.
    pub async fn dedicated(
        &self,
        timeout: Duration,
        block: Duration,
    ) -> redis::RedisResult<RedisConnection> {
        match self {
            Self::Node(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(block + timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(RedisConnection::Dedicated)
            }
            // No retries: a read retried after a lost reply would leave
            // what the first one delivered pending, unseen until the session
            // starts again; failing starts it again at once.
            Self::Cluster(seeds) => cluster_client(seeds, timeout, block + timeout, 0)?
                .get_async_connection()
                .await
                .map(RedisConnection::Cluster),
        }
    }
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

/// A cluster client whose commands are bounded by `response` each, retried
/// `retries` times (a failover or a slot move), so a dead cluster fails
/// fast.
fn cluster_client(
    seeds: &[String],
    connect: Duration,
    response: Duration,
    retries: u32,
) -> redis::RedisResult<ClusterClient> {
    ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(connect)
        .response_timeout(response)
        .retries(retries)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .build()
}

/// The seed nodes of a `redis+cluster://` URL as `redis://` URLs, with the
/// URL's credentials; `None` for any other URL.
fn cluster_seeds(url: &str) -> Option<anyhow::Result<Vec<String>>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.split(['/', '?']).next().unwrap_or_default();
    let seeds: Vec<String> = hosts
        .split(',')
        .filter(|host| !host.is_empty())
        .map(|host| format!("redis://{credentials}{host}"))
        .collect();
    if seeds.is_empty() {
        return Some(Err(anyhow::anyhow!("a cluster URL names no node")));
    }
    Some(Ok(seeds))
}

/// A connection to the one Redis server or to the cluster. On a cluster, a
/// pipeline whose commands address several slots (events to several
/// partitions, each with its PUBLISH) goes as one pipeline per slot, sent
/// together, each in its commands' order; a MULTI must address one slot.
#[derive(Clone)]
pub enum RedisConnection {
    Node(ConnectionManager),
    Dedicated(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(connection) => connection.req_packed_command(cmd),
            Self::Dedicated(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Dedicated(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => {
                if pipeline.is_transaction() {
                    connection.req_packed_commands(pipeline, offset, count)
                } else {
                    Box::pin(by_slot(connection.clone(), pipeline))
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(connection) => connection.get_db(),
            Self::Dedicated(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Sends `pipeline` (not a transaction) as one pipeline per slot, all at
/// once; the replies in the pipeline's order.
async fn by_slot(
    connection: ClusterConnection,
    pipeline: &redis::Pipeline,
) -> redis::RedisResult<Vec<Value>> {
    // (slot, its commands, their places in `pipeline`)
    let mut groups: Vec<(Option<u16>, redis::Pipeline, Vec<usize>)> = Vec::new();
    for (place, cmd) in pipeline.cmd_iter().enumerate() {
        let slot = first_key(cmd).map(crate::stream::slot);
        let group = match groups.iter().position(|(s, ..)| *s == slot) {
            Some(group) => group,
            None => {
                groups.push((slot, redis::pipe(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[group].1.add_command(cmd.clone());
        groups[group].2.push(place);
    }
    let replies = futures::future::try_join_all(groups.iter().map(|(_, commands, _)| {
        let mut connection = connection.clone();
        async move {
            connection
                .req_packed_commands(commands, 0, commands.len())
                .await
        }
    }))
    .await?;
    let mut ordered = vec![Value::Nil; pipeline.len()];
    for ((_, _, places), values) in groups.iter().zip(replies) {
        for (place, value) in places.iter().zip(values) {
            ordered[*place] = value;
        }
    }
    Ok(ordered)
}

/// The key a command's slot follows: its first argument, or for a script
/// its first key.
fn first_key(cmd: &redis::Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        _ => &[][..],
    });
    let name = args.next()?;
    if [&b"EVAL"[..], b"EVALSHA", b"FCALL"]
        .iter()
        .any(|script| name.eq_ignore_ascii_case(script))
    {
        let keys = args.nth(1)?;
        return (keys != b"0").then(|| args.next()).flatten();
    }
    args.next()
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
    fn a_cluster_url_names_its_seed_nodes_with_its_credentials() {
        let seeds = |url: &str| cluster_seeds(url).map(|seeds| seeds.unwrap());
        assert_eq!(
            seeds("redis+cluster://127.0.0.1:7000,127.0.0.1:7001"),
            Some(vec![
                "redis://127.0.0.1:7000".to_owned(),
                "redis://127.0.0.1:7001".to_owned()
            ])
        );
        assert_eq!(
            seeds("redis+cluster://user:p%40ss@a:1,b:2/"),
            Some(vec![
                "redis://user:p%40ss@a:1".to_owned(),
                "redis://user:p%40ss@b:2".to_owned()
            ])
        );
        assert_eq!(seeds("redis://127.0.0.1:6379"), None);
        assert!(cluster_seeds("redis+cluster://").unwrap().is_err());
        let url = RedactedUrl::new("redis+cluster://127.0.0.1:7000");
        assert!(RedisClient::open(&url).unwrap().is_cluster());
    }

    #[test]
    fn a_command_follows_its_first_key_and_a_script_its_first_key_argument() {
        let key = |cmd: &redis::Cmd| first_key(cmd).map(<[u8]>::to_vec);
        assert_eq!(
            key(redis::cmd("XADD").arg("s").arg("*")),
            Some(b"s".to_vec())
        );
        assert_eq!(
            key(redis::cmd("EVAL").arg("return 1").arg(1).arg("k")),
            Some(b"k".to_vec())
        );
        assert_eq!(key(redis::cmd("EVAL").arg("return 1").arg(0)), None);
        assert_eq!(key(&redis::cmd("PING")), None);
    }

    #[test]
    fn urls_without_credentials_show_as_they_are() {
        let url = RedactedUrl::new("redis://127.0.0.1:6379");
        assert_eq!(url.to_string(), "redis://127.0.0.1:6379");
    }
}
