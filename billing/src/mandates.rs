//! Payment mandates: leave first, pay later debits a driver without asking, which needs their
//! bank's mandate, confirmed by the payment provider. Without an active mandate a driver's cars pay
//! at the exit. Mandates are set up when a driver consents (enrolment, `PATCH /v1/me`), and asked
//! about again every [`MandateCheck::every`]: one expired or revoked at the bank ends auto-debit at
//! once (the gates hear of it), until the driver sets up another.

use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow_db::{Db, StoreError};
use serde::Serialize;
use uuid::Uuid;

use crate::arrears::StandingChange;
use crate::drivers::{self, Answering};
use crate::provider::{MandateOutcome, MandateStatus, PaymentProvider};

/// Where a driver's mandate stands, as stored and shown to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MandateState {
    Active,
    /// The bank said no: the driver pays at the exit.
    Refused,
    /// The provider did not answer: pay at the exit until asked again.
    Unconfirmed,
    Expired,
    Revoked,
}

impl MandateState {
    pub const ALL: [Self; 5] = [
        Self::Active,
        Self::Refused,
        Self::Unconfirmed,
        Self::Expired,
        Self::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Refused => "refused",
            Self::Unconfirmed => "unconfirmed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// How often each active mandate is asked about again.
#[derive(Debug, Clone, Copy)]
pub struct MandateCheck {
    pub every: Duration,
}

impl Default for MandateCheck {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(600),
        }
    }
}

/// Drivers asked about in one check, at most.
const CHECK_BATCH: u32 = 500;

/// Asks the provider for a mandate on `account` and records the answer: with it confirmed, the
/// driver's cars leave first and pay later. The driver is marked as waiting first, so that an
/// answer that comes after a withdrawal of consent (or after a newer request) changes nothing.
/// The driver's standing as it is now, and what the provider said.
pub async fn set_up<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    driver: Uuid,
    account: &str,
    now: DateTime<Utc>,
) -> Result<(MandateState, Option<StandingChange>), StoreError> {
    drivers::awaiting_mandate(db, driver, now).await?;
    let (state, reference) = match provider.set_up_mandate(account).await {
        MandateOutcome::Confirmed { reference } => (MandateState::Active, Some(reference)),
        MandateOutcome::Refused { reason } => {
            tracing::info!(%driver, %reason, "a mandate was refused");
            (MandateState::Refused, None)
        }
        MandateOutcome::Unknown => (MandateState::Unconfirmed, None),
    };
    let change = drivers::set_mandate(
        db,
        driver,
        state,
        reference.as_deref(),
        Answering::Request,
        Utc::now(),
    )
    .await?;
    Ok((state, change))
}

/// Asks the provider about mandates not checked for [`MandateCheck::every`], and sets up one for
/// consenting drivers who have none yet (consent given before mandates, or a request that went
/// unanswered). The standing changes, for the gates.
pub async fn check_due<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    check: MandateCheck,
    now: DateTime<Utc>,
) -> Result<Vec<StandingChange>, StoreError> {
    let since = now - chrono::Duration::from_std(check.every).unwrap_or(chrono::Duration::MAX);
    let mut changes = Vec::new();
    loop {
        let due = drivers::mandates_due(db, since, CHECK_BATCH).await?;
        let last = due.len() < CHECK_BATCH as usize;
        for due in due {
            // Taken for this round whatever comes of it: a stale answer that changes nothing
            // does not bring the driver back into this check.
            drivers::mandate_asked(db, due.driver, now).await?;
            let change = match (&due.reference, &due.account) {
                (Some(reference), _) => {
                    let state = match provider.mandate(reference).await {
                        MandateStatus::Active => MandateState::Active,
                        MandateStatus::Expired => MandateState::Expired,
                        MandateStatus::Revoked | MandateStatus::Unknown => MandateState::Revoked,
                        // Asked again after the next interval; meanwhile it stands.
                        MandateStatus::Unavailable => continue,
                    };
                    let answering = Answering::Check(reference);
                    drivers::set_mandate(db, due.driver, state, Some(reference), answering, now)
                        .await?
                }
                (None, Some(account)) => set_up(db, provider, due.driver, account, now).await?.1,
                (None, None) => {
                    drivers::awaiting_mandate(db, due.driver, now).await?;
                    let refused = MandateState::Refused;
                    drivers::set_mandate(db, due.driver, refused, None, Answering::Request, now)
                        .await?
                }
            };
            changes.extend(change);
        }
        if last {
            return Ok(changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::{DriverStatus, NewDriver};
    use crate::provider::SimulatedProvider;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("m.db").display()))
            .await
            .unwrap();
        (dir, db)
    }

    async fn driver(db: &Db) -> Uuid {
        let id = Uuid::now_v7();
        let mut tx = db.begin_write().await.unwrap();
        let new = NewDriver {
            id,
            name: "Lin",
            status: DriverStatus::Active,
            auto_debit: false,
            payment_account: Some("card-1"),
        };
        drivers::insert(&mut tx, &new, Utc::now()).await.unwrap();
        tx.commit().await.unwrap();
        id
    }

    async fn auto_debit(db: &Db, driver: Uuid) -> (bool, Option<String>) {
        parkflow_db::query("SELECT auto_debit, mandate_status FROM drivers WHERE id = $1")
            .bind(driver)
            .fetch_one(db)
            .await
            .unwrap()
    }

    /// A check that read the driver before they withdrew consent answers after it: the answer is
    /// stale and turns nothing back on. Likewise an answer to a request overtaken by a
    /// withdrawal.
    #[tokio::test]
    async fn an_answer_that_comes_after_a_withdrawal_changes_nothing() {
        let (_dir, db) = db().await;
        let provider = SimulatedProvider::default();
        let lin = driver(&db).await;
        let (state, change) = set_up(&db, &provider, lin, "card-1", Utc::now())
            .await
            .unwrap();
        assert_eq!(state, MandateState::Active);
        assert!(change.is_some_and(|c| c.auto_debit));
        let (reference,): (String,) =
            parkflow_db::query("SELECT mandate_ref FROM drivers WHERE id = $1")
                .bind(lin)
                .fetch_one(&db)
                .await
                .unwrap();

        // Withdrawn; then the stale check's answer, and a stale request's.
        drivers::update(&db, lin, None, None, Some(false))
            .await
            .unwrap();
        let stale = drivers::set_mandate(
            &db,
            lin,
            MandateState::Active,
            Some(&reference),
            Answering::Check(&reference),
            Utc::now(),
        )
        .await
        .unwrap();
        assert!(stale.is_none());
        let stale = drivers::set_mandate(
            &db,
            lin,
            MandateState::Active,
            Some(&reference),
            Answering::Request,
            Utc::now(),
        )
        .await
        .unwrap();
        assert!(stale.is_none());
        assert_eq!(auto_debit(&db, lin).await, (false, None));

        // Consent given again: a new request, answered, turns it on.
        let (state, _) = set_up(&db, &provider, lin, "card-1", Utc::now())
            .await
            .unwrap();
        assert_eq!(state, MandateState::Active);
        assert_eq!(auto_debit(&db, lin).await, (true, Some("active".into())));
        // Revoked at the bank: the next check turns it off, once.
        provider.revoke_mandates("card-1");
        let every = MandateCheck {
            every: Duration::ZERO,
        };
        let later = Utc::now() + chrono::Duration::seconds(1);
        let changes = check_due(&db, &provider, every, later).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].auto_debit);
        assert_eq!(auto_debit(&db, lin).await, (false, Some("revoked".into())));
        let again = later + chrono::Duration::seconds(1);
        assert!(
            check_due(&db, &provider, every, again)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
