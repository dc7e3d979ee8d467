//! `parkflow bench settle`: settlement of many closed sessions — the charging worker (re-price,
//! one charge per session, debit through the simulated provider, journal entries and invoices)
//! then the settlement of every lot's days — beside a raw bulk insert of one charge-shaped row per
//! session into a bare table, the floor of writing anything per session. SQLite in a temp file by
//! default, or a fresh PostgreSQL database (created, then dropped) under the given server URL.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use parkflow_billing::charging::{ChargingConfig, ChargingWorker};
use parkflow_billing::provider::{FaultConfig, SimulatedProvider};
use parkflow_billing::{Stay, Tariff};
use parkflow_db::{Db, Engine, QueryBuilder, db_time, query};
use parkflow_gateway::registry::LotKind;
use parkflow_gateway::store::provision::{DriverPlan, LotPlan, OperatorPlan, Plan, provision};
use parkflow_protocol::{DeviceAuth, LotId, Plate, PlateColor};
use parkflow_sensors_sim::city::random_plate;
use parkflow_session::{ExitMatch, OpenSession, SessionEnd, SessionStatus, repo};
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::{Latency, on_engine, ratio};
use crate::demo::demo_tariff;

/// Every day a charge of these runs can fall on.
const EVERY_DAY: (NaiveDate, NaiveDate) = (
    NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date"),
    NaiveDate::from_ymd_opt(2999, 12, 31).expect("a date"),
);

const OPERATOR: &str = "bench-operator";
const LOTS: usize = 20;
const DRIVERS: usize = 10_000;
/// One driver in this many has an account the simulated provider declines.
const DECLINING_EVERY: usize = 25;
/// Sessions end over this many days before the run.
const DAYS: i64 = 3;
/// Charges per worker step (and rows per commit in the baseline): the most `record` can take, as it
/// writes a step's outcomes in one statement of 4 binds a row (SQLite allows 32,766 binds a
/// statement, PostgreSQL 65,535). Fewer steps is faster: each step's enqueue query walks every
/// session already charged.
fn batch(db: &Db) -> usize {
    match db.pool() {
        parkflow_db::Pool::Sqlite(_) => 8_000,
        parkflow_db::Pool::Postgres(_) => 16_000,
    }
}

/// Rows per INSERT in the baseline: the charging worker's chunk.
const CHARGE_CHUNK: usize = 2_000;

/// A closed session, as inserted and as expected back.
struct Closed {
    id: Uuid,
    lot: usize,
    driver: usize,
    entered_at: DateTime<Utc>,
    exited_at: DateTime<Utc>,
    fee_minor: i64,
}

struct Driver {
    id: Uuid,
    plate: Plate,
    color: PlateColor,
    account: String,
}

struct Lot {
    id: LotId,
    tariff: Tariff,
    /// The tariff's currency code.
    currency: String,
}

/// The lots, drivers and closed sessions of one run.
struct Fleet {
    lots: Vec<Lot>,
    drivers: Vec<Driver>,
    sessions: Vec<Closed>,
}

impl Fleet {
    fn generate(sessions: usize, now: DateTime<Utc>) -> anyhow::Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let lots = (0..LOTS)
            .map(|i| {
                let tariff = demo_tariff(i).validate()?;
                Ok(Lot {
                    id: LotId::parse(&format!("bench-{i:02}"))?,
                    currency: tariff.currency().as_str().to_owned(),
                    tariff,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut seen = HashSet::new();
        let mut drivers = Vec::with_capacity(DRIVERS);
        while drivers.len() < DRIVERS {
            let i = drivers.len();
            let green = i % 10 == 0;
            let plate = random_plate(&mut rng, green);
            if !seen.insert(plate.as_str().to_owned()) {
                continue;
            }
            let prefix = ["acct", "decline"][usize::from(i % DECLINING_EVERY == 0)];
            let color = [PlateColor::Blue, PlateColor::Green][usize::from(green)];
            drivers.push(Driver {
                id: Uuid::new_v4(),
                plate,
                color,
                account: format!("{prefix}-{i}"),
            });
        }
        let mut closed = Vec::with_capacity(sessions);
        for k in 0..sessions {
            let (lot, driver) = (k % LOTS, rng.random_range(0..DRIVERS));
            let exited_at = db_time(now - TimeDelta::seconds(rng.random_range(60..DAYS * 86_400)));
            let entered_at = exited_at - TimeDelta::seconds(rng.random_range(30..10 * 3_600));
            let stay = Stay {
                entered_at,
                exited_at,
                plate_color: Some(drivers[driver].color),
                pass_holder: false,
            };
            let fee_minor = lots[lot].tariff.fee(&stay)?.to_minor()?;
            closed.push(Closed {
                id: Uuid::now_v7(),
                lot,
                driver,
                entered_at,
                exited_at,
                fee_minor,
            });
        }
        Ok(Self {
            lots,
            drivers,
            sessions: closed,
        })
    }

    fn plan(&self) -> Plan {
        Plan {
            operators: vec![OperatorPlan {
                id: OPERATOR.into(),
                name: "Bench".into(),
            }],
            lots: self
                .lots
                .iter()
                .map(|lot| LotPlan {
                    id: lot.id.clone(),
                    operator_id: OPERATOR.into(),
                    name: format!("Bench lot {}", lot.id),
                    kind: LotKind::OffStreet,
                    lat: 30.25,
                    lon: 120.15,
                    capacity: 1_000,
                    time_zone: "Asia/Shanghai".into(),
                    device_auth: DeviceAuth::Signed,
                    gates: Vec::new(),
                    bays: Vec::new(),
                    max_stay_minutes: None,
                    offline_policy: Default::default(),
                    tariffs: vec![lot.tariff.definition().clone()],
                })
                .collect(),
            drivers: self
                .drivers
                .iter()
                .map(|d| DriverPlan {
                    id: d.id,
                    name: "Bench driver".into(),
                    suspended: false,
                    payment_account: Some(d.account.clone().into()),
                    plates: vec![(d.plate.clone(), Some(d.color))],
                })
                .collect(),
            ..Plan::default()
        }
    }
}

/// Provisions the fleet (every driver with a payment account) and inserts the closed sessions.
async fn set_up(db: &Db, fleet: &Fleet, now: DateTime<Utc>) -> anyhow::Result<()> {
    provision(db, &fleet.plan(), now).await?;
    // Through the session repository, as the gate writer stores them: opened, then ended
    // priced, which queues each for its charge. A car has one open session a lot, so a
    // driver's later stays in a lot go in later rounds.
    let mut rounds: Vec<Vec<&Closed>> = Vec::new();
    let mut stays: HashMap<(usize, usize), usize> = HashMap::new();
    for session in &fleet.sessions {
        let round = stays.entry((session.lot, session.driver)).or_default();
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(session);
        *round += 1;
    }
    let mut tx = db.begin_write().await?;
    for chunk in rounds
        .iter()
        .flat_map(|round| round.chunks(repo::ROWS_PER_STATEMENT))
    {
        let opens: Vec<OpenSession> = chunk
            .iter()
            .map(|s| OpenSession {
                id: s.id,
                lot: fleet.lots[s.lot].id.clone(),
                plate: fleet.drivers[s.driver].plate.clone(),
                plate_color: Some(fleet.drivers[s.driver].color),
                pass_holder: false,
                entry_gate: None,
                entry_event: None,
                entered_at: s.entered_at,
            })
            .collect();
        let ends: Vec<SessionEnd> = chunk
            .iter()
            .map(|s| {
                let (lot, driver) = (&fleet.lots[s.lot], &fleet.drivers[s.driver]);
                SessionEnd {
                    id: s.id,
                    status: SessionStatus::Closed,
                    exit_gate: None,
                    exit_event: None,
                    exited_at: s.exited_at,
                    exit_match: Some((ExitMatch::Exact, 1.0)),
                    tariff_from: Some(lot.tariff.effective_from()),
                    billed_plate: Some(driver.plate.clone()),
                    plate_color: Some(driver.color),
                    pass_holder: false,
                    fee: Some((s.fee_minor, lot.currency.clone())),
                }
            })
            .collect();
        repo::open_sessions(&mut tx, &opens.iter().collect::<Vec<_>>()).await?;
        repo::end_sessions(&mut tx, &ends.iter().collect::<Vec<_>>()).await?;
    }
    tx.commit().await?;
    // Statistics, as a running server's autovacuum would have gathered: without them the planner
    // joins every uncharged session to its driver before the enqueue query sorts and limits.
    if db.engine() == Engine::Postgres {
        query("ANALYZE").execute(db).await?;
    }
    Ok(())
}

/// `charges` without its keys, constraints and indexes.
const BASELINE_TABLE: &str = "CREATE TABLE bench_charges (id {UUID}, session_id {UUID}, operator_id TEXT,
    lot_id TEXT, local_day TEXT, driver_id {UUID}, account TEXT, amount_minor {BIGINT}, currency TEXT,
    method TEXT, status TEXT, provider TEXT, provider_ref TEXT, attempts INTEGER DEFAULT 0,
    next_attempt_at {TIME}, locked_by TEXT, locked_until {TIME}, created_at {TIME}, updated_at {TIME})";

/// Writes one charge-shaped row per session, a worker's batch a transaction; returns the time taken.
async fn baseline(db: &Db, fleet: &Fleet, now: DateTime<Utc>) -> anyhow::Result<Duration> {
    let (uuid, bigint, time) = match db.engine() {
        Engine::Sqlite => ("BLOB", "INTEGER", "TEXT"),
        Engine::Postgres => ("UUID", "BIGINT", "TIMESTAMPTZ"),
    };
    let create = BASELINE_TABLE
        .replace("{UUID}", uuid)
        .replace("{BIGINT}", bigint)
        .replace("{TIME}", time);
    query(create).execute(db).await?;
    // Only the writing is timed: the rows' values are made before the clock starts.
    let rows: Vec<(&Closed, String, Uuid)> = fleet
        .sessions
        .iter()
        .map(|s| {
            let zone = fleet.lots[s.lot].tariff.time_zone();
            let day = s.exited_at.with_timezone(&zone).date_naive().to_string();
            (s, day, Uuid::now_v7())
        })
        .collect();
    let now = db_time(now);
    let started = Instant::now();
    for commit in rows.chunks(batch(db)) {
        let mut tx = db.begin_write().await?;
        for chunk in commit.chunks(CHARGE_CHUNK) {
            let mut builder = QueryBuilder::new(
                "INSERT INTO bench_charges (id, session_id, operator_id, lot_id, local_day, driver_id, account,
                     amount_minor, currency, method, status, next_attempt_at, created_at, updated_at) ",
            );
            builder.push_values(chunk, |mut row, (s, day, id)| {
                let (lot, driver) = (&fleet.lots[s.lot], &fleet.drivers[s.driver]);
                row.push_bind(*id)
                    .push_bind(s.id)
                    .push_bind(OPERATOR)
                    .push_bind(lot.id.as_str())
                    .push_bind(day.as_str())
                    .push_bind(driver.id)
                    .push_bind(driver.account.as_str())
                    .push_bind(s.fee_minor)
                    .push_bind(lot.currency.as_str())
                    .push_bind("auto_debit")
                    .push_bind("pending")
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(now);
            });
            builder.build().execute(&mut tx).await?;
        }
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

/// What the run left behind: charges, sessions charged twice, succeeded, declined, invoices,
/// journal entries.
type Figures = (i64, i64, i64, i64, i64, i64);
const FIGURES: &str = "SELECT (SELECT COUNT(*) FROM charges), (SELECT COUNT(*) - COUNT(DISTINCT session_id) FROM charges),
    (SELECT COUNT(*) FROM charges WHERE status = 'succeeded'), (SELECT COUNT(*) FROM charges WHERE status = 'declined'),
    (SELECT COUNT(*) FROM invoices), (SELECT COUNT(DISTINCT entry_id) FROM ledger)";

/// Runs the worker until a step finds nothing to do; returns each step's duration. The provider
/// answers every debit at once, so no charge may be left waiting for an answer.
async fn charge_all(
    worker: &mut ChargingWorker<SimulatedProvider>,
    db: &Db,
) -> anyhow::Result<Vec<Duration>> {
    let mut steps = Vec::new();
    loop {
        let started = Instant::now();
        let idle = worker.step(Utc::now()).await?.is_idle();
        steps.push(started.elapsed());
        if idle {
            break;
        }
    }
    let (waiting,): (i64,) =
        query("SELECT COUNT(*) FROM charges WHERE status IN ('pending', 'unknown')")
            .fetch_one(db)
            .await?;
    anyhow::ensure!(waiting == 0, "{waiting} charges still unanswered");
    Ok(steps)
}

/// The scenario against a database at `url`, which it migrates and fills.
async fn scenario(url: &str, engine: &str, sessions: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let now = Utc::now();
    let fleet = Fleet::generate(sessions, now)?;
    let db = Db::connect(url)
        .await
        .context("failed to open the bench database")?;
    let batch = batch(&db);
    println!(
        "scenario=settle engine={engine} sessions={sessions} lots={LOTS} drivers={DRIVERS} batch={batch}"
    );
    set_up(&db, &fleet, now).await?;
    println!("setup_s={:.3}", started.elapsed().as_secs_f64());

    let baseline = baseline(&db, &fleet, now).await?.as_secs_f64();
    println!("baseline_insert_s={baseline:.3}");

    let provider = SimulatedProvider::new(FaultConfig::none())?;
    let mut config = ChargingConfig::new("bench");
    config.batch = batch;
    let mut worker = ChargingWorker::new(db.clone(), provider.clone(), config).await?;
    let started = Instant::now();
    let mut steps = charge_all(&mut worker, &db).await?;
    let charge = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let settlements =
        parkflow_billing::settlement::settle(&db, EVERY_DAY.0, EVERY_DAY.1, Utc::now()).await?;
    let settle = started.elapsed().as_secs_f64();
    let total = charge + settle;
    let (first, last) = (steps.first().copied(), steps.last().copied());
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1_000.0);
    println!("charge_s={charge:.3} settle_s={settle:.3} total_s={total:.3}");
    println!(
        "steps={} {} step_first_ms={:.1} step_last_ms={:.1}",
        steps.len(),
        Latency::of(&mut steps).line("step"),
        ms(first),
        ms(last)
    );

    let started = Instant::now();
    let audit = parkflow_billing::audit::audit(&db).await?;
    let audit_s = started.elapsed().as_secs_f64();
    let (charges, duplicates, succeeded, declined, invoices, entries): Figures =
        query(FIGURES).fetch_one(&db).await?;
    let gross: i64 = settlements.iter().map(|s| s.gross_minor).sum();
    let fees: i64 = fleet.sessions.iter().map(|s| s.fee_minor).sum();
    let applied = i64::try_from(provider.applied_count())?;
    let violations = audit.violations.len();
    println!(
        "charges={charges} duplicates={duplicates} violations={violations} audit_s={audit_s:.3}"
    );
    println!(
        "succeeded={succeeded} declined={declined} invoices={invoices} ledger_entries={entries} \
         applied={applied} settlements={} gross_minor={gross} fees_minor={fees}",
        settlements.len()
    );
    println!(
        "{}",
        ratio("settle_vs_bulk_insert", total / baseline, 3.0, true)
    );
    let goal = if engine == "postgres" { 10.0 } else { 5.0 };
    println!("{}", ratio("settle_seconds", total, goal, true));
    db.close().await;

    let checks = [
        (charges == i64::try_from(sessions)?, "charges != sessions"),
        (duplicates == 0, "a session charged twice"),
        (violations == 0, "audit violations"),
        (gross == fees, "settled gross != sessions' fees"),
        (
            applied == succeeded,
            "provider's debits != succeeded charges",
        ),
    ];
    let wrong: Vec<&str> = checks.iter().filter(|c| !c.0).map(|c| c.1).collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "settle bench is wrong: {}",
        wrong.join("; ")
    );
    Ok(())
}

/// Runs the scenario on SQLite, or on PostgreSQL given a `postgres://` URL.
pub async fn run(sessions: usize, database_url: Option<String>) -> anyhow::Result<()> {
    on_engine(database_url, |url, engine| async move {
        scenario(&url, engine, sessions).await
    })
    .await
}

#[cfg(test)]
mod tests {
    /// `PARKFLOW_BENCH_SESSIONS` (default 20,000) on SQLite, and on PostgreSQL when
    /// `PARKFLOW_BENCH_PG` names a server.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a benchmark: run by hand"]
    async fn settle_runs_on_sqlite_and_postgres() {
        let sessions =
            std::env::var("PARKFLOW_BENCH_SESSIONS").map_or(20_000, |n| n.parse().unwrap());
        super::run(sessions, None).await.unwrap();
        if let Ok(url) = std::env::var("PARKFLOW_BENCH_PG") {
            super::run(sessions, Some(url)).await.unwrap();
        }
    }
}
