//! Plate ownership: enrolling a plate makes a *claim*, and the plate joins the driver's account
//! (and so is billed to them, and shows them its stays) only once the claim is proven or an
//! operator approves it. The one writer of `plate_claims`; the plates themselves are written
//! through [`crate::drivers`].
//!
//! Proofs are checked by [`PlateVerifier`]s, one per kind of proof: the vehicle register (a
//! [`SimulatedRegister`] here, the registration authority's service in a deployment) and a
//! receipt from a payment made at that plate's held exit ([`ReceiptProof`]). A proven claim on a
//! plate another driver holds is *disputed*: it waits for an operator, who cannot hand the plate
//! over while its driver owes. An unproven claim never says whether anyone holds the plate.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use parkflow_db::{Db, StoreError, Tx, db_time, query};
use parkflow_protocol::{Plate, PlateColor};
use parkflow_session::{Unknown, from_text};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;
use uuid::Uuid;

/// Where a claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimStatus {
    /// Not proven yet (or its proof was not accepted): the plate is not the driver's.
    Pending,
    /// Proven, but another driver holds the plate: an operator decides.
    Disputed,
    /// The plate is the driver's.
    Granted,
    /// An operator refused it.
    Rejected,
}

impl ClaimStatus {
    const ALL: [Self; 4] = [Self::Pending, Self::Disputed, Self::Granted, Self::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Disputed => "disputed",
            Self::Granted => "granted",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Waiting for a proof or an operator.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Disputed)
    }
}

impl TryFrom<String> for ClaimStatus {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(value, &Self::ALL, Self::as_str, "claim status")
    }
}

/// How a claim was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProofKind {
    /// The vehicle register names the driver's registration document for the plate.
    Registration,
    /// A receipt of a payment made at the plate's held exit.
    Receipt,
    /// An operator looked at the papers and approved it.
    Operator,
}

impl ProofKind {
    const ALL: [Self; 3] = [Self::Registration, Self::Receipt, Self::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Receipt => "receipt",
            Self::Operator => "operator",
        }
    }
}

/// A nullable column of text, decoded into an optional [`ProofKind`].
#[derive(sqlx::Type)]
#[sqlx(transparent)]
pub struct OptionalText(Option<String>);

impl TryFrom<OptionalText> for Option<ProofKind> {
    type Error = Unknown;

    fn try_from(OptionalText(value): OptionalText) -> Result<Self, Unknown> {
        value
            .map(|value| from_text(value, &ProofKind::ALL, ProofKind::as_str, "proof kind"))
            .transpose()
    }
}

/// What a driver shows to prove a plate is theirs. Holding a document number, not `Debug`.
pub enum Proof {
    /// The number of the vehicle's registration document.
    Registration(SecretString),
    /// The id of a payment made at the plate's held exit (on its receipt).
    Receipt(Uuid),
}

impl Proof {
    /// The payment a receipt names (used once).
    pub fn receipt(&self) -> Option<Uuid> {
        match self {
            Self::Receipt(payment) => Some(*payment),
            Self::Registration(_) => None,
        }
    }

    pub fn kind(&self) -> ProofKind {
        match self {
            Self::Registration(_) => ProofKind::Registration,
            Self::Receipt(_) => ProofKind::Receipt,
        }
    }
}

/// Why a proof could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The authority did not answer: try again later.
    #[error("the {0} cannot be asked now")]
    Unavailable(&'static str),
    #[error("no verifier takes this kind of proof")]
    Unsupported,
    #[error("claims store failed")]
    Store(#[from] StoreError),
}

/// Checks one kind of proof that a plate belongs to whoever shows it. A deployment's vehicle
/// register (the registration authority's service) implements this beside [`SimulatedRegister`].
pub trait PlateVerifier: Send + Sync + 'static {
    /// The proof it checks.
    fn kind(&self) -> ProofKind;

    /// Whether `proof` shows `plate` belongs to whoever holds it.
    fn verify<'a>(
        &'a self,
        plate: &'a Plate,
        proof: &'a Proof,
    ) -> BoxFuture<'a, Result<bool, VerifyError>>;
}

/// The verifiers the platform trusts, one per kind of proof.
#[derive(Clone, Default)]
pub struct Verifiers(Vec<Arc<dyn PlateVerifier>>);

impl Verifiers {
    pub fn new(verifiers: Vec<Arc<dyn PlateVerifier>>) -> Self {
        Self(verifiers)
    }

    /// The simulated register and receipts from `db`: what the platform ships with.
    pub fn shipped(db: Db, register: SimulatedRegister) -> Self {
        Self::new(vec![Arc::new(register), Arc::new(ReceiptProof { db })])
    }

    /// Asks the verifier of `proof`'s kind.
    pub async fn verify(&self, plate: &Plate, proof: &Proof) -> Result<bool, VerifyError> {
        let verifier = self
            .0
            .iter()
            .find(|v| v.kind() == proof.kind())
            .ok_or(VerifyError::Unsupported)?;
        verifier.verify(plate, proof).await
    }
}

/// A simulated vehicle registration authority, as the simulated payment provider stands in for a
/// bank: every plate has a registration document whose number is a keyed hash of the plate under
/// the register's secret (`--vehicle-register-secret`). Whoever holds the car's papers knows it;
/// nobody can work it out from the plate.
#[derive(Clone)]
pub struct SimulatedRegister {
    secret: Arc<SecretString>,
}

impl SimulatedRegister {
    pub fn new(secret: SecretString) -> Self {
        Self {
            secret: Arc::new(secret),
        }
    }

    /// The number on `plate`'s registration document: 12 hexadecimal digits.
    pub fn document(&self, plate: &Plate) -> String {
        self.mac(plate).finalize().into_bytes()[..DOCUMENT_BYTES]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    fn mac(&self, plate: &Plate) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"parkflow-register:");
        mac.update(plate.as_str().as_bytes());
        mac
    }
}

impl PlateVerifier for SimulatedRegister {
    fn kind(&self) -> ProofKind {
        ProofKind::Registration
    }

    fn verify<'a>(
        &'a self,
        plate: &'a Plate,
        proof: &'a Proof,
    ) -> BoxFuture<'a, Result<bool, VerifyError>> {
        Box::pin(async move {
            let Proof::Registration(document) = proof else {
                return Err(VerifyError::Unsupported);
            };
            let given = document.expose_secret().trim();
            let bytes: Option<Vec<u8>> = (given.len() == 2 * DOCUMENT_BYTES && given.is_ascii())
                .then(|| {
                    (0..given.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&given[i..i + 2], 16).ok())
                        .collect()
                })
                .flatten();
            // Compared in constant time, as a MAC tag.
            Ok(bytes.is_some_and(|bytes| self.mac(plate).verify_truncated_left(&bytes).is_ok()))
        })
    }
}

/// Bytes of the register's MAC a document number shows.
const DOCUMENT_BYTES: usize = 6;

/// How long after paying at a held exit its receipt proves the plate.
pub const RECEIPT_VALID_FOR: Duration = Duration::days(30);

/// A receipt proof: the id of a payment that let a car under the plate out of a held exit, made
/// within [`RECEIPT_VALID_FOR`]. Whoever paid there was driving the car.
pub struct ReceiptProof {
    db: Db,
}

impl PlateVerifier for ReceiptProof {
    fn kind(&self) -> ProofKind {
        ProofKind::Receipt
    }

    fn verify<'a>(
        &'a self,
        plate: &'a Plate,
        proof: &'a Proof,
    ) -> BoxFuture<'a, Result<bool, VerifyError>> {
        Box::pin(async move {
            let Proof::Receipt(payment) = proof else {
                return Err(VerifyError::Unsupported);
            };
            // The plate the camera read at the held exit the payment let out (not what the
            // stay was matched under), paid within the last days, and never used before.
            let paid: Option<(Uuid,)> = query(
                "SELECT p.id FROM payments p
                 JOIN gate_reads r ON r.session_id = p.session_id
                     AND r.action = 'hold' AND r.reason = 'payment_required'
                 WHERE p.id = $1 AND p.kind = 'exit' AND p.status = 'succeeded'
                   AND r.plate = $2 AND p.created_at >= $3
                   AND NOT EXISTS (SELECT 1 FROM plate_claims c WHERE c.receipt = $1)",
            )
            .bind(*payment)
            .bind(plate.as_str())
            .bind(db_time(Utc::now() - RECEIPT_VALID_FOR))
            .fetch_optional(&self.db)
            .await?;
            Ok(paid.is_some())
        })
    }
}

/// A claim as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Claim {
    pub id: Uuid,
    pub driver_id: Uuid,
    pub plate: String,
    pub plate_color: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: ClaimStatus,
    /// How it was proven; none until it is.
    #[sqlx(try_from = "OptionalText")]
    pub proof: Option<ProofKind>,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "parkflow_protocol::time::rfc3339::option")]
    pub decided_at: Option<DateTime<Utc>>,
    /// Why it is disputed, or the operator's reason.
    pub reason: String,
}

const COLUMNS: &str =
    "id, driver_id, plate, plate_color, status, proof, created_at, decided_at, reason";

/// Opens `driver`'s claim on `plate`, or finds the live one they already have.
pub async fn open(
    tx: &mut Tx,
    driver: Uuid,
    plate: &Plate,
    color: Option<PlateColor>,
    now: DateTime<Utc>,
) -> Result<Claim, StoreError> {
    // A claim made at the same moment by another request of the driver's is the same claim.
    query(
        "INSERT INTO plate_claims (id, driver_id, plate, plate_color, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (driver_id, plate) WHERE status IN ('pending', 'disputed') DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(driver)
    .bind(plate.as_str())
    .bind(color.map(PlateColor::as_str))
    .bind(ClaimStatus::Pending.as_str())
    .bind(db_time(now))
    .execute(&mut *tx)
    .await?;
    live(tx, driver, plate)
        .await?
        .ok_or_else(|| StoreError::Corrupt("a live claim vanished".into()))
}

async fn live(tx: &mut Tx, driver: Uuid, plate: &Plate) -> Result<Option<Claim>, StoreError> {
    query(format!(
        "SELECT {COLUMNS} FROM plate_claims
         WHERE driver_id = $1 AND plate = $2 AND status IN ('pending', 'disputed')"
    ))
    .bind(driver)
    .bind(plate.as_str())
    .fetch_optional(tx)
    .await
}

/// One claim.
pub async fn get(
    on: impl parkflow_db::Executor<'_>,
    id: Uuid,
) -> Result<Option<Claim>, StoreError> {
    query(format!("SELECT {COLUMNS} FROM plate_claims WHERE id = $1"))
        .bind(id)
        .fetch_optional(on)
        .await
}

/// A driver's claims, newest first.
pub async fn of_driver(db: &Db, driver: Uuid) -> Result<Vec<Claim>, StoreError> {
    query(format!(
        "SELECT {COLUMNS} FROM plate_claims WHERE driver_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(driver)
    .fetch_all(db)
    .await
}

/// Claims waiting for an operator (or for a proof), oldest first.
pub async fn queue(db: &Db, status: ClaimStatus, limit: u32) -> Result<Vec<Claim>, StoreError> {
    query(format!(
        "SELECT {COLUMNS} FROM plate_claims WHERE status = $1 ORDER BY created_at, id LIMIT $2"
    ))
    .bind(status.as_str())
    .bind(i64::from(limit))
    .fetch_all(db)
    .await
}

/// Live claims and plates of a driver: what counts against how many they may hold.
pub async fn held_or_claimed(
    on: impl parkflow_db::Executor<'_>,
    driver: Uuid,
) -> Result<i64, StoreError> {
    let (count,): (i64,) = query(
        "SELECT (SELECT COUNT(*) FROM driver_plates WHERE driver_id = $1)
              + (SELECT COUNT(*) FROM plate_claims
                 WHERE driver_id = $1 AND status IN ('pending', 'disputed'))",
    )
    .bind(driver)
    .fetch_one(on)
    .await?;
    Ok(count)
}

/// A live claim proven by `kind` (with the receipt it used, if one): the plate becomes the
/// driver's when nobody else holds it; otherwise the claim is disputed and waits for an operator.
/// The claim as it is now (as it was, when it was decided meanwhile).
pub async fn proven(
    tx: &mut Tx,
    claim: Uuid,
    kind: ProofKind,
    receipt: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Claim, StoreError> {
    let claim = get(&mut *tx, claim)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("claim {claim} vanished")))?;
    if !claim.status.is_live() {
        return Ok(claim);
    }
    let plate = stored_plate(&claim)?;
    let color = claim.plate_color.as_deref().and_then(PlateColor::parse);
    let holder = crate::drivers::take_free_plate(tx, claim.driver_id, &plate, color, now).await?;
    let (status, reason) = if holder == claim.driver_id {
        crate::arrears::adopt_plate_debts(tx, claim.driver_id, &plate).await?;
        (ClaimStatus::Granted, "")
    } else {
        (ClaimStatus::Disputed, "another driver holds the plate")
    };
    if let Some(receipt) = receipt {
        query("UPDATE plate_claims SET receipt = $2 WHERE id = $1")
            .bind(claim.id)
            .bind(receipt)
            .execute(&mut *tx)
            .await?;
    }
    settle(tx, &claim, status, Some(kind), reason, now).await
}

/// The plate of a stored claim.
fn stored_plate(claim: &Claim) -> Result<Plate, StoreError> {
    Plate::parse(&claim.plate)
        .map_err(|_| StoreError::Corrupt(format!("plate of claim {}", claim.id)))
}

/// An operator's answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The plate becomes the claimant's, taken from whoever held it.
    Approve,
    Reject,
}

/// What became of an operator's decision.
#[derive(Debug, Clone)]
pub enum Decided {
    Done(Claim),
    NotFound,
    /// Granted or rejected already.
    Settled(Claim),
    /// The plate's driver owes: it cannot change hands until the debt is paid or written off.
    Owing,
    /// A car under the plate is parked: its stay is billed to the plate's driver when it leaves.
    Parked,
}

/// Approves or rejects a live claim. Approving hands the plate over from whoever held it, unless
/// they owe or a car under it is parked.
pub async fn decide(
    tx: &mut Tx,
    id: Uuid,
    decision: Decision,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Decided, StoreError> {
    let Some(claim) = get(&mut *tx, id).await? else {
        return Ok(Decided::NotFound);
    };
    if !claim.status.is_live() {
        return Ok(Decided::Settled(claim));
    }
    if decision == Decision::Reject {
        let settled = settle(tx, &claim, ClaimStatus::Rejected, claim.proof, reason, now).await?;
        return Ok(match settled.status {
            ClaimStatus::Rejected => Decided::Done(settled),
            _ => Decided::Settled(settled),
        });
    }
    let plate = stored_plate(&claim)?;
    match crate::drivers::release_plate(tx, &plate).await? {
        crate::drivers::Change::Done | crate::drivers::Change::NotFound => {}
        crate::drivers::Change::Owing => return Ok(Decided::Owing),
        crate::drivers::Change::Parked => return Ok(Decided::Parked),
    }
    let color = claim.plate_color.as_deref().and_then(PlateColor::parse);
    let holder = crate::drivers::take_free_plate(tx, claim.driver_id, &plate, color, now).await?;
    if holder != claim.driver_id {
        // Taken by another claim in between: this one stays as it was, for another decision.
        return Ok(Decided::Settled(claim));
    }
    crate::arrears::adopt_plate_debts(tx, claim.driver_id, &plate).await?;
    let proof = claim.proof.unwrap_or(ProofKind::Operator);
    let settled = settle(tx, &claim, ClaimStatus::Granted, Some(proof), reason, now).await?;
    // Decided by someone else meanwhile: the caller rolls back the hand-over.
    Ok(match settled.status {
        ClaimStatus::Granted => Decided::Done(settled),
        _ => Decided::Settled(settled),
    })
}

/// Moves a live claim to `status`; a claim decided meanwhile (by an operator, or another proof)
/// stays as it was, and is what this answers.
async fn settle(
    tx: &mut Tx,
    claim: &Claim,
    status: ClaimStatus,
    proof: Option<ProofKind>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Claim, StoreError> {
    let decided = (!status.is_live()).then(|| db_time(now));
    let settled: Option<Claim> = query(format!(
        "UPDATE plate_claims SET status = $2, proof = $3, reason = $4, decided_at = $5
         WHERE id = $1 AND status IN ('pending', 'disputed') RETURNING {COLUMNS}"
    ))
    .bind(claim.id)
    .bind(status.as_str())
    .bind(proof.map(ProofKind::as_str))
    .bind(reason)
    .bind(decided)
    .fetch_optional(&mut *tx)
    .await?;
    match settled {
        Some(claim) => Ok(claim),
        None => get(tx, claim.id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("claim {} vanished", claim.id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_gives_each_plate_its_own_document_under_its_secret() {
        let register = SimulatedRegister::new("city register".into());
        let plate = Plate::parse("浙A12345").unwrap();
        let document = register.document(&plate);
        assert_eq!(document.len(), 12);
        assert_eq!(document, register.document(&plate));
        assert_ne!(
            document,
            register.document(&Plate::parse("浙A12346").unwrap())
        );
        let other = SimulatedRegister::new("another register".into());
        assert_ne!(document, other.document(&plate));
    }

    #[tokio::test]
    async fn the_register_accepts_the_plates_document_and_nothing_else() {
        let register = SimulatedRegister::new("city register".into());
        let plate = Plate::parse("浙A12345").unwrap();
        let right = Proof::Registration(register.document(&plate).to_lowercase().into());
        assert!(register.verify(&plate, &right).await.unwrap());
        let other_plate =
            Proof::Registration(register.document(&Plate::parse("浙A12346").unwrap()).into());
        assert!(!register.verify(&plate, &other_plate).await.unwrap());
        assert!(matches!(
            register.verify(&plate, &Proof::Receipt(Uuid::nil())).await,
            Err(VerifyError::Unsupported)
        ));
    }
}
