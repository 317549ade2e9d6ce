//! One scenario's whole system, private to it: a PostgreSQL cluster of its
//! own (initdb'd into the scenario's temporary directory), FerretDB on it,
//! and Redis (one server, or a cluster of six nodes), on free loopback
//! ports, and one or two replicas of each service, all real processes.
//! Stopping any of them disturbs nothing outside the scenario; all of them
//! (PostgreSQL's server processes too) are killed when the scenario ends.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use anyhow::Context;
use platform::{stream::Partitions, RedactedUrl, RedisClient, RedisConnection};
use tempfile::TempDir;

use crate::{
    cluster,
    processes::{running_as_root, Binaries, Process, Recipe, User},
    support::{eventually, free_ports, port_open},
};

/// The bearer token the scenario's command services accept.
pub(crate) const TOKEN: &str = "fault-suite-token";

/// How long a dependency may take before a service gives up on it
/// (`DEPENDENCY_TIMEOUT_MS`).
pub(crate) const DEPENDENCY_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long a server or service may take to start on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The PostgreSQL database FerretDB keeps everything in.
const POSTGRES_DATABASE: &str = "ferretdb";

/// The settings the services run with. Timings are short, so that every
/// recovery (sweep, lease takeover, claim, trim) happens several times per
/// scenario. The sweep keeps its default interval: each sweep is a query
/// of its own on a machine whose two cores also run PostgreSQL, FerretDB,
/// Redis, the services and the burst, and more often would take the CPU
/// the writes need.
const SERVICE_SETTINGS: [(&str, &str); 8] = [
    ("DEPENDENCY_TIMEOUT_MS", "1000"),
    ("SHUTDOWN_TIMEOUT_MS", "2000"),
    ("OUTBOX_SWEEP_INTERVAL_MS", "1000"),
    ("RELAY_LEASE_MS", "3000"),
    ("CLAIM_IDLE_MS", "1500"),
    ("CONSUMER_BLOCK_MS", "200"),
    ("STREAM_TRIM_INTERVAL_MS", "1000"),
    // The walks that matter run at start and when Redis lost the group;
    // a periodic walk reads both models whole.
    ("RECONCILE_INTERVAL_MS", "60000"),
];

/// What to start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Topology {
    /// Replicas of each service.
    pub(crate) replicas: usize,
    pub(crate) redis: RedisSetup,
}

/// The Redis the services share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisSetup {
    /// One server, with an append-only file fsynced at every write (so a
    /// restart brings its data back) or with no persistence at all.
    Single { persistent: bool },
    /// A cluster of three masters with a replica each (append-only files
    /// fsynced at every write, replication asynchronous), the stream split
    /// into `partitions` (`EVENTS_PARTITIONS`). The services never trim
    /// the stream, so that what it holds after a failover can be compared
    /// with what was appended.
    Cluster { partitions: usize },
}

impl RedisSetup {
    pub(crate) fn is_cluster(self) -> bool {
        matches!(self, RedisSetup::Cluster { .. })
    }

    fn nodes(self) -> usize {
        match self {
            RedisSetup::Single { .. } => 1,
            RedisSetup::Cluster { .. } => cluster::NODES,
        }
    }

    fn partitions(self) -> usize {
        match self {
            RedisSetup::Single { .. } => 1,
            RedisSetup::Cluster { partitions } => partitions,
        }
    }
}

/// The names the services share.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) write_db: String,
    pub(crate) read_db: String,
    pub(crate) stream: String,
    pub(crate) dead_letter_stream: String,
    /// The stream's partitions: the keys of the stream and of the dead
    /// letters, and which partition a book's events go to.
    pub(crate) partitions: Partitions,
    pub(crate) group: String,
    /// The suite's own consumer group on the stream, which counts what was
    /// delivered.
    pub(crate) audit_group: String,
}

/// A service replica and the port it always listens on.
pub(crate) struct Service {
    pub(crate) process: Process,
    pub(crate) port: u16,
}

impl Service {
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub(crate) struct System {
    pub(crate) names: Names,
    pub(crate) ferret: Process,
    pub(crate) ferret_port: u16,
    pub(crate) postgres: Process,
    postgres_port: u16,
    postgres_bin: std::path::PathBuf,
    pub(crate) redis_setup: RedisSetup,
    /// The Redis server, or the cluster's nodes.
    pub(crate) redis: Vec<Process>,
    pub(crate) redis_ports: Vec<u16>,
    pub(crate) commands: Vec<Service>,
    pub(crate) queries: Vec<Service>,
    /// For the suite's own reads of both models.
    pub(crate) mongo: mongodb::Client,
    http: reqwest::Client,
    // Declared last: the processes above are killed before their data goes.
    dir: TempDir,
}

impl System {
    /// Starts the servers (PostgreSQL, and FerretDB once PostgreSQL accepts
    /// connections; Redis, or the cluster's nodes, then the cluster from
    /// them), creates the audit group (so that it sees every entry from the
    /// first), then the query services and the command services, and waits
    /// until every service is ready.
    pub(crate) async fn start(
        binaries: &Binaries,
        topology: Topology,
        scenario: &str,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("faults-{scenario}-"))
            .tempdir()
            .context("cannot create the scenario's directory")?;
        let stream = "books:events";
        let names = Names {
            write_db: "books_write".to_owned(),
            read_db: "books_read".to_owned(),
            stream: stream.to_owned(),
            dead_letter_stream: "books:events:dead".to_owned(),
            partitions: Partitions::new(
                stream,
                topology.redis.partitions(),
                topology.redis.is_cluster(),
            )?,
            group: "query-service".to_owned(),
            audit_group: "fault-audit".to_owned(),
        };

        let redis_nodes = topology.redis.nodes();
        let mut ports = free_ports(2 + redis_nodes + 2 * topology.replicas)?.into_iter();
        let mut port = || ports.next().expect("a port for each process");
        let (postgres_port, ferret_port) = (port(), port());
        let redis_ports: Vec<u16> = (0..redis_nodes).map(|_| port()).collect();
        let query_ports: Vec<u16> = (0..topology.replicas).map(|_| port()).collect();
        let command_ports: Vec<u16> = (0..topology.replicas).map(|_| port()).collect();
        let postgres = Process::start(postgres_recipe(binaries, dir.path(), postgres_port).await?)?;
        await_postgres(&binaries.postgres_bin, postgres_port).await?;
        create_database(&binaries.postgres_bin, postgres_port).await?;
        let ferret = Process::start(ferret_recipe(
            binaries,
            dir.path(),
            ferret_port,
            postgres_port,
        )?)?;
        let redis = redis_ports
            .iter()
            .enumerate()
            .map(|(index, port)| {
                Process::start(redis_recipe(
                    binaries,
                    dir.path(),
                    topology.redis,
                    index,
                    *port,
                )?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mongo = mongodb::Client::with_uri_str(format!(
            "mongodb://127.0.0.1:{ferret_port}/?serverSelectionTimeoutMS=3000&connectTimeoutMS=3000"
        ))
        .await
        .context("cannot build a MongoDB client")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build an HTTP client")?;

        let mut system = Self {
            names,
            ferret,
            ferret_port,
            postgres,
            postgres_port,
            postgres_bin: binaries.postgres_bin.clone(),
            redis_setup: topology.redis,
            redis,
            redis_ports,
            commands: Vec::new(),
            queries: Vec::new(),
            mongo,
            http,
            dir,
        };
        system.await_ferret().await?;
        system.start_cluster(binaries).await?;
        system.await_redis().await?;
        crate::audit::create_group(&system.redis_client()?, &system.names).await?;

        for (index, port) in query_ports.iter().enumerate() {
            let recipe = system.query_recipe(binaries, index, *port);
            system.queries.push(Service {
                process: Process::start(recipe)?,
                port: *port,
            });
        }
        for (index, port) in command_ports.into_iter().enumerate() {
            let recipe = system.command_recipe(binaries, index, port, query_ports[0]);
            system.commands.push(Service {
                process: Process::start(recipe)?,
                port,
            });
        }
        for service in system.commands.iter().chain(&system.queries) {
            await_answer(&system.http, &service.url(), "/readyz").await?;
        }
        Ok(system)
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the scenario's directory (data and logs) after the scenario,
    /// for inspection.
    pub(crate) fn keep_dir(self) -> std::path::PathBuf {
        let Self {
            ferret,
            postgres,
            redis,
            commands,
            queries,
            dir,
            ..
        } = self;
        drop((commands, queries, ferret, postgres, redis));
        dir.keep()
    }

    /// `redis://` for the one server, or `redis+cluster://` with every node
    /// as a seed.
    pub(crate) fn redis_url(&self) -> String {
        let addresses: Vec<String> = self
            .redis_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        if self.redis_setup.is_cluster() {
            format!("redis+cluster://{}", addresses.join(","))
        } else {
            format!("redis://{}", addresses[0])
        }
    }

    /// A client of the services' Redis, as they open it.
    pub(crate) fn redis_client(&self) -> anyhow::Result<RedisClient> {
        RedisClient::open(&RedactedUrl::new(self.redis_url()))
    }

    /// A connection for the suite's own commands: reconnects by itself, and
    /// follows the cluster's slots as they move.
    pub(crate) fn redis_connection(&self) -> anyhow::Result<RedisConnection> {
        Ok(self.redis_client()?.shared(Duration::from_secs(2))?)
    }

    pub(crate) fn mongo_url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.ferret_port)
    }

    pub(crate) fn command_urls(&self) -> Vec<String> {
        self.commands.iter().map(Service::url).collect()
    }

    /// The query replicas still running.
    pub(crate) fn live_query_urls(&mut self) -> Vec<String> {
        self.queries
            .iter_mut()
            .filter_map(|q| q.process.is_running().then(|| q.url()))
            .collect()
    }

    pub(crate) fn write_db(&self) -> mongodb::Database {
        self.mongo.database(&self.names.write_db)
    }

    pub(crate) fn read_db(&self) -> mongodb::Database {
        self.mongo.database(&self.names.read_db)
    }

    /// Every process's log file.
    pub(crate) fn logs(&self) -> Vec<(String, std::path::PathBuf)> {
        [&self.postgres, &self.ferret]
            .into_iter()
            .chain(&self.redis)
            .chain(self.commands.iter().map(|s| &s.process))
            .chain(self.queries.iter().map(|s| &s.process))
            .map(|p| (p.name().to_owned(), p.log()))
            .collect()
    }

    pub(crate) async fn restart_ferret(&mut self) -> anyhow::Result<()> {
        self.ferret.restart()?;
        self.await_ferret().await
    }

    /// Kills PostgreSQL's postmaster and all its server processes with
    /// SIGKILL, as a crash would: a transaction not yet committed is gone,
    /// a committed one is in the WAL (fsynced: synchronous commit).
    pub(crate) async fn kill_postgres(&mut self) -> anyhow::Result<()> {
        self.postgres.kill_tree().await
    }

    /// Starts a killed PostgreSQL again on its data directory and waits
    /// until it accepts connections (after its crash recovery from the
    /// WAL). FerretDB is not touched.
    pub(crate) async fn restart_postgres(&mut self) -> anyhow::Result<()> {
        self.postgres.restart()?;
        await_postgres(&self.postgres_bin, self.postgres_port).await
    }

    /// Waits until FerretDB answers a ping, which reaches PostgreSQL, within
    /// `deadline`.
    pub(crate) async fn await_ferret_within(&self, deadline: Duration) -> anyhow::Result<()> {
        let admin = self.mongo.database("admin");
        let port = self.ferret_port;
        eventually("FerretDB to answer a ping", deadline, || {
            let admin = admin.clone();
            async move {
                if !port_open(port).await {
                    return None;
                }
                admin.run_command(bson::doc! { "ping": 1 }).await.ok()
            }
        })
        .await?;
        Ok(())
    }

    /// Starts a killed Redis server (or cluster node) again on its data and
    /// waits until it serves (a cluster: until it is whole again, a node
    /// that came back as a replica linked to its master).
    pub(crate) async fn restart_redis(&mut self, index: usize) -> anyhow::Result<()> {
        self.redis[index].restart()?;
        self.await_redis().await
    }

    /// Restarts a killed service replica on its port and waits until it
    /// answers (not until it is ready: its dependencies may be down).
    pub(crate) async fn restart_service(
        &mut self,
        query: bool,
        index: usize,
    ) -> anyhow::Result<()> {
        let service = if query {
            &mut self.queries[index]
        } else {
            &mut self.commands[index]
        };
        service.process.restart()?;
        let url = service.url();
        await_answer(&self.http, &url, "/healthz").await
    }

    async fn await_ferret(&self) -> anyhow::Result<()> {
        self.await_ferret_within(START_DEADLINE).await
    }

    async fn await_redis(&self) -> anyhow::Result<()> {
        if self.redis_setup.is_cluster() {
            let ports = &self.redis_ports;
            return eventually(
                "the Redis Cluster to serve every slot with a replica per master",
                START_DEADLINE,
                || async { cluster::ready(ports).await.then_some(()) },
            )
            .await;
        }
        self.await_nodes().await
    }

    /// Waits until every Redis server or node answers PING.
    async fn await_nodes(&self) -> anyhow::Result<()> {
        for &port in &self.redis_ports {
            eventually(
                &format!("Redis on port {port} to answer PING"),
                START_DEADLINE,
                || async move { cluster::ask(port, &["PING"]).await },
            )
            .await?;
        }
        Ok(())
    }

    /// Joins the nodes into a cluster, when the scenario has one.
    async fn start_cluster(&self, binaries: &Binaries) -> anyhow::Result<()> {
        if !self.redis_setup.is_cluster() {
            return Ok(());
        }
        let redis_cli = binaries.redis_cli.as_ref().context(
            "redis-cli is not on PATH: it comes with redis-server (`scripts/servers.sh up` installs it)",
        )?;
        self.await_nodes().await?;
        cluster::create(redis_cli, &self.redis_ports, self.dir()).await
    }

    fn service_env(&self) -> Vec<(String, String)> {
        let mut env = base_env();
        env.extend(
            [
                ("HOST", "127.0.0.1".to_owned()),
                ("MONGO_URL", self.mongo_url()),
                ("REDIS_URL", self.redis_url()),
                ("EVENTS_STREAM", self.names.stream.clone()),
                (
                    "EVENTS_PARTITIONS",
                    self.names.partitions.count().to_string(),
                ),
                ("RUST_LOG", "info".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let cluster = self.redis_setup.is_cluster();
        env.extend(SERVICE_SETTINGS.iter().map(|&(k, v)| {
            // On a cluster the stream is never trimmed (see `RedisSetup`).
            let v = if cluster && k == "STREAM_TRIM_INTERVAL_MS" {
                "0"
            } else {
                v
            };
            (k.to_owned(), v.to_owned())
        }));
        env
    }

    fn command_recipe(
        &self,
        binaries: &Binaries,
        index: usize,
        port: u16,
        query_port: u16,
    ) -> Recipe {
        let mut env = self.service_env();
        env.extend(
            [
                ("PORT", port.to_string()),
                ("WRITE_DB_NAME", self.names.write_db.clone()),
                ("QUERY_BASE_URL", format!("http://127.0.0.1:{query_port}")),
                ("API_TOKENS", TOKEN.to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        Recipe {
            name: format!("command-service-{}", index + 1),
            program: binaries.command_service.clone(),
            args: Vec::new(),
            env,
            dir: self.dir().to_owned(),
            user: None,
            own_pid_namespace: false,
        }
    }

    fn query_recipe(&self, binaries: &Binaries, index: usize, port: u16) -> Recipe {
        let name = format!("query-service-{}", index + 1);
        let mut env = self.service_env();
        env.extend(
            [
                ("PORT", port.to_string()),
                ("READ_DB_NAME", self.names.read_db.clone()),
                ("CONSUMER_GROUP", self.names.group.clone()),
                // Stable across restarts: a restarted replica finishes its
                // own pending entries first.
                ("CONSUMER_NAME", name.clone()),
                ("DEAD_LETTER_STREAM", self.names.dead_letter_stream.clone()),
                ("CACHE_KEY_PREFIX", "books:cache:".to_owned()),
                // The reconciliation with the write model.
                ("WRITE_MONGO_URL", self.mongo_url()),
                ("WRITE_DB_NAME", self.names.write_db.clone()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        Recipe {
            name,
            program: binaries.query_service.clone(),
            args: Vec::new(),
            env,
            dir: self.dir().to_owned(),
            user: None,
            own_pid_namespace: false,
        }
    }
}

/// What every child keeps of the test's environment: nothing but where
/// programs and temporary files are.
pub(crate) fn base_env() -> Vec<(String, String)> {
    ["PATH", "HOME", "TMPDIR"]
        .into_iter()
        .filter_map(|name| Some((name.to_owned(), std::env::var(name).ok()?)))
        .collect()
}

/// PostgreSQL's cluster of the scenario, in `<dir>/postgresql`: created
/// with initdb (trust authentication, superuser `postgres`), then its
/// server on `port`, on loopback only, with no Unix socket, durable commits
/// (fsync, synchronous commit) and its log on stderr. As root, both run as
/// the `postgres` user (PostgreSQL refuses root), the scenario's directory
/// lets that user through, and the server runs in a PID namespace of its
/// own; otherwise as the suite's user.
///
/// One initdb per scenario: it takes under a second (`--no-sync`: the
/// files only need to outlive processes, not the machine), no more than
/// copying a template cluster would, and nothing is shared between
/// scenarios.
async fn postgres_recipe(binaries: &Binaries, dir: &Path, port: u16) -> anyhow::Result<Recipe> {
    let data = dir.join("postgresql");
    std::fs::create_dir_all(&data)?;
    let root = running_as_root();
    let user = if root {
        let user = User::named("postgres")
            .context("PostgreSQL refuses to run as root, and it has no postgres user to run as")?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        std::os::unix::fs::chown(&data, Some(user.uid), Some(user.gid))?;
        Some(user)
    } else {
        None
    };
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    let mut initdb = tokio::process::Command::new(binaries.postgres_bin.join("initdb"));
    if let Some(user) = user {
        initdb.uid(user.uid).gid(user.gid);
    }
    let output = initdb
        .arg("--pgdata")
        .arg(&data)
        .args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .env_clear()
        .envs(base_env())
        .current_dir(&data)
        .output()
        .await
        .context("cannot run initdb")?;
    std::fs::write(
        dir.join("initdb.log"),
        [&output.stdout[..], &output.stderr].concat(),
    )?;
    anyhow::ensure!(
        output.status.success(),
        "initdb failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(Recipe {
        name: "postgresql".to_owned(),
        program: binaries.postgres_bin.join("postgres"),
        args: [
            "-D",
            &data.display().to_string(),
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
        ]
        .map(str::to_owned)
        .to_vec(),
        env: base_env(),
        dir: dir.to_owned(),
        user,
        // As root, nothing of a killed PostgreSQL is left behind, not even
        // zombies (see `Recipe::own_pid_namespace`).
        own_pid_namespace: root,
    })
}

/// Waits until PostgreSQL on `port` accepts connections (`pg_isready`; not
/// while it recovers from a crash).
async fn await_postgres(bin: &Path, port: u16) -> anyhow::Result<()> {
    eventually(
        "PostgreSQL to accept connections",
        START_DEADLINE,
        || async {
            let status = tokio::process::Command::new(bin.join("pg_isready"))
                .args(["--host=127.0.0.1", "--username=postgres", "--timeout=2"])
                .arg(format!("--port={port}"))
                .env_clear()
                .envs(base_env())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .ok()?;
            status.success().then_some(())
        },
    )
    .await
}

/// Creates the database FerretDB keeps everything in (FerretDB does not
/// create it).
async fn create_database(bin: &Path, port: u16) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(bin.join("createdb"))
        .args(["--host=127.0.0.1", "--username=postgres"])
        .arg(format!("--port={port}"))
        .arg(POSTGRES_DATABASE)
        .env_clear()
        .envs(base_env())
        .output()
        .await
        .context("cannot run createdb")?;
    anyhow::ensure!(
        output.status.success(),
        "createdb failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// FerretDB as `scripts/servers.sh` runs it, on `port`, keeping its data in
/// the scenario's PostgreSQL on `postgres_port` and its state in
/// `<dir>/ferretdb`.
fn ferret_recipe(
    binaries: &Binaries,
    dir: &Path,
    port: u16,
    postgres_port: u16,
) -> anyhow::Result<Recipe> {
    let data = dir.join("ferretdb");
    std::fs::create_dir_all(&data)?;
    Ok(Recipe {
        name: "ferretdb".to_owned(),
        program: binaries.ferretdb.clone(),
        args: vec![
            "--handler=postgresql".to_owned(),
            format!(
                "--postgresql-url=postgres://postgres@127.0.0.1:{postgres_port}/{POSTGRES_DATABASE}"
            ),
            format!("--state-dir={}", data.display()),
            format!("--listen-addr=127.0.0.1:{port}"),
            "--debug-addr=-".to_owned(),
            "--telemetry=disable".to_owned(),
            "--log-level=warn".to_owned(),
        ],
        env: base_env(),
        dir: dir.to_owned(),
        user: None,
        own_pid_namespace: false,
    })
}

/// Redis on `port`. The one server keeps its files in `<dir>/redis`: with
/// an append-only file fsynced at every write (as `scripts/servers.sh` runs
/// it), or with no persistence at all, so that a restart starts empty.
/// Cluster node `index` keeps its append-only file and its `nodes.conf`
/// (its identity, slots and peers, with which a restarted node rejoins) in
/// `<dir>/redis-<index + 1>`.
fn redis_recipe(
    binaries: &Binaries,
    dir: &Path,
    setup: RedisSetup,
    index: usize,
    port: u16,
) -> anyhow::Result<Recipe> {
    let name = match setup {
        RedisSetup::Single { .. } => "redis".to_owned(),
        RedisSetup::Cluster { .. } => format!("redis-{}", index + 1),
    };
    let data = dir.join(&name);
    std::fs::create_dir_all(&data)?;
    let mut args = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &data.display().to_string(),
        "--save",
        "",
    ]
    .map(str::to_owned)
    .to_vec();
    let persistence: &[&str] = match setup {
        RedisSetup::Single { persistent } => &[
            "--appendonly",
            if persistent { "yes" } else { "no" },
            "--appendfsync",
            "always",
        ],
        RedisSetup::Cluster { .. } => &cluster::NODE_ARGS,
    };
    args.extend(persistence.iter().map(|arg| (*arg).to_owned()));
    Ok(Recipe {
        name,
        program: binaries.redis_server.clone(),
        args,
        env: base_env(),
        dir: dir.to_owned(),
        user: None,
        own_pid_namespace: false,
    })
}

/// Waits until `GET <url><path>` answers 200.
async fn await_answer(http: &reqwest::Client, url: &str, path: &str) -> anyhow::Result<()> {
    let target = format!("{url}{path}");
    eventually(&format!("{target} to answer 200"), START_DEADLINE, || {
        let request = http.get(&target).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await?;
    Ok(())
}
