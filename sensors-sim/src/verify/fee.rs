//! An independent reading of SPEC §4's fee definition, written from the specification alone, so
//! that `--verify` can check the platform's fees against a second implementation: it takes the
//! tariff JSON as `GET /v1/lots/{lot}/tariff` serves it and walks the stay unit by unit.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;

/// A tariff as the API serves it (SPEC §4 field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Tariff {
    pub currency: String,
    #[serde(deserialize_with = "zone")]
    pub time_zone: Tz,
    pub grace_minutes: i64,
    pub unit_minutes: i64,
    pub bands: Vec<Band>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub daily_cap: Option<Decimal>,
    #[serde(default)]
    pub free_days: Vec<NaiveDate>,
    #[serde(default)]
    pub plate_color_multipliers: HashMap<String, Decimal>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Band {
    #[serde(with = "hh_mm")]
    pub from: NaiveTime,
    #[serde(with = "hh_mm")]
    pub to: NaiveTime,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub first_unit_price: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub cap: Option<Decimal>,
}

fn zone<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

mod hh_mm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(d)?;
        NaiveTime::parse_from_str(&text, "%H:%M").map_err(serde::de::Error::custom)
    }
}

impl Band {
    fn wraps(&self) -> bool {
        self.to <= self.from
    }

    fn contains(&self, t: NaiveTime) -> bool {
        if self.wraps() {
            t >= self.from || t < self.to
        } else {
            t >= self.from && t < self.to
        }
    }
}

/// Minor-unit digits of a currency (ISO 4217; the common exceptions to two).
fn minor_digits(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
        _ => 2,
    }
}

impl Tariff {
    /// The fee of the stay `[entry, exit)` for a car with `plate_color`, rounded to the currency's
    /// minor unit. `None` if no band covers a unit's start (an invalid tariff).
    pub fn fee(
        &self,
        entry: DateTime<Utc>,
        exit: DateTime<Utc>,
        plate_color: Option<&str>,
        pass_holder: bool,
    ) -> Option<Decimal> {
        let stay = exit - entry;
        if pass_holder || stay <= chrono::Duration::minutes(self.grace_minutes) {
            return Some(Decimal::ZERO);
        }
        let unit = chrono::Duration::minutes(self.unit_minutes);
        let mut spent_in_occurrence: HashMap<(usize, NaiveDate), Decimal> = HashMap::new();
        let mut spent_on_day: HashMap<NaiveDate, Decimal> = HashMap::new();
        let mut total = Decimal::ZERO;
        let mut start = entry;
        let mut first = true;
        while start < exit {
            let local = start.with_timezone(&self.time_zone);
            let (day, time) = (local.date_naive(), local.time());
            let time = NaiveTime::from_hms_opt(time.hour(), time.minute(), time.second())?;
            let (index, band) = self
                .bands
                .iter()
                .enumerate()
                .find(|(_, band)| band.contains(time))?;
            // The occurrence is named by the local date on which it began.
            let began = if band.wraps() && time < band.to {
                day.pred_opt()?
            } else {
                day
            };
            let mut charge = if self.free_days.contains(&day) {
                Decimal::ZERO
            } else if first {
                band.first_unit_price.unwrap_or(band.unit_price)
            } else {
                band.unit_price
            };
            let occurrence = spent_in_occurrence.entry((index, began)).or_default();
            if let Some(cap) = band.cap {
                charge = charge.min((cap - *occurrence).max(Decimal::ZERO));
            }
            let today = spent_on_day.entry(day).or_default();
            if let Some(cap) = self.daily_cap {
                charge = charge.min((cap - *today).max(Decimal::ZERO));
            }
            *occurrence += charge;
            *today += charge;
            total += charge;
            first = false;
            start += unit;
        }
        let multiplier = plate_color
            .and_then(|c| self.plate_color_multipliers.get(c))
            .copied()
            .unwrap_or(Decimal::ONE);
        Some((total * multiplier).round_dp_with_strategy(
            minor_digits(&self.currency),
            RoundingStrategy::MidpointAwayFromZero,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_tariff() -> Tariff {
        serde_json::from_str(
            r#"{"currency": "CNY", "time_zone": "Asia/Shanghai", "grace_minutes": 15, "unit_minutes": 30,
                "bands": [{"from": "07:00", "to": "21:00", "unit_price": "3.00", "first_unit_price": "5.00"},
                          {"from": "21:00", "to": "07:00", "unit_price": "1.00", "cap": "5.00"}],
                "daily_cap": "40.00", "free_days": ["2026-10-01"], "plate_color_multipliers": {"green": "0.5"},
                "effective_from": "2026-01-01T00:00:00Z"}"#,
        )
        .unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The fee, with as many decimals as the amount needs (`0`, `11`, `5.5`).
    fn fee(entry: &str, exit: &str, color: Option<&str>) -> String {
        spec_tariff()
            .fee(at(entry), at(exit), color, false)
            .unwrap()
            .normalize()
            .to_string()
    }

    // Worked by hand from SPEC §4 (Shanghai is UTC+8).
    #[test]
    fn stays_priced_by_hand_agree() {
        // 10 minutes: within grace.
        assert_eq!(
            fee("2026-03-02T02:00:00Z", "2026-03-02T02:10:00Z", None),
            "0"
        );
        // 10:00–11:10 local: 3 units, 5 + 3 + 3.
        assert_eq!(
            fee("2026-03-02T02:00:00Z", "2026-03-02T03:10:00Z", None),
            "11"
        );
        // The same for a green plate: half.
        assert_eq!(
            fee(
                "2026-03-02T02:00:00Z",
                "2026-03-02T03:10:00Z",
                Some("green")
            ),
            "5.5"
        );
        // 20:00–23:00 local: 5 + 3 (day), then 4 night units at 1.00 = 12.
        assert_eq!(
            fee("2026-03-02T12:00:00Z", "2026-03-02T15:00:00Z", None),
            "12"
        );
        // 21:00–07:00 local: 20 night units at 1.00, capped at 5 for the night.
        assert_eq!(
            fee("2026-03-02T13:00:00Z", "2026-03-02T23:00:00Z", None),
            "5"
        );
        // 07:00–21:00 local: 5 + 27 × 3 = 86, capped at 40 for the day.
        assert_eq!(
            fee("2026-03-02T23:00:00Z", "2026-03-03T13:00:00Z", None),
            "40"
        );
        // 1 October is free.
        assert_eq!(
            fee("2026-10-01T02:00:00Z", "2026-10-01T04:00:00Z", None),
            "0"
        );
    }

    #[test]
    fn the_daily_cap_counts_per_local_day() {
        // 07:00 day one to 09:00 day two local: day one 40 (capped), its night 21:00–24:00 counts
        // against day one's cap (0 left), after midnight night units pay until the night cap,
        // then 07:00–09:00: 4 units at 3.
        let fee = fee("2026-03-02T23:00:00Z", "2026-03-04T01:00:00Z", None);
        assert_eq!(fee, "57");
    }
}
