//! The fault-injection suite: each scenario starts the real binaries
//! against private servers (a PostgreSQL cluster, FerretDB on it, and
//! Redis), drives a burst of 2,000 mixed writes, breaks one component
//! mid-burst (a SIGKILLed service, a restarted server, PostgreSQL killed
//! under a running FerretDB, a replica that dies, a poison event, a Redis
//! Cluster master killed and replaced by its replica), and
//! checks that the read model ends up equal to the write model and that no
//! acknowledged write was lost.
//!
//! ```sh
//! cargo test --test faults              # every scenario (binaries built first)
//! cargo test --test faults -- redis     # those whose name contains "redis"
//! ```
//!
//! A main of its own instead of libtest: the scenarios are heavy and run
//! one after another, and the result is a report (a table on stdout,
//! `target/fault-report.json`) rather than pass/fail lines. The exit status
//! is non-zero when a scenario fails. The service binaries are taken from
//! the same target directory (`cargo test --workspace` builds them);
//! FerretDB from `FERRETDB_BIN`, else `.local/bin/ferretdb-v1.24.2-atomic`
//! (`scripts/servers.sh up` builds it, patched so that a conditional
//! single-document write is atomic, as on MongoDB); PostgreSQL's programs
//! (`initdb`, `postgres`, `pg_isready`, `createdb`) from `PG_BIN`, else
//! `/usr/lib/postgresql/<highest version>/bin`; `redis-server` (and, for
//! the cluster, `redis-cli`) from `PATH`. As root (CI), PostgreSQL runs as the `postgres` user, in the
//! scenario's directory under the temporary directory, never in the
//! checkout.

mod audit;
mod burst;
mod cluster;
mod convergence;
mod processes;
mod report;
mod scenarios;
mod support;
mod system;

use std::process::ExitCode;

/// libtest options that take a value, which cargo or a user may pass.
const OPTIONS_WITH_VALUES: [&str; 7] = [
    "--test-threads",
    "--skip",
    "--color",
    "--format",
    "--logfile",
    "--shuffle-seed",
    "-Z",
];

/// What the command line asks for.
#[derive(Debug, Default)]
struct Args {
    filter: Option<String>,
    skip: Vec<String>,
    exact: bool,
    list: bool,
    /// `--ignored`: only ignored tests, and no scenario is ignored.
    ignored_only: bool,
}

impl Args {
    fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut parsed = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--list" => parsed.list = true,
                "--exact" => parsed.exact = true,
                "--ignored" => parsed.ignored_only = true,
                "--skip" => parsed.skip.extend(args.next()),
                option if option.starts_with("--skip=") => {
                    parsed.skip.push(option["--skip=".len()..].to_owned());
                }
                option if OPTIONS_WITH_VALUES.contains(&option) => {
                    args.next();
                }
                option if option.starts_with('-') => {}
                filter => parsed.filter = Some(filter.to_owned()),
            }
        }
        parsed
    }

    fn selects(&self, name: &str) -> bool {
        let matches = |pattern: &str| {
            if self.exact {
                name == pattern
            } else {
                name.contains(pattern)
            }
        };
        !self.ignored_only
            && self.filter.as_deref().is_none_or(matches)
            && !self.skip.iter().any(|s| matches(s))
    }
}

fn main() -> ExitCode {
    let args = Args::parse(std::env::args().skip(1));
    let scenarios: Vec<_> = scenarios::all()
        .into_iter()
        .filter(|s| args.selects(s.name))
        .collect();
    if args.list {
        for scenario in &scenarios {
            println!("{}: test", scenario.name);
        }
        return ExitCode::SUCCESS;
    }
    if scenarios.is_empty() {
        println!("fault injection: no scenario selected");
        return ExitCode::SUCCESS;
    }
    let binaries = match processes::Binaries::locate() {
        Ok(binaries) => binaries,
        Err(error) => {
            eprintln!("fault injection cannot run: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for scenario in scenarios {
            eprintln!("fault injection: {} ...", scenario.name);
            let name = scenario.name;
            let binaries = binaries.clone();
            // A task of its own, so that a panic fails this scenario only.
            let row = tokio::spawn(async move { scenarios::run(&scenario, &binaries).await })
                .await
                .unwrap_or_else(|error| {
                    let mut row = report::Row::new(name);
                    row.problems.push(format!("the scenario panicked: {error}"));
                    row
                });
            eprintln!(
                "fault injection: {name} {} in {:.1} s",
                if row.passed() { "passed" } else { "FAILED" },
                row.total.as_secs_f64()
            );
            rows.push(row);
        }
        rows
    });
    report::print(&rows);
    let path = binaries.target_dir.join("fault-report.json");
    match report::write_json(&rows, &path) {
        Ok(()) => println!("\nreport written to {}", path.display()),
        Err(error) => eprintln!("cannot write {}: {error}", path.display()),
    }
    if rows.iter().all(report::Row::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
