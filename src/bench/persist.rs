//! `parkflow bench persist`: the gate path's session writes — each car's entry (session opened,
//! read and decision recorded) and exit (session closed and priced, queued for its charge, read
//! recorded), one batch per read, group-committed by the gateway's store writer — beside a raw
//! bulk insert of as many rows into bare tables with the same columns, a writer's group a
//! transaction. SQLite in a temp file, or a fresh PostgreSQL database under the given server URL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use parkflow_db::{Db, Engine, QueryBuilder, db_time, query};
use parkflow_gateway::metrics::Metrics;
use parkflow_gateway::registry::{GateDirection, LotKind};
use parkflow_gateway::session::{ExitMatch, OpenSession, SessionEnd, SessionStatus};
use parkflow_gateway::store::provision::{LotPlan, OperatorPlan, Plan, provision};
use parkflow_gateway::store::writer::{Batch, GateReadRecord, MAX_BATCH, Write, writer};
use parkflow_protocol::{
    DeviceAuth, Direction, EventId, GateAction, GateCommand, GateId, GateReason, LotId, Plate,
    PlateColor,
};
use parkflow_sensors_sim::city::random_plate;
use rand::SeedableRng;
use uuid::Uuid;

use super::{on_engine, ratio};
use crate::demo::demo_tariff;

/// Rows per INSERT statement in the baseline (SQLite allows 32,766 binds a statement).
const ROWS_PER_INSERT: usize = 1_000;

/// One car's visit: what the gate path writes for its entry and its exit.
pub struct Visit {
    session: OpenSession,
    end: SessionEnd,
    entry: GateReadRecord,
    exit: GateReadRecord,
}

impl Visit {
    /// The writes of the car's entry and of its exit, one batch each, as the gate path submits them.
    pub fn writes(self) -> (Vec<Write>, Vec<Write>) {
        (
            vec![
                Write::OpenSession(self.session),
                Write::GateRead(Box::new(self.entry)),
            ],
            vec![
                Write::EndSession(self.end),
                Write::GateRead(Box::new(self.exit)),
            ],
        )
    }
}

fn read(
    lot: &LotId,
    gate: &GateId,
    plate: &Plate,
    direction: Direction,
    at: DateTime<Utc>,
    session: Uuid,
) -> anyhow::Result<GateReadRecord> {
    let event_id = EventId::parse(&Uuid::new_v4().to_string())?;
    Ok(GateReadRecord {
        lot: lot.clone(),
        gate: gate.clone(),
        event_id: event_id.clone(),
        plate: plate.clone(),
        plate_color: Some(PlateColor::Blue),
        confidence: 0.97,
        direction,
        observed_at: at,
        received_at: at,
        command: GateCommand::new(
            Uuid::now_v7(),
            event_id,
            GateAction::Open,
            match direction {
                Direction::Entry => GateReason::Entered,
                Direction::Exit => GateReason::BillLater,
            },
            at,
        ),
        amount_due_minor: None,
        session_id: Some(session),
        decided_offline: false,
        owed_minor: None,
    })
}

/// `n` cars, each with a plate of its own, that entered 90 minutes before `now` and stayed 75
/// (closed, priced at 11.00).
pub fn visits(
    lot: &LotId,
    gate: &GateId,
    n: usize,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Visit>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let tariff_from = demo_tariff(0).effective_from;
    // Every car a different plate: a plate has at most one open session in a lot.
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut plates = std::iter::repeat_with(|| random_plate(&mut rng, false))
        .filter(|plate| seen.insert(plate.clone()));
    (0..n)
        .map(|i| {
            let plate = plates.next().context("plates run out")?;
            let entered_at =
                now - chrono::Duration::minutes(90) + chrono::Duration::milliseconds(i as i64);
            let exited_at = entered_at + chrono::Duration::minutes(75);
            let id = Uuid::now_v7();
            let entry = read(lot, gate, &plate, Direction::Entry, entered_at, id)?;
            let exit = read(lot, gate, &plate, Direction::Exit, exited_at, id)?;
            Ok(Visit {
                session: OpenSession {
                    id,
                    lot: lot.clone(),
                    plate: plate.clone(),
                    plate_color: Some(PlateColor::Blue),
                    pass_holder: false,
                    entry_gate: Some(gate.clone()),
                    entry_event: Some(entry.event_id.clone()),
                    entered_at,
                },
                end: SessionEnd {
                    id,
                    status: SessionStatus::Closed,
                    exit_gate: Some(gate.clone()),
                    exit_event: Some(exit.event_id.clone()),
                    exited_at,
                    exit_match: Some((ExitMatch::Exact, 1.0)),
                    tariff_from: Some(tariff_from),
                    billed_plate: Some(plate),
                    plate_color: Some(PlateColor::Blue),
                    pass_holder: false,
                    fee: Some((1_100, "CNY".into())),
                },
                entry,
                exit,
            })
        })
        .collect()
}

/// Bare tables with the columns the gate path writes, without keys, constraints or indexes.
const BASELINE_TABLES: [&str; 3] = [
    "CREATE TABLE bench_sessions (id {UUID}, lot_id TEXT, plate TEXT, plate_color TEXT, status TEXT,
        pass_holder BOOLEAN, entry_gate TEXT, entry_event_id TEXT, entered_at {TIME}, exit_gate TEXT,
        exit_event_id TEXT, exited_at {TIME}, fee_minor {BIGINT}, currency TEXT)",
    "CREATE TABLE bench_reads (lot_id TEXT, gate_id TEXT, event_id TEXT, plate TEXT, direction TEXT,
        observed_at {TIME}, received_at {TIME}, command_id {UUID}, action TEXT, reason TEXT,
        issued_at {TIME}, session_id {UUID})",
    "CREATE TABLE bench_queue (session_id {UUID}, queued_at {TIME})",
];

/// Inserts each visit's rows (a closed session, two reads, a queued charge) in bulk, `MAX_BATCH`
/// reads' worth a transaction; returns the time taken.
async fn baseline(db: &Db, visits: &[Visit]) -> anyhow::Result<Duration> {
    let (uuid, bigint, time) = match db.engine() {
        Engine::Sqlite => ("BLOB", "INTEGER", "TEXT"),
        Engine::Postgres => ("UUID", "BIGINT", "TIMESTAMPTZ"),
    };
    for table in BASELINE_TABLES {
        let create = table
            .replace("{UUID}", uuid)
            .replace("{BIGINT}", bigint)
            .replace("{TIME}", time);
        query(create).execute(db).await?;
    }
    let started = Instant::now();
    for group in visits.chunks(MAX_BATCH / 2) {
        let mut tx = db.begin_write().await?;
        for chunk in group.chunks(ROWS_PER_INSERT / 2) {
            let mut sessions = QueryBuilder::new(
                "INSERT INTO bench_sessions (id, lot_id, plate, plate_color, status, pass_holder, entry_gate,
                     entry_event_id, entered_at, exit_gate, exit_event_id, exited_at, fee_minor, currency) ",
            );
            sessions.push_values(chunk, |mut row, v| {
                row.push_bind(v.session.id)
                    .push_bind(v.session.lot.as_str())
                    .push_bind(v.session.plate.as_str())
                    .push_bind(PlateColor::Blue.as_str())
                    .push_bind(SessionStatus::Closed.as_str())
                    .push_bind(false)
                    .push_bind(v.entry.gate.as_str())
                    .push_bind(v.entry.event_id.as_str())
                    .push_bind(db_time(v.session.entered_at))
                    .push_bind(v.exit.gate.as_str())
                    .push_bind(v.exit.event_id.as_str())
                    .push_bind(db_time(v.end.exited_at))
                    .push_bind(1_100i64)
                    .push_bind("CNY");
            });
            sessions.build().execute(&mut tx).await?;
            let mut reads = QueryBuilder::new(
                "INSERT INTO bench_reads (lot_id, gate_id, event_id, plate, direction, observed_at,
                     received_at, command_id, action, reason, issued_at, session_id) ",
            );
            reads.push_values(
                chunk.iter().flat_map(|v| [&v.entry, &v.exit]),
                |mut row, r| {
                    row.push_bind(r.lot.as_str())
                        .push_bind(r.gate.as_str())
                        .push_bind(r.event_id.as_str())
                        .push_bind(r.plate.as_str())
                        .push_bind(r.direction.as_str())
                        .push_bind(db_time(r.observed_at))
                        .push_bind(db_time(r.received_at))
                        .push_bind(r.command.command_id)
                        .push_bind(r.command.action.as_str())
                        .push_bind(r.command.reason.as_str())
                        .push_bind(db_time(r.command.issued_at))
                        .push_bind(r.session_id);
                },
            );
            reads.build().execute(&mut tx).await?;
            let mut queue = QueryBuilder::new("INSERT INTO bench_queue (session_id, queued_at) ");
            queue.push_values(chunk, |mut row, v| {
                row.push_bind(v.session.id)
                    .push_bind(db_time(v.end.exited_at));
            });
            queue.build().execute(&mut tx).await?;
        }
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

/// The gate path: every entry's batch, then every exit's, through the store writer; returns the
/// time until the writer has committed the last. `fence`: as a gateway node writes, each
/// transaction fenced on this node's lease of the visits' lot.
async fn gate_path(db: &Db, visits: Vec<Visit>, fence: Option<(&str, LotId, i64)>) -> Duration {
    let (handle, task) = writer(db.clone(), Arc::new(Metrics::new()));
    let (task, lease) = match fence {
        Some((node, lot, token)) => (task.fenced(node), Some((lot, token))),
        None => (task, None),
    };
    let running = tokio::spawn(task.run());
    let started = Instant::now();
    let mut exits = Vec::with_capacity(visits.len());
    for visit in visits {
        let (entry, exit) = visit.writes();
        handle
            .submit(Batch {
                writes: entry,
                ticket: None,
                durable: None,
                lease: lease.clone(),
            })
            .await;
        exits.push(exit);
    }
    for writes in exits {
        handle
            .submit(Batch {
                writes,
                ticket: None,
                durable: None,
                lease: lease.clone(),
            })
            .await;
    }
    drop(handle);
    let _ = running.await;
    started.elapsed()
}

async fn scenario(url: &str, engine: &str, sessions: usize) -> anyhow::Result<()> {
    let db = Db::connect(url)
        .await
        .context("failed to open the bench database")?;
    println!("scenario=persist engine={engine} sessions={sessions} max_batch={MAX_BATCH}");
    let now = Utc::now();
    let lot = LotId::parse("persist-lot")?;
    let gate = GateId::parse("lane-1")?;
    provision(&db, &lot_plan(&lot, &gate, sessions), now).await?;

    let baseline_visits = visits(&lot, &gate, sessions, now)?;
    let baseline = baseline(&db, &baseline_visits).await?.as_secs_f64();
    drop(baseline_visits);
    let gate_visits = visits(&lot, &gate, sessions, now)?;
    let persist = gate_path(&db, gate_visits, None).await.as_secs_f64();
    let rows = sessions as f64 * 4.0;
    println!(
        "baseline_insert_s={baseline:.3} baseline_rows_per_s={:.0} persist_s={persist:.3} persist_sessions_per_s={:.0}",
        rows / baseline,
        sessions as f64 / persist
    );
    check(&db, &lot, sessions).await?;
    println!(
        "{}",
        ratio("persist_vs_bulk_insert", baseline / persist, 0.3, false)
    );
    if db.engine() == Engine::Postgres {
        lease_rounds(&db).await?;
        fenced(&db, &gate, sessions, persist, now).await?;
    }
    db.close().await;
    Ok(())
}

/// Counts what the gate path stored for `lot`: every visit once, closed, its two reads, queued.
async fn check(db: &Db, lot: &LotId, sessions: usize) -> anyhow::Result<()> {
    let (stored, closed, reads, queued): (i64, i64, i64, i64) = query(
        "SELECT (SELECT COUNT(*) FROM sessions WHERE lot_id = $2),
                (SELECT COUNT(*) FROM sessions WHERE status = $1 AND lot_id = $2),
                (SELECT COUNT(*) FROM gate_reads WHERE lot_id = $2),
                (SELECT COUNT(*) FROM charge_queue q JOIN sessions s ON s.id = q.session_id
                  WHERE s.lot_id = $2)",
    )
    .bind(SessionStatus::Closed.as_str())
    .bind(lot.as_str())
    .fetch_one(db)
    .await?;
    let expected = i64::try_from(sessions)?;
    println!(
        "lot={lot} sessions_stored={stored} closed={closed} reads={reads} queued={queued} lost={}",
        expected - closed
    );
    anyhow::ensure!(
        stored == expected && closed == expected && reads == 2 * expected && queued == expected,
        "persist bench is wrong: {stored} sessions, {closed} closed, {reads} reads, {queued} queued for {sessions}"
    );
    Ok(())
}

/// The same gate path as a gateway node writes it (`--node-id`): every transaction fenced on
/// the node's lease of the lot. Prints its time beside the unfenced one.
async fn fenced(
    db: &Db,
    gate: &GateId,
    sessions: usize,
    unfenced_s: f64,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    use parkflow_gateway::store::leases::{Held, Leases};
    let lot = LotId::parse("persist-lot-fenced")?;
    let mut plan = lot_plan(&lot, gate, sessions);
    plan.operators.clear();
    provision(db, &plan, now).await?;
    // Alone now (the lease rounds' nodes are gone): it takes every lot, this one included, and
    // renews its leases every second while it writes, as a node does.
    let leases = Leases::new(
        db.clone(),
        "bench-node",
        parkflow_gateway::cluster::LEASE_TTL,
    )?;
    let round = leases.round(&Held::new()).await?;
    let renewing = {
        let (leases, mut held) = (leases.clone(), round.held.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(parkflow_gateway::cluster::ROUND_EVERY).await;
                match leases.round(&held).await {
                    Ok(round) => held = round.held,
                    Err(error) => eprintln!("lease round failed: {error}"),
                }
            }
        })
    };
    let token = *round.held.get(lot.as_str()).with_context(|| {
        format!(
            "the bench node holds no lease on its lot (it holds {} lots, {} nodes live)",
            round.held.len(),
            round.nodes
        )
    })?;
    let fenced_visits = visits(&lot, gate, sessions, now)?;
    let fenced = gate_path(db, fenced_visits, Some(("bench-node", lot.clone(), token)))
        .await
        .as_secs_f64();
    renewing.abort();
    println!(
        "fenced_s={fenced:.3} fenced_sessions_per_s={:.0} fence_cost={:.3}",
        sessions as f64 / fenced,
        fenced / unfenced_s
    );
    check(db, &lot, sessions).await
}

/// What the leases cost a city's worth of lots: one node's first round (claims every lot), a
/// round that only renews, and a second node's arrival (the first gives half back, the second
/// claims it).
async fn lease_rounds(db: &Db) -> anyhow::Result<()> {
    use parkflow_gateway::store::leases::{Held, Leases};
    const LOTS: usize = 2_420;
    let ids: Vec<String> = (0..LOTS).map(|i| format!("lease-lot-{i:04}")).collect();
    let mut plan = lot_plan(&LotId::parse(&ids[0])?, &GateId::parse("g")?, 1);
    let template = plan.lots.remove(0);
    plan.operators.clear();
    for id in &ids {
        plan.lots.push(LotPlan {
            id: LotId::parse(id)?,
            name: id.clone(),
            gates: Vec::new(),
            ..template.clone()
        });
    }
    provision(db, &plan, Utc::now()).await?;
    let ttl = parkflow_gateway::cluster::LEASE_TTL;
    let a = Leases::new(db.clone(), "lease-a", ttl)?;
    let b = Leases::new(db.clone(), "lease-b", ttl)?;
    let started = Instant::now();
    let round_a = a.round(&Held::new()).await?;
    let first = started.elapsed();
    let started = Instant::now();
    let round_a = a.round(&round_a.held).await?;
    let renew = started.elapsed();
    let round_b = b.round(&Held::new()).await?;
    let started = Instant::now();
    let round_a = a.round(&round_a.held).await?;
    a.release(&round_a.surplus).await?;
    let give_back = started.elapsed();
    let started = Instant::now();
    let round_b = b.round(&round_b.held).await?;
    let take = started.elapsed();
    println!(
        "lease_lots={} first_round_ms={:.0} renew_round_ms={:.1} give_back_ms={:.0} take_share_ms={:.0} split={}/{}",
        round_a.held.len(),
        first.as_secs_f64() * 1e3,
        renew.as_secs_f64() * 1e3,
        give_back.as_secs_f64() * 1e3,
        take.as_secs_f64() * 1e3,
        round_a.held.len() - round_a.surplus.len(),
        round_b.held.len(),
    );
    // Both gone, as a node is after a lease's life without a round.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    Ok(())
}

/// The bench's operator and one lot with one two-way lane.
fn lot_plan(lot: &LotId, gate: &GateId, sessions: usize) -> Plan {
    Plan {
        operators: vec![OperatorPlan {
            id: "bench".into(),
            name: "Bench".into(),
        }],
        lots: vec![LotPlan {
            id: lot.clone(),
            operator_id: "bench".into(),
            name: "Persist lot".into(),
            kind: LotKind::OffStreet,
            lat: 30.0,
            lon: 120.0,
            capacity: u32::try_from(sessions).unwrap_or(u32::MAX),
            time_zone: "Asia/Shanghai".into(),
            device_auth: DeviceAuth::Signed,
            gates: vec![(gate.clone(), GateDirection::Both)],
            bays: Vec::new(),
            max_stay_minutes: None,
            offline_policy: Default::default(),
            tariffs: vec![demo_tariff(0)],
        }],
        ..Plan::default()
    }
}

/// Runs the scenario on SQLite, or on PostgreSQL given a `postgres://` URL.
pub async fn run(sessions: usize, database_url: Option<String>) -> anyhow::Result<()> {
    on_engine(database_url, |url, engine| async move {
        scenario(&url, engine, sessions).await
    })
    .await
}
