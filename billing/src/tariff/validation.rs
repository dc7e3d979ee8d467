//! Validation of a [`TariffDefinition`] into a [`Tariff`]: what the fields must mean together
//! (a known time zone, a sane unit, bands tiling the day, amounts the currency can carry).

use chrono_tz::Tz;
use rust_decimal::Decimal;

use super::time_of_day::MINUTES_PER_DAY;
use super::{Band, Tariff, TariffDefinition, TariffError, TimeOfDay};
use crate::money::Currency;

impl TariffDefinition {
    /// Checks the definition and builds the [`Tariff`] that prices stays with it:
    /// - `time_zone` is an IANA name known to the time zone database;
    /// - `unit_minutes` is between 1 and 1440;
    /// - the bands cover every minute of the local day exactly once;
    /// - prices and caps are not negative and have no more decimals than the currency's minor
    ///   unit; multipliers are not negative (any number of decimals).
    ///
    /// The currency code, times of day and free days were checked when deserializing.
    pub fn validate(self) -> Result<Tariff, TariffError> {
        let time_zone: Tz = self
            .time_zone
            .parse()
            .map_err(|_| TariffError::UnknownTimeZone(self.time_zone.clone()))?;
        if !(1..=u32::from(MINUTES_PER_DAY)).contains(&self.unit_minutes) {
            return Err(TariffError::UnitMinutesOutOfRange(self.unit_minutes));
        }
        let segments = tile_the_day(&self.bands)?;
        self.check_amounts()?;
        let free_days = self.free_days.iter().flatten().copied().collect();
        Ok(Tariff {
            definition: self,
            time_zone,
            segments,
            free_days,
        })
    }

    fn check_amounts(&self) -> Result<(), TariffError> {
        let currency = self.currency;
        for (index, band) in self.bands.iter().enumerate() {
            let field = |name: &str| format!("bands[{index}].{name}");
            check_price(field("unit_price"), band.unit_price, currency)?;
            if let Some(price) = band.first_unit_price {
                check_price(field("first_unit_price"), price, currency)?;
            }
            if let Some(cap) = band.cap {
                check_price(field("cap"), cap, currency)?;
            }
        }
        if let Some(cap) = self.daily_cap {
            check_price("daily_cap".to_owned(), cap, currency)?;
        }
        for (color, &multiplier) in self.plate_color_multipliers.iter().flatten() {
            check_not_negative(format!("plate_color_multipliers.{color}"), multiplier)?;
        }
        Ok(())
    }
}

/// Assigns each minute of the local day to the one band covering it and returns the runs of
/// minutes with the same band, as `(first minute, band index)` sorted by minute from 00:00.
fn tile_the_day(bands: &[Band]) -> Result<Box<[(u16, usize)]>, TariffError> {
    if bands.is_empty() {
        return Err(TariffError::NoBands);
    }
    let mut owner: Vec<Option<usize>> = vec![None; usize::from(MINUTES_PER_DAY)];
    for (index, band) in bands.iter().enumerate() {
        for minute in band.minutes() {
            let slot = &mut owner[usize::from(minute)];
            if let Some(first) = *slot {
                return Err(TariffError::BandsOverlap {
                    first,
                    second: index,
                    at: TimeOfDay::from_minutes_wrapping(minute),
                });
            }
            *slot = Some(index);
        }
    }

    let is_gap_start = |minute: u16| {
        let before = (minute + MINUTES_PER_DAY - 1) % MINUTES_PER_DAY;
        owner[usize::from(minute)].is_none() && owner[usize::from(before)].is_some()
    };
    if let Some(start) = (0..MINUTES_PER_DAY).find(|&minute| is_gap_start(minute)) {
        return Err(TariffError::BandsLeaveGap {
            at: TimeOfDay::from_minutes_wrapping(start),
        });
    }

    // Every minute has its band now (some minute is covered, so a gap would have a start).
    let mut segments: Vec<(u16, usize)> = Vec::new();
    for (minute, index) in (0..MINUTES_PER_DAY).zip(owner.into_iter().flatten()) {
        if segments.last().is_none_or(|&(_, last)| last != index) {
            segments.push((minute, index));
        }
    }
    Ok(segments.into_boxed_slice())
}

fn check_not_negative(field: String, amount: Decimal) -> Result<(), TariffError> {
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(TariffError::NegativeAmount { field, amount });
    }
    Ok(())
}

fn check_price(field: String, amount: Decimal, currency: Currency) -> Result<(), TariffError> {
    check_not_negative(field.clone(), amount)?;
    let digits = currency.minor_digits();
    if amount.scale() > digits {
        return Err(TariffError::TooManyDecimals {
            field,
            amount,
            currency,
            digits,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::fixtures::{spec_definition, spec_json};
    use serde_json::json;

    fn with_bands(bands: serde_json::Value) -> TariffDefinition {
        let mut value = spec_json();
        value["bands"] = bands;
        serde_json::from_value(value).unwrap()
    }

    fn band(from: &str, to: &str) -> serde_json::Value {
        json!({"from": from, "to": to, "unit_price": "1.00"})
    }

    #[test]
    fn spec_example_is_valid() {
        let tariff = spec_definition().validate().unwrap();
        assert_eq!(tariff.time_zone(), chrono_tz::Asia::Shanghai);
        assert_eq!(tariff.definition(), &spec_definition());
    }

    #[test]
    fn unknown_time_zones_are_refused() {
        for zone in ["Asia/Hangzhou", "asia/shanghai", "UTC+8", ""] {
            let definition = TariffDefinition {
                time_zone: zone.to_owned(),
                ..spec_definition()
            };
            assert_eq!(
                definition.validate(),
                Err(TariffError::UnknownTimeZone(zone.to_owned()))
            );
        }
    }

    #[test]
    fn unit_minutes_must_be_between_one_and_a_day() {
        for (unit_minutes, valid) in [
            (0, false),
            (1, true),
            (15, true),
            (1440, true),
            (1441, false),
        ] {
            let definition = TariffDefinition {
                unit_minutes,
                ..spec_definition()
            };
            match definition.validate() {
                Ok(_) => assert!(valid, "{unit_minutes}"),
                Err(error) => {
                    assert!(!valid, "{unit_minutes}");
                    assert_eq!(error, TariffError::UnitMinutesOutOfRange(unit_minutes));
                }
            }
        }
    }

    #[test]
    fn a_tariff_needs_bands() {
        assert_eq!(with_bands(json!([])).validate(), Err(TariffError::NoBands));
    }

    #[test]
    fn overlapping_bands_are_refused_where_they_meet() {
        let error = with_bands(json!([band("07:00", "21:00"), band("20:00", "07:00")])).validate();
        assert_eq!(
            error,
            Err(TariffError::BandsOverlap {
                first: 0,
                second: 1,
                at: "20:00".parse().unwrap()
            })
        );
        let error = with_bands(json!([band("00:00", "00:00"), band("12:00", "13:00")])).validate();
        assert!(
            matches!(error, Err(TariffError::BandsOverlap { at, .. }) if at.to_string() == "12:00")
        );
    }

    #[test]
    fn bands_leaving_a_gap_are_refused_at_the_gap_start() {
        let error = with_bands(json!([band("07:00", "21:00"), band("22:00", "07:00")])).validate();
        assert_eq!(
            error,
            Err(TariffError::BandsLeaveGap {
                at: "21:00".parse().unwrap()
            })
        );
        let error = with_bands(json!([band("01:00", "23:00")])).validate();
        assert_eq!(
            error.unwrap_err().to_string(),
            "the bands leave a gap starting at 23:00"
        );
    }

    #[test]
    fn bands_may_wrap_midnight_or_cover_the_whole_day() {
        for bands in [
            json!([band("00:00", "00:00")]),
            json!([band("06:00", "06:00")]),
            json!([band("21:00", "07:00"), band("07:00", "21:00")]),
            json!([
                band("00:00", "08:00"),
                band("08:00", "18:00"),
                band("18:00", "00:00")
            ]),
            json!([band("23:59", "00:00"), band("00:00", "23:59")]),
        ] {
            assert!(with_bands(bands.clone()).validate().is_ok(), "{bands}");
        }
    }

    #[test]
    fn the_day_is_cut_into_runs_of_one_band() {
        let tariff = spec_definition().validate().unwrap();
        assert_eq!(&*tariff.segments, &[(0, 1), (420, 0), (1260, 1)]);
        assert_eq!(tariff.band_at(0).0, 1);
        assert_eq!(tariff.band_at(419).0, 1);
        assert_eq!(tariff.band_at(420).0, 0);
        assert_eq!(tariff.band_at(1259).0, 0);
        assert_eq!(tariff.band_at(1439).0, 1);
    }

    #[test]
    fn negative_amounts_are_refused() {
        let mut value = spec_json();
        value["bands"][1]["cap"] = json!("-5.00");
        let definition: TariffDefinition = serde_json::from_value(value).unwrap();
        assert_eq!(
            definition.validate().unwrap_err().to_string(),
            "bands[1].cap must not be negative, got -5.00"
        );

        let mut value = spec_json();
        value["plate_color_multipliers"]["green"] = json!("-0.5");
        let definition: TariffDefinition = serde_json::from_value(value).unwrap();
        assert!(matches!(
            definition.validate(),
            Err(TariffError::NegativeAmount { field, .. }) if field == "plate_color_multipliers.green"
        ));
    }

    #[test]
    fn prices_may_not_have_more_decimals_than_the_currency() {
        let mut value = spec_json();
        value["daily_cap"] = json!("40.001");
        let definition: TariffDefinition = serde_json::from_value(value).unwrap();
        assert_eq!(
            definition.validate().unwrap_err().to_string(),
            "daily_cap has more decimals than CNY allows (2), got 40.001"
        );

        let mut value = spec_json();
        value["currency"] = json!("JPY");
        let definition: TariffDefinition = serde_json::from_value(value).unwrap();
        assert!(matches!(
            definition.validate(),
            Err(TariffError::TooManyDecimals { field, digits: 0, .. }) if field == "bands[0].unit_price"
        ));

        let mut value = spec_json();
        value["currency"] = json!("KWD");
        value["plate_color_multipliers"]["green"] = json!("0.333333");
        let definition: TariffDefinition = serde_json::from_value(value).unwrap();
        assert!(definition.validate().is_ok());
    }

    #[test]
    fn deserializing_a_tariff_validates_it() {
        let mut value = spec_json();
        value["unit_minutes"] = json!(0);
        let error = serde_json::from_value::<Tariff>(value).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("unit_minutes must be between 1 and 1440")
        );

        let tariff: Tariff = serde_json::from_value(spec_json()).unwrap();
        assert_eq!(serde_json::to_value(&tariff).unwrap(), spec_json());
    }
}
