//! Licence plates: normalisation and validation (SPEC §2 "Plates").
//!
//! A plate is upper-cased and stripped of spaces, dots and dashes. A Chinese plate is a province
//! character followed by 6 (ordinary) or 7 (new-energy) letters and digits, never `I` or `O`;
//! other countries' plates are 2–10 ASCII letters and digits.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The provinces' one-character abbreviations that open a Chinese plate.
pub const PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领";

/// Why a plate string is not a plate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlateError {
    #[error("plate is empty")]
    Empty,
    #[error("plate has {0} characters after normalisation, expected 2 to 10")]
    Length(usize),
    #[error("plate contains a character that no plate has")]
    Character,
    #[error("chinese plate must have 6 or 7 letters and digits after the province")]
    ChineseLength,
}

/// A normalised, valid plate. Personal data: never log it (see `gateway::privacy`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, example = "浙A12345")
)]
#[serde(try_from = "String", into = "String")]
pub struct Plate(String);

impl Plate {
    /// Normalises `raw` (upper case, no spaces, dots or dashes) and validates it.
    pub fn parse(raw: &str) -> Result<Self, PlateError> {
        let normalised: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-' | '·' | '\u{3000}'))
            .flat_map(char::to_uppercase)
            .collect();
        let mut chars = normalised.chars();
        let first = chars.next().ok_or(PlateError::Empty)?;
        if PROVINCES.contains(first) {
            let rest: Vec<char> = chars.collect();
            if !(rest.len() == 6 || rest.len() == 7) {
                return Err(PlateError::ChineseLength);
            }
            // The last character of some special plates is a Chinese character (学 learner, 警 police,
            // 挂 trailer, 港/澳 cross-border); everything else is an ASCII letter or digit. The letters
            // I and O never occur: a reader that saw one saw the digit 1 or 0.
            let mut plate = String::with_capacity(normalised.len());
            plate.push(first);
            for (i, c) in rest.iter().enumerate() {
                let last = i + 1 == rest.len();
                match c {
                    'O' => plate.push('0'),
                    'I' => plate.push('1'),
                    c if c.is_ascii_alphanumeric() => plate.push(*c),
                    c if last && "学警挂港澳领使".contains(*c) => plate.push(*c),
                    _ => return Err(PlateError::Character),
                }
            }
            return Ok(Self(plate));
        }
        let len = normalised.chars().count();
        if !normalised.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(PlateError::Character);
        }
        if !(2..=10).contains(&len) {
            return Err(PlateError::Length(len));
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The plate's keyed hash (HMAC-SHA256 under `key`, 8 bytes in hex, `p-` first): what logs
    /// carry instead of the plate, the same for the same plate and key, useless without the key.
    pub fn tag(&self, key: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        use std::fmt::Write as _;
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
            unreachable!("HMAC takes a key of any length")
        };
        mac.update(self.0.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut tag = String::with_capacity(18);
        tag.push_str("p-");
        for byte in &digest[..8] {
            let _ = write!(tag, "{byte:02x}");
        }
        tag
    }
}

impl TryFrom<String> for Plate {
    type Error = PlateError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Plate> for String {
    fn from(plate: Plate) -> Self {
        plate.0
    }
}

/// Shows only the plate's length: a `Plate` in a `{:?}` never leaks the plate into a log.
impl fmt::Debug for Plate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plate(<{} chars>)", self.0.chars().count())
    }
}

/// The colour of a plate, which classes the vehicle (green: new energy, yellow: large vehicle …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PlateColor {
    Blue,
    Yellow,
    Green,
    White,
    Black,
}

impl PlateColor {
    pub const ALL: [PlateColor; 5] = [
        Self::Blue,
        Self::Yellow,
        Self::Green,
        Self::White,
        Self::Black,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Yellow => "yellow",
            Self::Green => "green",
            Self::White => "white",
            Self::Black => "black",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for PlateColor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chinese_plates_are_normalised() {
        assert_eq!(Plate::parse("浙a·12345").unwrap().as_str(), "浙A12345");
        assert_eq!(Plate::parse("浙A-D1234 5").unwrap().as_str(), "浙AD12345");
    }

    #[test]
    fn chinese_plates_have_six_or_seven_characters_after_the_province() {
        assert_eq!(Plate::parse("浙A1234"), Err(PlateError::ChineseLength));
        assert_eq!(Plate::parse("浙A1234567"), Err(PlateError::ChineseLength));
        assert!(Plate::parse("粤B12345学").is_ok());
    }

    #[test]
    fn o_and_i_read_on_a_chinese_plate_are_the_digits_0_and_1() {
        assert_eq!(Plate::parse("浙AO2345").unwrap().as_str(), "浙A02345");
        assert_eq!(Plate::parse("浙AI234O").unwrap().as_str(), "浙A12340");
        assert_eq!(
            Plate::parse("BOI123").unwrap().as_str(),
            "BOI123",
            "other countries' plates keep their letters"
        );
    }

    #[test]
    fn foreign_plates_are_two_to_ten_letters_and_digits() {
        assert_eq!(Plate::parse("b-mw 1234").unwrap().as_str(), "BMW1234");
        assert_eq!(Plate::parse("A"), Err(PlateError::Length(1)));
        assert_eq!(Plate::parse("ABCDEFGHIJK"), Err(PlateError::Length(11)));
        assert_eq!(Plate::parse("AB_12"), Err(PlateError::Character));
        assert_eq!(Plate::parse(" - "), Err(PlateError::Empty));
    }

    #[test]
    fn debug_output_hides_the_plate() {
        let plate = Plate::parse("浙A12345").unwrap();
        assert!(!format!("{plate:?}").contains("12345"));
    }

    #[test]
    fn plate_colors_round_trip_through_json() {
        for color in PlateColor::ALL {
            let json = serde_json::to_string(&color).unwrap();
            assert_eq!(json, format!("\"{color}\""));
            assert_eq!(serde_json::from_str::<PlateColor>(&json).unwrap(), color);
        }
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(raw in "[a-zA-Z0-9 .-]{0,14}") {
            if let Ok(plate) = Plate::parse(&raw) {
                prop_assert_eq!(Plate::parse(plate.as_str()).unwrap(), plate);
            }
        }

        #[test]
        fn valid_foreign_plates_parse(raw in "[A-Z0-9]{2,10}") {
            let plate = Plate::parse(&raw).unwrap();
            prop_assert_eq!(plate.as_str(), raw.as_str());
        }
    }
}
