//! A wall-clock time of day to the minute, as tariff bands write it: `"HH:MM"`, 00:00 to 23:59.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TariffError;

/// Minutes in a local day as the bands see it (a band boundary is a clock reading, so DST days of
/// 23 or 25 hours still have one reading per minute from 00:00 to 23:59).
pub(crate) const MINUTES_PER_DAY: u16 = 24 * 60;

/// A time of day, `"HH:MM"` on the wire; stored as minutes since midnight (`0..1440`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(value_type = String, example = "07:00", pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    pub const MIDNIGHT: TimeOfDay = TimeOfDay(0);

    /// `None` unless `hour < 24` and `minute < 60`.
    pub fn from_hm(hour: u32, minute: u32) -> Option<Self> {
        (hour < 24 && minute < 60).then(|| Self((hour * 60 + minute) as u16))
    }

    /// Minutes since midnight, in `0..1440`.
    pub fn minutes(self) -> u16 {
        self.0
    }

    /// The time `minutes` after midnight, wrapping around the day.
    pub(crate) fn from_minutes_wrapping(minutes: u16) -> Self {
        Self(minutes % MINUTES_PER_DAY)
    }
}

impl FromStr for TimeOfDay {
    type Err = TariffError;

    /// Exactly two digits, a colon and two digits: `"07:00"`, not `"7:00"` nor `"07:00:00"`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || TariffError::InvalidTimeOfDay(text.to_owned());
        let (hour, minute) = text.split_once(':').ok_or_else(invalid)?;
        let two_digits = |part: &str| {
            (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u32>().ok())
                .flatten()
        };
        let (hour, minute) = two_digits(hour)
            .zip(two_digits(minute))
            .ok_or_else(invalid)?;
        Self::from_hm(hour, minute).ok_or_else(invalid)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl fmt::Debug for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimeOfDay({self})")
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day_read_and_print_as_hh_mm() {
        for text in ["00:00", "07:00", "21:30", "23:59"] {
            assert_eq!(text.parse::<TimeOfDay>().unwrap().to_string(), text);
        }
        assert_eq!("07:30".parse::<TimeOfDay>().unwrap().minutes(), 450);
    }

    #[test]
    fn malformed_times_of_day_are_refused() {
        for text in [
            "", "7:00", "07:0", "24:00", "23:60", "07:00:00", "07-00", "+7:00", "0a:00", " 7:00",
        ] {
            assert_eq!(
                text.parse::<TimeOfDay>(),
                Err(TariffError::InvalidTimeOfDay(text.to_owned())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn minutes_wrap_around_the_day() {
        assert_eq!(TimeOfDay::from_minutes_wrapping(1440), TimeOfDay::MIDNIGHT);
        assert_eq!(TimeOfDay::from_minutes_wrapping(1441).to_string(), "00:01");
    }
}
