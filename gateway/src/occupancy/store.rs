//! Making bay states and on-street stays durable, and reading them back at start.
//!
//! The occupancy actor hands a [`BayBatch`] per round (the states it applied, the stays it
//! opened, priced or flagged, and the tickets of the messages they came from). The [`BayWriter`]
//! drains what is queued, merges it (the latest state per bay wins), writes it in one transaction
//! with multi-row statements, commits, and only then drops the tickets, acknowledging the
//! messages. States carry their `seq`, so a state written twice, or late, changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parkflow_protocol::{EventId, Plate, PlateColor};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::sessions::{BayEnd, BayPlate, BaySessionWrite, OpenBaySession};
use crate::metrics::Metrics;
use crate::mqtt::ack::Ticket;
use crate::registry::{BayIdx, Registry};
use crate::session::SessionStatus;
use crate::store::writer::{GROUP_RETRY_FOR, retry_transient, retry_transient_for};
use crate::store::{Db, StoreError, db_time};
use parkflow_db::{QueryBuilder, Tx, query};
use parkflow_session::lifecycle::StreetEnd;
use parkflow_session::repo::{self, StreetStay};

/// Batches waiting for the writer (each is one actor round, up to thousands of events).
pub(crate) const BAY_WRITER_CHANNEL_CAPACITY: usize = 64;
/// The most batches merged into one transaction.
const MAX_GROUP: usize = 64;
/// Rows per multi-row statement (SQLite allows 32,766 parameters; PostgreSQL 65,535).
const ROWS_PER_STATEMENT: usize = 500;

/// A bay's last applied event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BayStateRow {
    pub bay: BayIdx,
    pub occupied: bool,
    pub seq: u64,
    pub observed_at: DateTime<Utc>,
    pub battery_pct: Option<u8>,
}

/// One round of the occupancy actor's writes.
#[derive(Debug, Default)]
pub struct BayBatch {
    pub states: Vec<BayStateRow>,
    pub sessions: Vec<BaySessionWrite>,
    pub tickets: Vec<Ticket>,
}

impl BayBatch {
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.sessions.is_empty() && self.tickets.is_empty()
    }
}

/// Submits batches to the bay writer.
#[derive(Clone)]
pub struct BayWriterHandle {
    tx: mpsc::Sender<(Arc<Registry>, BayBatch)>,
}

impl BayWriterHandle {
    /// Queues a batch (bay numbers resolve against `registry`); waits while the writer is behind.
    pub async fn submit(&self, registry: Arc<Registry>, batch: BayBatch) {
        if let Err(mpsc::error::SendError((_, batch))) = self.tx.send((registry, batch)).await {
            tracing::error!(
                "bay writer is gone; batch dropped (its messages will be re-delivered)"
            );
            batch.tickets.into_iter().for_each(Ticket::abandon);
        }
    }
}

/// The bay writer task.
pub(crate) struct BayWriter {
    db: Db,
    rx: mpsc::Receiver<(Arc<Registry>, BayBatch)>,
    metrics: Arc<Metrics>,
}

pub(crate) fn bay_writer(db: Db, metrics: Arc<Metrics>) -> (BayWriterHandle, BayWriter) {
    let (tx, rx) = mpsc::channel(BAY_WRITER_CHANNEL_CAPACITY);
    (BayWriterHandle { tx }, BayWriter { db, rx, metrics })
}

/// Consecutive batches numbered against the same registry, merged (the latest state per bay wins).
struct Segment {
    registry: Arc<Registry>,
    states: Vec<BayStateRow>,
    sessions: Vec<BaySessionWrite>,
}

/// Splits a group where the registry changes, so every bay number is read against the registry
/// it was given with.
fn segments(group: Vec<(Arc<Registry>, BayBatch)>, tickets: &mut Vec<Ticket>) -> Vec<Segment> {
    let mut segments: Vec<(Segment, HashMap<BayIdx, usize>)> = Vec::new();
    for (registry, batch) in group {
        let same = segments
            .last()
            .is_some_and(|(segment, _)| Arc::ptr_eq(&segment.registry, &registry));
        if !same {
            segments.push((
                Segment {
                    registry,
                    states: Vec::new(),
                    sessions: Vec::new(),
                },
                HashMap::new(),
            ));
        }
        let Some((segment, positions)) = segments.last_mut() else {
            continue;
        };
        for row in batch.states {
            match positions.get(&row.bay) {
                Some(&at) if segment.states[at].seq > row.seq => {}
                Some(&at) => segment.states[at] = row,
                None => {
                    positions.insert(row.bay, segment.states.len());
                    segment.states.push(row);
                }
            }
        }
        segment.sessions.extend(batch.sessions);
        tickets.extend(batch.tickets);
    }
    segments.into_iter().map(|(segment, _)| segment).collect()
}

impl BayWriter {
    /// Runs until every handle is dropped and the queue is drained.
    pub(crate) async fn run(mut self) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while self.rx.recv_many(&mut group, MAX_GROUP).await > 0 {
            let mut tickets = Vec::new();
            let segments = segments(std::mem::take(&mut group), &mut tickets);
            let states: usize = segments.iter().map(|s| s.states.len()).sum();
            match retry_transient_for(&self.metrics, Some(GROUP_RETRY_FOR), || {
                write(&self.db, &segments)
            })
            .await
            {
                Ok(()) => {
                    self.metrics.bay_states_written.inc_by(states as u64);
                }
                Err(error) => {
                    tracing::warn!(%error, "bay group commit refused; writing piece by piece");
                    self.piece_by_piece(&segments).await;
                }
            }
            // Dropping the tickets acknowledges the messages, now that their writes are durable
            // (or, refused by the database, kept as dead letters: a re-delivery would fail the same way).
            drop(tickets);
        }
        tracing::debug!("bay writer drained and stopped");
    }

    /// Writes each segment's states, then each stay write on its own, so that one write the
    /// database refuses holds back nothing else; what it refuses becomes a dead letter.
    async fn piece_by_piece(&self, segments: &[Segment]) {
        for segment in segments {
            let states = Segment {
                registry: segment.registry.clone(),
                states: segment.states.clone(),
                sessions: Vec::new(),
            };
            match retry_transient(&self.metrics, || {
                write(&self.db, std::slice::from_ref(&states))
            })
            .await
            {
                Ok(()) => {
                    self.metrics
                        .bay_states_written
                        .inc_by(states.states.len() as u64);
                }
                Err(error) => self.refused(&format!("{:?}", states.states), &error).await,
            }
            for session in &segment.sessions {
                let one = Segment {
                    registry: segment.registry.clone(),
                    states: Vec::new(),
                    sessions: vec![session.clone()],
                };
                if let Err(error) = retry_transient(&self.metrics, || {
                    write(&self.db, std::slice::from_ref(&one))
                })
                .await
                {
                    self.refused(&format!("{session:?}"), &error).await;
                }
            }
        }
    }

    async fn refused(&self, writes: &str, error: &StoreError) {
        self.metrics.store_write_errors.inc();
        tracing::error!(%error, constraint = ?error.constraint(), "bay write refused by the database; kept as a dead letter");
        dead_letter(&self.db, writes, error).await;
    }
}

async fn dead_letter(db: &Db, writes: &str, error: &StoreError) {
    let kept =
        query("INSERT INTO dead_letters (id, writes, error, created_at) VALUES ($1, $2, $3, $4)")
            .bind(Uuid::now_v7())
            .bind(writes)
            .bind(error.to_string())
            .bind(db_time(Utc::now()))
            .execute(db)
            .await;
    if let Err(error) = kept {
        tracing::error!(%error, "failed to keep a dead letter");
    }
}

fn plate_fields(
    plate: Option<&BayPlate>,
) -> (Option<&str>, Option<&str>, Option<f64>, Option<&str>) {
    match plate {
        Some(p) => (
            Some(p.plate.as_str()),
            p.color.map(PlateColor::as_str),
            Some(p.confidence),
            Some(p.event_id.as_str()),
        ),
        None => (None, None, None, None),
    }
}

/// Writes every segment's states and stays in one transaction; stays in the order they happened
/// (a bay's stay closes before its next one opens), consecutive openings in multi-row statements.
async fn write(db: &Db, segments: &[Segment]) -> Result<(), StoreError> {
    let now = db_time(Utc::now());
    let mut tx = db.begin_write().await?;
    for segment in segments {
        write_states(&mut tx, segment).await?;
        // Runs of consecutive openings, each run written before the write that follows it.
        let mut position = 0;
        while position < segment.sessions.len() {
            let run: Vec<_> = segment.sessions[position..]
                .iter()
                .map_while(|write| match write {
                    BaySessionWrite::Open {
                        id,
                        bay,
                        started_at,
                        plate,
                    } => Some((*id, *bay, *started_at, plate.as_ref())),
                    _ => None,
                })
                .collect();
            position += run.len();
            open_stays(&mut tx, segment, &run, now).await?;
            if let Some(write) = segment.sessions.get(position) {
                position += 1;
                write_stay(&mut tx, segment, write, now).await?;
            }
        }
    }
    tx.commit().await
}

/// Upserts bays' states; a state older than the stored one (by `seq`) changes nothing.
async fn write_states(tx: &mut Tx, segment: &Segment) -> Result<(), StoreError> {
    let bays = segment.registry.bays();
    let lot_of = |bay: BayIdx| segment.registry.lot(bays.lot_of(bay)).id.as_str();
    for chunk in segment.states.chunks(ROWS_PER_STATEMENT) {
        let mut upsert = QueryBuilder::new(
            "INSERT INTO bay_states (lot_id, bay_id, occupied, seq, observed_at, battery_pct) ",
        );
        upsert.push_values(chunk, |mut row, state| {
            row.push_bind(lot_of(state.bay))
                .push_bind(bays.name(state.bay))
                .push_bind(state.occupied)
                .push_bind(i64::try_from(state.seq).unwrap_or(i64::MAX))
                .push_bind(db_time(state.observed_at))
                .push_bind(state.battery_pct.map(i16::from));
        });
        upsert.push(
            " ON CONFLICT (lot_id, bay_id) DO UPDATE SET occupied = excluded.occupied, \
             seq = excluded.seq, observed_at = excluded.observed_at, \
             battery_pct = COALESCE(excluded.battery_pct, bay_states.battery_pct) \
             WHERE excluded.seq >= bay_states.seq",
        );
        // Cached only in its full shape: each other row count would stay prepared on every
        // connection (27 MB of statements after a city's burst).
        upsert
            .build()
            .persistent(chunk.len() == ROWS_PER_STATEMENT)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Opens on-street stays (one stored already stays as it is).
async fn open_stays(
    tx: &mut Tx,
    segment: &Segment,
    run: &[(Uuid, BayIdx, DateTime<Utc>, Option<&BayPlate>)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let bays = segment.registry.bays();
    let lot_of = |bay: BayIdx| segment.registry.lot(bays.lot_of(bay)).id.as_str();
    for chunk in run.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO bay_sessions (id, lot_id, bay_id, status, started_at, plate, \
             plate_color, plate_confidence, plate_event_id, updated_at) ",
        );
        insert.push_values(chunk, |mut row, (id, bay, started_at, plate)| {
            let (plate, color, confidence, event) = plate_fields(*plate);
            row.push_bind(*id)
                .push_bind(lot_of(*bay))
                .push_bind(bays.name(*bay))
                .push_bind(SessionStatus::Open.as_str())
                .push_bind(db_time(*started_at))
                .push_bind(plate)
                .push_bind(color)
                .push_bind(confidence)
                .push_bind(event)
                .push_bind(now);
        });
        insert.push(" ON CONFLICT (id) DO NOTHING");
        insert
            .build()
            .persistent(chunk.len() == ROWS_PER_STATEMENT)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// A stay's plate read, overstay flag or end. An ended stay with a plate becomes a session (the
/// session lifecycle's repository writes it, with its charge or its review case).
async fn write_stay(
    tx: &mut Tx,
    segment: &Segment,
    write: &BaySessionWrite,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let bays = segment.registry.bays();
    let lot_of = |bay: BayIdx| segment.registry.lot(bays.lot_of(bay)).id.as_str();
    match write {
        BaySessionWrite::Open { .. } => {}
        BaySessionWrite::Plate { id, plate } => {
            let (plate, color, confidence, event) = plate_fields(Some(plate));
            query(
                "UPDATE bay_sessions SET plate = $2, plate_color = $3, plate_confidence = $4,
                     plate_event_id = $5, updated_at = $6
                 WHERE id = $1 AND status = $7",
            )
            .bind(*id)
            .bind(plate)
            .bind(color)
            .bind(confidence)
            .bind(event)
            .bind(now)
            .bind(SessionStatus::Open.as_str())
            .execute(&mut *tx)
            .await?;
        }
        BaySessionWrite::Overstay { id, at, .. } => {
            query(
                "UPDATE bay_sessions SET overstay_at = $2, updated_at = $3
                 WHERE id = $1 AND overstay_at IS NULL",
            )
            .bind(*id)
            .bind(db_time(*at))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        BaySessionWrite::Close {
            id,
            bay,
            started_at,
            ended_at,
            end,
        } => {
            let (plate, end) = match end {
                BayEnd::Priced {
                    plate,
                    pass_holder,
                    tariff_from,
                    fee_minor,
                    currency,
                } => (
                    Some(plate),
                    StreetEnd::Priced {
                        pass_holder: *pass_holder,
                        tariff_from: *tariff_from,
                        fee_minor: *fee_minor,
                        currency,
                    },
                ),
                BayEnd::Unpriced { plate } => (Some(plate), StreetEnd::Unpriced),
                BayEnd::NoPlate => (None, StreetEnd::NoPlate),
                BayEnd::Interrupted { plate } => (plate.as_ref(), StreetEnd::Interrupted),
            };
            let (plate_text, color, confidence, event) = plate_fields(plate);
            let closed = query(
                "UPDATE bay_sessions SET status = $2, ended_at = $3, plate = $4, plate_color = $5,
                     plate_confidence = $6, plate_event_id = $7, updated_at = $8
                 WHERE id = $1 AND status = $9",
            )
            .bind(*id)
            .bind(end.status().as_str())
            .bind(db_time(*ended_at))
            .bind(plate_text)
            .bind(color)
            .bind(confidence)
            .bind(event)
            .bind(now)
            .bind(SessionStatus::Open.as_str())
            .execute(&mut *tx)
            .await?;
            if closed == 0 {
                // Closed already (a re-run of this write): nothing more to do.
                return Ok(());
            }
            let stay = StreetStay {
                id: *id,
                lot: lot_of(*bay),
                bay: bays.name(*bay),
                plate: plate.map(|p| (&p.plate, p.color)),
                started_at: *started_at,
                ended_at: *ended_at,
                end,
            };
            repo::end_street_stay(tx, &stay).await?;
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct BayStateLoadRow {
    lot_id: String,
    bay_id: String,
    occupied: bool,
    seq: i64,
}

#[derive(sqlx::FromRow)]
struct OpenBaySessionRow {
    id: Uuid,
    lot_id: String,
    bay_id: String,
    started_at: DateTime<Utc>,
    plate: Option<String>,
    plate_color: Option<String>,
    plate_confidence: Option<f64>,
    plate_event_id: Option<String>,
    overstay_at: Option<DateTime<Utc>>,
}

/// What the occupancy actor starts from.
#[derive(Debug, Default)]
pub struct Restored {
    /// Each bay's last applied state: `(bay, occupied, seq)`.
    pub states: Vec<(BayIdx, bool, u64)>,
    pub open: Vec<(BayIdx, OpenBaySession)>,
    /// Open gated sessions per lot id.
    pub gated_open: HashMap<String, u32>,
    /// Operators' recounts per lot id: `(occupied counted, open sessions then)`.
    pub recounts: HashMap<String, (u32, u32)>,
    /// Passes still valid: (lot, plate, from, until).
    pub passes: Vec<(
        parkflow_protocol::LotId,
        Plate,
        DateTime<Utc>,
        DateTime<Utc>,
    )>,
}

/// Reads bay states (streamed: one row per bay), open stays and gated counts; and passes. `lot`:
/// one lot's (a gateway node adopting it), without passes (the actor has them).
pub(crate) async fn restore(
    db: &Db,
    registry: &Registry,
    lot: Option<&parkflow_protocol::LotId>,
) -> Result<Restored, StoreError> {
    let only = lot.map(parkflow_protocol::LotId::as_str);
    let bay_of = |lot_id: &str, bay_id: &str| {
        registry
            .lot_by_id(&parkflow_protocol::LotId::parse(lot_id).ok()?)
            .and_then(|lot| registry.bays().find(lot.idx, bay_id))
    };
    let mut restored = Restored::default();
    if lot.is_none() {
        restored.passes = crate::store::sessions::passes(db, Utc::now()).await?;
    }
    query("SELECT lot_id, bay_id, occupied, seq FROM bay_states WHERE $1 IS NULL OR lot_id = $1")
        .bind(only)
        .for_each(db, |row: BayStateLoadRow| {
            if let Some(bay) = bay_of(&row.lot_id, &row.bay_id) {
                let seq = u64::try_from(row.seq).unwrap_or(0);
                restored.states.push((bay, row.occupied, seq));
            }
            Ok(())
        })
        .await?;
    let open: Vec<OpenBaySessionRow> = query(
        "SELECT id, lot_id, bay_id, started_at, plate, plate_color, plate_confidence,
             plate_event_id, overstay_at
         FROM bay_sessions WHERE status = $1 AND ($2 IS NULL OR lot_id = $2)",
    )
    .bind(SessionStatus::Open.as_str())
    .bind(only)
    .fetch_all(db)
    .await?;
    for row in open {
        let Some(bay) = bay_of(&row.lot_id, &row.bay_id) else {
            continue;
        };
        let plate = match (
            row.plate.as_deref().map(Plate::parse),
            row.plate_event_id.as_deref().map(EventId::parse),
        ) {
            (Some(Ok(plate)), Some(Ok(event_id))) => Some(Box::new(BayPlate {
                plate,
                color: row.plate_color.as_deref().and_then(PlateColor::parse),
                confidence: row.plate_confidence.unwrap_or(0.0),
                event_id,
                observed_at: row.started_at,
            })),
            _ => None,
        };
        let session = OpenBaySession {
            id: row.id,
            started_at: row.started_at,
            plate,
            overstay_flagged: row.overstay_at.is_some(),
        };
        restored.open.push((bay, session));
    }
    let gated: Vec<(String, i64)> =
        query("SELECT lot_id, COUNT(*) FROM sessions WHERE status = $1 AND ($2 IS NULL OR lot_id = $2) GROUP BY lot_id")
            .bind(SessionStatus::Open.as_str())
            .bind(only)
            .fetch_all(db)
            .await?;
    restored.gated_open = gated
        .into_iter()
        .map(|(lot, n)| (lot, u32::try_from(n).unwrap_or(u32::MAX)))
        .collect();
    let recounts: Vec<(String, i32, i32)> = query(
        "SELECT lot_id, occupied, open_sessions FROM lot_recounts WHERE $1 IS NULL OR lot_id = $1",
    )
    .bind(only)
    .fetch_all(db)
    .await?;
    restored.recounts = recounts
        .into_iter()
        .map(|(lot, occupied, open)| {
            let count = |n: i32| u32::try_from(n).unwrap_or(0);
            (lot, (count(occupied), count(open)))
        })
        .collect();
    Ok(restored)
}

/// A lot's bays as the database has them (a gateway node asked about a lot another node runs):
/// each bay's last applied state and its open stay. `heard_at` is the sensor's last applied
/// event (heartbeats are not stored), and a bay never reported is `unknown`.
pub(crate) async fn bay_views(
    db: &Db,
    registry: &Registry,
    lot: &crate::registry::Lot,
) -> Result<Vec<super::BayView>, StoreError> {
    let states: Vec<(String, bool, DateTime<Utc>, Option<i16>)> = query(
        "SELECT bay_id, occupied, observed_at, battery_pct FROM bay_states WHERE lot_id = $1",
    )
    .bind(lot.id.as_str())
    .fetch_all(db)
    .await?;
    /// Bay, started at, the best plate read's confidence, flagged as an overstay at.
    type StayRow = (String, DateTime<Utc>, Option<f64>, Option<DateTime<Utc>>);
    let stays: Vec<StayRow> = query(
        "SELECT bay_id, started_at, plate_confidence, overstay_at FROM bay_sessions
         WHERE lot_id = $1 AND status = $2",
    )
    .bind(lot.id.as_str())
    .bind(SessionStatus::Open.as_str())
    .fetch_all(db)
    .await?;
    let states: HashMap<String, (bool, DateTime<Utc>, Option<i16>)> = states
        .into_iter()
        .map(|(bay, occupied, at, battery)| (bay, (occupied, at, battery)))
        .collect();
    let stays: HashMap<String, (DateTime<Utc>, Option<f64>, bool)> = stays
        .into_iter()
        .map(|(bay, started, confidence, overstay)| {
            (bay, (started, confidence, overstay.is_some()))
        })
        .collect();
    let bays = registry.bays();
    Ok(bays
        .bays_of(lot.idx)
        .map(|bay| {
            let name = bays.name(bay);
            let state = states.get(name);
            let stay = stays.get(name);
            super::BayView {
                bay: name.to_owned(),
                state: match state {
                    Some((true, _, _)) => "occupied",
                    Some((false, _, _)) => "free",
                    None => "unknown",
                },
                battery_low: state
                    .and_then(|(_, _, pct)| *pct)
                    .is_some_and(|pct| pct < i16::from(super::actor::BATTERY_LOW_PCT)),
                heard_at: state.map(|(_, at, _)| *at),
                stay_started_at: stay.map(|(started, _, _)| *started),
                stay_plate_confidence: stay.and_then(|(_, confidence, _)| *confidence),
                overstay: stay.is_some_and(|(_, _, overstay)| *overstay),
            }
        })
        .collect())
}

/// How many sessions of a gated lot are open in the database.
pub(crate) async fn open_sessions(db: &Db, lot: &str) -> Result<u32, StoreError> {
    let (open,): (i64,) = query("SELECT COUNT(*) FROM sessions WHERE lot_id = $1 AND status = $2")
        .bind(lot)
        .bind(SessionStatus::Open.as_str())
        .fetch_one(db)
        .await?;
    Ok(u32::try_from(open).unwrap_or(u32::MAX))
}

/// A gated lot's recorded recount: cars counted, and sessions open then.
pub(crate) async fn recorded_recount(db: &Db, lot: &str) -> Result<Option<(u32, u32)>, StoreError> {
    let row: Option<(i32, i32)> =
        query("SELECT occupied, open_sessions FROM lot_recounts WHERE lot_id = $1")
            .bind(lot)
            .fetch_optional(db)
            .await?;
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    Ok(row.map(|(occupied, open)| (count(occupied), count(open))))
}

/// Records an operator's recount of a gated lot.
pub(crate) async fn recount(
    db: &Db,
    lot: &str,
    occupied: u32,
    open_sessions: u32,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO lot_recounts (lot_id, occupied, open_sessions, counted_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (lot_id) DO UPDATE SET occupied = excluded.occupied,
             open_sessions = excluded.open_sessions, counted_at = excluded.counted_at",
    )
    .bind(lot)
    .bind(i64::from(occupied))
    .bind(i64::from(open_sessions))
    .bind(db_time(at))
    .execute(db)
    .await
    .map(drop)
}
