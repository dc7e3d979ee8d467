//! Properties every fee must have, over random tariffs (time zones with DST, odd units, wrapping
//! bands, caps, free days, multipliers) and random stays around the spring DST changes of 2026.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use parkflow_protocol::PlateColor;
use proptest::prelude::*;
use rust_decimal::Decimal;

use super::{Band, Stay, Tariff, TariffDefinition, TimeOfDay};
use crate::money::{Currency, Money};

const ZONES: &[&str] = &[
    "Asia/Shanghai",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
];

fn cents(max: i64) -> impl Strategy<Value = Decimal> {
    (0..=max).prop_map(|cents| Decimal::new(cents, 2))
}

/// Bands cut at 1 to 4 random minutes; the last wraps midnight (one cut: a whole-day band).
fn bands() -> impl Strategy<Value = Vec<Band>> {
    prop::collection::btree_set(0..1440_u16, 1..=4).prop_flat_map(|cuts| {
        let cuts: Vec<u16> = cuts.into_iter().collect();
        let prices = (
            cents(1000),
            prop::option::of(cents(1000)),
            prop::option::of(cents(2000)),
        );
        prop::collection::vec(prices, cuts.len()).prop_map(move |prices| {
            let time = TimeOfDay::from_minutes_wrapping;
            prices
                .into_iter()
                .enumerate()
                .map(|(index, (unit_price, first_unit_price, cap))| Band {
                    from: time(cuts[index]),
                    to: time(cuts[(index + 1) % cuts.len()]),
                    unit_price,
                    first_unit_price,
                    cap,
                })
                .collect()
        })
    })
}

fn tariffs() -> impl Strategy<Value = Tariff> {
    let start = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let free_days = prop::collection::vec(0..60_u64, 0..4).prop_map(move |offsets| {
        offsets
            .into_iter()
            .map(|days| start + chrono::Days::new(days))
            .collect()
    });
    let multipliers = prop::collection::btree_map(
        prop::sample::select(PlateColor::ALL.to_vec()),
        (0..=2000_i64).prop_map(|thousandths| Decimal::new(thousandths, 3)),
        0..3,
    );
    (
        prop::sample::select(ZONES),
        0..=60_u32,
        prop_oneof![Just(15_u32), Just(30), Just(60), 1..=1440_u32],
        bands(),
        prop::option::of(cents(10_000)),
        prop::option::of(free_days),
        prop::option::of(multipliers),
    )
        .prop_map(
            |(zone, grace_minutes, unit_minutes, bands, daily_cap, free_days, multipliers)| {
                TariffDefinition {
                    currency: Currency::CNY,
                    time_zone: zone.to_owned(),
                    grace_minutes,
                    unit_minutes,
                    bands,
                    daily_cap,
                    free_days,
                    plate_color_multipliers: multipliers,
                    effective_from: "2026-01-01T00:00:00Z".parse().unwrap(),
                }
                .validate()
                .unwrap()
            },
        )
}

const MS_PER_DAY: i64 = 24 * 60 * 60 * 1000;

/// Stays entering within 45 days from 1 March 2026 (millisecond precision), up to 5 days long.
fn stays() -> impl Strategy<Value = Stay> {
    let origin: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    (
        0..45 * MS_PER_DAY,
        0..=5 * MS_PER_DAY,
        prop::option::of(prop::sample::select(PlateColor::ALL.to_vec())),
    )
        .prop_map(move |(entry, length, plate_color)| {
            let entered_at = origin + TimeDelta::milliseconds(entry);
            Stay {
                entered_at,
                exited_at: entered_at + TimeDelta::milliseconds(length),
                plate_color,
                pass_holder: false,
            }
        })
}

fn multiplier(tariff: &Tariff, plate_color: Option<PlateColor>) -> Decimal {
    let multipliers = tariff.definition().plate_color_multipliers.as_ref();
    plate_color
        .and_then(|color| multipliers?.get(&color).copied())
        .unwrap_or(Decimal::ONE)
}

fn unit_count(tariff: &Tariff, stay: &Stay) -> i64 {
    let stayed = (stay.exited_at - stay.entered_at).num_milliseconds();
    let unit = i64::from(tariff.definition().unit_minutes) * 60 * 1000;
    (stayed + unit - 1) / unit
}

proptest! {
    #[test]
    fn fees_are_never_negative(tariff in tariffs(), stay in stays()) {
        let fee = tariff.fee(&stay).unwrap();
        prop_assert!(!fee.amount().is_sign_negative() || fee.is_zero(), "{fee}");
        prop_assert_eq!(fee.currency(), Currency::CNY);
    }

    #[test]
    fn fees_never_exceed_the_units_at_the_highest_price(tariff in tariffs(), stay in stays()) {
        let highest = tariff
            .definition()
            .bands
            .iter()
            .flat_map(|band| [Some(band.unit_price), band.first_unit_price])
            .flatten()
            .max()
            .unwrap();
        let bound = Decimal::from(unit_count(&tariff, &stay)) * highest * multiplier(&tariff, stay.plate_color);
        let fee = tariff.fee(&stay).unwrap();
        prop_assert!(fee.amount() <= Money::rounded(bound, Currency::CNY).amount(), "{fee} > {bound}");
    }

    #[test]
    fn fees_never_exceed_the_daily_cap_per_local_day_touched(tariff in tariffs(), stay in stays()) {
        let Some(daily_cap) = tariff.definition().daily_cap else {
            return Ok(());
        };
        let zone = tariff.time_zone();
        let days = stay.exited_at.with_timezone(&zone).date_naive()
            - stay.entered_at.with_timezone(&zone).date_naive();
        let bound = Decimal::from(days.num_days() + 1) * daily_cap * multiplier(&tariff, stay.plate_color);
        let fee = tariff.fee(&stay).unwrap();
        prop_assert!(fee.amount() <= Money::rounded(bound, Currency::CNY).amount(), "{fee} > {bound}");
    }

    #[test]
    fn fees_never_decrease_as_the_exit_moves_later(
        tariff in tariffs(),
        stay in stays(),
        later in 0..=2 * MS_PER_DAY,
    ) {
        let longer = Stay { exited_at: stay.exited_at + TimeDelta::milliseconds(later), ..stay };
        let (fee, longer_fee) = (tariff.fee(&stay).unwrap(), tariff.fee(&longer).unwrap());
        prop_assert!(fee.amount() <= longer_fee.amount(), "{fee} then {longer_fee}");
    }

    #[test]
    fn fees_are_deterministic_and_survive_a_json_round_trip(tariff in tariffs(), stay in stays()) {
        let json = serde_json::to_string(&tariff).unwrap();
        let reread: Tariff = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&reread, &tariff);
        prop_assert_eq!(tariff.fee(&stay).unwrap(), tariff.fee(&stay).unwrap());
        prop_assert_eq!(reread.fee(&stay).unwrap(), tariff.fee(&stay).unwrap());
    }

    #[test]
    fn pass_holders_and_stays_within_grace_pay_nothing(
        tariff in tariffs(),
        stay in stays(),
        within in 0..=1000_i64,
    ) {
        let pass = Stay { pass_holder: true, ..stay };
        prop_assert!(tariff.fee(&pass).unwrap().is_zero());

        let grace = i64::from(tariff.definition().grace_minutes) * 60 * 1000;
        let short = Stay {
            exited_at: stay.entered_at + TimeDelta::milliseconds(grace * within / 1000),
            ..stay
        };
        prop_assert!(tariff.fee(&short).unwrap().is_zero());
    }
}
