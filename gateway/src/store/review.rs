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

use super::audit::{AuditEntry, insert_entry};
use super::sessions::{SESSION_COLUMNS, SessionView};
use super::{BeginWrite, Db, StoreError, db_time, on_db};
use crate::registry::Lot;

/// What an operator decides about a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The case stands as recorded.
    Accept,
    /// The case's session (in review: never priced, never charged) did not happen.
    VoidSession,
    /// The case's session is the stay of another plate (`plate`): priced and billed as such.
    EditPlate,
    /// The case's session is the exit of another session's stay (`with_session`, open or in
    /// review, same lot): that session takes the exit and is priced; the case's is voided.
    Merge,
    /// The case's session was two stays, the second from `at`: both are priced.
    Split,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accepted",
            Self::VoidSession => "session_voided",
            Self::EditPlate => "plate_edited",
            Self::Merge => "merged",
            Self::Split => "split",
        }
    }
}

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
    let row: Option<(String, Option<Uuid>, Option<DateTime<Utc>>)> = on_db!(db, pool => sqlx::query_as(
        "SELECT lot_id, session_id, resolved_at FROM review_items WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?);
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
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await.map_err(StoreError::from)?;
        let resolved = sqlx::query(
            "UPDATE review_items SET resolved_at = $2, resolution = $3 WHERE id = $1 AND resolved_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(resolution.as_str())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        if resolved != 1 {
            return Err(ResolveError::Resolved);
        }
        let case: CaseRow = sqlx::query_as(
            "SELECT kind, session_id, gate_id, event_id, created_at FROM review_items WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let stay_sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let mut stay: Option<SessionView> = match case.session_id {
            Some(session) => sqlx::query_as(&stay_sql).bind(session).fetch_optional(&mut *tx).await.map_err(StoreError::from)?,
            None => None,
        };
        let lot_id = lot.id.as_str();
        // An on-street stay that ended without a plate has no session yet: the plate an operator
        // reads from the camera's images makes it one (in review until priced below).
        if let (None, "no_plate", Correction::EditPlate { plate, plate_color }) = (&stay, case.kind.as_str(), correction) {
            let bay: Option<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
                "SELECT bay_id, started_at, ended_at FROM bay_sessions WHERE id = $1 AND lot_id = $2",
            )
            .bind(id)
            .bind(lot_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            let (bay, started_at, ended_at) = bay.ok_or(ResolveError::SessionNotInReview)?;
            let ended_at = ended_at.ok_or(ResolveError::NoExit)?;
            sqlx::query(
                "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, entered_at, exited_at, bay_id, updated_at)
                 VALUES ($1, $2, $3, $4, 'review', $5, $6, $7, $8, $9)",
            )
            .bind(id)
            .bind(lot_id)
            .bind(plate.as_str())
            .bind(plate_color.map(PlateColor::as_str))
            .bind(false)
            .bind(started_at)
            .bind(ended_at)
            .bind(&bay)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            stay = sqlx::query_as(&stay_sql).bind(id).fetch_optional(&mut *tx).await.map_err(StoreError::from)?;
        }
        let in_review = |stay: Option<SessionView>| stay.filter(|s| s.status == "review").ok_or(ResolveError::SessionNotInReview);
        let mut closings: Vec<Closing> = Vec::new();
        let mut voided = None;
        match correction {
            Correction::Accept => {
                // The stay stands as recorded: one in review that ended (a doubtful exit match,
                // say) is priced and billed as it is; anything else only leaves the queue.
                if let Some(stay) = stay.filter(|s| s.status == "review")
                    && let Some(exited_at) = stay.exited_at
                {
                    closings.push(Closing::whole(&stay, stay.plate.clone(), stay.plate_color.clone(), exited_at));
                }
            }
            Correction::VoidSession => voided = Some(in_review(stay)?.id),
            Correction::EditPlate { plate, plate_color } => {
                let stay = in_review(stay)?;
                let exited_at = stay.exited_at.ok_or(ResolveError::NoExit)?;
                let colour = plate_color.map(|c| c.as_str().to_owned()).or(stay.plate_color.clone());
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
                        (stay.exited_at.ok_or(ResolveError::NoExit)?, stay.exit_gate, stay.exit_event_id, stay.plate_color, Some(stay.id))
                    }
                    None => {
                        let (Some(gate), Some(event)) = (case.gate_id, case.event_id) else {
                            return Err(ResolveError::NoExit);
                        };
                        let observed: Option<(DateTime<Utc>,)> = sqlx::query_as(
                            "SELECT observed_at FROM gate_reads WHERE lot_id = $1 AND gate_id = $2 AND event_id = $3",
                        )
                        .bind(lot_id)
                        .bind(&gate)
                        .bind(&event)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                        (observed.map_or(case.created_at, |(at,)| at), Some(gate), Some(event), None, None)
                    }
                };
                let entry: SessionView = sqlx::query_as::<_, SessionView>(&stay_sql)
                    .bind(with_session)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from)?
                    .filter(|e| Some(e.id) != exit_session && e.lot_id == lot_id
                        && (e.status == "open" || e.status == "review") && e.entered_at <= exited_at)
                    .ok_or(ResolveError::NotMergeable)?;
                let mut closing = Closing::whole(&entry, entry.plate.clone(), entry.plate_color.clone().or(colour), exited_at);
                (closing.exit_gate, closing.exit_event) = (exit_gate, exit_event);
                closings.push(closing);
                voided = exit_session;
                // The entry's own unresolved cases (a missed exit, say) are settled by the merge.
                sqlx::query("UPDATE review_items SET resolved_at = $2, resolution = $3 WHERE session_id = $1 AND resolved_at IS NULL")
                    .bind(entry.id)
                    .bind(now)
                    .bind(resolution.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
            }
            Correction::Split { at, second } => {
                let stay = in_review(stay)?;
                let exited_at = stay.exited_at.ok_or(ResolveError::NoExit)?;
                let at = db_time(*at);
                if !(stay.entered_at < at && at < exited_at) {
                    return Err(ResolveError::OutsideStay);
                }
                sqlx::query(
                    "INSERT INTO sessions (id, lot_id, plate, plate_color, status, pass_holder, entered_at, bay_id, updated_at)
                     VALUES ($1, $2, $3, $4, 'review', $5, $6, $7, $8)",
                )
                .bind(second)
                .bind(&stay.lot_id)
                .bind(&stay.plate)
                .bind(&stay.plate_color)
                .bind(stay.pass_holder)
                .bind(at)
                .bind(&stay.bay_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                let mut first = Closing::whole(&stay, stay.plate.clone(), stay.plate_color.clone(), at);
                (first.exit_gate, first.exit_event) = (None, None);
                let mut then = Closing::whole(&stay, stay.plate.clone(), stay.plate_color.clone(), exited_at);
                (then.session, then.entered_at) = (*second, at);
                closings.extend([first, then]);
            }
        }
        if let Some(voided) = voided {
            let voided = sqlx::query("UPDATE sessions SET status = 'void', updated_at = $2 WHERE id = $1 AND status = 'review'")
                .bind(voided)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?
                .rows_affected();
            if voided != 1 {
                return Err(ResolveError::SessionNotInReview);
            }
        }
        for closing in closings {
            // A session with a charge is billed already (a car that paid at the exit, say).
            let (charged,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM charges WHERE session_id = $1")
                .bind(closing.session)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            if charged > 0 {
                return Err(ResolveError::NotMergeable);
            }
            // A pass recorded at entry, or one for the plate at either end of the stay, makes it
            // free, as at the gates.
            let (passes,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM passes WHERE lot_id = $1 AND plate = $2
                     AND ((valid_from <= $3 AND valid_until > $3) OR (valid_from <= $4 AND valid_until > $4))",
            )
            .bind(lot_id)
            .bind(&closing.plate)
            .bind(closing.entered_at)
            .bind(closing.exited_at)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            let pass_holder = closing.pass_at_entry || passes > 0;
            let priced = price(lot, &Stay {
                entered_at: closing.entered_at,
                exited_at: closing.exited_at,
                plate_color: closing.colour.as_deref().and_then(PlateColor::parse),
                pass_holder,
            })?;
            let closed = sqlx::query(
                "UPDATE sessions SET status = 'closed', plate = $2, plate_color = $3, pass_holder = $4,
                     exited_at = $5, exit_gate = $6, exit_event_id = $7, tariff_from = $8, fee_minor = $9,
                     currency = $10, billed_plate = NULL, updated_at = $11
                 WHERE id = $1 AND status IN ('open', 'review')",
            )
            .bind(closing.session)
            .bind(&closing.plate)
            .bind(&closing.colour)
            .bind(pass_holder)
            .bind(closing.exited_at)
            .bind(&closing.exit_gate)
            .bind(&closing.exit_event)
            .bind(db_time(priced.tariff_from))
            .bind(priced.fee_minor)
            .bind(&priced.currency)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .rows_affected();
            if closed != 1 {
                return Err(ResolveError::NotMergeable);
            }
            sqlx::query("INSERT INTO charge_queue (session_id, queued_at) VALUES ($1, $2) ON CONFLICT (session_id) DO NOTHING")
                .bind(closing.session)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        insert_entry!(&mut *tx, entry).map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
    });
    Ok(())
}
