//! ISO 4217 currency codes and the digits of their minor units.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::MoneyError;

/// An ISO 4217 currency code such as `CNY`: three uppercase ASCII letters, checked on construction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(value_type = String, example = "CNY", pattern = "^[A-Z]{3}$")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const CNY: Currency = Currency(*b"CNY");
    pub const EUR: Currency = Currency(*b"EUR");
    pub const USD: Currency = Currency(*b"USD");
    pub const JPY: Currency = Currency(*b"JPY");

    /// Checks the code's format (three uppercase ASCII letters); it does not consult the ISO list,
    /// so a newly issued code works without a release.
    pub fn new(code: &str) -> Result<Self, MoneyError> {
        match <[u8; 3]>::try_from(code.as_bytes()) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_uppercase) => Ok(Self(bytes)),
            _ => Err(MoneyError::InvalidCurrency(code.to_owned())),
        }
    }

    /// The code, `"CNY"`.
    pub fn as_str(&self) -> &str {
        // The bytes are ASCII letters (checked in `new`), so they are always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The digits of the minor unit (2 for cents): ISO 4217's exponent for the currencies listed
    /// with 0 or 3, and 2 for every other code.
    pub fn minor_digits(self) -> u32 {
        match &self.0 {
            b"JPY" | b"KRW" | b"VND" | b"CLP" | b"ISK" => 0,
            b"BHD" | b"KWD" | b"JOD" | b"OMR" | b"TND" | b"IQD" | b"LYD" => 3,
            _ => 2,
        }
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Self::new(code)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Self::new(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn currency(code: &str) -> Currency {
        Currency::new(code).unwrap()
    }

    #[test]
    fn currency_codes_are_three_uppercase_letters() {
        assert_eq!(currency("CNY").as_str(), "CNY");
        for bad in ["", "cny", "CN", "CNYY", "C1Y", "ÇNY", " CN"] {
            assert_eq!(
                Currency::new(bad),
                Err(MoneyError::InvalidCurrency(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn minor_digits_follow_iso_4217() {
        for (code, digits) in [
            ("CNY", 2),
            ("USD", 2),
            ("EUR", 2),
            ("XYZ", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("VND", 0),
            ("CLP", 0),
            ("ISK", 0),
            ("BHD", 3),
            ("KWD", 3),
            ("JOD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("IQD", 3),
            ("LYD", 3),
        ] {
            assert_eq!(currency(code).minor_digits(), digits, "{code}");
        }
    }

    #[test]
    fn currency_json_is_its_code() {
        assert_eq!(serde_json::to_string(&Currency::CNY).unwrap(), r#""CNY""#);
        assert_eq!(
            serde_json::from_str::<Currency>(r#""JPY""#).unwrap(),
            Currency::JPY
        );
        assert!(serde_json::from_str::<Currency>(r#""jpy""#).is_err());
    }
}
