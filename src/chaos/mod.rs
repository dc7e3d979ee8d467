//! `parkflow chaos <scenario>`: faults injected into a running platform, judged from outside.
//!
//! Each scenario starts the platform as separate processes it controls ([`parts`]): the gateway
//! (`parkflow run --demo --demo-idle`), an external Mosquitto of its own, a PostgreSQL database
//! of its own (or SQLite and the embedded broker), and a TCP fault proxy ([`proxy`]) between the
//! parts where the fault is in the network. It drives the simulator with `--verify`, injects the
//! fault mid-run, then runs `parkflow audit`, and prints one line per scenario:
//!
//! `fault=<name> sent= recorded= lost= duplicated= audit=clean|dirty decision_gap_ms= recovery_s=`
//!
//! then `pass` or `fail` (or `skip` with the reason). `decision_gap_ms` is the longest a lane
//! waited for its answer (the simulator's cameras measure it); `recovery_s` the time from the
//! end of the fault until `/readyz` answers 200 again.

pub mod parts;
pub mod proxy;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use parts::{
    Broker, Gateway, Lanes, Mosquitto, PgDatabase, Sim, SimReport, audit, free_addr, owners,
};
use proxy::{FaultProxy, Mode};

/// How long the platform has after the traffic to bill the last stays before the audit counts
/// what is missing.
const AUDIT_SETTLE: Duration = Duration::from_secs(30);

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: [&str; 9] = [
    "gateway-kill",
    "broker-restart",
    "db-stall",
    "partition",
    "disk-full",
    "clock-skew",
    "embedded-kill",
    "failover",
    "lane-offline",
];

/// How long things last: `--quick` for CI, or the figures.
#[derive(Debug, Clone, Copy)]
struct Timing {
    traffic: Duration,
    warm_up: Duration,
    stall: Duration,
    partition: Duration,
    /// How long the gateway stays down in `lane-offline`.
    outage: Duration,
}

impl Timing {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                traffic: Duration::from_secs(30),
                warm_up: Duration::from_secs(6),
                stall: Duration::from_secs(10),
                partition: Duration::from_secs(8),
                outage: Duration::from_secs(15),
            }
        } else {
            Self {
                traffic: Duration::from_secs(90),
                warm_up: Duration::from_secs(15),
                stall: Duration::from_secs(30),
                partition: Duration::from_secs(20),
                outage: Duration::from_secs(60),
            }
        }
    }
}

/// What one scenario found.
#[derive(Debug, Default)]
struct Outcome {
    fault: &'static str,
    sim: SimReport,
    audit_clean: bool,
    recovery: Duration,
    /// A reason the scenario could not run here.
    skipped: Option<String>,
    /// Faults a scenario found beyond the simulator's and the audit's.
    problems: Vec<String>,
    /// Losses within a documented window are reported, not failed.
    loss_allowed: bool,
    /// The gateway's resident memory when the fault began and its peak during it, in bytes.
    rss_mb: Option<(u64, u64)>,
    /// Invoices raised to plates (cars lanes let out without standing), where counted.
    plate_invoices: Option<i64>,
}

impl Outcome {
    /// Passed (a skipped scenario neither passes nor fails: `run` counts it apart).
    fn passed(&self) -> bool {
        self.skipped.is_some()
            || (self.judged()
                && self.audit_clean
                && self.problems.is_empty()
                && self.sim.figure("duplicated") == 0
                && (self.sim.passed || (self.loss_allowed && self.only_losses())))
    }

    /// Whether the simulator got as far as a verdict on some traffic: a simulator that failed
    /// to run reports nothing, and nothing is not a pass.
    fn judged(&self) -> bool {
        self.sim.text.contains("verify=") && self.sim.figure("sent") > 0
    }

    /// Whether the simulator's only complaint is lost cars.
    fn only_losses(&self) -> bool {
        [
            "duplicated",
            "unexpected",
            "exits_lost",
            "unanswered",
            "fees_mismatched",
        ]
        .iter()
        .all(|key| self.sim.figure(key) == 0)
    }

    fn render(&self) -> String {
        if let Some(reason) = &self.skipped {
            return format!("fault={} skip: {reason}\nskip", self.fault);
        }
        let mut out = format!(
            "fault={} sent={} recorded={} lost={} duplicated={} audit={} decision_gap_ms={} recovery_s={:.1}",
            self.fault,
            self.sim.figure("sent"),
            self.sim.figure("recorded"),
            self.sim.figure("lost"),
            self.sim.figure("duplicated"),
            if self.audit_clean { "clean" } else { "dirty" },
            self.sim.figure("longest_wait_ms"),
            self.recovery.as_secs_f64(),
        );
        if let Some((before, peak)) = self.rss_mb {
            out.push_str(&format!(
                " rss_mb={:.0} rss_peak_mb={:.0}",
                before as f64 / 1e6,
                peak as f64 / 1e6
            ));
        }
        if self.sim.figure("decided_alone") > 0 {
            out.push_str(&format!(
                " decided_alone={} offline_acked={}",
                self.sim.figure("decided_alone"),
                self.sim.figure("offline_acked"),
            ));
        }
        if let Some(invoices) = self.plate_invoices {
            out.push_str(&format!(" plate_invoices={invoices}"));
        }
        for problem in &self.problems {
            out.push_str(&format!("\nproblem: {problem}"));
        }
        if !self.judged() {
            out.push_str("\nproblem: the simulator reported no verdict on any traffic");
            for line in self.sim.text.lines().rev().take(5) {
                out.push_str(&format!("\nsim: {line}"));
            }
        }
        if !self.sim.passed {
            for line in self.sim.text.lines().filter(|l| {
                l.starts_with("fault:") || l.starts_with("unexpected=") || l.starts_with("error")
            }) {
                out.push_str(&format!("\nsim: {line}"));
            }
        }
        out.push('\n');
        out.push_str(if self.passed() { "pass" } else { "fail" });
        out
    }
}

/// Runs `scenario` (or every one, for `all`); `true` when all passed.
pub async fn run(scenario: &str, quick: bool, postgres_url: &str) -> anyhow::Result<bool> {
    let names: Vec<&str> = if scenario == "all" {
        SCENARIOS.to_vec()
    } else if SCENARIOS.contains(&scenario) {
        vec![scenario]
    } else {
        anyhow::bail!(
            "no scenario {scenario:?}: one of all, {}",
            SCENARIOS.join(", ")
        );
    };
    let timing = Timing::new(quick);
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for name in names {
        let started = Instant::now();
        let outcome = match name {
            "gateway-kill" => gateway_kill(timing, postgres_url).await,
            "broker-restart" => broker_restart(timing, postgres_url).await,
            "db-stall" => db_stall(timing, postgres_url).await,
            "partition" => partition(timing, postgres_url).await,
            "disk-full" => disk_full(timing).await,
            "clock-skew" => clock_skew(timing, postgres_url).await,
            "embedded-kill" => embedded_kill(timing).await,
            "failover" => failover(timing, postgres_url).await,
            _ => lane_offline(timing, postgres_url).await,
        };
        let outcome = outcome.with_context(|| format!("scenario {name} could not run"))?;
        println!("{}", outcome.render());
        if std::env::var_os("PARKFLOW_CHAOS_VERBOSE").is_some() {
            println!("{}", outcome.sim.text);
        }
        println!("  ({name} took {:.0} s)", started.elapsed().as_secs_f64());
        match (&outcome.skipped, outcome.passed()) {
            (Some(_), _) => skipped += 1,
            (None, true) => passed += 1,
            (None, false) => failed += 1,
        }
    }
    println!("chaos: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(failed == 0)
}

/// The parts of a scenario on PostgreSQL and an external Mosquitto, with proxies in front of the
/// database and of the broker (as the gateway sees them) where asked.
struct Rig {
    dir: tempfile::TempDir,
    devices: std::path::PathBuf,
    mosquitto: Mosquitto,
    database: Option<PgDatabase>,
    db_proxy: Option<FaultProxy>,
    broker_proxy: Option<FaultProxy>,
    gateway: Gateway,
    /// The database as the audit reaches it (never through a proxy).
    audit_url: String,
}

impl Rig {
    async fn external(
        postgres_url: &str,
        db_proxy: bool,
        broker_proxy: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let devices = dir.path().join("devices.json");
        let mosquitto = Mosquitto::start(dir.path())?;
        mosquitto.listening().await?;
        let database = PgDatabase::create(postgres_url).await?;
        let db_proxy = if db_proxy {
            Some(FaultProxy::start(database.addr).await?)
        } else {
            None
        };
        let broker_proxy = if broker_proxy {
            Some(FaultProxy::start(mosquitto.addr).await?)
        } else {
            None
        };
        let db_url = database.url(db_proxy.as_ref().map_or(database.addr, FaultProxy::addr))?;
        let mqtt = broker_proxy
            .as_ref()
            .map_or(mosquitto.addr, FaultProxy::addr);
        let mut gateway = Gateway::new(
            dir.path(),
            &db_url,
            Broker::External(format!("mqtt://{mqtt}")),
            &devices,
        )?;
        gateway.start()?;
        gateway.ready(Duration::from_secs(120)).await?;
        Ok(Self {
            audit_url: database.url(database.addr)?,
            dir,
            devices,
            mosquitto,
            database: Some(database),
            db_proxy,
            broker_proxy,
            gateway,
        })
    }

    fn traffic(&self, timing: Timing, lanes: Lanes) -> anyhow::Result<Sim> {
        Sim::start(
            &self.devices,
            self.mosquitto.addr,
            &self.gateway.api(),
            timing.traffic.as_secs(),
            lanes,
        )
    }

    /// Waits for the simulator's verdict and the audit's; stops every part.
    async fn finish(
        mut self,
        fault: &'static str,
        sim: Sim,
        recovery: Duration,
    ) -> anyhow::Result<Outcome> {
        let report = sim.report().await?;
        let mut problems = audit(&self.audit_url, AUDIT_SETTLE).await?;
        let (plate_invoices, uninvoiced) = parts::plate_invoices(&self.audit_url).await?;
        if uninvoiced > 0 {
            problems.push(format!(
                "{uninvoiced} charges owed with nobody to bill have no invoice to their plate"
            ));
        }
        self.gateway.kill().await;
        self.mosquitto.kill().await;
        if let Some(database) = self.database.take() {
            if std::env::var_os("PARKFLOW_CHAOS_KEEP").is_some() {
                println!("kept for inspection: {}", self.audit_url);
            } else {
                database.drop_database().await?;
            }
        }
        drop(self.dir);
        Ok(Outcome {
            fault,
            sim: report,
            audit_clean: problems.is_empty(),
            recovery,
            problems,
            plate_invoices: Some(plate_invoices),
            ..Outcome::default()
        })
    }
}

/// What lanes deciding alone must show: every car answered within 2 s (SPEC: a lane decides
/// alone after 1.5 s), every decision it made alone acknowledged (so reconciled).
fn lanes_answered(outcome: &mut Outcome) {
    let gap = outcome.sim.figure("longest_wait_ms");
    if gap >= 2_000 {
        outcome.problems.push(format!(
            "a lane waited {gap} ms for its answer (2,000 at most)"
        ));
    }
    let (alone, acked) = (
        outcome.sim.figure("decided_alone"),
        outcome.sim.figure("offline_acked"),
    );
    if acked < alone {
        outcome.problems.push(format!(
            "{} of {alone} decisions made alone were never acknowledged",
            alone - acked
        ));
    }
}

/// The gateway stopped (kill -9) for a minute (15 s with --quick) while cars keep arriving and
/// leaving: the lanes decide alone from their standing lists, report, and the platform, back,
/// makes each decision one session event; a car let out without standing is invoiced to its plate.
async fn lane_offline(timing: Timing, postgres_url: &str) -> anyhow::Result<Outcome> {
    let mut rig = Rig::external(postgres_url, false, false).await?;
    let sim = rig.traffic(timing, Lanes::DecideAlone)?;
    tokio::time::sleep(timing.warm_up).await;
    rig.gateway.kill().await;
    tokio::time::sleep(timing.outage).await;
    rig.gateway.start()?;
    let recovery = rig.gateway.ready(Duration::from_secs(60)).await?;
    let mut outcome = rig.finish("lane-offline", sim, recovery).await?;
    lanes_answered(&mut outcome);
    if outcome.sim.figure("decided_alone") == 0 {
        outcome
            .problems
            .push("no lane decided alone: the outage was not felt".into());
    }
    if outcome.plate_invoices == Some(0) {
        outcome
            .problems
            .push("no car let out without standing was invoiced to its plate".into());
    }
    Ok(outcome)
}

/// kill -9 the gateway twice during traffic (external broker, PostgreSQL), restarting it at once.
async fn gateway_kill(timing: Timing, postgres_url: &str) -> anyhow::Result<Outcome> {
    let mut rig = Rig::external(postgres_url, false, false).await?;
    let sim = rig.traffic(timing, Lanes::Wait)?;
    let mut recovery = Duration::ZERO;
    for _ in 0..2 {
        tokio::time::sleep(timing.warm_up).await;
        rig.gateway.kill().await;
        rig.gateway.start()?;
        recovery = recovery.max(rig.gateway.ready(Duration::from_secs(60)).await?);
    }
    rig.finish("gateway-kill", sim, recovery).await
}

/// kill -9 Mosquitto (persistence on) during traffic, and start it again.
async fn broker_restart(timing: Timing, postgres_url: &str) -> anyhow::Result<Outcome> {
    let mut rig = Rig::external(postgres_url, false, false).await?;
    let sim = rig.traffic(timing, Lanes::Wait)?;
    tokio::time::sleep(timing.warm_up).await;
    rig.mosquitto.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.mosquitto.restart()?;
    let recovery = rig.gateway.ready(Duration::from_secs(60)).await?;
    rig.finish("broker-restart", sim, recovery).await
}

/// PostgreSQL stalled (the proxy holds its bytes), then its connections broken and refused (as
/// a crash and restart look from the gateway). While it stalls `/readyz` must answer 503 within
/// a second.
async fn db_stall(timing: Timing, postgres_url: &str) -> anyhow::Result<Outcome> {
    let rig = Rig::external(postgres_url, true, false).await?;
    let sim = rig.traffic(timing, Lanes::Wait)?;
    let proxy = rig.db_proxy.as_ref().context("the database proxy")?;
    let mut problems = Vec::new();
    tokio::time::sleep(timing.warm_up).await;
    proxy.set(Mode::Hold);
    let before = rig.gateway.rss().unwrap_or(0);
    let mut rss_peak = before;
    problems.extend(
        not_ready_while(
            &rig.gateway,
            timing.stall,
            "the database stalled",
            &mut rss_peak,
        )
        .await,
    );
    proxy.set(Mode::Pass);
    let mut recovery = rig.gateway.ready(Duration::from_secs(60)).await?;
    // The crash: every connection broken, new ones refused for a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Mode::Cut);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set(Mode::Pass);
    recovery = recovery.max(rig.gateway.ready(Duration::from_secs(60)).await?);
    let mut outcome = rig.finish("db-stall", sim, recovery).await?;
    outcome.problems.extend(problems);
    outcome.rss_mb = Some((before, rss_peak));
    Ok(outcome)
}

/// Watches `/readyz` for `window` while a part is down: every answer must come within a second,
/// and it must say 503 before the window ends (a database that stalls says so at once; a disk
/// that fills says so once a write fails). `None` when it did. Meanwhile samples the gateway's
/// resident memory into `rss_peak`.
async fn not_ready_while(
    gateway: &Gateway,
    window: Duration,
    what: &str,
    rss_peak: &mut u64,
) -> Option<String> {
    let client = reqwest::Client::new();
    let until = Instant::now() + window;
    let mut said_503 = false;
    while Instant::now() < until {
        // Writes queue while the part is down: the memory they take must stay bounded.
        *rss_peak = (*rss_peak).max(gateway.rss().unwrap_or(0));
        let started = Instant::now();
        let answer = client
            .get(format!("{}/readyz", gateway.api()))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let took = started.elapsed();
        match answer {
            Ok(_) if took > Duration::from_secs(1) => {
                return Some(format!("/readyz took {took:?} while {what}"));
            }
            Ok(response) => {
                said_503 |= response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
            }
            Err(error) => return Some(format!("/readyz did not answer while {what}: {error}")),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (!said_503).then(|| format!("/readyz never answered 503 while {what}"))
}

/// The gateway cut off from the broker: first every byte dropped, then connections refused.
async fn partition(timing: Timing, postgres_url: &str) -> anyhow::Result<Outcome> {
    let rig = Rig::external(postgres_url, false, true).await?;
    let sim = rig.traffic(timing, Lanes::DecideAlone)?;
    let proxy = rig.broker_proxy.as_ref().context("the broker proxy")?;
    tokio::time::sleep(timing.warm_up).await;
    proxy.set(Mode::Hold);
    tokio::time::sleep(timing.partition / 2).await;
    proxy.set(Mode::Refuse);
    tokio::time::sleep(timing.partition / 2).await;
    proxy.set(Mode::Pass);
    let recovery = rig.gateway.ready(Duration::from_secs(60)).await?;
    let mut outcome = rig.finish("partition", sim, recovery).await?;
    // The lanes decide alone while the gateway is cut off: no car waits for it.
    lanes_answered(&mut outcome);
    Ok(outcome)
}

/// Devices whose clocks are 2 hours ahead and 4 days behind: a lane left to the harness (the
/// demo leaves one camera of each lot unsimulated) sends such reads beside the simulated
/// traffic; each must be answered with a signed `hold`, reason `device_clock`.
async fn clock_skew(timing: Timing, postgres_url: &str) -> anyhow::Result<Outcome> {
    let rig = Rig::external(postgres_url, false, false).await?;
    let sim = rig.traffic(timing, Lanes::Wait)?;
    tokio::time::sleep(timing.warm_up).await;
    let mut problems = Vec::new();
    for (skew, name) in [
        (chrono::Duration::hours(2), "2 hours ahead"),
        (-chrono::Duration::days(4), "4 days behind"),
    ] {
        match skewed_read(&rig.devices, rig.mosquitto.addr, skew).await {
            Ok(command)
                if command.action == parkflow_protocol::GateAction::Hold
                    && command.reason == parkflow_protocol::GateReason::DeviceClock => {}
            Ok(command) => problems.push(format!(
                "a camera {name} was answered {:?} {:?}",
                command.action, command.reason
            )),
            Err(error) => problems.push(format!("a camera {name}: {error:#}")),
        }
    }
    let mut outcome = rig.finish("clock-skew", sim, Duration::ZERO).await?;
    outcome.problems.extend(problems);
    Ok(outcome)
}

/// Sends one read stamped `skew` away from now as an unsimulated camera, and returns its answer.
async fn skewed_read(
    devices: &Path,
    broker: std::net::SocketAddr,
    skew: chrono::Duration,
) -> anyhow::Result<parkflow_protocol::GateCommand> {
    use parkflow_protocol::sign::{open, seal};
    use parkflow_protocol::{DeviceAuth, Direction, EventId, GateCommand, GatePlateRead, Topic};
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let file = parkflow_sensors_sim::DevicesFile::read(devices)?;
    let camera = file
        .devices
        .iter()
        .find(|d| !d.simulated && d.gate.is_some())
        .context("the demo leaves no camera unsimulated")?;
    let gate = camera.gate.clone().context("a gate")?;
    let plate_topic = Topic::GatePlate {
        lot: camera.lot.clone(),
        gate: gate.clone(),
    };
    let command_topic = Topic::GateCommand {
        lot: camera.lot.clone(),
        gate,
    };
    let mut options = MqttOptions::new(camera.id.as_str(), broker.ip().to_string(), broker.port());
    options.set_credentials(&camera.mqtt_username, &camera.mqtt_password);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .subscribe(command_topic.to_string(), QoS::AtLeastOnce)
        .await?;
    let read = GatePlateRead {
        event_id: EventId::parse(&format!("chaos-{}", uuid::Uuid::new_v4().simple()))?,
        plate: "浙A9C0K7".into(),
        plate_color: None,
        confidence: 0.98,
        direction: Direction::Entry,
        observed_at: chrono::Utc::now() + skew,
    };
    let payload = seal(&plate_topic, &read, &camera.id, camera.secret.as_bytes());
    let mut sent = false;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::SubAck(_)) if !sent => {
                    client
                        .publish(
                            plate_topic.to_string(),
                            QoS::AtLeastOnce,
                            false,
                            payload.clone(),
                        )
                        .await?;
                    sent = true;
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    let secret = camera.secret.clone();
                    let command = open::<GateCommand, _>(
                        &publish.payload,
                        &publish.topic,
                        DeviceAuth::Signed,
                        |kid| (kid == &camera.id).then_some(secret),
                    )?
                    .body;
                    if command.event_id == read.event_id {
                        return anyhow::Ok(command);
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .context("no answer within 10 s")?
}

/// SQLite on a small filesystem of its own that fills up during traffic, then has space freed.
async fn disk_full(timing: Timing) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let mount = dir.path().join("disk");
    std::fs::create_dir_all(&mount)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"])
        .arg(&mount)
        .output();
    match mounted {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            return Ok(Outcome {
                fault: "disk-full",
                skipped: Some(format!(
                    "cannot mount a small filesystem here: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )),
                ..Outcome::default()
            });
        }
        Err(error) => {
            return Ok(Outcome {
                fault: "disk-full",
                skipped: Some(format!("cannot run mount: {error}")),
                ..Outcome::default()
            });
        }
    }
    let result = disk_full_on(timing, dir.path(), &mount).await;
    if std::env::var_os("PARKFLOW_CHAOS_KEEP").is_some() {
        println!("kept for inspection: {}", dir.keep().display());
        return result;
    }
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&mount)
        .status();
    result
}

async fn disk_full_on(timing: Timing, dir: &Path, mount: &Path) -> anyhow::Result<Outcome> {
    let rig = Embedded::start(dir, &mount.join("parkflow.db")).await?;
    let sim = rig.traffic(timing)?;
    tokio::time::sleep(timing.warm_up).await;
    let filler = mount.join("filler");
    fill(&filler).await?;
    let before = rig.gateway.rss().unwrap_or(0);
    let mut rss_peak = before;
    let full = not_ready_while(
        &rig.gateway,
        timing.stall,
        "the disk was full",
        &mut rss_peak,
    )
    .await;
    tokio::fs::remove_file(&filler).await?;
    let recovery = rig.gateway.ready(Duration::from_secs(60)).await?;
    let database = rig.database.clone();
    let mut outcome = rig.finish("disk-full", sim, recovery).await?;
    outcome.problems.extend(full);
    outcome.rss_mb = Some((before, rss_peak));
    // A full disk must never corrupt the database.
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&database).await?;
    let (integrity,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut connection)
        .await?;
    if integrity != "ok" {
        outcome
            .problems
            .push(format!("the database is corrupt: {integrity}"));
    }
    Ok(outcome)
}

/// The embedded defaults: a gateway with its own broker on a SQLite file.
struct Embedded {
    gateway: Gateway,
    devices: std::path::PathBuf,
    broker: std::net::SocketAddr,
    database: String,
}

impl Embedded {
    async fn start(dir: &Path, file: &Path) -> anyhow::Result<Self> {
        let database = format!("sqlite:{}", file.display());
        let devices = dir.join("devices.json");
        let broker = free_addr()?;
        let mut gateway = Gateway::new(dir, &database, Broker::Embedded(broker), &devices)?;
        gateway.start()?;
        gateway.ready(Duration::from_secs(120)).await?;
        Ok(Self {
            gateway,
            devices,
            broker,
            database,
        })
    }

    fn traffic(&self, timing: Timing) -> anyhow::Result<Sim> {
        Sim::start(
            &self.devices,
            self.broker,
            &self.gateway.api(),
            timing.traffic.as_secs(),
            Lanes::Wait,
        )
    }

    /// Waits for the simulator's verdict and the audit's (the gateway still running, so that
    /// billing drains), then stops the gateway.
    async fn finish(
        mut self,
        fault: &'static str,
        sim: Sim,
        recovery: Duration,
    ) -> anyhow::Result<Outcome> {
        let report = sim.report().await?;
        let problems = audit(&self.database, AUDIT_SETTLE).await?;
        self.gateway.kill().await;
        Ok(Outcome {
            fault,
            sim: report,
            audit_clean: problems.is_empty(),
            recovery,
            problems,
            ..Outcome::default()
        })
    }
}

/// Writes `path` until the filesystem is full.
async fn fill(path: &Path) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path).await?;
    let block = vec![0_u8; 1 << 20];
    loop {
        if let Err(error) = file.write_all(&block).await {
            if error.raw_os_error() == Some(28) {
                let _ = file.flush().await;
                return Ok(());
            }
            return Err(error.into());
        }
    }
}

/// kill -9 on the embedded defaults (SQLite, the embedded broker): what the documented window
/// (a read answered in the milliseconds before its commit) lost is reported, not failed.
async fn embedded_kill(timing: Timing) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let mut rig = Embedded::start(dir.path(), &dir.path().join("parkflow.db")).await?;
    let sim = rig.traffic(timing)?;
    tokio::time::sleep(timing.warm_up).await;
    rig.gateway.kill().await;
    rig.gateway.start()?;
    let recovery = rig.gateway.ready(Duration::from_secs(60)).await?;
    let mut outcome = rig.finish("embedded-kill", sim, recovery).await?;
    outcome.loss_allowed = true;
    Ok(outcome)
}

/// Two gateway nodes share the lots (`--node-id`); node `a` is killed -9 during traffic, its
/// lots move to `b`, and `a` comes back and takes a share again; then `b` is paused (SIGSTOP)
/// past its leases' life, `a` takes every lot, and `b` wakes up fenced and takes a share again.
/// `recovery_s`: from the kill until `b` holds every lot. The audit checks that no lot had two
/// owners at once. The lots' ANPR lanes post to `b` alone, so reads of `a`'s lots are passed on
/// to `a` (at least one must be).
async fn failover(timing: Timing, postgres_url: &str) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let devices = dir.path().join("devices.json");
    let mosquitto = Mosquitto::start(dir.path())?;
    mosquitto.listening().await?;
    let database = PgDatabase::create(postgres_url).await?;
    let db_url = database.url(database.addr)?;
    let broker = || Broker::External(format!("mqtt://{}", mosquitto.addr));
    let node = |name: &str, devices: &Path| -> anyhow::Result<Gateway> {
        let dir = dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(Gateway::new(&dir, &db_url, broker(), devices)?.node(name))
    };
    // `a` provisions the demo city; `b` finds it stored and keeps it.
    let mut a = node("a", &devices)?;
    a.start()?;
    a.ready(Duration::from_secs(120)).await?;
    let mut b = node("b", &dir.path().join("devices-b.json"))?;
    b.start()?;
    b.ready(Duration::from_secs(120)).await?;
    let lots = lots_in(&db_url).await?;
    let mut problems = Vec::new();
    if let Err(error) = until_owned(&db_url, Duration::from_secs(15), |o| {
        o.len() == 2 && o.values().sum::<i64>() == lots
    })
    .await
    {
        problems.push(format!("the two nodes did not share the lots: {error:#}"));
    }
    let sim = Sim::start(
        &devices,
        mosquitto.addr,
        &b.api(),
        timing.traffic.as_secs(),
        Lanes::WaitWithAnpr,
    )?;
    tokio::time::sleep(timing.warm_up).await;
    a.kill().await;
    let killed = Instant::now();
    let recovery = match until_owned(&db_url, Duration::from_secs(30), |o| {
        o.get("b") == Some(&lots)
    })
    .await
    {
        Ok(()) => killed.elapsed(),
        Err(error) => {
            problems.push(format!("b did not take a's lots over: {error:#}"));
            killed.elapsed()
        }
    };
    if recovery > Duration::from_secs(5) {
        problems.push(format!(
            "a dead node's lots moved after {:.1} s (at most 5 s)",
            recovery.as_secs_f64()
        ));
    }
    tokio::time::sleep(timing.warm_up).await;
    a.start()?;
    a.ready(Duration::from_secs(60)).await?;
    // `node` holds some lots, and every lot is held.
    let shares = |node: &'static str| {
        move |o: &std::collections::BTreeMap<String, i64>| {
            o.get(node).is_some_and(|&n| n > 0) && o.values().sum::<i64>() == lots
        }
    };
    if let Err(error) = until_owned(&db_url, Duration::from_secs(15), shares("a")).await {
        problems.push(format!("a, back, took no share again: {error:#}"));
    }
    // b stops (SIGSTOP) for longer than a lease lives: a takes every lot; b, woken, finds its
    // leases gone, and whatever it still had to write for them is fenced and handed on.
    b.pause().await?;
    let paused = until_owned(&db_url, Duration::from_secs(15), |o| {
        o.get("a") == Some(&lots)
    })
    .await;
    b.resume().await?;
    if let Err(error) = paused {
        problems.push(format!("a did not take a paused b's lots over: {error:#}"));
    }
    if let Err(error) = until_owned(&db_url, Duration::from_secs(15), shares("b")).await {
        problems.push(format!("b, woken, took no share again: {error:#}"));
    }
    let report = sim.report().await?;
    // The simulator's ANPR cameras send to b alone: reads of a's lots were passed on to a.
    match b.metric("parkflow_anpr_forwarded_total").await {
        Ok(n) if n > 0.0 => {}
        Ok(_) => problems.push("no ANPR read sent to b was passed on to a (none forwarded)".into()),
        Err(error) => problems.push(format!("b's metrics not read: {error:#}")),
    }
    let audit_problems = audit(&db_url, AUDIT_SETTLE).await?;
    let audit_clean = audit_problems.is_empty();
    problems.extend(audit_problems);
    a.kill().await;
    b.kill().await;
    let mut mosquitto = mosquitto;
    mosquitto.kill().await;
    if std::env::var_os("PARKFLOW_CHAOS_KEEP").is_some() {
        println!("kept for inspection: {db_url} and {}", dir.keep().display());
    } else {
        database.drop_database().await?;
    }
    Ok(Outcome {
        fault: "failover",
        sim: report,
        audit_clean,
        recovery,
        problems,
        ..Outcome::default()
    })
}

/// How many lots the city has.
async fn lots_in(database_url: &str) -> anyhow::Result<i64> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(database_url).await?;
    let (lots,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM lots")
        .fetch_one(&mut connection)
        .await?;
    Ok(lots)
}

/// Waits until the live leases satisfy `done`.
async fn until_owned(
    database_url: &str,
    within: Duration,
    done: impl Fn(&std::collections::BTreeMap<String, i64>) -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let owners = owners(database_url).await?;
        if done(&owners) {
            return Ok(());
        }
        if started.elapsed() > within {
            anyhow::bail!("after {within:?} the leases are {owners:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
