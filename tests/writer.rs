//! The gateway's store writer on SQLite and PostgreSQL: a group of batches is applied as
//! multi-row statements with the effect of applying them in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{Duration, Utc};
use common::{Broker, Database, Setup, TestDatabase};
use parkflow::demo::demo_tariff;
use parkflow_db::{Db, on_db};
use parkflow_gateway::registry::LotKind;
use parkflow_gateway::session::{OpenSession, ReviewItem, ReviewKind, SessionEnd, SessionStatus};
use parkflow_gateway::store::provision::{LotPlan, OperatorPlan, Plan, provision};
use parkflow_gateway::store::writer::{Write, apply};
use parkflow_protocol::{DeviceAuth, LotId, Plate};
use uuid::Uuid;

async fn count(db: &Db, sql: &str) -> i64 {
    on_db!(db, pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap())
}

/// One group: a car enters, leaves and enters again; a second car's stay ends in review; a close
/// is repeated. The first stay is closed and queued once, the second is open, the review stay is
/// not queued, and the case is stored.
async fn a_group_applies_as_if_in_order(database: Database) {
    let Some(_) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let test_db = TestDatabase::new(database).await;
    let db = Db::connect(&test_db.url).await.unwrap();
    let lot = LotId::parse("writer-lot").unwrap();
    let plan = Plan {
        operators: vec![OperatorPlan {
            id: "op-writer".into(),
            name: "Writer test".into(),
        }],
        lots: vec![LotPlan {
            id: lot.clone(),
            operator_id: "op-writer".into(),
            name: "Lot".into(),
            kind: LotKind::OffStreet,
            lat: 30.0,
            lon: 120.0,
            capacity: 10,
            time_zone: "Asia/Shanghai".into(),
            device_auth: DeviceAuth::Signed,
            gates: Vec::new(),
            bays: Vec::new(),
            max_stay_minutes: None,
            tariffs: vec![demo_tariff(0)],
        }],
        ..Plan::default()
    };
    let now = Utc::now();
    provision(&db, &plan, now).await.unwrap();

    let open = |id: Uuid, plate: &Plate, minutes_ago: i64| {
        Write::OpenSession(OpenSession {
            id,
            lot: lot.clone(),
            plate: plate.clone(),
            plate_color: None,
            pass_holder: false,
            entry_gate: None,
            entry_event: None,
            entered_at: now - Duration::minutes(minutes_ago),
        })
    };
    let end = |id: Uuid, status: SessionStatus, minutes_ago: i64| {
        Write::EndSession(SessionEnd {
            id,
            status,
            exit_gate: None,
            exit_event: None,
            exited_at: now - Duration::minutes(minutes_ago),
            exit_match: None,
            tariff_from: Some(demo_tariff(0).effective_from),
            billed_plate: None,
            plate_color: None,
            pass_holder: false,
            fee: (status == SessionStatus::Closed).then(|| (500, "CNY".to_string())),
        })
    };
    let (car, other) = (
        Plate::parse("浙A12345").unwrap(),
        Plate::parse("浙B54321").unwrap(),
    );
    let (first, second, doubtful) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let group = [
        open(first, &car, 60),
        open(doubtful, &other, 50),
        end(first, SessionStatus::Closed, 30),
        open(second, &car, 20),
        end(first, SessionStatus::Closed, 30),
        end(doubtful, SessionStatus::Review, 10),
        Write::Review(ReviewItem {
            id: Uuid::now_v7(),
            lot: lot.clone(),
            kind: ReviewKind::LowConfidenceMatch,
            session_id: Some(doubtful),
            gate: None,
            event_id: None,
            plate: Some(other.clone()),
            score: Some(0.4),
            created_at: now,
        }),
    ];
    apply(&db, group.iter()).await.unwrap();

    let status = |id: Uuid| {
        let db = db.clone();
        async move {
            on_db!(&db, pool => sqlx::query_scalar::<_, String>("SELECT status FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap())
        }
    };
    assert_eq!(status(first).await, "closed");
    assert_eq!(status(second).await, "open");
    assert_eq!(status(doubtful).await, "review");
    let queued: Vec<Uuid> = on_db!(&db, pool => sqlx::query_scalar("SELECT session_id FROM charge_queue")
        .fetch_all(pool)
        .await
        .unwrap());
    assert_eq!(queued, [first]);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM review_items").await, 1);
    // Applying the same group again changes nothing (a re-delivered message).
    apply(&db, group.iter()).await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM sessions").await, 3);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM charge_queue").await, 1);
    db.close().await;
    test_db.drop_database().await;
}

#[tokio::test]
async fn a_group_applies_as_if_in_order_on_sqlite() {
    a_group_applies_as_if_in_order(Database::Sqlite).await;
}

#[tokio::test]
async fn a_group_applies_as_if_in_order_on_postgres() {
    a_group_applies_as_if_in_order(Database::Postgres).await;
}
