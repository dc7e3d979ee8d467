//! The simulated payment provider that ships with ParkFlow for the demo, the tests and the
//! benchmarks: an in-memory ledger of debits that keeps the idempotency contract of
//! [`PaymentProvider`] and injects, on demand, the faults real providers have: declines, timeouts
//! (the answer is lost, and the debit may or may not have been recorded), late confirmations and
//! duplicate callbacks. The same [`FaultConfig::seed`] gives the same faults for the same sequence
//! of calls.
//!
//! Late confirmations are resolved lazily: a `Pending` debit becomes `Succeeded` at the first
//! [`SimulatedProvider::tick`], `debit`, `status` or `records` at or after its time (tokio's clock,
//! so paused time works). Nothing runs in the background; a consumer waiting for callbacks calls
//! `tick`, for example at [`SimulatedProvider::next_confirmation_at`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;

use super::{
    Callback, Debit, DebitOutcome, KEY_REUSED, MandateOutcome, MandateStatus, PaymentProvider,
    ProviderRecord, RecordStatus, Refund, RefundOutcome,
};
use crate::money::{Currency, Money, MoneyError};

/// How many callbacks wait in the channel before new ones are dropped.
pub const CALLBACK_CAPACITY: usize = 10_000;

/// Accounts whose token starts with this always decline, with [`INSUFFICIENT_FUNDS`].
pub const DECLINING_ACCOUNT_PREFIX: &str = "decline";
/// The reason a declining account gives.
pub const INSUFFICIENT_FUNDS: &str = "insufficient funds";
/// The reason of a decline injected at [`FaultConfig::decline_rate`].
pub const ISSUER_DECLINED: &str = "declined by issuer";
/// The reason a debit of zero or less is declined.
pub const NON_POSITIVE_AMOUNT: &str = "amount must be positive";

/// Which faults the simulated provider injects, and how often. Rates are probabilities per call,
/// from 0 to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seeds the provider's random choices (faults and references).
    pub seed: u64,
    /// How often an ordinary account's first debit declines.
    pub decline_rate: f64,
    /// How often a debit's answer is lost (`Unknown`); half of those were recorded before the loss.
    pub timeout_rate: f64,
    /// How often a debit answers `Pending` and succeeds `late_confirmation_after` later.
    pub late_confirmation_rate: f64,
    pub late_confirmation_after: Duration,
    /// How often a callback is sent twice.
    pub duplicate_callback_rate: f64,
    /// How long every answer takes.
    pub latency: Duration,
    /// How long a mandate lasts (forever when `None`).
    pub mandate_lifetime: Option<Duration>,
}

impl FaultConfig {
    /// A provider that always answers at once and declines only declining accounts.
    pub fn none() -> Self {
        Self {
            seed: 0,
            decline_rate: 0.0,
            timeout_rate: 0.0,
            late_confirmation_rate: 0.0,
            late_confirmation_after: Duration::from_secs(30),
            duplicate_callback_rate: 0.0,
            latency: Duration::ZERO,
            mandate_lifetime: None,
        }
    }

    /// Every fault at 5%, late confirmations 30 s later, no latency.
    pub fn chaotic(seed: u64) -> Self {
        Self {
            seed,
            decline_rate: 0.05,
            timeout_rate: 0.05,
            late_confirmation_rate: 0.05,
            duplicate_callback_rate: 0.05,
            ..Self::none()
        }
    }

    /// Checks that every rate is a probability.
    pub fn validate(&self) -> Result<(), FaultConfigError> {
        let rates = [
            ("decline_rate", self.decline_rate),
            ("timeout_rate", self.timeout_rate),
            ("late_confirmation_rate", self.late_confirmation_rate),
            ("duplicate_callback_rate", self.duplicate_callback_rate),
        ];
        match rates
            .into_iter()
            .find(|(_, rate)| !(0.0..=1.0).contains(rate))
        {
            Some((name, rate)) => Err(FaultConfigError::RateOutOfRange { name, rate }),
            None => Ok(()),
        }
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self::none()
    }
}

/// What is wrong with a [`FaultConfig`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultConfigError {
    #[error("{name} must be between 0 and 1, got {rate}")]
    RateOutOfRange { name: &'static str, rate: f64 },
}

/// The simulated provider: cheap to clone, every clone the same ledger.
#[derive(Clone)]
pub struct SimulatedProvider {
    shared: Arc<Shared>,
}

struct Shared {
    latency: Duration,
    /// Never held across an `.await`.
    ledger: Mutex<Ledger>,
    callbacks: mpsc::Sender<Callback>,
    /// The receiving end, until [`SimulatedProvider::callbacks`] takes it.
    receiver: Mutex<Option<mpsc::Receiver<Callback>>>,
    /// Set while callbacks are being dropped, so a full channel warns once, not per callback.
    dropping_callbacks: AtomicBool,
}

impl SimulatedProvider {
    /// A provider injecting the faults of `config`, once it is valid.
    pub fn new(config: FaultConfig) -> Result<Self, FaultConfigError> {
        config.validate()?;
        Ok(Self::with_valid_config(config))
    }

    fn with_valid_config(config: FaultConfig) -> Self {
        let (sender, receiver) = mpsc::channel(CALLBACK_CAPACITY);
        Self {
            shared: Arc::new(Shared {
                latency: config.latency,
                ledger: Mutex::new(Ledger::new(config)),
                callbacks: sender,
                receiver: Mutex::new(Some(receiver)),
                dropping_callbacks: AtomicBool::new(false),
            }),
        }
    }

    /// The callbacks (every final outcome, some twice), for whoever takes them first: later calls
    /// get `None`. Callbacks made before the receiver is taken wait in it, up to
    /// [`CALLBACK_CAPACITY`]; when the channel is full new ones are dropped (`status` stays the
    /// source of truth).
    pub fn callbacks(&self) -> Option<mpsc::Receiver<Callback>> {
        lock(&self.shared.receiver).take()
    }

    /// Confirms every late confirmation that is due, sending its callbacks; returns how many.
    pub fn tick(&self) -> usize {
        self.with_ledger(Ledger::confirm_due)
    }

    /// When the next late confirmation is due, if one is pending.
    pub fn next_confirmation_at(&self) -> Option<Instant> {
        lock(&self.shared.ledger)
            .confirmations
            .front()
            .map(|&(due, _)| due)
    }

    /// How many debits moved money, over all keys.
    pub fn applied_count(&self) -> usize {
        lock(&self.shared.ledger).applied
    }

    /// How many times money moved under `key`: 0 or 1 (more would be a double charge).
    pub fn times_charged(&self, key: &str) -> usize {
        let ledger = lock(&self.shared.ledger);
        ledger
            .by_key
            .get(key)
            .map_or(0, |&index| ledger.entries[index].charges)
    }

    /// All the money moved in `currency`.
    pub fn total_applied(&self, currency: Currency) -> Result<Money, MoneyError> {
        let ledger = lock(&self.shared.ledger);
        let mut total = Money::zero(currency);
        for entry in ledger
            .entries
            .iter()
            .filter(|entry| entry.amount.currency() == currency)
        {
            for _ in 0..entry.charges {
                total = total.checked_add(entry.amount)?;
            }
        }
        Ok(total)
    }

    /// Runs one ledger operation at the current time, then sends the callbacks it produced.
    fn with_ledger<T>(&self, operation: impl FnOnce(&mut Ledger, Instant) -> T) -> T {
        let (value, callbacks) = {
            let mut ledger = lock(&self.shared.ledger);
            // Read under the lock, so that confirmation times are queued in order.
            let value = operation(&mut ledger, Instant::now());
            (value, std::mem::take(&mut ledger.outbox))
        };
        for callback in callbacks {
            self.send(callback);
        }
        value
    }

    fn send(&self, callback: Callback) {
        let shared = &self.shared;
        match shared.callbacks.try_send(callback) {
            Ok(()) => shared.dropping_callbacks.store(false, Ordering::Relaxed),
            // Untaken, the receiver only buffers for a listener that may never come: drop quietly.
            Err(TrySendError::Full(_)) if lock(&shared.receiver).is_some() => {}
            Err(TrySendError::Full(_)) => {
                if !shared.dropping_callbacks.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        capacity = CALLBACK_CAPACITY,
                        "callback channel full: dropping callbacks until it drains"
                    );
                }
            }
            // The receiver was taken and dropped: nobody listens.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    async fn answer_after_latency(&self) {
        if !self.shared.latency.is_zero() {
            tokio::time::sleep(self.shared.latency).await;
        }
    }
}

/// A provider without faults.
impl Default for SimulatedProvider {
    fn default() -> Self {
        Self::with_valid_config(FaultConfig::none())
    }
}

impl fmt::Debug for SimulatedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedProvider")
            .field("latency", &self.shared.latency)
            .finish_non_exhaustive()
    }
}

impl PaymentProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn debit(&self, debit: &Debit) -> DebitOutcome {
        self.answer_after_latency().await;
        self.with_ledger(|ledger, now| ledger.debit(debit, now))
    }

    async fn status(&self, key: &str) -> DebitOutcome {
        self.answer_after_latency().await;
        self.with_ledger(|ledger, now| ledger.status(key, now))
    }

    async fn records(&self) -> Vec<ProviderRecord> {
        self.answer_after_latency().await;
        self.with_ledger(|ledger, now| ledger.records(now))
    }

    async fn refund(&self, refund: &Refund) -> RefundOutcome {
        self.answer_after_latency().await;
        self.with_ledger(|ledger, now| ledger.refund(refund, now))
    }

    async fn set_up_mandate(&self, account: &str) -> MandateOutcome {
        self.answer_after_latency().await;
        if account.starts_with(MANDATE_REFUSING_PREFIX) {
            return MandateOutcome::Refused {
                reason: MANDATE_REFUSED.into(),
            };
        }
        MandateOutcome::Confirmed {
            reference: format!(
                "mdt-{}-{:016x}",
                chrono::Utc::now().timestamp_millis(),
                account_tag(account)
            ),
        }
    }

    async fn mandate(&self, reference: &str) -> MandateStatus {
        self.answer_after_latency().await;
        let Some((issued_ms, tag)) = reference
            .strip_prefix("mdt-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(ms, tag)| {
                Some((ms.parse::<i64>().ok()?, u64::from_str_radix(tag, 16).ok()?))
            })
        else {
            return MandateStatus::Unknown;
        };
        let ledger = lock(&self.shared.ledger);
        if ledger.revoked_mandates.contains(&tag) {
            return MandateStatus::Revoked;
        }
        let age = chrono::Utc::now().timestamp_millis() - issued_ms;
        match ledger.config.mandate_lifetime {
            Some(lifetime) if age > i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX) => {
                MandateStatus::Expired
            }
            _ => MandateStatus::Active,
        }
    }
}

/// Accounts whose token starts with this refuse every mandate (the holder says no).
pub const MANDATE_REFUSING_PREFIX: &str = "nomandate";
/// The reason a refused mandate gives.
pub const MANDATE_REFUSED: &str = "the account holder refused the mandate";

/// Names an account inside a mandate reference without showing it. The simulated provider's
/// references carry what it needs to answer after a restart: when issued, and for which account.
fn account_tag(account: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(account.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

impl SimulatedProvider {
    /// The holder of `account` revokes its mandates at their bank (the simulation's hook: a test
    /// or a simulated driver calls it).
    pub fn revoke_mandates(&self, account: &str) {
        lock(&self.shared.ledger)
            .revoked_mandates
            .insert(account_tag(account));
    }

    /// Minor units refunded so far on the debit made under `debit_key`.
    pub fn refunded(&self, debit_key: &str) -> i64 {
        let ledger = lock(&self.shared.ledger);
        ledger
            .refunds
            .values()
            .filter(|(key, _, _)| key == debit_key)
            .map(|(_, amount, _)| amount.to_minor().unwrap_or(0))
            .sum()
    }
}

/// The ledger's operations leave it consistent at every step, so a panic elsewhere while it was
/// locked leaves nothing half-done: the poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The provider's books: one entry per recorded key, in the order recorded.
struct Ledger {
    config: FaultConfig,
    rng: StdRng,
    entries: Vec<Entry>,
    by_key: HashMap<String, usize>,
    /// Pending entries and when they succeed. The delay is fixed and `now` never goes back, so
    /// the queue is in order of due time.
    confirmations: VecDeque<(Instant, usize)>,
    /// Debits that moved money.
    applied: usize,
    /// Callbacks produced by the current operation, sent once the lock is released.
    outbox: Vec<Callback>,
    /// Refunds by refund key: (debit key, amount, provider reference).
    refunds: HashMap<String, (String, Money, String)>,
    /// Accounts (by tag) whose holders revoked their mandates.
    revoked_mandates: HashSet<u64>,
}

struct Entry {
    key: String,
    account: String,
    amount: Money,
    provider_ref: String,
    state: EntryState,
    /// Times money moved for this entry: the invariant under test is that it never exceeds 1.
    charges: usize,
}

enum EntryState {
    Succeeded,
    Declined(&'static str),
    Pending,
}

impl Ledger {
    fn new(config: FaultConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            entries: Vec::new(),
            by_key: HashMap::new(),
            confirmations: VecDeque::new(),
            applied: 0,
            outbox: Vec::new(),
            refunds: HashMap::new(),
            revoked_mandates: HashSet::new(),
        }
    }

    /// Returns money of a succeeded debit, never more than it took, once per refund key.
    fn refund(&mut self, refund: &Refund, now: Instant) -> RefundOutcome {
        self.confirm_due(now);
        if let Some((debit_key, amount, provider_ref)) = self.refunds.get(&refund.idempotency_key) {
            return if *debit_key == refund.debit_key && *amount == refund.amount {
                RefundOutcome::Refunded {
                    provider_ref: provider_ref.clone(),
                }
            } else {
                RefundOutcome::Refused {
                    reason: KEY_REUSED.to_owned(),
                }
            };
        }
        let Some(&index) = self.by_key.get(&refund.debit_key) else {
            return RefundOutcome::Refused {
                reason: "no such debit".to_owned(),
            };
        };
        let entry = &self.entries[index];
        if !matches!(entry.state, EntryState::Succeeded)
            || entry.amount.currency() != refund.amount.currency()
        {
            return RefundOutcome::Refused {
                reason: "nothing to refund".to_owned(),
            };
        }
        let already: i64 = self
            .refunds
            .values()
            .filter(|(key, _, _)| *key == refund.debit_key)
            .map(|(_, a, _)| a.to_minor().unwrap_or(0))
            .sum();
        let (Ok(debited), Ok(asked)) = (entry.amount.to_minor(), refund.amount.to_minor()) else {
            return RefundOutcome::Refused {
                reason: "amount out of range".to_owned(),
            };
        };
        if asked <= 0 || already + asked > debited {
            return RefundOutcome::Refused {
                reason: "refunds would exceed the debit".to_owned(),
            };
        }
        let provider_ref = uuid::Builder::from_random_bytes(self.rng.random())
            .into_uuid()
            .to_string();
        self.refunds.insert(
            refund.idempotency_key.clone(),
            (
                refund.debit_key.clone(),
                refund.amount,
                provider_ref.clone(),
            ),
        );
        if self.chance(self.config.timeout_rate) {
            return RefundOutcome::Unknown;
        }
        RefundOutcome::Refunded { provider_ref }
    }

    fn debit(&mut self, debit: &Debit, now: Instant) -> DebitOutcome {
        self.confirm_due(now);
        let answer_lost = self.chance(self.config.timeout_rate);
        let outcome = match self.by_key.get(&debit.idempotency_key).copied() {
            Some(index) => self.entries[index].repeat(debit),
            // Lost on the way in: the provider never recorded it, so a retry starts afresh.
            None if answer_lost && self.chance(0.5) => return DebitOutcome::Unknown,
            None => self.record(debit, now),
        };
        if answer_lost {
            DebitOutcome::Unknown
        } else {
            outcome
        }
    }

    fn status(&mut self, key: &str, now: Instant) -> DebitOutcome {
        self.confirm_due(now);
        self.by_key
            .get(key)
            .map_or(DebitOutcome::Unknown, |&index| {
                self.entries[index].outcome()
            })
    }

    fn records(&mut self, now: Instant) -> Vec<ProviderRecord> {
        self.confirm_due(now);
        self.entries.iter().map(Entry::record).collect()
    }

    /// Records a key's first debit and decides its fate.
    fn record(&mut self, debit: &Debit, now: Instant) -> DebitOutcome {
        let amount = debit.amount.amount();
        let state = if amount.is_zero() || amount.is_sign_negative() {
            EntryState::Declined(NON_POSITIVE_AMOUNT)
        } else if debit.account.starts_with(DECLINING_ACCOUNT_PREFIX) {
            EntryState::Declined(INSUFFICIENT_FUNDS)
        } else if self.chance(self.config.decline_rate) {
            EntryState::Declined(ISSUER_DECLINED)
        } else if self.chance(self.config.late_confirmation_rate) {
            EntryState::Pending
        } else {
            EntryState::Succeeded
        };
        let index = self.entries.len();
        let provider_ref = uuid::Builder::from_random_bytes(self.rng.random())
            .into_uuid()
            .to_string();
        self.entries.push(Entry {
            key: debit.idempotency_key.clone(),
            account: debit.account.clone(),
            amount: debit.amount,
            provider_ref,
            state,
            charges: 0,
        });
        self.by_key.insert(debit.idempotency_key.clone(), index);
        match self.entries[index].state {
            EntryState::Succeeded => {
                self.charge(index);
                self.announce(index);
            }
            EntryState::Declined(_) => self.announce(index),
            EntryState::Pending => {
                let due = now + self.config.late_confirmation_after;
                self.confirmations.push_back((due, index));
            }
        }
        self.entries[index].outcome()
    }

    /// Turns every pending entry due by `now` into a success; returns how many.
    fn confirm_due(&mut self, now: Instant) -> usize {
        let mut confirmed = 0;
        while let Some(&(due, index)) = self.confirmations.front() {
            if due > now {
                break;
            }
            self.confirmations.pop_front();
            self.entries[index].state = EntryState::Succeeded;
            self.charge(index);
            self.announce(index);
            confirmed += 1;
        }
        confirmed
    }

    /// The one place money moves.
    fn charge(&mut self, index: usize) {
        self.entries[index].charges += 1;
        self.applied += 1;
    }

    /// Queues the callback of an entry's final outcome, sometimes twice.
    fn announce(&mut self, index: usize) {
        let entry = &self.entries[index];
        let callback = Callback {
            idempotency_key: entry.key.clone(),
            outcome: entry.outcome(),
        };
        if self.chance(self.config.duplicate_callback_rate) {
            self.outbox.push(callback.clone());
        }
        self.outbox.push(callback);
    }

    /// True with probability `rate` (validated to be within 0..=1).
    fn chance(&mut self, rate: f64) -> bool {
        self.rng.random::<f64>() < rate
    }
}

impl Entry {
    /// The answer to the same key again: the current outcome, unless the request differs.
    fn repeat(&self, debit: &Debit) -> DebitOutcome {
        if self.account == debit.account && self.amount == debit.amount {
            self.outcome()
        } else {
            DebitOutcome::Declined {
                reason: KEY_REUSED.to_owned(),
            }
        }
    }

    fn outcome(&self) -> DebitOutcome {
        match self.state {
            EntryState::Succeeded => DebitOutcome::Succeeded {
                provider_ref: self.provider_ref.clone(),
            },
            EntryState::Declined(reason) => DebitOutcome::Declined {
                reason: reason.to_owned(),
            },
            EntryState::Pending => DebitOutcome::Pending,
        }
    }

    fn record(&self) -> ProviderRecord {
        ProviderRecord {
            idempotency_key: self.key.clone(),
            account: self.account.clone(),
            amount: self.amount,
            status: match self.state {
                EntryState::Succeeded => RecordStatus::Succeeded,
                EntryState::Declined(_) => RecordStatus::Declined,
                EntryState::Pending => RecordStatus::Pending,
            },
            provider_ref: self.provider_ref.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;

    fn cny(minor: i64) -> Money {
        Money::from_minor(minor, Currency::CNY)
    }

    fn debit(key: &str, account: &str, minor: i64) -> Debit {
        Debit {
            idempotency_key: key.to_owned(),
            account: account.to_owned(),
            amount: cny(minor),
            description: "parking".to_owned(),
        }
    }

    fn provider(config: FaultConfig) -> SimulatedProvider {
        SimulatedProvider::new(config).unwrap()
    }

    fn late_after(delay: Duration) -> FaultConfig {
        FaultConfig {
            late_confirmation_rate: 1.0,
            late_confirmation_after: delay,
            ..FaultConfig::none()
        }
    }

    fn drain(receiver: &mut mpsc::Receiver<Callback>) -> Vec<Callback> {
        let mut callbacks = Vec::new();
        while let Ok(callback) = receiver.try_recv() {
            callbacks.push(callback);
        }
        callbacks
    }

    fn callback(key: &str, outcome: &DebitOutcome) -> Callback {
        Callback {
            idempotency_key: key.to_owned(),
            outcome: outcome.clone(),
        }
    }

    #[tokio::test]
    async fn the_same_key_twice_charges_once() {
        let provider = SimulatedProvider::default();
        let first = provider.debit(&debit("k1", "acct", 500)).await;
        let second = provider.debit(&debit("k1", "acct", 500)).await;
        assert!(matches!(first, DebitOutcome::Succeeded { .. }));
        assert_eq!(second, first);
        assert_eq!(provider.times_charged("k1"), 1);
        assert_eq!(provider.applied_count(), 1);
        assert_eq!(provider.total_applied(Currency::CNY).unwrap(), cny(500));
    }

    #[tokio::test]
    async fn a_key_reused_with_another_amount_or_account_is_refused() {
        let provider = SimulatedProvider::default();
        let first = provider.debit(&debit("k1", "acct", 500)).await;
        let refused = DebitOutcome::Declined {
            reason: KEY_REUSED.to_owned(),
        };
        assert_eq!(provider.debit(&debit("k1", "acct", 501)).await, refused);
        assert_eq!(provider.debit(&debit("k1", "other", 500)).await, refused);
        assert_eq!(provider.status("k1").await, first);
        assert_eq!(provider.applied_count(), 1);
        assert_eq!(provider.total_applied(Currency::CNY).unwrap(), cny(500));
    }

    #[tokio::test]
    async fn declining_accounts_always_decline_and_move_nothing() {
        let provider = SimulatedProvider::default();
        let mut callbacks = provider.callbacks().unwrap();
        let declined = DebitOutcome::Declined {
            reason: INSUFFICIENT_FUNDS.to_owned(),
        };
        for n in 0..20 {
            let debit = debit(&format!("k{n}"), "decline-card-7", 500);
            assert_eq!(provider.debit(&debit).await, declined);
            assert_eq!(provider.debit(&debit).await, declined);
            assert_eq!(provider.status(&debit.idempotency_key).await, declined);
        }
        assert_eq!(provider.applied_count(), 0);
        let callbacks = drain(&mut callbacks);
        assert_eq!(callbacks.len(), 20);
        assert!(
            callbacks
                .iter()
                .all(|callback| callback.outcome == declined)
        );
    }

    #[tokio::test]
    async fn amounts_of_zero_or_less_are_declined() {
        let provider = SimulatedProvider::default();
        let declined = DebitOutcome::Declined {
            reason: NON_POSITIVE_AMOUNT.to_owned(),
        };
        assert_eq!(provider.debit(&debit("k1", "acct", 0)).await, declined);
        assert_eq!(provider.debit(&debit("k2", "acct", -100)).await, declined);
        assert_eq!(provider.applied_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_then_retries_never_charge_twice() {
        let keys = 20;
        let (mut recorded_before_the_loss, mut lost_before_recording) = (0, 0);
        for seed in 0..200 {
            let provider = provider(FaultConfig {
                timeout_rate: 0.5,
                late_confirmation_after: Duration::from_secs(5),
                ..FaultConfig::chaotic(seed)
            });
            for n in 0..keys {
                let debit = debit(&format!("session-{n}"), "acct", 100 + n);
                for _ in 0..100 {
                    if provider.debit(&debit).await != DebitOutcome::Unknown {
                        break;
                    }
                    match provider.status(&debit.idempotency_key).await {
                        DebitOutcome::Unknown => lost_before_recording += 1,
                        _ => recorded_before_the_loss += 1,
                    }
                }
            }
            tokio::time::advance(Duration::from_secs(5)).await;
            let mut succeeded = 0;
            for n in 0..keys {
                let key = format!("session-{n}");
                let status = provider.status(&key).await;
                assert!(status.is_final(), "seed {seed}: {key} is {status:?}");
                let charged = usize::from(matches!(status, DebitOutcome::Succeeded { .. }));
                assert_eq!(provider.times_charged(&key), charged, "seed {seed}: {key}");
                succeeded += charged;
            }
            assert!(provider.applied_count() <= usize::try_from(keys).unwrap());
            assert_eq!(provider.applied_count(), succeeded, "seed {seed}");
        }
        assert!(recorded_before_the_loss > 0);
        assert!(lost_before_recording > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_confirmation_succeeds_after_the_delay_and_calls_back() {
        let provider = provider(late_after(Duration::from_secs(30)));
        let mut callbacks = provider.callbacks().unwrap();
        let debit = debit("k1", "acct", 500);
        assert_eq!(provider.debit(&debit).await, DebitOutcome::Pending);
        assert_eq!(provider.applied_count(), 0);

        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(provider.status("k1").await, DebitOutcome::Pending);
        assert_eq!(provider.debit(&debit).await, DebitOutcome::Pending);
        assert_eq!(callbacks.try_recv(), Err(TryRecvError::Empty));

        tokio::time::advance(Duration::from_secs(1)).await;
        let succeeded = provider.status("k1").await;
        assert!(matches!(succeeded, DebitOutcome::Succeeded { .. }));
        assert_eq!(provider.debit(&debit).await, succeeded);
        assert_eq!(provider.times_charged("k1"), 1);
        assert_eq!(callbacks.recv().await, Some(callback("k1", &succeeded)));
        assert_eq!(callbacks.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test(start_paused = true)]
    async fn tick_confirms_what_is_due_at_next_confirmation_at() {
        let provider = provider(late_after(Duration::from_secs(30)));
        let mut callbacks = provider.callbacks().unwrap();
        provider.debit(&debit("k1", "acct", 500)).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        provider.debit(&debit("k2", "acct", 700)).await;

        let first = provider.next_confirmation_at().unwrap();
        tokio::time::sleep_until(first).await;
        assert_eq!(provider.tick(), 1);
        assert_eq!(callbacks.try_recv().unwrap().idempotency_key, "k1");

        let second = provider.next_confirmation_at().unwrap();
        assert_eq!(second - first, Duration::from_secs(10));
        tokio::time::sleep_until(second).await;
        assert_eq!(provider.tick(), 1);
        assert_eq!(callbacks.try_recv().unwrap().idempotency_key, "k2");
        assert_eq!(provider.next_confirmation_at(), None);
        assert_eq!(provider.tick(), 0);
        assert_eq!(provider.total_applied(Currency::CNY).unwrap(), cny(1200));
    }

    #[tokio::test]
    async fn duplicate_callbacks_are_identical() {
        let provider = provider(FaultConfig {
            duplicate_callback_rate: 1.0,
            ..FaultConfig::none()
        });
        let mut callbacks = provider.callbacks().unwrap();
        let succeeded = provider.debit(&debit("k1", "acct", 500)).await;
        let declined = provider.debit(&debit("k2", "decline-x", 500)).await;
        assert_eq!(
            drain(&mut callbacks),
            [
                callback("k1", &succeeded),
                callback("k1", &succeeded),
                callback("k2", &declined),
                callback("k2", &declined),
            ]
        );
        assert_eq!(provider.applied_count(), 1);
    }

    #[test]
    fn callbacks_can_be_taken_only_once() {
        let provider = SimulatedProvider::default();
        assert!(provider.callbacks().is_some());
        assert!(provider.callbacks().is_none());
        assert!(provider.clone().callbacks().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn records_list_every_debit_with_its_status() {
        let delay = Duration::from_secs(30);
        let provider = provider(late_after(delay));
        provider.debit(&debit("k1", "acct-1", 100)).await;
        tokio::time::advance(delay).await;
        provider.debit(&debit("k2", "acct-2", 200)).await;
        provider.debit(&debit("k3", "decline-3", 300)).await;

        let records = provider.records().await;
        let summary: Vec<_> = records
            .iter()
            .map(|record| {
                let key = record.idempotency_key.as_str();
                (key, record.account.as_str(), record.amount, record.status)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("k1", "acct-1", cny(100), RecordStatus::Succeeded),
                ("k2", "acct-2", cny(200), RecordStatus::Pending),
                ("k3", "decline-3", cny(300), RecordStatus::Declined),
            ]
        );
        let DebitOutcome::Succeeded { provider_ref } = provider.status("k1").await else {
            panic!("k1 is confirmed");
        };
        assert_eq!(records[0].provider_ref, provider_ref);
        assert_ne!(records[1].provider_ref, records[2].provider_ref);

        tokio::time::advance(delay).await;
        let statuses: Vec<_> = provider
            .records()
            .await
            .iter()
            .map(|record| record.status)
            .collect();
        let expected = [
            RecordStatus::Succeeded,
            RecordStatus::Succeeded,
            RecordStatus::Declined,
        ];
        assert_eq!(statuses, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_every_answer() {
        let provider = provider(FaultConfig {
            latency: Duration::from_millis(250),
            ..FaultConfig::none()
        });
        let start = Instant::now();
        provider.debit(&debit("k1", "acct", 500)).await;
        provider.status("k1").await;
        provider.records().await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(750), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(800), "{elapsed:?}");
    }

    #[tokio::test]
    async fn the_same_seed_injects_the_same_faults() {
        async fn outcomes(seed: u64) -> Vec<DebitOutcome> {
            let provider = provider(FaultConfig {
                decline_rate: 0.3,
                timeout_rate: 0.3,
                late_confirmation_rate: 0.3,
                ..FaultConfig::chaotic(seed)
            });
            let mut outcomes = Vec::new();
            for n in 0..50 {
                outcomes.push(provider.debit(&debit(&format!("k{n}"), "acct", 100)).await);
            }
            outcomes
        }
        assert_eq!(outcomes(3).await, outcomes(3).await);
        assert_ne!(outcomes(3).await, outcomes(4).await);
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        type Spoil = fn(&mut FaultConfig);
        let spoilers: [(&str, Spoil); 4] = [
            ("decline_rate", |config| config.decline_rate = 1.5),
            ("timeout_rate", |config| config.timeout_rate = -0.1),
            ("late_confirmation_rate", |config| {
                config.late_confirmation_rate = f64::NAN
            }),
            ("duplicate_callback_rate", |config| {
                config.duplicate_callback_rate = 2.0
            }),
        ];
        for (field, spoil) in spoilers {
            let mut config = FaultConfig::none();
            spoil(&mut config);
            assert!(
                matches!(
                    SimulatedProvider::new(config),
                    Err(FaultConfigError::RateOutOfRange { name, .. }) if name == field
                ),
                "{field}"
            );
        }
        let certain = FaultConfig {
            decline_rate: 1.0,
            timeout_rate: 0.0,
            ..FaultConfig::chaotic(1)
        };
        assert_eq!(certain.validate(), Ok(()));
        assert_eq!(FaultConfig::none().validate(), Ok(()));
    }

    const KEYS: usize = 4;

    /// One call a billing worker (or a confused one) might make.
    #[derive(Debug, Clone)]
    enum Step {
        Debit(usize),
        DebitAnotherAmount(usize),
        Status(usize),
        Wait(u64),
        Tick,
    }

    fn key(index: usize) -> String {
        format!("session-{index}")
    }

    /// The last key's account always declines.
    fn debit_of(index: usize) -> Debit {
        let account = if index == KEYS - 1 {
            "decline-card".to_owned()
        } else {
            format!("acct-{index}")
        };
        let minor = i64::try_from(100 * (index + 1)).unwrap();
        debit(&key(index), &account, minor)
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            4 => (0..KEYS).prop_map(Step::Debit),
            1 => (0..KEYS).prop_map(Step::DebitAnotherAmount),
            2 => (0..KEYS).prop_map(Step::Status),
            1 => (0..40_u64).prop_map(Step::Wait),
            1 => Just(Step::Tick),
        ];
        prop::collection::vec(step, 1..40)
    }

    #[tokio::test]
    async fn mandates_are_refused_revoked_and_expire_and_survive_a_restart() {
        let provider = SimulatedProvider::default();
        assert!(matches!(
            provider.set_up_mandate("nomandate-card").await,
            MandateOutcome::Refused { .. }
        ));
        let MandateOutcome::Confirmed { reference } = provider.set_up_mandate("card-1").await
        else {
            panic!("an ordinary account's mandate is confirmed");
        };
        assert_eq!(provider.mandate(&reference).await, MandateStatus::Active);
        // Another process of the provider (a restart) knows it as well.
        assert_eq!(
            SimulatedProvider::default().mandate(&reference).await,
            MandateStatus::Active
        );
        provider.revoke_mandates("card-1");
        assert_eq!(provider.mandate(&reference).await, MandateStatus::Revoked);
        assert_eq!(provider.mandate("forged").await, MandateStatus::Unknown);

        let short = SimulatedProvider::new(FaultConfig {
            mandate_lifetime: Some(Duration::from_millis(20)),
            ..FaultConfig::none()
        })
        .unwrap();
        let MandateOutcome::Confirmed { reference } = short.set_up_mandate("card-2").await else {
            panic!("confirmed");
        };
        assert_eq!(short.mandate(&reference).await, MandateStatus::Active);
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(short.mandate(&reference).await, MandateStatus::Expired);
    }

    fn rate() -> impl Strategy<Value = f64> {
        prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0]
    }

    fn fault_configs() -> impl Strategy<Value = FaultConfig> {
        let rates = (rate(), rate(), rate(), rate());
        (any::<u64>(), rates, 1..60_u64, 0..3_u64).prop_map(
            |(seed, (decline, timeout, late, duplicate), late_secs, latency_secs)| FaultConfig {
                seed,
                decline_rate: decline,
                timeout_rate: timeout,
                late_confirmation_rate: late,
                late_confirmation_after: Duration::from_secs(late_secs),
                duplicate_callback_rate: duplicate,
                latency: Duration::from_secs(latency_secs),
                mandate_lifetime: None,
            },
        )
    }

    /// Runs the steps, lets every late confirmation come due, then checks each key: money moved
    /// at most once, and every answer, record and callback agrees with the final status.
    async fn money_moves_at_most_once_per_key(config: FaultConfig, steps: Vec<Step>) {
        let delay = config.late_confirmation_after;
        let provider = provider(config);
        let mut receiver = provider.callbacks().unwrap();
        let mut answers = Vec::new();
        for step in steps {
            match step {
                Step::Debit(index) => {
                    answers.push((index, provider.debit(&debit_of(index)).await));
                }
                Step::DebitAnotherAmount(index) => {
                    let mut debit = debit_of(index);
                    debit.amount = cny(1);
                    provider.debit(&debit).await;
                }
                Step::Status(index) => answers.push((index, provider.status(&key(index)).await)),
                Step::Wait(secs) => tokio::time::advance(Duration::from_secs(secs)).await,
                Step::Tick => {
                    provider.tick();
                }
            }
        }
        tokio::time::advance(delay).await;
        let records = provider.records().await;
        let callbacks = drain(&mut receiver);

        let mut succeeded = 0;
        let mut total = cny(0);
        for index in 0..KEYS {
            let key = key(index);
            let status = provider.status(&key).await;
            let charged = provider.times_charged(&key);
            let mut recorded = records
                .iter()
                .filter(|record| record.idempotency_key == key);
            let record = recorded.next();
            assert!(recorded.next().is_none(), "{key} recorded twice");
            match (&status, record) {
                (DebitOutcome::Succeeded { provider_ref }, Some(record)) => {
                    assert_eq!(charged, 1, "{key}");
                    assert_eq!(record.status, RecordStatus::Succeeded);
                    assert_eq!(&record.provider_ref, provider_ref);
                    succeeded += 1;
                    total = total.checked_add(record.amount).unwrap();
                }
                (DebitOutcome::Declined { .. }, Some(record)) => {
                    assert_eq!(charged, 0, "{key}");
                    assert_eq!(record.status, RecordStatus::Declined);
                }
                (DebitOutcome::Unknown, None) => assert_eq!(charged, 0, "{key}"),
                other => panic!("{key}: status and record disagree: {other:?}"),
            }
            for (_, answer) in answers.iter().filter(|(of, _)| *of == index) {
                match answer {
                    DebitOutcome::Unknown => {}
                    DebitOutcome::Pending => {
                        assert!(matches!(status, DebitOutcome::Succeeded { .. }), "{key}");
                    }
                    DebitOutcome::Declined { reason } if reason == KEY_REUSED => {
                        assert_ne!(
                            record.map(|record| record.amount),
                            Some(debit_of(index).amount)
                        );
                    }
                    answer => assert_eq!(answer, &status, "{key}"),
                }
            }
            let calls: Vec<_> = callbacks
                .iter()
                .filter(|callback| callback.idempotency_key == key)
                .collect();
            assert!(calls.iter().all(|call| call.outcome == status), "{key}");
            let expected = if status.is_final() { 1..=2 } else { 0..=0 };
            assert!(
                expected.contains(&calls.len()),
                "{key}: {} callbacks",
                calls.len()
            );
        }
        assert_eq!(provider.applied_count(), succeeded);
        assert_eq!(provider.total_applied(Currency::CNY).unwrap(), total);
    }

    proptest! {
        #[test]
        fn money_moved_per_key_is_zero_or_the_amount_never_twice(
            config in fault_configs(),
            steps in steps(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(money_moves_at_most_once_per_key(config, steps));
        }
    }
}
