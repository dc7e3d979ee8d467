//! Charging (SPEC §4 "Deferred payment"): every closed session gets exactly one charge, and the
//! charge is collected from the driver's payment account through a [`PaymentProvider`].
//!
//! A worker step:
//! 1. **claim** — charges to ask about again (unanswered, or left by a worker whose lease ran out)
//!    are leased to this worker first (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several workers
//!    never do the same work), so a backlog of new charges never starves them;
//! 2. **enqueue** — with the room left in the batch, closed sessions without a charge get one
//!    (the UNIQUE `session_id` makes this idempotent across workers); its amount is the
//!    session's fee, re-priced here as a check;
//!    a new charge to debit is written already leased to this worker, so it is written once
//!    before its debit and once with its outcome;
//! 3. **collect** — the provider is asked, with the idempotency key `charge:{session}`: a retry,
//!    by this worker or another after a crash, can never debit twice;
//! 4. **record** — outcomes, journal entries and invoices for declined debits, in one transaction.

mod record;
mod select;

use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow_db::{Db, StoreError};
use parkflow_session::{Unknown, from_text};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::lots::LotBook;
use crate::provider::{Debit, DebitOutcome, PaymentProvider};

pub use record::Recorded;

/// How a charging worker behaves.
#[derive(Debug, Clone)]
pub struct ChargingConfig {
    /// Names the worker in leases (unique per worker).
    pub worker_id: String,
    /// Charges per step.
    pub batch: usize,
    /// How long a claimed charge is this worker's before another may take it over.
    pub lease: Duration,
    /// First wait before asking again about an unanswered or pending debit (doubles, up to an hour).
    pub retry_after: Duration,
    /// How long a driver has to pay an invoice (SPEC §4: 72 hours by default).
    pub payment_window: Duration,
    /// Sleep between steps that found nothing to do.
    pub idle_poll: Duration,
}

impl ChargingConfig {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            batch: 1_000,
            lease: Duration::from_secs(60),
            retry_after: Duration::from_secs(5),
            payment_window: Duration::from_secs(72 * 3600),
            idle_poll: Duration::from_millis(500),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    pub enqueued: usize,
    /// Invoices raised to plates nobody enrolled pays for.
    pub plate_debts: usize,
    pub claimed: usize,
    pub succeeded: usize,
    pub declined: usize,
    pub unresolved: usize,
}

impl StepReport {
    pub fn is_idle(&self) -> bool {
        self.enqueued == 0 && self.claimed == 0
    }
}

/// Where a charge is: to be debited (`Pending`), asked about again (`Unknown`: the provider's
/// answer was lost), answered (`Succeeded`, `Declined`), or owed without a debit (`Waived`: no
/// fee; `NoAccount`: nobody to debit; `ExitPending`: paid at a held exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeStatus {
    Pending,
    Unknown,
    Succeeded,
    Declined,
    Waived,
    NoAccount,
    ExitPending,
}

impl ChargeStatus {
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Unknown,
        Self::Succeeded,
        Self::Declined,
        Self::Waived,
        Self::NoAccount,
        Self::ExitPending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Unknown => "unknown",
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Waived => "waived",
            Self::NoAccount => "no_account",
            Self::ExitPending => "exit_pending",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// Rows decode a status through this (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for ChargeStatus {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(value, &Self::ALL, Self::as_str, "charge status")
    }
}

/// A charge leased to this worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub session_id: Uuid,
    pub lot_id: String,
    pub driver_id: Option<Uuid>,
    pub account: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    #[sqlx(try_from = "String")]
    pub status: ChargeStatus,
    pub attempts: i32,
}

/// The idempotency key of a session's charge at the provider.
pub fn idempotency_key(session: Uuid) -> String {
    format!("charge:{session}")
}

/// Told when a step raised invoices to plates (the gates collect them, their lanes hold them).
pub type PlateDebtsRaised = std::sync::Arc<dyn Fn() + Send + Sync>;

/// One charging worker.
pub struct ChargingWorker<P> {
    db: Db,
    provider: P,
    config: ChargingConfig,
    lots: LotBook,
    plate_debts: Option<PlateDebtsRaised>,
}

impl<P: PaymentProvider> ChargingWorker<P> {
    pub async fn new(db: Db, provider: P, config: ChargingConfig) -> Result<Self, StoreError> {
        let lots = LotBook::load(&db).await?;
        Ok(Self {
            db,
            provider,
            config,
            lots,
            plate_debts: None,
        })
    }

    /// Calls `raised` after each step that raised invoices to plates.
    pub fn on_plate_debts(mut self, raised: PlateDebtsRaised) -> Self {
        self.plate_debts = Some(raised);
        self
    }

    /// Runs steps until cancelled; an idle step waits `idle_poll` before the next.
    pub async fn run(mut self, token: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let step = self.step(Utc::now()).await;
            if let (Ok(report), Some(raised)) = (&step, &self.plate_debts)
                && report.plate_debts > 0
            {
                raised();
            }
            let wait = match step {
                Ok(report) if report.is_idle() => self.config.idle_poll,
                Ok(_) => {
                    failures = 0;
                    Duration::ZERO
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %error, worker = %self.config.worker_id, "charging step failed");
                    Duration::from_millis(200 * u64::from(failures.min(25)))
                }
            };
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::debug!(worker = %self.config.worker_id, "charging worker stopped");
    }

    /// One pass: claim, enqueue, collect, record.
    pub async fn step(&mut self, now: DateTime<Utc>) -> Result<StepReport, StoreError> {
        // Charges to ask about again come first: a backlog of new ones never starves them.
        let mut claimed = select::claim(&self.db, &self.config, self.config.batch, now).await?;
        let room = self.config.batch.saturating_sub(claimed.len());
        let enqueued = select::enqueue(&self.db, &mut self.lots, &self.config, room, now).await?;
        let (plate_debts, enqueued_sessions) = (enqueued.plate_debts, enqueued.sessions);
        claimed.extend(enqueued.claimed);
        let outcomes =
            futures::future::join_all(claimed.iter().map(|charge| self.collect(charge))).await;
        let recorded = record::record(
            &self.db,
            &self.config,
            self.provider.name(),
            &claimed,
            &outcomes,
            now,
        )
        .await?;
        Ok(StepReport {
            enqueued: enqueued_sessions,
            plate_debts,
            claimed: claimed.len(),
            succeeded: recorded.succeeded,
            declined: recorded.declined,
            unresolved: recorded.unresolved,
        })
    }

    /// Asks the provider about one charge: a first attempt debits; a later one asks what became
    /// of the debit and debits (under the same key) only if the provider never saw it.
    async fn collect(&self, charge: &Claimed) -> DebitOutcome {
        let key = idempotency_key(charge.session_id);
        if charge.status == ChargeStatus::Unknown {
            match self.provider.status(&key).await {
                DebitOutcome::Unknown => {}
                known => return known,
            }
        }
        let (Some(account), Ok(currency)) = (
            &charge.account,
            crate::money::Currency::new(&charge.currency),
        ) else {
            return DebitOutcome::Declined {
                reason: "no payment account".into(),
            };
        };
        let debit = Debit {
            idempotency_key: key,
            account: account.clone(),
            amount: crate::money::Money::from_minor(charge.amount_minor, currency),
            description: format!("parking at {}", charge.lot_id),
        };
        self.provider.debit(&debit).await
    }
}

/// A provider's callback about `key` (`charge:{session}`): the charge is looked at again now rather
/// than at its next retry. Callbacks may come twice or late; the status query decides, so this is
/// only ever a nudge. Returns whether a waiting charge was found.
pub async fn nudge(db: &Db, key: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let Some(session) = key
        .strip_prefix("charge:")
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        return Ok(false);
    };
    let nudged = parkflow_db::query(
        "UPDATE charges SET next_attempt_at = $2 WHERE session_id = $1 AND status = 'unknown'",
    )
    .bind(session)
    .bind(parkflow_db::db_time(now))
    .execute(db)
    .await?;
    Ok(nudged > 0)
}
