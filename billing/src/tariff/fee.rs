//! The fee of a stay under a tariff, exactly as SPEC §4 defines it in five steps. Units are cut in
//! real (UTC) time from the entry; each unit's band, free day and calendar day come from its start
//! read on the lot's wall clock, so days of 23 or 25 hours are priced as they are lived.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Timelike, Utc};
use parkflow_protocol::PlateColor;
use rust_decimal::Decimal;

use super::{Band, Tariff, TariffError};
use crate::money::Money;

/// The most charging units one stay may have (a year of one-minute units, 28 years of quarter
/// hours): the walk is linear in units, and this bounds the work one quote can ask for.
pub const MAX_UNITS: u64 = 1_000_000;

/// One stay to price: `[entered_at, exited_at)`, with what the fee depends on besides time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stay {
    pub entered_at: DateTime<Utc>,
    pub exited_at: DateTime<Utc>,
    pub plate_color: Option<PlateColor>,
    /// A pass (monthly, whitelist) for the lot: the stay is free.
    pub pass_holder: bool,
}

impl Tariff {
    /// The fee of `stay`, SPEC §4:
    /// 1. a stay no longer than the grace period, or a pass holder's, costs 0;
    /// 2. otherwise the stay is cut into units of `unit_minutes` from the entry, the last partial
    ///    unit counting whole;
    /// 3. each unit's base price is its band's (the band in force at its local start):
    ///    `first_unit_price` for the stay's first unit when the band has one, else `unit_price`;
    ///    0 when it starts on a free day;
    /// 4. its charge is the base lowered so that one occurrence of the band (one night, say)
    ///    costs at most the band's `cap`, then so that the units starting on one local day cost
    ///    at most `daily_cap`;
    /// 5. the fee is the sum of the charges times the plate colour's multiplier, rounded once.
    pub fn fee(&self, stay: &Stay) -> Result<Money, TariffError> {
        for at in [stay.entered_at, stay.exited_at] {
            if !(1..=9999).contains(&at.year()) {
                return Err(TariffError::TimeOutOfRange(at));
            }
        }
        if stay.exited_at < stay.entered_at {
            return Err(TariffError::ExitBeforeEntry {
                entered_at: stay.entered_at,
                exited_at: stay.exited_at,
            });
        }
        let stayed = stay.exited_at - stay.entered_at;
        let grace = TimeDelta::minutes(i64::from(self.definition.grace_minutes));
        if stay.pass_holder || stayed <= grace {
            return Ok(Money::zero(self.currency()));
        }
        let units = self.units_in(stayed)?;
        let charges = self.sum_of_charges(stay.entered_at, units)?;
        let fee = charges
            .checked_mul(self.multiplier(stay.plate_color))
            .ok_or(TariffError::FeeOverflow)?;
        Ok(Money::rounded(fee, self.currency()))
    }

    /// The fee a driver without a pass would pay: what `GET /v1/lots/{lot}/quote` answers.
    pub fn quote(
        &self,
        entered_at: DateTime<Utc>,
        exited_at: DateTime<Utc>,
        plate_color: Option<PlateColor>,
    ) -> Result<Money, TariffError> {
        self.fee(&Stay {
            entered_at,
            exited_at,
            plate_color,
            pass_holder: false,
        })
    }

    fn unit(&self) -> TimeDelta {
        TimeDelta::minutes(i64::from(self.definition.unit_minutes))
    }

    /// The number of units in a stay of `stayed`, the last partial one counting whole.
    fn units_in(&self, stayed: TimeDelta) -> Result<u64, TariffError> {
        let too_long = TariffError::StayTooLong {
            max_units: MAX_UNITS,
        };
        let stayed = stayed
            .num_nanoseconds()
            .and_then(|nanos| u64::try_from(nanos).ok())
            .ok_or(too_long.clone())?;
        let unit = u64::from(self.definition.unit_minutes) * 60 * 1_000_000_000;
        let units = stayed.div_ceil(unit);
        if units > MAX_UNITS {
            return Err(too_long);
        }
        Ok(units)
    }

    /// Steps 2 to 4: walks the units in order and sums their charges.
    fn sum_of_charges(
        &self,
        entered_at: DateTime<Utc>,
        units: u64,
    ) -> Result<Decimal, TariffError> {
        let unit = self.unit();
        let mut spent = Spent::default();
        let mut sum = Decimal::ZERO;
        let mut start = entered_at;
        for index in 0..units {
            if index > 0 {
                // Every unit starts before the exit, itself a valid instant: this cannot overflow.
                start += unit;
            }
            let local = start.with_timezone(&self.time_zone).naive_local();
            let day = local.date();
            // A wall-clock reading, so below 1440 (even on DST days).
            let minute = (local.hour() * 60 + local.minute()) as u16;
            let (band_index, band) = self.band_at(minute);

            let base = if self.free_days.contains(&day) {
                Decimal::ZERO
            } else if index == 0 {
                band.first_unit_price.unwrap_or(band.unit_price)
            } else {
                band.unit_price
            };
            let occurrence = Occurrence {
                band: band_index,
                began_on: occurrence_start_day(day, minute, band),
            };
            let charge = spent.charge(base, band.cap, occurrence, self.definition.daily_cap, day);
            sum = sum.checked_add(charge).ok_or(TariffError::FeeOverflow)?;
        }
        Ok(sum)
    }

    /// Step 5's factor: the plate colour's multiplier, 1 when the colour or its multiplier is absent.
    fn multiplier(&self, plate_color: Option<PlateColor>) -> Decimal {
        plate_color
            .zip(self.definition.plate_color_multipliers.as_ref())
            .and_then(|(color, multipliers)| multipliers.get(&color).copied())
            .unwrap_or(Decimal::ONE)
    }
}

/// One continuous occurrence of a band: the band, and the local day on whose `from` it began
/// (as days since the common era, so the previous day needs no fallible date arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Occurrence {
    band: usize,
    began_on: i32,
}

/// The day the occurrence of `band` in force at local `minute` of `day` began: that day if the
/// clock has passed the band's `from`, else the day before (a band wrapping midnight, such as
/// 21:00–07:00 at 03:00, began the evening before).
fn occurrence_start_day(day: NaiveDate, minute: u16, band: &Band) -> i32 {
    let day = day.num_days_from_ce();
    if minute >= band.from.minutes() {
        day
    } else {
        day - 1
    }
}

/// What the units walked so far were charged, per band occurrence and per local day: the running
/// totals that step 4's caps lower charges against. Kept in maps, not as "the current night", so
/// that a wall clock turned back (autumn DST) returning to an earlier occurrence or day is still
/// capped as one. Totals are kept only where there is a cap, so each stays bounded by its cap.
#[derive(Default)]
struct Spent {
    per_occurrence: HashMap<Occurrence, Decimal>,
    per_day: HashMap<NaiveDate, Decimal>,
}

impl Spent {
    /// The charge of a unit of price `base`, recorded against its occurrence and day. Every total
    /// stays within its cap, so `cap - total` is never negative and neither is a charge.
    fn charge(
        &mut self,
        base: Decimal,
        band_cap: Option<Decimal>,
        occurrence: Occurrence,
        daily_cap: Option<Decimal>,
        day: NaiveDate,
    ) -> Decimal {
        let mut charge = base;
        if let Some(cap) = band_cap {
            let total = self.per_occurrence.entry(occurrence).or_default();
            charge = charge.min(cap - *total);
        }
        if let Some(cap) = daily_cap {
            let total = self.per_day.entry(day).or_default();
            charge = charge.min(cap - *total);
            *total += charge;
        }
        if band_cap.is_some() {
            *self.per_occurrence.entry(occurrence).or_default() += charge;
        }
        charge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::fixtures::{fee_between, flat, local, spec_tariff};
    use chrono_tz::Europe::Berlin;
    use parkflow_protocol::PlateColor::Green;
    use serde_json::json;

    fn stay(entered_at: DateTime<Utc>, exited_at: DateTime<Utc>) -> Stay {
        Stay {
            entered_at,
            exited_at,
            plate_color: None,
            pass_holder: false,
        }
    }

    #[test]
    fn an_exit_before_the_entry_is_an_error() {
        let tariff = spec_tariff();
        let entered_at = local(tariff.time_zone(), "2026-03-02 10:00");
        let exited_at = local(tariff.time_zone(), "2026-03-02 09:59");
        let error = tariff.fee(&stay(entered_at, exited_at)).unwrap_err();
        assert_eq!(
            error,
            TariffError::ExitBeforeEntry {
                entered_at,
                exited_at
            }
        );
        assert_eq!(
            error.to_string(),
            "the exit at 2026-03-02 01:59:00 UTC is before the entry at 2026-03-02 02:00:00 UTC"
        );
    }

    #[test]
    fn a_zero_length_stay_is_free_even_without_grace() {
        let tariff = flat(
            "EUR",
            "Europe/Berlin",
            60,
            json!([{"from": "00:00", "to": "00:00", "unit_price": "2.00"}]),
        );
        let at = local(Berlin, "2026-06-01 10:00");
        assert!(tariff.fee(&stay(at, at)).unwrap().is_zero());
        let one_ms_later = at + TimeDelta::milliseconds(1);
        assert_eq!(
            tariff.fee(&stay(at, one_ms_later)).unwrap().to_string(),
            "2.00"
        );
    }

    #[test]
    fn a_whole_day_band_is_capped_from_its_start_to_its_start() {
        // One band 10:00–10:00 at 1.00 a hour, cap 3.00: each occurrence runs from 10:00 to 10:00.
        // 08:00 to 14:00 local: 08:00, 09:00 (the occurrence begun the day before) 2.00; 10:00 to
        // 13:00 (a new occurrence) 4 × 1.00 capped at 3.00. 5.00.
        let tariff = flat(
            "CNY",
            "Asia/Shanghai",
            60,
            json!([{"from": "10:00", "to": "10:00", "unit_price": "1.00", "cap": "3.00"}]),
        );
        assert_eq!(
            fee_between(&tariff, "2026-03-02 08:00", "2026-03-02 14:00", None),
            "5.00"
        );
    }

    #[test]
    fn a_stay_with_too_many_units_is_refused() {
        let tariff = flat(
            "EUR",
            "Europe/Berlin",
            1,
            json!([{"from": "00:00", "to": "00:00", "unit_price": "0.01"}]),
        );
        let entered_at: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let minutes = i64::try_from(MAX_UNITS).unwrap() + 1;
        let fee = tariff.fee(&stay(entered_at, entered_at + TimeDelta::minutes(minutes)));
        assert_eq!(
            fee,
            Err(TariffError::StayTooLong {
                max_units: MAX_UNITS
            })
        );
        let fee = tariff.fee(&stay(entered_at, entered_at + TimeDelta::days(365 * 300)));
        assert_eq!(
            fee,
            Err(TariffError::StayTooLong {
                max_units: MAX_UNITS
            })
        );
    }

    #[test]
    fn instants_outside_years_1_to_9999_are_refused() {
        let tariff = spec_tariff();
        let entered_at: DateTime<Utc> = "9999-12-31T23:00:00Z".parse().unwrap();
        let exited_at = entered_at + TimeDelta::hours(2);
        assert_eq!(
            tariff.fee(&stay(entered_at, exited_at)),
            Err(TariffError::TimeOutOfRange(exited_at))
        );
    }

    #[test]
    fn a_quote_is_the_fee_without_a_pass() {
        let tariff = spec_tariff();
        let zone = tariff.time_zone();
        let (entered_at, exited_at) = (
            local(zone, "2026-03-02 10:00"),
            local(zone, "2026-03-02 11:01"),
        );
        let quote = tariff.quote(entered_at, exited_at, Some(Green)).unwrap();
        assert_eq!(quote.to_string(), "5.50");
    }
}
