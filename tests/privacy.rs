//! Plates are personal data (SPEC §5): during a whole entry, exit, payment and billing run, with
//! every log line of every crate captured at TRACE, no plate appears in clear in the logs or in
//! `/metrics` (the logs carry keyed hashes); after the retention period a job replaces the plates
//! of ended sessions and their reads with pseudonyms.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The platform tests' support; this binary uses a part of it.
#[allow(dead_code, unused_imports, unused_macros)]
#[path = "platform/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use parkflow_gateway::privacy::{PSEUDONYM_PREFIX, PlateKey, pseudonymise};
use parkflow_protocol::{Direction, GateAction};
use serde_json::{Value, json};
use support::{ADMIN_KEY, Broker, Database, Setup, TestDevice, TestPlatform, World, eventually};

/// Every log line, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plate_in_clear_in_logs_or_metrics_and_old_plates_are_pseudonymised() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .try_init()
        .expect("this test owns the process's logs");
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;

    // An enrolled driver in and out (billed later); a walk-in in, held, paying, out.
    let earlier = Utc::now() - chrono::Duration::hours(2);
    for plate in [&world.enrolled, &world.unenrolled] {
        let read = entry.read_at(plate.as_str(), Direction::Entry, earlier);
        assert_eq!(entry.decide(&read).await.action, GateAction::Open);
    }
    let out = exit.read(world.enrolled.as_str(), Direction::Exit);
    assert_eq!(exit.decide(&out).await.action, GateAction::Open);
    let held = exit.read(world.unenrolled.as_str(), Direction::Exit);
    let command = exit.decide(&held).await;
    assert_eq!(command.action, GateAction::Hold);
    let pay_url = command.pay_url.unwrap();
    eventually(Duration::from_secs(10), "the exit paid", || {
        let pay_url = pay_url.clone();
        async move {
            let response = reqwest::Client::new()
                .post(&pay_url)
                .header("Idempotency-Key", "privacy-pay")
                .json(&json!({"payment_account": "acct-walk-in"}))
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await;
    // Both sessions end up charged: the settlement counts them.
    let today = Utc::now().date_naive();
    let path = format!(
        "/v1/settlements/run?from={}&to={}",
        today - chrono::Duration::days(1),
        today + chrono::Duration::days(1)
    );
    eventually(Duration::from_secs(20), "both sessions charged", || {
        let url = platform.url(&path);
        async move {
            let settled: Value = reqwest::Client::new()
                .post(&url)
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let sessions: i64 = settled
                .as_array()?
                .iter()
                .filter_map(|s| s["sessions"].as_i64())
                .sum();
            (sessions >= 2).then_some(())
        }
    })
    .await;

    let metrics = reqwest::Client::new()
        .get(platform.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("read decided") && logs.contains("plate=p-"),
        "logs carry plate tags"
    );
    for plate in [&world.enrolled, &world.unenrolled] {
        // The plate without its province character: what would show in any spelling.
        let tail: String = plate.as_str().chars().skip(1).collect();
        assert!(!logs.contains(&tail), "a plate in clear in the logs");
        assert!(!metrics.contains(&tail), "a plate in clear in /metrics");
    }

    // Past the retention period, the ended sessions' plates and their reads are pseudonymised.
    let db = parkflow_gateway::store::Db::connect(&platform.database_url)
        .await
        .unwrap();
    let key = PlateKey::new(b"retention test key");
    let cutoff = Utc::now() + chrono::Duration::minutes(1);
    assert_eq!(pseudonymise(&db, &key, cutoff, 100).await.unwrap(), 2);
    assert_eq!(
        pseudonymise(&db, &key, cutoff, 100).await.unwrap(),
        0,
        "idempotent"
    );
    db.close().await;
    let sessions = platform.sessions(&world.lot).await;
    assert_eq!(sessions.len(), 2);
    for session in &sessions {
        let plate = session["plate"].as_str().unwrap();
        assert!(plate.starts_with(PSEUDONYM_PREFIX), "{plate}");
        assert_eq!(session["status"], "closed");
    }
    assert_ne!(
        sessions[0]["plate"], sessions[1]["plate"],
        "two cars, two pseudonyms"
    );
    platform.stop().await;
}
