//! The scenarios: each starts its own system, drives a burst of writes,
//! injects one fault when a third of the burst is done, lets the component
//! come back, and checks that the read model converges to the write model
//! and that every acknowledged write arrived, plus what the fault itself
//! must not break.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use redis::streams::StreamRangeReply;
use tokio::time::Instant;

use crate::{
    audit::{Audit, AuditStats},
    burst::{Burst, BurstResult, Outcome, Progress, Write},
    convergence::{caught_up, converge, Convergence, Models},
    processes::Binaries,
    report::Row,
    support::{eventually, seconds, tail},
    system::{System, Topology, DEPENDENCY_TIMEOUT},
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
}

pub(crate) struct Scenario {
    /// Short name, what the filter argument matches.
    pub(crate) name: &'static str,
    fault: Fault,
    topology: Topology,
}

pub(crate) fn all() -> Vec<Scenario> {
    let one = |redis_persistent| Topology {
        replicas: 1,
        redis_persistent,
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
                redis_persistent: true,
            },
        },
        Scenario {
            name: "poison-event",
            fault: Fault::Poison,
            topology: one(true),
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
    notes: Vec<String>,
    /// Failed checks of the fault itself.
    problems: Vec<String>,
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
    let audit = Audit::start(system.redis_url(), system.names.clone());
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
        redis: redis::Client::open(system.redis_url())?,
        names: &system.names,
        http,
        query_urls,
    };
    let convergence = converge(&models, burst.ended, CONVERGE_DEADLINE).await;
    let audit = audit.finish().await;
    row.delivered = audit.delivered;
    row.duplicates = audit.duplicates;
    row.converged_after = convergence.after;

    check_convergence(&convergence, &burst.writes, row);
    check_answers(&burst.writes, row);
    check_stream(scenario, &convergence, &audit, &burst.writes, row);
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
            let redis = redis::Client::open(system.redis_url())?;
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
            system.redis.kill().await?;
            injected.down = Some(Instant::now());
            outage(progress).await;
            injected.up = Some(Instant::now());
            system.restart_redis().await?;
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
    }
    Ok(injected)
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

/// Appends three entries no consumer can apply: data that is not JSON, no
/// data at all, and an event whose book id is not an id.
async fn inject_poison(system: &System) -> anyhow::Result<Vec<String>> {
    let mut connection = redis::Client::open(system.redis_url())?
        .get_multiplexed_async_connection()
        .await?;
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
        add.arg(&system.names.stream).arg("*");
        for (name, value) in fields {
            add.arg(*name).arg(*value);
        }
        ids.push(add.query_async::<String>(&mut connection).await?);
    }
    Ok(ids)
}

/// The dead-letter stream's entries: (source entry id, reason).
async fn dead_letters(system: &System) -> anyhow::Result<Vec<(String, String)>> {
    let mut connection = redis::Client::open(system.redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(&system.names.dead_letter_stream)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await?;
    Ok(reply
        .ids
        .iter()
        .map(|entry| {
            (
                entry.get::<String>("sourceId").unwrap_or_default(),
                entry.get::<String>("reason").unwrap_or_default(),
            )
        })
        .collect())
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
/// (the audit saw it), unless Redis lost what it held.
fn check_stream(
    scenario: &Scenario,
    convergence: &Convergence,
    audit: &AuditStats,
    writes: &[Write],
    row: &mut Row,
) {
    let redis_lost_data =
        scenario.fault == Fault::RestartRedis && !scenario.topology.redis_persistent;
    let unseen: BTreeSet<(String, u64)> = writes
        .iter()
        .filter_map(|w| match &w.outcome {
            Outcome::Acknowledged { id, version } => Some((id.clone(), *version)),
            _ => None,
        })
        .filter(|key| !audit.seen.contains(key))
        .collect();
    if unseen.is_empty() {
        return;
    }
    let message = format!(
        "{} acknowledged version(s) never appeared in the stream, e.g. {:?}",
        unseen.len(),
        unseen.iter().next()
    );
    if redis_lost_data {
        row.notes.push(format!(
            "{message} (Redis lost them; {})",
            if convergence.after.is_some() {
                "the read model got them anyway"
            } else {
                "nothing brought them back"
            }
        ));
    } else {
        row.problems.push(message);
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
