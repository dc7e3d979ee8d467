//! The devices file: every device of a city with its credentials, as JSON
//! (`{"devices":[{"id","kind","lot","gate"?,"bay"?,"mqtt_username","mqtt_password","secret","simulated"}]}`).
//! `parkflow run --demo --demo-devices FILE` writes it so that outside devices can join the demo.

use std::path::Path;

use parkflow_protocol::{BayId, DeviceId, GateId, LotId};
use serde::{Deserialize, Serialize};

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    GateCamera,
    BaySensor,
    BayCamera,
    Bridge,
    /// An off-the-shelf ANPR camera: it pushes its vendor's events to `POST /v1/anpr/{id}`
    /// (HTTP Basic or Digest, `id` and `mqtt_password`), not MQTT.
    AnprHttp,
}

/// One device and its credentials.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// Also the device's MQTT client id.
    pub id: DeviceId,
    pub kind: DeviceKind,
    pub lot: LotId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bay: Option<BayId>,
    pub mqtt_username: String,
    pub mqtt_password: String,
    /// The HMAC key of the device's signed messages.
    pub secret: String,
    /// Whether the simulator drives it (`false`: left idle for an outside device).
    pub simulated: bool,
    /// An `anpr_http` camera's vendor (`hikvision`, `dahua`, `axis`, `platerecognizer`,
    /// `openalpr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
}

impl std::fmt::Debug for DeviceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEntry")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("lot", &self.lot)
            .field("gate", &self.gate)
            .field("simulated", &self.simulated)
            .finish_non_exhaustive()
    }
}

/// The devices file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DevicesFile {
    pub devices: Vec<DeviceEntry>,
}

impl DevicesFile {
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// Writes the file readable by its owner only: it holds secrets.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
}
