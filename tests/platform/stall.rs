//! The database stalls for seconds (a lock, a slow disk): the gate actor never waits for it, so
//! reads that need no database are answered as usual meanwhile, and a read that does need it (a
//! late read, looked up among stored decisions) is answered once the database is back.

use std::time::{Duration, Instant};

use crate::support::{Broker, Database, Setup, TestDevice, TestPlatform, World};
use chrono::Utc;
use parkflow_protocol::{Direction, GateAction};

/// How long the test holds the database.
const STALL: Duration = Duration::from_secs(5);
/// What "as usual" allows for a decision on this machine, far below the stall.
const USUAL: Duration = Duration::from_millis(1_500);

/// Holds the database for [`STALL`]: on PostgreSQL an exclusive lock on `gate_reads` (every read
/// and write of it waits, the late read's lookup too); on SQLite the write lock (every writer
/// waits). Returns once the hold is in place; the hold ends by itself.
async fn stall(platform: &TestPlatform) -> tokio::task::JoinHandle<()> {
    use sqlx::Connection;
    let (held, holding) = tokio::sync::oneshot::channel();
    let url = platform.database_url.clone();
    let setup = platform.setup;
    let task = tokio::spawn(async move {
        match setup.database {
            Database::Postgres => {
                let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
                let mut tx = connection.begin().await.unwrap();
                sqlx::query("LOCK TABLE gate_reads IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                held.send(()).unwrap();
                tokio::time::sleep(STALL).await;
                tx.commit().await.unwrap();
            }
            Database::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
                let tx = connection.begin_with("BEGIN IMMEDIATE").await.unwrap();
                held.send(()).unwrap();
                tokio::time::sleep(STALL).await;
                tx.commit().await.unwrap();
            }
        }
    });
    holding.await.unwrap();
    task
}

async fn decisions_go_on_while_the_database_stalls(setup: Setup) {
    let world = World::new(setup, 50);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let warm_up = entry.read("浙A10000", Direction::Entry);
    entry.decide(&warm_up).await;

    let held = stall(&platform).await;
    let stalled_at = Instant::now();
    // Seen 25 minutes ago: older than the decisions kept in memory, so it is looked up.
    let late = entry.read_at(
        "浙A20000",
        Direction::Entry,
        Utc::now() - chrono::Duration::minutes(25),
    );
    entry.publish(&late).await;
    for n in 0..5 {
        let read = entry.read(&format!("浙A3000{n}"), Direction::Entry);
        let asked = Instant::now();
        let command = entry.decide(&read).await;
        let waited = asked.elapsed();
        assert_eq!(command.action, GateAction::Open);
        assert!(
            waited < USUAL,
            "read {n} waited {waited:?} for its barrier while the database stalled"
        );
    }
    assert!(
        stalled_at.elapsed() < STALL,
        "the fresh reads were not all answered inside the stall"
    );
    let command = entry.command_for(&late.event_id).await;
    assert_eq!(command.action, GateAction::Open);
    held.await.unwrap();
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_go_on_while_postgres_stalls() {
    if let Some(setup) = Setup::available(Database::Postgres, Broker::Embedded) {
        decisions_go_on_while_the_database_stalls(setup).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_go_on_while_sqlite_is_locked_for_writing() {
    if let Some(setup) = Setup::available(Database::Sqlite, Broker::Embedded) {
        decisions_go_on_while_the_database_stalls(setup).await;
    }
}
