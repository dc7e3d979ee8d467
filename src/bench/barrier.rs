//! `parkflow bench barrier`: a camera's plate read → barrier command round trip through the whole
//! platform (embedded broker, ingest, decision, signing, group commit on SQLite), beside the same
//! camera answered by a dumb echo client on the same embedded broker — both with a zone's sensors
//! publishing in the background (10,000 messages a second by default), which the platform
//! ingests and the echo client's connection receives and drops.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use parkflow_broker::{Anyone, BrokerConfig, EmbeddedBroker, TlsListener};
use parkflow_gateway::registry::{DeviceKind as RegistryDeviceKind, GateDirection, LotKind};
use parkflow_gateway::store::provision::{DevicePlan, DriverPlan, LotPlan, OperatorPlan, Plan};
use parkflow_protocol::sign::{open, seal};
use parkflow_protocol::{
    DeviceAuth, DeviceId, Direction, GateAction, GateCommand, GateId, GatePlateRead, GateReason,
    LotId, PlateColor, Topic,
};
use parkflow_sensors_sim::camera::{self, CameraConfig, CameraHandle, Sighting};
use parkflow_sensors_sim::city::random_plate;
use parkflow_sensors_sim::{DeviceEntry, DeviceKind, Stats};
use rand::SeedableRng;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::background::SensorZone;
use super::{Latency, ratio};
use crate::demo::demo_tariff;
use crate::platform::{mqtt_password, random_secret};
use crate::{MqttSetup, Platform, PlatformConfig};
use parkflow_gateway::BrokerAcl;

/// Plates driving in and out during the run.
const PLATES: usize = 200;

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

struct Fixture {
    lot: LotId,
    gate: GateId,
    camera: DeviceEntry,
    plates: Vec<String>,
    zone: Arc<SensorZone>,
    zone_plan: (LotPlan, Vec<DevicePlan>),
}

/// Bays of the background zone.
const BACKGROUND_BAYS: u32 = 2_000;

impl Fixture {
    fn new() -> anyhow::Result<Self> {
        let lot = LotId::parse("bench-lot")?;
        let gate = GateId::parse("lane-1")?;
        let id = DeviceId::parse("cam-bench")?;
        let secret = random_secret();
        let camera = DeviceEntry {
            id: id.clone(),
            kind: DeviceKind::GateCamera,
            lot: lot.clone(),
            gate: Some(gate.clone()),
            bay: None,
            mqtt_username: id.to_string(),
            mqtt_password: mqtt_password(&secret),
            secret,
            simulated: true,
            vendor: None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut plates: Vec<String> = (0..PLATES)
            .map(|_| random_plate(&mut rng, false).as_str().to_owned())
            .collect();
        plates.sort();
        plates.dedup();
        let (zone, zone_lot, zone_devices) =
            SensorZone::new("bench-zone", "bench", BACKGROUND_BAYS)?;
        Ok(Self {
            lot,
            gate,
            camera,
            plates,
            zone: Arc::new(zone),
            zone_plan: (zone_lot, zone_devices),
        })
    }

    fn plan(&self) -> Plan {
        let mut plan = self.gated_plan();
        plan.lots.push(self.zone_plan.0.clone());
        plan.devices.extend(self.zone_plan.1.iter().cloned());
        plan
    }

    fn gated_plan(&self) -> Plan {
        Plan {
            operators: vec![OperatorPlan {
                id: "bench".into(),
                name: "Bench".into(),
            }],
            lots: vec![LotPlan {
                id: self.lot.clone(),
                operator_id: "bench".into(),
                name: "Bench lot".into(),
                kind: LotKind::OffStreet,
                lat: 30.0,
                lon: 120.0,
                capacity: 10_000,
                time_zone: "Asia/Shanghai".into(),
                device_auth: DeviceAuth::Signed,
                gates: vec![(self.gate.clone(), GateDirection::Both)],
                bays: Vec::new(),
                max_stay_minutes: None,
                offline_policy: Default::default(),
                tariffs: vec![demo_tariff(0)],
            }],
            devices: vec![DevicePlan {
                id: self.camera.id.clone(),
                kind: RegistryDeviceKind::GateCamera,
                lot: Some(self.lot.clone()),
                gate: Some(self.gate.clone()),
                bay: None,
                mqtt_username: self.camera.mqtt_username.clone(),
                secret: self.camera.secret.clone().into(),
            }],
            drivers: self
                .plates
                .iter()
                .map(|plate| DriverPlan {
                    id: Uuid::new_v4(),
                    name: "Bench driver".into(),
                    suspended: false,
                    payment_account: Some("acct-bench".into()),
                    plates: parkflow_protocol::Plate::parse(plate)
                        .ok()
                        .into_iter()
                        .map(|p| (p, Some(PlateColor::Blue)))
                        .collect(),
                })
                .collect(),
            ..Plan::default()
        }
    }
}

/// Sends `reads` reads one after another (each plate in, then out) and times each round trip.
async fn drive(
    camera: &CameraHandle,
    plates: &[String],
    reads: usize,
    warmup: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(reads);
    for i in 0..warmup + reads {
        let plate = &plates[i % plates.len()];
        let direction = if (i / plates.len()).is_multiple_of(2) {
            Direction::Entry
        } else {
            Direction::Exit
        };
        let sighting = Sighting {
            plate: plate.clone(),
            plate_color: Some(PlateColor::Blue),
            confidence: 0.97,
            direction,
            observed_at: Utc::now(),
        };
        let started = Instant::now();
        let command = camera
            .read(sighting)
            .await
            .context("a read went unanswered")?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            command.action == GateAction::Open,
            "unexpected {:?} ({:?})",
            command.action,
            command.reason
        );
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// Answers every plate read at once with a signed `open`: the floor of what any platform can do.
async fn echo(
    host: String,
    port: u16,
    login: (String, String),
    tls: Option<Arc<rustls::ClientConfig>>,
    fixture: Arc<Fixture>,
    token: CancellationToken,
) {
    let mut options = MqttOptions::new("echo", host, port);
    options.set_credentials(login.0, login.1);
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1_000);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let plate_topic = Topic::GatePlate {
        lot: fixture.lot.clone(),
        gate: fixture.gate.clone(),
    };
    let command_topic = Topic::GateCommand {
        lot: fixture.lot.clone(),
        gate: fixture.gate.clone(),
    };
    let plate_topic_text = plate_topic.to_string();
    loop {
        let event = tokio::select! {
            () = token.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(plate_topic.to_string(), QoS::AtLeastOnce);
                // The sensors' traffic reaches the echo's connection as it reaches the gateway's.
                let _ = client.try_subscribe(
                    parkflow_protocol::topic::filter::all_bays(),
                    QoS::AtLeastOnce,
                );
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == plate_topic_text => {
                let secret = fixture.camera.secret.clone();
                let Ok(read) = open::<GatePlateRead, _>(
                    &publish.payload,
                    &publish.topic,
                    DeviceAuth::Signed,
                    |_| Some(secret),
                ) else {
                    continue;
                };
                let command = GateCommand::new(
                    Uuid::now_v7(),
                    read.body.event_id,
                    GateAction::Open,
                    GateReason::Entered,
                    Utc::now(),
                );
                let payload = seal(
                    &command_topic,
                    &command,
                    &fixture.camera.id,
                    fixture.camera.secret.as_bytes(),
                );
                let _ =
                    client.try_publish(command_topic.to_string(), QoS::AtLeastOnce, false, payload);
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Starts the background sensors against the broker at `addr`.
fn background(
    fixture: &Fixture,
    addr: SocketAddr,
    login: (String, (String, String)),
    rate: u32,
    token: &CancellationToken,
) -> (tokio::task::JoinHandle<anyhow::Result<()>>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(fixture.zone.clone().run(
        addr.ip().to_string(),
        addr.port(),
        login,
        rate,
        sent.clone(),
        token.clone(),
    ));
    (task, sent)
}

/// An external broker both sides run through, and the permissions the platform keeps in it.
pub struct External {
    /// `mqtt://[USER:PASSWORD@]host:port`; the echo logs in as the same user.
    pub url: url::Url,
    pub acl: Option<BrokerAcl>,
}

impl External {
    fn login(&self) -> Option<(String, String)> {
        (!self.url.username().is_empty()).then(|| {
            (
                self.url.username().to_owned(),
                self.url.password().unwrap_or_default().to_owned(),
            )
        })
    }

    async fn addr(&self) -> anyhow::Result<SocketAddr> {
        let host = self.url.host_str().context("--mqtt-url needs a host")?;
        tokio::net::lookup_host((host, self.url.port().unwrap_or(1883)))
            .await?
            .next()
            .context("--mqtt-url's host has no address")
    }
}

/// The platform's client id on an external broker: the same every run, so the permission lists
/// it keeps there are replaced, not piled up.
const BENCH_CLIENT_ID: &str = "parkflow-bench-barrier";

/// Ends the platform's persistent sessions on an external broker, so the echo run's traffic
/// does not queue for the next run.
async fn forget_sessions(addr: SocketAddr, login: Option<&(String, String)>) {
    for id in [
        BENCH_CLIENT_ID.to_owned(),
        format!("{BENCH_CLIENT_ID}-bays"),
    ] {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_clean_session(true);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut events) = AsyncClient::new(options, 10);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.disconnect().await;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
    }
}

/// A certificate for 127.0.0.1 written into `dir` (its PEM files) and a client configuration
/// trusting it: the embedded broker's TLS listener, as a city's devices beyond the machine use it.
fn test_tls(
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, PathBuf, Arc<rustls::ClientConfig>)> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.key_pair.serialize_pem())?;
    let client = parkflow_gateway::MqttTls {
        ca: Some(cert.clone()),
    }
    .client_config()?;
    Ok((cert, key, Arc::new(client)))
}

/// Where the camera (and the echo) connect: the broker's TLS listener with `tls`, else `plain`.
fn device_side(
    plain: SocketAddr,
    tls: Option<&(SocketAddr, Arc<rustls::ClientConfig>)>,
) -> (SocketAddr, Option<Arc<rustls::ClientConfig>>) {
    tls.map_or((plain, None), |(listen, config)| {
        (*listen, Some(config.clone()))
    })
}

/// Runs the scenario and prints its figures: on the embedded broker, or with `external` both
/// sides through that broker. With `tls` (embedded only), the camera and the echo connect to the
/// embedded broker's TLS listener, as devices beyond the machine do.
pub async fn run(
    reads: usize,
    background_rate: u32,
    external: Option<External>,
    tls: bool,
) -> anyhow::Result<()> {
    let warmup = (reads / 10).max(20);
    let fixture = Arc::new(Fixture::new()?);
    let stats = Arc::new(Stats::default());
    let broker = match &external {
        None => "embedded",
        Some(External { acl: Some(_), .. }) => "mosquitto-dynsec",
        Some(_) => "external",
    };
    anyhow::ensure!(
        !(tls && external.is_some()),
        "--tls is the embedded broker's TLS listener; an external broker's TLS is its own"
    );
    println!(
        "scenario=barrier reads={reads} warmup={warmup} database=sqlite broker={broker} tls={tls} background_msgs_per_s={background_rate}"
    );

    // ParkFlow.
    let dir = std::env::temp_dir().join(format!("parkflow-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let certificate = tls.then(|| test_tls(&dir)).transpose()?;
    let tls_listener = |listen: SocketAddr| {
        certificate.as_ref().map(|(cert, key, _)| TlsListener {
            listen,
            cert: cert.clone(),
            key: key.clone(),
        })
    };
    let parkflow_tls = match &certificate {
        Some((_, _, client)) => Some((free_addr()?, client.clone())),
        None => None,
    };
    let (setup, mqtt_listen) = match &external {
        None => {
            let listen = free_addr()?;
            (MqttSetup::Embedded { listen }, listen)
        }
        Some(external) => {
            let addr = external.addr().await?;
            let setup = MqttSetup::External {
                host: addr.ip().to_string(),
                port: addr.port(),
                credentials: external
                    .login()
                    .map(|(user, password)| (user, password.into())),
                tls: None,
            };
            (setup, addr)
        }
    };
    let mut config = PlatformConfig::new(
        "127.0.0.1:0".parse()?,
        format!("sqlite:{}", dir.join("bench.db").display()),
        setup,
    );
    if let Some(external) = &external {
        config.mqtt_client_id = BENCH_CLIENT_ID.into();
        config.broker_acl = external.acl;
    }
    config.mqtt_tls = parkflow_tls
        .as_ref()
        .and_then(|(listen, _)| tls_listener(*listen));
    // The background speaks for every sensor over one connection: on the embedded broker only
    // the platform's login may.
    let load_login = match &external {
        None => {
            let password = crate::platform::random_secret();
            config.mqtt_platform_password = Some(password.clone().into());
            (
                "bench-background".to_owned(),
                (crate::platform::PLATFORM_USER.to_owned(), password),
            )
        }
        Some(_) => fixture.zone.sensor_login(),
    };
    let platform = Platform::build(config).await?;
    let provisioning = Instant::now();
    platform.provision(&fixture.plan()).await?;
    if external.as_ref().is_some_and(|e| e.acl.is_some()) {
        let devices = fixture.zone_plan.1.len() + 1;
        let secs = provisioning.elapsed().as_secs_f64();
        println!(
            "broker_acl_devices={devices} broker_acl_provision_secs={secs:.2} broker_acl_devices_per_s={:.0}",
            devices as f64 / secs
        );
    }
    let token = CancellationToken::new();
    let running = tokio::spawn(platform.run(token.clone()));
    let camera_token = token.child_token();
    let (load, sent) = background(
        &fixture,
        mqtt_listen,
        load_login,
        background_rate,
        &camera_token,
    );
    let (camera_at, camera_tls) = device_side(mqtt_listen, parkflow_tls.as_ref());
    let config = CameraConfig {
        tls: camera_tls,
        ..CameraConfig::new(
            camera_at.ip().to_string(),
            camera_at.port(),
            DeviceAuth::Signed,
        )
    };
    let started = Instant::now();
    let cameras = TaskTracker::new();
    let camera = camera::spawn(
        fixture.camera.clone(),
        config.clone(),
        stats.clone(),
        &cameras,
        camera_token.clone(),
    );
    let mut parkflow = drive(&camera, &fixture.plates, reads, warmup).await?;
    let rate = sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    camera_token.cancel();
    cameras.close();
    cameras.wait().await;
    load.await??;
    println!("parkflow_background_msgs_per_s={rate:.0}");
    token.cancel();
    running.await??;
    let parkflow = Latency::of(&mut parkflow);
    println!("{}", parkflow.line("parkflow"));

    // The echo baseline on the same broker.
    let login = external.as_ref().and_then(External::login);
    let echo_tls = match &certificate {
        Some((_, _, client)) => Some((free_addr()?, client.clone())),
        None => None,
    };
    let (echo_listen, broker) = match &external {
        None => {
            let listen = free_addr()?;
            let mut broker_config = BrokerConfig::new(listen, Arc::new(Anyone));
            broker_config.tls = echo_tls
                .as_ref()
                .and_then(|(listen, _)| tls_listener(*listen));
            let broker =
                tokio::task::spawn_blocking(move || EmbeddedBroker::start(broker_config)).await??;
            (listen, Some(broker))
        }
        Some(_) => {
            forget_sessions(mqtt_listen, login.as_ref()).await;
            (mqtt_listen, None)
        }
    };
    let echo_token = CancellationToken::new();
    let (device_at, device_tls) = device_side(echo_listen, echo_tls.as_ref());
    let responder = tokio::spawn(echo(
        device_at.ip().to_string(),
        device_at.port(),
        login.unwrap_or_else(|| ("echo".into(), "echo".into())),
        device_tls.clone(),
        fixture.clone(),
        echo_token.clone(),
    ));
    let (load, sent) = background(
        &fixture,
        echo_listen,
        fixture.zone.sensor_login(),
        background_rate,
        &echo_token,
    );
    let config = CameraConfig {
        tls: device_tls,
        ..CameraConfig::new(
            device_at.ip().to_string(),
            device_at.port(),
            DeviceAuth::Signed,
        )
    };
    let started = Instant::now();
    let camera = camera::spawn(
        fixture.camera.clone(),
        config,
        stats.clone(),
        &cameras,
        echo_token.clone(),
    );
    let mut baseline = drive(&camera, &fixture.plates, reads, warmup).await?;
    let rate = sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("echo_background_msgs_per_s={rate:.0}");
    echo_token.cancel();
    load.await??;
    cameras.close();
    cameras.wait().await;
    let _ = responder.await;
    if let Some(broker) = broker {
        broker.stop();
    }
    // The database, and the certificate both brokers used.
    let _ = std::fs::remove_dir_all(&dir);
    let baseline = Latency::of(&mut baseline);
    println!("{}", baseline.line("echo"));
    println!("camera {}", stats.summary());

    println!(
        "{}",
        ratio(
            "barrier_p99_vs_echo",
            parkflow.p99 / baseline.p99,
            1.5,
            true
        )
    );
    println!("{}", ratio("barrier_p99_ms", parkflow.p99, 10.0, true));
    Ok(())
}
