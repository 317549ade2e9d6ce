//! Resident memory of the services, read from `/proc` (Linux): the
//! process is the one whose id is in `pid_variable`, else the only one with
//! the service's name.

use serde::Serialize;

/// One service's memory at one moment, in MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Memory {
    pub(crate) pid: u32,
    /// Resident now (`VmRSS`).
    pub(crate) rss_mib: f64,
    /// The most it was ever resident (`VmHWM`).
    pub(crate) peak_mib: f64,
}

/// The memory of the process whose id `pid_variable` holds, else of the
/// one named `name` (its `comm`, at most 15 characters) if exactly one runs.
pub(crate) fn of(name: &str, pid_variable: &str) -> Option<Memory> {
    let pid = pid(name, pid_variable)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<f64> {
        let line = status.lines().find(|line| line.starts_with(key))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some(Memory {
        pid,
        rss_mib: field("VmRSS:")?,
        peak_mib: field("VmHWM:")?,
    })
}

/// The id in `pid_variable`, else that of the only process named `name`.
pub(crate) fn pid(name: &str, pid_variable: &str) -> Option<u32> {
    match std::env::var(pid_variable) {
        Ok(pid) => pid.parse().ok(),
        Err(_) => only_process_named(name),
    }
}

fn only_process_named(name: &str) -> Option<u32> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim_end() == name).then_some(pid)
    });
    let pid = found.next()?;
    found.next().is_none().then_some(pid)
}
