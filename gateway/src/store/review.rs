//! Resolving review cases (SPEC §3: corrections leave an audit trail, sessions are never deleted).
//! A case's session is in review: never priced, never charged, so a correction moves no money
//! until it closes a stay, priced like any other and queued for its one charge in the same
//! commit. A closed (billed) session is corrected by a refund instead.
//!
//! - accept: the case stands as recorded (a stay in review that ended is priced as it is);
//! - void: the stay did not happen;
//! - edit plate: the stay was read wrong (or not at all: an on-street stay without a plate
//!   becomes a session): it is the corrected plate's, priced;
//! - merge: the case's session is the other end of another session's stay (a misread exit and
//!   its entry): the entry's session takes the exit and is priced, the case's is voided;
//! - split: one recorded stay was two, cut at a given instant: both are priced.

use chrono::{DateTime, Utc};
use parkflow_billing::Stay;
use parkflow_protocol::{Plate, PlateColor};
use uuid::Uuid;

use parkflow_db::{Tx, query};
pub use parkflow_session::Resolution;
use parkflow_session::repo::{self, CorrectedStay, StayForReview};

use super::audit::{self, AuditEntry};
use super::sessions::{SESSION_COLUMNS, SessionView};
use super::{Db, StoreError, db_time};
use crate::registry::Lot;
use crate::session::{ReviewKind, SessionStatus};

/// What a correction needs besides the case.
#[derive(Debug, Clone)]
pub enum Correction {
    Accept,
    VoidSession,
    EditPlate {
        plate: Plate,
        plate_color: Option<PlateColor>,
    },
    Merge {
        with_session: Uuid,
    },
    Split {
        at: DateTime<Utc>,
        /// The id the second stay gets.
        second: Uuid,
    },
}

impl Correction {
    pub fn resolution(&self) -> Resolution {
        match self {
            Self::Accept => Resolution::Accept,
            Self::VoidSession => Resolution::VoidSession,
            Self::EditPlate { .. } => Resolution::EditPlate,
            Self::Merge { .. } => Resolution::Merge,
            Self::Split { .. } => Resolution::Split,
        }
    }
}

/// Why a case could not be resolved so.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
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

/// A case's lot and session, if it is unresolved.
pub async fn case(db: &Db, id: Uuid) -> Result<Option<(String, Option<Uuid>, bool)>, StoreError> {
    let row: Option<(String, Option<Uuid>, Option<DateTime<Utc>>)> =
        query("SELECT lot_id, session_id, resolved_at FROM review_items WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(lot, session, resolved)| (lot, session, resolved.is_some())))
}

/// A stay a correction closes and prices.
struct Closing {
    session: Uuid,
    plate: String,
    colour: Option<String>,
    entered_at: DateTime<Utc>,
    exited_at: DateTime<Utc>,
    exit_gate: Option<String>,
    exit_event: Option<String>,
    /// The session recorded a pass at its entry.
    pass_at_entry: bool,
}

impl Closing {
    /// `stay` as recorded, for `plate` in `colour`, ending at `exited_at`.
    fn whole(
        stay: &SessionView,
        plate: String,
        colour: Option<String>,
        exited_at: DateTime<Utc>,
    ) -> Self {
        Self {
            session: stay.id,
            plate,
            colour,
            entered_at: stay.entered_at,
            exited_at,
            exit_gate: stay.exit_gate.clone(),
            exit_event: stay.exit_event_id.clone(),
            pass_at_entry: stay.pass_holder,
        }
    }
}

/// A review case as a correction reads it.
#[derive(sqlx::FromRow)]
struct CaseRow {
    kind: String,
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
pub async fn resolve(
    db: &Db,
    id: Uuid,
    lot: &Lot,
    correction: &Correction,
    entry: &AuditEntry,
) -> Result<(), ResolveError> {
    let now = db_time(entry.at);
    let resolution = correction.resolution();
    let mut tx = db.begin_write().await?;
    if !repo::resolve_case(&mut tx, id, resolution, now).await? {
        return Err(ResolveError::Resolved);
    }
    let case: CaseRow = query(
        "SELECT kind, session_id, gate_id, event_id, created_at FROM review_items WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut tx)
    .await?;
    let kind = ReviewKind::parse(&case.kind)
        .ok_or_else(|| StoreError::Corrupt(format!("kind of review case {id}")))?;
    let mut stay = match case.session_id {
        Some(session) => self::stay(&mut tx, session).await?,
        None => None,
    };
    let lot_id = lot.id.as_str();
    // An on-street stay that ended without a plate has no session yet: the plate an operator
    // reads from the camera's images makes it one (in review until priced below).
    if let (None, ReviewKind::NoPlate, Correction::EditPlate { plate, plate_color }) =
        (&stay, kind, correction)
    {
        let bay: Option<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = query(
            "SELECT bay_id, started_at, ended_at FROM bay_sessions WHERE id = $1 AND lot_id = $2",
        )
        .bind(id)
        .bind(lot_id)
        .fetch_optional(&mut tx)
        .await?;
        let (bay, started_at, ended_at) = bay.ok_or(ResolveError::SessionNotInReview)?;
        let ended_at = ended_at.ok_or(ResolveError::NoExit)?;
        let new = StayForReview {
            id,
            lot: lot_id,
            plate: plate.as_str(),
            plate_color: plate_color.map(PlateColor::as_str),
            pass_holder: false,
            entered_at: started_at,
            exited_at: Some(ended_at),
            bay: Some(&bay),
        };
        repo::insert_for_review(&mut tx, &new, now).await?;
        stay = self::stay(&mut tx, id).await?;
    }
    let in_review = |stay: Option<SessionView>| {
        stay.filter(|s| SessionStatus::parse(&s.status) == Some(SessionStatus::Review))
            .ok_or(ResolveError::SessionNotInReview)
    };
    let mut closings: Vec<Closing> = Vec::new();
    let mut voided = None;
    match correction {
        Correction::Accept => {
            // The stay stands as recorded: one in review that ended (a doubtful exit match,
            // say) is priced and billed as it is; anything else only leaves the queue.
            if let Some(stay) =
                stay.filter(|s| SessionStatus::parse(&s.status) == Some(SessionStatus::Review))
                && let Some(exited_at) = stay.exited_at
            {
                let (plate, colour) = (stay.plate.clone(), stay.plate_color.clone());
                closings.push(Closing::whole(&stay, plate, colour, exited_at));
            }
        }
        Correction::VoidSession => voided = Some(in_review(stay)?.id),
        Correction::EditPlate { plate, plate_color } => {
            let stay = in_review(stay)?;
            let exited_at = stay.exited_at.ok_or(ResolveError::NoExit)?;
            let colour = plate_color
                .map(|c| c.as_str().to_owned())
                .or(stay.plate_color.clone());
            let mut closing = Closing::whole(&stay, plate.as_str().to_owned(), colour, exited_at);
            // A pass recorded at entry was the misread plate's, not this one's.
            closing.pass_at_entry = closing.pass_at_entry && stay.plate == plate.as_str();
            closings.push(closing);
        }
        Correction::Merge { with_session } => {
            // The exit: the case's session's (in review), or, for an exit without an entry,
            // the case's own read.
            let (exited_at, exit_gate, exit_event, colour, exit_session) = match stay {
                Some(stay) => {
                    let stay = in_review(Some(stay))?;
                    let exited_at = stay.exited_at.ok_or(ResolveError::NoExit)?;
                    let colour = stay.plate_color;
                    (
                        exited_at,
                        stay.exit_gate,
                        stay.exit_event_id,
                        colour,
                        Some(stay.id),
                    )
                }
                None => {
                    let (Some(gate), Some(event)) = (case.gate_id, case.event_id) else {
                        return Err(ResolveError::NoExit);
                    };
                    let observed: Option<(DateTime<Utc>,)> = query(
                        "SELECT observed_at FROM gate_reads
                         WHERE lot_id = $1 AND gate_id = $2 AND event_id = $3",
                    )
                    .bind(lot_id)
                    .bind(&gate)
                    .bind(&event)
                    .fetch_optional(&mut tx)
                    .await?;
                    let exited_at = observed.map_or(case.created_at, |(at,)| at);
                    (exited_at, Some(gate), Some(event), None, None)
                }
            };
            let entry = self::stay(&mut tx, *with_session)
                .await?
                .filter(|e| {
                    Some(e.id) != exit_session
                        && e.lot_id == lot_id
                        && SessionStatus::parse(&e.status)
                            .is_some_and(SessionStatus::is_correctable)
                        && e.entered_at <= exited_at
                })
                .ok_or(ResolveError::NotMergeable)?;
            let colour = entry.plate_color.clone().or(colour);
            let mut closing = Closing::whole(&entry, entry.plate.clone(), colour, exited_at);
            (closing.exit_gate, closing.exit_event) = (exit_gate, exit_event);
            closings.push(closing);
            voided = exit_session;
            // The entry's own unresolved cases (a missed exit, say) are settled by the merge.
            repo::resolve_cases_of(&mut tx, entry.id, resolution, now).await?;
        }
        Correction::Split { at, second } => {
            let stay = in_review(stay)?;
            let exited_at = stay.exited_at.ok_or(ResolveError::NoExit)?;
            let at = db_time(*at);
            if !(stay.entered_at < at && at < exited_at) {
                return Err(ResolveError::OutsideStay);
            }
            let new = StayForReview {
                id: *second,
                lot: &stay.lot_id,
                plate: &stay.plate,
                plate_color: stay.plate_color.as_deref(),
                pass_holder: stay.pass_holder,
                entered_at: at,
                exited_at: None,
                bay: stay.bay_id.as_deref(),
            };
            repo::insert_for_review(&mut tx, &new, now).await?;
            let (plate, colour) = (stay.plate.clone(), stay.plate_color.clone());
            let mut first = Closing::whole(&stay, plate.clone(), colour.clone(), at);
            (first.exit_gate, first.exit_event) = (None, None);
            let mut then = Closing::whole(&stay, plate, colour, exited_at);
            (then.session, then.entered_at) = (*second, at);
            closings.extend([first, then]);
        }
    }
    if let Some(voided) = voided
        && !repo::void(&mut tx, voided, now).await?
    {
        return Err(ResolveError::SessionNotInReview);
    }
    for closing in closings {
        close(&mut tx, lot, &closing, now).await?;
    }
    audit::insert(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(())
}

/// A session as corrections read it.
async fn stay(tx: &mut Tx, session: Uuid) -> Result<Option<SessionView>, StoreError> {
    query(format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
    ))
    .bind(session)
    .fetch_optional(tx)
    .await
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
            plate_color: closing.colour.as_deref().and_then(PlateColor::parse),
            pass_holder,
        },
    )?;
    let corrected = CorrectedStay {
        session: closing.session,
        plate: &closing.plate,
        plate_color: closing.colour.as_deref(),
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
