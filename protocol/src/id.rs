//! Identifiers of the things devices talk about. Lot, bay, gate and device ids match
//! `[a-z0-9][a-z0-9-]{0,63}` (SPEC §2); an event id is the device's own, unique per event.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} id must match [a-z0-9][a-z0-9-]{{0,63}}")]
    Name { kind: &'static str },
    #[error("event id must be 1 to 128 characters of letters, digits and . _ : -")]
    Event,
}

fn is_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9][a-z0-9-]{0,63}$"))]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if is_name(s) { Ok(Self(s.to_owned())) } else { Err(IdError::Name { kind: $kind }) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                if is_name(&s) { Ok(Self(s)) } else { Err(IdError::Name { kind: $kind }) }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

name_id!(
    /// A lot (a gated car park or an on-street zone).
    LotId, "lot"
);
name_id!(
    /// A bay within a lot.
    BayId, "bay"
);
name_id!(
    /// A gate (one lane with a camera and a barrier) within a lot.
    GateId, "gate"
);
name_id!(
    /// A device: a bay sensor, a camera, a gate or a network-server bridge. Also its MQTT client id.
    DeviceId, "device"
);

/// The id a device gives an event; repeated deliveries of one event carry the same id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

impl EventId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let valid = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::Event)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> String {
        id.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        assert!(LotId::parse("lot-1").is_ok());
        assert!(LotId::parse("0").is_ok());
        assert!(LotId::parse(&"a".repeat(64)).is_ok());
        assert!(LotId::parse(&"a".repeat(65)).is_err());
        assert!(LotId::parse("-lot").is_err());
        assert!(LotId::parse("Lot").is_err());
        assert!(LotId::parse("lot_1").is_err());
        assert!(LotId::parse("").is_err());
        assert!(GateId::parse("lot/1").is_err());
    }

    #[test]
    fn ids_deserialize_only_when_valid() {
        assert!(serde_json::from_str::<BayId>("\"b-1\"").is_ok());
        assert!(serde_json::from_str::<BayId>("\"B 1\"").is_err());
        assert!(serde_json::from_str::<EventId>("\"\"").is_err());
        assert!(
            serde_json::from_str::<EventId>("\"0f6c1b9e-3c1e-4a8e-9d2b-2f0a5c1d9e7a\"").is_ok()
        );
    }

    proptest! {
        #[test]
        fn every_string_of_the_grammar_is_a_name(s in "[a-z0-9][a-z0-9-]{0,63}") {
            let id = DeviceId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
        }
    }
}
