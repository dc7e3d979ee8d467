//! Paying through the API: an invoice (which clears the debt at once and, with no other overdue
//! invoice, reinstates a suspended driver), or a held exit (which closes the session so the
//! barrier can open).
//!
//! Exactly once, whatever the client does: a payment is first recorded as `pending` — at most one
//! in flight or made per invoice and per held exit (unique indexes) — and only then is the provider
//! asked, under a key derived from that row (`payment:{id}`). A retry with the client's
//! `Idempotency-Key` finds the row and finishes it (asking the provider what became of the debit);
//! another key for the same invoice or exit is refused while one is in flight or made. An exit
//! payment also takes the session's charge slot (`exit_pending`) so auto-debit never charges it too.

use chrono::{DateTime, Utc};
use parkflow_db::{Db, StoreError, db_time, query};
use parkflow_session::lifecycle::HeldExit;
use parkflow_session::repo::close_paid_exit;
use parkflow_session::{SessionStatus, Unknown, from_text};
use uuid::Uuid;

use crate::arrears::{InvoiceStatus, StandingChange, reinstate_if_clear};
use crate::ledger::Entry;
use crate::ledger::store::insert_entries;
use crate::lots::LotBook;
use crate::money::{Currency, Money};
use crate::provider::{Debit, DebitOutcome, PaymentProvider};

/// Why a payment did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The lot of a held exit is not among the lots the payments know (one added since start).
    #[error("lot not found")]
    UnknownLot,
    #[error("nothing to pay: {0}")]
    NothingDue(&'static str),
    #[error("another payment for this is in progress or made")]
    InProgress,
    #[error("the payment was declined: {0}")]
    Declined(String),
    #[error(
        "the payment provider has not confirmed the payment yet; retry with the same idempotency key"
    )]
    Pending,
    #[error("the idempotency key was used for another payment (another invoice or account)")]
    KeyReused,
    #[error("payment store failed")]
    Store(#[from] StoreError),
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

/// The provider's key for a payment row.
pub fn payment_key(payment: Uuid) -> String {
    format!("payment:{payment}")
}

/// What a payment pays: an invoice, or the fee of a session held at an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PaymentKind {
    Invoice,
    Exit,
}

impl PaymentKind {
    const ALL: [Self; 2] = [Self::Invoice, Self::Exit];

    fn as_str(self) -> &'static str {
        match self {
            Self::Invoice => "invoice",
            Self::Exit => "exit",
        }
    }
}

impl TryFrom<String> for PaymentKind {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(value, &Self::ALL, Self::as_str, "payment kind")
    }
}

/// Where a payment is: recorded and in flight (`Pending`), or answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PaymentStatus {
    Pending,
    Succeeded,
    Declined,
}

impl PaymentStatus {
    const ALL: [Self; 3] = [Self::Pending, Self::Succeeded, Self::Declined];

    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
        }
    }
}

impl TryFrom<String> for PaymentStatus {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(value, &Self::ALL, Self::as_str, "payment status")
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct PaymentRow {
    id: Uuid,
    #[sqlx(try_from = "String")]
    kind: PaymentKind,
    invoice_id: Option<Uuid>,
    session_id: Option<Uuid>,
    amount_minor: i64,
    currency: String,
    #[sqlx(try_from = "String")]
    status: PaymentStatus,
    request_digest: Option<String>,
}

/// What was asked under a payment's key, kept as a digest (salted with the payment's id) so the
/// account itself is not stored again.
fn request_digest(payment: Uuid, account: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(payment.as_bytes())
        .chain_update(account.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Idempotency keys are the caller's own: a driver's for invoices, a session's for its `pay_url`.
/// Nobody can take, probe or collide with another caller's key.
fn scoped_key(scope: &str, owner: Uuid, key: &str) -> String {
    format!("{scope}:{owner}:{key}")
}

async fn by_key(db: &Db, key: &str) -> Result<Option<PaymentRow>, PayError> {
    let row = query(
        "SELECT id, kind, invoice_id, session_id, amount_minor, currency, status, request_digest
         FROM payments WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(db)
    .await?;
    Ok(row)
}

/// What an earlier request under the same idempotency key came to.
enum Earlier {
    /// Nothing yet: a new payment.
    None,
    /// It went through: the same answer again.
    Paid(Paid),
    /// It is in flight (or crashed mid-way): finish it.
    Resume(PaymentRow),
}

/// Looks up `key` (already scoped to its caller), which must have been used for this `kind` of
/// payment of `target` (an invoice or a session) from the same `account` if it was used at all.
async fn earlier(
    db: &Db,
    key: &str,
    kind: PaymentKind,
    target: Uuid,
    account: &str,
) -> Result<Earlier, PayError> {
    let Some(payment) = by_key(db, key).await? else {
        return Ok(Earlier::None);
    };
    let paid_for = match kind {
        PaymentKind::Invoice => payment.invoice_id,
        PaymentKind::Exit => payment.session_id,
    };
    let same_body = payment
        .request_digest
        .as_ref()
        .is_none_or(|digest| *digest == request_digest(payment.id, account));
    if payment.kind != kind || paid_for != Some(target) || !same_body {
        return Err(PayError::KeyReused);
    }
    match payment.status {
        PaymentStatus::Succeeded => Ok(Earlier::Paid(Paid {
            payment_id: payment.id,
            amount: money(payment.amount_minor, &payment.currency)?,
            reinstated: None,
        })),
        PaymentStatus::Declined => {
            Err(PayError::Declined("declined earlier under this key".into()))
        }
        PaymentStatus::Pending => Ok(Earlier::Resume(payment)),
    }
}

/// Asks the provider about a payment row: a first attempt debits; a retry asks what became of it
/// and debits (same key) only if the provider never saw it.
async fn collect<P: PaymentProvider>(
    provider: &P,
    payment: &PaymentRow,
    account: &str,
    first: bool,
    description: String,
) -> Result<DebitOutcome, PayError> {
    let key = payment_key(payment.id);
    if !first {
        match provider.status(&key).await {
            DebitOutcome::Unknown => {}
            known => return Ok(known),
        }
    }
    let debit = Debit {
        idempotency_key: key,
        account: account.to_owned(),
        amount: money(payment.amount_minor, &payment.currency)?,
        description,
    };
    Ok(provider.debit(&debit).await)
}

/// Whose invoice is paid: a driver's, or a plate's (owed with nobody enrolled to bill, paid when
/// the car comes again).
#[derive(Debug, Clone, Copy)]
enum Payer<'a> {
    Driver(Uuid),
    Plate(&'a str),
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
    let key = scoped_key("driver", driver, key);
    pay_owed(
        db,
        provider,
        Payer::Driver(driver),
        invoice,
        &key,
        account,
        now,
    )
    .await
}

/// Pays an open invoice of `payer` under the (scoped) idempotency `key`.
async fn pay_owed<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    payer: Payer<'_>,
    invoice: Uuid,
    key: &str,
    account: &str,
    now: DateTime<Utc>,
) -> Result<Paid, PayError> {
    let now = db_time(now);
    let driver = match payer {
        Payer::Driver(driver) => Some(driver),
        Payer::Plate(_) => None,
    };
    let (payment, first) = match earlier(db, key, PaymentKind::Invoice, invoice, account).await? {
        Earlier::Paid(paid) => return Ok(paid),
        Earlier::Resume(p) => (p, false),
        Earlier::None => {
            let owed = match payer {
                Payer::Driver(driver) => query(
                    "SELECT amount_minor, currency, status FROM invoices WHERE id = $1 AND driver_id = $2",
                )
                .bind(invoice)
                .bind(driver),
                Payer::Plate(plate) => query(
                    "SELECT amount_minor, currency, status FROM invoices WHERE id = $1 AND driver_id IS NULL AND plate = $2",
                )
                .bind(invoice)
                .bind(plate),
            };
            let row: Option<(i64, String, String)> = owed.fetch_optional(db).await?;
            let (minor, currency, status) = row.ok_or(PayError::NotFound("invoice"))?;
            let status = InvoiceStatus::try_from(status)
                .map_err(|unknown| StoreError::Corrupt(unknown.to_string()))?;
            if status != InvoiceStatus::Open {
                return Err(PayError::NothingDue("the invoice is not open"));
            }
            let payment = PaymentRow {
                id: Uuid::now_v7(),
                kind: PaymentKind::Invoice,
                invoice_id: Some(invoice),
                session_id: None,
                amount_minor: minor,
                currency,
                status: PaymentStatus::Pending,
                request_digest: None,
            };
            let inserted = query(
                "INSERT INTO payments (id, idempotency_key, kind, invoice_id, driver_id, amount_minor, currency, status,
                     request_digest, created_at)
                 VALUES ($1, $2, 'invoice', $3, $4, $5, $6, 'pending', $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(payment.id)
            .bind(key)
            .bind(invoice)
            .bind(driver)
            .bind(minor)
            .bind(&payment.currency)
            .bind(request_digest(payment.id, account))
            .bind(now)
            .execute(db)
            .await?;
            if inserted == 0 {
                return Err(PayError::InProgress);
            }
            (payment, true)
        }
    };
    let outcome = collect(
        provider,
        &payment,
        account,
        first,
        format!("invoice {invoice}"),
    )
    .await?;
    finish_invoice(db, provider, &payment, driver, invoice, outcome, now).await
}

/// Pays, one payment each, the open invoices `plate` owed with nobody enrolled to bill (a car
/// its lane let out without standing) that its held exit's `amount_due` included, oldest first,
/// up to `owed_minor`. Each is idempotent under `key` and the invoice. Returns what is paid of
/// `owed_minor` (by this call or an earlier one under the same key).
async fn pay_plate_debts<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    plate: &str,
    owed_minor: i64,
    key: &str,
    account: &str,
    now: DateTime<Utc>,
) -> Result<i64, PayError> {
    let invoices: Vec<(Uuid, i64, String)> = query(
        "SELECT id, amount_minor, status FROM invoices WHERE plate = $1 AND driver_id IS NULL
           AND status IN ('open', 'paid') ORDER BY created_at, id",
    )
    .bind(plate)
    .fetch_all(db)
    .await?;
    let mut left = owed_minor;
    for (invoice, minor, status) in invoices {
        let invoice_key = format!("{key}:invoice:{invoice}");
        if status != InvoiceStatus::Open.as_str() {
            // Paid by an earlier try under this key: it counts, and is not paid again.
            if by_key(db, &invoice_key)
                .await?
                .is_some_and(|p| p.status == PaymentStatus::Succeeded)
            {
                left -= minor;
            }
            continue;
        }
        if minor > left {
            break;
        }
        pay_owed(
            db,
            provider,
            Payer::Plate(plate),
            invoice,
            &invoice_key,
            account,
            now,
        )
        .await?;
        left -= minor;
    }
    Ok(owed_minor - left)
}

/// Records what the provider answered for an invoice payment: paid (the invoice cleared, the
/// driver reinstated when nothing else is overdue), declined, or still pending.
async fn finish_invoice<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    payment: &PaymentRow,
    driver: Option<Uuid>,
    invoice: Uuid,
    outcome: DebitOutcome,
    now: DateTime<Utc>,
) -> Result<Paid, PayError> {
    let amount = money(payment.amount_minor, &payment.currency)?;
    let provider_ref = match outcome {
        DebitOutcome::Succeeded { provider_ref } => provider_ref,
        DebitOutcome::Declined { reason } => {
            query("UPDATE payments SET status = 'declined' WHERE id = $1 AND status = 'pending'")
                .bind(payment.id)
                .execute(db)
                .await?;
            return Err(PayError::Declined(reason));
        }
        DebitOutcome::Pending | DebitOutcome::Unknown => return Err(PayError::Pending),
    };
    let mut tx = db.begin_write().await?;
    let finished = query(
        "UPDATE payments SET status = 'succeeded', provider_ref = $2 WHERE id = $1 AND status = 'pending'",
    )
    .bind(payment.id)
    .bind(&provider_ref)
    .execute(&mut tx)
    .await?;
    if finished == 0 {
        // A concurrent retry under the same key finished it.
        return Ok(Paid {
            payment_id: payment.id,
            amount,
            reinstated: None,
        });
    }
    query("UPDATE invoices SET status = 'paid', paid_at = $2 WHERE id = $1 AND status = 'open'")
        .bind(invoice)
        .bind(now)
        .execute(&mut tx)
        .await?;
    insert_entries(
        &mut tx,
        &[Entry::payment(
            payment.id,
            provider.name(),
            payment.amount_minor,
            &payment.currency,
            now,
        )],
    )
    .await?;
    // Reinstate a suspended driver who owes nothing overdue any more.
    let reinstated = match driver {
        Some(driver) => reinstate_if_clear(&mut tx, driver, now).await?,
        None => None,
    };
    tx.commit().await?;
    Ok(Paid {
        payment_id: payment.id,
        amount,
        reinstated,
    })
}

/// A held exit's read and session, as stored.
#[derive(sqlx::FromRow)]
struct HeldRow {
    lot_id: String,
    gate_id: String,
    event_id: String,
    observed_at: DateTime<Utc>,
    entered_at: DateTime<Utc>,
    #[sqlx(try_from = "String")]
    status: SessionStatus,
    amount_due_minor: Option<i64>,
    currency: Option<String>,
    /// Of `amount_due_minor`, what the plate owed from earlier stays (paid first, apart).
    owed_minor: Option<i64>,
    plate: String,
}

/// The latest read of `session` held for payment at an exit.
async fn held_exit(db: &Db, session: Uuid) -> Result<HeldRow, PayError> {
    let held: Option<HeldRow> = query(
        "SELECT r.lot_id, r.gate_id, r.event_id, r.observed_at, s.entered_at, s.status, r.amount_due_minor, r.currency,
                r.owed_minor, s.plate
         FROM gate_reads r JOIN sessions s ON s.id = r.session_id
         WHERE r.session_id = $1 AND r.action = 'hold' AND r.reason = 'payment_required'
         ORDER BY r.received_at DESC LIMIT 1",
    )
    .bind(session)
    .fetch_optional(db)
    .await?;
    held.ok_or(PayError::NotFound("held exit"))
}

impl HeldRow {
    fn exit(&self, session: Uuid) -> HeldExit<'_> {
        HeldExit {
            session,
            status: self.status,
            entered_at: self.entered_at,
            gate: &self.gate_id,
            event: &self.event_id,
            held_at: self.observed_at,
        }
    }
}

/// Where the payment of a held exit stands, as its pay page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitPayment {
    /// Nothing paid yet (or only declined attempts).
    Due,
    /// Asked of the provider, not answered yet.
    Pending,
    /// Paid: the barrier opens.
    Paid,
}

/// A held exit, as the person at the barrier sees it.
#[derive(Debug, Clone)]
pub struct ExitDue {
    pub lot_id: String,
    pub entered_at: DateTime<Utc>,
    /// When the car was held at the exit.
    pub held_at: DateTime<Utc>,
    /// All that is due: earlier stays the plate owes and this one.
    pub amount: Option<Money>,
    /// Of `amount`, what earlier stays owe.
    pub owed: Option<Money>,
    pub payment: ExitPayment,
}

/// The held exit of `session`, if it was held for payment: what its pay page shows.
pub async fn exit_due(db: &Db, session: Uuid) -> Result<Option<ExitDue>, PayError> {
    let held = match held_exit(db, session).await {
        Ok(held) => held,
        Err(PayError::NotFound(_)) => return Ok(None),
        Err(error) => return Err(error),
    };
    let statuses: Vec<(String,)> = query("SELECT status FROM payments WHERE session_id = $1")
        .bind(session)
        .fetch_all(db)
        .await?;
    let has = |status: PaymentStatus| statuses.iter().any(|(s,)| s == status.as_str());
    let payment = if has(PaymentStatus::Succeeded) {
        ExitPayment::Paid
    } else if has(PaymentStatus::Pending) {
        ExitPayment::Pending
    } else {
        ExitPayment::Due
    };
    let currency = held.currency.as_deref().and_then(|c| Currency::new(c).ok());
    let money = |minor: Option<i64>| Some(Money::from_minor(minor?, currency?));
    Ok(Some(ExitDue {
        lot_id: held.lot_id,
        entered_at: held.entered_at,
        held_at: held.observed_at,
        amount: money(held.amount_due_minor),
        owed: money(held.owed_minor.filter(|owed| *owed > 0)),
        payment,
    }))
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
    let now = db_time(now);
    let held = held_exit(db, session).await?;
    let (Some(due), Some(currency)) = (held.amount_due_minor, held.currency.clone()) else {
        return Err(PayError::NothingDue("the exit was not held for payment"));
    };
    // What the plate owed from earlier stays is paid first, each invoice apart; then the stay.
    let owed = held.owed_minor.unwrap_or(0).clamp(0, due);
    let minor = due - owed;
    let terms = lots.get(&held.lot_id).ok_or(PayError::UnknownLot)?;
    let exit = held.exit(session);
    let exit_paid = |paid| ExitPaid {
        paid,
        session_id: session,
        lot_id: held.lot_id.clone(),
        gate_id: held.gate_id.clone(),
        event_id: held.event_id.clone(),
    };
    let key = &scoped_key("session", session, key);
    let debts_paid = if owed > 0 && exit.payable().is_ok() {
        pay_plate_debts(db, provider, &held.plate, owed, key, account, now).await?
    } else {
        0
    };
    // The answer's amount is all that was paid: the debts and the stay.
    let exit_paid = |mut paid: Paid| {
        if debts_paid > 0 {
            paid.amount = Money::from_minor(
                paid.amount.to_minor().unwrap_or(0) + debts_paid,
                paid.amount.currency(),
            );
        }
        exit_paid(paid)
    };
    let (payment, first) = match earlier(db, key, PaymentKind::Exit, session, account).await? {
        Earlier::Paid(paid) => return Ok(exit_paid(paid)),
        Earlier::Resume(p) => (p, false),
        Earlier::None => {
            if exit.payable().is_err() {
                return Err(PayError::NothingDue("the session is not open"));
            }
            let payment = PaymentRow {
                id: Uuid::now_v7(),
                kind: PaymentKind::Exit,
                invoice_id: None,
                session_id: Some(session),
                amount_minor: minor,
                currency: currency.clone(),
                status: PaymentStatus::Pending,
                request_digest: None,
            };
            let local_day = exit
                .exited_at()
                .with_timezone(&terms.time_zone)
                .date_naive()
                .to_string();
            let mut tx = db.begin_write().await?;
            let payment_row = query(
                "INSERT INTO payments (id, idempotency_key, kind, session_id, amount_minor, currency, status,
                     request_digest, created_at)
                 VALUES ($1, $2, 'exit', $3, $4, $5, 'pending', $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(payment.id)
            .bind(key)
            .bind(session)
            .bind(minor)
            .bind(&currency)
            .bind(request_digest(payment.id, account))
            .bind(now)
            .execute(&mut tx)
            .await?;
            // The session's one charge: taken now, so auto-debit stays away while the money moves.
            let charge_row = query(
                "INSERT INTO charges (id, session_id, operator_id, lot_id, local_day, amount_minor, currency, method, status,
                     next_attempt_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'exit_payment', 'exit_pending', $8, $8, $8)
                 ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(Uuid::now_v7())
            .bind(session)
            .bind(&terms.operator_id)
            .bind(&held.lot_id)
            .bind(&local_day)
            .bind(minor)
            .bind(&currency)
            .bind(now)
            .execute(&mut tx)
            .await?;
            let started = payment_row == 1 && charge_row == 1;
            if started {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            if !started {
                return Err(PayError::InProgress);
            }
            (payment, true)
        }
    };
    let outcome = collect(
        provider,
        &payment,
        account,
        first,
        format!("parking at {}", held.lot_id),
    )
    .await?;
    finish_exit(db, provider, &payment, &exit, &held.lot_id, outcome, now)
        .await
        .map(exit_paid)
}

/// Records what the provider answered for a held exit's payment: paid (the session closed at the
/// held read's time, its charge collected), declined (the charge slot freed), or still pending.
async fn finish_exit<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    payment: &PaymentRow,
    exit: &HeldExit<'_>,
    lot: &str,
    outcome: DebitOutcome,
    now: DateTime<Utc>,
) -> Result<Paid, PayError> {
    let amount = money(payment.amount_minor, &payment.currency)?;
    let provider_ref = match outcome {
        DebitOutcome::Succeeded { provider_ref } => provider_ref,
        DebitOutcome::Declined { reason } => {
            let mut tx = db.begin_write().await?;
            query("UPDATE payments SET status = 'declined' WHERE id = $1 AND status = 'pending'")
                .bind(payment.id)
                .execute(&mut tx)
                .await?;
            // The session's charge slot goes back to auto-debit (or to the next payment).
            query("DELETE FROM charges WHERE session_id = $1 AND status = 'exit_pending'")
                .bind(exit.session)
                .execute(&mut tx)
                .await?;
            tx.commit().await?;
            return Err(PayError::Declined(reason));
        }
        DebitOutcome::Pending | DebitOutcome::Unknown => return Err(PayError::Pending),
    };
    let mut tx = db.begin_write().await?;
    let finished = query(
        "UPDATE payments SET status = 'succeeded', provider_ref = $2 WHERE id = $1 AND status = 'pending'",
    )
    .bind(payment.id)
    .bind(&provider_ref)
    .execute(&mut tx)
    .await?;
    if finished == 1 {
        let paid = exit.paid(payment.amount_minor, &payment.currency);
        close_paid_exit(&mut tx, &paid, now).await?;
        let charge: Option<(Uuid,)> = query(
            "UPDATE charges SET status = 'succeeded', provider = $2, provider_ref = $3, updated_at = $4
             WHERE session_id = $1 AND status = 'exit_pending' RETURNING id",
        )
        .bind(exit.session)
        .bind(provider.name())
        .bind(&provider_ref)
        .bind(now)
        .fetch_optional(&mut tx)
        .await?;
        if let Some((charge,)) = charge {
            insert_entries(
                &mut tx,
                &[Entry::collection(
                    charge,
                    lot,
                    provider.name(),
                    payment.amount_minor,
                    &payment.currency,
                    now,
                )],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(Paid {
        payment_id: payment.id,
        amount,
        reinstated: None,
    })
}

/// How long a payment may stay pending before it is asked about again and, when the provider
/// never received it, given up: a car held at an exit is never stuck behind a payment nobody
/// answers (the driver pays again, under another key).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// What resolving stale payments came to.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Held exits whose payment went through after all: their barriers are to open.
    pub exits_paid: Vec<ExitPaid>,
    /// Drivers reinstated by an invoice payment that went through after all.
    pub reinstated: Vec<StandingChange>,
    /// Payments given up (declined, or never received by the provider).
    pub failed: usize,
    /// Payments the provider holds but has not confirmed: asked again next time.
    pub still_pending: usize,
}

/// Asks the provider about every payment pending for longer than `stale_after` and records its
/// answer; one the provider never received is failed, so its invoice or exit can be paid again.
pub async fn resolve_stale<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    stale_after: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Resolved, PayError> {
    let now = db_time(now);
    let cutoff = now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let stale: Vec<(Uuid, Option<Uuid>)> = query(
        "SELECT id, driver_id FROM payments WHERE status = 'pending' AND created_at <= $1
         ORDER BY id LIMIT 100",
    )
    .bind(cutoff)
    .fetch_all(db)
    .await?;
    let mut resolved = Resolved::default();
    for (id, driver) in stale {
        let Some(payment) = query(
            "SELECT id, kind, invoice_id, session_id, amount_minor, currency, status, request_digest
             FROM payments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional::<PaymentRow>(db)
        .await?
        else {
            continue;
        };
        let outcome = match provider.status(&payment_key(payment.id)).await {
            DebitOutcome::Unknown => DebitOutcome::Declined {
                reason: "the payment provider never received it".into(),
            },
            known => known,
        };
        let finished = match (payment.kind, payment.invoice_id, payment.session_id, driver) {
            // A driver's invoice, or a plate's (paid at its next held exit: no driver).
            (PaymentKind::Invoice, Some(invoice), _, driver) => {
                finish_invoice(db, provider, &payment, driver, invoice, outcome, now)
                    .await
                    .map(|paid| resolved.reinstated.extend(paid.reinstated))
            }
            (PaymentKind::Exit, _, Some(session), _) => {
                let held = held_exit(db, session).await?;
                let exit = held.exit(session);
                finish_exit(db, provider, &payment, &exit, &held.lot_id, outcome, now)
                    .await
                    .map(|paid| {
                        resolved.exits_paid.push(ExitPaid {
                            paid,
                            session_id: session,
                            lot_id: held.lot_id.clone(),
                            gate_id: held.gate_id.clone(),
                            event_id: held.event_id.clone(),
                        });
                    })
            }
            _ => Err(PayError::Store(StoreError::Corrupt(format!(
                "payment {id} names nothing to pay"
            )))),
        };
        match finished {
            Ok(()) => {}
            Err(PayError::Declined(reason)) => {
                tracing::warn!(payment = %id, %reason, "a stale pending payment failed");
                resolved.failed += 1;
            }
            Err(PayError::Pending) => resolved.still_pending += 1,
            Err(error) => return Err(error),
        }
    }
    Ok(resolved)
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
    /// Resolves payments pending longer than [`STALE_AFTER`] ([`resolve_stale`]).
    fn resolve_stale(&self) -> futures::future::BoxFuture<'_, Result<Resolved, PayError>>;
    /// Asks for a mandate on `account` for `driver` ([`crate::mandates::set_up`]).
    fn set_up_mandate(
        &self,
        driver: Uuid,
        account: String,
    ) -> futures::future::BoxFuture<
        '_,
        Result<(crate::mandates::MandateState, Option<StandingChange>), StoreError>,
    >;
    /// Asks about the mandates due ([`crate::mandates::check_due`]).
    fn check_mandates(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Vec<StandingChange>, StoreError>>;
}

/// [`PaymentsApi`] over a database and a provider.
pub struct Payments<P> {
    db: Db,
    provider: P,
    lots: tokio::sync::RwLock<LotBook>,
    mandates: crate::mandates::MandateCheck,
}

impl<P: PaymentProvider> Payments<P> {
    /// Lots' terms are read on first use.
    pub fn new(db: Db, provider: P) -> Self {
        Self {
            db,
            provider,
            lots: tokio::sync::RwLock::new(LotBook::default()),
            mandates: crate::mandates::MandateCheck::default(),
        }
    }

    /// Mandates asked about as `check` says.
    pub fn with_mandate_check(mut self, check: crate::mandates::MandateCheck) -> Self {
        self.mandates = check;
        self
    }
}

impl<P: PaymentProvider> PaymentsApi for Payments<P> {
    fn set_up_mandate(
        &self,
        driver: Uuid,
        account: String,
    ) -> futures::future::BoxFuture<
        '_,
        Result<(crate::mandates::MandateState, Option<StandingChange>), StoreError>,
    > {
        Box::pin(async move {
            crate::mandates::set_up(&self.db, &self.provider, driver, &account, Utc::now()).await
        })
    }

    fn check_mandates(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Vec<StandingChange>, StoreError>> {
        Box::pin(crate::mandates::check_due(
            &self.db,
            &self.provider,
            self.mandates,
            Utc::now(),
        ))
    }

    fn resolve_stale(&self) -> futures::future::BoxFuture<'_, Result<Resolved, PayError>> {
        Box::pin(resolve_stale(
            &self.db,
            &self.provider,
            STALE_AFTER,
            Utc::now(),
        ))
    }

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
                &self.provider,
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
            if let Err(PayError::UnknownLot) = result {
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
