//! The report: one row per scenario, printed as a table and written as
//! JSON to `target/fault-report.json`.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::{json, Value};

use crate::{
    burst::{Outcome, Write},
    support::seconds,
};

#[derive(Debug, Default)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) attempted: usize,
    pub(crate) acknowledged: usize,
    pub(crate) rejected_503: usize,
    /// Other rejections: 404 (deleted meanwhile), 409, 412 (another writer
    /// came first).
    pub(crate) rejected_other: usize,
    /// Writes that got no answer (service dead, connection cut).
    pub(crate) unanswered: usize,
    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    /// Events reconciliation appended (books emitted again), as the audit
    /// read them.
    pub(crate) reemitted: u64,
    /// Events the relay had appended that the stream no longer held after
    /// the fault; measured only where the stream is never trimmed (the
    /// cluster scenario).
    pub(crate) dropped: Option<usize>,
    /// From the end of the burst to the first comparison that found the
    /// models equal.
    pub(crate) converged_after: Option<Duration>,
    /// From the fault (the component gone) to that comparison.
    pub(crate) converged_after_fault: Option<Duration>,
    pub(crate) burst: Duration,
    pub(crate) total: Duration,
    /// Failed checks; the scenario passes without any.
    pub(crate) problems: Vec<String>,
    pub(crate) notes: Vec<String>,
}

impl Row {
    pub(crate) fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            ..Self::default()
        }
    }

    pub(crate) fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn count(&mut self, writes: &[Write]) {
        self.attempted = writes.len();
        let mut statuses = BTreeMap::new();
        let mut failures = BTreeMap::new();
        for write in writes {
            match &write.outcome {
                Outcome::Acknowledged { .. } => self.acknowledged += 1,
                Outcome::Rejected { status: 503, .. } => self.rejected_503 += 1,
                Outcome::Rejected { status, .. } => {
                    self.rejected_other += 1;
                    *statuses.entry(*status).or_insert(0) += 1;
                }
                Outcome::Failed(why) => {
                    self.unanswered += 1;
                    *failures.entry(why.clone()).or_insert(0) += 1;
                }
            }
        }
        if !statuses.is_empty() {
            self.notes
                .push(format!("other rejections by status: {statuses:?}"));
        }
        if !failures.is_empty() {
            self.notes
                .push(format!("unanswered writes by cause: {failures:?}"));
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "attempted": self.attempted,
            "acknowledged": self.acknowledged,
            "rejected503": self.rejected_503,
            "rejectedOther": self.rejected_other,
            "unanswered": self.unanswered,
            "eventsDelivered": self.delivered,
            "duplicates": self.duplicates,
            "eventsReemitted": self.reemitted,
            "eventsDropped": self.dropped,
            "convergedAfterSeconds": self.converged_after.map(seconds),
            "convergedAfterFaultSeconds": self.converged_after_fault.map(seconds),
            "burstSeconds": seconds(self.burst),
            "totalSeconds": seconds(self.total),
            "passed": self.passed(),
            "problems": self.problems,
            "notes": self.notes,
        })
    }
}

/// The table, with each scenario's notes and problems below it.
pub(crate) fn print(rows: &[Row]) {
    let header = [
        "scenario",
        "attempted",
        "acked",
        "503",
        "other 4xx",
        "no answer",
        "delivered",
        "duplicates",
        "re-emitted",
        "dropped",
        "converge s",
        "after fault s",
        "burst s",
        "total s",
        "result",
    ];
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.attempted.to_string(),
                r.acknowledged.to_string(),
                r.rejected_503.to_string(),
                r.rejected_other.to_string(),
                r.unanswered.to_string(),
                r.delivered.to_string(),
                r.duplicates.to_string(),
                r.reemitted.to_string(),
                r.dropped.map_or("-".to_owned(), |n| n.to_string()),
                r.converged_after
                    .map_or("-".to_owned(), |d| format!("{:.2}", seconds(d))),
                r.converged_after_fault
                    .map_or("-".to_owned(), |d| format!("{:.2}", seconds(d))),
                format!("{:.1}", seconds(r.burst)),
                format!("{:.1}", seconds(r.total)),
                if r.passed() { "pass" } else { "FAIL" }.to_owned(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let format = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == 0 {
                    format!("{cell:<w$}", w = widths[i])
                } else {
                    format!("{cell:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!();
    println!("{}", format(header.map(str::to_owned).to_vec()));
    for line in lines {
        println!("{}", format(line));
    }
    for row in rows {
        for note in &row.notes {
            println!("  {}: {note}", row.scenario);
        }
        for problem in &row.problems {
            println!("  {}: FAILED: {problem}", row.scenario);
        }
    }
}

pub(crate) fn write_json(rows: &[Row], path: &Path) -> std::io::Result<()> {
    let report = Value::Array(rows.iter().map(Row::to_json).collect());
    let text = serde_json::to_string_pretty(&report).expect("a JSON report");
    std::fs::write(path, text + "\n")
}
