//! Refunds: money returned through the provider on a collected charge, never more than was
//! collected (SPEC §4), each recorded once per idempotency key with its journal entry.

use chrono::{DateTime, Utc};
use parkflow_db::{Db, StoreError, db_time, query};
use uuid::Uuid;

use crate::charging::idempotency_key;
use crate::ledger::Entry;
use crate::ledger::store::insert_entries;
use crate::money::{Currency, Money};
use crate::payments::payment_key;
use crate::provider::{PaymentProvider, Refund, RefundOutcome};

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

/// (lot, currency, provider, collected, refunded so far, session, how it was collected).
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

const COLLECTED: &str = "SELECT c.lot_id, c.currency, c.provider,
        CASE WHEN c.status = 'succeeded' OR i.status = 'paid' THEN c.amount_minor ELSE 0 END,
        (SELECT COALESCE(CAST(SUM(r.amount_minor) AS BIGINT), 0) FROM refunds r WHERE r.charge_id = c.id),
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

async fn earlier(db: &Db, charge: Uuid, key: &str) -> Result<Option<Refunded>, RefundError> {
    let row: Option<(Uuid, i64, String)> = query(
        "SELECT id, amount_minor, currency FROM refunds WHERE idempotency_key = $1 AND charge_id = $2",
    )
    .bind(scoped_key(charge, key))
    .bind(charge)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(refund_id, amount_minor, currency)| Refunded {
        refund_id,
        amount_minor,
        currency,
    }))
}

/// Refunds `amount_minor` of `charge` through `provider`.
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
    if let Some(refunded) = earlier(db, charge, key).await? {
        return Ok(refunded);
    }
    let collected: Option<Collected> = query(COLLECTED).bind(charge).fetch_optional(db).await?;
    let (
        lot,
        currency,
        charge_provider,
        collected,
        refunded,
        session,
        exit_payment,
        invoice_payment,
        method,
    ) = collected.ok_or(RefundError::NotFound)?;
    if amount_minor > collected - refunded {
        return Err(RefundError::ExceedsCollected {
            remaining_minor: collected - refunded,
        });
    }
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
        RefundOutcome::Refused { reason } => return Err(RefundError::Refused(reason)),
        RefundOutcome::Unknown => return Err(RefundError::Pending),
    }
    let now = db_time(now);
    let id = Uuid::now_v7();
    let provider_name = charge_provider.unwrap_or_else(|| provider.name().to_owned());
    let mut tx = db.begin_write().await?;
    let inserted = query(
        "INSERT INTO refunds (id, charge_id, idempotency_key, amount_minor, currency, reason, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(id)
    .bind(charge)
    .bind(scoped_key(charge, key))
    .bind(amount_minor)
    .bind(&currency)
    .bind(reason)
    .bind(now)
    .execute(&mut tx)
    .await?;
    if inserted == 0 {
        // The same key, concurrently: that refund stands (the provider refunded once).
        tx.rollback().await?;
        return earlier(db, charge, key).await?.ok_or(RefundError::Pending);
    }
    insert_entries(
        &mut tx,
        &[Entry::refund(
            id,
            &lot,
            &provider_name,
            amount_minor,
            &currency,
            now,
        )],
    )
    .await?;
    tx.commit().await?;
    Ok(Refunded {
        refund_id: id,
        amount_minor,
        currency,
    })
}
