//! The results: a table on stdout, JSON and an SVG chart under
//! `target/bench/`.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::{
    cost::{Cost, ServiceCost},
    lag::Lag,
    load::Measurement,
    memory::Memory,
};

/// One workload at every concurrency level.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    /// The scenario this one is measured against, if any.
    pub(crate) floor: Option<&'static str>,
    pub(crate) runs: Vec<Measurement>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct ServiceMemory {
    pub(crate) command_service: Option<Memory>,
    pub(crate) query_service: Option<Memory>,
}

/// Resident memory sampled during a soak, in MiB, per service.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Soak {
    pub(crate) seconds: u64,
    pub(crate) command_service_mib: Vec<f64>,
    pub(crate) query_service_mib: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) started_at: String,
    pub(crate) smoke: bool,
    pub(crate) cores: usize,
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) lag: Vec<Lag>,
    pub(crate) memory_idle: ServiceMemory,
    pub(crate) memory_after: ServiceMemory,
    pub(crate) soak: Option<Soak>,
}

impl Report {
    /// The ratio of `scenario`'s throughput to its floor's, per
    /// concurrency level.
    fn ratio(&self, scenario: &Scenario, concurrency: usize) -> Option<f64> {
        let floor = self
            .scenarios
            .iter()
            .find(|s| Some(s.name) == scenario.floor)?;
        let floor = floor.runs.iter().find(|r| r.concurrency == concurrency)?;
        let run = scenario
            .runs
            .iter()
            .find(|r| r.concurrency == concurrency)?;
        (floor.throughput > 0.0).then(|| run.throughput / floor.throughput)
    }

    pub(crate) fn print(&self) {
        println!(
            "\n{:<22} {:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}  {:<18} {:>6}",
            "scenario",
            "conc",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "errors",
            "floor",
            "ratio"
        );
        for scenario in &self.scenarios {
            for run in &scenario.runs {
                let ratio = self
                    .ratio(scenario, run.concurrency)
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
                println!(
                    "{:<22} {:>5} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}  {:<18} {:>6}",
                    scenario.name,
                    run.concurrency,
                    run.throughput,
                    run.p50_ms,
                    run.p95_ms,
                    run.p99_ms,
                    run.max_ms,
                    run.errors,
                    scenario.floor.unwrap_or("-"),
                    ratio
                );
                if let Some(error) = &run.first_error {
                    println!("    first error: {error}");
                }
            }
        }
        println!("\npropagation lag (201 on the command side -> version served by the query side)");
        for lag in &self.lag {
            let target = if lag.target_rate > 0.0 {
                format!("{:.0} writes/s", lag.target_rate)
            } else {
                "saturation".to_owned()
            };
            println!(
                "  {target:<16} achieved {:>6.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} samples, {} errors)",
                lag.achieved_rate, lag.p50_ms, lag.p99_ms, lag.max_ms, lag.samples, lag.errors
            );
            if let Some(error) = &lag.first_error {
                println!("    first error: {error}");
            }
        }
        self.print_costs();
        println!("\nresident memory (MiB)");
        for (name, idle, after) in [
            (
                "command-service",
                self.memory_idle.command_service,
                self.memory_after.command_service,
            ),
            (
                "query-service",
                self.memory_idle.query_service,
                self.memory_after.query_service,
            ),
        ] {
            match (idle, after) {
                (Some(idle), Some(after)) => println!(
                    "  {name:<16} idle {:>6.1}  after load {:>6.1}  peak {:>6.1}",
                    idle.rss_mib, after.rss_mib, after.peak_mib
                ),
                _ => println!(
                    "  {name:<16} not measured: no single process of that name on this machine"
                ),
            }
        }
        if let Some(soak) = &self.soak {
            let growth = |samples: &[f64]| match (samples.first(), samples.last()) {
                (Some(first), Some(last)) => {
                    format!("{first:.1} -> {last:.1} ({:+.1})", last - first)
                }
                _ => "-".to_owned(),
            };
            println!(
                "  soak of {} s: command-service {}, query-service {}",
                soak.seconds,
                growth(&soak.command_service_mib),
                growth(&soak.query_service_mib)
            );
        }
    }

    /// Each service's cost per request: for each workload at its highest
    /// concurrency, and for each lag run.
    fn print_costs(&self) {
        let workloads = self.scenarios.iter().filter_map(|scenario| {
            let run = scenario.runs.iter().max_by_key(|run| run.concurrency)?;
            Some((
                scenario.name.to_owned(),
                Some(run.concurrency),
                run.cost.as_ref()?,
            ))
        });
        let lags = self.lag.iter().filter_map(|lag| {
            let name = if lag.target_rate > 0.0 {
                format!("lag {:.0} writes/s", lag.target_rate)
            } else {
                "lag at saturation".to_owned()
            };
            Some((name, None, lag.cost.as_ref()?))
        });
        let rows: Vec<(String, Option<usize>, &Cost)> = workloads.chain(lags).collect();
        if rows.is_empty() {
            return;
        }
        println!(
            "\ncost per request, for each workload at its most clients (CPU time from /proc, MongoDB commands from books_mongodb_commands_total; writes: until the query side caught up)"
        );
        println!(
            "{:<22} {:>5}  {:<15} {:>7} {:>8}  by command",
            "workload", "conc", "service", "CPU µs", "commands"
        );
        for (name, concurrency, cost) in rows {
            let concurrency = concurrency.map_or_else(|| "-".to_owned(), |c| c.to_string());
            for (service, figures, first) in [
                ("command-service", &cost.command_service, true),
                ("query-service", &cost.query_service, false),
            ] {
                let (name, concurrency) = if first {
                    (name.as_str(), concurrency.as_str())
                } else {
                    ("", "")
                };
                let caught_up = match (first, cost.caught_up_after_secs) {
                    (false, Some(seconds)) => format!("  (caught up {seconds:.1} s after the run)"),
                    _ => String::new(),
                };
                println!(
                    "{name:<22} {concurrency:>5}  {service:<15} {:>7} {:>8}  {}{caught_up}",
                    figures
                        .cpu_us
                        .map_or_else(|| "-".to_owned(), |us| format!("{us:.0}")),
                    figures
                        .database_commands
                        .map_or_else(|| "-".to_owned(), per_request),
                    by_command(figures),
                );
            }
        }
    }

    pub(crate) fn write(&self, directory: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(directory)?;
        std::fs::write(
            directory.join("report.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        self.chart(&directory.join("throughput.svg"))?;
        Ok(())
    }

    /// Throughput against concurrency, one line per scenario.
    fn chart(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_concurrency = self
            .scenarios
            .iter()
            .flat_map(|s| s.runs.iter().map(|r| r.concurrency))
            .max()
            .unwrap_or(1) as f64;
        let max_throughput = self
            .scenarios
            .iter()
            .flat_map(|s| s.runs.iter().map(|r| r.throughput))
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption("Throughput by concurrency (requests/s)", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (1f64..max_concurrency.max(2.0)).log_scale(),
                0f64..max_throughput * 1.1,
            )?;
        chart
            .configure_mesh()
            .x_desc("concurrent clients")
            .y_desc("requests/s")
            .draw()?;
        for (index, scenario) in self.scenarios.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            let points: Vec<(f64, f64)> = scenario
                .runs
                .iter()
                .map(|r| (r.concurrency as f64, r.throughput))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(scenario.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// A count per request, to two decimals; what rounds to nothing is shown
/// as such rather than as 0.
fn per_request(n: f64) -> String {
    if n == 0.0 || n >= 0.005 {
        format!("{n:.2}")
    } else {
        "<0.01".to_owned()
    }
}

/// `insert 1.00, update 1.00`: the most frequent first.
fn by_command(figures: &ServiceCost) -> String {
    let mut commands: Vec<_> = figures.by_command.iter().collect();
    commands.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    commands
        .into_iter()
        .map(|(name, n)| format!("{name} {}", per_request(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}
