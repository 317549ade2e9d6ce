//! The scenarios: each starts its own system, drives a burst of writes,
//! injects one fault when a third of the burst is done, lets the component
//! come back, and checks that the read model converges to the write model
//! and that every acknowledged write arrived, plus what the fault itself
//! must not break.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use anyhow::Context;
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use platform::stream::Partitions;
use redis::streams::StreamRangeReply;
use tokio::time::Instant;

use crate::{
    audit::{self, Audit, AuditStats, BookVersion},
    burst::{Burst, BurstResult, Outcome, Progress, Write},
    cluster,
    convergence::{api_differences, caught_up, converge, Convergence, Models},
    processes::Binaries,
    report::Row,
    support::{eventually, seconds, tail},
    system::{RedisSetup, System, Topology, DEPENDENCY_TIMEOUT},
};

/// Writes per burst.
const WRITES: usize = 2000;
/// Concurrent clients of the burst.
const CLIENTS: usize = 8;
/// How long the read model may take to catch up once the burst is over.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(240);
/// A component stays down at least this long...
const OUTAGE_MIN: Duration = Duration::from_secs(1);
/// ...and until this many writes were attempted meanwhile...
const OUTAGE_WRITES: usize = WRITES / 6;
/// ...but no longer than this.
const OUTAGE_MAX: Duration = Duration::from_secs(5);
/// How much longer than `DEPENDENCY_TIMEOUT_MS` a write may take while the
/// database is down: a change makes more than one round trip to MongoDB,
/// each waiting up to the timeout, on a loaded machine. Anything beyond is
/// a hang.
const UNAVAILABLE_SLACK: Duration = Duration::from_secs(4);
/// How long FerretDB may take to serve again once a restarted PostgreSQL
/// accepts connections.
const FERRET_RECOVERY: Duration = Duration::from_secs(10);
/// How long the Redis fault waits for the query services to have
/// something left to apply.
const BEHIND_DEADLINE: Duration = Duration::from_secs(30);
/// Log lines shown per process when a scenario fails.
const LOG_LINES: usize = 40;
/// How long a killed master's replica may take to serve its slots: the
/// node timeout (2 s), the failure report and the election take 3 to 4 s
/// on an idle machine.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// Partitions of the stream on the scenario's cluster: more than its three
/// masters, so that one master serves two.
const CLUSTER_PARTITIONS: usize = 4;
/// Events a master takes after its replica was cut off, before it is
/// killed...
const REPLICA_BEHIND: usize = 40;
/// ...or as many as it took in this long (the replica stays stopped
/// meanwhile, well within the cluster's node timeout of 2 s).
const REPLICA_BEHIND_DEADLINE: Duration = Duration::from_secs(1);
/// A dropped event re-emitted later than this after the kill was missed by
/// the reconciliations the failover woke (they end within 15 s here) and
/// brought by a periodic one (`RECONCILE_INTERVAL_MS`, 60 s).
const LATE_REPAIR: Duration = Duration::from_secs(40);
/// What query-service logs after a reconciliation that repaired books.
const RECONCILED: &str = "reconciled the read model with the write model";
/// What query-service logs when another server holds a partition.
const NEW_SERVER: &str = "another Redis server holds the partition now";
/// What query-service logs when it was told to reconcile.
const WOKEN: &str = "Redis may have lost events: reconciling";

/// What goes wrong mid-burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// query-service is killed with SIGKILL, then restarted.
    KillQuery,
    /// command-service is killed with SIGKILL, then restarted.
    KillCommand,
    /// Redis is killed with SIGKILL, then restarted on the same data.
    RestartRedis,
    /// FerretDB is killed with SIGKILL, then restarted on the same data
    /// (PostgreSQL stays up).
    StopFerret,
    /// PostgreSQL (its postmaster and every server process) is killed with
    /// SIGKILL, then restarted on the same data directory, where it recovers
    /// from its WAL; FerretDB stays up and must serve again by itself.
    RestartPostgres,
    /// One replica of each service is killed with SIGKILL and stays down:
    /// the others must take over its pending events and its sweep.
    KillReplicas,
    /// Entries that are not valid events are appended to the stream.
    Poison,
    /// The Redis Cluster master that serves the most partitions of the
    /// stream is killed with SIGKILL; its replica takes over (with what
    /// asynchronous replication had brought it), and the killed node,
    /// restarted, rejoins as a replica. With `replica_behind`, the replica
    /// is first stopped (SIGSTOP) and its link to the master cut, and the
    /// master is killed once it took writes the replica never got: the
    /// failover then certainly drops events (the replica goes on once the
    /// master is dead).
    FailOverMaster { replica_behind: bool },
}

pub(crate) struct Scenario {
    /// Short name, what the filter argument matches.
    pub(crate) name: &'static str,
    fault: Fault,
    topology: Topology,
}

pub(crate) fn all() -> Vec<Scenario> {
    let one = |persistent| Topology {
        replicas: 1,
        redis: RedisSetup::Single { persistent },
    };
    let cluster = Topology {
        replicas: 1,
        redis: RedisSetup::Cluster {
            partitions: CLUSTER_PARTITIONS,
        },
    };
    vec![
        Scenario {
            name: "query-service-sigkill",
            fault: Fault::KillQuery,
            topology: one(true),
        },
        Scenario {
            name: "command-service-sigkill",
            fault: Fault::KillCommand,
            topology: one(true),
        },
        Scenario {
            name: "redis-restart-persistent",
            fault: Fault::RestartRedis,
            topology: one(true),
        },
        Scenario {
            name: "redis-restart-without-persistence",
            fault: Fault::RestartRedis,
            topology: one(false),
        },
        Scenario {
            name: "ferretdb-restart",
            fault: Fault::StopFerret,
            topology: one(true),
        },
        Scenario {
            name: "postgresql-restart",
            fault: Fault::RestartPostgres,
            topology: one(true),
        },
        Scenario {
            name: "replicas-one-of-each-sigkill",
            fault: Fault::KillReplicas,
            topology: Topology {
                replicas: 2,
                redis: RedisSetup::Single { persistent: true },
            },
        },
        Scenario {
            name: "poison-event",
            fault: Fault::Poison,
            topology: one(true),
        },
        Scenario {
            name: "redis-cluster-master-failover",
            fault: Fault::FailOverMaster {
                replica_behind: false,
            },
            topology: cluster,
        },
        Scenario {
            name: "redis-cluster-master-failover-replica-behind",
            fault: Fault::FailOverMaster {
                replica_behind: true,
            },
            topology: cluster,
        },
    ]
}

/// What the fault did, and when.
#[derive(Debug, Default)]
struct Injected {
    /// When the component went down (after it was gone).
    down: Option<Instant>,
    /// When it was started again (before it answered).
    up: Option<Instant>,
    /// Entry ids of the poison appended to the stream.
    poison: Vec<String>,
    /// The failover of a cluster master.
    failover: Option<Failover>,
    notes: Vec<String>,
    /// Failed checks of the fault itself.
    problems: Vec<String>,
}

/// A master's failover, as the scenario caused it.
#[derive(Debug)]
struct Failover {
    /// The partitions the killed master served.
    partitions: Vec<usize>,
    /// With the replica cut off: the events the master took afterwards.
    cut_off: Option<BTreeSet<BookVersion>>,
    /// When it was killed.
    killed: Instant,
    /// When it was killed, by the clock the services' logs use.
    killed_at: DateTime<Utc>,
}

/// Runs one scenario from start to report; never panics on a failed check.
pub(crate) async fn run(scenario: &Scenario, binaries: &Binaries) -> Row {
    let started = Instant::now();
    let mut row = Row::new(scenario.name);
    let mut system = match System::start(binaries, scenario.topology, scenario.name).await {
        Ok(system) => system,
        Err(error) => {
            row.problems
                .push(format!("the system did not start: {error:#}"));
            row.total = started.elapsed();
            return row;
        }
    };
    if let Err(error) = exercise(scenario, &mut system, &mut row).await {
        row.problems.push(format!("{error:#}"));
    }
    row.total = started.elapsed();
    let verbose = std::env::var_os("TEST_LOG").is_some();
    if !row.passed() || verbose {
        for (name, log) in system.logs() {
            eprintln!(
                "----- {}: last lines of {name} ({}) -----\n{}",
                scenario.name,
                log.display(),
                tail(&log, LOG_LINES)
            );
        }
    }
    if !row.passed() {
        let kept = system.keep_dir();
        row.notes
            .push(format!("data and logs kept in {}", kept.display()));
    }
    row
}

async fn exercise(scenario: &Scenario, system: &mut System, row: &mut Row) -> anyhow::Result<()> {
    let audit = Audit::start(system.redis_client()?, system.names.clone());
    let progress = Arc::new(Progress::default());
    let burst = Burst {
        total: WRITES,
        clients: CLIENTS,
        command_urls: system.command_urls(),
    };
    let burst = tokio::spawn(burst.run(progress.clone()));
    let injected = inject(scenario.fault, system, &progress).await;
    let burst: BurstResult = burst.await??;
    let injected = injected?;
    row.burst = match (
        burst.writes.first(),
        burst.writes.iter().map(Write::ended).max(),
    ) {
        (Some(first), Some(last)) => last - first.started,
        _ => Duration::ZERO,
    };
    row.count(&burst.writes);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let query_urls = system.live_query_urls();
    let models = Models {
        write_db: system.write_db(),
        read_db: system.read_db(),
        redis: system.redis_connection()?,
        names: &system.names,
        http,
        query_urls,
    };
    let convergence = converge(&models, burst.ended, CONVERGE_DEADLINE).await;
    let audit = audit.finish().await;
    row.delivered = audit.delivered;
    row.duplicates = audit.duplicates;
    row.reemitted = audit.reemitted;
    row.converged_after = convergence.after;
    row.converged_after_fault = match (convergence.after, injected.down) {
        (Some(after), Some(down)) => Some((burst.ended + after).saturating_duration_since(down)),
        _ => None,
    };

    check_convergence(&convergence, &burst.writes, row);
    check_api(&models, &convergence, row).await;
    check_answers(&burst.writes, row);
    let lost_partitions = match &injected.failover {
        Some(failover) => failover.partitions.clone(),
        None => Vec::new(),
    };
    check_stream(
        scenario,
        &lost_partitions,
        &system.names.partitions,
        &convergence,
        &audit,
        &burst.writes,
        row,
    );
    if let Some(failover) = &injected.failover {
        check_dropped(system, failover, &convergence, &audit, &burst.writes, row).await?;
    }
    note_reconciliation(system, injected.failover.as_ref(), row);
    match scenario.fault {
        Fault::StopFerret | Fault::RestartPostgres => check_outage(&injected, &burst.writes, row),
        Fault::Poison => check_poison(system, &injected, &burst.writes, row).await?,
        _ => {}
    }
    if scenario.fault != Fault::Poison {
        let letters = dead_letters(system).await?;
        if !letters.is_empty() {
            row.problems.push(format!(
                "{} entries were dead-lettered though no event was poison: {}",
                letters.len(),
                letters
                    .iter()
                    .take(3)
                    .map(|(_, reason)| reason.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    if let (Some(down), Some(up)) = (injected.down, injected.up) {
        row.notes
            .push(format!("down for {:.1} s", seconds(up - down)));
    }
    row.notes.extend(injected.notes);
    row.problems.extend(injected.problems);
    if audit.regrouped > 0 {
        row.notes.push(format!(
            "audit group created again {} time(s) (Redis lost it)",
            audit.regrouped
        ));
    }
    Ok(())
}

/// Waits until a third of the burst is done, then injects the fault and,
/// unless the fault is a replica that stays dead, brings the component back
/// once the outage has lasted.
async fn inject(
    fault: Fault,
    system: &mut System,
    progress: &Progress,
) -> anyhow::Result<Injected> {
    eventually("a third of the burst", Duration::from_secs(600), || async {
        (progress.finished() >= WRITES / 3).then_some(())
    })
    .await?;
    let mut injected = Injected::default();
    match fault {
        Fault::KillQuery => {
            system.queries[0].process.kill().await?;
            injected.down = Some(Instant::now());
            outage(progress).await;
            injected.up = Some(Instant::now());
            system.restart_service(true, 0).await?;
        }
        Fault::KillCommand => {
            system.commands[0].process.kill().await?;
            injected.down = Some(Instant::now());
            outage(progress).await;
            injected.up = Some(Instant::now());
            system.restart_service(false, 0).await?;
        }
        Fault::RestartRedis => {
            // Kill it while the stream holds entries the query services
            // have not applied yet: those are what a Redis without
            // persistence loses.
            let redis = system.redis_connection()?;
            let behind = eventually(
                "the query services to be behind the stream",
                BEHIND_DEADLINE,
                || async { (caught_up(&redis, &system.names).await == Some(false)).then_some(()) },
            )
            .await;
            if behind.is_err() {
                injected.notes.push(format!(
                    "the query services were never behind the stream for {BEHIND_DEADLINE:?}: Redis was killed with nothing unapplied"
                ));
            }
            system.redis[0].kill().await?;
            injected.down = Some(Instant::now());
            outage(progress).await;
            injected.up = Some(Instant::now());
            system.restart_redis(0).await?;
        }
        Fault::StopFerret => {
            system.ferret.kill().await?;
            injected.down = Some(Instant::now());
            outage(progress).await;
            injected.up = Some(Instant::now());
            system.restart_ferret().await?;
        }
        Fault::RestartPostgres => {
            system.kill_postgres().await?;
            injected.down = Some(Instant::now());
            outage(progress).await;
            injected.up = Some(Instant::now());
            system.restart_postgres().await?;
            let accepting = Instant::now();
            // FerretDB is not restarted: its connection pool dials
            // PostgreSQL again for the next command.
            system.await_ferret_within(FERRET_RECOVERY).await?;
            injected.notes.push(format!(
                "PostgreSQL accepted connections {:.2} s after its restart; FerretDB, never restarted, answered a ping {:.2} s later",
                seconds(accepting - injected.up.unwrap_or(accepting)),
                seconds(accepting.elapsed())
            ));
            let log = std::fs::read_to_string(system.postgres.log()).unwrap_or_default();
            let restarted = log.rsplit("postgresql start #").next().unwrap_or_default();
            if restarted.contains("automatic recovery in progress") {
                let redo = restarted
                    .lines()
                    .find(|l| l.contains("redo done at") || l.contains("redo is not required"))
                    .and_then(|l| l.split("LOG:").nth(1))
                    .unwrap_or("no redo line")
                    .trim();
                injected
                    .notes
                    .push(format!("PostgreSQL recovered from its WAL: {redo}"));
            } else {
                injected.problems.push(
                    "PostgreSQL's log shows no crash recovery after its restart: was it killed?"
                        .to_owned(),
                );
            }
        }
        Fault::KillReplicas => {
            let (command, query) = (system.commands.len() - 1, system.queries.len() - 1);
            system.commands[command].process.kill().await?;
            system.queries[query].process.kill().await?;
            injected.down = Some(Instant::now());
        }
        Fault::Poison => {
            injected.poison = inject_poison(system).await?;
            injected.down = Some(Instant::now());
        }
        Fault::FailOverMaster { replica_behind } => {
            fail_over_master(system, replica_behind, &mut injected).await?;
        }
    }
    Ok(injected)
}

/// Kills the master that serves the most partitions (with `replica_behind`,
/// once it took writes its stopped replica never got), waits until its
/// replica serves them, then starts the killed node again and waits until
/// it has rejoined as a replica (the cluster whole again).
async fn fail_over_master(
    system: &mut System,
    replica_behind: bool,
    injected: &mut Injected,
) -> anyhow::Result<()> {
    let nodes = cluster::nodes(system.redis_ports[0])
        .await
        .context("the cluster's first node does not list the nodes")?;
    let partitions = &system.names.partitions;
    let served_by = |node: &cluster::Node| -> Vec<usize> {
        (0..partitions.count())
            .filter(|&p| node.serves(platform::stream::slot(partitions.stream(p).as_bytes())))
            .collect()
    };
    let master = nodes
        .iter()
        .filter(|node| node.master)
        .max_by_key(|node| served_by(node).len())
        .context("the cluster has no master")?;
    let replica = nodes
        .iter()
        .find(|node| node.master_id.as_deref() == Some(master.id.as_str()))
        .with_context(|| format!("the master on port {} has no replica", master.port))?;
    let node_of = |port: u16| {
        system
            .redis_ports
            .iter()
            .position(|p| *p == port)
            .with_context(|| format!("no node of the scenario listens on port {port}"))
    };
    let (index, replica_index) = (node_of(master.port)?, node_of(replica.port)?);
    let served = served_by(master);
    let cut_off = if replica_behind {
        let keys: Vec<String> = served.iter().map(|&p| partitions.stream(p)).collect();
        let (note, events) =
            leave_replica_behind(system, master.port, replica_index, &keys).await?;
        injected.notes.push(note);
        Some(events)
    } else {
        None
    };
    let killed_at = Utc::now();
    system.redis[index].kill().await?;
    let down = Instant::now();
    let failover = Failover {
        partitions: served,
        cut_off,
        killed: down,
        killed_at,
    };
    injected.down = Some(down);
    if replica_behind {
        system.redis[replica_index].resume()?;
    }
    let replica_port = replica.port;
    eventually(
        &format!("the replica on port {replica_port} to serve the killed master's slots"),
        FAILOVER_DEADLINE,
        || async { cluster::serving_master(replica_port).await.then_some(()) },
    )
    .await?;
    injected.up = Some(Instant::now());
    injected.notes.push(format!(
        "master on port {} (partitions {:?}) killed; its replica on port {replica_port} served its slots {:.2} s later",
        master.port,
        failover.partitions,
        seconds(down.elapsed())
    ));
    system.restart_redis(index).await?;
    injected.notes.push(format!(
        "the killed node, restarted, had rejoined as a replica and the cluster was whole {:.1} s after the kill",
        seconds(down.elapsed())
    ));
    injected.failover = Some(failover);
    Ok(())
}

/// Lasts while the component is down: at least `OUTAGE_MIN` and until
/// `OUTAGE_WRITES` writes were attempted, at most `OUTAGE_MAX`, and never
/// beyond the burst.
async fn outage(progress: &Progress) {
    let start = Instant::now();
    let before = progress.finished();
    loop {
        let elapsed = start.elapsed();
        let attempted = progress.finished() - before;
        if elapsed >= OUTAGE_MAX
            || (elapsed >= OUTAGE_MIN && attempted >= OUTAGE_WRITES)
            || progress.finished() >= WRITES
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the replica (node `replica`) and cuts its link to the master on
/// `master_port`, then waits until the master appended `REPLICA_BEHIND`
/// more events to `keys` (its partitions), which the replica will never
/// get. Returns what it did, and those events, as read from the master
/// (just before it is killed: a few more may come in between).
async fn leave_replica_behind(
    system: &mut System,
    master_port: u16,
    replica: usize,
    keys: &[String],
) -> anyhow::Result<(String, BTreeSet<BookVersion>)> {
    let mut master = cluster::node(master_port)
        .await
        .with_context(|| format!("the master on port {master_port} does not answer"))?;
    system.redis[replica].pause()?;
    let cut = cluster::ask(master_port, &["CLIENT", "KILL", "TYPE", "replica"]).await;
    anyhow::ensure!(
        cut.as_deref() == Some("1"),
        "the master on port {master_port} did not drop its replica's link: {cut:?}"
    );
    // The last entry of each partition the replica got.
    let mut got = Vec::new();
    for key in keys {
        got.push(
            audit::relayed_after(&mut master, key, audit::FIRST)
                .await?
                .1,
        );
    }
    let got = &got;
    let started = Instant::now();
    let waited = eventually(
        "the master to take events its replica does not get",
        REPLICA_BEHIND_DEADLINE,
        || {
            let mut master = master.clone();
            async move {
                let events = relayed_since(&mut master, keys, got).await.ok()?;
                (events.len() >= REPLICA_BEHIND).then_some(())
            }
        },
    )
    .await;
    let events: BTreeSet<BookVersion> = relayed_since(&mut master, keys, got)
        .await?
        .into_iter()
        .collect();
    let note = format!(
        "replica stopped and cut off; the master took {} event(s) in the {:.2} s before it was killed{}",
        events.len(),
        seconds(started.elapsed()),
        if waited.is_ok() {
            String::new()
        } else {
            format!(" (fewer than the {REPLICA_BEHIND} waited for)")
        }
    );
    Ok((note, events))
}

/// The events the relay appended to `keys` after the entries `after` (one
/// id per key).
async fn relayed_since(
    connection: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
    after: &[String],
) -> redis::RedisResult<Vec<BookVersion>> {
    let mut events = Vec::new();
    for (key, after) in keys.iter().zip(after) {
        events.extend(audit::relayed_after(connection, key, after).await?.0);
    }
    Ok(events)
}

/// Appends three entries no consumer can apply: data that is not JSON, no
/// data at all, and an event whose book id is not an id.
async fn inject_poison(system: &System) -> anyhow::Result<Vec<String>> {
    let mut connection = system.redis_connection()?;
    let bad_id = serde_json::json!({
        "eventId": "0193f1a4-7c4e-7d30-9c1e-2b9e8f3a4c51",
        "type": "bookCreated",
        "bookId": "not-a-book-id",
        "version": 1,
        "occurredAt": "2026-11-27T11:14:14.171Z",
        "book": {
            "title": "Poison",
            "author": "Nobody",
            "publishedYear": 1965,
            "createdAt": "2026-11-27T11:14:14.171Z",
            "updatedAt": "2026-11-27T11:14:14.171Z"
        }
    })
    .to_string();
    let entries: [&[(&str, &str)]; 3] = [
        &[("type", "bookCreated"), ("data", "{not json")],
        &[("type", "bookUpdated")],
        &[("type", "bookCreated"), ("data", &bad_id)],
    ];
    let mut ids = Vec::new();
    for fields in entries {
        let mut add = redis::cmd("XADD");
        add.arg(system.names.partitions.stream(0)).arg("*");
        for (name, value) in fields {
            add.arg(*name).arg(*value);
        }
        ids.push(add.query_async::<String>(&mut connection).await?);
    }
    Ok(ids)
}

/// The entries of every partition's dead-letter stream: (source entry id,
/// reason).
async fn dead_letters(system: &System) -> anyhow::Result<Vec<(String, String)>> {
    let mut connection = system.redis_connection()?;
    let mut letters = Vec::new();
    for key in system
        .names
        .partitions
        .keys(&system.names.dead_letter_stream)
    {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await?;
        letters.extend(reply.ids.iter().map(|entry| {
            (
                entry.get::<String>("sourceId").unwrap_or_default(),
                entry.get::<String>("reason").unwrap_or_default(),
            )
        }));
    }
    Ok(letters)
}

fn check_convergence(convergence: &Convergence, writes: &[Write], row: &mut Row) {
    if convergence.after.is_none() {
        row.problems.push(format!(
            "the read model did not equal the write model within {CONVERGE_DEADLINE:?}: {} difference(s), first: {}",
            convergence.difference_count,
            convergence.differences.join(" | ")
        ));
    }
    if let Some(snapshot) = &convergence.snapshot {
        row.notes.push(format!(
            "write model: {} live, {} deleted books",
            snapshot.live(),
            snapshot.deleted()
        ));
        let missing = snapshot.missing_acknowledged(writes);
        if !missing.is_empty() {
            row.problems.push(format!(
                "{} acknowledged write(s) missing: {}",
                missing.len(),
                missing
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
    }
}

/// Every server error must be a 503 problem: a 500, or a 503 that is not a
/// problem, is a bug whatever the fault.
fn check_answers(writes: &[Write], row: &mut Row) {
    let mut wrong = Vec::new();
    for write in writes {
        if let Outcome::Rejected { status, problem } = write.outcome {
            if status >= 500 && !(status == 503 && problem) {
                wrong.push(format!(
                    "{} answered {status}{}",
                    write.request(),
                    if problem { "" } else { " (not a problem)" }
                ));
            }
        }
    }
    if !wrong.is_empty() {
        row.problems.push(format!(
            "{} server error(s) other than a 503 problem: {}",
            wrong.len(),
            wrong[..wrong.len().min(5)].join("; ")
        ));
    }
}

/// Every acknowledged write's event must have been appended to the stream
/// (the audit saw it), unless Redis lost what it held: all of it, or
/// `lost_partitions` (a killed master's).
fn check_stream(
    scenario: &Scenario,
    lost_partitions: &[usize],
    partitions: &Partitions,
    convergence: &Convergence,
    audit: &AuditStats,
    writes: &[Write],
    row: &mut Row,
) {
    let redis_lost_data = scenario.fault == Fault::RestartRedis
        && scenario.topology.redis == (RedisSetup::Single { persistent: false });
    let (lost, unseen): (Vec<BookVersion>, Vec<BookVersion>) = acknowledged(writes)
        .into_iter()
        .filter(|key| !audit.seen.contains(key))
        .partition(|(book, _)| redis_lost_data || lost_partitions.contains(&partitions.of(book)));
    if !lost.is_empty() {
        row.notes.push(format!(
            "{} acknowledged version(s) never appeared in the stream, e.g. {:?} (Redis lost them; {})",
            lost.len(),
            lost.first(),
            if convergence.after.is_some() {
                "the read model got them anyway"
            } else {
                "nothing brought them back"
            }
        ));
    }
    if !unseen.is_empty() {
        row.problems.push(format!(
            "{} acknowledged version(s) never appeared in the stream, e.g. {:?}",
            unseen.len(),
            unseen.first()
        ));
    }
}

/// The (book, version) of every acknowledged write.
fn acknowledged(writes: &[Write]) -> BTreeSet<BookVersion> {
    writes
        .iter()
        .filter_map(|w| match &w.outcome {
            Outcome::Acknowledged { id, version } => Some((id.clone(), *version)),
            _ => None,
        })
        .collect()
}

/// What the failover dropped: events the relay had appended (acknowledged
/// writes' versions, and any other version the audit read from the relay)
/// that no entry of the stream holds once the models agree (the stream is
/// never trimmed on a cluster). They may only be in the killed master's
/// partitions; those that were still their book's version at the end could
/// reach the read model only through reconciliation, unless the query
/// service had applied them before the kill.
async fn check_dropped(
    system: &System,
    failover: &Failover,
    convergence: &Convergence,
    audit: &AuditStats,
    writes: &[Write],
    row: &mut Row,
) -> anyhow::Result<()> {
    let mut connection = system.redis_connection()?;
    let held = audit::relayed_in_stream(&mut connection, &system.names).await?;
    let acknowledged = acknowledged(writes);
    let none = BTreeSet::new();
    let cut_off = failover.cut_off.as_ref().unwrap_or(&none);
    let appended: BTreeSet<&BookVersion> = acknowledged
        .iter()
        .chain(&audit.relayed)
        .chain(cut_off)
        .collect();
    let dropped: Vec<&BookVersion> = appended
        .into_iter()
        .filter(|key| !held.contains(*key))
        .collect();
    let partitions = &system.names.partitions;
    let (inside, outside): (Vec<&BookVersion>, Vec<&BookVersion>) = dropped
        .iter()
        .partition(|(book, _)| failover.partitions.contains(&partitions.of(book)));
    row.dropped = Some(dropped.len());
    if !outside.is_empty() {
        row.problems.push(format!(
            "{} event(s) missing from partitions the killed master did not serve, e.g. {:?}",
            outside.len(),
            outside.first()
        ));
    }
    let latest: Vec<&&BookVersion> = inside
        .iter()
        .filter(|(book, version)| {
            let written = convergence.snapshot.as_ref().and_then(|snapshot| {
                snapshot
                    .write
                    .get(&ObjectId::parse_str(book).ok()?)?
                    .version()
            });
            written == i64::try_from(*version).ok()
        })
        .collect();
    // When the audit read the re-emitted events, after the kill.
    let mut repaired: Vec<f64> = latest
        .iter()
        .filter_map(|key| audit.reemitted_events.get(**key))
        .map(|at| seconds(at.saturating_duration_since(failover.killed)))
        .collect();
    repaired.sort_by(f64::total_cmp);
    let acknowledged_dropped = inside
        .iter()
        .filter(|key| acknowledged.contains(*key))
        .count();
    let when = match (repaired.first(), repaired.last()) {
        (Some(first), Some(last)) => {
            let late = if *last > LATE_REPAIR.as_secs_f64() {
                ", the last later than any walk the failover woke: a periodic walk brought it"
            } else {
                ""
            };
            format!(" (re-emitted +{first:.1} to +{last:.1} s after the kill{late})")
        }
        _ => String::new(),
    };
    row.notes.push(format!(
        "{} event(s) dropped by the failover (appended to the killed master's partitions, absent from the replica that took over), {acknowledged_dropped} of them of acknowledged writes; {} still their book's version at the end: {} reached the read model through reconciliation{when}, the others had been applied before the kill",
        inside.len(),
        latest.len(),
        repaired.len()
    ));
    if failover.cut_off.is_some() {
        let again = cut_off.iter().filter(|key| held.contains(*key)).count();
        row.notes.push(format!(
            "of the {} event(s) the master took after its replica was cut off, {again} were appended again after the failover",
            cut_off.len()
        ));
    }
    row.notes.push(format!(
        "duplicates the audit read, by partition: {:?}",
        audit.partition_duplicates
    ));
    Ok(())
}

/// Notes what reconciliation did, from the query services' logs: walks
/// that repaired books (and how many), and, after a failover, when the
/// query service noticed the new server and when the walks ran.
fn note_reconciliation(system: &System, failover: Option<&Failover>, row: &mut Row) {
    let logs: Vec<String> = system
        .queries
        .iter()
        .map(|q| std::fs::read_to_string(q.process.log()).unwrap_or_default())
        .collect();
    let lines = || logs.iter().flat_map(|log| log.lines());
    let since = |line: &str| -> Option<f64> {
        let at = DateTime::parse_from_rfc3339(line.split_whitespace().next()?).ok()?;
        let killed = failover?.killed_at;
        Some(seconds((at.with_timezone(&Utc) - killed).to_std().ok()?))
    };
    let walks: Vec<(u64, Option<f64>)> = lines()
        .filter(|line| line.contains(RECONCILED))
        .map(|line| {
            let repaired = line
                .split("repaired: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (repaired, since(line))
        })
        .collect();
    if let Some(failover) = failover {
        let woken: Vec<String> = lines()
            .filter(|line| line.contains(WOKEN))
            .filter_map(since)
            .map(|at| format!("+{at:.1} s"))
            .collect();
        row.notes.push(format!(
            "query-service was told to reconcile {} time(s) after the kill ({})",
            woken.len(),
            woken.join(", ")
        ));
        let noticed: Vec<f64> = lines()
            .filter(|line| line.contains(NEW_SERVER))
            .filter_map(since)
            .collect();
        let first = noticed.iter().copied().reduce(f64::min);
        match first {
            Some(first) => row.notes.push(format!(
                "query-service noticed the new server of {} partition(s), the first {first:.2} s after the kill",
                noticed.len()
            )),
            None => row.problems.push(format!(
                "query-service never noticed that another server held partitions {:?} after the failover",
                failover.partitions
            )),
        }
    }
    if walks.is_empty() {
        return;
    }
    let repaired: u64 = walks.iter().map(|(n, _)| n).sum();
    let at: Vec<String> = walks
        .iter()
        .filter_map(|(n, at)| Some(format!("{n} at +{:.1} s", (*at)?)))
        .collect();
    row.notes.push(format!(
        "reconciliation re-emitted {repaired} book(s) in {} walk(s){}",
        walks.len(),
        if at.is_empty() {
            String::new()
        } else {
            format!(" ({})", at.join(", "))
        }
    ));
}

/// Once the models agree, every book read through the API must be as the
/// write model holds it, not only the sample the convergence check reads:
/// a cache entry older than the models (a lost cache write) would be served
/// until it expires.
async fn check_api(models: &Models<'_>, convergence: &Convergence, row: &mut Row) {
    let (Some(_), Some(snapshot)) = (convergence.after, &convergence.snapshot) else {
        return;
    };
    let differences = api_differences(&models.http, &models.query_urls, snapshot, usize::MAX).await;
    if !differences.is_empty() {
        row.problems.push(format!(
            "{} book(s) read through the API differ from both models: {}",
            differences.len(),
            differences[..differences.len().min(5)].join(" | ")
        ));
    }
}

/// While the database (FerretDB, or PostgreSQL behind it) is down every
/// write must be answered 503 with a problem,
/// within the dependency timeout (plus slack), and none may hang.
fn check_outage(injected: &Injected, writes: &[Write], row: &mut Row) {
    let (Some(down), Some(up)) = (injected.down, injected.up) else {
        return;
    };
    let limit = DEPENDENCY_TIMEOUT + UNAVAILABLE_SLACK;
    let during: Vec<&Write> = writes
        .iter()
        .filter(|w| w.started >= down && w.started < up)
        .collect();
    let unavailable = during
        .iter()
        .filter(|w| {
            matches!(
                w.outcome,
                Outcome::Rejected {
                    status: 503,
                    problem: true
                }
            )
        })
        .count();
    let wrong: Vec<String> = during
        .iter()
        .filter(|w| w.ended() <= up)
        .filter(|w| {
            !matches!(
                w.outcome,
                Outcome::Rejected {
                    status: 503,
                    problem: true
                }
            )
        })
        .map(|w| format!("{} got {:?}", w.request(), w.outcome))
        .collect();
    let slow: Vec<String> = during
        .iter()
        .filter(|w| w.elapsed > limit)
        .map(|w| format!("{} took {:.1} s", w.request(), seconds(w.elapsed)))
        .collect();
    let slowest = during.iter().map(|w| w.elapsed).max().unwrap_or_default();
    row.notes.push(format!(
        "{} writes during the outage, {unavailable} answered 503, slowest {:.2} s",
        during.len(),
        seconds(slowest)
    ));
    if unavailable == 0 {
        row.problems
            .push("no write was answered 503 while the database was down".to_owned());
    }
    if !wrong.is_empty() {
        row.problems.push(format!(
            "{} write(s) during the outage not answered with a 503 problem: {}",
            wrong.len(),
            wrong[..wrong.len().min(5)].join("; ")
        ));
    }
    if !slow.is_empty() {
        row.problems.push(format!(
            "{} write(s) during the outage took longer than {limit:?}: {}",
            slow.len(),
            slow[..slow.len().min(5)].join("; ")
        ));
    }
}

/// Each poison entry must be in the dead-letter stream (and nothing else),
/// and writes after it must have been acknowledged (their arrival is the
/// convergence check's).
async fn check_poison(
    system: &System,
    injected: &Injected,
    writes: &[Write],
    row: &mut Row,
) -> anyhow::Result<()> {
    let expected: BTreeSet<String> = injected.poison.iter().cloned().collect();
    let letters = eventually(
        "the poison in the dead-letter stream",
        Duration::from_secs(30),
        || async {
            let letters = dead_letters(system).await.ok()?;
            let sources: BTreeSet<String> = letters.iter().map(|(s, _)| s.clone()).collect();
            expected.is_subset(&sources).then_some(letters)
        },
    )
    .await;
    match letters {
        Ok(letters) => {
            let others: Vec<&(String, String)> = letters
                .iter()
                .filter(|(source, _)| !expected.contains(source))
                .collect();
            if !others.is_empty() {
                row.problems.push(format!(
                    "{} entries besides the poison were dead-lettered: {:?}",
                    others.len(),
                    others.iter().take(3).collect::<Vec<_>>()
                ));
            }
            row.notes.push(format!(
                "{} poison entries dead-lettered",
                letters.len() - others.len()
            ));
        }
        Err(error) => {
            let letters = dead_letters(system).await.unwrap_or_default();
            row.problems
                .push(format!("{error:#}; dead letters: {letters:?}"));
        }
    }
    let after = injected.down.map_or(0, |at| {
        writes
            .iter()
            .filter(|w| w.started > at && matches!(w.outcome, Outcome::Acknowledged { .. }))
            .count()
    });
    if after == 0 {
        row.problems
            .push("no write was acknowledged after the poison".to_owned());
    } else {
        row.notes
            .push(format!("{after} writes acknowledged after the poison"));
    }
    Ok(())
}
