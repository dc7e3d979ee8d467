//! The gateway's store writer on SQLite and PostgreSQL: a group of batches is applied as
//! multi-row statements with the effect of applying them in order.

use crate::support::{Setup, TestDatabase, World};
use chrono::{DateTime, Duration, Utc};
use parkflow::bench::persist::visits;
use parkflow::demo::demo_tariff;
use parkflow_db::{Db, query};
use parkflow_gateway::session::{OpenSession, ReviewItem, ReviewKind, SessionEnd, SessionStatus};
use parkflow_gateway::store::provision::provision;
use parkflow_gateway::store::writer::{Write, apply};
use parkflow_protocol::{LotId, Plate};
use uuid::Uuid;

async fn count(db: &Db, sql: &str) -> i64 {
    let (n,): (i64,) = query(sql).fetch_one(db).await.unwrap();
    n
}

/// A fresh database holding the test world's lot.
async fn database(setup: Setup, world: &World) -> (TestDatabase, Db) {
    let test_db = TestDatabase::new(setup.database).await;
    let db = Db::connect(&test_db.url).await.unwrap();
    provision(&db, &world.plan, Utc::now()).await.unwrap();
    (test_db, db)
}

fn open(lot: &LotId, id: Uuid, plate: &Plate, entered_at: DateTime<Utc>) -> Write {
    Write::OpenSession(OpenSession {
        id,
        lot: lot.clone(),
        plate: plate.clone(),
        plate_color: None,
        pass_holder: false,
        entry_gate: None,
        entry_event: None,
        entered_at,
    })
}

/// A close; a closed stay is priced at 5.00.
fn end(id: Uuid, status: SessionStatus, exited_at: DateTime<Utc>) -> Write {
    Write::EndSession(SessionEnd {
        id,
        status,
        exit_gate: None,
        exit_event: None,
        exited_at,
        exit_match: None,
        tariff_from: Some(demo_tariff(0).effective_from),
        billed_plate: None,
        plate_color: None,
        pass_holder: false,
        fee: (status == SessionStatus::Closed).then(|| (500, "CNY".to_string())),
    })
}

fn case(lot: &LotId, kind: ReviewKind, session: Uuid, plate: &Plate) -> Write {
    Write::Review(ReviewItem {
        id: Uuid::now_v7(),
        lot: lot.clone(),
        kind,
        session_id: Some(session),
        gate: None,
        event_id: None,
        plate: Some(plate.clone()),
        score: None,
        created_at: Utc::now(),
    })
}

/// One group: a car enters, leaves and enters again (with a case for its second stay in the same
/// group); a second car's stay ends in review; the first close is repeated with another status.
/// The first stay is closed and queued once as first closed, the second is open, the review stay
/// is not queued, and the cases are stored.
async fn a_group_applies_as_if_in_order(setup: Setup) {
    let world = World::new(setup, 100);
    let (test_db, db) = database(setup, &world).await;
    let lot = &world.lot;
    let at = |minutes_ago| Utc::now() - Duration::minutes(minutes_ago);
    let (car, other) = (
        Plate::parse("浙A12345").unwrap(),
        Plate::parse("浙B54321").unwrap(),
    );
    let (first, second, doubtful) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let group = [
        open(lot, first, &car, at(60)),
        open(lot, doubtful, &other, at(50)),
        end(first, SessionStatus::Closed, at(30)),
        open(lot, second, &car, at(20)),
        case(lot, ReviewKind::MissedExit, second, &car),
        end(first, SessionStatus::Review, at(5)),
        end(doubtful, SessionStatus::Review, at(10)),
        case(lot, ReviewKind::LowConfidenceMatch, doubtful, &other),
    ];
    apply(&db, group.iter()).await.unwrap();

    let stored = |id: Uuid| {
        let db = db.clone();
        async move {
            query("SELECT status, fee_minor FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_one::<(String, Option<i64>)>(&db)
                .await
                .unwrap()
        }
    };
    // The first close stands; the repeated one (another status) changed nothing.
    assert_eq!(
        stored(first).await,
        (SessionStatus::Closed.as_str().to_string(), Some(500))
    );
    assert_eq!(stored(second).await.0, SessionStatus::Open.as_str());
    assert_eq!(stored(doubtful).await.0, SessionStatus::Review.as_str());
    let queued: Vec<Uuid> = query("SELECT session_id FROM charge_queue")
        .fetch_all::<(Uuid,)>(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|(id,)| id)
        .collect();
    assert_eq!(queued, [first]);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM review_items").await, 2);
    // Applying the same group again changes nothing (a re-delivered message).
    apply(&db, group.iter()).await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM sessions").await, 3);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM charge_queue").await, 1);
    db.close().await;
    test_db.drop_database().await;
}

/// A group larger than one statement's rows, in the order the gate produces it: 2,500 cars'
/// entries (a session and a read each), then their exits — several statements per kind, reads
/// referring to sessions opened in the same statement's segment. Every session is stored,
/// closed and queued, every read kept.
async fn a_large_group_spans_several_statements(setup: Setup) {
    let world = World::new(setup, 10_000);
    let (test_db, db) = database(setup, &world).await;
    let (entries, exits): (Vec<_>, Vec<_>) = visits(&world.lot, &world.entry, 2_500, Utc::now())
        .unwrap()
        .into_iter()
        .map(|visit| visit.writes())
        .unzip();
    let group: Vec<Write> = entries.into_iter().chain(exits).flatten().collect();
    apply(&db, group.iter()).await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM sessions WHERE status = 'closed' AND fee_minor = 1100"
        )
        .await,
        2_500
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM charge_queue").await, 2_500);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM gate_reads").await, 5_000);
    db.close().await;
    test_db.drop_database().await;
}

on_each_database!(a_group_applies_as_if_in_order);

on_each_database!(a_large_group_spans_several_statements);
