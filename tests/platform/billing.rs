//! Leave first, pay later, on SQLite and PostgreSQL: exactly-once charging through provider faults
//! and worker crashes, settlement that re-runs to the same figures, and the audit.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{Broker, Database, Setup, TestDatabase};
use chrono::{DateTime, NaiveDate, Utc};
use parkflow::demo::demo_tariff;
use parkflow_billing::charging::{ChargingConfig, ChargingWorker, idempotency_key};
use parkflow_billing::provider::{FaultConfig, SimulatedProvider};
use parkflow_billing::{Stay, audit, settlement};
use parkflow_db::{Db, query};
use parkflow_gateway::registry::LotKind;
use parkflow_gateway::store::provision::{DriverPlan, LotPlan, OperatorPlan, Plan, provision};
use parkflow_protocol::{DeviceAuth, LotId, Plate, PlateColor};
use parkflow_sensors_sim::city::random_plate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// Every day a charge of these runs can fall on.
const EVERY_DAY: (NaiveDate, NaiveDate) = (
    NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date"),
    NaiveDate::from_ymd_opt(2999, 12, 31).expect("a date"),
);

const SESSIONS: usize = 1_200;
const DRIVERS: usize = 300;
const LOTS: usize = 3;

struct Fixture {
    plates: Vec<Plate>,
    lots: Vec<LotId>,
}

/// Three lots, drivers (one in ten with an account that declines), and closed sessions priced by
/// the lots' tariffs, written straight to the database as the gateway would have.
async fn fixture(db: &Db) -> Fixture {
    let mut rng = StdRng::seed_from_u64(42);
    let mut plates: Vec<Plate> = (0..DRIVERS * 2)
        .map(|_| random_plate(&mut rng, false))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    plates.sort();
    plates.truncate(DRIVERS);
    let lots: Vec<LotId> = (0..LOTS)
        .map(|i| LotId::parse(&format!("bill-{i}")).unwrap())
        .collect();
    let plan = Plan {
        operators: vec![OperatorPlan {
            id: "op-bill".into(),
            name: "Billing test".into(),
        }],
        lots: lots
            .iter()
            .enumerate()
            .map(|(i, id)| LotPlan {
                id: id.clone(),
                operator_id: "op-bill".into(),
                name: format!("Lot {i}"),
                kind: LotKind::OffStreet,
                lat: 30.0,
                lon: 120.0,
                capacity: 1_000,
                time_zone: "Asia/Shanghai".into(),
                device_auth: DeviceAuth::Signed,
                gates: Vec::new(),
                bays: Vec::new(),
                max_stay_minutes: None,
                offline_policy: Default::default(),
                tariffs: vec![demo_tariff(i)],
            })
            .collect(),
        drivers: plates
            .iter()
            .map(|plate| DriverPlan {
                id: Uuid::new_v4(),
                name: "Driver".into(),
                suspended: false,
                payment_account: None,
                plates: vec![(plate.clone(), Some(PlateColor::Blue))],
            })
            .collect(),
        ..Plan::default()
    };
    provision(db, &plan, Utc::now()).await.unwrap();
    for (i, plate) in plates.iter().enumerate() {
        let account = if i % 10 == 0 {
            format!("decline-{i}")
        } else {
            format!("acct-{i}")
        };
        query("UPDATE drivers SET payment_account = $1 WHERE id = (SELECT driver_id FROM driver_plates WHERE plate = $2)")
            .bind(account)
            .bind(plate.as_str())
            .execute(db)
            .await
            .map(drop)
            .unwrap();
    }
    let base: DateTime<Utc> = Utc::now() - chrono::Duration::days(3);
    for i in 0..SESSIONS {
        let lot = i % LOTS;
        let tariff = demo_tariff(lot).validate().unwrap();
        let entered_at = base + chrono::Duration::minutes(i as i64 * 3);
        let exited_at = entered_at + chrono::Duration::minutes(rng.random_range(1..600));
        let stay = Stay {
            entered_at,
            exited_at,
            plate_color: Some(PlateColor::Blue),
            pass_holder: false,
        };
        let id = Uuid::now_v7();
        let fee = tariff.fee(&stay).unwrap().to_minor().unwrap();
        query(
            "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, entered_at, exited_at, tariff_from,
                 fee_minor, currency, updated_at, billed_driver)
             VALUES ($1, $2, $3, 'blue', 'closed', $4, $5, $6, $7, $8, 'CNY', $6,
                     (SELECT driver_id FROM driver_plates WHERE plate = $3))",
        )
        .bind(id)
        .bind(lots[lot].as_str())
        .bind(plates[i % DRIVERS].as_str())
        .bind(false)
        .bind(parkflow_db::db_time(entered_at))
        .bind(parkflow_db::db_time(exited_at))
        .bind(parkflow_db::db_time(tariff.effective_from()))
        .bind(fee)
        .execute(db)
        .await
        .map(drop)
        .unwrap();
        // As the gateway does when it closes a session: the session waits for its charge.
        query("INSERT INTO charge_queue (session_id, queued_at) VALUES ($1, $2)")
            .bind(id)
            .bind(parkflow_db::db_time(exited_at))
            .execute(db)
            .await
            .map(drop)
            .unwrap();
    }
    Fixture { plates, lots }
}

async fn count(db: &Db, sql: &str) -> i64 {
    let (n,): (i64,) = query(sql).fetch_one(db).await.unwrap();
    n
}

async fn charging_is_exactly_once_through_faults_and_crashes(database: Database) {
    let Some(_) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let test_db = TestDatabase::new(database).await;
    let db = Db::connect(&test_db.url).await.unwrap();
    let fixture = fixture(&db).await;
    let faults = FaultConfig {
        late_confirmation_after: Duration::from_millis(100),
        latency: Duration::from_millis(1),
        ..FaultConfig::chaotic(7)
    };
    let provider = SimulatedProvider::new(faults).unwrap();

    // Several workers at once; each crashes now and then in the middle of a step (its future is
    // dropped wherever it is) and comes back under a new name, as a restarted process would.
    let workers = if database == Database::Postgres { 3 } else { 2 };
    let mut handles = Vec::new();
    for w in 0..workers {
        let db = db.clone();
        let provider = provider.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            let mut restarts = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let mut config = ChargingConfig::new(format!("worker-{w}-{restarts}"));
                config.batch = 97;
                config.lease = Duration::from_millis(500);
                config.retry_after = Duration::from_millis(50);
                let mut worker = ChargingWorker::new(db.clone(), provider.clone(), config).await.unwrap();
                let mut idle_steps = 0;
                loop {
                    assert!(tokio::time::Instant::now() < deadline, "charging did not settle in time");
                    provider.tick();
                    let crash_after = Duration::from_millis(rng.random_range(1..40));
                    match tokio::time::timeout(crash_after, worker.step(Utc::now())).await {
                        Err(_) if rng.random_bool(0.3) => {
                            restarts += 1;
                            break;
                        }
                        Err(_) => {}
                        Ok(report) => {
                            let report = report.unwrap();
                            idle_steps = if report.is_idle() { idle_steps + 1 } else { 0 };
                        }
                    }
                    let (unsettled,): (i64,) = query(
                        "SELECT COUNT(*) FROM charges WHERE status IN ('pending', 'unknown')"
                    ).fetch_one(&db).await.unwrap();
                    let (uncharged,): (i64,) = query(
                        "SELECT COUNT(*) FROM sessions s WHERE s.status = 'closed' AND NOT EXISTS (SELECT 1 FROM charges c WHERE c.session_id = s.id)"
                    ).fetch_one(&db).await.unwrap();
                    if unsettled == 0 && uncharged == 0 && idle_steps > 0 {
                        return restarts;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    let mut restarts = 0;
    for handle in handles {
        restarts += handle.await.unwrap();
    }
    assert!(
        restarts > 0,
        "the run crashed no worker: it proves nothing about restarts"
    );

    // One charge per session, money moved at most once per session, and the books agree.
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM charges").await,
        SESSIONS as i64
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM (SELECT session_id FROM charges GROUP BY session_id HAVING COUNT(*) > 1) d").await, 0);
    let sessions: Vec<(Uuid,)> = query("SELECT id FROM sessions")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(
        sessions
            .iter()
            .all(|(s,)| provider.times_charged(&idempotency_key(*s)) <= 1),
        "a session was charged twice"
    );
    let succeeded = count(
        &db,
        "SELECT COUNT(*) FROM charges WHERE status = 'succeeded'",
    )
    .await;
    assert_eq!(
        provider.applied_count() as i64,
        succeeded,
        "the provider moved money the platform did not record, or the reverse"
    );
    let declined = count(
        &db,
        "SELECT COUNT(*) FROM charges WHERE status = 'declined'",
    )
    .await;
    assert!(
        declined > 0,
        "declining accounts should have produced declines"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM invoices").await, declined);
    assert_eq!(
        settlement::reconcile(&db, &provider).await.unwrap(),
        Vec::new()
    );
    let report = audit::audit(&db).await.unwrap();
    assert_eq!(report.violations, Vec::new());
    assert_eq!(report.closed_sessions, SESSIONS as i64);

    // Settlement: the same figures however often it runs, and every fee counted once.
    let first = settlement::settle(&db, EVERY_DAY.0, EVERY_DAY.1, Utc::now())
        .await
        .unwrap();
    let again = settlement::settle(&db, EVERY_DAY.0, EVERY_DAY.1, Utc::now())
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        settlement::stored(&db, None, EVERY_DAY.0, EVERY_DAY.1)
            .await
            .unwrap(),
        first
    );
    let gross: i64 = first.iter().map(|s| s.gross_minor).sum();
    assert_eq!(
        gross,
        count(&db, "SELECT CAST(SUM(fee_minor) AS BIGINT) FROM sessions").await
    );
    assert_eq!(
        first.iter().map(|s| s.sessions).sum::<i64>(),
        SESSIONS as i64
    );
    for s in &first {
        assert_eq!(
            s.collected_minor + s.outstanding_minor,
            s.gross_minor,
            "{s:?}"
        );
        assert!(fixture.lots.iter().any(|l| l.as_str() == s.lot_id));
    }
    assert!(!fixture.plates.is_empty());
    db.close().await;
    test_db.drop_database().await;
}

async fn refunds_never_exceed_what_was_collected(database: Database) {
    let Some(_) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let test_db = TestDatabase::new(database).await;
    let db = Db::connect(&test_db.url).await.unwrap();
    fixture(&db).await;
    let provider = SimulatedProvider::new(FaultConfig::none()).unwrap();
    let mut worker =
        ChargingWorker::new(db.clone(), provider.clone(), ChargingConfig::new("refunds"))
            .await
            .unwrap();
    while !worker.step(Utc::now()).await.unwrap().is_idle() {}
    let (charge, amount): (Uuid, i64) = query(
        "SELECT id, amount_minor FROM charges WHERE status = 'succeeded' AND amount_minor > 100 ORDER BY id LIMIT 1"
    ).fetch_one(&db).await.unwrap();
    let refund = |minor: i64, key: &'static str| {
        let db = db.clone();
        let provider = provider.clone();
        async move {
            parkflow_billing::refunds::refund(
                &db,
                &provider,
                charge,
                minor,
                "test",
                key,
                Utc::now(),
            )
            .await
        }
    };
    refund(100, "r1").await.unwrap();
    // The same key again is the same refund, not a second one.
    assert_eq!(refund(100, "r1").await.unwrap().amount_minor, 100);
    let too_much = refund(amount, "r2").await;
    assert!(
        matches!(too_much, Err(parkflow_billing::refunds::RefundError::ExceedsCollected { remaining_minor }) if remaining_minor == amount - 100)
    );
    refund(amount - 100, "r3").await.unwrap();
    assert!(refund(1, "r4").await.is_err());
    // A key belongs to its charge: "r1" sent for another charge is that charge's own refund.
    let (other,): (Uuid,) = query(
        "SELECT id FROM charges WHERE status = 'succeeded' AND amount_minor > 100 AND id <> $1 ORDER BY id LIMIT 1"
    ).bind(charge).fetch_one(&db).await.unwrap();
    let elsewhere =
        parkflow_billing::refunds::refund(&db, &provider, other, 50, "test", "r1", Utc::now())
            .await
            .unwrap();
    assert_eq!(elsewhere.amount_minor, 50);
    let refunded_there: (i64,) = query(
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM refunds WHERE charge_id = $1",
    )
    .bind(other)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(refunded_there.0, 50);
    // Two refunds of everything, at once, under different keys: the platform itself refuses one
    // (it never leaves the over-refund for the provider to catch).
    let fresh: Vec<(Uuid, i64)> = query(
        "SELECT id, amount_minor FROM charges WHERE status = 'succeeded' AND amount_minor > 0
         AND id NOT IN (SELECT charge_id FROM refunds) ORDER BY id LIMIT 20",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(fresh.len(), 20);
    for (charge, amount) in fresh {
        let both = |key: &'static str| {
            let db = db.clone();
            let provider = provider.clone();
            async move {
                parkflow_billing::refunds::refund(
                    &db,
                    &provider,
                    charge,
                    amount,
                    "race",
                    key,
                    Utc::now(),
                )
                .await
            }
        };
        let (a, b) = tokio::join!(both("race-a"), both("race-b"));
        let refunded = [&a, &b].iter().filter(|r| r.is_ok()).count();
        let refused = [&a, &b]
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Err(parkflow_billing::refunds::RefundError::ExceedsCollected {
                        remaining_minor: 0
                    })
                )
            })
            .count();
        assert_eq!(
            (refunded, refused),
            (1, 1),
            "charge {charge}: {a:?} / {b:?}"
        );
    }
    // The same key with another amount is another request: refused, not answered with the first.
    assert!(matches!(
        refund(99, "r1").await,
        Err(parkflow_billing::refunds::RefundError::KeyReused)
    ));
    // The money went back through the provider, exactly what was collected.
    let (session,): (Uuid,) = query("SELECT session_id FROM charges WHERE id = $1")
        .bind(charge)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(provider.refunded(&idempotency_key(session)), amount);
    assert_eq!(audit::audit(&db).await.unwrap().violations, Vec::new());
    // The ledger refuses to be rewritten.
    let rewrite = query("UPDATE ledger SET amount_minor = 0")
        .execute(&db)
        .await
        .map(drop);
    assert!(rewrite.is_err(), "ledger rows must never be updated");
    let erase = query("DELETE FROM ledger").execute(&db).await.map(drop);
    assert!(erase.is_err(), "ledger rows must never be deleted");
    db.close().await;
    test_db.drop_database().await;
}

/// A payment the provider never answered does not block its invoice for ever: asked again, it is
/// failed (never received) or finished (confirmed late).
async fn stale_pending_payments_are_resolved(database: Database) {
    use parkflow_billing::payments::{PayError, pay_invoice, resolve_stale};
    let Some(_) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let test_db = TestDatabase::new(database).await;
    let db = Db::connect(&test_db.url).await.unwrap();
    fixture(&db).await;
    let provider = SimulatedProvider::new(FaultConfig::none()).unwrap();
    let mut worker =
        ChargingWorker::new(db.clone(), provider.clone(), ChargingConfig::new("stale"))
            .await
            .unwrap();
    while !worker.step(Utc::now()).await.unwrap().is_idle() {}
    let open: Vec<(Uuid, Uuid, i64, String)> = query(
        "SELECT id, driver_id, amount_minor, currency FROM invoices
         WHERE status = 'open' AND driver_id IS NOT NULL ORDER BY id LIMIT 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(open.len(), 2);

    // The platform recorded a payment and died before asking the provider.
    let (invoice, driver, minor, currency) = open[0].clone();
    query(
        "INSERT INTO payments (id, idempotency_key, kind, invoice_id, driver_id, amount_minor, currency, status, created_at)
         VALUES ($1, $2, 'invoice', $3, $4, $5, $6, 'pending', $7)",
    )
    .bind(Uuid::now_v7())
    .bind(format!("driver:{driver}:lost"))
    .bind(invoice)
    .bind(driver)
    .bind(minor)
    .bind(currency)
    .bind(parkflow_db::db_time(Utc::now() - chrono::Duration::minutes(3)))
    .execute(&db)
    .await
    .map(drop)
    .unwrap();
    let blocked = pay_invoice(
        &db,
        &provider,
        driver,
        invoice,
        "again",
        "acct-ok",
        Utc::now(),
    )
    .await;
    assert!(matches!(blocked, Err(PayError::InProgress)), "{blocked:?}");
    let resolved = resolve_stale(
        &db,
        &provider,
        parkflow_billing::payments::STALE_AFTER,
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!((resolved.failed, resolved.still_pending), (1, 0));
    pay_invoice(
        &db,
        &provider,
        driver,
        invoice,
        "again",
        "acct-ok",
        Utc::now(),
    )
    .await
    .unwrap();

    // A provider that confirms late: pending at first, paid once asked again.
    let late = SimulatedProvider::new(FaultConfig {
        late_confirmation_rate: 1.0,
        late_confirmation_after: Duration::from_millis(50),
        ..FaultConfig::none()
    })
    .unwrap();
    let (invoice, driver, _, _) = open[1].clone();
    let pending = pay_invoice(&db, &late, driver, invoice, "late", "acct-ok", Utc::now()).await;
    assert!(matches!(pending, Err(PayError::Pending)), "{pending:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resolved = resolve_stale(&db, &late, Duration::ZERO, Utc::now())
        .await
        .unwrap();
    assert_eq!((resolved.failed, resolved.still_pending), (0, 0));
    let paid: Vec<(String,)> = query("SELECT status FROM invoices WHERE id IN ($1, $2)")
        .bind(open[0].0)
        .bind(open[1].0)
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(paid, vec![("paid".to_owned(),), ("paid".to_owned(),)]);
    assert_eq!(audit::audit(&db).await.unwrap().violations, Vec::new());
    db.close().await;
    test_db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pending_payments_are_resolved_on_sqlite() {
    stale_pending_payments_are_resolved(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pending_payments_are_resolved_on_postgres() {
    stale_pending_payments_are_resolved(Database::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charging_is_exactly_once_through_faults_and_crashes_on_sqlite() {
    charging_is_exactly_once_through_faults_and_crashes(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charging_is_exactly_once_through_faults_and_crashes_on_postgres() {
    charging_is_exactly_once_through_faults_and_crashes(Database::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_never_exceed_what_was_collected_on_sqlite() {
    refunds_never_exceed_what_was_collected(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_never_exceed_what_was_collected_on_postgres() {
    refunds_never_exceed_what_was_collected(Database::Postgres).await;
}

async fn write_offs_balance_and_the_audit_names_broken_rows(database: Database) {
    let Some(_) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let test_db = TestDatabase::new(database).await;
    let db = Db::connect(&test_db.url).await.unwrap();
    fixture(&db).await;
    let provider = SimulatedProvider::new(FaultConfig::none()).unwrap();
    let mut worker =
        ChargingWorker::new(db.clone(), provider.clone(), ChargingConfig::new("audit"))
            .await
            .unwrap();
    while !worker.step(Utc::now()).await.unwrap().is_idle() {}
    let clean = audit::audit(&db).await.unwrap();
    assert_eq!(clean.violations, Vec::new());

    // Reconciliation reports what only one side recorded.
    assert_eq!(
        settlement::reconcile(&db, &provider).await.unwrap(),
        Vec::new()
    );
    let stray = parkflow_billing::provider::Debit {
        idempotency_key: "charge:not-ours".into(),
        account: "acct-x".into(),
        amount: parkflow_billing::Money::from_minor(500, parkflow_billing::Currency::CNY),
        description: "a debit the platform never asked for".into(),
    };
    use parkflow_billing::provider::PaymentProvider;
    provider.debit(&stray).await;
    let mismatches = settlement::reconcile(&db, &provider).await.unwrap();
    assert_eq!(
        mismatches,
        vec![settlement::Mismatch::ProviderOnly {
            key: "charge:not-ours".into(),
            amount_minor: 500
        }]
    );
    let amnesiac = SimulatedProvider::new(FaultConfig::none()).unwrap();
    let forgotten = settlement::reconcile(&db, &amnesiac).await.unwrap();
    let collected = count(
        &db,
        "SELECT COUNT(*) FROM charges WHERE status = 'succeeded'",
    )
    .await;
    assert_eq!(forgotten.len() as i64, collected);
    assert!(
        forgotten
            .iter()
            .all(|m| matches!(m, settlement::Mismatch::PlatformOnly { .. }))
    );

    // A written-off invoice: bad debt, no longer outstanding, the books still balanced.
    let (invoice,): (Uuid,) =
        query("SELECT id FROM invoices WHERE status = 'open' ORDER BY id LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();
    parkflow_billing::arrears::write_off(&db, invoice, Utc::now())
        .await
        .unwrap();
    assert!(
        parkflow_billing::arrears::write_off(&db, invoice, Utc::now())
            .await
            .is_err(),
        "an invoice is written off once"
    );
    assert_eq!(audit::audit(&db).await.unwrap().violations, Vec::new());
    let settled = settlement::settle(&db, EVERY_DAY.0, EVERY_DAY.1, Utc::now())
        .await
        .unwrap();
    let outstanding: i64 = settled.iter().map(|s| s.outstanding_minor).sum();
    let open_invoices = count(
        &db,
        "SELECT COALESCE(CAST(SUM(amount_minor) AS BIGINT), 0) FROM invoices WHERE status = 'open'",
    )
    .await;
    assert_eq!(outstanding, open_invoices);

    // Plant two faults: a closed session nobody charged, and a journal entry that does not balance.
    let uncharged = Uuid::now_v7();
    let (lot, plate): (String, String) = query("SELECT lot_id, plate FROM sessions LIMIT 1")
        .fetch_one(&db)
        .await
        .unwrap();
    let at = parkflow_db::db_time(Utc::now() - chrono::Duration::hours(1));
    query(
        "INSERT INTO sessions (id, lot_id, plate, status, pass_holder, entered_at, exited_at, fee_minor, currency, updated_at)
         VALUES ($1, $2, $3, 'closed', $4, $5, $5, 300, 'CNY', $5)",
    )
    .bind(uncharged).bind(&lot).bind(&plate).bind(false).bind(at)
    .execute(&db).await.map(drop).unwrap();
    let unbalanced = Uuid::now_v7();
    query(
        "INSERT INTO ledger (entry_id, line, kind, reference, account, amount_minor, currency, created_at)
         VALUES ($1, 0, 'fee', $2, 'receivable:drivers', 100, 'CNY', $3)",
    )
    .bind(unbalanced).bind(Uuid::now_v7()).bind(at)
    .execute(&db).await.map(drop).unwrap();
    let report = audit::audit(&db).await.unwrap();
    let named = |rule: &str, id: Uuid| {
        report
            .violations
            .iter()
            .any(|v| v.rule == rule && v.row.replace('-', "") == id.simple().to_string())
    };
    assert!(
        named("closed session without a charge", uncharged),
        "{:?}",
        report.violations
    );
    assert!(
        named("journal entry does not sum to zero", unbalanced),
        "{:?}",
        report.violations
    );

    // `parkflow audit` says so and exits non-zero.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_parkflow"))
        .args(["audit", "--database-url", &test_db.url])
        .env("PARKFLOW_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("violation closed session without a charge"),
        "{stdout}"
    );
    db.close().await;
    test_db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_offs_balance_and_the_audit_names_broken_rows_on_sqlite() {
    write_offs_balance_and_the_audit_names_broken_rows(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_offs_balance_and_the_audit_names_broken_rows_on_postgres() {
    write_offs_balance_and_the_audit_names_broken_rows(Database::Postgres).await;
}
