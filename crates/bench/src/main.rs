//! The benchmark harness: runs against a started system (see
//! `scripts/bench.sh`) and measures, with one load generator, each route's
//! throughput and latency at several concurrency levels next to its floor
//! (a trivial axum handler; the raw MongoDB and Redis operations behind the
//! route), the propagation lag from command to query side, what each
//! request costs each service (MongoDB commands by name, CPU time: figures
//! that do not depend on the server's speed), and the services' memory.
//! Prints a table and writes `target/bench/report.json` and
//! `target/bench/throughput.svg`. It asserts nothing: figures depend on the
//! machine.
//!
//! ```text
//! bench [--smoke] [--duration-secs N] [--concurrency 1,16,64] [--soak-secs N]
//! ```
//!
//! Environment: `COMMAND_URL` (http://127.0.0.1:5000), `QUERY_URL`
//! (http://127.0.0.1:5001), `BENCH_TOKEN` (books-dev-token), and the
//! services' own `MONGO_URL`, `REDIS_URL`, `WRITE_DB_NAME`, `READ_DB_NAME`,
//! `CACHE_KEY_PREFIX` for the floors; `COMMAND_PID` and `QUERY_PID` name
//! the processes whose memory and CPU time are read (else they are found
//! by name). It creates books in the system (a hot set and whatever the
//! create runs write); its scratch collection and stream are removed at the
//! end.
//! `bench --drop-databases` drops both databases and does nothing else: for
//! a system started for the run, once its services have stopped (FerretDB
//! crashes when a database is dropped while a query reads it).

mod cost;
mod lag;
mod load;
mod memory;
mod report;
mod targets;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use rand::Rng;

use crate::{
    cost::{Cost, Meter, Snapshot},
    load::{closed_loop, operation, Measurement, Operation},
    report::{Report, Scenario, ServiceMemory, Soak},
    targets::{Drivers, System},
};

/// Books read by the read-by-id runs.
const HOT_SET: usize = 100;
/// Writes per second of the steady propagation-lag runs (`--lag-rates`):
/// one the whole pipeline keeps up with on the development machine, one just
/// past what it sustains there, and the target's.
const STEADY_RATES: [f64; 3] = [20.0, 100.0, 500.0];

/// What a workload drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// A floor: no service is involved.
    Floor,
    /// The system, reading only.
    Reads,
    /// The system, writing: the query side applies the events after the
    /// answers, so a run is over once it has caught up.
    Writes,
}

struct Options {
    smoke: bool,
    duration: Duration,
    concurrency: Vec<usize>,
    soak: Option<Duration>,
    lag_rates: Vec<f64>,
    drop_databases: bool,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            smoke: false,
            duration: Duration::from_secs(5),
            concurrency: vec![1, 16, 64],
            soak: None,
            lag_rates: STEADY_RATES.to_vec(),
            drop_databases: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--smoke" => options.smoke = true,
                "--drop-databases" => options.drop_databases = true,
                "--duration-secs" => options.duration = Duration::from_secs_f64(value()?.parse()?),
                "--concurrency" => {
                    options.concurrency = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?;
                }
                "--soak-secs" => options.soak = Some(Duration::from_secs(value()?.parse()?)),
                "--lag-rates" => {
                    options.lag_rates = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?;
                    anyhow::ensure!(
                        options.lag_rates.iter().all(|r: &f64| r.is_finite() && *r > 0.0),
                        "--lag-rates takes positive writes per second"
                    );
                }
                other => anyhow::bail!(
                    "unknown argument {other:?}; expected --smoke, --duration-secs N, --concurrency 1,16,64, --soak-secs N, --lag-rates 20,100,500 or --drop-databases"
                ),
            }
        }
        if options.smoke {
            // Every code path once, briefly: so the harness cannot rot.
            options.duration = Duration::from_millis(300);
            options.concurrency = vec![1, 4];
            options.lag_rates = vec![50.0];
        }
        Ok(options)
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn memory() -> ServiceMemory {
    ServiceMemory {
        command_service: memory::of("command-service", "COMMAND_PID"),
        query_service: memory::of("query-service", "QUERY_PID"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let started_at = chrono::Utc::now().to_rfc3339();
    let run = format!("{}", std::process::id());
    let system = System::new(
        &env("COMMAND_URL", "http://127.0.0.1:5000"),
        &env("QUERY_URL", "http://127.0.0.1:5001"),
        &env("BENCH_TOKEN", "books-dev-token"),
    )?;
    let drivers = Drivers::connect(
        &env("MONGO_URL", "mongodb://127.0.0.1:27017"),
        &env("REDIS_URL", "redis://127.0.0.1:6379"),
        &env("WRITE_DB_NAME", "books_write"),
        &env("READ_DB_NAME", "books_read"),
        &env("CACHE_KEY_PREFIX", "books:cache:"),
        &run,
    )
    .await?;
    if options.drop_databases {
        drivers.drop_databases().await;
        return Ok(());
    }
    let memory_idle = memory();
    let meter = Meter::new(system.clone()).await;

    eprintln!("[bench] creating a hot set of {HOT_SET} books");
    let mut hot = Vec::with_capacity(HOT_SET);
    for n in 0..HOT_SET {
        let (id, version) = system.create(&format!("Hot book {n}")).await.context(
            "cannot create books: is the system started, and BENCH_TOKEN one of its API_TOKENS?",
        )?;
        system.await_version(&id, version).await?;
        hot.push(id);
    }
    let hot: Arc<[String]> = Arc::from(hot);
    let floor = targets::http_floor(system.read_body(&hot[0]).await?).await?;
    let floor_system = System::new(
        "http://unused.invalid",
        &format!("http://{floor}"),
        "unused",
    )?;

    use Load::{Floor, Reads, Writes};
    let pick = {
        let hot = hot.clone();
        move || hot[rand::thread_rng().gen_range(0..hot.len())].clone()
    };
    let workloads: Vec<(&'static str, Option<&'static str>, Load, Operation)> = vec![
        ("http floor", None, Floor, {
            let (client, pick) = (floor_system.clone(), pick.clone());
            operation(move |_, _| {
                let (client, id) = (client.clone(), pick());
                async move { client.read(&id).await }
            })
        }),
        ("redis floor (HGETALL)", None, Floor, {
            let drivers = drivers.clone();
            operation(move |_, _| {
                let drivers = drivers.clone();
                async move { drivers.cache_read().await }
            })
        }),
        ("GET /books/{id}", Some("http floor"), Reads, {
            let (system, pick) = (system.clone(), pick.clone());
            operation(move |_, _| {
                let (system, id) = (system.clone(), pick());
                async move { system.read(&id).await }
            })
        }),
        ("mongo floor (find 20)", None, Floor, {
            let drivers = drivers.clone();
            operation(move |_, _| {
                let drivers = drivers.clone();
                async move { drivers.find_page().await }
            })
        }),
        ("GET /books", Some("mongo floor (find 20)"), Reads, {
            let system = system.clone();
            operation(move |_, _| {
                let system = system.clone();
                async move { system.list().await }
            })
        }),
        ("driver floor (insert+XADD)", None, Floor, {
            let drivers = drivers.clone();
            operation(move |worker, n| {
                let drivers = drivers.clone();
                async move { drivers.insert_and_append((worker as u64) << 32 | n).await }
            })
        }),
        ("POST /books", Some("driver floor (insert+XADD)"), Writes, {
            let system = system.clone();
            operation(move |worker, n| {
                let system = system.clone();
                async move {
                    system
                        .create(&format!("Created {worker}-{n}"))
                        .await
                        .map(drop)
                }
            })
        }),
        ("mix 90% read/10% write", Some("http floor"), Writes, {
            let (system, pick) = (system.clone(), pick.clone());
            operation(move |worker, n| {
                let (system, id) = (system.clone(), pick());
                async move {
                    if n % 10 == 9 {
                        system
                            .create(&format!("Mixed {worker}-{n}"))
                            .await
                            .map(drop)
                    } else {
                        system.read(&id).await
                    }
                }
            })
        }),
    ];

    // Every run that writes ends once the query side has caught up, so
    // each run, and each lag run after them, starts from an empty backlog.
    let mut scenarios = Vec::new();
    for (name, floor, load, op) in &workloads {
        let mut runs: Vec<Measurement> = Vec::new();
        for &concurrency in &options.concurrency {
            eprintln!(
                "[bench] {name} with {concurrency} clients for {:?}",
                options.duration
            );
            let before = match load {
                Load::Floor => None,
                Load::Reads | Load::Writes => Some(meter.snapshot().await),
            };
            let mut run = closed_loop(op, concurrency, options.duration).await;
            if let Some(before) = before {
                run.cost = cost_since(&meter, &system, &before, run.sent, *load).await;
            }
            runs.push(run);
        }
        scenarios.push(Scenario {
            name,
            floor: *floor,
            runs,
        });
    }

    let lag_time = if options.smoke {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let mut lags = Vec::new();
    for &rate in &options.lag_rates {
        eprintln!("[bench] propagation lag at {rate} writes/s for {lag_time:?}");
        let before = meter.snapshot().await;
        let mut lag = lag::steady(&system, rate, lag_time).await;
        let writes = lag.samples + lag.errors;
        lag.cost = cost_since(&meter, &system, &before, writes, Load::Writes).await;
        lags.push(lag);
    }
    eprintln!("[bench] propagation lag at saturation for {lag_time:?}");
    let before = meter.snapshot().await;
    let mut lag = lag::saturated(&system, 32, lag_time).await;
    let writes = lag.samples + lag.errors;
    lag.cost = cost_since(&meter, &system, &before, writes, Load::Writes).await;
    lags.push(lag);
    let memory_after = memory();

    let soak = match options.soak {
        None => None,
        Some(duration) => Some(soak(&workloads[7].3, duration).await),
    };
    drivers.clean_up().await;

    let report = Report {
        started_at,
        smoke: options.smoke,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        scenarios,
        lag: lags,
        memory_idle,
        memory_after,
        soak,
    };
    report.print();
    let directory = std::path::Path::new(&env("BENCH_OUT", "target/bench")).to_path_buf();
    report.write(&directory)?;
    eprintln!(
        "[bench] wrote {0}/report.json and {0}/throughput.svg",
        directory.display()
    );
    Ok(())
}

/// What each service spent per request since `before`, over the `sent`
/// requests of a run of `load`: for writes, once the query side has caught
/// up (the marker book of that wait counts as one more request).
async fn cost_since(
    meter: &Meter,
    system: &System,
    before: &Snapshot,
    sent: u64,
    load: Load,
) -> Option<Cost> {
    if load != Load::Writes {
        return meter.cost_since(before, sent).await;
    }
    eprintln!("[bench] waiting for the query side to apply the run's events");
    let caught_up_after_secs = caught_up(system).await;
    let mut cost = meter.cost_since(before, sent + 1).await?;
    cost.caught_up_after_secs = caught_up_after_secs;
    Some(cost)
}

/// Runs the mixed workload at 16 clients for `duration`, sampling each
/// service's resident memory every 10 seconds.
async fn soak(mix: &Operation, duration: Duration) -> Soak {
    eprintln!("[bench] soak: mixed load for {duration:?}");
    let sampler = tokio::spawn(async move {
        let mut soak = Soak {
            seconds: duration.as_secs(),
            ..Soak::default()
        };
        let started = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(10));
        while started.elapsed() <= duration {
            ticker.tick().await;
            let now = memory();
            soak.command_service_mib
                .extend(now.command_service.map(|m| m.rss_mib));
            soak.query_service_mib
                .extend(now.query_service.map(|m| m.rss_mib));
        }
        soak
    });
    closed_loop(mix, 16, duration).await;
    sampler.await.expect("the memory sampler panicked")
}

/// Creates a marker book and waits, up to ten minutes, until the query side
/// serves it, then until its consumer group has acknowledged everything it
/// read: the marker's batch is served before the batch's author summaries
/// are written, and a lag run must not start behind them. Returns how long
/// that took, or `None` if it did not happen.
async fn caught_up(system: &System) -> Option<f64> {
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(600);
    let waited = async {
        let (id, version) = system.create("Backlog marker").await?;
        system
            .await_version_within(&id, version, Duration::from_secs(600))
            .await?;
        loop {
            let unacknowledged = system.unacknowledged().await?;
            if unacknowledged == 0.0 {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!("{unacknowledged} entries still unacknowledged");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match waited.await {
        Ok(()) => Some(started.elapsed().as_secs_f64()),
        Err(error) => {
            eprintln!("[bench] the query side did not catch up: {error:#}");
            None
        }
    }
}
