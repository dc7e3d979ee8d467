//! `parkflow bench settle`: settlement of many closed sessions — the charging worker (re-price,
//! one charge per session, debit through the simulated provider, journal entries and invoices)
//! then the settlement of every lot's days — beside a raw bulk insert of one charge-shaped row per
//! session into a bare table, the floor of writing anything per session. SQLite in a temp file by
//! default, or a fresh PostgreSQL database (created, then dropped) under the given server URL.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use parkflow_billing::charging::{ChargingConfig, ChargingWorker};
use parkflow_billing::provider::{FaultConfig, SimulatedProvider};
use parkflow_billing::{Stay, Tariff};
use parkflow_db::{Db, db_time, on_db};
use parkflow_gateway::registry::LotKind;
use parkflow_gateway::store::provision::{DriverPlan, LotPlan, OperatorPlan, Plan, provision};
use parkflow_protocol::{DeviceAuth, LotId, PlateColor};
use parkflow_sensors_sim::city::random_plate;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, PgConnection, QueryBuilder};
use uuid::Uuid;

use super::{Latency, ratio};
use crate::demo::demo_tariff;

const OPERATOR: &str = "bench-operator";
const LOTS: usize = 20;
const DRIVERS: usize = 10_000;
/// One driver in this many has an account the simulated provider declines.
const DECLINING_EVERY: usize = 25;
/// Sessions end over this many days before the run.
const DAYS: i64 = 3;
/// Charges per worker step (and rows per commit in the baseline). `record` writes a step's
/// outcomes in one statement of 4 binds a row, so SQLite's limit caps this at 8,190.
const BATCH: usize = 5_000;
/// SQLite's bind limit per statement (PostgreSQL's is 65,535).
const MAX_BINDS: usize = 32_766;
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
    plate: String,
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
            let plate = random_plate(&mut rng, green).as_str().to_owned();
            if !seen.insert(plate.clone()) {
                continue;
            }
            let prefix = if i % DECLINING_EVERY == 0 {
                "decline"
            } else {
                "acct"
            };
            drivers.push(Driver {
                id: Uuid::new_v4(),
                plate,
                color: if green {
                    PlateColor::Green
                } else {
                    PlateColor::Blue
                },
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
                    plates: parkflow_protocol::Plate::parse(&d.plate)
                        .into_iter()
                        .map(|p| (p, Some(d.color)))
                        .collect(),
                })
                .collect(),
            ..Plan::default()
        }
    }
}

/// Provisions the fleet, gives every driver a payment account and inserts the closed sessions.
async fn set_up(db: &Db, fleet: &Fleet, now: DateTime<Utc>) -> anyhow::Result<()> {
    provision(db, &fleet.plan(), now).await?;
    let now = db_time(now);
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        for chunk in fleet.drivers.chunks(MAX_BINDS / 2) {
            let mut builder = QueryBuilder::new("WITH v (id, account) AS (");
            builder.push_values(chunk, |mut row, d| {
                row.push_bind(d.id).push_bind(d.account.as_str());
            });
            builder.push(") UPDATE drivers SET payment_account = v.account FROM v WHERE drivers.id = v.id");
            builder.build().execute(&mut *tx).await?;
        }
        for chunk in fleet.sessions.chunks(MAX_BINDS / 13) {
            let mut builder = QueryBuilder::new(
                "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, entered_at, exited_at,
                     exit_match, tariff_from, fee_minor, currency, updated_at) ",
            );
            builder.push_values(chunk, |mut row, s| {
                let lot = &fleet.lots[s.lot];
                let driver = &fleet.drivers[s.driver];
                row.push_bind(s.id)
                    .push_bind(lot.id.as_str())
                    .push_bind(driver.plate.as_str())
                    .push_bind(driver.color.as_str())
                    .push_bind("closed")
                    .push_bind(false)
                    .push_bind(s.entered_at)
                    .push_bind(s.exited_at)
                    .push_bind("exact")
                    .push_bind(db_time(lot.tariff.effective_from()))
                    .push_bind(s.fee_minor)
                    .push_bind(lot.currency.as_str())
                    .push_bind(now);
            });
            builder.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// A row of the baseline table: what the charging worker writes for a session.
struct ChargeRow<'a> {
    id: Uuid,
    session_id: Uuid,
    lot_id: &'a str,
    local_day: String,
    driver_id: Uuid,
    account: &'a str,
    amount_minor: i64,
    currency: &'a str,
}

/// `charges` without its keys, constraints and indexes.
const BASELINE_TABLE: &str = "CREATE TABLE bench_charges (id {UUID}, session_id {UUID}, operator_id TEXT,
    lot_id TEXT, local_day TEXT, driver_id {UUID}, account TEXT, amount_minor {BIGINT}, currency TEXT,
    method TEXT, status TEXT, provider TEXT, provider_ref TEXT, attempts INTEGER DEFAULT 0,
    next_attempt_at {TIME}, locked_by TEXT, locked_until {TIME}, created_at {TIME}, updated_at {TIME})";

/// Writes one charge-shaped row per session, `BATCH` rows a transaction; returns the time taken.
async fn baseline(db: &Db, fleet: &Fleet, now: DateTime<Utc>) -> anyhow::Result<Duration> {
    let types: &[(&str, &str)] = match db {
        Db::Sqlite(_) => &[
            ("{UUID}", "BLOB"),
            ("{BIGINT}", "INTEGER"),
            ("{TIME}", "TEXT"),
        ],
        Db::Postgres(_) => &[
            ("{UUID}", "UUID"),
            ("{BIGINT}", "BIGINT"),
            ("{TIME}", "TIMESTAMPTZ"),
        ],
    };
    let create = types
        .iter()
        .fold(BASELINE_TABLE.to_owned(), |sql, (from, to)| {
            sql.replace(from, to)
        });
    on_db!(db, pool => sqlx::query(&create).execute(pool).await.map(drop)?);
    let rows: Vec<ChargeRow> = fleet
        .sessions
        .iter()
        .map(|s| {
            let lot = &fleet.lots[s.lot];
            let driver = &fleet.drivers[s.driver];
            ChargeRow {
                id: Uuid::now_v7(),
                session_id: s.id,
                lot_id: lot.id.as_str(),
                local_day: s
                    .exited_at
                    .with_timezone(&lot.tariff.time_zone())
                    .date_naive()
                    .to_string(),
                driver_id: driver.id,
                account: driver.account.as_str(),
                amount_minor: s.fee_minor,
                currency: lot.currency.as_str(),
            }
        })
        .collect();
    let now = db_time(now);
    let started = Instant::now();
    on_db!(db, pool => {
        for batch in rows.chunks(BATCH) {
            let mut tx = pool.begin().await?;
            for chunk in batch.chunks(CHARGE_CHUNK) {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO bench_charges (id, session_id, operator_id, lot_id, local_day, driver_id, account,
                         amount_minor, currency, method, status, next_attempt_at, created_at, updated_at) ",
                );
                builder.push_values(chunk, |mut row, c| {
                    row.push_bind(c.id)
                        .push_bind(c.session_id)
                        .push_bind(OPERATOR)
                        .push_bind(c.lot_id)
                        .push_bind(c.local_day.as_str())
                        .push_bind(c.driver_id)
                        .push_bind(c.account)
                        .push_bind(c.amount_minor)
                        .push_bind(c.currency)
                        .push_bind("auto_debit")
                        .push_bind("pending")
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(now);
                });
                builder.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
    });
    Ok(started.elapsed())
}

async fn count(db: &Db, sql: &str) -> anyhow::Result<i64> {
    Ok(on_db!(db, pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?))
}

/// Runs the worker until a step finds nothing to do and no charge awaits an answer; returns
/// each step's duration.
async fn charge_all(
    worker: &mut ChargingWorker<SimulatedProvider>,
    db: &Db,
) -> anyhow::Result<Vec<Duration>> {
    let mut steps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        let report = worker.step(Utc::now()).await?;
        steps.push(started.elapsed());
        if report.is_idle() {
            let waiting = count(
                db,
                "SELECT COUNT(*) FROM charges WHERE status IN ('pending', 'unknown')",
            )
            .await?;
            if waiting == 0 {
                return Ok(steps);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{waiting} charges still unanswered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The scenario against a database at `url`, which it migrates and fills.
async fn scenario(url: &str, engine: &str, sessions: usize) -> anyhow::Result<()> {
    println!(
        "scenario=settle engine={engine} sessions={sessions} lots={LOTS} drivers={DRIVERS} batch={BATCH}"
    );
    let started = Instant::now();
    let now = Utc::now();
    let fleet = Fleet::generate(sessions, now)?;
    let db = Db::connect(url)
        .await
        .context("failed to open the bench database")?;
    set_up(&db, &fleet, now).await?;
    println!("setup_s={:.3}", started.elapsed().as_secs_f64());

    let baseline = baseline(&db, &fleet, now).await?.as_secs_f64();
    println!("baseline_insert_s={baseline:.3}");

    let provider = SimulatedProvider::new(FaultConfig::none())?;
    let mut config = ChargingConfig::new("bench");
    config.batch = BATCH;
    let mut worker = ChargingWorker::new(db.clone(), provider.clone(), config).await?;
    let started = Instant::now();
    let mut steps = charge_all(&mut worker, &db).await?;
    let charge = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let settlements =
        parkflow_billing::settlement::settle(&db, "2000-01-01", "2999-12-31", Utc::now()).await?;
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
    let charges = count(&db, "SELECT COUNT(*) FROM charges").await?;
    let duplicates = count(
        &db,
        "SELECT COUNT(*) - COUNT(DISTINCT session_id) FROM charges",
    )
    .await?;
    let succeeded = count(
        &db,
        "SELECT COUNT(*) FROM charges WHERE status = 'succeeded'",
    )
    .await?;
    let declined = count(
        &db,
        "SELECT COUNT(*) FROM charges WHERE status = 'declined'",
    )
    .await?;
    let invoices = count(&db, "SELECT COUNT(*) FROM invoices").await?;
    let entries = count(&db, "SELECT COUNT(DISTINCT entry_id) FROM ledger").await?;
    let gross: i64 = settlements.iter().map(|s| s.gross_minor).sum();
    let fees: i64 = fleet.sessions.iter().map(|s| s.fee_minor).sum();
    let applied = provider.applied_count();
    println!(
        "charges={charges} duplicates={duplicates} violations={} audit_s={audit_s:.3}",
        audit.violations.len()
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

    let expected = i64::try_from(sessions)?;
    let mut wrong = Vec::new();
    for (broken, what) in [
        (charges != expected, "charges differ from sessions"),
        (duplicates != 0, "a session was charged twice"),
        (!audit.violations.is_empty(), "the audit found violations"),
        (
            gross != fees,
            "settled gross differs from the sessions' fees",
        ),
        (
            i64::try_from(applied)? != succeeded,
            "the provider moved money for other charges",
        ),
    ] {
        if broken {
            wrong.push(what);
        }
    }
    anyhow::ensure!(
        wrong.is_empty(),
        "settle bench is wrong: {}",
        wrong.join("; ")
    );
    Ok(())
}

/// Runs the scenario on SQLite (a temp file) or, given a `postgres://` URL, in a fresh database
/// created on that server and dropped afterwards, and prints its figures.
pub async fn run(sessions: usize, database_url: Option<String>) -> anyhow::Result<()> {
    let Some(url) = database_url else {
        let dir = std::env::temp_dir().join(format!("parkflow-bench-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite:{}", dir.join("bench.db").display());
        let result = scenario(&url, "sqlite", sessions).await;
        let _ = std::fs::remove_dir_all(&dir);
        return result;
    };
    anyhow::ensure!(
        url.starts_with("postgres:") || url.starts_with("postgresql:"),
        "expected a postgres:// URL"
    );
    let mut admin = PgConnection::connect(&url)
        .await
        .context("failed to connect to postgres")?;
    let name = format!("parkflow_bench_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let mut fresh = url::Url::parse(&url)?;
    fresh.set_path(&name);
    let result = scenario(fresh.as_str(), "postgres", sessions).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .context("failed to drop the bench database")?;
    admin.close().await?;
    result
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
