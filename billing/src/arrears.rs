//! Arrears (SPEC §4): a debit that failed becomes an invoice due within the payment window, with
//! reminders in a notification outbox; an invoice unpaid past its due time suspends the driver
//! (no leave-first privilege: the gateway holds their exits) until the debt is paid.

use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow_db::{Db, QueryBuilder, StoreError, Tx, db_time, query};
use parkflow_session::{Unknown, from_text};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::drivers;
use crate::ledger::Entry;
use crate::ledger::store::insert_entries;

/// Standing changes waiting for the gateway.
pub const STANDING_CHANNEL_CAPACITY: usize = 10_000;

/// An invoice about to be opened.
#[derive(Debug, Clone)]
pub struct NewInvoice {
    pub id: Uuid,
    pub charge_id: Uuid,
    pub driver_id: Option<Uuid>,
    pub amount_minor: i64,
    pub currency: String,
    pub due_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The plate it is owed for, when nobody enrolled pays it (a car let out without standing).
    pub plate: Option<String>,
}

impl NewInvoice {
    pub fn new(
        charge_id: Uuid,
        driver_id: Option<Uuid>,
        amount_minor: i64,
        currency: &str,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Self {
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::hours(72));
        Self {
            id: Uuid::now_v7(),
            charge_id,
            driver_id,
            amount_minor,
            currency: currency.to_owned(),
            due_at: db_time(now + window),
            created_at: db_time(now),
            plate: None,
        }
    }

    /// The same invoice, owed for `plate` (with nobody enrolled to pay it).
    pub fn for_plate(self, plate: String) -> Self {
        Self {
            plate: Some(plate),
            ..self
        }
    }
}

/// Where an invoice is: owed (`Open`), paid, or written off by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceStatus {
    Open,
    Paid,
    WrittenOff,
}

impl InvoiceStatus {
    pub const ALL: [Self; 3] = [Self::Open, Self::Paid, Self::WrittenOff];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Paid => "paid",
            Self::WrittenOff => "written_off",
        }
    }
}

/// Rows decode a status through this.
impl TryFrom<String> for InvoiceStatus {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(value, &Self::ALL, Self::as_str, "invoice status")
    }
}

/// Opens `invoices` and queues their `invoice_created` notices, within the transaction; an
/// invoice already open for a charge is skipped.
pub async fn insert_invoices(tx: &mut Tx, invoices: &[NewInvoice]) -> Result<(), StoreError> {
    // 9 binds a row.
    for chunk in invoices.chunks(3_000) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO invoices (id, charge_id, driver_id, amount_minor, currency, status, due_at, \
             created_at, plate) ",
        );
        insert.push_values(chunk, |mut row, i| {
            row.push_bind(i.id)
                .push_bind(i.charge_id)
                .push_bind(i.driver_id)
                .push_bind(i.amount_minor)
                .push_bind(i.currency.as_str())
                .push_bind(InvoiceStatus::Open.as_str())
                .push_bind(i.due_at)
                .push_bind(i.created_at)
                .push_bind(i.plate.as_deref());
        });
        insert.push(" ON CONFLICT (charge_id) DO NOTHING RETURNING id, driver_id");
        let opened: Vec<(Uuid, Option<Uuid>)> =
            insert.build().persistent(false).fetch_all(&mut *tx).await?;
        if opened.is_empty() {
            continue;
        }
        let created_at = chunk[0].created_at;
        let mut notices = QueryBuilder::new(
            "INSERT INTO notifications (id, driver_id, invoice_id, kind, created_at) ",
        );
        notices.push_values(opened, |mut row, (invoice, driver)| {
            row.push_bind(Uuid::now_v7())
                .push_bind(driver)
                .push_bind(invoice)
                .push_bind("invoice_created")
                .push_bind(created_at);
        });
        notices.push(" ON CONFLICT (invoice_id, kind) DO NOTHING");
        notices.build().persistent(false).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Within the transaction: reinstates `driver` if suspended and nothing of theirs is overdue at
/// `now`, with a `reinstated` notice. Returns the standing change, if any.
pub async fn reinstate_if_clear(
    tx: &mut Tx,
    driver: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<StandingChange>, StoreError> {
    if !drivers::reinstate_if_clear(tx, driver, now).await? {
        return Ok(None);
    }
    query(
        "INSERT INTO notifications (id, driver_id, invoice_id, kind, created_at)
         VALUES ($1, $2, NULL, 'reinstated', $3)",
    )
    .bind(Uuid::now_v7())
    .bind(driver)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let plates = query(DRIVER_PLATES)
        .bind(driver)
        .fetch_all(&mut *tx)
        .await?;
    Ok(Some(StandingChange::new(driver, plates, false)))
}

/// A plate's debts from stays nobody enrolled paid for (invoices of the plate with no driver):
/// they become the debts of the driver who proved the plate theirs, so a claim granted does not
/// shed them (they were collected only at the plate's next held exit, and a driver on auto-debit
/// is not held). How many.
pub(crate) async fn adopt_plate_debts(
    tx: &mut Tx,
    driver: Uuid,
    plate: &parkflow_protocol::Plate,
) -> Result<u64, StoreError> {
    query(
        "UPDATE invoices SET driver_id = $1
         WHERE plate = $2 AND driver_id IS NULL AND status = $3",
    )
    .bind(driver)
    .bind(plate.as_str())
    .bind(InvoiceStatus::Open.as_str())
    .execute(tx)
    .await
}

/// A driver's leave-first privilege changed; the gateway must know their plates' new standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandingChange {
    pub driver_id: Uuid,
    pub plates: Vec<String>,
    pub suspended: bool,
    /// Whether the driver consents to auto-debit (without it, their cars pay at the exit).
    pub auto_debit: bool,
}

/// A driver's plates, each with the driver's auto-debit consent: `(plate, auto_debit)` rows.
pub const DRIVER_PLATES: &str = "SELECT p.plate, d.auto_debit FROM driver_plates p
     JOIN drivers d ON d.id = p.driver_id WHERE p.driver_id = $1";

impl StandingChange {
    /// `driver`'s change from their [`DRIVER_PLATES`] rows.
    pub fn new(driver_id: Uuid, plates: Vec<(String, bool)>, suspended: bool) -> Self {
        Self {
            driver_id,
            auto_debit: plates.first().is_none_or(|(_, consent)| *consent),
            plates: plates.into_iter().map(|(plate, _)| plate).collect(),
            suspended,
        }
    }
}

/// How the arrears worker behaves.
#[derive(Debug, Clone)]
pub struct ArrearsConfig {
    /// A reminder goes out this long before an invoice is due.
    pub remind_before: Duration,
    pub poll: Duration,
}

impl Default for ArrearsConfig {
    fn default() -> Self {
        Self {
            remind_before: Duration::from_secs(24 * 3600),
            poll: Duration::from_secs(5),
        }
    }
}

/// What one arrears step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArrearsReport {
    pub reminders: usize,
    pub overdue: usize,
    pub suspended: usize,
}

/// Sends reminders and suspends drivers whose invoices are overdue.
pub struct ArrearsWorker {
    db: Db,
    config: ArrearsConfig,
    standing: mpsc::Sender<StandingChange>,
}

impl ArrearsWorker {
    pub fn new(db: Db, config: ArrearsConfig, standing: mpsc::Sender<StandingChange>) -> Self {
        Self {
            db,
            config,
            standing,
        }
    }

    pub async fn run(self, token: CancellationToken) {
        loop {
            if let Err(error) = self.step(Utc::now()).await {
                tracing::warn!(error = %error, "arrears step failed");
            }
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
        tracing::debug!("arrears worker stopped");
    }

    pub async fn step(&self, now: DateTime<Utc>) -> Result<ArrearsReport, StoreError> {
        let now = db_time(now);
        let remind_from = db_time(
            now + chrono::Duration::from_std(self.config.remind_before)
                .unwrap_or(chrono::Duration::hours(24)),
        );
        // Writes come first in the transaction, so that on SQLite it holds the write lock before
        // it reads (a read-then-write transaction can fail to upgrade while others commit).
        let mut tx = self.db.begin_write().await?;
        let suspended = drivers::suspend_overdue(&mut tx, now).await?;
        // Self-healing: a driver suspended while a payment committed (two transactions that did
        // not see each other) owes nothing overdue, and is reinstated here.
        let reinstated = drivers::reinstate_cleared(&mut tx, now).await?;
        let mut changes = Vec::with_capacity(suspended.len() + reinstated.len());
        for driver in &reinstated {
            let plates = query(DRIVER_PLATES)
                .bind(*driver)
                .fetch_all(&mut tx)
                .await?;
            changes.push(StandingChange::new(*driver, plates, false));
        }
        for driver in &suspended {
            query(
                "INSERT INTO notifications (id, driver_id, invoice_id, kind, created_at)
                 VALUES ($1, $2, NULL, 'suspended', $3)",
            )
            .bind(Uuid::now_v7())
            .bind(*driver)
            .bind(now)
            .execute(&mut tx)
            .await?;
            let plates = query(DRIVER_PLATES)
                .bind(*driver)
                .fetch_all(&mut tx)
                .await?;
            changes.push(StandingChange::new(*driver, plates, true));
        }
        let reminders: Vec<(Uuid, Option<Uuid>)> = query(
            "SELECT i.id, i.driver_id FROM invoices i WHERE i.status = 'open' AND i.due_at <= $1 AND i.due_at > $2
               AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.invoice_id = i.id AND n.kind = 'payment_reminder')",
        )
        .bind(remind_from)
        .bind(now)
        .fetch_all(&mut tx)
        .await?;
        let overdue: Vec<(Uuid, Option<Uuid>)> = query(
            "SELECT i.id, i.driver_id FROM invoices i WHERE i.status = 'open' AND i.due_at <= $1
               AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.invoice_id = i.id AND n.kind = 'invoice_overdue')",
        )
        .bind(now)
        .fetch_all(&mut tx)
        .await?;
        let notices: Vec<(&(Uuid, Option<Uuid>), &str)> = reminders
            .iter()
            .map(|r| (r, "payment_reminder"))
            .chain(overdue.iter().map(|o| (o, "invoice_overdue")))
            .collect();
        for chunk in notices.chunks(5_000) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO notifications (id, driver_id, invoice_id, kind, created_at) ",
            );
            insert.push_values(chunk, |mut row, ((invoice, driver), kind)| {
                row.push_bind(Uuid::now_v7())
                    .push_bind(*driver)
                    .push_bind(*invoice)
                    .push_bind(*kind)
                    .push_bind(now);
            });
            insert.push(" ON CONFLICT (invoice_id, kind) DO NOTHING");
            insert.build().persistent(false).execute(&mut tx).await?;
        }
        tx.commit().await?;
        let report = ArrearsReport {
            reminders: reminders.len(),
            overdue: overdue.len(),
            suspended: changes.iter().filter(|c| c.suspended).count(),
        };
        for change in changes {
            tracing::info!(driver = %change.driver_id, suspended = change.suspended, "driver standing changed");
            if self.standing.send(change).await.is_err() {
                tracing::warn!("nobody listens for standing changes");
            }
        }
        Ok(report)
    }
}

/// Why a write-off was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteOffError {
    #[error("no open invoice with that id")]
    NotOpen,
    #[error("write-off store failed")]
    Store(#[from] StoreError),
}

/// Gives up an open invoice: bad debt instead of receivable (a journal entry), and the driver is
/// reinstated if nothing else is overdue. Returns the standing change, if any.
pub async fn write_off(
    db: &Db,
    invoice: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<StandingChange>, WriteOffError> {
    let now = db_time(now);
    let mut tx = db.begin_write().await?;
    let written: Option<(i64, String, Option<Uuid>, String)> = query(
        "UPDATE invoices SET status = 'written_off' WHERE id = $1 AND status = 'open'
         RETURNING amount_minor, currency, driver_id, (SELECT lot_id FROM charges c WHERE c.id = invoices.charge_id)",
    )
    .bind(invoice)
    .fetch_optional(&mut tx)
    .await?;
    let (amount_minor, currency, driver, lot) = written.ok_or(WriteOffError::NotOpen)?;
    insert_entries(
        &mut tx,
        &[Entry::write_off(
            invoice,
            &lot,
            amount_minor,
            &currency,
            now,
        )],
    )
    .await?;
    let change = match driver {
        Some(driver) => reinstate_if_clear(&mut tx, driver, now).await?,
        None => None,
    };
    tx.commit().await?;
    Ok(change)
}

/// A lot's arrears: invoices past their due date and still open, and the suspended drivers
/// they belong to.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LotArrears {
    pub operator_id: String,
    pub lot_id: String,
    pub currency: String,
    pub invoices: i64,
    pub amount_minor: i64,
    pub suspended_drivers: i64,
}

/// Every lot's arrears at `now`, by lot.
pub async fn by_lot(db: &Db, now: DateTime<Utc>) -> Result<Vec<LotArrears>, StoreError> {
    query(
        "SELECT c.operator_id, c.lot_id, i.currency, COUNT(*) AS invoices,
                CAST(SUM(i.amount_minor) AS BIGINT) AS amount_minor,
                COUNT(DISTINCT CASE WHEN d.status = 'suspended' THEN d.id END) AS suspended_drivers
         FROM invoices i JOIN charges c ON c.id = i.charge_id
         LEFT JOIN drivers d ON d.id = i.driver_id
         WHERE i.status = 'open' AND i.due_at < $1
         GROUP BY c.operator_id, c.lot_id, i.currency ORDER BY c.lot_id, i.currency",
    )
    .bind(db_time(now))
    .fetch_all(db)
    .await
}
