//! The registry: what lots, gates and devices exist, and who may speak for what.
//!
//! Loaded from the database at start and published as an immutable [`Registry`] snapshot behind
//! a [`RegistryHandle`]; readers (ingest, the broker's logins, the HTTP API) never lock. Lots get
//! dense integer indices ([`LotIdx`]) and bays dense numbers ([`BayIdx`], see [`bays`]) so that
//! hot state can be kept in vectors; [`near`] finds the lots near a point.

pub mod access;
pub mod bays;
pub mod near;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parkflow_billing::TariffSchedule;
use parkflow_protocol::{BayId, DeviceAuth, DeviceId, GateId, LotId};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Db, StoreError};
pub use bays::{BayDevice, BayDeviceKind, BayIdx, BayTable, BayTableBuilder, Key};
pub use near::LotLocator;

/// Dense index of a lot in the registry (its position in [`Registry::lots`]).
pub type LotIdx = u32;

/// Gated car park or on-street zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LotKind {
    OffStreet,
    OnStreet,
}

impl LotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OffStreet => "off_street",
            Self::OnStreet => "on_street",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off_street" => Some(Self::OffStreet),
            "on_street" => Some(Self::OnStreet),
            _ => None,
        }
    }
}

/// Where a lot is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

/// A lot as the platform runs it.
#[derive(Debug, Clone)]
pub struct Lot {
    pub idx: LotIdx,
    pub id: LotId,
    pub operator_id: String,
    pub name: String,
    pub kind: LotKind,
    pub location: Location,
    pub capacity: u32,
    pub time_zone: String,
    pub device_auth: DeviceAuth,
    pub tariffs: TariffSchedule,
    /// Stays longer than this are flagged as overstays (on-street zones mostly).
    pub max_stay: Option<chrono::Duration>,
    /// How its lanes let out, while the platform is away, a car their list does not name.
    pub offline_policy: parkflow_protocol::standing::OfflinePolicy,
    /// Whether its ANPR cameras' pictures are kept for review cases (until the plate retention
    /// period ends).
    pub review_pictures: bool,
}

/// Which way cars pass a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateDirection {
    Entry,
    Exit,
    Both,
}

impl GateDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Exit => "exit",
            Self::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "entry" => Some(Self::Entry),
            "exit" => Some(Self::Exit),
            "both" => Some(Self::Both),
            _ => None,
        }
    }
}

/// A gate (lane) of a lot, and the camera that speaks for it.
#[derive(Debug, Clone)]
pub struct Gate {
    pub lot: LotIdx,
    pub id: GateId,
    pub direction: GateDirection,
    /// The camera registered to this gate: it signs the reads, the platform signs commands with its secret.
    pub camera: Option<DeviceId>,
}

/// MQTT client ids that begin with this are the platform's own (`parkflow-gateway` and its
/// `-bays` connection): no device is registered under one, and no device logs in with one. A
/// device with the platform's client id would make the broker drop the platform's connection
/// and hand the device the platform's persistent session.
pub const PLATFORM_CLIENT_PREFIX: &str = "parkflow-";

/// Whether `id` is reserved for the platform's own MQTT connections.
pub fn is_platform_client_id(id: &str) -> bool {
    id.starts_with(PLATFORM_CLIENT_PREFIX)
}

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    GateCamera,
    BaySensor,
    BayCamera,
    Bridge,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GateCamera => "gate_camera",
            Self::BaySensor => "bay_sensor",
            Self::BayCamera => "bay_camera",
            Self::Bridge => "bridge",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gate_camera" => Some(Self::GateCamera),
            "bay_sensor" => Some(Self::BaySensor),
            "bay_camera" => Some(Self::BayCamera),
            "bridge" => Some(Self::Bridge),
            _ => None,
        }
    }
}

/// A registered device and what it may speak for.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: DeviceId,
    pub kind: DeviceKind,
    pub lot: Option<LotId>,
    pub gate: Option<GateId>,
    pub bay: Option<BayId>,
    pub mqtt_username: String,
    /// SHA-256 of the MQTT password, hex. Passwords are random 32-byte secrets, so a fast hash is enough.
    pub mqtt_password_hash: String,
    /// The HMAC key of the device's signed messages (SPEC §2), as the registry issued it.
    pub secret: SecretString,
    pub revoked: bool,
    /// An off-the-shelf ANPR camera's own settings: it pushes its vendor's HTTP events.
    pub anpr: Option<std::sync::Arc<crate::anpr::AnprCamera>>,
}

/// The SHA-256 hex digest under which an MQTT password is stored.
pub fn password_hash(password: &str) -> String {
    let digest = Sha256::digest(password.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An immutable picture of the registry.
#[derive(Debug, Default)]
pub struct Registry {
    lots: Vec<Lot>,
    lot_index: HashMap<LotId, LotIdx>,
    gates: HashMap<(LotIdx, GateId), Gate>,
    /// Gate cameras and bridges (few): bay devices live in `bays`.
    devices: HashMap<DeviceId, Device>,
    usernames: HashMap<String, DeviceId>,
    bays: BayTable,
    locator: LotLocator,
}

impl Registry {
    /// Builds a registry; lots are indexed in the order given, `bays` numbered in the same order.
    pub fn new(lots: Vec<Lot>, gates: Vec<Gate>, devices: Vec<Device>, bays: BayTable) -> Self {
        let locator = LotLocator::new(
            lots.iter()
                .map(|lot| (lot.idx, lot.location.lat, lot.location.lon)),
        );
        let lot_index = lots.iter().map(|lot| (lot.id.clone(), lot.idx)).collect();
        let gates = gates
            .into_iter()
            .map(|gate| ((gate.lot, gate.id.clone()), gate))
            .collect();
        let usernames = devices
            .iter()
            .map(|d| (d.mqtt_username.clone(), d.id.clone()))
            .collect();
        let devices = devices.into_iter().map(|d| (d.id.clone(), d)).collect();
        Self {
            lots,
            lot_index,
            gates,
            devices,
            usernames,
            bays,
            locator,
        }
    }

    /// Every bay of the city and the devices registered to them.
    pub fn bays(&self) -> &BayTable {
        &self.bays
    }

    /// Lots near a point, nearest first.
    pub fn locator(&self) -> &LotLocator {
        &self.locator
    }

    /// Whether a lot's occupancy comes from bay sensors (else, for a gated lot, from entries and exits).
    pub fn has_bay_sensors(&self, lot: LotIdx) -> bool {
        !self.bays.bays_of(lot).is_empty()
    }

    pub fn lots(&self) -> &[Lot] {
        &self.lots
    }

    pub fn lot(&self, idx: LotIdx) -> &Lot {
        &self.lots[idx as usize]
    }

    pub fn lot_by_id(&self, id: &LotId) -> Option<&Lot> {
        self.lot_index.get(id).map(|idx| self.lot(*idx))
    }

    /// Every gate of every lot, in no order.
    pub fn gates(&self) -> impl Iterator<Item = &Gate> {
        self.gates.values()
    }

    pub fn gate(&self, lot: LotIdx, gate: &GateId) -> Option<&Gate> {
        self.gates.get(&(lot, gate.clone()))
    }

    pub fn device(&self, id: &DeviceId) -> Option<&Device> {
        self.devices.get(id).filter(|d| !d.revoked)
    }

    /// The bridges that report for a lot (not revoked).
    pub fn bridges_of<'a>(&'a self, lot: &'a LotId) -> impl Iterator<Item = &'a DeviceId> + 'a {
        self.devices
            .values()
            .filter(move |d| {
                d.kind == DeviceKind::Bridge && !d.revoked && d.lot.as_ref() == Some(lot)
            })
            .map(|d| &d.id)
    }

    /// Whether a gate camera or bridge may log in to the broker: known, not revoked, the right
    /// password, and its MQTT client id is its device id. `None`: not such a device (a bay
    /// device's login is checked against the database, see [`crate::store::registry::authenticate`]).
    pub fn authenticate(&self, client_id: &str, username: &str, password: &str) -> Option<bool> {
        let device = self
            .usernames
            .get(username)
            .and_then(|id| self.device(id))?;
        Some(
            !is_platform_client_id(client_id)
                && device.id.as_str() == client_id
                && device.mqtt_password_hash == password_hash(password),
        )
    }
}

/// The current registry snapshot, shared by everyone who reads it; replaced whole on reload.
#[derive(Clone, Default)]
pub struct RegistryHandle {
    current: Arc<ArcSwap<Registry>>,
    /// On a gateway node: the other nodes, told to reload after a change.
    peers: Arc<std::sync::OnceLock<crate::cluster::Peers>>,
}

impl RegistryHandle {
    pub fn new(registry: Registry) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(registry)),
            peers: Arc::default(),
        }
    }

    /// From now on, a reload is told to the other nodes too.
    pub(crate) fn tell_peers(&self, peers: crate::cluster::Peers) {
        let _ = self.peers.set(peers);
    }

    /// Loads the registry from the database.
    pub async fn load(db: &Db) -> Result<Self, StoreError> {
        Ok(Self::new(crate::store::registry::load(db).await?))
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Registry> {
        self.current.load_full()
    }

    /// Re-reads the registry from the database and publishes it.
    pub async fn reload(&self, db: &Db) -> Result<(), StoreError> {
        self.reload_here(db).await?;
        if let Some(peers) = self.peers.get() {
            peers.tell(crate::cluster::Notice::Registry).await;
        }
        Ok(())
    }

    /// [`RegistryHandle::reload`] on this node only.
    pub(crate) async fn reload_here(&self, db: &Db) -> Result<(), StoreError> {
        let registry = crate::store::registry::load(db).await?;
        self.current.store(Arc::new(registry));
        Ok(())
    }
}

/// The MQTT password of the device whose signing key is `secret`: derived from it, so that the
/// platform, which must keep the key to check signatures, can give a broker that keeps logins of
/// its own (Mosquitto's dynamic security, [`dynsec`]) every device's login again at any time. A
/// device sees only a random-looking password: HMAC-SHA256 of a fixed label under its key.
pub fn mqtt_password(secret: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(b"parkflow/v1 mqtt password");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A bay device's key: 16 random bytes, URL-safe base64 (the registry keeps such keys in 16 bytes).
pub fn random_device_key() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random secret of 32 bytes, URL-safe base64 (MQTT passwords, gate cameras' and bridges' keys).
pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
