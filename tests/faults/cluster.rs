//! The Redis Cluster of a scenario that has one: six nodes, each on a free
//! loopback port with its files in the scenario's directory, started as
//! `scripts/servers.sh cluster-up` starts its own, joined into three
//! masters with one replica each by `redis-cli --cluster create`; and what
//! a failover needs to know: which master serves a slot, which replica
//! would take over from it, and when one did.

use std::{path::Path, time::Duration};

use anyhow::Context;

/// Nodes of the cluster: three masters, three replicas.
pub(crate) const NODES: usize = 6;
const MASTERS: usize = 3;
/// How long one question to one node may take: a killed node must not
/// hold a poll up.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a node of the cluster runs with, beside its port and directory:
/// the settings of `scripts/servers.sh` (a node silent for 2 s is
/// suspected, so a killed master is replaced in 3 to 4 s; a replica may
/// always take over; a master syncs a replica at once; an append-only file
/// fsynced at every write).
pub(crate) const NODE_ARGS: [&str; 14] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
    "--cluster-replica-validity-factor",
    "0",
    "--repl-diskless-sync-delay",
    "0",
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
];

/// One node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) port: u16,
    pub(crate) master: bool,
    /// Flagged `fail` or `fail?` by the node asked.
    pub(crate) failing: bool,
    /// A replica's master.
    pub(crate) master_id: Option<String>,
    /// Slot ranges it serves, inclusive.
    pub(crate) slots: Vec<(u16, u16)>,
}

impl Node {
    pub(crate) fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport[,host]> <flags> <master>
/// <ping> <pong> <epoch> <link> <slot>...`, where a slot is `n`, `a-b`, or
/// a bracketed slot in migration (not served yet).
pub(crate) fn parse_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|slot| !slot.starts_with('['))
                .filter_map(|slot| match slot.split_once('-') {
                    Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                    None => {
                        let slot = slot.parse().ok()?;
                        Some((slot, slot))
                    }
                })
                .collect();
            Some(Node {
                id: fields[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                failing: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// Sends one command to the node on `port` and returns its answer as text;
/// `None` when the node does not answer within `ASK_TIMEOUT`.
pub(crate) async fn ask(port: u16, command: &[&str]) -> Option<String> {
    let mut connection = node(port).await?;
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    let answer: redis::Value = cmd.query_async(&mut connection).await.ok()?;
    match answer {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text),
        redis::Value::VerbatimString { text, .. } => Some(text),
        redis::Value::Int(n) => Some(n.to_string()),
        redis::Value::Array(items) => items.into_iter().next().and_then(|first| match first {
            redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => None,
        }),
        _ => None,
    }
}

/// A connection to the node on `port` alone (commands on keys of other
/// nodes' slots are answered MOVED), bounded by `ASK_TIMEOUT`.
pub(crate) async fn node(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ASK_TIMEOUT))
        .set_response_timeout(Some(ASK_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

/// The cluster as the node on `port` sees it.
pub(crate) async fn nodes(port: u16) -> Option<Vec<Node>> {
    Some(parse_nodes(&ask(port, &["CLUSTER", "NODES"]).await?))
}

/// Whether `text` (an `INFO`-style answer) has the line `line`.
fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim_end() == line)
}

/// Whether the cluster on `ports` is whole and usable, as
/// `scripts/servers.sh` judges it: every node says the state is ok, all
/// slots served, six nodes known, three masters serving slots, and no node
/// failing; each master has its replica online, each replica its link to
/// its master up.
pub(crate) async fn ready(ports: &[u16]) -> bool {
    let mut masters = 0;
    for &port in ports {
        let Some(info) = ask(port, &["CLUSTER", "INFO"]).await else {
            return false;
        };
        let whole = [
            "cluster_state:ok",
            "cluster_slots_ok:16384",
            "cluster_known_nodes:6",
            "cluster_size:3",
        ]
        .iter()
        .all(|line| has_line(&info, line));
        if !whole {
            return false;
        }
        match nodes(port).await {
            Some(nodes) if nodes.iter().all(|n| !n.failing) => {}
            _ => return false,
        }
        let Some(replication) = ask(port, &["INFO", "replication"]).await else {
            return false;
        };
        if has_line(&replication, "role:master") {
            let replica_online = replication
                .lines()
                .any(|l| l.starts_with("slave0:") && l.contains("state=online"));
            if !has_line(&replication, "connected_slaves:1") || !replica_online {
                return false;
            }
            masters += 1;
        } else if !has_line(&replication, "master_link_status:up") {
            return false;
        }
    }
    masters == MASTERS
}

/// Whether the node on `port` is a master and sees the cluster serve every
/// slot: a promoted replica that serves its slots again.
pub(crate) async fn serving_master(port: u16) -> bool {
    let (Some(role), Some(info)) = (
        ask(port, &["ROLE"]).await,
        ask(port, &["CLUSTER", "INFO"]).await,
    ) else {
        return false;
    };
    role == "master" && has_line(&info, "cluster_state:ok")
}

/// Joins the nodes on `ports` into a cluster of three masters with a
/// replica each (`redis-cli --cluster create`), its output in
/// `<dir>/redis-cluster-create.log`.
pub(crate) async fn create(redis_cli: &Path, ports: &[u16], dir: &Path) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(redis_cli)
        .arg("--cluster")
        .arg("create")
        .args(ports.iter().map(|port| format!("127.0.0.1:{port}")))
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .env_clear()
        .envs(crate::system::base_env())
        .output()
        .await
        .context("cannot run redis-cli --cluster create")?;
    std::fs::write(
        dir.join("redis-cluster-create.log"),
        [&output.stdout[..], &output.stderr].concat(),
    )?;
    anyhow::ensure!(
        output.status.success(),
        "redis-cli --cluster create failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
