//! Resolving review cases (SPEC §3: corrections leave an audit trail, sessions are never deleted).
//! What a correction writes is decided by `parkflow_session::correction::plan`, a pure function;
//! this module reads what it needs, prices the stays it closes with the lot's tariffs, and writes
//! the plan through the session repository with the case's resolution and its audit entry, in
//! one transaction. A closed (billed) session is corrected by a refund instead.

use chrono::{DateTime, Utc};
use parkflow_billing::Stay;
use parkflow_db::{Tx, query};
use parkflow_protocol::PlateColor;
use parkflow_session::correction::{self, BayStay, Case, Closing, CorrectionError};
use parkflow_session::repo::{self, CorrectedStay, StayForReview};
pub(crate) use parkflow_session::{Correction, Resolution};
use uuid::Uuid;

use super::audit::{self, AuditEntry};
use super::sessions::{SESSION_COLUMNS, SessionView};
use super::{Db, StoreError, db_time};
use crate::registry::Lot;
use crate::session::ReviewKind;

/// Why a case could not be resolved so.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("the case is resolved already")]
    Resolved,
    #[error(
        "only a session in review can be corrected (a closed one is billed: refund it instead)"
    )]
    SessionNotInReview,
    #[error("this correction needs a session that ended (it has no exit)")]
    NoExit,
    #[error(
        "with_session must be another session of the case's lot, open or in review, entered before the case's exit"
    )]
    NotMergeable,
    #[error("at must fall strictly inside the stay")]
    OutsideStay,
    #[error("the stay cannot be priced: the lot has no tariff in force at its entry")]
    Unpriced,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CorrectionError> for ResolveError {
    fn from(error: CorrectionError) -> Self {
        match error {
            CorrectionError::SessionNotInReview => Self::SessionNotInReview,
            CorrectionError::NoExit => Self::NoExit,
            CorrectionError::NotMergeable => Self::NotMergeable,
            CorrectionError::OutsideStay => Self::OutsideStay,
        }
    }
}

/// A case's lot and session, if it is unresolved.
pub(crate) async fn case(
    db: &Db,
    id: Uuid,
) -> Result<Option<(String, Option<Uuid>, bool)>, StoreError> {
    let row: Option<(String, Option<Uuid>, Option<DateTime<Utc>>)> =
        query("SELECT lot_id, session_id, resolved_at FROM review_items WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(lot, session, resolved)| (lot, session, resolved.is_some())))
}

/// A review case as a correction reads it.
#[derive(sqlx::FromRow)]
struct CaseRow {
    #[sqlx(try_from = "String")]
    kind: ReviewKind,
    session_id: Option<Uuid>,
    gate_id: Option<String>,
    event_id: Option<String>,
    created_at: DateTime<Utc>,
}

/// A stay's price: the tariff version in force at entry, the fee in minor units, its currency.
struct Priced {
    tariff_from: DateTime<Utc>,
    fee_minor: i64,
    currency: String,
}

fn price(lot: &Lot, stay: &Stay) -> Result<Priced, ResolveError> {
    let tariff = lot
        .tariffs
        .in_force_at(stay.entered_at)
        .ok_or(ResolveError::Unpriced)?;
    let fee = tariff.fee(stay).map_err(|_| ResolveError::Unpriced)?;
    Ok(Priced {
        tariff_from: tariff.effective_from(),
        fee_minor: fee.to_minor().map_err(|_| ResolveError::Unpriced)?,
        currency: fee.currency().as_str().to_owned(),
    })
}

/// Resolves case `id` with `correction`, in one transaction: the case, its session(s), the charge
/// queue and the audit `entry` change together or not at all. `lot` is the case's lot (its
/// tariffs price the stays a correction closes).
pub(crate) async fn resolve(
    db: &Db,
    id: Uuid,
    lot: &Lot,
    correction: &Correction,
    entry: &AuditEntry,
) -> Result<(), ResolveError> {
    let now = db_time(entry.at);
    let mut tx = db.begin_write().await?;
    if !repo::resolve_case(&mut tx, id, correction.resolution(), now).await? {
        return Err(ResolveError::Resolved);
    }
    let case = read_case(&mut tx, id, lot).await?;
    let other = match correction {
        Correction::Merge { with_session } => stay(&mut tx, *with_session).await?,
        _ => None,
    };
    let plan = correction::plan(&case, other.as_ref(), correction)?;
    for new in &plan.insert {
        let new = StayForReview {
            id: new.id,
            lot: &case.lot,
            plate: &new.plate,
            plate_color: new.plate_color.as_deref(),
            pass_holder: new.pass_holder,
            entered_at: new.entered_at,
            exited_at: new.exited_at,
            bay: new.bay.as_deref(),
        };
        repo::insert_for_review(&mut tx, &new, now).await?;
    }
    if let Some(session) = plan.settle_cases_of {
        repo::resolve_cases_of(&mut tx, session, correction.resolution(), now).await?;
    }
    if let Some(voided) = plan.void
        && !repo::void(&mut tx, voided, now).await?
    {
        return Err(ResolveError::SessionNotInReview);
    }
    for closing in &plan.close {
        close(&mut tx, lot, closing, now).await?;
    }
    audit::insert(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(())
}

/// The case as the plan needs it: its session, or the bay's stay of an on-street case without
/// one, or the read of an exit without an entry.
async fn read_case(tx: &mut Tx, id: Uuid, lot: &Lot) -> Result<Case, ResolveError> {
    let row: CaseRow = query(
        "SELECT kind, session_id, gate_id, event_id, created_at FROM review_items WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let kind = row.kind;
    let stay = match row.session_id {
        Some(session) => self::stay(tx, session).await?,
        None => None,
    };
    let bay_stay = if stay.is_none() && kind == ReviewKind::NoPlate {
        let bay: Option<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = query(
            "SELECT bay_id, started_at, ended_at FROM bay_sessions WHERE id = $1 AND lot_id = $2",
        )
        .bind(id)
        .bind(lot.id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        bay.map(|(bay, started_at, ended_at)| BayStay {
            bay,
            started_at,
            ended_at,
        })
    } else {
        None
    };
    let exit_read = match (row.gate_id, row.event_id) {
        (Some(gate), Some(event)) if stay.is_none() => {
            let observed: Option<(DateTime<Utc>,)> = query(
                "SELECT observed_at FROM gate_reads
                 WHERE lot_id = $1 AND gate_id = $2 AND event_id = $3",
            )
            .bind(lot.id.as_str())
            .bind(&gate)
            .bind(&event)
            .fetch_optional(&mut *tx)
            .await?;
            Some((gate, event, observed.map_or(row.created_at, |(at,)| at)))
        }
        _ => None,
    };
    Ok(Case {
        id,
        lot: lot.id.as_str().to_owned(),
        stay,
        bay_stay,
        exit_read,
    })
}

/// A session as corrections read it.
async fn stay(tx: &mut Tx, session: Uuid) -> Result<Option<correction::Stay>, StoreError> {
    let view: Option<SessionView> = query(format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
    ))
    .bind(session)
    .fetch_optional(tx)
    .await?;
    Ok(view.map(|s| correction::Stay {
        id: s.id,
        lot: s.lot_id,
        plate: s.plate,
        plate_color: s.plate_color,
        status: s.status,
        pass_holder: s.pass_holder,
        entered_at: s.entered_at,
        exited_at: s.exited_at,
        exit_gate: s.exit_gate,
        exit_event: s.exit_event_id,
        bay: s.bay_id,
    }))
}

/// Prices a stay a correction closes and closes it (queued for its one charge).
async fn close(
    tx: &mut Tx,
    lot: &Lot,
    closing: &Closing,
    now: DateTime<Utc>,
) -> Result<(), ResolveError> {
    // A session with a charge is billed already (a car that paid at the exit, say).
    let (charged,): (i64,) = query("SELECT COUNT(*) FROM charges WHERE session_id = $1")
        .bind(closing.session)
        .fetch_one(&mut *tx)
        .await?;
    if charged > 0 {
        return Err(ResolveError::NotMergeable);
    }
    // A pass recorded at entry, or one for the plate at either end of the stay, makes it
    // free, as at the gates.
    let (passes,): (i64,) = query(
        "SELECT COUNT(*) FROM passes WHERE lot_id = $1 AND plate = $2
             AND ((valid_from <= $3 AND valid_until > $3) OR (valid_from <= $4 AND valid_until > $4))",
    )
    .bind(lot.id.as_str())
    .bind(&closing.plate)
    .bind(closing.entered_at)
    .bind(closing.exited_at)
    .fetch_one(&mut *tx)
    .await?;
    let pass_holder = closing.pass_at_entry || passes > 0;
    let priced = price(
        lot,
        &Stay {
            entered_at: closing.entered_at,
            exited_at: closing.exited_at,
            plate_color: closing.plate_color.as_deref().and_then(PlateColor::parse),
            pass_holder,
        },
    )?;
    let corrected = CorrectedStay {
        session: closing.session,
        plate: &closing.plate,
        plate_color: closing.plate_color.as_deref(),
        pass_holder,
        exited_at: closing.exited_at,
        exit_gate: closing.exit_gate.as_deref(),
        exit_event: closing.exit_event.as_deref(),
        tariff_from: priced.tariff_from,
        fee_minor: priced.fee_minor,
        currency: &priced.currency,
    };
    if !repo::close_corrected(tx, &corrected, now).await? {
        return Err(ResolveError::NotMergeable);
    }
    Ok(())
}
