//! The money side of ParkFlow (SPEC §4).
//!
//! Pure core: money (currencies, amounts, the one rounding rule), tariffs and fees, journal
//! entries. Around it, the work that touches the database and the payment provider: drivers
//! (the one writer of `drivers` and `driver_plates`: accounts, consent, standing), charging
//! (exactly one charge per closed session, collected with idempotency keys), arrears (invoices,
//! reminders, suspension), payments through the API, settlement and reconciliation, and the audit
//! of every invariant.

pub mod arrears;
pub mod audit;
pub mod charging;
pub mod claims;
pub mod drivers;
pub mod ledger;
pub mod lots;
pub mod mandates;
pub mod money;
pub mod payments;
pub mod provider;
pub mod refunds;
pub mod settlement;
pub mod tariff;

pub use money::{Currency, Money, MoneyError};
pub use tariff::{
    Band, MAX_UNITS, Stay, Tariff, TariffDefinition, TariffError, TariffSchedule, TimeOfDay,
};
