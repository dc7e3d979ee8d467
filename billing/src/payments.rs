//! Paying through the API: an invoice (which clears the debt at once and, with no other overdue
//! invoice, reinstates a suspended driver), or a held exit (which closes the session so the
//! barrier can open). Idempotent by the client's key: the same key never pays twice.

use chrono::{DateTime, Utc};
use parkflow_db::{Db, StoreError, db_time, on_db};
use uuid::Uuid;

use crate::arrears::StandingChange;
use crate::insert_entries;
use crate::ledger::Entry;
use crate::lots::LotBook;
use crate::money::{Currency, Money};
use crate::provider::{Debit, DebitOutcome, PaymentProvider};

/// Why a payment did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("nothing to pay: {0}")]
    NothingDue(&'static str),
    #[error("the payment was declined: {0}")]
    Declined(String),
    #[error(
        "the payment provider has not confirmed the payment yet; retry with the same idempotency key"
    )]
    Pending,
    #[error("the idempotency key was used for another payment")]
    KeyReused,
    #[error("payment store failed")]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PayError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A payment that went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paid {
    pub payment_id: Uuid,
    pub amount: Money,
    /// Set when paying reinstated a suspended driver.
    pub reinstated: Option<StandingChange>,
}

/// A held exit that was paid: the gate to open and the read it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPaid {
    pub paid: Paid,
    pub session_id: Uuid,
    pub lot_id: String,
    pub gate_id: String,
    pub event_id: String,
}

fn money(minor: i64, currency: &str) -> Result<Money, PayError> {
    let currency =
        Currency::new(currency).map_err(|_| StoreError::Corrupt(format!("currency {currency}")))?;
    Ok(Money::from_minor(minor, currency))
}

/// A payment already made under `key`, if any: (id, kind, reference, amount, currency, status).
async fn earlier(
    db: &Db,
    key: &str,
) -> Result<Option<(Uuid, String, Option<Uuid>, i64, String, String)>, PayError> {
    let row = on_db!(db, pool => sqlx::query_as(
        "SELECT id, kind, COALESCE(invoice_id, session_id), amount_minor, currency, status FROM payments WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?);
    Ok(row)
}

async fn debit<P: PaymentProvider>(
    provider: &P,
    key: String,
    account: &str,
    amount: Money,
    description: String,
) -> Result<String, PayError> {
    let debit = Debit {
        idempotency_key: key,
        account: account.to_owned(),
        amount,
        description,
    };
    match provider.debit(&debit).await {
        DebitOutcome::Succeeded { provider_ref } => Ok(provider_ref),
        DebitOutcome::Declined { reason } => Err(PayError::Declined(reason)),
        DebitOutcome::Pending | DebitOutcome::Unknown => Err(PayError::Pending),
    }
}

/// Pays an open invoice of `driver` from `account`.
pub async fn pay_invoice<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    driver: Uuid,
    invoice: Uuid,
    key: &str,
    account: &str,
    now: DateTime<Utc>,
) -> Result<Paid, PayError> {
    if let Some((id, kind, reference, minor, currency, status)) = earlier(db, key).await? {
        if kind != "invoice" || reference != Some(invoice) {
            return Err(PayError::KeyReused);
        }
        return match status.as_str() {
            "succeeded" => Ok(Paid {
                payment_id: id,
                amount: money(minor, &currency)?,
                reinstated: None,
            }),
            _ => Err(PayError::Pending),
        };
    }
    let row: Option<(i64, String, String)> = on_db!(db, pool => sqlx::query_as(
        "SELECT amount_minor, currency, status FROM invoices WHERE id = $1 AND driver_id = $2",
    )
    .bind(invoice)
    .bind(driver)
    .fetch_optional(pool)
    .await?);
    let (minor, currency, status) = row.ok_or(PayError::NotFound("invoice"))?;
    if status != "open" {
        return Err(PayError::NothingDue("the invoice is not open"));
    }
    let amount = money(minor, &currency)?;
    let provider_ref = debit(
        provider,
        format!("invoice:{key}"),
        account,
        amount,
        format!("invoice {invoice}"),
    )
    .await?;

    let now = db_time(now);
    let payment_id = Uuid::now_v7();
    let reinstated = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO payments (id, idempotency_key, kind, invoice_id, amount_minor, currency, status, provider_ref, created_at)
             VALUES ($1, $2, 'invoice', $3, $4, $5, 'succeeded', $6, $7) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(payment_id)
        .bind(key)
        .bind(invoice)
        .bind(minor)
        .bind(&currency)
        .bind(&provider_ref)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // The same key raced in: that payment stands, this one is the same one.
            return Err(PayError::Pending);
        }
        sqlx::query("UPDATE invoices SET status = 'paid', paid_at = $2 WHERE id = $1 AND status = 'open'")
            .bind(invoice)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_entries!(tx, &[Entry::payment(payment_id, provider.name(), minor, &currency, now)])?;
        // Reinstate a suspended driver who owes nothing overdue any more.
        let reinstated: Option<(Uuid,)> = sqlx::query_as(
            "UPDATE drivers SET status = 'active', suspended_at = NULL
             WHERE id = $1 AND status = 'suspended'
               AND NOT EXISTS (SELECT 1 FROM invoices WHERE driver_id = $1 AND status = 'open' AND due_at <= $2)
             RETURNING id",
        )
        .bind(driver)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let reinstated = match reinstated {
            Some(_) => {
                sqlx::query("INSERT INTO notifications (id, driver_id, invoice_id, kind, created_at) VALUES ($1, $2, NULL, 'reinstated', $3)")
                    .bind(Uuid::now_v7())
                    .bind(driver)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let plates: Vec<(String,)> =
                    sqlx::query_as("SELECT plate FROM driver_plates WHERE driver_id = $1").bind(driver).fetch_all(&mut *tx).await?;
                Some(StandingChange { driver_id: driver, plates: plates.into_iter().map(|(p,)| p).collect(), suspended: false })
            }
            None => None,
        };
        tx.commit().await?;
        reinstated
    });
    Ok(Paid {
        payment_id,
        amount,
        reinstated,
    })
}

#[derive(sqlx::FromRow)]
struct HeldExit {
    lot_id: String,
    gate_id: String,
    event_id: String,
    observed_at: DateTime<Utc>,
    amount_due_minor: Option<i64>,
    currency: Option<String>,
}

/// Pays the fee of a session held at an exit (`pay_url`); the session closes at the held read's time.
pub async fn pay_exit<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    lots: &LotBook,
    session: Uuid,
    key: &str,
    account: &str,
    now: DateTime<Utc>,
) -> Result<ExitPaid, PayError> {
    let held: Option<HeldExit> = on_db!(db, pool => sqlx::query_as(
        "SELECT r.lot_id, r.gate_id, r.event_id, r.observed_at, r.amount_due_minor, r.currency
         FROM gate_reads r JOIN sessions s ON s.id = r.session_id
         WHERE r.session_id = $1 AND r.action = 'hold' AND r.reason = 'payment_required'
         ORDER BY r.received_at DESC LIMIT 1",
    )
    .bind(session)
    .fetch_optional(pool)
    .await?);
    let held = held.ok_or(PayError::NotFound("held exit"))?;
    let (Some(minor), Some(currency)) = (held.amount_due_minor, held.currency.clone()) else {
        return Err(PayError::NothingDue("the exit was not held for payment"));
    };
    let exit_paid = |paid| ExitPaid {
        paid,
        session_id: session,
        lot_id: held.lot_id.clone(),
        gate_id: held.gate_id.clone(),
        event_id: held.event_id.clone(),
    };
    if let Some((id, kind, reference, minor, currency, status)) = earlier(db, key).await? {
        if kind != "exit" || reference != Some(session) {
            return Err(PayError::KeyReused);
        }
        return match status.as_str() {
            "succeeded" => Ok(exit_paid(Paid {
                payment_id: id,
                amount: money(minor, &currency)?,
                reinstated: None,
            })),
            _ => Err(PayError::Pending),
        };
    }
    let open: Option<(String,)> = on_db!(db, pool => sqlx::query_as("SELECT status FROM sessions WHERE id = $1").bind(session).fetch_optional(pool).await?);
    if open.as_ref().map(|(s,)| s.as_str()) != Some("open") {
        return Err(PayError::NothingDue("the session is not open"));
    }
    let terms = lots.get(&held.lot_id).ok_or(PayError::NotFound("lot"))?;
    let amount = money(minor, &currency)?;
    let provider_ref = debit(
        provider,
        format!("exit:{key}"),
        account,
        amount,
        format!("parking at {}", held.lot_id),
    )
    .await?;

    let now = db_time(now);
    let payment_id = Uuid::now_v7();
    let charge_id = Uuid::now_v7();
    let local_day = held
        .observed_at
        .with_timezone(&terms.time_zone)
        .date_naive()
        .to_string();
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO payments (id, idempotency_key, kind, session_id, amount_minor, currency, status, provider_ref, created_at)
             VALUES ($1, $2, 'exit', $3, $4, $5, 'succeeded', $6, $7)",
        )
        .bind(payment_id)
        .bind(key)
        .bind(session)
        .bind(minor)
        .bind(&currency)
        .bind(&provider_ref)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let closed = sqlx::query(
            "UPDATE sessions SET status = 'closed', exit_gate = $2, exit_event_id = $3, exited_at = $4, fee_minor = $5,
                 currency = $6, updated_at = $7
             WHERE id = $1 AND status = 'open'",
        )
        .bind(session)
        .bind(&held.gate_id)
        .bind(&held.event_id)
        .bind(db_time(held.observed_at))
        .bind(minor)
        .bind(&currency)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if closed.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO charges (id, session_id, operator_id, lot_id, local_day, amount_minor, currency, method, status,
                     provider, provider_ref, next_attempt_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'exit_payment', 'succeeded', $8, $9, $10, $10, $10)",
            )
            .bind(charge_id)
            .bind(session)
            .bind(&terms.operator_id)
            .bind(&held.lot_id)
            .bind(&local_day)
            .bind(minor)
            .bind(&currency)
            .bind(provider.name())
            .bind(&provider_ref)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            insert_entries!(tx, &[Entry::collection(charge_id, &held.lot_id, provider.name(), minor, &currency, now)])?;
        } else {
            // The session ended meanwhile (an operator, a later read): the money stays recorded as a
            // payment for review rather than silently applied twice.
            tracing::error!(session = %session, "exit paid for a session that had already ended");
        }
        tx.commit().await?;
    });
    Ok(exit_paid(Paid {
        payment_id,
        amount,
        reinstated: None,
    }))
}

/// Payments as the HTTP API needs them, object-safe so the API does not depend on which provider
/// the platform runs with.
pub trait PaymentsApi: Send + Sync + 'static {
    /// Compares the platform's collections and payments with the provider's records.
    fn reconcile(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Vec<crate::settlement::Mismatch>, StoreError>>;
    fn refund(
        &self,
        charge: Uuid,
        amount_minor: i64,
        reason: String,
        key: String,
    ) -> futures::future::BoxFuture<'_, Result<crate::refunds::Refunded, crate::refunds::RefundError>>;
    fn pay_invoice(
        &self,
        driver: Uuid,
        invoice: Uuid,
        key: String,
        account: String,
    ) -> futures::future::BoxFuture<'_, Result<Paid, PayError>>;
    fn pay_exit(
        &self,
        session: Uuid,
        key: String,
        account: String,
    ) -> futures::future::BoxFuture<'_, Result<ExitPaid, PayError>>;
}

/// [`PaymentsApi`] over a database and a provider.
pub struct Payments<P> {
    db: Db,
    provider: P,
    lots: tokio::sync::RwLock<LotBook>,
}

impl<P: PaymentProvider> Payments<P> {
    /// Lots' terms are read on first use.
    pub fn new(db: Db, provider: P) -> Self {
        Self {
            db,
            provider,
            lots: tokio::sync::RwLock::new(LotBook::default()),
        }
    }
}

impl<P: PaymentProvider> PaymentsApi for Payments<P> {
    fn reconcile(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Vec<crate::settlement::Mismatch>, StoreError>> {
        Box::pin(crate::settlement::reconcile(&self.db, &self.provider))
    }

    fn refund(
        &self,
        charge: Uuid,
        amount_minor: i64,
        reason: String,
        key: String,
    ) -> futures::future::BoxFuture<'_, Result<crate::refunds::Refunded, crate::refunds::RefundError>>
    {
        Box::pin(async move {
            crate::refunds::refund(
                &self.db,
                self.provider.name(),
                charge,
                amount_minor,
                &reason,
                &key,
                Utc::now(),
            )
            .await
        })
    }

    fn pay_invoice(
        &self,
        driver: Uuid,
        invoice: Uuid,
        key: String,
        account: String,
    ) -> futures::future::BoxFuture<'_, Result<Paid, PayError>> {
        Box::pin(async move {
            pay_invoice(
                &self.db,
                &self.provider,
                driver,
                invoice,
                &key,
                &account,
                Utc::now(),
            )
            .await
        })
    }

    fn pay_exit(
        &self,
        session: Uuid,
        key: String,
        account: String,
    ) -> futures::future::BoxFuture<'_, Result<ExitPaid, PayError>> {
        Box::pin(async move {
            let result = {
                let lots = self.lots.read().await;
                pay_exit(
                    &self.db,
                    &self.provider,
                    &lots,
                    session,
                    &key,
                    &account,
                    Utc::now(),
                )
                .await
            };
            if let Err(PayError::NotFound("lot")) = result {
                // A lot added since start: learn it and try once more.
                *self.lots.write().await = LotBook::load(&self.db).await?;
                let lots = self.lots.read().await;
                return pay_exit(
                    &self.db,
                    &self.provider,
                    &lots,
                    session,
                    &key,
                    &account,
                    Utc::now(),
                )
                .await;
            }
            result
        })
    }
}
