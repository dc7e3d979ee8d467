//! Refunds: money returned through the provider on a collected charge, never more than was
//! collected (SPEC §4), each recorded once per idempotency key with its journal entry.

use chrono::{DateTime, Utc};
use parkflow_db::{Db, Engine, StoreError, db_time, query};
use uuid::Uuid;

use crate::charging::idempotency_key;
use crate::ledger::Entry;
use crate::ledger::store::insert_entries;
use crate::money::{Currency, Money};
use crate::payments::payment_key;
use crate::provider::{PaymentProvider, Refund, RefundOutcome};
use parkflow_session::{Unknown, from_text};

/// Why a refund was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("charge not found")]
    NotFound,
    #[error("a refund must be positive")]
    NotPositive,
    #[error(
        "refunds would exceed what was collected ({remaining_minor} minor units remain refundable)"
    )]
    ExceedsCollected { remaining_minor: i64 },
    #[error("the payment provider refused the refund: {0}")]
    Refused(String),
    #[error("the payment provider has not answered; retry with the same idempotency key")]
    Pending,
    #[error("the idempotency key was used for another refund (another amount or reason)")]
    KeyReused,
    #[error("refund store failed")]
    Store(#[from] StoreError),
}

/// A refund that was recorded (or had been, under the same key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refunded {
    pub refund_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
}

/// (lot, currency, provider, collected, refunded or reserved so far, session, how it was collected).
type Collected = (
    String,
    String,
    Option<String>,
    i64,
    i64,
    Uuid,
    Option<Uuid>,
    Option<Uuid>,
    String,
);

/// What a charge collected and what is refunded or reserved on it, read after the charge's row is
/// locked (`FOR UPDATE` on PostgreSQL; SQLite's write transaction admits one writer at a time).
const COLLECTED: &str = "SELECT c.lot_id, c.currency, c.provider,
        CASE WHEN c.status = 'succeeded' OR i.status = 'paid' THEN c.amount_minor ELSE 0 END,
        (SELECT COALESCE(CAST(SUM(r.amount_minor) AS BIGINT), 0) FROM refunds r
         WHERE r.charge_id = c.id AND r.status <> 'refused'),
        c.session_id,
        (SELECT p.id FROM payments p WHERE p.session_id = c.session_id AND p.status = 'succeeded'),
        (SELECT p.id FROM payments p WHERE p.invoice_id = i.id AND p.status = 'succeeded'),
        c.method
     FROM charges c LEFT JOIN invoices i ON i.charge_id = c.id WHERE c.id = $1";

/// An idempotency key belongs to one charge: the same key sent for another charge is another
/// refund, never that charge's.
fn scoped_key(charge: Uuid, key: &str) -> String {
    format!("{charge}:{key}")
}

/// Where a refund is: reserved and asked of the provider, or answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefundStatus {
    Pending,
    Refunded,
    Refused,
}

impl RefundStatus {
    const ALL: [Self; 3] = [Self::Pending, Self::Refunded, Self::Refused];

    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Refunded => "refunded",
            Self::Refused => "refused",
        }
    }
}

impl TryFrom<String> for RefundStatus {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(value, &Self::ALL, Self::as_str, "refund status")
    }
}

/// A refund row: reserved before the provider is asked, then refunded or refused.
#[derive(sqlx::FromRow)]
struct RefundRow {
    id: Uuid,
    amount_minor: i64,
    currency: String,
    reason: String,
    #[sqlx(try_from = "String")]
    status: RefundStatus,
}

/// What the reservation came to.
enum Reserved {
    /// Refunded earlier under the same key: the same answer again.
    Done(Refunded),
    /// Reserved now or earlier (still pending): ask the provider.
    Ask { id: Uuid, collected: Collected },
}

/// Reserves the refund under the charge's lock: the amount is checked against what was collected
/// less every refund made or in flight, and the reservation is what the next check sees.
async fn reserve(
    db: &Db,
    charge: Uuid,
    amount_minor: i64,
    reason: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Reserved, RefundError> {
    let mut tx = db.begin_write().await?;
    if tx.engine() == Engine::Postgres {
        // Its own statement: under READ COMMITTED a statement sees what was committed when it
        // began, so sums read in the statement that waited for the lock would be stale.
        query("SELECT id FROM charges WHERE id = $1 FOR UPDATE")
            .bind(charge)
            .fetch_optional::<(Uuid,)>(&mut tx)
            .await?;
    }
    let collected: Option<Collected> = query(COLLECTED)
        .bind(charge)
        .fetch_optional(&mut tx)
        .await?;
    let collected = collected.ok_or(RefundError::NotFound)?;
    let earlier: Option<RefundRow> = query(
        "SELECT id, amount_minor, currency, reason, status FROM refunds WHERE idempotency_key = $1",
    )
    .bind(scoped_key(charge, key))
    .fetch_optional(&mut tx)
    .await?;
    if let Some(earlier) = earlier {
        tx.rollback().await?;
        // Stripe's rule: a key names one request; the same key with another body is a mistake.
        if earlier.amount_minor != amount_minor || earlier.reason != reason {
            return Err(RefundError::KeyReused);
        }
        return match earlier.status {
            RefundStatus::Refunded => Ok(Reserved::Done(Refunded {
                refund_id: earlier.id,
                amount_minor: earlier.amount_minor,
                currency: earlier.currency,
            })),
            RefundStatus::Refused => Err(RefundError::Refused(
                "refused earlier under this key".into(),
            )),
            RefundStatus::Pending => Ok(Reserved::Ask {
                id: earlier.id,
                collected,
            }),
        };
    }
    let remaining_minor = collected.3 - collected.4;
    if amount_minor > remaining_minor {
        tx.rollback().await?;
        return Err(RefundError::ExceedsCollected { remaining_minor });
    }
    let id = Uuid::now_v7();
    query(
        "INSERT INTO refunds (id, charge_id, idempotency_key, amount_minor, currency, reason, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)",
    )
    .bind(id)
    .bind(charge)
    .bind(scoped_key(charge, key))
    .bind(amount_minor)
    .bind(&collected.1)
    .bind(reason)
    .bind(db_time(now))
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(Reserved::Ask { id, collected })
}

/// Refunds `amount_minor` of `charge` through `provider`. The same `key` again (same amount and
/// reason) answers the same refund, finishing it if the provider had not answered; another body
/// under that key is refused.
pub async fn refund<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    charge: Uuid,
    amount_minor: i64,
    reason: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Refunded, RefundError> {
    if amount_minor <= 0 {
        return Err(RefundError::NotPositive);
    }
    let (id, collected) = match reserve(db, charge, amount_minor, reason, key, now).await? {
        Reserved::Done(refunded) => return Ok(refunded),
        Reserved::Ask { id, collected } => (id, collected),
    };
    let (lot, currency, charge_provider, _, _, session, exit_payment, invoice_payment, method) =
        collected;
    // Where the money came from: the auto-debit, the exit payment, or the invoice's payment.
    let debit_key = match (method.as_str(), exit_payment, invoice_payment) {
        ("exit_payment", Some(payment), _) | (_, _, Some(payment)) => payment_key(payment),
        _ => idempotency_key(session),
    };
    let money_currency = Currency::new(&currency)
        .map_err(|_| StoreError::Corrupt(format!("currency {currency}")))?;
    let outcome = provider
        .refund(&Refund {
            idempotency_key: format!("refund:{charge}:{key}"),
            debit_key,
            amount: Money::from_minor(amount_minor, money_currency),
        })
        .await;
    match outcome {
        RefundOutcome::Refunded { .. } => {}
        RefundOutcome::Refused { reason } => {
            // The reservation no longer counts against what can be refunded.
            query("UPDATE refunds SET status = 'refused' WHERE id = $1 AND status = 'pending'")
                .bind(id)
                .execute(db)
                .await?;
            return Err(RefundError::Refused(reason));
        }
        RefundOutcome::Unknown => return Err(RefundError::Pending),
    }
    let provider_name = charge_provider.unwrap_or_else(|| provider.name().to_owned());
    let mut tx = db.begin_write().await?;
    let finished =
        query("UPDATE refunds SET status = 'refunded' WHERE id = $1 AND status = 'pending'")
            .bind(id)
            .execute(&mut tx)
            .await?;
    if finished == 1 {
        // Only the request that moved the row records the money: a concurrent retry under the
        // same key finds it refunded.
        insert_entries(
            &mut tx,
            &[Entry::refund(
                id,
                &lot,
                &provider_name,
                amount_minor,
                &currency,
                db_time(now),
            )],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Refunded {
        refund_id: id,
        amount_minor,
        currency,
    })
}
