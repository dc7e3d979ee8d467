//! Stays across Berlin's daylight saving changes of 2026 (29 March: 02:00 CET → 03:00 CEST;
//! 25 October: 03:00 CEST → 02:00 CET), priced by hand. Units are real time; bands, days and free
//! days are wall-clock readings.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use crate::tariff::fixtures::{fee_between, flat, tariff};
use crate::tariff::{Stay, Tariff};

/// Berlin, hourly units, day 07:00–21:00 at 2.00, night at 1.00, no caps.
fn berlin() -> Tariff {
    flat(
        "EUR",
        "Europe/Berlin",
        60,
        json!([
            {"from": "07:00", "to": "21:00", "unit_price": "2.00"},
            {"from": "21:00", "to": "07:00", "unit_price": "1.00"}
        ]),
    )
}

#[test]
fn spring_forward_night_is_one_unit_shorter() {
    // 28 March 22:00 CET (21:00 UTC) to 29 March 08:00 CEST (06:00 UTC): 9 real hours, so 9
    // units starting 22, 23, 00, 01, 03, 04, 05, 06 (night, 8 × 1.00) and 07 (day, 2.00): 10.00.
    assert_eq!(
        fee_between(&berlin(), "2026-03-28 22:00", "2026-03-29 08:00", None),
        "10.00"
    );
}

#[test]
fn fall_back_night_is_one_unit_longer() {
    // 24 October 22:00 CEST (20:00 UTC) to 25 October 08:00 CET (07:00 UTC): 11 real hours,
    // units starting 22, 23, 00, 01, 02 CEST, 02 CET, 03, 04, 05, 06 (night, 10 × 1.00) and
    // 07 (day, 2.00): 12.00.
    assert_eq!(
        fee_between(&berlin(), "2026-10-24 22:00", "2026-10-25 08:00", None),
        "12.00"
    );
}

#[test]
fn the_daily_cap_counts_the_units_of_a_long_local_day() {
    // 25 October has 25 hours: 25 hourly units of 1.00 start on it, capped at 24.00. 29 March
    // has 23: 23.00, under the cap.
    let mut value = serde_json::to_value(berlin().definition()).unwrap();
    value["bands"] = json!([{"from": "00:00", "to": "00:00", "unit_price": "1.00"}]);
    value["daily_cap"] = json!("24.00");
    let tariff = tariff(value);
    assert_eq!(
        fee_between(&tariff, "2026-10-25 00:00", "2026-10-26 00:00", None),
        "24.00"
    );
    assert_eq!(
        fee_between(&tariff, "2026-03-29 00:00", "2026-03-30 00:00", None),
        "23.00"
    );
}

#[test]
fn a_wall_clock_turned_back_returns_to_the_same_band_occurrence() {
    // Bands 00:00–02:30 at 1.00 (cap 1.50) and 02:30–00:00 at 0.10; 30-minute units from
    // 25 October 00:00 UTC: 02:00 CEST (first band) 1.00, 02:30 CEST 0.10, 02:00 CET (first band
    // again, the same occurrence that began at 00:00) lowered to 0.50, 02:30 CET 0.10, 03:00
    // CET 0.10. 1.00 + 0.10 + 0.50 + 0.10 + 0.10 = 1.80.
    let tariff = flat(
        "EUR",
        "Europe/Berlin",
        30,
        json!([
            {"from": "00:00", "to": "02:30", "unit_price": "1.00", "cap": "1.50"},
            {"from": "02:30", "to": "00:00", "unit_price": "0.10"}
        ]),
    );
    let entered_at: DateTime<Utc> = "2026-10-25T00:00:00Z".parse().unwrap();
    let stay = Stay {
        entered_at,
        exited_at: entered_at + TimeDelta::minutes(150),
        plate_color: None,
        pass_holder: false,
    };
    let fee = tariff.fee(&stay);
    assert_eq!(fee.unwrap().to_string(), "1.80");
}

#[test]
fn a_band_starting_in_the_skipped_hour_begins_when_the_clock_jumps() {
    // Bands 02:30–14:00 at 2.00 and 14:00–02:30 at 1.00. 29 March 01:00 CET to 04:00 CEST is 2
    // real hours: 01:00 (second band) 1.00 + 03:00 CEST (first band) 2.00 = 3.00.
    let tariff = flat(
        "EUR",
        "Europe/Berlin",
        60,
        json!([
            {"from": "02:30", "to": "14:00", "unit_price": "2.00"},
            {"from": "14:00", "to": "02:30", "unit_price": "1.00"}
        ]),
    );
    assert_eq!(
        fee_between(&tariff, "2026-03-29 01:00", "2026-03-29 04:00", None),
        "3.00"
    );
}
