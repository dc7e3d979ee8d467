//! The tariff definition exactly as operators send it and `GET /v1/lots/{lot}/tariff` returns it
//! (SPEC §4). Deserializing checks each field's syntax (decimal strings, `"HH:MM"`, dates, the
//! currency code); [`TariffDefinition::validate`](super::TariffDefinition::validate) checks what
//! the fields mean together and yields a [`Tariff`](super::Tariff).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use parkflow_protocol::PlateColor;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::TimeOfDay;
use crate::money::{Currency, decimal_string};

/// One lot's tariff version, field for field the JSON of SPEC §4. Prices are decimal strings in
/// the currency's major unit; a JSON number where a price belongs is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "currency": "CNY", "time_zone": "Asia/Shanghai", "grace_minutes": 15, "unit_minutes": 30,
    "bands": [{"from": "07:00", "to": "21:00", "unit_price": "3.00", "first_unit_price": "5.00"},
              {"from": "21:00", "to": "07:00", "unit_price": "1.00", "cap": "5.00"}],
    "daily_cap": "40.00", "free_days": ["2026-10-01"], "plate_color_multipliers": {"green": "0.5"},
    "effective_from": "2026-01-01T00:00:00Z"
}))]
pub struct TariffDefinition {
    pub currency: Currency,
    /// IANA name of the lot's time zone, e.g. `Asia/Shanghai`: bands, free days and the daily cap
    /// follow its wall clock and calendar.
    pub time_zone: String,
    /// Stays up to this long are free; longer stays pay from their start.
    pub grace_minutes: u32,
    /// The charging unit; a partial last unit counts whole.
    pub unit_minutes: u32,
    /// Cover the 24 hours without overlap or gap.
    pub bands: Vec<Band>,
    /// The most the units starting on one local calendar day may cost together.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal_string::option"
    )]
    pub daily_cap: Option<Decimal>,
    /// Local dates on which units cost nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_days: Option<Vec<NaiveDate>>,
    /// Factor applied to the whole fee by plate colour (1 for colours not listed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal_string::option_map"
    )]
    pub plate_color_multipliers: Option<BTreeMap<PlateColor, Decimal>>,
    /// From this instant on, sessions entering the lot are priced with this version.
    pub effective_from: DateTime<Utc>,
}

/// A price band: the local times `[from, to)` of every day, wrapping midnight when `to <= from`
/// (`"00:00"` to `"00:00"` is the whole day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub from: TimeOfDay,
    pub to: TimeOfDay,
    /// Price of each unit starting in the band.
    #[serde(with = "decimal_string")]
    pub unit_price: Decimal,
    /// Price of the stay's first unit when it starts in this band.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal_string::option"
    )]
    pub first_unit_price: Option<Decimal>,
    /// The most one continuous occurrence of the band (one night, say) may cost.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal_string::option"
    )]
    pub cap: Option<Decimal>,
}

impl Band {
    /// The minutes since midnight this band covers, in order from `from`, wrapping midnight.
    pub(crate) fn minutes(&self) -> impl Iterator<Item = u16> + use<> {
        let (from, to) = (self.from.minutes(), self.to.minutes());
        let length = if to > from {
            to - from
        } else {
            super::time_of_day::MINUTES_PER_DAY - from + to
        };
        (0..length).map(move |offset| TimeOfDay::from_minutes_wrapping(from + offset).minutes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::fixtures::SPEC_EXAMPLE;
    use serde_json::{Value, json};

    fn spec_example() -> Value {
        serde_json::from_str(SPEC_EXAMPLE).unwrap()
    }

    #[test]
    fn spec_example_round_trips_to_the_same_json() {
        let definition: TariffDefinition = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        assert_eq!(definition.currency, Currency::CNY);
        assert_eq!(
            definition.bands[0].first_unit_price.unwrap().to_string(),
            "5.00"
        );
        assert_eq!(serde_json::to_value(&definition).unwrap(), spec_example());
    }

    #[test]
    fn absent_optional_fields_stay_absent() {
        let minimal = json!({
            "currency": "USD", "time_zone": "America/New_York", "grace_minutes": 0,
            "unit_minutes": 60,
            "bands": [{"from": "00:00", "to": "00:00", "unit_price": "2.50"}],
            "effective_from": "2026-03-01T05:00:00Z"
        });
        let definition: TariffDefinition = serde_json::from_value(minimal.clone()).unwrap();
        assert_eq!(definition.daily_cap, None);
        assert_eq!(definition.free_days, None);
        assert_eq!(definition.plate_color_multipliers, None);
        assert_eq!(serde_json::to_value(&definition).unwrap(), minimal);
    }

    #[test]
    fn empty_optional_collections_survive_the_round_trip() {
        let mut value = spec_example();
        value["free_days"] = json!([]);
        value["plate_color_multipliers"] = json!({});
        let definition: TariffDefinition = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&definition).unwrap(), value);
    }

    #[test]
    fn a_price_given_as_a_json_number_is_refused() {
        for (pointer, number) in [
            ("/bands/0/unit_price", json!(3.0)),
            ("/bands/0/first_unit_price", json!(5)),
            ("/bands/1/cap", json!(5.0)),
            ("/daily_cap", json!(40)),
            ("/plate_color_multipliers/green", json!(0.5)),
        ] {
            let mut value = spec_example();
            *value.pointer_mut(pointer).unwrap() = number;
            let error = serde_json::from_value::<TariffDefinition>(value)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("expected a decimal string such as \"3.00\""),
                "{pointer}: {error}"
            );
        }
    }

    #[test]
    fn malformed_fields_are_refused() {
        for (pointer, bad) in [
            ("/currency", json!("cny")),
            ("/bands/0/from", json!("7:00")),
            ("/bands/0/to", json!("24:00")),
            ("/bands/0/unit_price", json!("3,00")),
            ("/bands/0/unit_price", json!("1e2")),
            ("/free_days/0", json!("2026-02-30")),
            ("/plate_color_multipliers", json!({"purple": "0.5"})),
            ("/grace_minutes", json!(-1)),
            ("/effective_from", json!("2026-01-01")),
        ] {
            let mut value = spec_example();
            *value.pointer_mut(pointer).unwrap() = bad.clone();
            assert!(
                serde_json::from_value::<TariffDefinition>(value).is_err(),
                "{pointer} = {bad}"
            );
        }
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        let mut value = spec_example();
        value["dailycap"] = json!("40.00");
        assert!(serde_json::from_value::<TariffDefinition>(value).is_err());

        let mut value = spec_example();
        value.as_object_mut().unwrap().remove("unit_minutes");
        assert!(serde_json::from_value::<TariffDefinition>(value).is_err());
    }

    #[test]
    fn a_band_covers_its_minutes_wrapping_midnight() {
        let band = |from: &str, to: &str| Band {
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
            unit_price: Decimal::ONE,
            first_unit_price: None,
            cap: None,
        };
        let day: Vec<u16> = band("07:00", "21:00").minutes().collect();
        assert_eq!((day.len(), day[0], day[839]), (840, 420, 1259));
        let night: Vec<u16> = band("21:00", "07:00").minutes().collect();
        assert_eq!(
            (night.len(), night[0], night[179], night[180]),
            (600, 1260, 1439, 0)
        );
        assert_eq!(band("00:00", "00:00").minutes().count(), 1440);
        assert_eq!(band("06:00", "06:00").minutes().count(), 1440);
    }
}
