//! Serde for decimals carried as JSON strings (`"3.00"`). A JSON number is refused, so a price can
//! never pass through a float. Serializing writes the decimal with its own scale (`"3.00"` stays
//! `"3.00"`), independent of `rust_decimal`'s serde features.

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;
use serde::de::{Error, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parses a plain decimal string: an optional `-`, digits, and optionally `.` and more digits.
/// No exponent, sign `+`, separators or spaces: money on the wire is written one way only.
fn parse_decimal(text: &str) -> Option<Decimal> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !fraction.is_none_or(all_digits) {
        return None;
    }
    Decimal::from_str_exact(text).ok()
}

/// Writes the decimal as a string with its own scale.
pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Reads a decimal string; anything else, a JSON number included, is an error.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    deserializer.deserialize_str(DecimalVisitor)
}

struct DecimalVisitor;

impl Visitor<'_> for DecimalVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal string such as \"3.00\"")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Decimal, E> {
        parse_decimal(text).ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
    }
}

/// A decimal that (de)serializes through this module, for use inside `Option` and maps.
#[derive(Clone, Copy)]
struct Wire(Decimal);

impl Serialize for Wire {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Wire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Wire)
    }
}

/// The same for an optional decimal (`null` or absent is `None`).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.map(Wire).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        Ok(Option::<Wire>::deserialize(deserializer)?.map(|wire| wire.0))
    }
}

/// The same for an optional map whose values are decimals.
pub mod option_map {
    use super::*;

    pub fn serialize<K, S>(
        value: &Option<BTreeMap<K, Decimal>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error>
    where
        K: Serialize + Ord,
        S: Serializer,
    {
        value
            .as_ref()
            .map(|map| {
                map.iter()
                    .map(|(key, decimal)| (key, Wire(*decimal)))
                    .collect::<BTreeMap<_, _>>()
            })
            .serialize(serializer)
    }

    pub fn deserialize<'de, K, D>(deserializer: D) -> Result<Option<BTreeMap<K, Decimal>>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        D: Deserializer<'de>,
    {
        let map = Option::<BTreeMap<K, Wire>>::deserialize(deserializer)?;
        Ok(map.map(|map| map.into_iter().map(|(key, wire)| (key, wire.0)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_are_written_one_way_only() {
        for good in ["0", "3", "3.00", "-1.5", "0.005", "0012"] {
            assert!(parse_decimal(good).is_some(), "{good}");
        }
        for bad in [
            "", "-", ".5", "5.", "+5", "1e3", "1_000", " 1", "1 ", "1,5", "NaN", "--1", "1.2.3",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
        assert_eq!(parse_decimal("3.00").unwrap().to_string(), "3.00");
    }
}
