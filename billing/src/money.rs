//! Money: an ISO 4217 currency and a decimal amount in its major unit, with the platform's one
//! rounding rule ([`Money::rounded`]) and the exact conversions to and from the minor units that the
//! database stores (BIGINT). JSON carries amounts as decimal strings (`"12.50"`), never as numbers.

mod currency;
pub(crate) mod decimal_string;

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use currency::Currency;

/// How every fee is rounded to a currency's minor unit: half away from zero (2.505 → 2.51,
/// −2.505 → −2.51). Used by [`Money::rounded`] and nowhere else.
pub const ROUNDING: RoundingStrategy = RoundingStrategy::MidpointAwayFromZero;

/// What can go wrong building or converting money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("invalid currency code {0:?}: expected three uppercase ascii letters")]
    InvalidCurrency(String),
    #[error("{amount} has more decimals than {currency} allows ({digits})")]
    TooManyDecimals {
        amount: Decimal,
        currency: Currency,
        digits: u32,
    },
    #[error("{amount} {currency} does not fit in 64-bit minor units")]
    MinorUnitsOverflow { amount: Decimal, currency: Currency },
    #[error("cannot combine {left} with {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("arithmetic overflow on {currency} amounts")]
    Overflow { currency: Currency },
}

/// An amount of one currency. Invariant: the amount never has more decimals than the currency's
/// minor unit, so it always converts exactly to minor units and prints with exactly its digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[schema(example = json!({"amount": "11.00", "currency": "CNY"}))]
pub struct Money {
    /// A decimal string in the currency's major unit, with its minor digits.
    #[schema(value_type = String, example = "11.00")]
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// Exact construction: an amount with more decimals than the minor unit is an error (it is
    /// never rounded silently; use [`Money::rounded`] to round on purpose).
    pub fn new(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        let digits = currency.minor_digits();
        let amount = amount.normalize();
        if amount.scale() > digits {
            return Err(MoneyError::TooManyDecimals {
                amount,
                currency,
                digits,
            });
        }
        Ok(Self { amount, currency })
    }

    /// THE rounding rule: `amount` rounded to the currency's minor unit, half away from zero.
    pub fn rounded(amount: Decimal, currency: Currency) -> Self {
        let amount = amount
            .round_dp_with_strategy(currency.minor_digits(), ROUNDING)
            .normalize();
        Self { amount, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount: Decimal::ZERO,
            currency,
        }
    }

    /// From minor units (cents for CNY, yen for JPY), as the database stores them.
    pub fn from_minor(minor: i64, currency: Currency) -> Self {
        Self {
            amount: Decimal::new(minor, currency.minor_digits()).normalize(),
            currency,
        }
    }

    /// To minor units, exactly: an amount with more decimals than the minor unit, or too large for
    /// an `i64`, is an error.
    pub fn to_minor(&self) -> Result<i64, MoneyError> {
        let digits = self.currency.minor_digits();
        let overflow = || MoneyError::MinorUnitsOverflow {
            amount: self.amount,
            currency: self.currency,
        };
        let scaled = self
            .amount
            .checked_mul(Decimal::from(10_i64.pow(digits)))
            .ok_or_else(overflow)?
            .normalize();
        if scaled.scale() != 0 {
            return Err(MoneyError::TooManyDecimals {
                amount: self.amount,
                currency: self.currency,
                digits,
            });
        }
        i64::try_from(scaled.mantissa()).map_err(|_| overflow())
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The amount with exactly the currency's minor digits (`12.50`, not `12.5`), for wire
    /// formats that carry the decimal itself.
    pub fn amount_in_minor_digits(&self) -> Decimal {
        let mut amount = self.amount;
        amount.rescale(self.currency.minor_digits());
        amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        let currency = self.same_currency(other)?;
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow { currency })?;
        Ok(Self::exact(amount, currency))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        let currency = self.same_currency(other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::Overflow { currency })?;
        Ok(Self::exact(amount, currency))
    }

    fn same_currency(self, other: Money) -> Result<Currency, MoneyError> {
        if self.currency == other.currency {
            Ok(self.currency)
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }

    /// Sums and differences of amounts within the minor unit stay within it.
    fn exact(amount: Decimal, currency: Currency) -> Self {
        Self {
            amount: amount.normalize(),
            currency,
        }
    }
}

/// The decimal string with exactly the currency's minor digits: `12.50` CNY, `1200` JPY.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.currency.minor_digits() as usize;
        write!(f, "{:.*}", digits, self.amount)
    }
}

/// As JSON, `{"amount": "12.50", "currency": "CNY"}` (the shape of a quote, SPEC §4): the amount
/// is the decimal string of [`Display`](fmt::Display), never a JSON number.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut json = serializer.serialize_struct("Money", 2)?;
        json.serialize_field("amount", &self.to_string())?;
        json.serialize_field("currency", &self.currency)?;
        json.end()
    }
}

/// What deserializing reads before [`Money::new`] checks the amount against the currency.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyJson {
    #[serde(with = "decimal_string")]
    amount: Decimal,
    currency: Currency,
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = MoneyJson::deserialize(deserializer)?;
        Self::new(json.amount, json.currency).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    fn currency(code: &str) -> Currency {
        Currency::new(code).unwrap()
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        for (amount, rounded) in [
            ("2.505", "2.51"),
            ("2.515", "2.52"),
            ("2.5049", "2.50"),
            ("-2.505", "-2.51"),
            ("0.005", "0.01"),
            ("-0.004", "0.00"),
        ] {
            assert_eq!(
                Money::rounded(dec(amount), Currency::CNY).to_string(),
                rounded,
                "{amount}"
            );
        }
        assert_eq!(Money::rounded(dec("12.5"), Currency::JPY).to_string(), "13");
        assert_eq!(
            Money::rounded(dec("1.2345"), currency("KWD")).to_string(),
            "1.235"
        );
    }

    #[test]
    fn display_shows_exactly_the_minor_digits() {
        assert_eq!(
            Money::new(dec("12.5"), Currency::CNY).unwrap().to_string(),
            "12.50"
        );
        assert_eq!(
            Money::new(dec("7"), Currency::USD).unwrap().to_string(),
            "7.00"
        );
        assert_eq!(
            Money::new(dec("1200"), Currency::JPY).unwrap().to_string(),
            "1200"
        );
        assert_eq!(
            Money::new(dec("1.25"), currency("KWD"))
                .unwrap()
                .to_string(),
            "1.250"
        );
        assert_eq!(Money::zero(Currency::CNY).to_string(), "0.00");
    }

    #[test]
    fn exact_construction_refuses_extra_decimals_but_not_trailing_zeros() {
        assert_eq!(
            Money::new(dec("12.505"), Currency::CNY),
            Err(MoneyError::TooManyDecimals {
                amount: dec("12.505"),
                currency: Currency::CNY,
                digits: 2
            })
        );
        assert!(Money::new(dec("12.5"), Currency::JPY).is_err());
        assert_eq!(
            Money::new(dec("12.500"), Currency::CNY).unwrap(),
            Money::new(dec("12.5"), Currency::CNY).unwrap()
        );
    }

    #[test]
    fn minor_units_convert_exactly_both_ways() {
        let money = Money::new(dec("12.50"), Currency::CNY).unwrap();
        assert_eq!(money.to_minor(), Ok(1250));
        assert_eq!(Money::from_minor(1250, Currency::CNY), money);
        assert_eq!(Money::from_minor(-5, Currency::CNY).to_string(), "-0.05");
        assert_eq!(Money::from_minor(1200, Currency::JPY).to_string(), "1200");
        assert_eq!(
            Money::from_minor(1250, currency("KWD")).to_string(),
            "1.250"
        );
        for minor in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(
                Money::from_minor(minor, Currency::USD).to_minor(),
                Ok(minor)
            );
        }
    }

    #[test]
    fn minor_units_that_do_not_fit_an_i64_are_an_error() {
        let huge = Money::new(dec("100000000000000000000"), Currency::CNY).unwrap();
        assert!(matches!(
            huge.to_minor(),
            Err(MoneyError::MinorUnitsOverflow { .. })
        ));
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies() {
        let cny = Money::from_minor(100, Currency::CNY);
        let usd = Money::from_minor(100, Currency::USD);
        assert_eq!(
            cny.checked_add(usd),
            Err(MoneyError::CurrencyMismatch {
                left: Currency::CNY,
                right: Currency::USD
            })
        );
        assert_eq!(
            cny.checked_add(cny).unwrap(),
            Money::from_minor(200, Currency::CNY)
        );
        assert!(cny.checked_sub(cny).unwrap().is_zero());
    }

    #[test]
    fn money_json_carries_the_amount_as_a_string() {
        let money = Money::from_minor(1250, Currency::CNY);
        let json = serde_json::to_string(&money).unwrap();
        assert_eq!(json, r#"{"amount":"12.50","currency":"CNY"}"#);
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), money);

        let yen = serde_json::to_string(&Money::from_minor(1200, Currency::JPY)).unwrap();
        assert_eq!(yen, r#"{"amount":"1200","currency":"JPY"}"#);
        let largest = Money::new(Decimal::MAX, Currency::CNY).unwrap();
        assert_eq!(
            serde_json::to_value(largest).unwrap()["amount"],
            "79228162514264337593543950335.00"
        );
    }

    #[test]
    fn money_json_refuses_numbers_bad_codes_and_extra_decimals() {
        for bad in [
            r#"{"amount":12.5,"currency":"CNY"}"#,
            r#"{"amount":"12.5","currency":"cny"}"#,
            r#"{"amount":"12.505","currency":"CNY"}"#,
            r#"{"amount":"1e3","currency":"CNY"}"#,
        ] {
            assert!(serde_json::from_str::<Money>(bad).is_err(), "{bad}");
        }
    }
}
