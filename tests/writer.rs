//! The gateway's store writer on SQLite and PostgreSQL: a group of batches is applied as
//! multi-row statements with the effect of applying them in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{Broker, Database, Setup, TestDatabase};
use parkflow::demo::demo_tariff;
use parkflow_db::{Db, on_db};
use parkflow_gateway::registry::{GateDirection, LotKind};
use parkflow_gateway::session::{OpenSession, ReviewItem, ReviewKind, SessionEnd, SessionStatus};
use parkflow_gateway::store::provision::{LotPlan, OperatorPlan, Plan, provision};
use parkflow_gateway::store::writer::{GateReadRecord, Write, apply};
use parkflow_protocol::{
    DeviceAuth, Direction, EventId, GateAction, GateCommand, GateId, GateReason, LotId, Plate,
};
use uuid::Uuid;

async fn count(db: &Db, sql: &str) -> i64 {
    on_db!(db, pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap())
}

/// A lot with one lane, provisioned.
async fn lot_with_a_gate(db: &Db) -> (LotId, GateId) {
    let lot = LotId::parse("writer-lot").unwrap();
    let gate = GateId::parse("lane-1").unwrap();
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
            capacity: 10_000,
            time_zone: "Asia/Shanghai".into(),
            device_auth: DeviceAuth::Signed,
            gates: vec![(gate.clone(), GateDirection::Both)],
            bays: Vec::new(),
            max_stay_minutes: None,
            tariffs: vec![demo_tariff(0)],
        }],
        ..Plan::default()
    };
    provision(db, &plan, Utc::now()).await.unwrap();
    (lot, gate)
}

/// A read at `gate` and the `open` that answered it.
fn read(
    lot: &LotId,
    gate: &GateId,
    plate: &Plate,
    direction: Direction,
    at: DateTime<Utc>,
    session: Uuid,
) -> Write {
    let event_id = EventId::parse(&Uuid::new_v4().to_string()).unwrap();
    Write::GateRead(Box::new(GateReadRecord {
        lot: lot.clone(),
        gate: gate.clone(),
        event_id: event_id.clone(),
        plate: plate.clone(),
        plate_color: None,
        confidence: 0.97,
        direction,
        observed_at: at,
        received_at: at,
        command: GateCommand {
            command_id: Uuid::now_v7(),
            event_id,
            action: GateAction::Open,
            reason: GateReason::Entered,
            issued_at: at,
            amount_due: None,
            currency: None,
            pay_url: None,
        },
        amount_due_minor: None,
        session_id: Some(session),
    }))
}

/// One group: a car enters, leaves and enters again (its second entry read and a case for it in
/// the same group); a second car's stay ends in review; the first close is repeated with another
/// status. The first stay is closed and queued once as first closed, the second is open, the
/// review stay is not queued, and the reads and cases are stored.
async fn a_group_applies_as_if_in_order(database: Database) {
    let Some(_) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let test_db = TestDatabase::new(database).await;
    let db = Db::connect(&test_db.url).await.unwrap();
    let (lot, gate) = lot_with_a_gate(&db).await;
    let now = Utc::now();

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
        read(
            &lot,
            &gate,
            &car,
            Direction::Entry,
            now - Duration::minutes(20),
            second,
        ),
        end(first, SessionStatus::Review, 5),
        end(doubtful, SessionStatus::Review, 10),
        Write::Review(ReviewItem {
            id: Uuid::now_v7(),
            lot: lot.clone(),
            kind: ReviewKind::MissedExit,
            session_id: Some(second),
            gate: Some(gate.clone()),
            event_id: None,
            plate: Some(car.clone()),
            score: None,
            created_at: now,
        }),
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
    assert_eq!(count(&db, "SELECT COUNT(*) FROM review_items").await, 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM gate_reads").await, 1);
    // The first close stands; the repeated one (another status) changed nothing.
    let fee: Option<i64> = on_db!(&db, pool => sqlx::query_scalar("SELECT fee_minor FROM sessions WHERE id = $1")
        .bind(first)
        .fetch_one(pool)
        .await
        .unwrap());
    assert_eq!(fee, Some(500));
    // Applying the same group again changes nothing (a re-delivered message).
    apply(&db, group.iter()).await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM sessions").await, 3);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM charge_queue").await, 1);
    db.close().await;
    test_db.drop_database().await;
}

/// A group larger than one statement's rows: 2,500 cars enter and leave in one group (10,000
/// writes); every session is stored, closed and queued, every read kept.
async fn a_large_group_spans_several_statements(database: Database) {
    let Some(_) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let test_db = TestDatabase::new(database).await;
    let db = Db::connect(&test_db.url).await.unwrap();
    let (lot, gate) = lot_with_a_gate(&db).await;
    let now = Utc::now();
    let mut group = Vec::new();
    for i in 0..2_500 {
        let id = Uuid::now_v7();
        let plate = Plate::parse(&format!("AB{i:05}")).unwrap();
        let entered_at = now - Duration::minutes(90);
        group.push(Write::OpenSession(OpenSession {
            id,
            lot: lot.clone(),
            plate: plate.clone(),
            plate_color: None,
            pass_holder: false,
            entry_gate: Some(gate.clone()),
            entry_event: None,
            entered_at,
        }));
        group.push(read(&lot, &gate, &plate, Direction::Entry, entered_at, id));
        group.push(Write::EndSession(SessionEnd {
            id,
            status: SessionStatus::Closed,
            exit_gate: Some(gate.clone()),
            exit_event: None,
            exited_at: now,
            exit_match: None,
            tariff_from: Some(demo_tariff(0).effective_from),
            billed_plate: None,
            plate_color: None,
            pass_holder: false,
            fee: Some((700, "CNY".into())),
        }));
        group.push(read(&lot, &gate, &plate, Direction::Exit, now, id));
    }
    apply(&db, group.iter()).await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM sessions WHERE status = 'closed' AND fee_minor = 700"
        )
        .await,
        2_500
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM charge_queue").await, 2_500);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM gate_reads").await, 5_000);
    db.close().await;
    test_db.drop_database().await;
}

#[tokio::test]
async fn a_large_group_spans_several_statements_on_sqlite() {
    a_large_group_spans_several_statements(Database::Sqlite).await;
}

#[tokio::test]
async fn a_large_group_spans_several_statements_on_postgres() {
    a_large_group_spans_several_statements(Database::Postgres).await;
}

#[tokio::test]
async fn a_group_applies_as_if_in_order_on_sqlite() {
    a_group_applies_as_if_in_order(Database::Sqlite).await;
}

#[tokio::test]
async fn a_group_applies_as_if_in_order_on_postgres() {
    a_group_applies_as_if_in_order(Database::Postgres).await;
}
