//! The money side's pure core: money (currencies, amounts, the one rounding rule), tariffs (the
//! definition operators send, its validation) and fees (SPEC §4's definition of what a stay costs).
//! No IO, no clock: everything here is a plain function over plain data.

pub mod money;
pub mod tariff;

pub use money::{Currency, Money, MoneyError};
pub use tariff::{
    Band, MAX_UNITS, Stay, Tariff, TariffDefinition, TariffError, TariffSchedule, TimeOfDay,
};
