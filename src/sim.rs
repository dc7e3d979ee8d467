//! `parkflow sim`: drives the devices of a devices file as the city preset lays them out, shows
//! progress and a live summary, lets the cars inside leave at the end, and with `--verify`
//! compares what it drove with what the platform recorded.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use parkflow_sensors_sim::clock::SimClock;
use parkflow_sensors_sim::journal::Journal;
use parkflow_sensors_sim::traffic::{Shared, TrafficConfig};
use parkflow_sensors_sim::verify::Verifier;
use parkflow_sensors_sim::{CityConfig, DevicesFile, Stats};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SimArgs;
use crate::demo::Demo;

/// How often the summary line is printed.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// How long --verify waits for the platform's writes to settle before it reports.
const SETTLE_FOR: Duration = Duration::from_secs(15);

/// Runs the simulation; `Ok(false)` when verification found a fault.
pub async fn run(args: SimArgs, interrupted: impl Future<Output = ()>) -> anyhow::Result<bool> {
    let devices = DevicesFile::read(&args.devices)
        .with_context(|| format!("failed to read {}", args.devices.display()))?;
    let city = CityConfig::preset(&args.city).unwrap_or_else(CityConfig::demo);
    let mut demo = Demo::from_devices(&city, devices)?;
    if args.play_anpr {
        demo.play_anpr(args.api_url.as_str());
    }
    let host = args
        .mqtt_url
        .host_str()
        .context("--mqtt-url needs a host")?
        .to_owned();
    let port = args.mqtt_url.port().unwrap_or(1883);
    let duration = Duration::from_secs(args.duration_secs);
    let mut traffic = if args.speed > 1.0 {
        TrafficConfig::day()
    } else {
        TrafficConfig::demo()
    };
    traffic.decide_alone_after = (args.decide_alone_after_ms > 0)
        .then(|| std::time::Duration::from_millis(args.decide_alone_after_ms));
    if let Some(rate) = args.arrivals_per_minute {
        traffic.arrivals_per_minute = rate.max(0.0);
    }
    if let Some(max) = args.max_stay_secs {
        traffic.max_stay = Duration::from_secs(max.max(1));
        traffic.min_stay = traffic.min_stay.min(traffic.max_stay);
    }
    let clock = if args.speed > 1.0 {
        // The drain: the last cars' stays, and their retries.
        let drain = traffic.max_stay + Duration::from_secs(600);
        SimClock::compressed(duration, args.speed, drain)?
    } else {
        SimClock::real()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let verifier = match (&args.admin_key, args.verify) {
        (Some(key), true) => Some(Verifier::new(
            args.api_url.as_str(),
            key.clone(),
            http.clone(),
        )),
        _ => None,
    };
    let shared = Shared {
        clock,
        stats: Arc::new(Stats::default()),
        journal: Arc::new(if args.verify {
            Journal::recording()
        } else {
            Journal::default()
        }),
        http,
    };
    let from = clock.now() - chrono::Duration::minutes(1);
    let street = demo.street_stats.clone();
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    let tracker = TaskTracker::new();
    {
        let (shared, stop, abort) = (shared.clone(), stop.clone(), abort.clone());
        tracker.spawn(async move {
            demo.drive(&host, port, &traffic, shared, stop, abort).await;
        });
    }
    tracker.close();

    let bar = progress(args.duration_secs);
    let started = std::time::Instant::now();
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    summary.tick().await;
    let mut interrupted = std::pin::pin!(interrupted);
    let mut stopping = false;
    loop {
        tokio::select! {
            () = &mut interrupted, if !stopping => {
                bar.println("interrupted: the cars inside leave (Ctrl-C again to abort)");
                stop.cancel();
                stopping = true;
            }
            () = tracker.wait() => break,
            _ = tick.tick() => {
                bar.set_position(started.elapsed().as_secs().min(args.duration_secs.max(1)));
                bar.set_message(format!(
                    "sim time {} · {} reads · {} in, {} out",
                    shared.clock.now().format("%m-%d %H:%M"),
                    load(&shared.stats.reads_sent),
                    load(&shared.stats.entries_opened),
                    load(&shared.stats.exits_opened) + load(&shared.stats.exits_paid),
                ));
                if !stopping && args.duration_secs > 0 && started.elapsed() >= duration {
                    bar.set_message("the cars inside leave");
                    stop.cancel();
                    stopping = true;
                }
            }
            _ = summary.tick() => {
                let line = format!(
                    "t={}s gated: {} street: {}",
                    started.elapsed().as_secs(),
                    shared.stats.summary(),
                    street.summary()
                );
                if bar.is_hidden() { println!("{line}") } else { bar.println(line) }
            }
        }
    }
    bar.finish_and_clear();
    abort.cancel();
    println!("final gated: {}", shared.stats.summary());
    println!("final street: {}", street.summary());
    let Some(verifier) = verifier else {
        return Ok(true);
    };
    // Decisions go out before their writes commit: give the last ones a moment.
    let journeys = shared.journal.records();
    let deadline = tokio::time::Instant::now() + SETTLE_FOR;
    let report = loop {
        let report = verifier
            .verify(&journeys, &shared.stats, from, args.fee_sample)
            .await?;
        if report.passed() || tokio::time::Instant::now() >= deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    print!("{}", report.render());
    Ok(report.passed())
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// A bar over the run's seconds (a spinner when it runs until Ctrl-C); hidden off a terminal.
fn progress(seconds: u64) -> ProgressBar {
    if seconds == 0 {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        return bar;
    }
    let bar = ProgressBar::new(seconds);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
