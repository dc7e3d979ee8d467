//! Currencies with 0, 2 and 3 minor digits, priced by hand: the fee is rounded to each one's
//! minor unit, half away from zero.

use parkflow_protocol::PlateColor::{Green, White};
use serde_json::json;

use crate::tariff::fixtures::{fee_between, flat};

#[test]
fn usd_fees_have_cents() {
    // 3 hourly units: 1.25 (first) + 2.50 + 2.50 = 6.25; green × 0.5 = 3.125 → 3.13; white
    // × 0.333 = 2.08125 → 2.08.
    let tariff = flat(
        "USD",
        "America/New_York",
        60,
        json!([{"from": "00:00", "to": "00:00", "unit_price": "2.50", "first_unit_price": "1.25"}]),
    );
    assert_eq!(
        fee_between(&tariff, "2026-06-10 10:00", "2026-06-10 12:30", None),
        "6.25"
    );
    assert_eq!(
        fee_between(&tariff, "2026-06-10 10:00", "2026-06-10 12:30", Some(Green)),
        "3.13"
    );
    assert_eq!(
        fee_between(&tariff, "2026-06-10 10:00", "2026-06-10 12:30", Some(White)),
        "2.08"
    );
}

#[test]
fn jpy_fees_have_no_minor_digits() {
    // 3 units: 101 + 100 + 100 = 301; white × 0.333 = 100.233 → 100. 1 unit green: 101 × 0.5 =
    // 50.5 → 51 (half away from zero).
    let tariff = flat(
        "JPY",
        "Asia/Tokyo",
        30,
        json!([{"from": "00:00", "to": "00:00", "unit_price": "100", "first_unit_price": "101"}]),
    );
    assert_eq!(
        fee_between(&tariff, "2026-06-10 10:00", "2026-06-10 11:01", None),
        "301"
    );
    assert_eq!(
        fee_between(&tariff, "2026-06-10 10:00", "2026-06-10 11:01", Some(White)),
        "100"
    );
    assert_eq!(
        fee_between(&tariff, "2026-06-10 10:00", "2026-06-10 10:01", Some(Green)),
        "51"
    );
}

#[test]
fn kwd_fees_have_three_digits() {
    // 1 unit: 0.125 × 0.5 = 0.0625 → 0.063.
    let tariff = flat(
        "KWD",
        "Asia/Kuwait",
        60,
        json!([{"from": "00:00", "to": "00:00", "unit_price": "0.125"}]),
    );
    assert_eq!(
        fee_between(&tariff, "2026-06-10 10:00", "2026-06-10 10:01", Some(Green)),
        "0.063"
    );
}
