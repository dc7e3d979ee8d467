//! `parkflow bench api`: the public availability endpoints (and the city view, `/ui/`) under
//! load, beside a trivial axum handler served in the same process and loaded by the same client.
//! A city of `lots` lots is provisioned; `GET /v1/lots/{lot}/availability` asks for random lots,
//! `GET /v1/lots?near=…` for random points (1 km, 20 lots), `/ui/` for the whole city's page.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parkflow_gateway::registry::{GateDirection, LotKind};
use parkflow_gateway::store::provision::{LotPlan, OperatorPlan, Plan};
use parkflow_protocol::{DeviceAuth, GateId, LotId};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::{Latency, ratio};
use crate::demo::demo_tariff;
use crate::{MqttSetup, Platform, PlatformConfig};

/// Requests in flight at once.
const CONCURRENCY: usize = 32;
/// Rounds of (trivial, availability, near); the ratios are the medians of the rounds'.
const ROUNDS: usize = 3;

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn plan(lots: usize) -> anyhow::Result<Plan> {
    let mut plan = Plan {
        operators: vec![OperatorPlan {
            id: "bench".into(),
            name: "Bench operator".into(),
        }],
        ..Plan::default()
    };
    let mut rng = rand::rng();
    for i in 0..lots {
        plan.lots.push(LotPlan {
            id: LotId::parse(&format!("api-{i:05}"))?,
            operator_id: "bench".into(),
            name: format!("Lot {i}"),
            kind: LotKind::OffStreet,
            lat: 30.25 + rng.random_range(-0.15..0.15),
            lon: 120.15 + rng.random_range(-0.15..0.15),
            capacity: 200,
            time_zone: "Asia/Shanghai".into(),
            device_auth: DeviceAuth::Signed,
            gates: vec![(GateId::parse("in-1")?, GateDirection::Entry)],
            bays: Vec::new(),
            max_stay_minutes: None,
            offline_policy: Default::default(),
            tariffs: vec![demo_tariff(i)],
        });
    }
    Ok(plan)
}

/// Loads `url_of()` with [`CONCURRENCY`] clients for `duration`: requests per second and latency.
async fn load(
    client: &reqwest::Client,
    duration: Duration,
    url_of: impl Fn() -> String + Send + Sync + 'static,
) -> anyhow::Result<(f64, Latency, u64)> {
    let url_of = Arc::new(url_of);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, url_of, stop) = (client.clone(), url_of.clone(), stop.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client.get(url_of()).send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        samples.push(started.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (samples, errors)
        });
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (mut s, e) = done?;
        samples.append(&mut s);
        errors += e;
    }
    let rps = samples.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rps, Latency::of(&mut samples), errors))
}

/// Runs the scenario and prints its figures.
pub async fn run(lots: usize, seconds: u64) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    println!("scenario=api lots={lots} seconds_each={seconds} concurrency={CONCURRENCY}");
    let dir = tempfile::tempdir()?;
    let mut config = PlatformConfig::new(
        "127.0.0.1:0".parse()?,
        format!("sqlite:{}", dir.path().join("api.db").display()),
        MqttSetup::Embedded {
            listen: free_addr()?,
        },
    );
    config.public_rate_per_second = u32::MAX;
    let platform = Platform::build(config).await?;
    platform.provision(&plan(lots)?).await?;
    let http = platform.http_addr();
    let token = CancellationToken::new();
    let running = tokio::spawn(platform.run(token.clone()));

    // The baseline: a trivial handler in the same process, on the same runtime.
    let trivial = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let trivial_addr = trivial.local_addr()?;
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
    );
    let trivial_token = token.clone();
    tokio::spawn(async move {
        let _ = axum::serve(trivial, router)
            .with_graceful_shutdown(trivial_token.cancelled_owned())
            .await;
    });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    // Let the occupancy actor publish the new lots' board.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trivial = move || format!("http://{trivial_addr}/");
    let one = move || {
        let lot = rand::rng().random_range(0..lots);
        format!("http://{http}/v1/lots/api-{lot:05}/availability")
    };
    let near = move || {
        let mut rng = rand::rng();
        let (lat, lon) = (
            30.25 + rng.random_range(-0.15..0.15),
            120.15 + rng.random_range(-0.15..0.15),
        );
        format!("http://{http}/v1/lots?near={lat:.5},{lon:.5}&radius_m=1000&limit=20")
    };
    // Warm up (connections, allocator, caches) unmeasured, then load the three in turn, round
    // after round: the machine's noise then falls on all three alike, and each ratio is taken
    // within one round.
    let warm_up = Duration::from_millis(300);
    load(&client, warm_up, trivial).await?;
    load(&client, warm_up, one).await?;
    load(&client, warm_up, near).await?;
    let (mut trivial_rps, mut one_rps, mut near_rps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut one_ratios, mut near_ratios) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let (t_rps, t_latency, t_errors) = load(&client, duration, trivial).await?;
        let (o_rps, o_latency, o_errors) = load(&client, duration, one).await?;
        let (n_rps, n_latency, n_errors) = load(&client, duration, near).await?;
        println!(
            "round={round} trivial_rps={t_rps:.0} {} errors={t_errors}",
            t_latency.line("trivial")
        );
        println!(
            "round={round} availability_rps={o_rps:.0} {} errors={o_errors}",
            o_latency.line("availability")
        );
        println!(
            "round={round} near_rps={n_rps:.0} {} errors={n_errors}",
            n_latency.line("near")
        );
        trivial_rps.push(t_rps);
        one_rps.push(o_rps);
        near_rps.push(n_rps);
        one_ratios.push(o_rps / t_rps);
        near_ratios.push(n_rps / t_rps);
    }
    let one_rps = median(&mut one_rps);
    println!(
        "trivial_rps={:.0} availability_rps={one_rps:.0} near_rps={:.0} (medians of {ROUNDS} rounds)",
        median(&mut trivial_rps),
        median(&mut near_rps),
    );
    // The city view, as a browser asks for it (gzip): one page of every lot, rendered and
    // compressed once per published board.
    let mut gzip = reqwest::header::HeaderMap::new();
    gzip.insert(
        reqwest::header::ACCEPT_ENCODING,
        reqwest::header::HeaderValue::from_static("gzip"),
    );
    let browser = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .default_headers(gzip)
        .build()?;
    let page = browser
        .get(format!("http://{http}/ui/"))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let (city_rps, city_latency, city_errors) =
        load(&browser, duration, move || format!("http://{http}/ui/")).await?;
    println!(
        "city_view_rps={city_rps:.0} {} errors={city_errors} page_gzip_bytes={page}",
        city_latency.line("city_view")
    );
    println!("city_view_vs_availability_rps={:.3}", city_rps / one_rps);
    println!(
        "{}",
        ratio(
            "availability_vs_trivial_rps",
            median(&mut one_ratios),
            0.9,
            false
        )
    );
    println!(
        "{}",
        ratio("near_vs_trivial_rps", median(&mut near_ratios), 0.8, false)
    );
    token.cancel();
    running.await??;
    Ok(())
}
