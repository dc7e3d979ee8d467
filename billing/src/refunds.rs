//! Refunds: money returned on a collected charge, never more than was collected (SPEC §4), each
//! recorded once per idempotency key with its journal entry.

use chrono::{DateTime, Utc};
use parkflow_db::{Db, StoreError, db_time};
use uuid::Uuid;

use crate::insert_entries;
use crate::ledger::Entry;

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
    #[error("refund store failed")]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RefundError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A refund that was recorded (or had been, under the same key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refunded {
    pub refund_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
}

const COLLECTED: &str = "SELECT c.lot_id, c.currency, c.provider,
        CASE WHEN c.status = 'succeeded' OR i.status = 'paid' THEN c.amount_minor ELSE 0 END,
        (SELECT COALESCE(CAST(SUM(r.amount_minor) AS BIGINT), 0) FROM refunds r WHERE r.charge_id = c.id)
     FROM charges c LEFT JOIN invoices i ON i.charge_id = c.id WHERE c.id = $1";

type Collected = (String, String, Option<String>, i64, i64);

/// Refunds `amount_minor` of `charge`, as `provider` returned it.
pub async fn refund(
    db: &Db,
    provider: &str,
    charge: Uuid,
    amount_minor: i64,
    reason: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Refunded, RefundError> {
    if amount_minor <= 0 {
        return Err(RefundError::NotPositive);
    }
    let now = db_time(now);
    let id = Uuid::now_v7();
    macro_rules! body {
        ($tx:expr, $collected_sql:expr) => {{
            let earlier: Option<(Uuid, i64, String)> =
                sqlx::query_as("SELECT id, amount_minor, currency FROM refunds WHERE idempotency_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *$tx)
                    .await?;
            if let Some((refund_id, amount_minor, currency)) = earlier {
                return Ok(Refunded { refund_id, amount_minor, currency });
            }
            let collected: Option<Collected> = sqlx::query_as($collected_sql).bind(charge).fetch_optional(&mut *$tx).await?;
            let (lot, currency, charge_provider, collected, refunded) = collected.ok_or(RefundError::NotFound)?;
            let remaining_minor = collected - refunded;
            if amount_minor > remaining_minor {
                return Err(RefundError::ExceedsCollected { remaining_minor });
            }
            sqlx::query(
                "INSERT INTO refunds (id, charge_id, idempotency_key, amount_minor, currency, reason, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id)
            .bind(charge)
            .bind(key)
            .bind(amount_minor)
            .bind(&currency)
            .bind(reason)
            .bind(now)
            .execute(&mut *$tx)
            .await?;
            let provider = charge_provider.unwrap_or_else(|| provider.to_owned());
            insert_entries!($tx, &[Entry::refund(id, &lot, &provider, amount_minor, &currency, now)])?;
            $tx.commit().await?;
            Ok(Refunded { refund_id: id, amount_minor, currency })
        }};
    }
    match db {
        // SQLite: one writer at a time; take the write lock before reading what may be refunded.
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            body!(tx, COLLECTED)
        }
        // PostgreSQL: lock the charge first, then read what was refunded, so two refunds of it
        // cannot both pass the check on the same sum.
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT id FROM charges WHERE id = $1 FOR UPDATE")
                .bind(charge)
                .fetch_optional(&mut *tx)
                .await?;
            body!(tx, COLLECTED)
        }
    }
}
