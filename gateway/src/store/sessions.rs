//! Reading sessions, decisions and the facts gate decisions depend on.

use chrono::{DateTime, Utc};
use parkflow_protocol::{
    COMMAND_LIFETIME, EventId, GateAction, GateCommand, GateId, GateReason, LotId, Plate,
    PlateColor,
};
use serde::Serialize;
use uuid::Uuid;

use parkflow_billing::drivers::DriverStatus;
use parkflow_db::query;

use super::{Db, StoreError, db_time};
use crate::session::{OpenSession, ReviewKind, SessionStatus};

#[derive(sqlx::FromRow)]
struct OpenSessionRow {
    id: Uuid,
    lot_id: String,
    plate: String,
    plate_color: Option<String>,
    pass_holder: bool,
    entry_gate: Option<String>,
    entry_event_id: Option<String>,
    entered_at: DateTime<Utc>,
}

impl TryFrom<OpenSessionRow> for OpenSession {
    type Error = StoreError;
    fn try_from(row: OpenSessionRow) -> Result<Self, StoreError> {
        let bad = |what: &str| StoreError::Corrupt(format!("{what} of session {}", row.id));
        Ok(Self {
            id: row.id,
            lot: LotId::parse(&row.lot_id).map_err(|_| bad("lot"))?,
            plate: Plate::parse(&row.plate).map_err(|_| bad("plate"))?,
            plate_color: row.plate_color.as_deref().and_then(PlateColor::parse),
            pass_holder: row.pass_holder,
            entry_gate: row
                .entry_gate
                .as_deref()
                .map(GateId::parse)
                .transpose()
                .map_err(|_| bad("entry gate"))?,
            entry_event: row
                .entry_event_id
                .as_deref()
                .map(EventId::parse)
                .transpose()
                .map_err(|_| bad("entry event"))?,
            entered_at: row.entered_at,
        })
    }
}

/// Every open session.
/// `lot`: only that lot's (a gateway node adopting it).
pub(crate) async fn open_sessions(
    db: &Db,
    lot: Option<&LotId>,
) -> Result<Vec<OpenSession>, StoreError> {
    let rows: Vec<OpenSessionRow> = query(
        "SELECT id, lot_id, plate, plate_color, pass_holder, entry_gate, entry_event_id, entered_at
         FROM sessions WHERE status = $1 AND ($2 IS NULL OR lot_id = $2)",
    )
    .bind(SessionStatus::Open.as_str())
    .bind(lot.map(LotId::as_str))
    .fetch_all(db)
    .await?;
    rows.into_iter().map(OpenSession::try_from).collect()
}

#[derive(sqlx::FromRow)]
struct DecisionRow {
    lot_id: String,
    gate_id: String,
    event_id: String,
    plate: String,
    direction: String,
    observed_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    command_id: Uuid,
    action: String,
    reason: String,
    issued_at: DateTime<Utc>,
    amount_due_minor: Option<i64>,
    currency: Option<String>,
    pay_url: Option<String>,
    session_id: Option<Uuid>,
}

/// A decision the platform made, as stored: enough to send the very same command again.
#[derive(Debug, Clone)]
pub struct StoredDecision {
    pub lot: LotId,
    pub gate: GateId,
    pub plate: Plate,
    pub direction: parkflow_protocol::Direction,
    pub observed_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub command: GateCommand,
    pub session_id: Option<Uuid>,
}

impl TryFrom<DecisionRow> for StoredDecision {
    type Error = StoreError;
    fn try_from(row: DecisionRow) -> Result<Self, StoreError> {
        let bad = |what: &str| StoreError::Corrupt(format!("{what} of gate read {}", row.event_id));
        let amount_due = match (row.amount_due_minor, &row.currency) {
            (Some(minor), Some(currency)) => {
                let currency =
                    parkflow_billing::Currency::new(currency).map_err(|_| bad("currency"))?;
                Some(parkflow_billing::Money::from_minor(minor, currency).amount_in_minor_digits())
            }
            _ => None,
        };
        Ok(Self {
            lot: LotId::parse(&row.lot_id).map_err(|_| bad("lot"))?,
            gate: GateId::parse(&row.gate_id).map_err(|_| bad("gate"))?,
            plate: Plate::parse(&row.plate).map_err(|_| bad("plate"))?,
            direction: match row.direction.as_str() {
                "entry" => parkflow_protocol::Direction::Entry,
                "exit" => parkflow_protocol::Direction::Exit,
                _ => return Err(bad("direction")),
            },
            observed_at: row.observed_at,
            received_at: row.received_at,
            command: GateCommand {
                command_id: row.command_id,
                event_id: EventId::parse(&row.event_id).map_err(|_| bad("event id"))?,
                action: GateAction::parse(&row.action).ok_or_else(|| bad("action"))?,
                reason: GateReason::parse(&row.reason).ok_or_else(|| bad("reason"))?,
                issued_at: row.issued_at,
                expires_at: row.issued_at + COMMAND_LIFETIME,
                amount_due,
                currency: row.currency,
                pay_url: row.pay_url,
            },
            session_id: row.session_id,
        })
    }
}

const DECISION_COLUMNS: &str =
    "lot_id, gate_id, event_id, plate, direction, observed_at, received_at, command_id, action, reason,
     issued_at, amount_due_minor, currency, pay_url, session_id";

/// Decisions received since `since` (to warm the actor's cache at start).
pub(crate) async fn decisions_since(
    db: &Db,
    since: DateTime<Utc>,
    lot: Option<&LotId>,
) -> Result<Vec<StoredDecision>, StoreError> {
    let sql = format!(
        "SELECT {DECISION_COLUMNS} FROM gate_reads WHERE received_at >= $1
           AND ($2 IS NULL OR lot_id = $2) ORDER BY received_at"
    );
    let rows: Vec<DecisionRow> = query(sql)
        .bind(db_time(since))
        .bind(lot.map(LotId::as_str))
        .fetch_all(db)
        .await?;
    rows.into_iter().map(StoredDecision::try_from).collect()
}

/// The decision that answered one read, if any (the slow path for late, repeated reads).
pub(crate) async fn decision(
    db: &Db,
    lot: &LotId,
    gate: &GateId,
    event: &EventId,
) -> Result<Option<StoredDecision>, StoreError> {
    let sql = format!(
        "SELECT {DECISION_COLUMNS} FROM gate_reads WHERE lot_id = $1 AND gate_id = $2 AND event_id = $3"
    );
    let row: Option<DecisionRow> = query(sql)
        .bind(lot.as_str())
        .bind(gate.as_str())
        .bind(event.as_str())
        .fetch_optional(db)
        .await?;
    row.map(StoredDecision::try_from).transpose()
}

/// Enrolled plates and whether their driver is suspended.
pub(crate) async fn enrolled_plates(db: &Db) -> Result<Vec<(Plate, bool)>, StoreError> {
    let rows: Vec<(String, String)> = query(
        "SELECT p.plate, d.status FROM driver_plates p JOIN drivers d ON d.id = p.driver_id WHERE d.auto_debit",
    )
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(plate, status)| {
            let plate =
                Plate::parse(&plate).map_err(|_| StoreError::Corrupt("enrolled plate".into()))?;
            let status = DriverStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt("status of an enrolled driver".into()))?;
            Ok((plate, status == DriverStatus::Suspended))
        })
        .collect()
}

/// Passes still valid at `now`: (lot, plate, from, until).
pub(crate) async fn passes(
    db: &Db,
    now: DateTime<Utc>,
) -> Result<Vec<(LotId, Plate, DateTime<Utc>, DateTime<Utc>)>, StoreError> {
    let rows: Vec<(String, String, DateTime<Utc>, DateTime<Utc>)> =
        query("SELECT lot_id, plate, valid_from, valid_until FROM passes WHERE valid_until > $1")
            .bind(db_time(now))
            .fetch_all(db)
            .await?;
    rows.into_iter()
        .map(|(lot, plate, from, until)| {
            let lot = LotId::parse(&lot).map_err(|_| StoreError::Corrupt("lot of pass".into()))?;
            let plate =
                Plate::parse(&plate).map_err(|_| StoreError::Corrupt("plate of pass".into()))?;
            Ok((lot, plate, from, until))
        })
        .collect()
}

/// What plates owe on invoices nobody enrolled pays (a car let out without standing), by
/// currency: their lanes hold them while the platform is away, and their next held exit
/// collects it.
pub(crate) async fn owing_plates(db: &Db) -> Result<Vec<(Plate, String, i64)>, StoreError> {
    let rows: Vec<(String, String, i64)> = query(
        "SELECT plate, currency, CAST(SUM(amount_minor) AS BIGINT) FROM invoices
         WHERE plate IS NOT NULL AND status = 'open' AND driver_id IS NULL GROUP BY plate, currency",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(plate, currency, minor)| Some((Plate::parse(&plate).ok()?, currency, minor)))
        .collect())
}

/// Blocked plates per lot.
pub(crate) async fn blocked_plates(db: &Db) -> Result<Vec<(LotId, Plate)>, StoreError> {
    let rows: Vec<(String, String)> = query("SELECT lot_id, plate FROM blocked_plates")
        .fetch_all(db)
        .await?;
    rows.into_iter()
        .map(|(lot, plate)| {
            let lot = LotId::parse(&lot).map_err(|_| StoreError::Corrupt("lot of block".into()))?;
            let plate =
                Plate::parse(&plate).map_err(|_| StoreError::Corrupt("blocked plate".into()))?;
            Ok((lot, plate))
        })
        .collect()
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct SessionView {
    pub id: Uuid,
    pub lot_id: String,
    pub plate: String,
    pub plate_color: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: SessionStatus,
    pub pass_holder: bool,
    pub entry_gate: Option<String>,
    pub entry_event_id: Option<String>,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub entered_at: DateTime<Utc>,
    pub exit_gate: Option<String>,
    pub exit_event_id: Option<String>,
    #[serde(with = "parkflow_protocol::time::rfc3339::option")]
    pub exited_at: Option<DateTime<Utc>>,
    pub exit_match: Option<String>,
    pub exit_match_score: Option<f64>,
    /// The bay of an on-street stay.
    pub bay_id: Option<String>,
    #[serde(skip)]
    pub fee_minor: Option<i64>,
    pub currency: Option<String>,
    /// The fee as a decimal string with the currency's minor digits (`"12.50"`).
    #[sqlx(skip)]
    pub fee: Option<String>,
}

pub(crate) const SESSION_COLUMNS: &str =
    "id, lot_id, plate, plate_color, status, pass_holder, entry_gate, entry_event_id, entered_at,
     exit_gate, exit_event_id, exited_at, exit_match, exit_match_score, bay_id, fee_minor, currency";

fn with_fee(mut view: SessionView) -> SessionView {
    view.fee = match (
        view.fee_minor,
        view.currency
            .as_deref()
            .map(parkflow_billing::Currency::new),
    ) {
        (Some(minor), Some(Ok(currency))) => {
            Some(parkflow_billing::Money::from_minor(minor, currency).to_string())
        }
        _ => None,
    };
    view
}

/// One session by id.
pub(crate) async fn session(db: &Db, id: Uuid) -> Result<Option<SessionView>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
    let row: Option<SessionView> = query(sql).bind(id).fetch_optional(db).await?;
    Ok(row.map(with_fee))
}

/// A filter over sessions.
#[derive(Debug, Default, Clone)]
pub(crate) struct SessionFilter {
    /// Only this operator's lots.
    pub operator: Option<String>,
    pub lot: Option<LotId>,
    pub plate: Option<Plate>,
    pub status: Option<SessionStatus>,
    /// Entered at or after this.
    pub entered_from: Option<DateTime<Utc>>,
    /// Entered before this.
    pub entered_to: Option<DateTime<Utc>>,
    pub limit: u32,
}

/// Sessions matching `filter`, newest first.
pub(crate) async fn sessions(
    db: &Db,
    filter: &SessionFilter,
) -> Result<Vec<SessionView>, StoreError> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions
         WHERE ($1 IS NULL OR lot_id = $1) AND ($2 IS NULL OR plate = $2) AND ($3 IS NULL OR status = $3)
           AND ($5 IS NULL OR entered_at >= $5) AND ($6 IS NULL OR entered_at < $6)
           AND ($7 IS NULL OR lot_id IN (SELECT id FROM lots WHERE operator_id = $7))
         ORDER BY entered_at DESC, id LIMIT $4"
    );
    let rows: Vec<SessionView> = query(sql)
        .bind(filter.lot.as_ref().map(LotId::as_str))
        .bind(filter.plate.as_ref().map(Plate::as_str))
        .bind(filter.status.map(SessionStatus::as_str))
        .bind(i64::from(filter.limit))
        .bind(filter.entered_from.map(db_time))
        .bind(filter.entered_to.map(db_time))
        .bind(filter.operator.as_deref())
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(with_fee).collect())
}

/// A review case as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct ReviewView {
    pub id: Uuid,
    pub lot_id: String,
    #[sqlx(try_from = "String")]
    pub kind: ReviewKind,
    pub session_id: Option<Uuid>,
    pub gate_id: Option<String>,
    pub event_id: Option<String>,
    pub plate: Option<String>,
    pub score: Option<f64>,
    /// The bay of an on-street stay (for `no_plate`, the case's id is the stay's).
    pub bay_id: Option<String>,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Pictures kept of the read (lots with `review_pictures`):
    /// `GET /v1/review/{id}/pictures/{n}` for `n` below this.
    pub pictures: i64,
}

/// Unresolved review cases of a lot (or of every lot of `operator`, or of every lot), oldest first.
pub(crate) async fn open_reviews(
    db: &Db,
    operator: Option<&str>,
    lot: Option<&LotId>,
    limit: u32,
) -> Result<Vec<ReviewView>, StoreError> {
    query(
        "SELECT id, lot_id, kind, session_id, gate_id, event_id, plate, score, bay_id, created_at,
             (SELECT COUNT(*) FROM review_pictures p WHERE p.review_id = review_items.id) AS pictures
         FROM review_items
         WHERE resolved_at IS NULL AND ($1 IS NULL OR lot_id = $1)
           AND ($3 IS NULL OR lot_id IN (SELECT id FROM lots WHERE operator_id = $3))
         ORDER BY created_at, id LIMIT $2",
    )
    .bind(lot.map(LotId::as_str))
    .bind(i64::from(limit))
    .bind(operator)
    .fetch_all(db)
    .await
}

/// Sessions of the plates a driver has enrolled, newest first.
pub(crate) async fn sessions_of_driver(
    db: &Db,
    driver: Uuid,
    limit: u32,
) -> Result<Vec<SessionView>, StoreError> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions
         WHERE EXISTS (SELECT 1 FROM driver_plates p
                       WHERE p.plate = sessions.plate AND p.driver_id = $1
                         AND p.created_at <= sessions.entered_at)
         ORDER BY entered_at DESC, id LIMIT $2"
    );
    let rows: Vec<SessionView> = query(sql)
        .bind(driver)
        .bind(i64::from(limit))
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(with_fee).collect())
}

/// Whether the read `event_id` of `lot` is on record (in `gate_reads`).
pub(crate) async fn read_recorded(db: &Db, lot: &str, event_id: &str) -> Result<bool, StoreError> {
    let found: Option<(i32,)> =
        query("SELECT 1 FROM gate_reads WHERE lot_id = $1 AND event_id = $2 LIMIT 1")
            .bind(lot)
            .bind(event_id)
            .fetch_optional(db)
            .await?;
    Ok(found.is_some())
}

/// A lane's last read and what was decided on it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct LaneRead {
    pub gate_id: String,
    pub plate: String,
    pub direction: String,
    pub received_at: DateTime<Utc>,
    pub action: String,
    pub reason: String,
}

/// The last read of each lane of `lot`.
pub(crate) async fn last_reads(db: &Db, lot: &LotId) -> Result<Vec<LaneRead>, StoreError> {
    query(
        "SELECT gate_id, plate, direction, received_at, action, reason FROM gate_reads r
         WHERE lot_id = $1 AND received_at = (SELECT MAX(received_at) FROM gate_reads g
                                             WHERE g.lot_id = r.lot_id AND g.gate_id = r.gate_id)
         ORDER BY gate_id",
    )
    .bind(lot.as_str())
    .fetch_all(db)
    .await
}

/// The most stays one day's chart reads.
const DAY_STAYS: i64 = 50_000;

/// When each stay of `lot` that overlaps `from..to` began and (if it did) ended: its gated
/// sessions, or a street zone's stays in its bays.
pub(crate) async fn stays_between(
    db: &Db,
    lot: &LotId,
    street: bool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, Option<DateTime<Utc>>)>, StoreError> {
    let sql = if street {
        "SELECT started_at, ended_at FROM bay_sessions
         WHERE lot_id = $1 AND started_at < $3 AND (ended_at IS NULL OR ended_at >= $2)
         ORDER BY started_at DESC LIMIT $4"
    } else {
        "SELECT entered_at, exited_at FROM sessions
         WHERE lot_id = $1 AND entered_at < $3 AND (exited_at IS NULL OR exited_at >= $2)
         ORDER BY entered_at DESC LIMIT $4"
    };
    query(sql)
        .bind(lot.as_str())
        .bind(db_time(from))
        .bind(db_time(to))
        .bind(DAY_STAYS)
        .fetch_all(db)
        .await
}

/// An on-street stay past the zone's longest stay, still open.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Overstay {
    pub bay_id: String,
    pub plate: Option<String>,
    pub started_at: DateTime<Utc>,
    pub overstay_at: DateTime<Utc>,
}

/// The open overstays of `lot`, longest first.
pub(crate) async fn overstays(
    db: &Db,
    lot: &LotId,
    limit: u32,
) -> Result<Vec<Overstay>, StoreError> {
    query(
        "SELECT bay_id, plate, started_at, overstay_at FROM bay_sessions
         WHERE lot_id = $1 AND status = 'open' AND overstay_at IS NOT NULL
         ORDER BY started_at, bay_id LIMIT $2",
    )
    .bind(lot.as_str())
    .bind(i64::from(limit))
    .fetch_all(db)
    .await
}

/// What the workers have yet to do: sessions waiting to be charged, messages set aside as dead
/// letters, review cases open.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub(crate) struct Backlog {
    pub to_charge: i64,
    pub dead_letters: i64,
    pub open_reviews: i64,
}

pub(crate) async fn backlog(db: &Db) -> Result<Backlog, StoreError> {
    query(
        "SELECT (SELECT COUNT(*) FROM charge_queue) AS to_charge,
                (SELECT COUNT(*) FROM dead_letters) AS dead_letters,
                (SELECT COUNT(*) FROM review_items WHERE resolved_at IS NULL) AS open_reviews",
    )
    .fetch_one(db)
    .await
}
