//! The parts a fault scenario runs as separate processes it controls: the gateway (`parkflow
//! run --demo --demo-idle`), an external Mosquitto of its own, a PostgreSQL database of its own
//! on the machine's server, the simulator (`parkflow sim --verify`) and `parkflow audit`.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Connection;
use tokio::process::{Child, Command};

/// The admin key the scenarios' platforms are started with.
pub const ADMIN_KEY: &str = "chaos-admin-key-0123456789abcdefghij";

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn parkflow() -> anyhow::Result<PathBuf> {
    match BINARY.get() {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe().context("cannot find the parkflow binary"),
    }
}

/// The `parkflow` binary the parts run, when it is not this process's (a test's).
static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs the parts with this `parkflow` binary (tests: `env!("CARGO_BIN_EXE_parkflow")`).
pub fn use_binary(path: impl Into<PathBuf>) {
    let _ = BINARY.set(path.into());
}

/// A process killed (SIGKILL) when dropped, its output in a log file.
struct Process {
    child: Option<Child>,
}

impl Process {
    fn spawn(program: &Path, args: &[OsString], log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PARKFLOW_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Self { child: Some(child) })
    }

    /// kill -9, and reaps it.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// The gateway: `parkflow run` with the demo city, restartable with the same flags.
pub struct Gateway {
    args: Vec<OsString>,
    pub http: SocketAddr,
    log: PathBuf,
    process: Option<Process>,
}

impl Gateway {
    /// The flags of a demo platform on `database_url` and either an external broker (`mqtt_url`)
    /// or the embedded one listening on `mqtt_listen`.
    pub fn new(
        dir: &Path,
        database_url: &str,
        mqtt: Broker,
        devices: &Path,
    ) -> anyhow::Result<Self> {
        let http = free_addr()?;
        let mut args: Vec<OsString> = [
            "run",
            "--demo",
            "--demo-idle",
            "--admin-key",
            ADMIN_KEY,
            "--database-url",
            database_url,
        ]
        .map(OsString::from)
        .to_vec();
        args.extend(["--http-listen".into(), http.to_string().into()]);
        args.extend(["--demo-devices".into(), devices.as_os_str().to_owned()]);
        match mqtt {
            Broker::External(url) => args.extend(["--mqtt-url".into(), url.into()]),
            Broker::Embedded(listen) => {
                args.extend(["--mqtt-listen".into(), listen.to_string().into()]);
            }
        }
        Ok(Self {
            args,
            http,
            log: dir.join("gateway.log"),
            process: None,
        })
    }

    /// The demo city to provision (`--demo-city`).
    pub fn city(mut self, city: &str) -> Self {
        self.args.extend(["--demo-city".into(), city.into()]);
        self
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref()?.child.as_ref()?.id()
    }

    /// One of several gateway nodes (`--node-id`).
    pub fn node(mut self, id: &str) -> Self {
        self.args.extend(["--node-id".into(), id.into()]);
        self
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        self.process = Some(Process::spawn(&parkflow()?, &self.args, &self.log)?);
        Ok(())
    }

    /// kill -9.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Stops the process without killing it (SIGSTOP), as a long pause (a stalled VM, a
    /// debugger, swapping) looks to the others; [`Gateway::resume`] lets it go on.
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP").await
    }

    pub async fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .process
            .as_ref()
            .and_then(|p| p.child.as_ref())
            .and_then(Child::id)
            .context("the gateway is not running")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// Waits until `/readyz` answers 200; how long that took.
    pub async fn ready(&self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://{}/readyz", self.http);
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                anyhow::bail!(
                    "the gateway was not ready within {within:?} (its log: {})",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn api(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A counter or gauge of its `/metrics` (the series as exported, labels included); 0 when
    /// absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = reqwest::Client::new()
            .get(format!("http://{}/metrics", self.http))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(crate::bench::metric_value(&text, series))
    }

    /// The gateway process's resident memory now, in bytes (`None` when it is not running).
    pub fn rss(&self) -> Option<u64> {
        let pid = self.process.as_ref()?.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        Some(kb * 1024)
    }
}

/// How many lots each gateway node holds now (live leases), by node.
pub async fn owners(database_url: &str) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let mut connection = sqlx::PgConnection::connect(database_url).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT node_id, COUNT(*) FROM lot_leases WHERE expires_at > clock_timestamp()
         GROUP BY node_id",
    )
    .fetch_all(&mut connection)
    .await?;
    Ok(rows.into_iter().collect())
}

/// What lanes deciding alone left behind: how many invoices were raised to plates (cars let out
/// without standing), and the charges owed with nobody to bill that have no such invoice (none
/// may).
pub async fn plate_invoices(database_url: &str) -> anyhow::Result<(i64, i64)> {
    let mut connection = sqlx::PgConnection::connect(database_url).await?;
    let (invoiced,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM invoices WHERE plate IS NOT NULL")
            .fetch_one(&mut connection)
            .await?;
    let (uninvoiced,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM charges c JOIN sessions s ON s.id = c.session_id
         WHERE c.status = 'no_account' AND c.driver_id IS NULL
           AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.charge_id = c.id AND i.plate = s.plate)",
    )
    .fetch_one(&mut connection)
    .await?;
    Ok((invoiced, uninvoiced))
}

/// How the gateway reaches its broker.
pub enum Broker {
    External(String),
    Embedded(SocketAddr),
}

/// A Mosquitto of the scenario's own, on a free port, persisting to its folder; restartable.
pub struct Mosquitto {
    pub addr: SocketAddr,
    conf: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data)?;
        // Started as root, Mosquitto drops to its own user: without these it cannot save its
        // persistence file (it logs "Permission denied" and goes on without persistence).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777))?;
        }
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 set_tcp_nodelay true\n\
                 persistence true\n\
                 persistence_location {data}/\n\
                 autosave_interval 1\n\
                 max_queued_messages 1000000\n\
                 max_inflight_messages 1000\n",
                port = addr.port(),
                data = data.display()
            ),
        )?;
        let mut mosquitto = Self {
            addr,
            conf,
            log: dir.join("mosquitto.log"),
            process: None,
        };
        mosquitto.restart()?;
        Ok(mosquitto)
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        let args = ["-c".into(), self.conf.as_os_str().to_owned()];
        self.process = Some(Process::spawn(Path::new("mosquitto"), &args, &self.log)?);
        Ok(())
    }

    /// kill -9.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Waits until it accepts connections.
    pub async fn listening(&self) -> anyhow::Result<()> {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("mosquitto did not listen (its log: {})", self.log.display())
    }
}

/// A database of the scenario's own on a PostgreSQL server, dropped at the end — also when the
/// scenario fails half-way (then by [`Drop`], on a thread of its own).
pub struct PgDatabase {
    server: String,
    name: String,
    /// The server's address, for a proxy to stand in front of.
    pub addr: SocketAddr,
    dropped: bool,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if self.dropped || std::env::var_os("PARKFLOW_CHAOS_KEEP").is_some() {
            return;
        }
        let (server, name) = (self.server.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(drop_database(&server, &name))
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("warning: database {} was not dropped: {error:#}", self.name);
        }
    }
}

async fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    let mut connection = sqlx::PgConnection::connect(server).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut connection)
        .await?;
    Ok(())
}

impl PgDatabase {
    /// `server`: a URL of the server with a database to connect to first (`postgres://…/test`).
    pub async fn create(server: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(server).context("--postgres-url is not a URL")?;
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port().unwrap_or(5432);
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .context("PostgreSQL's host does not resolve")?;
        let name = format!("parkflow_chaos_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(server)
            .await
            .with_context(|| format!("cannot reach PostgreSQL at {host}:{port}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await?;
        Ok(Self {
            server: server.to_owned(),
            name,
            addr,
            dropped: false,
        })
    }

    /// The database's URL, reached at `via` (the server itself, or a proxy in front of it).
    pub fn url(&self, via: SocketAddr) -> anyhow::Result<String> {
        let mut url = url::Url::parse(&self.server)?;
        url.set_ip_host(via.ip())
            .map_err(|()| anyhow::anyhow!("cannot set the host"))?;
        url.set_port(Some(via.port()))
            .map_err(|()| anyhow::anyhow!("cannot set the port"))?;
        url.set_path(&self.name);
        Ok(url.to_string())
    }

    pub async fn drop_database(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_database(&self.server, &self.name).await
    }
}

/// What the simulator reported.
#[derive(Debug, Default)]
pub struct SimReport {
    pub text: String,
    pub passed: bool,
}

impl SimReport {
    /// A `key=value` figure of the report, as it stood at the end (0 when absent).
    pub fn figure(&self, key: &str) -> u64 {
        self.text
            .split_whitespace()
            .filter_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// `parkflow sim --verify` against the gateway, in the background.
pub struct Sim {
    child: Child,
}

/// What the simulated lanes do when the platform does not answer a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// Wait for it however long it takes: the platform's own gap is what is measured.
    Wait,
    /// Decide alone after 1.5 s from the gate's standing list, and report the decision.
    DecideAlone,
    /// Wait, and each lot's off-the-shelf camera lane is played too (`--play-anpr`): its reads
    /// go over HTTP to the simulator's API node, whichever node runs the lot.
    WaitWithAnpr,
}

impl Sim {
    pub fn start(
        devices: &Path,
        mqtt: SocketAddr,
        api: &str,
        seconds: u64,
        lanes: Lanes,
    ) -> anyhow::Result<Self> {
        // Busier than the demo, so that every fault window has reads in flight.
        Self::start_at(devices, mqtt, api, seconds, "90", "demo", lanes)
    }

    /// [`Sim::start`] with this many arrivals a minute at each lot, in this demo city.
    pub fn start_at(
        devices: &Path,
        mqtt: SocketAddr,
        api: &str,
        seconds: u64,
        arrivals_per_minute: &str,
        city: &str,
        lanes: Lanes,
    ) -> anyhow::Result<Self> {
        let decide_alone_after_ms = match lanes {
            Lanes::Wait | Lanes::WaitWithAnpr => "0",
            Lanes::DecideAlone => "1500",
        };
        let child = Command::new(parkflow()?)
            .args(["sim", "--verify", "--devices"])
            .arg(devices)
            .args(["--mqtt-url", &format!("mqtt://{mqtt}")])
            .args(["--api-url", api, "--admin-key", ADMIN_KEY])
            .args(["--duration-secs", &seconds.to_string()])
            .args(["--max-stay-secs", &(seconds / 2).max(5).to_string()])
            .args(["--arrivals-per-minute", arrivals_per_minute])
            .args(["--city", city])
            .args(["--decide-alone-after-ms", decide_alone_after_ms])
            .args((lanes == Lanes::WaitWithAnpr).then_some("--play-anpr"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PARKFLOW_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the simulator")?;
        Ok(Self { child })
    }

    pub async fn report(self) -> anyhow::Result<SimReport> {
        let output = self.child.wait_with_output().await?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            text.push_str(&String::from_utf8_lossy(&output.stderr));
        }
        Ok(SimReport {
            passed: output.status.success() && text.contains("verify=pass"),
            text,
        })
    }
}

/// `parkflow audit` on `database_url` once the platform's backlog (charges of the last stays)
/// has drained: asked again for up to `within` while it finds violations. The violations it
/// printed last (the first five; none: clean); an audit that could not run is one of them.
pub async fn audit(database_url: &str, within: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let output = Command::new(parkflow()?)
            .args(["audit", "--database-url", database_url])
            .env_clear()
            .env("PARKFLOW_LOG", "error")
            .output()
            .await?;
        if output.status.success() {
            return Ok(Vec::new());
        }
        if Instant::now() >= deadline {
            let text = String::from_utf8_lossy(&output.stdout);
            let mut violations: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("violation"))
                .take(5)
                .map(str::to_owned)
                .collect();
            if violations.is_empty() {
                violations.push(format!(
                    "audit failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            return Ok(violations);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
