//! The one error type of the tariff area: invalid definitions, unpriceable stays, schedule clashes.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::TimeOfDay;
use crate::money::Currency;

/// Why a tariff definition is invalid, or why a stay cannot be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TariffError {
    #[error("invalid time of day {0:?}: expected HH:MM")]
    InvalidTimeOfDay(String),
    #[error("unknown time zone {0:?}: expected an iana name such as \"Asia/Shanghai\"")]
    UnknownTimeZone(String),
    #[error("unit_minutes must be between 1 and 1440, got {0}")]
    UnitMinutesOutOfRange(u32),
    #[error("a tariff needs at least one band")]
    NoBands,
    #[error("bands[{first}] and bands[{second}] overlap at {at}")]
    BandsOverlap {
        first: usize,
        second: usize,
        at: TimeOfDay,
    },
    #[error("the bands leave a gap starting at {at}")]
    BandsLeaveGap { at: TimeOfDay },
    #[error("{field} must not be negative, got {amount}")]
    NegativeAmount { field: String, amount: Decimal },
    #[error("{field} has more decimals than {currency} allows ({digits}), got {amount}")]
    TooManyDecimals {
        field: String,
        amount: Decimal,
        currency: Currency,
        digits: u32,
    },
    #[error("the exit at {exited_at} is before the entry at {entered_at}")]
    ExitBeforeEntry {
        entered_at: DateTime<Utc>,
        exited_at: DateTime<Utc>,
    },
    #[error("{0} is outside the supported years 0001 to 9999")]
    TimeOutOfRange(DateTime<Utc>),
    #[error("the stay is too long to price: more than {max_units} charging units")]
    StayTooLong { max_units: u64 },
    #[error("the fee does not fit in a decimal")]
    FeeOverflow,
    #[error("a tariff version already takes effect at {0}")]
    DuplicateEffectiveFrom(DateTime<Utc>),
    #[error("no tariff version is in force at {0}")]
    NoTariffInForce(DateTime<Utc>),
}
