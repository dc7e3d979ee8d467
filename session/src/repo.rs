//! The one writer of `sessions`, `review_items` and `charge_queue`.
//!
//! Every function runs inside the caller's transaction ([`Tx`]), so a session's change commits
//! together with whatever caused it (a gate read, a bay's stay, an operator's correction and its
//! audit entry, a payment). A session is inserted open or in review, and ends once: every
//! statement that ends one names the status it must still have, and reports whether it did.
//! A session that ends priced is queued for its one charge in the same statement group; billing
//! takes it off the queue when the charge exists ([`dequeue_charges`]).
//!
//! A test (`session/tests/ownership.rs`) fails when SQL writing these tables appears anywhere else.

use chrono::{DateTime, Utc};
use parkflow_db::{QueryBuilder, StoreError, Tx, db_time, query};
use parkflow_protocol::{EventId, GateId, Plate, PlateColor};
use uuid::Uuid;

use crate::lifecycle::{PaidExit, Pseudonymisation, StreetEnd};
use crate::model::{OpenSession, ReviewItem, SessionEnd};
use crate::status::{Resolution, SessionStatus};

/// Rows per multi-row statement: SQLite allows 32,766 values a statement. Only full-size
/// statements are kept prepared: each row count is a statement of its own, and the others would
/// push the API's and billing's out of the connection's cache.
pub const ROWS_PER_STATEMENT: usize = 1_000;

/// Ends sessions still open (a repeated end changes nothing) and queues the priced ones for
/// their charge.
pub async fn end_sessions(tx: &mut Tx, ends: &[&SessionEnd]) -> Result<(), StoreError> {
    let mut queued: Vec<(Uuid, String, DateTime<Utc>)> = Vec::new();
    for chunk in ends.chunks(ROWS_PER_STATEMENT) {
        let mut update = QueryBuilder::new(
            "WITH ended (end_id, end_status, end_gate, end_event_id, end_at, end_match, \
             end_match_score, end_tariff_from, end_fee_minor, end_currency, end_billed_plate, \
             end_plate_color, end_pass_holder) AS (",
        );
        update.push_values(chunk, |mut row, end| {
            row.push_bind(end.id)
                .push_bind(end.status.as_str())
                .push_bind(end.exit_gate.as_ref().map(GateId::as_str))
                .push_bind(end.exit_event.as_ref().map(EventId::as_str))
                .push_bind(db_time(end.exited_at))
                .push_bind(end.exit_match.map(|(m, _)| m.as_str()))
                .push_bind(end.exit_match.map(|(_, score)| score))
                .push_bind(end.tariff_from.map(db_time))
                .push_bind(end.fee.as_ref().map(|(minor, _)| *minor))
                .push_bind(end.fee.as_ref().map(|(_, currency)| currency.as_str()))
                .push_bind(end.billed_plate.as_ref().map(Plate::as_str))
                .push_bind(end.plate_color.map(PlateColor::as_str))
                .push_bind(end.pass_holder);
        });
        update.push(
            ") UPDATE sessions SET status = end_status, exit_gate = end_gate, \
             exit_event_id = end_event_id, exited_at = end_at, exit_match = end_match, \
             exit_match_score = end_match_score, tariff_from = end_tariff_from, \
             fee_minor = end_fee_minor, currency = end_currency, billed_plate = end_billed_plate, \
             plate_color = COALESCE(plate_color, end_plate_color), pass_holder = end_pass_holder, \
             billed_driver = (SELECT p.driver_id FROM driver_plates p \
                              WHERE p.plate = COALESCE(end_billed_plate, sessions.plate)), \
             updated_at = end_at \
             FROM ended WHERE id = end_id AND status = ",
        );
        update.push_bind(SessionStatus::Open.as_str());
        update.push(" RETURNING id, status, exited_at");
        queued.extend(
            update
                .build()
                .persistent(chunk.len() == ROWS_PER_STATEMENT)
                .fetch_all::<(Uuid, String, DateTime<Utc>)>(&mut *tx)
                .await?,
        );
    }
    let closed: Vec<(Uuid, DateTime<Utc>)> = queued
        .into_iter()
        .filter(|(_, status, _)| SessionStatus::parse(status) == Some(SessionStatus::Closed))
        .map(|(id, _, exited_at)| (id, exited_at))
        .collect();
    queue_charges(tx, &closed).await
}

/// Opens sessions (one already stored is left as it is).
pub async fn open_sessions(tx: &mut Tx, opens: &[&OpenSession]) -> Result<(), StoreError> {
    for chunk in opens.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, \
             entry_gate, entry_event_id, entered_at, updated_at) ",
        );
        insert.push_values(chunk, |mut row, s| {
            row.push_bind(s.id)
                .push_bind(s.lot.as_str())
                .push_bind(s.plate.as_str())
                .push_bind(s.plate_color.map(PlateColor::as_str))
                .push_bind(SessionStatus::Open.as_str())
                .push_bind(s.pass_holder)
                .push_bind(s.entry_gate.as_ref().map(GateId::as_str))
                .push_bind(s.entry_event.as_ref().map(EventId::as_str))
                .push_bind(db_time(s.entered_at))
                .push_bind(db_time(s.entered_at));
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

/// Opens review cases (one already stored is left as it is).
pub async fn open_cases(tx: &mut Tx, items: &[&ReviewItem]) -> Result<(), StoreError> {
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO review_items (id, lot_id, kind, session_id, gate_id, event_id, plate, \
             score, created_at) ",
        );
        insert.push_values(chunk, |mut row, item| {
            row.push_bind(item.id)
                .push_bind(item.lot.as_str())
                .push_bind(item.kind.as_str())
                .push_bind(item.session_id)
                .push_bind(item.gate.as_ref().map(GateId::as_str))
                .push_bind(item.event_id.as_ref().map(EventId::as_str))
                .push_bind(item.plate.as_ref().map(Plate::as_str))
                .push_bind(item.score)
                .push_bind(db_time(item.created_at));
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

/// Queues priced sessions for their charge (a session queued already stays queued once).
pub async fn queue_charges(
    tx: &mut Tx,
    sessions: &[(Uuid, DateTime<Utc>)],
) -> Result<(), StoreError> {
    for chunk in sessions.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new("INSERT INTO charge_queue (session_id, queued_at) ");
        insert.push_values(chunk, |mut row, (id, queued_at)| {
            row.push_bind(*id).push_bind(db_time(*queued_at));
        });
        insert.push(" ON CONFLICT (session_id) DO NOTHING");
        insert
            .build()
            .persistent(chunk.len() == ROWS_PER_STATEMENT)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Takes sessions off the charge queue: charged now, charged already, or not to be charged.
pub async fn dequeue_charges(tx: &mut Tx, sessions: &[Uuid]) -> Result<(), StoreError> {
    for chunk in sessions.chunks(5_000) {
        let mut delete = QueryBuilder::new("DELETE FROM charge_queue WHERE session_id IN (");
        let mut ids = delete.separated(", ");
        for id in chunk {
            ids.push_bind(*id);
        }
        delete.push(")");
        delete.build().persistent(false).execute(&mut *tx).await?;
    }
    Ok(())
}

/// An on-street stay that ended (the bay writer closed its `bay_sessions` row).
#[derive(Debug, Clone, Copy)]
pub struct StreetStay<'a> {
    /// The stay's id: its session's and its case's too, so a re-run adds neither twice.
    pub id: Uuid,
    pub lot: &'a str,
    pub bay: &'a str,
    pub plate: Option<(&'a Plate, Option<PlateColor>)>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub end: StreetEnd<'a>,
}

/// Records an ended on-street stay: a session when it has a plate, its charge when priced, a
/// case when it needs an operator.
pub async fn end_street_stay(tx: &mut Tx, stay: &StreetStay<'_>) -> Result<(), StoreError> {
    let (tariff_from, fee_minor, currency, pass_holder) = match stay.end {
        StreetEnd::Priced {
            pass_holder,
            tariff_from,
            fee_minor,
            currency,
        } => (
            Some(db_time(tariff_from)),
            Some(fee_minor),
            Some(currency),
            pass_holder,
        ),
        _ => (None, None, None, false),
    };
    if let Some((plate, color)) = stay.plate {
        query(
            "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, entered_at,
                 exited_at, tariff_from, fee_minor, currency, bay_id, updated_at, billed_driver)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                     (SELECT driver_id FROM driver_plates WHERE plate = $3))
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(stay.id)
        .bind(stay.lot)
        .bind(plate.as_str())
        .bind(color.map(PlateColor::as_str))
        .bind(stay.end.status().as_str())
        .bind(pass_holder)
        .bind(db_time(stay.started_at))
        .bind(db_time(stay.ended_at))
        .bind(tariff_from)
        .bind(fee_minor)
        .bind(currency)
        .bind(stay.bay)
        .bind(db_time(stay.ended_at))
        .execute(&mut *tx)
        .await?;
    }
    if let StreetEnd::Priced { .. } = stay.end {
        queue_charges(tx, &[(stay.id, stay.ended_at)]).await?;
    }
    if let Some((kind, names_session)) = stay.end.case(stay.plate.is_some()) {
        query(
            "INSERT INTO review_items (id, lot_id, kind, session_id, plate, bay_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(stay.id)
        .bind(stay.lot)
        .bind(kind.as_str())
        .bind(names_session.then_some(stay.id))
        .bind(stay.plate.map(|(plate, _)| plate.as_str()))
        .bind(stay.bay)
        .bind(db_time(stay.ended_at))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Marks case `id` resolved; false when it was resolved already.
pub async fn resolve_case(
    tx: &mut Tx,
    id: Uuid,
    resolution: Resolution,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let resolved = query(
        "UPDATE review_items SET resolved_at = $2, resolution = $3
         WHERE id = $1 AND resolved_at IS NULL",
    )
    .bind(id)
    .bind(db_time(at))
    .bind(resolution.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(resolved == 1)
}

/// Marks every unresolved case of `session` resolved (a merge settles the entry's own cases).
pub async fn resolve_cases_of(
    tx: &mut Tx,
    session: Uuid,
    resolution: Resolution,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    query(
        "UPDATE review_items SET resolved_at = $2, resolution = $3
         WHERE session_id = $1 AND resolved_at IS NULL",
    )
    .bind(session)
    .bind(db_time(at))
    .bind(resolution.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A stay an operator's correction records (a plate given to an on-street stay, the second
/// half of a split): in review until the correction prices it.
#[derive(Debug, Clone, Copy)]
pub struct StayForReview<'a> {
    pub id: Uuid,
    pub lot: &'a str,
    pub plate: &'a str,
    pub plate_color: Option<&'a str>,
    pub pass_holder: bool,
    pub entered_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
    pub bay: Option<&'a str>,
}

/// Inserts a stay in review (see [`StayForReview`]).
pub async fn insert_for_review(
    tx: &mut Tx,
    stay: &StayForReview<'_>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, entered_at,
             exited_at, bay_id, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(stay.id)
    .bind(stay.lot)
    .bind(stay.plate)
    .bind(stay.plate_color)
    .bind(SessionStatus::Review.as_str())
    .bind(stay.pass_holder)
    .bind(db_time(stay.entered_at))
    .bind(stay.exited_at.map(db_time))
    .bind(stay.bay)
    .bind(db_time(at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Voids a session in review (the stay did not happen); false when it is not in review.
pub async fn void(tx: &mut Tx, session: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError> {
    let voided =
        query("UPDATE sessions SET status = $3, updated_at = $2 WHERE id = $1 AND status = $4")
            .bind(session)
            .bind(db_time(at))
            .bind(SessionStatus::Void.as_str())
            .bind(SessionStatus::Review.as_str())
            .execute(&mut *tx)
            .await?;
    Ok(voided == 1)
}

/// A stay an operator's correction closes, priced.
#[derive(Debug, Clone, Copy)]
pub struct CorrectedStay<'a> {
    pub session: Uuid,
    pub plate: &'a str,
    pub plate_color: Option<&'a str>,
    pub pass_holder: bool,
    pub exited_at: DateTime<Utc>,
    pub exit_gate: Option<&'a str>,
    pub exit_event: Option<&'a str>,
    pub tariff_from: DateTime<Utc>,
    pub fee_minor: i64,
    pub currency: &'a str,
}

/// Closes a corrected stay (open or in review) priced, and queues it for its charge; false when
/// the session is neither open nor in review.
pub async fn close_corrected(
    tx: &mut Tx,
    stay: &CorrectedStay<'_>,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let closed = query(
        "UPDATE sessions SET status = $12, plate = $2, plate_color = $3, pass_holder = $4,
             exited_at = $5, exit_gate = $6, exit_event_id = $7, tariff_from = $8, fee_minor = $9,
             currency = $10, billed_plate = NULL, updated_at = $11,
             billed_driver = (SELECT driver_id FROM driver_plates WHERE plate = $2)
         WHERE id = $1 AND status IN ($13, $14)",
    )
    .bind(stay.session)
    .bind(stay.plate)
    .bind(stay.plate_color)
    .bind(stay.pass_holder)
    .bind(db_time(stay.exited_at))
    .bind(stay.exit_gate)
    .bind(stay.exit_event)
    .bind(db_time(stay.tariff_from))
    .bind(stay.fee_minor)
    .bind(stay.currency)
    .bind(db_time(at))
    .bind(SessionStatus::Closed.as_str())
    .bind(SessionStatus::Open.as_str())
    .bind(SessionStatus::Review.as_str())
    .execute(&mut *tx)
    .await?;
    if closed != 1 {
        return Ok(false);
    }
    queue_charges(tx, &[(stay.session, at)]).await?;
    Ok(true)
}

/// Closes a session whose car paid at the exit. It may have been ended meanwhile by the gate
/// (the car read again): its end stands, and the fee is what was paid. The payment holds the
/// session's charge slot, so it is not queued.
pub async fn close_paid_exit(
    tx: &mut Tx,
    paid: &PaidExit<'_>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    query(
        "UPDATE sessions SET status = $8, exit_gate = $2, exit_event_id = $3, exited_at = $4,
             fee_minor = $5, currency = $6, updated_at = $7
         WHERE id = $1 AND status = $9",
    )
    .bind(paid.session)
    .bind(paid.exit_gate)
    .bind(paid.exit_event)
    .bind(db_time(paid.exited_at))
    .bind(paid.fee_minor)
    .bind(paid.currency)
    .bind(db_time(at))
    .bind(SessionStatus::Closed.as_str())
    .bind(SessionStatus::Open.as_str())
    .execute(&mut *tx)
    .await?;
    query("UPDATE sessions SET fee_minor = $2, currency = $3 WHERE id = $1 AND status = $4")
        .bind(paid.session)
        .bind(paid.fee_minor)
        .bind(paid.currency)
        .bind(SessionStatus::Closed.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Replaces a plate by its pseudonym in sessions that ended and cases opened before the cutoff
/// (as [`Pseudonymisation::applies_to_session`] and `applies_to_case` say).
pub async fn pseudonymise(tx: &mut Tx, change: &Pseudonymisation<'_>) -> Result<(), StoreError> {
    let (plate, pseudonym, cutoff) = (change.plate, change.pseudonym.as_str(), change.cutoff);
    query(
        "UPDATE sessions SET plate = $2,
             billed_plate = CASE WHEN billed_plate IS NULL THEN NULL ELSE $2 END
         WHERE plate = $1 AND status <> $4 AND exited_at < $3",
    )
    .bind(plate)
    .bind(pseudonym)
    .bind(db_time(cutoff))
    .bind(SessionStatus::Open.as_str())
    .execute(&mut *tx)
    .await?;
    query("UPDATE review_items SET plate = $2 WHERE plate = $1 AND created_at < $3")
        .bind(plate)
        .bind(pseudonym)
        .bind(db_time(cutoff))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
