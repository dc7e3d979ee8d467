//! Drivers, the payers: their payment account, their consent to auto-debit, their standing and
//! the plates billed to them. The one writer of `drivers` and `driver_plates`: enrolment and
//! provisioning (the gateway) and arrears (suspensions) all write through here.

use chrono::{DateTime, Utc};
use parkflow_db::{Db, StoreError, Tx, db_time, query};
use parkflow_protocol::{Plate, PlateColor};
use parkflow_session::{Unknown, from_text};
use serde::Serialize;
use uuid::Uuid;

use crate::arrears::StandingChange;
use crate::mandates::MandateState;

/// A driver's standing: a suspended driver's exits are held until what is overdue is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriverStatus {
    Active,
    Suspended,
}

impl DriverStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Suspended]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// Rows decode a status through this (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for DriverStatus {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(
            value,
            &[Self::Active, Self::Suspended],
            Self::as_str,
            "driver status",
        )
    }
}

/// A driver to store.
#[derive(Debug, Clone, Copy)]
pub struct NewDriver<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub status: DriverStatus,
    pub auto_debit: bool,
    pub payment_account: Option<&'a str>,
}

/// Enrols a driver (a new id).
pub async fn insert(
    tx: &mut Tx,
    driver: &NewDriver<'_>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    write(tx, driver, at, "").await
}

/// Stores a driver as a plan describes them: inserted, or brought back to the plan's name,
/// standing and account.
pub async fn upsert(
    tx: &mut Tx,
    driver: &NewDriver<'_>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    write(
        tx,
        driver,
        at,
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name, status = excluded.status,
             payment_account = excluded.payment_account",
    )
    .await
}

/// Inserts `driver`, with `on_conflict` deciding what an existing row becomes.
async fn write(
    tx: &mut Tx,
    driver: &NewDriver<'_>,
    at: DateTime<Utc>,
    on_conflict: &str,
) -> Result<(), StoreError> {
    query(format!(
        "INSERT INTO drivers (id, name, status, auto_debit, payment_account, created_at)
         VALUES ($1, $2, $3, $4, $5, $6){on_conflict}"
    ))
    .bind(driver.id)
    .bind(driver.name)
    .bind(driver.status.as_str())
    .bind(driver.auto_debit)
    .bind(driver.payment_account)
    .bind(db_time(at))
    .execute(tx)
    .await
    .map(drop)
}

/// A driver who owes: suspended, or with an invoice not yet paid or written off. Such a driver
/// can neither take a plate off their account nor withdraw their auto-debit consent: the debt
/// stays with the debtor.
const OWES: &str = "(EXISTS (SELECT 1 FROM drivers o WHERE o.id = $1 AND o.status = 'suspended')
     OR EXISTS (SELECT 1 FROM invoices o WHERE o.driver_id = $1 AND o.status = 'open'))";

/// What became of a change a debt may stand in the way of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Done,
    /// Nothing of the driver's by that name (or no such driver).
    NotFound,
    /// Refused while the driver owes.
    Owing,
    /// Refused while a car under the plate is parked: its stay will be billed to this driver.
    Parked,
}

/// Changes what is given of a driver's name and payment account, and withdraws their auto-debit
/// consent when `auto_debit` is `Some(false)` (refused while the driver owes). Giving consent is
/// [`crate::mandates::set_up`]'s: auto-debit is on only with a confirmed mandate.
pub async fn update(
    db: &Db,
    id: Uuid,
    name: Option<&str>,
    payment_account: Option<&str>,
    auto_debit: Option<bool>,
) -> Result<Change, StoreError> {
    let updated = query(format!(
        "UPDATE drivers SET name = COALESCE($2, name), payment_account = COALESCE($3, payment_account),
             auto_debit = CASE WHEN $4 = FALSE THEN FALSE ELSE auto_debit END,
             mandate_status = CASE WHEN $4 = FALSE THEN NULL ELSE mandate_status END,
             mandate_ref = CASE WHEN $4 = FALSE THEN NULL ELSE mandate_ref END
         WHERE id = $1 AND NOT (COALESCE($4, auto_debit) = FALSE AND auto_debit = TRUE AND {OWES})"
    ))
    .bind(id)
    .bind(name)
    .bind(payment_account)
    .bind(auto_debit)
    .execute(db)
    .await?;
    if updated == 1 {
        return Ok(Change::Done);
    }
    let exists: Option<(Uuid,)> = query("SELECT id FROM drivers WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(if exists.is_some() {
        Change::Owing
    } else {
        Change::NotFound
    })
}

/// Gives a driver a plate nobody holds (a claim on it proven or approved): the driver who holds
/// it afterwards, `driver` unless another driver had it already.
pub(crate) async fn take_free_plate(
    tx: &mut Tx,
    driver: Uuid,
    plate: &Plate,
    color: Option<PlateColor>,
    at: DateTime<Utc>,
) -> Result<Uuid, StoreError> {
    query(
        "INSERT INTO driver_plates (plate, driver_id, plate_color, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (plate) DO NOTHING",
    )
    .bind(plate.as_str())
    .bind(driver)
    .bind(color.map(PlateColor::as_str))
    .bind(db_time(at))
    .execute(&mut *tx)
    .await?;
    let (holder,): (Uuid,) = query("SELECT driver_id FROM driver_plates WHERE plate = $1")
        .bind(plate.as_str())
        .fetch_one(tx)
        .await?;
    Ok(holder)
}

/// Takes a plate from whoever holds it (an operator handing it to a proven claimant), on the
/// terms of [`remove_plate`].
pub(crate) async fn release_plate(tx: &mut Tx, plate: &Plate) -> Result<Change, StoreError> {
    let holder: Option<(Uuid,)> = query("SELECT driver_id FROM driver_plates WHERE plate = $1")
        .bind(plate.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    match holder {
        Some((holder,)) => remove_plate(tx, holder, plate).await,
        None => Ok(Change::NotFound),
    }
}

/// Gives a driver a plate as a plan describes it, whoever had it before.
pub async fn assign_plate(
    tx: &mut Tx,
    driver: Uuid,
    plate: &Plate,
    color: Option<PlateColor>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO driver_plates (plate, driver_id, plate_color, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (plate) DO UPDATE SET driver_id = excluded.driver_id, plate_color = excluded.plate_color",
    )
    .bind(plate.as_str())
    .bind(driver)
    .bind(color.map(PlateColor::as_str))
    .bind(db_time(at))
    .execute(tx)
    .await
    .map(drop)
}

/// Takes a plate from a driver, unless they owe or a car under it is parked (the driver its stay
/// is billed to is fixed when it leaves: removing the plate first would leave nobody to bill).
pub async fn remove_plate(tx: &mut Tx, driver: Uuid, plate: &Plate) -> Result<Change, StoreError> {
    const PARKED: &str =
        "EXISTS (SELECT 1 FROM sessions s WHERE s.plate = $2 AND s.status = 'open')";
    let removed = query(format!(
        "DELETE FROM driver_plates WHERE driver_id = $1 AND plate = $2 AND NOT {OWES} AND NOT {PARKED}"
    ))
    .bind(driver)
    .bind(plate.as_str())
    .execute(&mut *tx)
    .await?;
    if removed == 1 {
        return Ok(Change::Done);
    }
    let theirs: Option<(bool,)> = query(format!(
        "SELECT {PARKED} FROM driver_plates WHERE driver_id = $1 AND plate = $2"
    ))
    .bind(driver)
    .bind(plate.as_str())
    .fetch_optional(tx)
    .await?;
    Ok(match theirs {
        None => Change::NotFound,
        Some((true,)) => Change::Parked,
        Some((false,)) => Change::Owing,
    })
}

/// Suspends every active driver with an open invoice due by `now`; the suspended ones.
pub(crate) async fn suspend_overdue(
    tx: &mut Tx,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    let suspended: Vec<(Uuid,)> = query(
        "UPDATE drivers SET status = $2, suspended_at = $1
         WHERE status = $3
           AND id IN (SELECT driver_id FROM invoices WHERE status = 'open' AND due_at <= $1)
         RETURNING id",
    )
    .bind(db_time(now))
    .bind(DriverStatus::Suspended.as_str())
    .bind(DriverStatus::Active.as_str())
    .fetch_all(tx)
    .await?;
    Ok(suspended.into_iter().map(|(id,)| id).collect())
}

/// Reinstates the drivers arrears suspended (not those provisioned suspended) who owe nothing
/// overdue at `now`: a suspension that raced a payment heals here. The reinstated ones.
pub(crate) async fn reinstate_cleared(
    tx: &mut Tx,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    let reinstated: Vec<(Uuid,)> = query(
        "UPDATE drivers SET status = $2, suspended_at = NULL
         WHERE status = $3 AND suspended_at IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM invoices i
                           WHERE i.driver_id = drivers.id AND i.status = 'open' AND i.due_at <= $1)
         RETURNING id",
    )
    .bind(db_time(now))
    .bind(DriverStatus::Active.as_str())
    .bind(DriverStatus::Suspended.as_str())
    .fetch_all(tx)
    .await?;
    Ok(reinstated.into_iter().map(|(id,)| id).collect())
}

/// Reinstates `driver` if suspended and nothing of theirs is overdue at `now`; whether it did.
pub(crate) async fn reinstate_if_clear(
    tx: &mut Tx,
    driver: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let reinstated = query(
        "UPDATE drivers SET status = $3, suspended_at = NULL
         WHERE id = $1 AND status = $4
           AND NOT EXISTS (SELECT 1 FROM invoices
                           WHERE driver_id = $1 AND status = 'open' AND due_at <= $2)",
    )
    .bind(driver)
    .bind(db_time(now))
    .bind(DriverStatus::Active.as_str())
    .bind(DriverStatus::Suspended.as_str())
    .execute(tx)
    .await?;
    Ok(reinstated == 1)
}

/// A driver whose mandate is due to be asked about (or set up).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MandateDue {
    pub driver: Uuid,
    pub reference: Option<String>,
    pub account: Option<String>,
}

/// Drivers on auto-debit whose mandate was last checked before `since` (or never: consent given
/// before mandates), and drivers whose mandate request went unanswered then.
pub(crate) async fn mandates_due(
    db: &Db,
    since: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<MandateDue>, StoreError> {
    query(
        "SELECT id AS driver, mandate_ref AS reference, payment_account AS account FROM drivers
         WHERE (auto_debit = TRUE OR mandate_status = 'unconfirmed')
           AND (mandate_checked_at IS NULL OR mandate_checked_at < $1)
         ORDER BY mandate_checked_at NULLS FIRST, id LIMIT $2",
    )
    .bind(db_time(since))
    .bind(i64::from(limit))
    .fetch_all(db)
    .await
}

/// Which answer a mandate's new state is: of a request (the driver is waiting for one), or of a
/// check of the mandate the driver holds. A state is recorded only while the driver is still
/// where the question was asked from: a withdrawal of consent, a newer request or another account
/// in between make the answer stale, and it changes nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answering<'a> {
    Request,
    Check(&'a str),
}

/// Records where `driver`'s mandate stands: auto-debit is on exactly while it is active. The
/// driver's new standing when that turned auto-debit on or off.
pub(crate) async fn set_mandate(
    db: &Db,
    driver: Uuid,
    state: MandateState,
    reference: Option<&str>,
    answering: Answering<'_>,
    now: DateTime<Utc>,
) -> Result<Option<StandingChange>, StoreError> {
    let active = state == MandateState::Active;
    let mut tx = db.begin_write().await?;
    let before: Option<(bool, String)> =
        query("SELECT auto_debit, status FROM drivers WHERE id = $1")
            .bind(driver)
            .fetch_optional(&mut tx)
            .await?;
    let Some((was_active, status)) = before else {
        return Ok(None);
    };
    let still = match answering {
        Answering::Request => "mandate_status = 'unconfirmed'",
        Answering::Check(_) => {
            "mandate_status = 'active' AND auto_debit = TRUE AND mandate_ref = $6"
        }
    };
    let mut update = query(format!(
        "UPDATE drivers SET auto_debit = $2, mandate_status = $3, mandate_ref = $4,
             mandate_checked_at = $5
         WHERE id = $1 AND {still}"
    ))
    .bind(driver)
    .bind(active)
    .bind(state.as_str())
    .bind(reference.filter(|_| active))
    .bind(db_time(now));
    if let Answering::Check(reference) = answering {
        update = update.bind(reference);
    }
    let updated = update.execute(&mut tx).await?;
    let change = if updated == 0 || was_active == active {
        None
    } else {
        let plates: Vec<(String, bool)> = query(crate::arrears::DRIVER_PLATES)
            .bind(driver)
            .fetch_all(&mut tx)
            .await?;
        let suspended = DriverStatus::parse(&status) == Some(DriverStatus::Suspended);
        let mut change = StandingChange::new(driver, plates, suspended);
        change.auto_debit = active;
        Some(change)
    };
    tx.commit().await?;
    Ok(change)
}

/// A mandate taken for a check now: not due again before the next interval, whatever the
/// provider answers (or if it cannot be asked), its state left as it is.
pub(crate) async fn mandate_asked(
    db: &Db,
    driver: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    query("UPDATE drivers SET mandate_checked_at = $2 WHERE id = $1")
        .bind(driver)
        .bind(db_time(now))
        .execute(db)
        .await
        .map(drop)
}

/// Marks `driver` as waiting for a mandate (consent given, not confirmed yet): if asking the
/// provider fails now, the next check asks again.
pub async fn awaiting_mandate(
    on: impl parkflow_db::Executor<'_>,
    driver: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    query("UPDATE drivers SET mandate_status = $2, mandate_checked_at = $3 WHERE id = $1")
        .bind(driver)
        .bind(MandateState::Unconfirmed.as_str())
        .bind(db_time(now))
        .execute(on)
        .await
        .map(drop)
}
