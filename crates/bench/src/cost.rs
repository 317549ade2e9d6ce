//! What a request costs each service, in figures that do not depend on how
//! fast the database server or the machine is: the MongoDB commands the
//! service sends (its `books_mongodb_commands_total`, by command name) and
//! its CPU time (`utime + stime` of `/proc/<pid>/stat`, every thread's),
//! read before and after a run and divided by the requests the run sent.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    memory,
    targets::{Service, System},
};

const COMMANDS: &str = "books_mongodb_commands_total";
/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, what
/// `sysconf(_SC_CLK_TCK)` answers): 100 on Linux on x86_64 and arm64
/// whatever the kernel's own tick rate, and not worth a `libc` dependency.
/// A tick is 10 ms, so a run needs a few hundred requests for a figure in
/// microseconds to mean much.
const TICKS_PER_SECOND: f64 = 100.0;

/// Commands, or commands per request, by name.
type Commands = BTreeMap<String, f64>;

/// One service at one moment; either figure may be unreadable.
#[derive(Debug, Clone, Default)]
struct Reading {
    /// Commands sent since the process started; `None` when `/metrics`
    /// cannot be read or does not count them.
    commands: Option<Commands>,
    cpu_ticks: Option<u64>,
}

/// Both services at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    command: Reading,
    query: Reading,
}

/// What one service spent per request over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServiceCost {
    /// CPU time, in microseconds; `None` when the process is unknown
    /// (a system started elsewhere: neither `COMMAND_PID`/`QUERY_PID`
    /// nor a single process of the service's name).
    pub(crate) cpu_us: Option<f64>,
    /// MongoDB commands, every name together; `None` when `/metrics` could
    /// not be read or does not count them.
    pub(crate) database_commands: Option<f64>,
    /// MongoDB commands by name (`insert`, `find`, `update`, ...).
    pub(crate) by_command: Commands,
}

/// What each service spent per request over one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Cost {
    /// What the figures are divided by: every request the run sent, its
    /// warm-up and its failures included.
    pub(crate) requests: u64,
    pub(crate) command_service: ServiceCost,
    pub(crate) query_service: ServiceCost,
    /// For a run that wrote: how long the query side took, after the run,
    /// to apply the rest of its events. The figures include that work (and
    /// the marker book the wait creates, counted as one more request).
    pub(crate) caught_up_after_secs: Option<f64>,
}

/// Reads both services' counters and CPU time.
pub(crate) struct Meter {
    system: System,
    command_pid: Option<u32>,
    query_pid: Option<u32>,
    /// The commands one scrape of each service sends itself (command-service
    /// reads its outbox backlog once it has rendered its counters): every
    /// run holds the one its first scrape sent, taken off its figures.
    command_scrape: Commands,
    query_scrape: Commands,
}

impl Meter {
    /// Finds the services' processes (as `memory` does) and measures what
    /// a scrape costs each: the least of two consecutive scrapes' growth,
    /// so that a background command seldom passes for the scrape's.
    pub(crate) async fn new(system: System) -> Self {
        let mut meter = Self {
            system,
            command_pid: memory::pid("command-service", "COMMAND_PID"),
            query_pid: memory::pid("query-service", "QUERY_PID"),
            command_scrape: Commands::new(),
            query_scrape: Commands::new(),
        };
        let readings = [
            meter.snapshot().await,
            meter.snapshot().await,
            meter.snapshot().await,
        ];
        let per_scrape = |side: fn(&Snapshot) -> &Reading| {
            let growth = |from: &Snapshot, to: &Snapshot| {
                growth(side(from).commands.as_ref(), side(to).commands.as_ref())
            };
            let (first, second) = (
                growth(&readings[0], &readings[1]).unwrap_or_default(),
                growth(&readings[1], &readings[2]).unwrap_or_default(),
            );
            first
                .into_iter()
                .map(|(name, n)| {
                    let least = n.min(second.get(&name).copied().unwrap_or(0.0));
                    (name, least)
                })
                .filter(|(_, n)| *n > 0.0)
                .collect()
        };
        meter.command_scrape = per_scrape(|s| &s.command);
        meter.query_scrape = per_scrape(|s| &s.query);
        for (service, commands) in [
            ("command-service", &meter.command_scrape),
            ("query-service", &meter.query_scrape),
        ] {
            if !commands.is_empty() {
                eprintln!("[bench] a scrape of {service} sends MongoDB commands itself ({commands:?}): taken off every run's figures");
            }
        }
        meter
    }

    pub(crate) async fn snapshot(&self) -> Snapshot {
        let (command, query) = tokio::join!(
            self.read(Service::Command, self.command_pid),
            self.read(Service::Query, self.query_pid)
        );
        Snapshot { command, query }
    }

    async fn read(&self, service: Service, pid: Option<u32>) -> Reading {
        let commands = match self.system.metrics(service).await {
            Ok(text) => commands(&text),
            Err(error) => {
                eprintln!("[bench] cannot read {service:?}'s /metrics: {error:#}");
                None
            }
        };
        Reading {
            commands,
            cpu_ticks: pid.and_then(cpu_ticks),
        }
    }

    /// What each service spent per request since `before`, over `requests`
    /// requests; `None` when there were none.
    pub(crate) async fn cost_since(&self, before: &Snapshot, requests: u64) -> Option<Cost> {
        if requests == 0 {
            return None;
        }
        let after = self.snapshot().await;
        let per_request = |before: &Reading, after: &Reading, scrape: &Commands| {
            let grown = growth(before.commands.as_ref(), after.commands.as_ref());
            let by_command: Commands = grown
                .iter()
                .flatten()
                .map(|(name, n)| {
                    let own = n - scrape.get(name).copied().unwrap_or(0.0);
                    (name.clone(), own.max(0.0) / requests as f64)
                })
                .filter(|(_, n)| *n > 0.0)
                .collect();
            ServiceCost {
                cpu_us: before.cpu_ticks.zip(after.cpu_ticks).map(|(from, to)| {
                    to.saturating_sub(from) as f64 * 1e6 / TICKS_PER_SECOND / requests as f64
                }),
                // A fold from +0: an empty `sum` of floats is -0.
                database_commands: grown.map(|_| by_command.values().fold(0.0, |a, n| a + n)),
                by_command,
            }
        };
        Some(Cost {
            requests,
            command_service: per_request(&before.command, &after.command, &self.command_scrape),
            query_service: per_request(&before.query, &after.query, &self.query_scrape),
            caught_up_after_secs: None,
        })
    }
}

/// How much each command's count grew from `before` to `after`.
fn growth(before: Option<&Commands>, after: Option<&Commands>) -> Option<Commands> {
    let (before, after) = (before?, after?);
    Some(
        after
            .iter()
            .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0.0)))
            .collect(),
    )
}

/// The `books_mongodb_commands_total` series of a scrape, by command
/// name; `None` when the service does not declare the counter (a build
/// older than it).
fn commands(text: &str) -> Option<Commands> {
    let declared = text
        .lines()
        .any(|line| line == format!("# TYPE {COMMANDS} counter"));
    declared.then(|| {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(COMMANDS)?.strip_prefix("{command=\"")?;
                let (name, rest) = rest.split_once('"')?;
                let value = rest.strip_prefix('}')?.trim().parse().ok()?;
                Some((name.to_owned(), value))
            })
            .collect()
    })
}

/// The process's user and system CPU time so far, in clock ticks, every
/// thread's (those that ended included).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name, in parentheses, may hold spaces: the fields after it start
    // at the third, `state`; `utime` and `stime` are the 14th and 15th.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_by_name_from_a_scrape() {
        let text = "# HELP books_mongodb_commands_total MongoDB commands sent\n# TYPE books_mongodb_commands_total counter\nbooks_mongodb_commands_total{command=\"insert\"} 12\nbooks_mongodb_commands_total{command=\"findAndModify\"} 3\nbooks_http_requests_total{method=\"GET\"} 7\n";
        let read = commands(text).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read["insert"], 12.0);
        assert_eq!(read["findAndModify"], 3.0);
    }

    #[test]
    fn a_service_that_does_not_count_commands_has_no_figure() {
        assert_eq!(commands("# TYPE books_http_requests_total counter\n"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_ticks(std::process::id()).is_some());
    }
}
