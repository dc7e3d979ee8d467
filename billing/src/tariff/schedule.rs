//! The versions of one lot's tariff over time. A session is priced with the version in force at
//! its entry: the latest version whose `effective_from` is not after the entry.

use chrono::{DateTime, Utc};

use super::{Stay, Tariff, TariffError};
use crate::money::Money;

/// One lot's tariff versions, sorted by `effective_from`, no two taking effect at the same instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TariffSchedule {
    versions: Vec<Tariff>,
}

impl TariffSchedule {
    pub fn new() -> Self {
        Self::default()
    }

    /// A schedule of the given versions, in any order.
    pub fn from_versions(versions: impl IntoIterator<Item = Tariff>) -> Result<Self, TariffError> {
        let mut schedule = Self::new();
        for tariff in versions {
            schedule.add(tariff)?;
        }
        Ok(schedule)
    }

    /// Adds a version; one that takes effect at the same instant as an existing one is refused
    /// (replacing a version is a decision for the caller, not a side effect of adding).
    pub fn add(&mut self, tariff: Tariff) -> Result<(), TariffError> {
        let effective_from = tariff.effective_from();
        match self
            .versions
            .binary_search_by_key(&effective_from, Tariff::effective_from)
        {
            Ok(_) => Err(TariffError::DuplicateEffectiveFrom(effective_from)),
            Err(position) => {
                self.versions.insert(position, tariff);
                Ok(())
            }
        }
    }

    /// The version in force at `at`: the latest one taking effect at or before it.
    pub fn in_force_at(&self, at: DateTime<Utc>) -> Option<&Tariff> {
        let later = self
            .versions
            .partition_point(|tariff| tariff.effective_from() <= at);
        later.checked_sub(1).map(|index| &self.versions[index])
    }

    /// The fee of `stay` under the version in force at its entry.
    pub fn fee(&self, stay: &Stay) -> Result<Money, TariffError> {
        self.in_force_at(stay.entered_at)
            .ok_or(TariffError::NoTariffInForce(stay.entered_at))?
            .fee(stay)
    }

    /// The versions, oldest first.
    pub fn versions(&self) -> &[Tariff] {
        &self.versions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::fixtures::{local, spec_json, tariff};
    use chrono_tz::Asia::Shanghai;
    use serde_json::json;

    /// The SPEC example from `effective_from`, with a day unit price of `day_price`.
    fn version(effective_from: &str, day_price: &str) -> Tariff {
        let mut value = spec_json();
        value["effective_from"] = json!(effective_from);
        value["bands"][0]["unit_price"] = json!(day_price);
        tariff(value)
    }

    fn schedule() -> TariffSchedule {
        TariffSchedule::from_versions([
            version("2026-07-01T00:00:00Z", "4.00"),
            version("2026-01-01T00:00:00Z", "3.00"),
        ])
        .unwrap()
    }

    #[test]
    fn versions_are_kept_in_effective_order() {
        let schedule = schedule();
        let starts: Vec<String> = schedule
            .versions()
            .iter()
            .map(|tariff| tariff.effective_from().to_rfc3339())
            .collect();
        assert_eq!(
            starts,
            ["2026-01-01T00:00:00+00:00", "2026-07-01T00:00:00+00:00"]
        );
    }

    #[test]
    fn the_version_in_force_is_the_latest_already_effective() {
        let schedule = schedule();
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        let day_price = |text: &str| {
            schedule
                .in_force_at(at(text))
                .map(|tariff| tariff.definition().bands[0].unit_price.to_string())
        };
        assert_eq!(day_price("2025-12-31T23:59:59Z"), None);
        assert_eq!(day_price("2026-01-01T00:00:00Z").as_deref(), Some("3.00"));
        assert_eq!(day_price("2026-06-30T23:59:59Z").as_deref(), Some("3.00"));
        assert_eq!(day_price("2026-07-01T00:00:00Z").as_deref(), Some("4.00"));
        assert_eq!(day_price("2030-01-01T00:00:00Z").as_deref(), Some("4.00"));
    }

    #[test]
    fn a_stay_is_priced_with_the_version_in_force_at_its_entry() {
        // Enters under 3.00 (07:00 local = 2026-06-30T23:00Z), leaves under 4.00: 5.00 + 3 × 3.00.
        let stay = Stay {
            entered_at: local(Shanghai, "2026-07-01 07:00"),
            exited_at: local(Shanghai, "2026-07-01 09:00"),
            plate_color: None,
            pass_holder: false,
        };
        assert_eq!(schedule().fee(&stay).unwrap().to_string(), "14.00");
        let later = Stay {
            entered_at: local(Shanghai, "2026-07-01 08:00"),
            exited_at: local(Shanghai, "2026-07-01 10:00"),
            ..stay
        };
        assert_eq!(schedule().fee(&later).unwrap().to_string(), "17.00");
    }

    #[test]
    fn a_stay_before_the_first_version_has_no_tariff() {
        let entered_at = local(Shanghai, "2025-12-31 07:00");
        let stay = Stay {
            entered_at,
            exited_at: local(Shanghai, "2025-12-31 09:00"),
            plate_color: None,
            pass_holder: false,
        };
        assert_eq!(
            schedule().fee(&stay),
            Err(TariffError::NoTariffInForce(entered_at))
        );
    }

    #[test]
    fn two_versions_may_not_take_effect_at_the_same_instant() {
        let mut schedule = schedule();
        let error = schedule.add(version("2026-07-01T00:00:00Z", "9.00"));
        assert_eq!(
            error,
            Err(TariffError::DuplicateEffectiveFrom(
                "2026-07-01T00:00:00Z".parse().unwrap()
            ))
        );
        assert_eq!(schedule.versions().len(), 2);
    }
}
