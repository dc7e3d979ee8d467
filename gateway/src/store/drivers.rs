//! Drivers, their plates and their API keys (keys are random, shown once, stored as SHA-256).
//! The driver rows themselves are billing's to write (`parkflow_billing::drivers`): enrolment
//! writes them through it, in the transaction that also issues the driver's key.

use chrono::{DateTime, Utc};
use parkflow_protocol::{Plate, PlateColor};
use serde::Serialize;
use uuid::Uuid;

use parkflow_billing::drivers::{self, DriverStatus, NewDriver};
/// Billing writes drivers (ARCHITECTURE.md, "Who writes each table"); these are its.
pub(crate) use parkflow_billing::drivers::{remove_plate, update};
use parkflow_db::query;

use super::{Db, StoreError, db_time};
use crate::registry::password_hash;

use super::keys::new_key;

/// Why a driver change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    #[error("plate is enrolled by another driver")]
    PlateTaken,
    #[error("driver store failed")]
    Store(#[source] StoreError),
}

impl From<StoreError> for DriverError {
    fn from(e: StoreError) -> Self {
        match e.constraint() {
            Some(c) if c.contains("plate") => Self::PlateTaken,
            _ => match &e {
                // SQLite names no constraint: a primary key clash on driver_plates is the plate.
                StoreError::Query(q)
                    if q.as_database_error()
                        .is_some_and(|d| d.message().contains("driver_plates.plate")) =>
                {
                    Self::PlateTaken
                }
                _ => Self::Store(e),
            },
        }
    }
}

/// A driver as the API shows them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct DriverView {
    pub id: Uuid,
    pub name: String,
    pub status: DriverStatus,
    pub auto_debit: bool,
    pub plates: Vec<PlateView>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct PlateView {
    pub plate: String,
    pub plate_color: Option<String>,
}

/// Enrols a driver with their plates and payment account; returns the driver and their API key.
pub(crate) async fn enrol(
    db: &Db,
    name: &str,
    payment_account: &str,
    plates: &[(Plate, Option<PlateColor>)],
    now: DateTime<Utc>,
) -> Result<(DriverView, String), DriverError> {
    let id = Uuid::now_v7();
    let key = new_key();
    let now = db_time(now);
    let mut tx = db.begin_write().await?;
    let enrolled = NewDriver {
        id,
        name,
        status: DriverStatus::Active,
        auto_debit: true,
        payment_account: Some(payment_account),
    };
    drivers::insert(&mut tx, &enrolled, now).await?;
    for (plate, color) in plates {
        drivers::add_plate(&mut tx, id, plate, *color, now).await?;
    }
    query("INSERT INTO api_keys (id, key_hash, role, driver_id, created_at) VALUES ($1, $2, 'driver', $3, $4)")
        .bind(Uuid::now_v7())
        .bind(password_hash(&key))
        .bind(id)
        .bind(now)
        .execute(&mut tx)
        .await?;
    tx.commit().await?;
    let driver = driver(db, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("enrolled driver vanished".into()))?;
    Ok((driver, key))
}

/// A driver and their plates.
pub(crate) async fn driver(db: &Db, id: Uuid) -> Result<Option<DriverView>, StoreError> {
    let row: Option<(String, String, bool)> =
        query("SELECT name, status, auto_debit FROM drivers WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    let Some((name, status, auto_debit)) = row else {
        return Ok(None);
    };
    let status = DriverStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("status of driver {id}")))?;
    let plates: Vec<PlateView> =
        query("SELECT plate, plate_color FROM driver_plates WHERE driver_id = $1 ORDER BY plate")
            .bind(id)
            .fetch_all(db)
            .await?;
    Ok(Some(DriverView {
        id,
        name,
        status,
        auto_debit,
        plates,
    }))
}

/// Adds a plate to a driver (a plate belongs to one driver at a time).
pub(crate) async fn add_plate(
    db: &Db,
    driver: Uuid,
    plate: &Plate,
    color: Option<PlateColor>,
    now: DateTime<Utc>,
) -> Result<(), DriverError> {
    let existing: Option<(Uuid,)> = query("SELECT driver_id FROM driver_plates WHERE plate = $1")
        .bind(plate.as_str())
        .fetch_optional(db)
        .await?;
    match existing {
        Some((owner,)) if owner == driver => return Ok(()),
        Some(_) => return Err(DriverError::PlateTaken),
        None => {}
    }
    drivers::add_plate(db, driver, plate, color, now).await?;
    Ok(())
}

/// An invoice as its driver sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct InvoiceView {
    pub id: Uuid,
    #[serde(skip)]
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub due_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub amount: String,
}

/// A driver's invoices, newest first.
pub(crate) async fn invoices(db: &Db, driver: Uuid) -> Result<Vec<InvoiceView>, StoreError> {
    let rows: Vec<InvoiceView> = query(
        "SELECT id, amount_minor, currency, status, due_at FROM invoices WHERE driver_id = $1 ORDER BY created_at DESC",
    )
    .bind(driver)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|mut i| {
            i.amount = parkflow_billing::Currency::new(&i.currency)
                .map(|c| parkflow_billing::Money::from_minor(i.amount_minor, c).to_string())
                .unwrap_or_default();
            i
        })
        .collect())
}

/// The payment account a driver enrolled.
pub(crate) async fn payment_account(db: &Db, driver: Uuid) -> Result<Option<String>, StoreError> {
    let row: Option<(Option<String>,)> = query("SELECT payment_account FROM drivers WHERE id = $1")
        .bind(driver)
        .fetch_optional(db)
        .await?;
    Ok(row.and_then(|(account,)| account))
}
