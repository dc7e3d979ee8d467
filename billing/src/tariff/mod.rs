//! Tariffs (SPEC §4): the definition operators send, its validation into a [`Tariff`], the fee of
//! a stay under a tariff, and the versions of one lot's tariff over time. Pure functions over plain
//! data: no clock, no IO.
//!
//! - `definition`: the JSON shape, field for field ([`TariffDefinition`]).
//! - `validation`: [`TariffDefinition::validate`], which yields a [`Tariff`].
//! - `fee`: [`Tariff::fee`], SPEC §4's five steps.
//! - `schedule`: [`TariffSchedule`], the version in force at an instant.

mod definition;
mod error;
mod fee;
mod schedule;
mod time_of_day;
mod validation;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod worked_examples;

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize, Serializer};

use crate::money::Currency;

pub use definition::{Band, TariffDefinition};
pub use error::TariffError;
pub use fee::{MAX_UNITS, Stay};
pub use schedule::TariffSchedule;
pub use time_of_day::TimeOfDay;

/// A validated tariff version, ready to price stays; built by [`TariffDefinition::validate`].
/// It serializes as its definition, and deserializing validates.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(try_from = "TariffDefinition")]
pub struct Tariff {
    definition: TariffDefinition,
    time_zone: Tz,
    /// The local day cut into runs of one band: `(first minute, index into definition.bands)`,
    /// sorted by minute, the first starting at 00:00 (validation guarantees full coverage).
    segments: Box<[(u16, usize)]>,
    free_days: HashSet<NaiveDate>,
}

impl Tariff {
    /// The definition it was validated from, as `GET /v1/lots/{lot}/tariff` returns it.
    pub fn definition(&self) -> &TariffDefinition {
        &self.definition
    }

    pub fn currency(&self) -> Currency {
        self.definition.currency
    }

    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    pub fn effective_from(&self) -> DateTime<Utc> {
        self.definition.effective_from
    }

    /// The band in force at `minute` (since local midnight), with its index.
    fn band_at(&self, minute: u16) -> (usize, &Band) {
        let run = self.segments.partition_point(|&(first, _)| first <= minute);
        // The first run starts at 00:00, so `run >= 1` and the run in force is the one before.
        let (_, index) = self.segments[run.saturating_sub(1)];
        (index, &self.definition.bands[index])
    }
}

impl fmt::Debug for Tariff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tariff").field(&self.definition).finish()
    }
}

impl Serialize for Tariff {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.definition.serialize(serializer)
    }
}

impl TryFrom<TariffDefinition> for Tariff {
    type Error = TariffError;

    fn try_from(definition: TariffDefinition) -> Result<Self, Self::Error> {
        definition.validate()
    }
}
