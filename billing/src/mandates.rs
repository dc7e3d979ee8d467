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
use crate::drivers;
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
/// driver's cars leave first and pay later. The driver's standing as it is now.
pub async fn set_up<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    driver: Uuid,
    account: &str,
    now: DateTime<Utc>,
) -> Result<(MandateState, Option<StandingChange>), StoreError> {
    let (state, reference) = match provider.set_up_mandate(account).await {
        MandateOutcome::Confirmed { reference } => (MandateState::Active, Some(reference)),
        MandateOutcome::Refused { reason } => {
            tracing::info!(%driver, %reason, "a mandate was refused");
            (MandateState::Refused, None)
        }
        MandateOutcome::Unknown => (MandateState::Unconfirmed, None),
    };
    let change = drivers::set_mandate(db, driver, state, reference.as_deref(), now).await?;
    Ok((state, change))
}

/// Asks the provider about mandates not checked for [`MandateCheck::every`], and sets up one for
/// consenting drivers who have none yet (consent given before mandates). The standing changes, for
/// the gates.
pub async fn check_due<P: PaymentProvider>(
    db: &Db,
    provider: &P,
    check: MandateCheck,
    now: DateTime<Utc>,
) -> Result<Vec<StandingChange>, StoreError> {
    let since = now - chrono::Duration::from_std(check.every).unwrap_or(chrono::Duration::MAX);
    let mut changes = Vec::new();
    for due in drivers::mandates_due(db, since, CHECK_BATCH).await? {
        let change = match (&due.reference, &due.account) {
            (Some(reference), _) => {
                let state = match provider.mandate(reference).await {
                    MandateStatus::Active => MandateState::Active,
                    MandateStatus::Expired => MandateState::Expired,
                    MandateStatus::Revoked | MandateStatus::Unknown => MandateState::Revoked,
                    // Asked again at the next check; meanwhile it stands.
                    MandateStatus::Unavailable => continue,
                };
                drivers::set_mandate(db, due.driver, state, Some(reference), now).await?
            }
            (None, Some(account)) => set_up(db, provider, due.driver, account, now).await?.1,
            (None, None) => {
                drivers::set_mandate(db, due.driver, MandateState::Refused, None, now).await?
            }
        };
        changes.extend(change);
    }
    Ok(changes)
}
