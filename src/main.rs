//! `parkflow`: the whole platform in one binary.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use parkflow::Platform;
use parkflow::config::{Cli, Command, RunArgs, Scenario};
use parkflow::demo::Demo;
use parkflow::logging::{QuietDisconnects, no_broker_spans};
use parkflow_sensors_sim::clock::SimClock;
use parkflow_sensors_sim::traffic::{Shared, TrafficConfig};
use parkflow_sensors_sim::{CityConfig, Stats};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// jemalloc hands memory back to the system once a burst is over; glibc's malloc kept about
/// 120 MB more of the same heap after `bench burst` (BENCHMARKS, "Memory after the burst").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for a bad command line or configuration (BSD's EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("error: invalid --log filter: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(no_broker_spans())
        .with(tracing_subscriber::fmt::layer().with_filter(QuietDisconnects))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => {
            if let Err(message) = args.validate() {
                eprintln!("error: {message}");
                return ExitCode::from(EXIT_CONFIG);
            }
            runtime.block_on(run(*args))
        }
        Command::Chaos {
            scenario,
            quick,
            postgres_url,
        } => {
            match runtime.block_on(parkflow::chaos::run(
                &scenario,
                quick,
                postgres_url.expose_secret(),
            )) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE,
                Err(error) => Err(error),
            }
        }
        Command::RegistrationDocument {
            plate,
            vehicle_register_secret,
        } => {
            let Ok(plate) = parkflow_protocol::Plate::parse(&plate) else {
                eprintln!("error: not a plate: {plate}");
                return ExitCode::from(EXIT_CONFIG);
            };
            let register =
                parkflow_billing::claims::SimulatedRegister::new(vehicle_register_secret);
            println!("{}", register.document(&plate));
            return ExitCode::SUCCESS;
        }
        Command::Audit { database_url } => {
            return runtime.block_on(audit(database_url.expose_secret()));
        }
        Command::Sim(args) => {
            match runtime.block_on(parkflow::sim::run(*args, shutdown_signal())) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE,
                Err(error) => Err(error),
            }
        }
        Command::Bench(args) => match args.scenario {
            Scenario::Barrier {
                reads,
                background_rate,
                mqtt_url,
                broker_acl,
                tls,
            } => {
                let external = mqtt_url.map(|url| parkflow::bench::barrier::External {
                    url: url::Url::parse(url.expose_secret())
                        .unwrap_or_else(|_| unreachable!("checked by clap")),
                    acl: broker_acl.map(|acl| acl.into()),
                });
                runtime.block_on(parkflow::bench::barrier::run(
                    reads,
                    background_rate,
                    external,
                    tls,
                ))
            }
            Scenario::Persist {
                sessions,
                database_url,
            } => runtime.block_on(parkflow::bench::persist::run(
                sessions,
                exposed(database_url),
            )),
            Scenario::All { quick } => runtime.block_on(parkflow::bench::all(quick)),
            Scenario::Anpr { reads } => runtime.block_on(parkflow::bench::anpr::run(reads)),
            Scenario::Nodes {
                seconds,
                postgres_url,
            } => runtime.block_on(parkflow::bench::nodes::run(seconds, &postgres_url)),
            Scenario::Standing { plates } => parkflow::bench::standing::run(&plates),
            Scenario::Ingest { events, mosquitto } => {
                runtime.block_on(parkflow::bench::city::ingest(events, mosquitto))
            }
            Scenario::Broker { messages } => {
                runtime.block_on(parkflow::bench::broker::run(messages))
            }
            Scenario::Api { lots, seconds } => {
                runtime.block_on(parkflow::bench::api::run(lots, seconds))
            }
            Scenario::Burst { bays, mosquitto } => {
                runtime.block_on(parkflow::bench::city::run(bays, true, mosquitto))
            }
            Scenario::Memory { bays } => {
                runtime.block_on(parkflow::bench::city::run(bays, false, false))
            }
            Scenario::Settle {
                sessions,
                database_url,
            } => runtime.block_on(parkflow::bench::settle::run(
                sessions,
                exposed(database_url),
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A URL given on the command line, for the benches that connect with it.
fn exposed(url: Option<SecretString>) -> Option<String> {
    url.map(|url| url.expose_secret().to_owned())
}

/// `parkflow audit`: prints what it checked and every violation; exit 1 when there is one.
async fn audit(database_url: &str) -> ExitCode {
    let db = match parkflow_gateway::store::Db::connect(database_url).await {
        Ok(db) => db,
        Err(error) => {
            eprintln!("error: {:#}", anyhow::Error::from(error));
            return ExitCode::FAILURE;
        }
    };
    match parkflow_billing::audit::audit(&db).await {
        Ok(report) => {
            println!(
                "closed_sessions={} charges={} ledger_entries={} violations={}",
                report.closed_sessions,
                report.charges,
                report.ledger_entries,
                report.violations.len()
            );
            for violation in &report.violations {
                println!("violation {violation}");
            }
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: audit failed: {:#}", anyhow::Error::from(error));
            ExitCode::FAILURE
        }
    }
}

/// Whether `addr` can be bound now.
fn is_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// A free port on `addr`'s interface.
fn free_port_like(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let probe =
        TcpListener::bind(SocketAddr::new(addr.ip(), 0)).context("failed to find a free port")?;
    Ok(probe.local_addr()?)
}

async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    if args.demo {
        // A newcomer's machine may already run a broker or a web server: the demo moves aside.
        if args.mqtt_url.is_none() && !is_free(args.mqtt_listen) {
            let moved = free_port_like(args.mqtt_listen)?;
            println!(
                "MQTT port {} is taken (another broker?); the demo's broker uses {moved}",
                args.mqtt_listen
            );
            args.mqtt_listen = moved;
        }
        if !is_free(args.http_listen) {
            let moved = free_port_like(args.http_listen)?;
            println!(
                "HTTP port {} is taken; the demo's API uses {moved}",
                args.http_listen
            );
            args.http_listen = moved;
        }
        if args.admin_key.is_none() {
            args.admin_key = Some(parkflow::platform::random_secret().into());
        }
    }
    let platform = Platform::build(args.platform_config()).await?;
    let http = platform.http_addr();
    let (mqtt_host, mqtt_port) = platform.mqtt_addr();

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let demo = if args.demo {
        let city = CityConfig::preset(&args.demo_city).unwrap_or_else(CityConfig::demo);
        let mut demo = Demo::new(&city);
        // Run again on the same database, the demo keeps its city and its devices' credentials.
        let stored = parkflow_gateway::store::provision::stored_secrets(&platform.db())
            .await
            .context("failed to read the stored devices")?;
        let kept = demo.keep_stored_credentials(&stored)?;
        if kept > 0 {
            println!("demo city found in the database: {kept} devices keep their credentials");
        }
        platform.provision(&demo.plan).await?;
        if let Some(path) = &args.demo_devices {
            demo.devices
                .write(path)
                .with_context(|| format!("failed to write {}", path.display()))?;
        }
        // Provisioned and written: the traffic needs only the city, the gate cameras and the
        // zones' keys (a city's bay devices would otherwise be held twice).
        demo.plan = Default::default();
        demo.devices
            .devices
            .retain(|d| d.kind == parkflow_sensors_sim::DeviceKind::GateCamera);
        Some(demo)
    } else {
        None
    };

    println!("ParkFlow is running");
    println!(
        "  HTTP API      http://{http}/v1/  (health /healthz, readiness /readyz, metrics /metrics with the admin key)"
    );
    if let Some(metrics) = platform.metrics_addr() {
        println!("  metrics       http://{metrics}/metrics  (no key: keep this address private)");
    }
    println!(
        "  MQTT broker   mqtt://{mqtt_host}:{mqtt_port}  ({})",
        if args.mqtt_url.is_some() {
            "external"
        } else {
            "embedded"
        }
    );
    if let (Some(_), None) = (&args.mqtt_tls_cert, &args.mqtt_url) {
        println!("  MQTT over TLS mqtts://{}", args.mqtt_tls_listen);
    }
    println!(
        "  database      {}",
        redact(args.database_url.expose_secret())
    );
    if let Some(demo) = &demo {
        if let Some(key) = &args.admin_key {
            // Generated for the demo unless given: the newcomer needs it to try the API.
            let key = key.expose_secret();
            println!("  admin key     {key}  (Authorization: Bearer …)");
        }
        if let Some(first) = demo.city.lots.first() {
            println!("  a lot         http://{http}/v1/lots/{}/tariff", first.id);
        }
        println!(
            "  sessions      curl -H 'Authorization: Bearer <admin key>' http://{http}/v1/sessions"
        );
        match &args.demo_devices {
            Some(path) => println!(
                "  devices       {} (lanes marked \"simulated\": false are free for your own device)",
                path.display()
            ),
            None => println!(
                "  devices       pass --demo-devices FILE to write the demo's device credentials"
            ),
        }
        if let Some(zone) = demo.city.zones.first() {
            println!(
                "  availability  http://{http}/v1/lots/{}/availability",
                zone.id
            );
        }
        println!("  near me       http://{http}/v1/lots?near=30.25,120.15&radius_m=20000");
        println!("  live stream   http://{http}/v1/availability/stream");
        println!("  city view     http://{http}/ui/");
        println!("  console       http://{http}/ui/login  (log in with the admin key)");
        println!("  drivers       http://{http}/ui/driver/enrol");
        println!("  feeds         http://{http}/v1/feeds/fiware  http://{http}/v1/feeds/datex2");
        println!(
            "  demo traffic  {} gated lots, {} street zones ({} bays with sensors), {} drivers",
            demo.city.lots.len(),
            demo.city.zones.len(),
            demo.city
                .zones
                .iter()
                .map(|z| u64::from(z.bays))
                .sum::<u64>(),
            demo.city.drivers.len()
        );
    }
    println!("Press Ctrl-C to stop.");

    let mut platform_task = tokio::spawn(platform.run(token.clone()));
    if let Some(demo) = demo.filter(|_| !args.demo_idle) {
        let stats = Arc::new(Stats::default());
        let street_stats = demo.street_stats.clone();
        let (host, port) = (mqtt_host.clone(), mqtt_port);
        let drive_token = token.clone();
        let drive_stats = stats.clone();
        let ready_url = format!("http://{http}/readyz");
        tracker.spawn(async move {
            // Sensors do not resend: traffic starts once the platform has subscribed.
            while !reqwest::get(&ready_url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                tokio::select! {
                    () = drive_token.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            let shared = Shared {
                clock: SimClock::real(),
                stats: drive_stats,
                journal: Arc::default(),
                http: reqwest::Client::new(),
            };
            let traffic = TrafficConfig::demo();
            demo.drive(
                &host,
                port,
                &traffic,
                shared,
                drive_token.clone(),
                drive_token,
            )
            .await
        });
        let report_token = token.clone();
        tracker.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            every.tick().await;
            loop {
                tokio::select! {
                    () = report_token.cancelled() => break,
                    _ = every.tick() => tracing::info!(
                        gated = %stats.summary(),
                        street = %street_stats.summary(),
                        "demo traffic"
                    ),
                }
            }
        });
    }

    let stopped_on_its_own = tokio::select! {
        () = shutdown_signal() => None,
        result = &mut platform_task => Some(result),
    };
    println!("Stopping…");
    token.cancel();
    tracker.close();
    tracker.wait().await;
    match stopped_on_its_own {
        // A platform that stops by itself has failed, even if it says nothing more.
        Some(result) => Err(result?
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("the platform stopped on its own"))),
        None => platform_task.await?,
    }
}

/// The database URL without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "failed to listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
