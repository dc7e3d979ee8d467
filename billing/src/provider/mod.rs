//! The boundary to payment providers (SPEC §4, deferred payment): after a driver has left, the fee
//! is debited from the driver's payment account through a [`PaymentProvider`].
//!
//! Every debit carries an idempotency key, and the contract that makes retries safe is the
//! provider's: a key is charged at most once, whatever happens on the wire. So the caller's rules are
//! few:
//! - [`DebitOutcome::Succeeded`] and [`DebitOutcome::Declined`] are final.
//! - [`DebitOutcome::Pending`]: the provider accepted the debit and confirms later; ask
//!   [`PaymentProvider::status`] again, or wait for a [`Callback`].
//! - [`DebitOutcome::Unknown`]: no answer; the money may or may not have moved. Retry with the same
//!   key (or ask `status`), never with a new one.
//!
//! Real providers (Alipay, WeChat Pay, a bank) implement the trait; [`SimulatedProvider`] ships
//! with ParkFlow for the demo, the tests and the benchmarks, and injects faults on demand.

pub mod simulated;

use std::future::Future;

use crate::money::Money;

pub use simulated::{FaultConfig, FaultConfigError, SimulatedProvider};

/// The reason every provider gives when a key comes back with another amount or account.
pub const KEY_REUSED: &str = "idempotency key reused";

/// What to debit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debit {
    /// Charged at most once: the same key again never moves money again.
    pub idempotency_key: String,
    /// The driver's payment account token.
    pub account: String,
    pub amount: Money,
    /// What the driver sees on the statement.
    pub description: String,
}

/// What the provider said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebitOutcome {
    /// The money moved; `provider_ref` is the provider's reference for reconciliation.
    Succeeded { provider_ref: String },
    /// This request moved no money and never will. With [`KEY_REUSED`] it was refused outright,
    /// and the key's first debit stands as it was (ask `status`).
    Declined { reason: String },
    /// Accepted; the result comes later (a late confirmation): ask `status` again, or wait for a
    /// callback.
    Pending,
    /// No answer (timeout, connection lost): the debit may or may not have happened. Retry with
    /// the same key.
    Unknown,
}

impl DebitOutcome {
    /// Whether this outcome can no longer change (succeeded or declined).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded { .. } | Self::Declined { .. })
    }
}

/// Where one debit stands in the provider's own books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordStatus {
    Succeeded,
    Declined,
    Pending,
}

/// The provider's own record of one debit, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRecord {
    pub idempotency_key: String,
    pub account: String,
    pub amount: Money,
    pub status: RecordStatus,
    /// The provider's reference, assigned when it recorded the debit (whatever its status).
    pub provider_ref: String,
}

/// A provider's asynchronous notice about a debit (may arrive twice, or late).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub idempotency_key: String,
    pub outcome: DebitOutcome,
}

/// A payment provider: debits by idempotency key, answers status queries, and lists its records.
/// Used by static dispatch (a generic parameter); every future it returns is `Send`, so a worker
/// can spawn it.
pub trait PaymentProvider: Send + Sync + 'static {
    /// A short name for accounts and logs ("simulated").
    fn name(&self) -> &'static str;

    /// Debits once per idempotency key: the same key again returns the first debit's (current)
    /// outcome and never charges twice; the same key with a different amount or account is
    /// `Declined { reason: "idempotency key reused" }` ([`KEY_REUSED`]).
    fn debit(&self, debit: &Debit) -> impl Future<Output = DebitOutcome> + Send;

    /// The current outcome of a debit made earlier under `key` (`Unknown` if the provider never
    /// saw it).
    fn status(&self, key: &str) -> impl Future<Output = DebitOutcome> + Send;

    /// Every debit the provider recorded (for reconciliation).
    fn records(&self) -> impl Future<Output = Vec<ProviderRecord>> + Send;

    /// Returns part or all of a succeeded debit, once per refund key: the same key again answers
    /// as the first time; refunds of one debit never exceed it.
    fn refund(&self, refund: &Refund) -> impl Future<Output = RefundOutcome> + Send;

    /// Asks the account holder's bank for a mandate to debit `account` without asking each time
    /// (password-free auto-debit): leave first, pay later needs one confirmed.
    fn set_up_mandate(&self, account: &str) -> impl Future<Output = MandateOutcome> + Send;

    /// Where a mandate set up earlier stands now (its holder can revoke it at their bank; it
    /// can expire).
    fn mandate(&self, reference: &str) -> impl Future<Output = MandateStatus> + Send;
}

/// What the provider said to a mandate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MandateOutcome {
    Confirmed {
        reference: String,
    },
    Refused {
        reason: String,
    },
    /// No answer: the driver pays at the exit until a later request is confirmed.
    Unknown,
}

/// Where a mandate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MandateStatus {
    Active,
    Expired,
    Revoked,
    /// The provider knows no such mandate.
    Unknown,
    /// No answer now: ask again later.
    Unavailable,
}

/// Money to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub idempotency_key: String,
    /// The key of the debit the money came from.
    pub debit_key: String,
    pub amount: Money,
}

/// What the provider said to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Refunded {
        provider_ref: String,
    },
    Refused {
        reason: String,
    },
    /// No answer: ask again with the same key.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;

    /// What a billing worker does: hand the provider to a spawned task through a generic
    /// parameter, which needs every future of the trait to be `Send`.
    async fn debit_in_a_task<P: PaymentProvider + Clone>(
        provider: P,
        debit: Debit,
    ) -> DebitOutcome {
        tokio::spawn(async move { provider.debit(&debit).await })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_provider_can_be_driven_from_a_spawned_task() {
        let provider = SimulatedProvider::default();
        let debit = Debit {
            idempotency_key: "session-1".to_owned(),
            account: "acct-1".to_owned(),
            amount: Money::from_minor(500, Currency::CNY),
            description: "parking".to_owned(),
        };
        let outcome = debit_in_a_task(provider.clone(), debit).await;
        assert!(matches!(outcome, DebitOutcome::Succeeded { .. }));
        assert_eq!(provider.status("session-1").await, outcome);
        assert_eq!(provider.name(), "simulated");
    }

    #[test]
    fn only_succeeded_and_declined_are_final() {
        let succeeded = DebitOutcome::Succeeded {
            provider_ref: "r".to_owned(),
        };
        let declined = DebitOutcome::Declined {
            reason: "no".to_owned(),
        };
        assert!(succeeded.is_final());
        assert!(declined.is_final());
        assert!(!DebitOutcome::Pending.is_final());
        assert!(!DebitOutcome::Unknown.is_final());
    }
}
