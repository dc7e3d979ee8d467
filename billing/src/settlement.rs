//! Settlement (SPEC §4): per operator, per lot, per day in the lot's time zone — sessions, gross
//! fees, collected, outstanding, refunded. Computed from the charges (one per closed session, each
//! with its local day), their invoices and refunds, and stored; a re-run recomputes and replaces,
//! so it gives the same figures and never double-counts. Reconciliation compares the platform's
//! records with the provider's.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use parkflow_db::{Db, QueryBuilder, StoreError, db_time, query};
use serde::Serialize;

use crate::charging::idempotency_key;
use crate::provider::{PaymentProvider, RecordStatus};

/// One lot's day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Settlement {
    pub operator_id: String,
    pub lot_id: String,
    pub day: String,
    pub currency: String,
    pub sessions: i64,
    pub gross_minor: i64,
    pub collected_minor: i64,
    pub outstanding_minor: i64,
    pub refunded_minor: i64,
}

const COMPUTE: &str = "
    SELECT c.operator_id, c.lot_id, c.local_day AS day, c.currency,
           COUNT(*) AS sessions,
           CAST(SUM(c.amount_minor) AS BIGINT) AS gross_minor,
           CAST(SUM(CASE WHEN c.status = 'succeeded' OR i.status = 'paid' THEN c.amount_minor ELSE 0 END) AS BIGINT) AS collected_minor,
           CAST(SUM(CASE WHEN c.status = 'succeeded' OR i.status = 'paid' OR i.status = 'written_off' OR c.status = 'waived'
                         THEN 0 ELSE c.amount_minor END) AS BIGINT) AS outstanding_minor,
           CAST(COALESCE(SUM(r.refunded), 0) AS BIGINT) AS refunded_minor
    FROM charges c
    LEFT JOIN invoices i ON i.charge_id = c.id
    LEFT JOIN (SELECT charge_id, SUM(amount_minor) AS refunded FROM refunds WHERE status = 'refunded' GROUP BY charge_id) r ON r.charge_id = c.id
    WHERE c.local_day >= $1 AND c.local_day <= $2
    GROUP BY c.operator_id, c.lot_id, c.local_day, c.currency
    ORDER BY c.lot_id, c.local_day, c.currency";

/// Computes and stores the settlements of the days `from..=to` (lots' local days).
pub async fn settle(
    db: &Db,
    from: NaiveDate,
    to: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Vec<Settlement>, StoreError> {
    let now = db_time(now);
    // Days are stored as `YYYY-MM-DD`, which orders as the days do.
    let (from, to) = (from.to_string(), to.to_string());
    let mut tx = db.begin_write().await?;
    // Replace the days' figures: days that no longer have charges keep no stale figures.
    query("DELETE FROM settlements WHERE day >= $1 AND day <= $2")
        .bind(&from)
        .bind(&to)
        .execute(&mut tx)
        .await?;
    let rows: Vec<Settlement> = query(COMPUTE)
        .bind(&from)
        .bind(&to)
        .fetch_all(&mut tx)
        .await?;
    for chunk in rows.chunks(2_000) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO settlements (operator_id, lot_id, day, currency, sessions, gross_minor, collected_minor,
                 outstanding_minor, refunded_minor, computed_at) ",
        );
        insert.push_values(chunk, |mut row, s| {
            row.push_bind(&s.operator_id)
                .push_bind(&s.lot_id)
                .push_bind(&s.day)
                .push_bind(&s.currency)
                .push_bind(s.sessions)
                .push_bind(s.gross_minor)
                .push_bind(s.collected_minor)
                .push_bind(s.outstanding_minor)
                .push_bind(s.refunded_minor)
                .push_bind(now);
        });
        insert.build().persistent(false).execute(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(rows)
}

/// The figures of the days `from..=to` as they stand now, computed and not stored (today's,
/// before the day is settled).
pub async fn live(db: &Db, from: NaiveDate, to: NaiveDate) -> Result<Vec<Settlement>, StoreError> {
    query(COMPUTE)
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_all(db)
        .await
}

/// The stored settlements of `lot` (or every lot) for days `from..=to`.
pub async fn stored(
    db: &Db,
    lot: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<Settlement>, StoreError> {
    query(
        "SELECT operator_id, lot_id, day, currency, sessions, gross_minor, collected_minor, outstanding_minor, refunded_minor
         FROM settlements WHERE ($1 IS NULL OR lot_id = $1) AND day >= $2 AND day <= $3 ORDER BY lot_id, day, currency",
    )
    .bind(lot)
    .bind(from.to_string())
    .bind(to.to_string())
    .fetch_all(db)
    .await
}

/// A difference between the platform's records and the provider's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mismatch {
    /// The provider moved money the platform has not recorded as collected.
    ProviderOnly { key: String, amount_minor: i64 },
    /// The platform recorded money the provider never collected.
    PlatformOnly { key: String, amount_minor: i64 },
    /// Both recorded it, with different amounts.
    AmountDiffers {
        key: String,
        platform_minor: i64,
        provider_minor: i64,
    },
}

/// (session, amount) of a collected charge.
type ChargeRow = (uuid::Uuid, i64);
/// (id, amount) of a payment.
type PaymentRow = (uuid::Uuid, i64);

/// Compares every successful collection and payment with the provider's records.
pub async fn reconcile<P: PaymentProvider>(
    db: &Db,
    provider: &P,
) -> Result<Vec<Mismatch>, StoreError> {
    let charges: Vec<ChargeRow> = query(
        "SELECT session_id, amount_minor FROM charges WHERE status = 'succeeded' AND method = 'auto_debit' AND provider = $1",
    )
    .bind(provider.name())
    .fetch_all(db)
    .await?;
    let payments: Vec<PaymentRow> =
        query("SELECT id, amount_minor FROM payments WHERE status = 'succeeded'")
            .fetch_all(db)
            .await?;
    let mut platform: HashMap<String, i64> = charges
        .into_iter()
        .map(|(session, minor)| (idempotency_key(session), minor))
        .collect();
    platform.extend(
        payments
            .into_iter()
            .map(|(id, minor)| (crate::payments::payment_key(id), minor)),
    );
    let mut mismatches = Vec::new();
    for record in provider.records().await {
        if record.status != RecordStatus::Succeeded {
            continue;
        }
        let provider_minor = record.amount.to_minor().unwrap_or(i64::MAX);
        match platform.remove(&record.idempotency_key) {
            None => mismatches.push(Mismatch::ProviderOnly {
                key: record.idempotency_key,
                amount_minor: provider_minor,
            }),
            Some(platform_minor) if platform_minor != provider_minor => {
                mismatches.push(Mismatch::AmountDiffers {
                    key: record.idempotency_key,
                    platform_minor,
                    provider_minor,
                });
            }
            Some(_) => {}
        }
    }
    mismatches.extend(
        platform
            .into_iter()
            .map(|(key, amount_minor)| Mismatch::PlatformOnly { key, amount_minor }),
    );
    mismatches.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    Ok(mismatches)
}
