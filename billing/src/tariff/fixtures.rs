//! Test fixtures shared by the tariff tests: SPEC §4's example tariff and local-time helpers.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use parkflow_protocol::PlateColor;
use serde_json::Value;

use super::{Stay, Tariff, TariffDefinition};
use crate::money::Money;

/// The definition printed in SPEC §4, verbatim.
pub const SPEC_EXAMPLE: &str = r#"{"currency": "CNY", "time_zone": "Asia/Shanghai", "grace_minutes": 15, "unit_minutes": 30,
   "bands": [{"from": "07:00", "to": "21:00", "unit_price": "3.00", "first_unit_price": "5.00"},
             {"from": "21:00", "to": "07:00", "unit_price": "1.00", "cap": "5.00"}],
   "daily_cap": "40.00", "free_days": ["2026-10-01"], "plate_color_multipliers": {"green": "0.5"},
   "effective_from": "2026-01-01T00:00:00Z"}"#;

pub fn spec_json() -> Value {
    serde_json::from_str(SPEC_EXAMPLE).unwrap()
}

pub fn spec_definition() -> TariffDefinition {
    serde_json::from_str(SPEC_EXAMPLE).unwrap()
}

pub fn spec_tariff() -> Tariff {
    spec_definition().validate().unwrap()
}

/// A tariff from JSON, validated.
pub fn tariff(value: Value) -> Tariff {
    serde_json::from_value::<TariffDefinition>(value)
        .unwrap()
        .validate()
        .unwrap()
}

/// A tariff with no grace, one currency, zone and unit, the given bands, and green × 0.5,
/// white × 0.333.
pub fn flat(currency: &str, zone: &str, unit_minutes: u32, bands: Value) -> Tariff {
    tariff(serde_json::json!({
        "currency": currency, "time_zone": zone, "grace_minutes": 0,
        "unit_minutes": unit_minutes, "bands": bands,
        "plate_color_multipliers": {"green": "0.5", "white": "0.333"},
        "effective_from": "2026-01-01T00:00:00Z"
    }))
}

/// The instant a wall clock in `zone` reads `"YYYY-MM-DD HH:MM"` (or `…:SS`, `…:SS.fff`); for a
/// reading that happens twice (autumn DST), the first.
pub fn local(zone: Tz, reading: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(reading, "%Y-%m-%d %H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(reading, "%Y-%m-%d %H:%M:%S%.f"))
        .unwrap();
    zone.from_local_datetime(&naive)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

/// The fee of a stay between two wall-clock readings in the tariff's zone, as a string.
pub fn fee_between(
    tariff: &Tariff,
    entered: &str,
    exited: &str,
    plate_color: Option<PlateColor>,
) -> String {
    let zone = tariff.time_zone();
    let stay = Stay {
        entered_at: local(zone, entered),
        exited_at: local(zone, exited),
        plate_color,
        pass_holder: false,
    };
    let fee: Money = tariff.fee(&stay).unwrap();
    assert_eq!(fee.currency(), tariff.currency());
    fee.to_string()
}
