//! Off-the-shelf ANPR cameras: lanes equipped with a vendor's camera (or a camera and a
//! recognition service) that pushes plate events over HTTP in its own format and opens its
//! barrier through its own HTTP call. MQTT stays the native protocol; these adapters turn each
//! vendor's event into the same plate read the gate pipeline decides on ([`intake`]) and the
//! decision into the vendor's barrier call ([`barrier`]).
//!
//! Such a camera is a gate camera in the registry (one per gate, the gate's decisions signed
//! with its key as for any camera) with an `anpr_cameras` row: its vendor, how its barrier opens
//! and, optionally, the addresses it may send from.

pub(crate) mod barrier;
pub(crate) mod digest;
pub(crate) mod intake;
pub(crate) mod vendors;

use serde::{Deserialize, Serialize};

/// Whose event format a camera speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    /// Hikvision ISAPI `EventNotificationAlert` (ANPR), XML, also in multipart form data.
    Hikvision,
    /// Dahua's traffic-junction event, JSON.
    Dahua,
    /// Axis License Plate Verifier's HTTP push, JSON.
    Axis,
    /// Plate Recognizer Stream's webhook, JSON.
    Platerecognizer,
    /// OpenALPR / Rekor `alpr_group` and `alpr_results`, JSON.
    Openalpr,
}

impl Vendor {
    pub const ALL: [Self; 5] = [
        Self::Hikvision,
        Self::Dahua,
        Self::Axis,
        Self::Platerecognizer,
        Self::Openalpr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hikvision => "hikvision",
            Self::Dahua => "dahua",
            Self::Axis => "axis",
            Self::Platerecognizer => "platerecognizer",
            Self::Openalpr => "openalpr",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// An ANPR camera's own settings, as the registry keeps them.
#[derive(Clone)]
pub struct AnprCamera {
    pub vendor: Vendor,
    /// How its barrier opens: the vendor's HTTP call, or (`None`) a ParkFlow MQTT barrier
    /// controller on the gate's `command` topic.
    pub(crate) control: Option<barrier::HttpControl>,
    /// Addresses it may send from (any when empty).
    pub allow_from: Vec<ipnet::IpNet>,
    /// What its HTTP Digest answers are checked against ([`digest::ha1`]).
    pub(crate) digest_ha1: Option<secrecy::SecretString>,
}

impl std::fmt::Debug for AnprCamera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnprCamera")
            .field("vendor", &self.vendor)
            .field("http_control", &self.control.is_some())
            .field("allow_from", &self.allow_from)
            .finish()
    }
}
