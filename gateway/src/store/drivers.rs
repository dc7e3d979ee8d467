//! Drivers, their plate claims and their API keys (keys are random, shown once, stored as
//! SHA-256). The driver, plate and claim rows are billing's to write (`parkflow_billing::drivers`
//! and `::claims`): enrolment writes them through it, in the transaction that also issues the
//! driver's key; an operator's decision on a claim commits with its audit entry.

use chrono::{DateTime, Utc};
use parkflow_protocol::{Plate, PlateColor};
use serde::Serialize;
use uuid::Uuid;

use parkflow_billing::claims::{self, Claim, Decided, Decision, Proof, Verifiers, VerifyError};
/// Billing writes drivers and claims (ARCHITECTURE.md, "Who writes each table"); these are its.
pub(crate) use parkflow_billing::drivers::update;
use parkflow_billing::drivers::{self, Change, DriverStatus, NewDriver, remove_plate};
use parkflow_billing::mandates::MandateState;
use parkflow_db::query;

use super::audit::{self, AuditEntry};
use super::{Db, StoreError, db_time};
use crate::registry::password_hash;

use super::keys::new_key;

/// A driver as the API shows them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct DriverView {
    pub id: Uuid,
    pub name: String,
    pub status: DriverStatus,
    /// Whether the driver's cars leave first and pay later: consent given and a mandate active.
    pub auto_debit: bool,
    /// Where the driver's payment mandate stands (none without consent).
    pub mandate: Option<MandateState>,
    pub plates: Vec<PlateView>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct PlateView {
    pub plate: String,
    pub plate_color: Option<String>,
}

/// A plate a driver claims, with the proof they show (if any).
pub(crate) struct PlateClaim {
    pub plate: Plate,
    pub color: Option<PlateColor>,
    pub proof: Option<Proof>,
}

/// A claim and, when a proof was shown, whether it held.
pub(crate) struct Claimed {
    pub claim: Claim,
    pub proof_accepted: Option<bool>,
}

/// Checks the proof of each claim, outside any transaction (the register is another service).
/// A verifier that cannot be asked leaves its claim unproven, to be proven later.
async fn verify_all(
    verifiers: &Verifiers,
    plates: &[PlateClaim],
) -> Result<Vec<Option<bool>>, StoreError> {
    let mut verdicts = Vec::with_capacity(plates.len());
    for claim in plates {
        verdicts.push(match &claim.proof {
            None => None,
            Some(proof) => match verifiers.verify(&claim.plate, proof).await {
                Ok(holds) => Some(holds),
                Err(VerifyError::Store(e)) => return Err(e),
                Err(error) => {
                    tracing::warn!(%error, "a plate's proof could not be checked");
                    Some(false)
                }
            },
        });
    }
    Ok(verdicts)
}

/// Opens `plates`' claims for `driver` in `tx`, granting (or disputing) those proven.
async fn claim_all(
    tx: &mut parkflow_db::Tx,
    driver: Uuid,
    plates: &[PlateClaim],
    verdicts: Vec<Option<bool>>,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, StoreError> {
    let mut out = Vec::with_capacity(plates.len());
    for (plate, proof_accepted) in plates.iter().zip(verdicts) {
        let mut claim = claims::open(tx, driver, &plate.plate, plate.color, now).await?;
        if let (Some(true), Some(proof)) = (proof_accepted, &plate.proof) {
            claim = claims::proven(tx, claim.id, proof.kind(), proof.receipt(), now).await?;
        }
        out.push(Claimed {
            claim,
            proof_accepted,
        });
    }
    Ok(out)
}

/// Enrols a driver with their payment account and a claim on each plate (granted at once when
/// proven and nobody holds the plate); returns the driver, the claims and the driver's API key.
pub(crate) async fn enrol(
    db: &Db,
    verifiers: &Verifiers,
    name: &str,
    payment_account: &str,
    plates: &[PlateClaim],
    now: DateTime<Utc>,
) -> Result<(DriverView, Vec<Claimed>, String), StoreError> {
    let verdicts = verify_all(verifiers, plates).await?;
    let id = Uuid::now_v7();
    let key = new_key();
    let now = db_time(now);
    let mut tx = db.begin_write().await?;
    // Auto-debit starts once the provider confirms a mandate (`mandates::set_up`).
    let enrolled = NewDriver {
        id,
        name,
        status: DriverStatus::Active,
        auto_debit: false,
        payment_account: Some(payment_account),
    };
    drivers::insert(&mut tx, &enrolled, now).await?;
    drivers::awaiting_mandate(&mut tx, id, now).await?;
    let claimed = claim_all(&mut tx, id, plates, verdicts, now).await?;
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
    Ok((driver, claimed, key))
}

/// A driver's claim on one more plate: `None` when the driver holds and claims `limit` plates
/// already (counted in the claim's transaction, so parallel requests cannot pass it together).
pub(crate) async fn claim_plate(
    db: &Db,
    verifiers: &Verifiers,
    driver: Uuid,
    plate: PlateClaim,
    limit: usize,
    now: DateTime<Utc>,
) -> Result<Option<Claimed>, StoreError> {
    let plates = [plate];
    let verdicts = verify_all(verifiers, &plates).await?;
    let mut tx = db.begin_write().await?;
    if tx.engine() == parkflow_db::Engine::Postgres {
        // The driver's claims are counted and added one request at a time.
        query("SELECT id FROM drivers WHERE id = $1 FOR UPDATE")
            .bind(driver)
            .fetch_optional::<(Uuid,)>(&mut tx)
            .await?;
    }
    let held = claims::held_or_claimed(&mut tx, driver).await?;
    if held >= limit as i64 {
        return Ok(None);
    }
    let mut claimed = claim_all(&mut tx, driver, &plates, verdicts, now).await?;
    tx.commit().await?;
    Ok(claimed.pop())
}

/// A proof shown for one of `driver`'s claims: `None` when they have no such claim.
pub(crate) async fn prove(
    db: &Db,
    verifiers: &Verifiers,
    driver: Uuid,
    claim: Uuid,
    proof: Proof,
    now: DateTime<Utc>,
) -> Result<Option<Claimed>, StoreError> {
    let Some(claim) = claims::get(db, claim)
        .await?
        .filter(|claim| claim.driver_id == driver)
    else {
        return Ok(None);
    };
    let plate = Plate::parse(&claim.plate)
        .map_err(|_| StoreError::Corrupt(format!("plate of claim {}", claim.id)))?;
    let accepted = match verifiers.verify(&plate, &proof).await {
        Ok(holds) => holds,
        Err(VerifyError::Store(e)) => return Err(e),
        Err(error) => {
            tracing::warn!(%error, "a plate's proof could not be checked");
            false
        }
    };
    if !accepted || !claim.status.is_live() {
        return Ok(Some(Claimed {
            claim,
            proof_accepted: Some(accepted),
        }));
    }
    let mut tx = db.begin_write().await?;
    let claim = claims::proven(&mut tx, claim.id, proof.kind(), proof.receipt(), now).await?;
    tx.commit().await?;
    Ok(Some(Claimed {
        claim,
        proof_accepted: Some(true),
    }))
}

/// An operator's decision on a claim, recorded in the audit trail in the same transaction.
pub(crate) async fn decide(
    db: &Db,
    claim: Uuid,
    decision: Decision,
    entry: &AuditEntry,
    now: DateTime<Utc>,
) -> Result<Decided, StoreError> {
    let mut tx = db.begin_write().await?;
    let decided = claims::decide(&mut tx, claim, decision, &entry.reason, now).await?;
    if matches!(decided, Decided::Done(_)) {
        audit::insert(&mut tx, entry).await?;
        tx.commit().await?;
    }
    Ok(decided)
}

/// Takes a plate off a driver's account, on [`remove_plate`]'s terms.
pub(crate) async fn remove(db: &Db, driver: Uuid, plate: &Plate) -> Result<Change, StoreError> {
    let mut tx = db.begin_write().await?;
    let change = remove_plate(&mut tx, driver, plate).await?;
    tx.commit().await?;
    Ok(change)
}

/// A driver and their plates.
pub(crate) async fn driver(db: &Db, id: Uuid) -> Result<Option<DriverView>, StoreError> {
    let row: Option<(String, String, bool, Option<String>)> =
        query("SELECT name, status, auto_debit, mandate_status FROM drivers WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    let Some((name, status, auto_debit, mandate)) = row else {
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
        mandate: mandate.as_deref().and_then(MandateState::parse),
        plates,
    }))
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
