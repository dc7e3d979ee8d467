//! Charging's reads and claims: new charges for closed sessions, and leases on charges to collect.

use chrono::{DateTime, Utc};
use parkflow_db::{Db, Engine, QueryBuilder, StoreError, db_time, query};
use parkflow_protocol::PlateColor;
use parkflow_session::SessionStatus;
use parkflow_session::repo::dequeue_charges;
use uuid::Uuid;

use super::{ChargeStatus, ChargingConfig, Claimed};
use crate::arrears::{NewInvoice, insert_invoices};
use crate::ledger::Entry;
use crate::ledger::store::insert_entries;
use crate::lots::LotBook;
use crate::tariff::Stay;

#[derive(sqlx::FromRow)]
struct ClosedSession {
    id: Uuid,
    lot_id: String,
    plate: String,
    status: String,
    plate_color: Option<String>,
    pass_holder: bool,
    entered_at: DateTime<Utc>,
    exited_at: Option<DateTime<Utc>>,
    fee_minor: Option<i64>,
    currency: Option<String>,
    driver_id: Option<Uuid>,
    payment_account: Option<String>,
    auto_debit: Option<bool>,
}

/// A charge about to be created.
struct NewCharge {
    id: Uuid,
    session_id: Uuid,
    operator_id: String,
    lot_id: String,
    local_day: String,
    driver_id: Option<Uuid>,
    account: Option<String>,
    amount_minor: i64,
    currency: String,
    status: ChargeStatus,
    plate: String,
}

/// What a round of [`enqueue`] did.
#[derive(Debug, Clone, Default)]
pub struct Enqueued {
    /// Queued sessions dealt with (charged now, charged already, or not to be charged).
    pub sessions: usize,
    /// Invoices raised to plates nobody enrolled pays for.
    pub plate_debts: usize,
    /// The new charges to debit, created already leased to this worker: a new charge is written
    /// once before its debit (so a crash mid-debit leaves it to be asked about), not also claimed.
    pub claimed: Vec<Claimed>,
}

/// Creates the charges of up to `limit` closed sessions that have none.
/// The fee is the session's; it is priced again from the tariff as a check, and a difference is logged.
pub async fn enqueue(
    db: &Db,
    lots: &mut LotBook,
    config: &ChargingConfig,
    limit: usize,
    now: DateTime<Utc>,
) -> Result<Enqueued, StoreError> {
    if limit == 0 {
        return Ok(Enqueued::default());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // The queue holds only what waits: a step never walks the history of every session. Session ids
    // are time-ordered (UUIDv7), so the primary key gives the oldest first without a sort.
    let sessions: Vec<ClosedSession> = query(
        "SELECT s.id, s.lot_id, s.plate, s.status, s.plate_color, s.pass_holder, s.entered_at, s.exited_at, s.fee_minor, s.currency,
                d.id AS driver_id, d.payment_account, d.auto_debit
         FROM charge_queue q
         JOIN sessions s ON s.id = q.session_id
         LEFT JOIN drivers d ON d.id = s.billed_driver
         ORDER BY q.session_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await?;
    let queued: Vec<Uuid> = sessions.iter().map(|s| s.id).collect();
    // Only closed sessions are charged; anything else leaves the queue (an operator's review decides).
    let sessions: Vec<ClosedSession> = sessions
        .into_iter()
        .filter(|s| {
            SessionStatus::parse(&s.status) == Some(SessionStatus::Closed)
                && s.exited_at.is_some()
                && s.fee_minor.is_some()
        })
        .collect();
    if queued.is_empty() {
        return Ok(Enqueued::default());
    }
    if sessions.iter().any(|s| lots.get(&s.lot_id).is_none()) {
        *lots = LotBook::load(db).await?;
    }
    let mut charges = Vec::with_capacity(sessions.len());
    for session in sessions {
        let (Some(exited_at), Some(fee_minor), Some(currency)) = (
            session.exited_at,
            session.fee_minor,
            session.currency.clone(),
        ) else {
            continue;
        };
        let Some(terms) = lots.get(&session.lot_id) else {
            tracing::error!(lot = %session.lot_id, "closed session of an unknown lot; not charged");
            continue;
        };
        let stay = Stay {
            entered_at: session.entered_at,
            exited_at,
            plate_color: session.plate_color.as_deref().and_then(PlateColor::parse),
            pass_holder: session.pass_holder,
        };
        match terms.tariffs.fee(&stay).map(|fee| fee.to_minor()) {
            Ok(Ok(repriced)) if repriced == fee_minor => {}
            other => {
                tracing::error!(session = %session.id, ?other, "stored fee differs from the tariff's; charging the stored fee")
            }
        }
        let status = match (
            fee_minor,
            session.driver_id,
            &session.payment_account,
            session.auto_debit,
        ) {
            (0, _, _, _) => ChargeStatus::Waived,
            (_, Some(_), Some(_), Some(true)) => ChargeStatus::Pending,
            _ => ChargeStatus::NoAccount,
        };
        charges.push(NewCharge {
            id: Uuid::now_v7(),
            session_id: session.id,
            operator_id: terms.operator_id.clone(),
            lot_id: session.lot_id,
            local_day: exited_at
                .with_timezone(&terms.time_zone)
                .date_naive()
                .to_string(),
            driver_id: session.driver_id,
            account: session
                .payment_account
                .filter(|_| status == ChargeStatus::Pending),
            amount_minor: fee_minor,
            currency,
            status,
            plate: session.plate,
        });
    }
    let now = db_time(now);
    let until = db_time(lease_end(config, now));
    let mut tx = db.begin_write().await?;
    let mut inserted = Vec::with_capacity(charges.len());
    let mut claimed = Vec::new();
    // 17 binds a row, under SQLite's bind limit.
    for chunk in charges.chunks(1_900) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO charges (id, session_id, operator_id, lot_id, local_day, driver_id, account, amount_minor,
                 currency, method, status, next_attempt_at, created_at, updated_at, locked_by, locked_until, attempts) ",
        );
        insert.push_values(chunk, |mut row, c| {
            row.push_bind(c.id)
                .push_bind(c.session_id)
                .push_bind(c.operator_id.as_str())
                .push_bind(c.lot_id.as_str())
                .push_bind(c.local_day.as_str())
                .push_bind(c.driver_id)
                .push_bind(c.account.as_deref())
                .push_bind(c.amount_minor)
                .push_bind(c.currency.as_str())
                .push_bind("auto_debit")
                .push_bind(c.status.as_str())
                .push_bind(now)
                .push_bind(now)
                .push_bind(now);
            // A charge to debit is this worker's, leased as `claim` would lease it.
            let to_debit = c.status == ChargeStatus::Pending;
            row.push_bind(to_debit.then_some(config.worker_id.as_str()))
                .push_bind(to_debit.then_some(until))
                .push_bind(i32::from(to_debit));
        });
        insert.push(
            " ON CONFLICT (session_id) DO NOTHING
             RETURNING id, session_id, lot_id, driver_id, account, amount_minor, currency, status, attempts",
        );
        let rows: Vec<Claimed> = insert.build().persistent(false).fetch_all(&mut tx).await?;
        inserted.extend(rows.iter().map(|c| c.id));
        claimed.extend(
            rows.into_iter()
                .filter(|c| c.status == ChargeStatus::Pending),
        );
    }
    // A charge with nobody to debit is owed at once: a fee entry, and an invoice — to its driver,
    // or, with nobody enrolled to bill, to its plate (a car let out without standing).
    let inserted_set: std::collections::HashSet<Uuid> = inserted.iter().copied().collect();
    let owed: Vec<&NewCharge> = charges
        .iter()
        .filter(|c| c.status == ChargeStatus::NoAccount && inserted_set.contains(&c.id))
        .collect();
    let entries: Vec<Entry> = owed
        .iter()
        .map(|c| Entry::fee(c.id, &c.lot_id, c.amount_minor, &c.currency, now))
        .collect();
    insert_entries(&mut tx, &entries).await?;
    let invoices: Vec<NewInvoice> = owed
        .iter()
        .map(|c| {
            let invoice = NewInvoice::new(
                c.id,
                c.driver_id,
                c.amount_minor,
                &c.currency,
                now,
                config.payment_window,
            );
            match c.driver_id {
                Some(_) => invoice,
                None => invoice.for_plate(c.plate.clone()),
            }
        })
        .collect();
    let plate_debts = invoices.iter().filter(|i| i.plate.is_some()).count();
    insert_invoices(&mut tx, &invoices).await?;
    // The queued sessions are dealt with: charged now, charged already, or not to be charged.
    dequeue_charges(&mut tx, &queued).await?;
    tx.commit().await?;
    Ok(Enqueued {
        sessions: queued.len().max(inserted.len()),
        plate_debts,
        claimed,
    })
}

/// When a lease taken at `now` runs out.
fn lease_end(config: &ChargingConfig, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(config.lease).unwrap_or(chrono::Duration::seconds(60))
}

/// Leases up to `limit` charges to collect again (unanswered ones whose time has come, or ones
/// whose worker's lease ran out) to this worker.
pub async fn claim(
    db: &Db,
    config: &ChargingConfig,
    limit: usize,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let now = db_time(now);
    let until = db_time(lease_end(config, now));
    const CLAIM: &str = "UPDATE charges SET locked_by = $1, locked_until = $2, attempts = attempts + 1, updated_at = $3
         WHERE id IN (SELECT id FROM charges WHERE status IN ('pending', 'unknown') AND next_attempt_at <= $3
                      AND (locked_until IS NULL OR locked_until < $3) ORDER BY next_attempt_at LIMIT $4{LOCK})
         RETURNING id, session_id, lot_id, driver_id, account, amount_minor, currency, status, attempts";
    let lock = match db.engine() {
        Engine::Sqlite => "",
        // Concurrent workers skip the rows another is claiming instead of waiting for them.
        Engine::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    query(CLAIM.replace("{LOCK}", lock))
        .bind(&config.worker_id)
        .bind(until)
        .bind(now)
        .bind(limit)
        .fetch_all(db)
        .await
}
