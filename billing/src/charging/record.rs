//! Recording what the provider said: charge statuses, journal entries, invoices — in one transaction.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use parkflow_db::{Db, QueryBuilder, StoreError, db_time};
use uuid::Uuid;

use super::{ChargeStatus, ChargingConfig, Claimed};
use crate::arrears::{NewInvoice, insert_invoices};
use crate::ledger::Entry;
use crate::ledger::store::insert_entries;
use crate::provider::DebitOutcome;

/// What a record step wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    pub succeeded: usize,
    pub declined: usize,
    pub unresolved: usize,
}

struct Update {
    id: Uuid,
    status: ChargeStatus,
    provider_ref: Option<String>,
    next_attempt_at: DateTime<Utc>,
}

/// Writes the outcomes of `claimed` (same order as `outcomes`). Only charges still leased to this
/// worker are updated; if a lease ran out and another worker took over, that worker records instead.
pub async fn record(
    db: &Db,
    config: &ChargingConfig,
    provider: &str,
    claimed: &[Claimed],
    outcomes: &[DebitOutcome],
    now: DateTime<Utc>,
) -> Result<Recorded, StoreError> {
    if claimed.is_empty() {
        return Ok(Recorded::default());
    }
    let now = db_time(now);
    let mut updates = Vec::with_capacity(claimed.len());
    for (charge, outcome) in claimed.iter().zip(outcomes) {
        let (status, provider_ref, next_attempt_at) = match outcome {
            DebitOutcome::Succeeded { provider_ref } => {
                (ChargeStatus::Succeeded, Some(provider_ref.clone()), now)
            }
            DebitOutcome::Declined { .. } => (ChargeStatus::Declined, None, now),
            DebitOutcome::Pending | DebitOutcome::Unknown => {
                let doublings = u32::try_from(charge.attempts.clamp(1, 10) - 1).unwrap_or(0);
                let wait = config
                    .retry_after
                    .saturating_mul(1 << doublings)
                    .min(std::time::Duration::from_secs(3600));
                (
                    ChargeStatus::Unknown,
                    None,
                    now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1)),
                )
            }
        };
        updates.push(Update {
            id: charge.id,
            status,
            provider_ref,
            next_attempt_at: db_time(next_attempt_at),
        });
    }

    let mut tx = db.begin_write().await?;
    let mut written: Vec<(Uuid,)> = Vec::with_capacity(updates.len());
    // 4 binds a row: chunks stay far below both engines' bind limits.
    for chunk in updates.chunks(2_000) {
        let mut update =
            QueryBuilder::new("WITH v (id, status, provider_ref, next_attempt_at) AS (");
        update.push_values(chunk, |mut row, u| {
            row.push_bind(u.id)
                .push_bind(u.status.as_str())
                .push_bind(u.provider_ref.as_deref())
                .push_bind(u.next_attempt_at);
        });
        update
            .push(") UPDATE charges SET status = v.status, provider_ref = v.provider_ref, next_attempt_at = v.next_attempt_at, ")
            .push("provider = ")
            .push_bind(provider)
            .push(", locked_by = NULL, locked_until = NULL, updated_at = ")
            .push_bind(now)
            .push(" FROM v WHERE charges.id = v.id AND charges.locked_by = ")
            .push_bind(config.worker_id.as_str())
            .push(" AND charges.status IN ('pending', 'unknown') RETURNING charges.id");
        written.extend(
            update
                .build()
                .persistent(false)
                .fetch_all::<(Uuid,)>(&mut tx)
                .await?,
        );
    }
    let written: HashSet<Uuid> = written.into_iter().map(|(id,)| id).collect();

    let mut entries = Vec::new();
    let mut invoices = Vec::new();
    let mut recorded = Recorded::default();
    for (charge, update) in claimed.iter().zip(&updates) {
        if !written.contains(&charge.id) {
            continue;
        }
        match update.status {
            ChargeStatus::Succeeded => {
                recorded.succeeded += 1;
                entries.push(Entry::collection(
                    charge.id,
                    &charge.lot_id,
                    provider,
                    charge.amount_minor,
                    &charge.currency,
                    now,
                ));
            }
            ChargeStatus::Declined => {
                recorded.declined += 1;
                entries.push(Entry::fee(
                    charge.id,
                    &charge.lot_id,
                    charge.amount_minor,
                    &charge.currency,
                    now,
                ));
                invoices.push(NewInvoice::new(
                    charge.id,
                    charge.driver_id,
                    charge.amount_minor,
                    &charge.currency,
                    now,
                    config.payment_window,
                ));
            }
            _ => recorded.unresolved += 1,
        }
    }
    insert_entries(&mut tx, &entries).await?;
    insert_invoices(&mut tx, &invoices).await?;
    tx.commit().await?;
    Ok(recorded)
}
