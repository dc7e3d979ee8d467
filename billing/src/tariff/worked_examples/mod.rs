//! SPEC §4's example tariff, priced by hand. Each row's comment is the calculation; the test checks
//! the code agrees. The tariff: Asia/Shanghai (UTC+8, no DST), grace 15 minutes, units of 30
//! minutes; day band 07:00–21:00 at 3.00 a unit, 5.00 for a stay's first unit; night band
//! 21:00–07:00 at 1.00 a unit, at most 5.00 a night; at most 40.00 a calendar day; 2026-10-01 free;
//! green plates × 0.5. Times below are Shanghai wall-clock readings.

mod currencies;
mod daylight_saving;

use parkflow_protocol::PlateColor::{self, Blue, Green};
use serde_json::json;

use super::fixtures::{fee_between, local, spec_json, spec_tariff, tariff};
use super::{Stay, Tariff};

struct Example {
    name: &'static str,
    entered: &'static str,
    exited: &'static str,
    plate_color: Option<PlateColor>,
    fee: &'static str,
}

const fn example(
    name: &'static str,
    entered: &'static str,
    exited: &'static str,
    plate_color: Option<PlateColor>,
    fee: &'static str,
) -> Example {
    Example {
        name,
        entered,
        exited,
        plate_color,
        fee,
    }
}

#[rustfmt::skip]
const EXAMPLES: &[Example] = &[
    // 10 minutes ≤ 15 of grace.
    example("stay within the grace period is free", "2026-03-02 10:00", "2026-03-02 10:10", None, "0.00"),
    // 15 minutes ≤ 15: the grace period is inclusive.
    example("stay of exactly the grace period is free", "2026-03-02 10:00", "2026-03-02 10:15", None, "0.00"),
    // 16 minutes > 15, so the stay pays from its start: 1 unit (10:00, day, first) = 5.00.
    example("one minute past grace pays from the start", "2026-03-02 10:00", "2026-03-02 10:16", None, "5.00"),
    // 15 minutes and 1 ms > 15: as above.
    example("one millisecond past grace pays", "2026-03-02 10:00", "2026-03-02 10:15:00.001", None, "5.00"),
    // 60 minutes = 2 whole units: 10:00 first 5.00 + 10:30 3.00 = 8.00.
    example("whole units are not rounded up", "2026-03-02 10:00", "2026-03-02 11:00", None, "8.00"),
    // 61 minutes = 3 units (the partial third counts whole): 5.00 + 3.00 + 3.00 = 11.00.
    example("a partial last unit counts whole", "2026-03-02 10:00", "2026-03-02 11:01", None, "11.00"),
    // 4 units: first 5.00, then 3 × 3.00 = 14.00.
    example("the first unit price applies once", "2026-03-02 10:00", "2026-03-02 12:00", None, "14.00"),
    // 2 night units; the night band has no first unit price: 1.00 + 1.00 = 2.00.
    example("a band without a first unit price charges its unit price first", "2026-03-02 22:00", "2026-03-02 23:00", None, "2.00"),
    // 45 minutes = 2 units: 20:45 (day, first) 5.00 + 21:15 (night) 1.00 = 6.00.
    example("each unit is priced by the band at its start", "2026-03-02 20:45", "2026-03-02 21:30", None, "6.00"),
    // 20 night units of 1.00 = 20.00, capped at 5.00 for the night.
    example("a whole night costs the night cap", "2026-03-02 21:00", "2026-03-03 07:00", None, "5.00"),
    // 24 units. Day: 20:00 first 5.00, 20:30 3.00. Night from 21:00: 21:00…23:00 five × 1.00 =
    // 5.00, reaching the cap; 23:30 and 00:00…06:30 (15 units) 0. Day: 07:00, 07:30 3.00 each.
    // 5 + 3 + 5 + 0 + 6 = 19.00.
    example("across midnight the night cap applies", "2026-03-02 20:00", "2026-03-03 08:00", None, "19.00"),
    // 28 units: 07:00 5.00, 07:30…12:30 eleven × 3.00 → 38.00; 13:00 lowered to 2.00 → 40.00
    // (daily cap); 13:30…20:30 0.
    example("a long day hits the daily cap", "2026-03-02 07:00", "2026-03-02 21:00", None, "40.00"),
    // As above, then 21:00…22:30 (night, same calendar day) lowered to 0 by the daily cap.
    example("the daily cap covers the evening too", "2026-03-02 07:00", "2026-03-02 23:00", None, "40.00"),
    // 2 March: 40.00 as above; the night from 21:00 was charged 0 so far. 3 March 00:00…06:30:
    // 14 units of the same night, five × 1.00 = 5.00 (its cap), a new day (5.00 ≤ 40.00).
    // 40 + 5 = 45.00.
    example("a night after a capped day pays after midnight", "2026-03-02 07:00", "2026-03-03 07:00", None, "45.00"),
    // 8 units on the free day, first unit included: 0.
    example("a stay on the free day is free", "2026-10-01 10:00", "2026-10-01 14:00", None, "0.00"),
    // 26 units. 30 September: 20:00 first 5.00, 20:30 3.00, night 21:00…23:00 5 × 1.00 = 5.00
    // (cap), 23:30 0. 1 October 00:00…08:30: free. 5 + 3 + 5 = 13.00.
    example("a stay crossing into the free day stops paying at midnight", "2026-09-30 20:00", "2026-10-01 09:00", None, "13.00"),
    // 24 units. 1 October 20:00…23:30: free (the night from 21:00 charged 0 so far). 2 October
    // 00:00…06:30: same night, 5 × 1.00 = 5.00 (cap). 07:00, 07:30: 3.00 each (not the stay's
    // first unit, so no first unit price). 5 + 6 = 11.00.
    example("a stay leaving the free day pays from midnight", "2026-10-01 20:00", "2026-10-02 08:00", None, "11.00"),
    // 11.00 (see "a partial last unit counts whole") × 0.5 = 5.50.
    example("a green plate pays half", "2026-03-02 10:00", "2026-03-02 11:01", Some(Green), "5.50"),
    // No multiplier for blue: × 1.
    example("a colour without a multiplier pays in full", "2026-03-02 10:00", "2026-03-02 11:01", Some(Blue), "11.00"),
    // 45.00 (see "a night after a capped day pays after midnight") × 0.5 = 22.50: the caps bound
    // the charges, the multiplier applies to their sum.
    example("the multiplier applies after the caps", "2026-03-02 07:00", "2026-03-03 07:00", Some(Green), "22.50"),
    // 72 units. 2 March: 20:00 5.00, 20:30 3.00, first night 21:00…23:00 5.00 (cap), rest 0:
    // 13.00. 3 March: first night 00:00…06:30 0 (capped); day 07:00…13:00 thirteen × 3.00 =
    // 39.00, 13:30 lowered to 1.00 (daily cap 40.00), rest 0; second night 21:00…23:30 0 (daily
    // cap): 40.00. 4 March: second night 00:00…02:00 5 × 1.00 = 5.00 (its own cap), rest 0;
    // 07:00, 07:30 3.00 each: 11.00. 13 + 40 + 11 = 64.00.
    example("two nights are capped one by one", "2026-03-02 20:00", "2026-03-04 08:00", None, "64.00"),
];

#[test]
fn spec_example_tariff_prices_the_worked_examples() {
    let tariff = spec_tariff();
    let wrong: Vec<String> = EXAMPLES
        .iter()
        .filter_map(|example| {
            let fee = fee_between(
                &tariff,
                example.entered,
                example.exited,
                example.plate_color,
            );
            (fee != example.fee)
                .then(|| format!("{}: {fee}, expected {}", example.name, example.fee))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_pass_holder_pays_nothing() {
    // Without the pass: 16 units, 5.00 + 15 × 3.00 = 50.00, capped at 40.00, × 0.5 (green) = 20.00.
    let tariff = spec_tariff();
    let zone = tariff.time_zone();
    let stay = Stay {
        entered_at: local(zone, "2026-03-02 10:00"),
        exited_at: local(zone, "2026-03-02 18:00"),
        plate_color: Some(Green),
        pass_holder: true,
    };
    assert_eq!(tariff.fee(&stay).unwrap().to_string(), "0.00");
    let without_pass = Stay {
        pass_holder: false,
        ..stay
    };
    assert_eq!(tariff.fee(&without_pass).unwrap().to_string(), "20.00");
}

/// The SPEC example with a first unit price of 5.01, so that halves of sums end in half a cent.
fn odd_cents_tariff() -> Tariff {
    let mut value = spec_json();
    value["bands"][0]["first_unit_price"] = json!("5.01");
    value["plate_color_multipliers"]["white"] = json!("0.333");
    tariff(value)
}

#[test]
fn a_green_plate_with_a_half_cent_rounds_half_away_from_zero() {
    let tariff = odd_cents_tariff();
    // 1 unit: 5.01 × 0.5 = 2.505 → 2.51 (half away from zero; half to even would give 2.50).
    assert_eq!(
        fee_between(&tariff, "2026-03-02 10:00", "2026-03-02 10:16", Some(Green)),
        "2.51"
    );
    // 2 units: (5.01 + 3.00) × 0.5 = 4.005 → 4.01.
    assert_eq!(
        fee_between(&tariff, "2026-03-02 10:00", "2026-03-02 10:46", Some(Green)),
        "4.01"
    );
    assert_eq!(
        fee_between(&tariff, "2026-03-02 10:00", "2026-03-02 10:46", None),
        "8.01"
    );
}

#[test]
fn the_fee_is_rounded_once_on_the_sum() {
    // 3 night units: 3 × 1.00 = 3.00, × 0.333 = 0.999 → 1.00. Rounding each unit (0.333 → 0.33)
    // would give 0.99.
    let tariff = odd_cents_tariff();
    assert_eq!(
        fee_between(
            &tariff,
            "2026-03-02 22:00",
            "2026-03-02 23:30",
            Some(PlateColor::White)
        ),
        "1.00"
    );
}

#[test]
fn without_a_daily_cap_each_night_is_capped_on_its_own() {
    // 2 March 21:00…23:30 (6 units) and 3 March 00:00…06:30 (14): first night, 20 × 1.00 → 5.00.
    // 3 March 07:00…20:30: 28 × 3.00 = 84.00 (the stay's first unit was at night). Second night
    // 21:00…06:30: 5.00. 5 + 84 + 5 = 94.00.
    let mut value = spec_json();
    value.as_object_mut().unwrap().remove("daily_cap");
    let tariff = tariff(value);
    assert_eq!(
        fee_between(&tariff, "2026-03-02 21:00", "2026-03-04 07:00", None),
        "94.00"
    );
}

#[test]
fn thirty_days_of_quarter_hours_hit_every_cap() {
    // 2,880 units of 15 minutes. 2 March: 07:00 5.00, eleven × 3.00, 09:45 lowered to 2.00 → 40.00,
    // the rest 0 (the night from 21:00 is charged 0). 3 to 31 March, each: 00:00…00:45 five × 1.00
    // (the night's cap), then 07:00… eleven × 3.00 and one 2.00 → 40.00. 1 April 00:00…06:45:
    // 5.00. 40 + 29 × 40 + 5 = 1,205.00.
    let mut value = spec_json();
    value["unit_minutes"] = json!(15);
    let tariff = tariff(value);
    assert_eq!(
        fee_between(&tariff, "2026-03-02 07:00", "2026-04-01 07:00", None),
        "1205.00"
    );
}
