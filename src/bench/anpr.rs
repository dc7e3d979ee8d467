//! `parkflow bench anpr`: an off-the-shelf camera's plate event over HTTP (Plate Recognizer's
//! webhook) → the barrier call the platform makes back to the camera, through the whole platform
//! (intake, decision, group commit on SQLite, the read on record before the camera's `200`, the
//! barrier relay), beside the floor of any HTTP adapter: a trivial handler that makes the same call
//! to the same fake camera at once. The MQTT path's figures are `bench barrier`'s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use base64::Engine as _;
use chrono::Utc;
use parkflow_gateway::registry::{GateDirection, LotKind};
use parkflow_gateway::store::provision::{DriverPlan, LotPlan, OperatorPlan, Plan};
use parkflow_protocol::{DeviceAuth, GateId, LotId, PlateColor};
use rand::SeedableRng;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Latency, ratio};
use crate::demo::demo_tariff;
use crate::{MqttSetup, Platform, PlatformConfig};

const ADMIN_KEY: &str = "bench-admin-key-of-at-least-32-characters";

/// A camera's HTTP side: every call it gets, with the event it answers and when it arrived.
async fn fake_camera() -> anyhow::Result<(SocketAddr, mpsc::UnboundedReceiver<(String, Instant)>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let tx = tx.clone();
        async move {
            let at = Instant::now();
            if let Ok(call) = serde_json::from_slice::<Value>(&body)
                && let Some(event) = call["event_id"].as_str()
            {
                let _ = tx.send((event.to_owned(), at));
            }
            "OK"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, rx))
}

/// Plate Recognizer's webhook for one sighting.
fn webhook(plate: &str, shot: usize) -> String {
    json!({
        "hook": {"target": "bench", "id": "cam-bench-anpr", "event": "recognition"},
        "data": {
            "camera_id": "cam-bench-anpr",
            "filename": format!("cam-bench-anpr_screenshots/{shot}.jpg"),
            "timestamp": Utc::now().to_rfc3339(),
            "results": [{"plate": plate, "score": 0.97, "candidates": [{"plate": plate, "score": 0.97}]}],
        }
    })
    .to_string()
}

fn plan(lot: &LotId, plates: &[String]) -> Plan {
    Plan {
        operators: vec![OperatorPlan {
            id: "bench".into(),
            name: "Bench".into(),
        }],
        lots: vec![LotPlan {
            id: lot.clone(),
            operator_id: "bench".into(),
            name: "Bench lot".into(),
            kind: LotKind::OffStreet,
            lat: 30.0,
            lon: 120.0,
            capacity: 10_000,
            time_zone: "Asia/Shanghai".into(),
            device_auth: DeviceAuth::Signed,
            gates: vec![
                (
                    GateId::parse("anpr-in").expect("a gate id"),
                    GateDirection::Entry,
                ),
                (
                    GateId::parse("anpr-out").expect("a gate id"),
                    GateDirection::Exit,
                ),
            ],
            bays: Vec::new(),
            max_stay_minutes: None,
            offline_policy: Default::default(),
            tariffs: vec![demo_tariff(0)],
        }],
        drivers: plates
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

pub async fn run(reads: usize) -> anyhow::Result<()> {
    let warmup = (reads / 10).max(20);
    println!("scenario=anpr reads={reads} warmup={warmup} database=sqlite vendor=platerecognizer");
    let (camera, mut calls) = fake_camera().await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut plates: Vec<String> = (0..200)
        .map(|_| {
            parkflow_sensors_sim::city::random_plate(&mut rng, false)
                .as_str()
                .to_owned()
        })
        .collect();
    plates.sort();
    plates.dedup();

    // ParkFlow, with one lane whose camera speaks HTTP.
    let dir = std::env::temp_dir().join(format!("parkflow-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut config = PlatformConfig::new(
        "127.0.0.1:0".parse()?,
        format!("sqlite:{}", dir.join("bench.db").display()),
        MqttSetup::Embedded { listen },
    );
    config.admin_key = Some(ADMIN_KEY.into());
    // The bench's fake camera listens on this machine.
    config.barrier_calls_to_loopback = true;
    config.driver_rate_per_second = 1_000_000;
    let platform = Platform::build(config).await?;
    let lot = LotId::parse("bench-lot")?;
    platform.provision(&plan(&lot, &plates)).await?;
    let http = platform.http_addr();
    let token = CancellationToken::new();
    let running = tokio::spawn(platform.run(token.clone()));
    let client = reqwest::Client::new();
    let mut lanes = Vec::new();
    for gate in ["anpr-in", "anpr-out"] {
        let camera_id = format!("cam-bench-{gate}");
        let registered: Value = client
            .post(format!("http://{http}/v1/lots/{lot}/devices"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"id": camera_id, "kind": "anpr_http", "gate": gate,
                          "vendor": "platerecognizer",
                          "control": {"kind": "http", "url": format!("http://{camera}/relay")}}))
            .send()
            .await?
            .error_for_status()
            .context("registering a camera")?
            .json()
            .await?;
        let password = registered["mqtt_password"]
            .as_str()
            .context("the camera's password")?;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{camera_id}:{password}"));
        lanes.push((format!("http://{http}/v1/anpr/{camera_id}"), basic));
    }

    let mut parkflow = Vec::with_capacity(reads);
    for i in 0..warmup + reads {
        // Each plate in, then out: a stay opened and closed, every decision an `open`.
        let plate = &plates[(i / 2) % plates.len()];
        let (intake, basic) = &lanes[i % 2];
        let started = Instant::now();
        let answer = client
            .post(intake)
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/json")
            .body(webhook(plate, i))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "event {i}: {}",
            answer.status()
        );
        let event: Value = answer.json().await?;
        let event = event["event_id"]
            .as_str()
            .context("the read's id")?
            .to_owned();
        let arrived = loop {
            let (called, at) = tokio::time::timeout(Duration::from_secs(10), calls.recv())
                .await
                .context("a barrier call went missing")?
                .context("the fake camera stopped")?;
            if called == event {
                break at;
            }
        };
        if i >= warmup {
            parkflow.push(arrived - started);
        }
    }
    token.cancel();
    running.await??;
    let _ = std::fs::remove_dir_all(&dir);
    let parkflow = Latency::of(&mut parkflow);
    println!("{}", parkflow.line("parkflow"));

    // The floor: an HTTP handler that calls the camera back at once.
    let relay = client.clone();
    let floor = axum::Router::new().fallback(move |body: Bytes| {
        let relay = relay.clone();
        async move {
            let event = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["data"]["filename"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = relay
                .post(format!("http://{camera}/relay"))
                .json(&json!({"event_id": event}))
                .send()
                .await;
            axum::Json(json!({"event_id": event}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let floor_addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, floor).await });
    let mut baseline = Vec::with_capacity(reads);
    for i in 0..warmup + reads {
        let plate = &plates[i % plates.len()];
        let started = Instant::now();
        let body = webhook(plate, i);
        let answer: Value = client
            .post(format!("http://{floor_addr}/anpr"))
            .header("authorization", format!("Basic {}", lanes[0].1))
            .body(body)
            .send()
            .await?
            .json()
            .await?;
        let event = answer["event_id"].as_str().unwrap_or_default().to_owned();
        let arrived = loop {
            let (called, at) = tokio::time::timeout(Duration::from_secs(10), calls.recv())
                .await
                .context("a baseline call went missing")?
                .context("the fake camera stopped")?;
            if called == event {
                break at;
            }
        };
        if i >= warmup {
            baseline.push(arrived - started);
        }
    }
    server.abort();
    let baseline = Latency::of(&mut baseline);
    println!("{}", baseline.line("http_floor"));
    // Reported, not judged: the floor does nothing but the call.
    println!("anpr_p99_vs_http_floor={:.3}", parkflow.p99 / baseline.p99);
    // The barrier's own goal (`bench barrier`'s `barrier_p99_ms`).
    println!("{}", ratio("anpr_p99_ms", parkflow.p99, 10.0, true));
    Ok(())
}
