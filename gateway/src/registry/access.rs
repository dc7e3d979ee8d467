//! What each MQTT client may publish and subscribe to, for brokers that ask the platform
//! (`POST /v1/broker/authorize`, SPEC §2 topics): a device speaks only for itself and reads only
//! what is its own.
//!
//! - a gate camera publishes its gate's `plate` and `state` and subscribes to its gate's
//!   `command`;
//! - a bay sensor publishes its bay's `occupancy` and `heartbeat`, a bay camera its bay's `plate`,
//!   a bridge its own `bridge/{device}/occupancy`;
//! - every device publishes its own `devices/{device}/status` (retained: its last will);
//! - anyone logged in may read availability (`lots/{lot}/availability`, or `lots/+/availability`);
//!   only the platform writes it;
//! - nothing else: no other wildcard, no `$CONTROL/…` or `$SYS/…`, no retained message except a
//!   device's status. The platform itself may do anything.

use parkflow_protocol::topic::PREFIX;
use parkflow_protocol::{BayId, DeviceId, GateId, LotId, Topic};
use secrecy::{ExposeSecret, SecretString};

use super::{DeviceKind, Registry, is_platform_client_id};
use crate::constant_time_eq;
use crate::registry::BayDeviceKind;
use crate::store::{Db, registry as store};

/// The platform's own broker login.
#[derive(Debug, Clone)]
pub struct PlatformLogin {
    pub username: String,
    pub password: SecretString,
}

impl PlatformLogin {
    fn is(&self, username: &str) -> bool {
        username == self.username
    }
}

/// Whether `username`/`password` may connect as MQTT client `client_id`: the platform with its
/// own login, or a registered device that is not revoked, with its own password, under its own
/// id as client id. The platform's client ids (`parkflow-…`) are the platform's alone.
pub async fn may_log_in(
    registry: &Registry,
    db: &Db,
    platform: Option<&PlatformLogin>,
    client_id: &str,
    username: &str,
    password: &str,
) -> bool {
    if let Some(platform) = platform.filter(|p| p.is(username)) {
        return constant_time_eq(
            password.as_bytes(),
            platform.password.expose_secret().as_bytes(),
        );
    }
    if is_platform_client_id(client_id) {
        return false;
    }
    if let Some(allowed) = registry.authenticate(client_id, username, password) {
        return allowed;
    }
    // Not a gate camera or bridge: a bay device, whose credentials stay in the database.
    match store::authenticate(db, client_id, username, password).await {
        Ok(allowed) => allowed,
        Err(error) => {
            tracing::warn!(%error, "device login could not be checked; refused");
            false
        }
    }
}

/// The client logged in as `client_id` with `username`: the platform, or a device.
pub fn client(
    registry: &Registry,
    platform: Option<&PlatformLogin>,
    client_id: &str,
    username: &str,
) -> Option<Client> {
    if platform.is_some_and(|p| p.is(username)) {
        return Some(Client::Platform);
    }
    device_client(registry, client_id)
}

/// What a client asks to do with a topic (or, to subscribe, a topic filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Publish { retain: bool },
    Subscribe,
}

/// A client, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    Platform,
    GateCamera {
        id: DeviceId,
        lot: LotId,
        gate: GateId,
    },
    BaySensor {
        id: DeviceId,
        lot: LotId,
        bay: BayId,
    },
    BayCamera {
        id: DeviceId,
        lot: LotId,
        bay: BayId,
    },
    Bridge {
        id: DeviceId,
    },
}

impl Client {
    fn id(&self) -> Option<&DeviceId> {
        match self {
            Self::Platform => None,
            Self::GateCamera { id, .. }
            | Self::BaySensor { id, .. }
            | Self::BayCamera { id, .. }
            | Self::Bridge { id } => Some(id),
        }
    }
}

/// The device logged in as MQTT client `client_id`, if the registry knows it (and it is not
/// revoked). The broker checked the client's password against the same registry.
pub fn device_client(registry: &Registry, client_id: &str) -> Option<Client> {
    let id = DeviceId::parse(client_id).ok()?;
    if let Some(device) = registry.device(&id) {
        return match (device.kind, &device.lot, &device.gate) {
            (DeviceKind::GateCamera, Some(lot), Some(gate)) => Some(Client::GateCamera {
                id: id.clone(),
                lot: lot.clone(),
                gate: gate.clone(),
            }),
            (DeviceKind::Bridge, _, _) => Some(Client::Bridge { id: id.clone() }),
            _ => None,
        };
    }
    let bays = registry.bays();
    let device = bays.device_by_id(client_id)?;
    let lot = registry.lot(bays.lot_of(device.bay)).id.clone();
    let bay = BayId::parse(bays.name(device.bay)).ok()?;
    Some(match device.kind {
        BayDeviceKind::Sensor => Client::BaySensor { id, lot, bay },
        BayDeviceKind::Camera => Client::BayCamera { id, lot, bay },
    })
}

/// Whether `filter` names the availability of every lot or of one.
fn is_availability(filter: &str) -> bool {
    filter
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_prefix("lots/"))
        .and_then(|rest| rest.strip_suffix("/availability"))
        .is_some_and(|lot| lot == "+" || LotId::parse(lot).is_ok())
}

/// Whether `client` may do `access` on `topic` (a topic filter when subscribing).
pub fn allows(client: &Client, access: Access, topic: &str) -> bool {
    if *client == Client::Platform {
        return true;
    }
    if access == Access::Subscribe && is_availability(topic) {
        return true;
    }
    // Wildcards and anything outside protocol v1 do not parse: refused.
    let Ok(topic) = Topic::parse(topic) else {
        return false;
    };
    if let Topic::DeviceStatus { device } = &topic {
        return matches!(access, Access::Publish { .. }) && client.id() == Some(device);
    }
    if access == (Access::Publish { retain: true }) {
        return false;
    }
    match (client, access, &topic) {
        (
            Client::GateCamera { lot, gate, .. },
            Access::Publish { .. },
            Topic::GatePlate { lot: l, gate: g }
            | Topic::GateState { lot: l, gate: g }
            | Topic::GateOffline { lot: l, gate: g },
        )
        | (
            Client::GateCamera { lot, gate, .. },
            Access::Subscribe,
            Topic::GateCommand { lot: l, gate: g } | Topic::GateStanding { lot: l, gate: g },
        ) => l == lot && g == gate,
        (
            Client::BaySensor { lot, bay, .. },
            Access::Publish { .. },
            Topic::BayOccupancy { lot: l, bay: b } | Topic::BayHeartbeat { lot: l, bay: b },
        )
        | (
            Client::BayCamera { lot, bay, .. },
            Access::Publish { .. },
            Topic::BayPlate { lot: l, bay: b },
        ) => l == lot && b == bay,
        (Client::Bridge { id }, Access::Publish { .. }, Topic::BridgeOccupancy { device }) => {
            device == id
        }
        _ => false,
    }
}

/// The availability of every lot, as a topic filter: anyone logged in may subscribe to it (or
/// to one lot's).
pub const AVAILABILITY_FILTER: &str = "parkflow/v1/lots/+/availability";

/// Everything `client` may do, as literal topics, for brokers that keep permission lists of
/// their own (Mosquitto's dynamic security): what [`allows`] grants a device, beside reading
/// availability ([`AVAILABILITY_FILTER`]). The platform's own permissions are not listed.
pub fn grants(client: &Client) -> Vec<(Access, Topic)> {
    let publish = Access::Publish { retain: false };
    let status = |id: &DeviceId| {
        (
            Access::Publish { retain: true },
            Topic::DeviceStatus { device: id.clone() },
        )
    };
    match client {
        Client::Platform => Vec::new(),
        Client::GateCamera { id, lot, gate } => vec![
            (
                publish,
                Topic::GatePlate {
                    lot: lot.clone(),
                    gate: gate.clone(),
                },
            ),
            (
                publish,
                Topic::GateState {
                    lot: lot.clone(),
                    gate: gate.clone(),
                },
            ),
            (
                publish,
                Topic::GateOffline {
                    lot: lot.clone(),
                    gate: gate.clone(),
                },
            ),
            (
                Access::Subscribe,
                Topic::GateCommand {
                    lot: lot.clone(),
                    gate: gate.clone(),
                },
            ),
            (
                Access::Subscribe,
                Topic::GateStanding {
                    lot: lot.clone(),
                    gate: gate.clone(),
                },
            ),
            status(id),
        ],
        Client::BaySensor { id, lot, bay } => vec![
            (
                publish,
                Topic::BayOccupancy {
                    lot: lot.clone(),
                    bay: bay.clone(),
                },
            ),
            (
                publish,
                Topic::BayHeartbeat {
                    lot: lot.clone(),
                    bay: bay.clone(),
                },
            ),
            status(id),
        ],
        Client::BayCamera { id, lot, bay } => vec![
            (
                publish,
                Topic::BayPlate {
                    lot: lot.clone(),
                    bay: bay.clone(),
                },
            ),
            status(id),
        ],
        Client::Bridge { id } => vec![
            (publish, Topic::BridgeOccupancy { device: id.clone() }),
            status(id),
        ],
    }
}

/// What one client may do, worked out once when it connects, for a broker that checks every
/// packet itself (the embedded broker): its topics as strings, so that a PUBLISH costs a string
/// comparison, not a parse. The same rules as [`allows`], which it asks for subscriptions.
pub struct Grants {
    client: Option<Client>,
    /// Topic, whether it may be retained, largest payload.
    publish: Vec<(String, bool, usize)>,
}

/// Room for a PUBLISH's topic length, packet id and a subscription's filters besides the payload.
const PACKET_OVERHEAD: usize = 1024;

impl Grants {
    /// The grants of `client`; `None` (not in the registry) may do nothing.
    pub fn of(client: Option<Client>) -> Self {
        let publish = client
            .as_ref()
            .map(grants)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(access, topic)| match access {
                Access::Publish { retain } => {
                    Some((topic.to_string(), retain, topic.max_payload_bytes()))
                }
                Access::Subscribe => None,
            })
            .collect();
        Self { client, publish }
    }

    /// The largest packet the client may send: its largest message and room for the rest.
    pub fn max_packet_bytes(&self) -> usize {
        match self.client {
            Some(Client::Platform) => usize::MAX,
            _ => {
                PACKET_OVERHEAD
                    + self
                        .publish
                        .iter()
                        .map(|(_, _, max)| *max)
                        .max()
                        .unwrap_or(0)
            }
        }
    }

    /// Whether the client may publish `payload_bytes` on `topic`, `retain`ed or not.
    pub fn may_publish(&self, topic: &str, retain: bool, payload_bytes: usize) -> bool {
        if self.client == Some(Client::Platform) {
            return true;
        }
        self.publish.iter().any(|(own, may_retain, max)| {
            own == topic && (*may_retain || !retain) && payload_bytes <= *max
        })
    }

    /// Whether the client may subscribe to `filter`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.client
            .as_ref()
            .is_some_and(|client| allows(client, Access::Subscribe, filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLISH: Access = Access::Publish { retain: false };

    fn camera() -> Client {
        Client::GateCamera {
            id: DeviceId::parse("cam-1").unwrap(),
            lot: LotId::parse("lot-a").unwrap(),
            gate: GateId::parse("in-1").unwrap(),
        }
    }

    fn sensor() -> Client {
        Client::BaySensor {
            id: DeviceId::parse("sensor-1").unwrap(),
            lot: LotId::parse("lot-a").unwrap(),
            bay: BayId::parse("b-1").unwrap(),
        }
    }

    #[test]
    fn the_listed_grants_are_exactly_what_allows_permits() {
        let bay_camera = Client::BayCamera {
            id: DeviceId::parse("bcam-1").unwrap(),
            lot: LotId::parse("lot-a").unwrap(),
            bay: BayId::parse("b-1").unwrap(),
        };
        let bridge = Client::Bridge {
            id: DeviceId::parse("bridge-1").unwrap(),
        };
        let clients = [camera(), sensor(), bay_camera, bridge];
        for client in &clients {
            let own = grants(client);
            for (access, topic) in &own {
                assert!(allows(client, *access, &topic.to_string()), "{topic}");
            }
            // Every other device's grants are refused to this one.
            for other in clients.iter().filter(|other| *other != client) {
                for (access, topic) in grants(other) {
                    let mine = own.iter().any(|(_, t)| *t == topic);
                    assert!(
                        mine || !allows(client, access, &topic.to_string()),
                        "{client:?} may {access:?} {topic}"
                    );
                }
            }
        }
        assert!(allows(&sensor(), Access::Subscribe, AVAILABILITY_FILTER));
    }

    #[test]
    fn a_gate_camera_speaks_and_listens_for_its_own_gate_only() {
        let camera = camera();
        let gate = "parkflow/v1/lots/lot-a/gates/in-1";
        assert!(allows(&camera, PUBLISH, &format!("{gate}/plate")));
        assert!(allows(&camera, PUBLISH, &format!("{gate}/state")));
        assert!(allows(
            &camera,
            Access::Subscribe,
            &format!("{gate}/command")
        ));
        assert!(
            !allows(&camera, PUBLISH, &format!("{gate}/command")),
            "commands are the platform's"
        );
        assert!(!allows(
            &camera,
            Access::Subscribe,
            &format!("{gate}/plate")
        ));
        let other = "parkflow/v1/lots/lot-a/gates/in-2";
        assert!(!allows(&camera, PUBLISH, &format!("{other}/plate")));
        assert!(!allows(
            &camera,
            Access::Subscribe,
            &format!("{other}/command")
        ));
        assert!(!allows(
            &camera,
            PUBLISH,
            "parkflow/v1/lots/lot-a/bays/b-1/occupancy"
        ));
    }

    #[test]
    fn a_device_cannot_spy_with_wildcards_or_the_brokers_control_topics() {
        for client in [camera(), sensor()] {
            for filter in [
                "#",
                "parkflow/v1/#",
                "parkflow/v1/lots/+/gates/+/plate",
                "parkflow/v1/lots/lot-a/gates/in-1/+",
                "$CONTROL/dynamic-security/v1",
                "$SYS/#",
            ] {
                assert!(!allows(&client, Access::Subscribe, filter), "{filter}");
                assert!(!allows(&client, PUBLISH, filter), "{filter}");
            }
        }
        assert!(allows(
            &Client::Platform,
            Access::Subscribe,
            "parkflow/v1/#"
        ));
    }

    #[test]
    fn availability_is_readable_by_anyone_and_written_by_the_platform_alone() {
        let sensor = sensor();
        assert!(allows(
            &sensor,
            Access::Subscribe,
            "parkflow/v1/lots/+/availability"
        ));
        assert!(allows(
            &sensor,
            Access::Subscribe,
            "parkflow/v1/lots/lot-b/availability"
        ));
        assert!(!allows(
            &sensor,
            PUBLISH,
            "parkflow/v1/lots/lot-a/availability"
        ));
        assert!(allows(
            &Client::Platform,
            Access::Publish { retain: true },
            "parkflow/v1/lots/lot-a/availability"
        ));
    }

    #[test]
    fn a_device_reports_only_its_own_status_and_retains_nothing_else() {
        let sensor = sensor();
        let retained = Access::Publish { retain: true };
        assert!(allows(
            &sensor,
            retained,
            "parkflow/v1/devices/sensor-1/status"
        ));
        assert!(
            !allows(&sensor, retained, "parkflow/v1/devices/sensor-2/status"),
            "another's status"
        );
        assert!(!allows(
            &sensor,
            Access::Subscribe,
            "parkflow/v1/devices/sensor-1/status"
        ));
        assert!(allows(
            &sensor,
            PUBLISH,
            "parkflow/v1/lots/lot-a/bays/b-1/heartbeat"
        ));
        assert!(!allows(
            &sensor,
            retained,
            "parkflow/v1/lots/lot-a/bays/b-1/heartbeat"
        ));
        assert!(!allows(
            &sensor,
            PUBLISH,
            "parkflow/v1/lots/lot-a/bays/b-2/occupancy"
        ));
        assert!(
            !allows(&sensor, PUBLISH, "parkflow/v1/lots/lot-a/bays/b-1/plate"),
            "a camera's"
        );
        let bridge = Client::Bridge {
            id: DeviceId::parse("bridge-1").unwrap(),
        };
        assert!(allows(
            &bridge,
            PUBLISH,
            "parkflow/v1/bridge/bridge-1/occupancy"
        ));
        assert!(!allows(
            &bridge,
            PUBLISH,
            "parkflow/v1/bridge/bridge-2/occupancy"
        ));
    }

    #[test]
    fn grants_held_per_packet_agree_with_allows_and_bound_the_size() {
        let sensor = Grants::of(Some(sensor()));
        let own = "parkflow/v1/lots/lot-a/bays/b-1/occupancy";
        assert!(sensor.may_publish(own, false, 300));
        assert!(!sensor.may_publish(own, true, 300), "retained");
        assert!(!sensor.may_publish(own, false, 100 * 1024), "too large");
        assert!(!sensor.may_publish("parkflow/v1/lots/lot-a/bays/b-2/occupancy", false, 300));
        assert!(sensor.may_publish("parkflow/v1/devices/sensor-1/status", true, 300));
        assert!(!sensor.may_publish("parkflow/v1/devices/sensor-2/status", true, 300));
        assert!(sensor.may_subscribe(AVAILABILITY_FILTER));
        assert!(!sensor.may_subscribe("#"));
        assert!(sensor.max_packet_bytes() < 16 * 1024);

        let bridge = Grants::of(Some(Client::Bridge {
            id: DeviceId::parse("bridge-1").unwrap(),
        }));
        assert!(bridge.may_publish("parkflow/v1/bridge/bridge-1/occupancy", false, 300 * 1024));
        assert!(bridge.max_packet_bytes() > 512 * 1024);

        let camera = Grants::of(Some(camera()));
        assert!(camera.may_subscribe("parkflow/v1/lots/lot-a/gates/in-1/command"));
        assert!(!camera.may_publish("parkflow/v1/lots/lot-a/gates/in-1/command", false, 10));

        let stranger = Grants::of(None);
        assert!(!stranger.may_publish(own, false, 1));
        assert!(!stranger.may_subscribe(AVAILABILITY_FILTER));

        let platform = Grants::of(Some(Client::Platform));
        assert!(platform.may_publish("parkflow/v1/lots/lot-a/availability", true, 1 << 20));
        assert!(platform.may_subscribe("#"));
    }
}
