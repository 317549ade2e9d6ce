//! Child processes of a scenario (servers and services), started from a
//! recipe so that a killed one comes back exactly as it was: same program,
//! arguments, environment and port. Output goes to a log file that a
//! restart appends to. A child is killed when its handle is dropped, so a
//! failed or panicking scenario leaves nothing running.

use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::Context;
use tokio::process::{Child, Command};

/// How to start one process.
#[derive(Debug, Clone)]
pub(crate) struct Recipe {
    /// Also the log file's name.
    pub(crate) name: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    /// The whole environment: nothing of the test's own is inherited (the
    /// services would otherwise pick up `MONGO_URL` and the like).
    pub(crate) env: Vec<(String, String)>,
    /// Working directory, also where the log goes.
    pub(crate) dir: PathBuf,
}

impl Recipe {
    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }
}

/// A process started from a recipe; not running between a kill and a
/// restart.
pub(crate) struct Process {
    recipe: Recipe,
    child: Option<Child>,
    starts: u32,
}

impl Process {
    pub(crate) fn start(recipe: Recipe) -> anyhow::Result<Self> {
        let mut process = Self {
            recipe,
            child: None,
            starts: 0,
        };
        process.spawn()?;
        Ok(process)
    }

    pub(crate) fn name(&self) -> &str {
        &self.recipe.name
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.recipe.log()
    }

    /// Whether the process is still running (it has not exited by itself
    /// or been killed).
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would,
    /// and waits until it is gone.
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .with_context(|| format!("cannot kill {}", self.recipe.name))?;
        }
        self.note("killed with SIGKILL")?;
        Ok(())
    }

    /// Starts the process again from its recipe, after a kill.
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.is_none(),
            "{} is still running",
            self.recipe.name
        );
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        self.note(&format!("start #{}", self.starts))?;
        let log = self.open_log()?;
        let child = Command::new(&self.recipe.program)
            .args(&self.recipe.args)
            .env_clear()
            .envs(self.recipe.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.recipe.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} ({})",
                    self.recipe.name,
                    self.recipe.program.display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn open_log(&self) -> anyhow::Result<std::fs::File> {
        let path = self.recipe.log();
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// A line of the suite's own in the process's log, so that a reader
    /// sees where each kill and start happened.
    fn note(&self, what: &str) -> anyhow::Result<()> {
        let mut log = self.open_log()?;
        writeln!(
            log,
            "----- fault suite: {} {what} at {} -----",
            self.recipe.name,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // kill_on_drop also does this; being explicit costs nothing.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Where the built binaries are: beside this test's own directory
/// (`target/<profile>/deps/faults-*` → `target/<profile>/`).
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) command_service: PathBuf,
    pub(crate) query_service: PathBuf,
    pub(crate) ferretdb: PathBuf,
    pub(crate) redis_server: PathBuf,
    /// `target/`, where the report goes.
    pub(crate) target_dir: PathBuf,
}

impl Binaries {
    pub(crate) fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this test's executable")?;
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .context("this test does not run from target/<profile>/deps")?;
        let target_dir = profile_dir
            .parent()
            .context("this test does not run from target/<profile>/deps")?
            .to_owned();
        let service = |name: &str| -> anyhow::Result<PathBuf> {
            let path = profile_dir.join(name);
            anyhow::ensure!(
                path.is_file(),
                "the {name} binary is missing at {}: build it first \
                 (`cargo build --workspace --bins`; `cargo test --workspace` builds it)",
                path.display()
            );
            Ok(path)
        };
        let ferretdb = match std::env::var_os("FERRETDB_BIN") {
            Some(path) => PathBuf::from(path),
            None => {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/bin/ferretdb-v1.24.2-idlookup")
            }
        };
        anyhow::ensure!(
            ferretdb.is_file(),
            "FerretDB is missing at {}: run `scripts/servers.sh up` once (it builds it), \
             or point FERRETDB_BIN at a FerretDB v1.24.2 binary",
            ferretdb.display()
        );
        let redis_server = find_on_path("redis-server").context(
            "redis-server is not on PATH: `scripts/servers.sh up` installs it (Redis 7)",
        )?;
        Ok(Self {
            command_service: service("command-service")?,
            query_service: service("query-service")?,
            ferretdb,
            redis_server,
            target_dir,
        })
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
