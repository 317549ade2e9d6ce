//! Child processes of a scenario (servers and services), started from a
//! recipe so that a killed one comes back exactly as it was: same program,
//! arguments, environment and port. Output goes to a log file that a
//! restart appends to. A child is killed when its handle is dropped, with
//! every process it started (PostgreSQL's server processes), so a failed or
//! panicking scenario leaves nothing running.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
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
    /// Whom to run as, when not as the suite's own user (PostgreSQL
    /// refuses to run as root).
    pub(crate) user: Option<User>,
    /// Whether the process runs as the first process of a PID namespace of
    /// its own (`unshare --pid --fork`, which needs root): when it dies,
    /// the kernel kills every process it started and it reaps them, so
    /// that none is left behind, not even a zombie under an init that
    /// reaps nothing.
    pub(crate) own_pid_namespace: bool,
}

/// A user and group to run a process as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct User {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl User {
    /// The uid and primary gid of a named user.
    pub(crate) fn named(name: &str) -> anyhow::Result<Self> {
        let id = |flag: &str| -> anyhow::Result<u32> {
            let output = std::process::Command::new("id")
                .args([flag, name])
                .output()
                .context("cannot run `id`")?;
            anyhow::ensure!(
                output.status.success(),
                "no user {name}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
        };
        Ok(Self {
            uid: id("-u")?,
            gid: id("-g")?,
        })
    }
}

/// Whether the suite runs as root (`/proc/self` belongs to the effective
/// user).
pub(crate) fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
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

    /// Kills the process and every process it started with SIGKILL, as a
    /// crash of a whole server would (PostgreSQL's postmaster and its
    /// backends: a backend left behind would keep the shared memory, and a
    /// restart would refuse to start), and waits until all are gone.
    pub(crate) async fn kill_tree(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let what = if self.recipe.own_pid_namespace {
            // The child is `unshare`, and the server its only child, the
            // namespace's first process: once the server is killed, the
            // kernel kills the rest of the namespace at once, the server
            // reaps them, and `unshare` reaps the server and exits.
            signal("KILL", &child.id().map(children_of).unwrap_or_default());
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                child.kill().await?;
                anyhow::bail!("{} outlived its SIGKILL by 10 s", self.recipe.name);
            }
            "killed with SIGKILL, and with it every process of its PID namespace".to_owned()
        } else {
            // Stopped first, so that it starts no child meanwhile; its
            // children are killed before it, so that none of them sees it
            // die and finishes what it was doing. They may stay zombies
            // (their parent is gone) but hold nothing.
            let descendants = child.id().map(stop_and_list).unwrap_or_default();
            signal("KILL", &descendants);
            child
                .kill()
                .await
                .with_context(|| format!("cannot kill {}", self.recipe.name))?;
            crate::support::eventually(
                "the killed process's children to be gone",
                Duration::from_secs(10),
                || async { descendants.iter().all(|pid| !alive(*pid)).then_some(()) },
            )
            .await?;
            format!(
                "killed with SIGKILL, with its {} child process(es)",
                descendants.len()
            )
        };
        self.note(&what)?;
        Ok(())
    }

    /// Stops the process with SIGSTOP, as a stall of its machine would: it
    /// holds its connections and answers nothing until resumed.
    pub(crate) fn pause(&mut self) -> anyhow::Result<()> {
        let pid = self.pid()?;
        signal("STOP", &[pid]);
        self.note("stopped with SIGSTOP")
    }

    /// Lets a paused process go on (SIGCONT).
    pub(crate) fn resume(&mut self) -> anyhow::Result<()> {
        let pid = self.pid()?;
        signal("CONT", &[pid]);
        self.note("resumed with SIGCONT")
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("{} is not running", self.recipe.name))
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
        let mut command = if self.recipe.own_pid_namespace {
            // `unshare` switches to the user itself, inside the namespace
            // it creates as root. When the server dies of a signal it
            // prints "sigprocmask unblock failed" (it cannot re-raise
            // SIGKILL on itself): harmless.
            let mut command = Command::new("unshare");
            command.args(["--pid", "--fork", "--kill-child"]);
            if let Some(user) = self.recipe.user {
                command
                    .arg(format!("--setgid={}", user.gid))
                    .arg(format!("--setuid={}", user.uid));
            }
            command.arg("--").arg(&self.recipe.program);
            command
        } else {
            let mut command = Command::new(&self.recipe.program);
            if let Some(user) = self.recipe.user {
                command.uid(user.uid).gid(user.gid);
            }
            command
        };
        let child = command
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
        // kill_on_drop also kills the process itself; its children (a
        // server's workers) are this drop's to kill.
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let Some(pid) = child.id() else {
            return;
        };
        if self.recipe.own_pid_namespace {
            // As in `kill_tree`: the server's death ends its namespace;
            // `unshare` exits once it has reaped it (a few milliseconds).
            signal("KILL", &children_of(pid));
            let give_up = std::time::Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            signal("KILL", &stop_and_list(pid));
        }
        let _ = child.start_kill();
    }
}

/// Stops a process with SIGSTOP (it can start no child any more) and lists
/// its descendants, children first.
fn stop_and_list(pid: u32) -> Vec<u32> {
    signal("STOP", &[pid]);
    descendants(pid)
}

/// Every process's children, from /proc.
fn process_tree() -> BTreeMap<u32, Vec<u32>> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(parent) = parent_of(child) {
            children.entry(parent).or_default().push(child);
        }
    }
    children
}

/// The processes `pid` started and that still exist.
fn children_of(pid: u32) -> Vec<u32> {
    process_tree().remove(&pid).unwrap_or_default()
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let children = process_tree();
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            found.push(*child);
            next.push(*child);
        }
    }
    found
}

/// A process's state letter and parent, from `/proc/<pid>/stat`
/// (`pid (comm) state ppid ...`, where comm may hold anything).
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

fn parent_of(pid: u32) -> Option<u32> {
    stat(pid).map(|(_, parent)| parent)
}

/// Whether a process still runs (a zombie has released everything it
/// held; only its parent, or init, can reap it).
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Sends a signal to processes with kill(1), ignoring those already gone
/// (the suite forbids unsafe code, hence no libc).
fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg("-s")
        .arg(name)
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Where the built binaries are: beside this test's own directory
/// (`target/<profile>/deps/faults-*` → `target/<profile>/`).
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) command_service: PathBuf,
    pub(crate) query_service: PathBuf,
    pub(crate) ferretdb: PathBuf,
    /// PostgreSQL's server programs (`initdb`, `postgres`, `pg_isready`,
    /// `createdb`).
    pub(crate) postgres_bin: PathBuf,
    pub(crate) redis_server: PathBuf,
    /// What creates a Redis Cluster (`redis-cli --cluster create`), needed
    /// only by a scenario with one.
    pub(crate) redis_cli: Option<PathBuf>,
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
                Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/bin/ferretdb-v1.24.2-atomic")
            }
        };
        anyhow::ensure!(
            ferretdb.is_file(),
            "FerretDB is missing at {}: run `scripts/servers.sh up` once (it builds it), \
             or point FERRETDB_BIN at a FerretDB v1.24.2 binary",
            ferretdb.display()
        );
        let postgres_bin = postgres_bin()?;
        let redis_server = find_on_path("redis-server").context(
            "redis-server is not on PATH: `scripts/servers.sh up` installs it (Redis 7)",
        )?;
        Ok(Self {
            command_service: service("command-service")?,
            query_service: service("query-service")?,
            ferretdb,
            postgres_bin,
            redis_server,
            redis_cli: find_on_path("redis-cli"),
            target_dir,
        })
    }
}

/// PostgreSQL's bin directory: `PG_BIN`, else Debian's of the highest
/// version (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("PG_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.is_dir().then_some((version, bin))
            })
            .max()
            .map(|(_, bin)| bin)
            .context(
                "PostgreSQL is not installed in /usr/lib/postgresql/<version>/bin \
                 (`scripts/servers.sh up` installs it), and PG_BIN does not point at its bin directory",
            )?,
    };
    for program in ["initdb", "postgres", "pg_isready", "createdb"] {
        anyhow::ensure!(
            dir.join(program).is_file(),
            "{program} is missing from PostgreSQL's bin directory {}",
            dir.display()
        );
    }
    Ok(dir)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
