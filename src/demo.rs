//! The demo city: a few gated lots near West Lake and on-street zones, their cameras, bay sensors
//! and bridges with fresh credentials, drivers, and tariffs that use every feature; simulated
//! traffic drives all but one lane of each lot and every bay of every zone.

use std::collections::HashMap;
use std::sync::Arc;

use parkflow_billing::TariffDefinition;
use parkflow_gateway::registry::{DeviceKind as RegistryDeviceKind, GateDirection, LotKind};
use parkflow_gateway::store::provision::{
    AnprPlan, DevicePlan, DriverPlan, LotPlan, OperatorPlan, Plan,
};
use parkflow_protocol::{DeviceAuth, DeviceId, GateId};
use parkflow_sensors_sim::camera::{self, AnprTransport, AnprVendor, CameraConfig};
use parkflow_sensors_sim::city::{Lane, LaneDirection};
use parkflow_sensors_sim::street::{self, StreetConfig, StreetStats, ZoneKeys};
use parkflow_sensors_sim::traffic::{self, Shared, TrafficConfig};
use parkflow_sensors_sim::{City, CityConfig, DeviceEntry, DeviceKind, DevicesFile, Zone};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::platform::{mqtt_password, random_device_key, random_secret};

/// Each demo lot's lane for an off-the-shelf ANPR camera.
const ANPR_GATE: &str = "anpr-in";

/// The demo's operator.
pub const OPERATOR: &str = "demo-operator";

/// The demo city and what it takes to provision and drive it.
pub struct Demo {
    pub city: City,
    pub plan: Plan,
    pub devices: DevicesFile,
    pub zones: Vec<(Zone, ZoneKeys)>,
    pub street_stats: Arc<StreetStats>,
    /// Where the lots' off-the-shelf cameras send their events when they are played
    /// ([`Demo::play_anpr`]); `None`: their lanes are left for real cameras.
    pub anpr_api: Option<String>,
}

/// Each zone of `city` with the keys its devices have in `devices` (a device missing from it is
/// an error).
fn zone_keys(city: &City, devices: &DevicesFile) -> anyhow::Result<Vec<(Zone, ZoneKeys)>> {
    let by_id: HashMap<&DeviceId, &DeviceEntry> =
        devices.devices.iter().map(|d| (&d.id, d)).collect();
    let find = |id: &DeviceId| {
        by_id
            .get(id)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("device {id} is not in the devices file"))
    };
    let mut zones = Vec::with_capacity(city.zones.len());
    for zone in &city.zones {
        let bridge = find(&zone.bridge())?;
        let sensors: Vec<_> = (0..zone.bays)
            .map(|i| find(&zone.sensor(i)))
            .collect::<anyhow::Result<_>>()?;
        let cameras: Vec<_> = if zone.cameras {
            (0..zone.bays)
                .map(|i| find(&zone.camera(i)))
                .collect::<anyhow::Result<_>>()?
        } else {
            Vec::new()
        };
        let login = |d: &&DeviceEntry| (d.mqtt_username.clone(), d.mqtt_password.clone());
        zones.push((
            zone.clone(),
            ZoneKeys {
                bridge: bridge.id.clone(),
                bridge_username: bridge.mqtt_username.clone(),
                bridge_password: bridge.mqtt_password.clone(),
                bridge_secret: bridge.secret.clone(),
                sensors: sensors.iter().map(|d| d.secret.clone()).collect(),
                cameras: cameras.iter().map(|d| d.secret.clone()).collect(),
                sensor_logins: sensors.iter().map(login).collect(),
                camera_logins: cameras.iter().map(login).collect(),
            },
        ));
    }
    Ok(zones)
}

/// Tariff of the `i`-th demo lot. Short demo stays (seconds to minutes) still cost something:
/// the grace period is 0 or 1 minute and a first-unit price applies; the night band is capped,
/// days are capped, 1 October is free and green plates pay half.
pub fn demo_tariff(i: usize) -> TariffDefinition {
    let grace = if i.is_multiple_of(2) { 0 } else { 1 };
    let unit = if i % 3 == 2 { 30 } else { 15 };
    let json = format!(
        r#"{{"currency": "CNY", "time_zone": "Asia/Shanghai", "grace_minutes": {grace}, "unit_minutes": {unit},
            "bands": [{{"from": "07:00", "to": "21:00", "unit_price": "3.00", "first_unit_price": "5.00"}},
                      {{"from": "21:00", "to": "07:00", "unit_price": "1.00", "cap": "5.00"}}],
            "daily_cap": "40.00", "free_days": ["2026-10-01"], "plate_color_multipliers": {{"green": "0.5"}},
            "effective_from": "2026-01-01T00:00:00Z"}}"#
    );
    serde_json::from_str(&json)
        .unwrap_or_else(|e| unreachable!("the demo tariff is valid JSON: {e}"))
}

impl Demo {
    /// Builds the demo city with fresh device credentials.
    pub fn new(config: &CityConfig) -> Self {
        let city = City::generate(config);
        let mut plan = Plan {
            operators: vec![OperatorPlan {
                id: OPERATOR.into(),
                name: "West Lake Parking Co.".into(),
            }],
            ..Plan::default()
        };
        let mut devices = DevicesFile::default();
        let anpr_gate =
            GateId::parse(ANPR_GATE).unwrap_or_else(|_| unreachable!("a valid gate id"));
        for (i, lot) in city.lots.iter().enumerate() {
            plan.lots.push(LotPlan {
                id: lot.id.clone(),
                operator_id: OPERATOR.into(),
                name: lot.name.clone(),
                kind: LotKind::OffStreet,
                lat: lot.lat,
                lon: lot.lon,
                capacity: lot.capacity,
                time_zone: "Asia/Shanghai".into(),
                device_auth: DeviceAuth::Signed,
                gates: lot
                    .lanes
                    .iter()
                    .map(|lane| {
                        let direction = match lane.direction {
                            LaneDirection::Entry => GateDirection::Entry,
                            LaneDirection::Exit => GateDirection::Exit,
                            LaneDirection::Both => GateDirection::Both,
                        };
                        (lane.gate.clone(), direction)
                    })
                    .chain(std::iter::once((anpr_gate.clone(), GateDirection::Entry)))
                    .collect(),
                bays: Vec::new(),
                max_stay_minutes: None,
                offline_policy: Default::default(),
                tariffs: vec![demo_tariff(i)],
            });
            // One lane per lot for an off-the-shelf camera (Hikvision's ISAPI push), left for a
            // real camera: its credentials are in the devices file; its barrier decisions go on
            // the gate's MQTT `command` topic for a ParkFlow barrier controller.
            {
                let id = DeviceId::parse(&format!("cam-{}-{anpr_gate}", lot.id))
                    .unwrap_or_else(|_| unreachable!("lot and gate ids make a valid device id"));
                let secret = random_secret();
                let entry = DeviceEntry {
                    id: id.clone(),
                    kind: DeviceKind::AnprHttp,
                    lot: lot.id.clone(),
                    gate: Some(anpr_gate.clone()),
                    bay: None,
                    mqtt_username: id.to_string(),
                    mqtt_password: mqtt_password(&secret),
                    secret,
                    simulated: false,
                    vendor: Some(parkflow_gateway::Vendor::Hikvision.as_str().into()),
                };
                plan.devices.push(DevicePlan {
                    id: id.clone(),
                    kind: RegistryDeviceKind::GateCamera,
                    lot: Some(lot.id.clone()),
                    gate: Some(anpr_gate.clone()),
                    bay: None,
                    mqtt_username: entry.mqtt_username.clone(),
                    secret: entry.secret.clone().into(),
                });
                plan.anpr.push(AnprPlan {
                    device: id,
                    vendor: parkflow_gateway::Vendor::Hikvision,
                    control_url: None,
                });
                devices.devices.push(entry);
            }
            for lane in &lot.lanes {
                let id = DeviceId::parse(&format!("cam-{}-{}", lot.id, lane.gate))
                    .unwrap_or_else(|_| unreachable!("lot and gate ids make a valid device id"));
                let secret = random_secret();
                let entry = DeviceEntry {
                    id: id.clone(),
                    kind: DeviceKind::GateCamera,
                    lot: lot.id.clone(),
                    gate: Some(lane.gate.clone()),
                    bay: None,
                    mqtt_username: id.to_string(),
                    mqtt_password: mqtt_password(&secret),
                    secret,
                    simulated: lane.simulated,
                    vendor: None,
                };
                plan.devices.push(DevicePlan {
                    id,
                    kind: RegistryDeviceKind::GateCamera,
                    lot: Some(lot.id.clone()),
                    gate: Some(lane.gate.clone()),
                    bay: None,
                    mqtt_username: entry.mqtt_username.clone(),
                    secret: entry.secret.clone().into(),
                });
                devices.devices.push(entry);
            }
        }
        let mut zones = Vec::with_capacity(city.zones.len());
        for (i, zone) in city.zones.iter().enumerate() {
            let (lot_plan, zone_devices, keys) = zone_plan(zone, city.lots.len() + i);
            plan.lots.push(lot_plan);
            for (device, entry) in zone_devices {
                plan.devices.push(device);
                devices.devices.push(entry);
            }
            zones.push((zone.clone(), keys));
        }
        for (n, driver) in city.drivers.iter().enumerate().filter(|(_, d)| d.enrolled) {
            plan.drivers.push(DriverPlan {
                // The same plate is the same driver on every run of the demo.
                id: Uuid::new_v5(&Uuid::NAMESPACE_OID, driver.plate.as_str().as_bytes()),
                name: format!("Demo driver {}", n + 1),
                suspended: driver.suspended,
                // One card in twenty is declined, so the demo shows invoices and arrears too.
                payment_account: Some(
                    if n % 20 == 7 {
                        format!("decline-{n}")
                    } else {
                        format!("acct-{n}")
                    }
                    .into(),
                ),
                plates: vec![(driver.plate.clone(), Some(driver.plate_color))],
            });
        }
        Self {
            city,
            plan,
            devices,
            zones,
            street_stats: Arc::new(StreetStats::default()),
            anpr_api: None,
        }
    }

    /// Gives every device already stored (by a previous run on this database) its stored secret
    /// instead of the fresh one, so that a restarted demo keeps its city: devices in the field
    /// keep working. Returns how many kept theirs.
    pub fn keep_stored_credentials(
        &mut self,
        stored: &HashMap<String, secrecy::SecretString>,
    ) -> anyhow::Result<usize> {
        use secrecy::ExposeSecret;
        let mut kept = 0;
        for device in &mut self.plan.devices {
            if let Some(secret) = stored.get(device.id.as_str()) {
                device.secret = secret.expose_secret().to_owned().into();
            }
        }
        for entry in &mut self.devices.devices {
            if let Some(secret) = stored.get(entry.id.as_str()) {
                entry.secret = secret.expose_secret().to_owned();
                entry.mqtt_password = mqtt_password(&entry.secret);
                kept += 1;
            }
        }
        if kept > 0 {
            // The zones' keys were drawn with the fresh secrets: take them from the file again.
            self.zones = zone_keys(&self.city, &self.devices)?;
        }
        Ok(kept)
    }

    /// The city `config` lays out, driven with the credentials of a devices file (as the platform
    /// that provisioned it wrote them): a device missing from the file is an error.
    pub fn from_devices(config: &CityConfig, devices: DevicesFile) -> anyhow::Result<Self> {
        let city = City::generate(config);
        let zones = zone_keys(&city, &devices)?;
        let mut devices = devices;
        devices
            .devices
            .retain(|d| matches!(d.kind, DeviceKind::GateCamera | DeviceKind::AnprHttp));
        Ok(Self {
            city,
            plan: Plan::default(),
            devices,
            zones,
            street_stats: Arc::new(StreetStats::default()),
            anpr_api: None,
        })
    }

    /// Plays each lot's off-the-shelf camera lane too (left for a real camera otherwise): its
    /// camera sends the vendor's HTTP events to `api` (`POST /v1/anpr/{id}`), and the traffic
    /// sends cars in through it as through any entry lane.
    pub fn play_anpr(&mut self, api: &str) {
        let gate = GateId::parse(ANPR_GATE).unwrap_or_else(|_| unreachable!("a valid gate id"));
        for device in &mut self.devices.devices {
            if device.kind == DeviceKind::AnprHttp {
                device.simulated = true;
            }
        }
        for lot in &mut self.city.lots {
            let played = self
                .devices
                .devices
                .iter()
                .any(|d| d.kind == DeviceKind::AnprHttp && d.lot == lot.id);
            if played && !lot.lanes.iter().any(|lane| lane.gate == gate) {
                lot.lanes.push(Lane {
                    gate: gate.clone(),
                    direction: LaneDirection::Entry,
                    simulated: true,
                });
            }
        }
        self.anpr_api = Some(api.trim_end_matches('/').to_owned());
    }

    /// Drives the simulated lanes and zones through the broker at `host:port` until `stop` is
    /// cancelled; then the cars inside leave (until `abort`).
    pub async fn drive(
        &self,
        host: &str,
        port: u16,
        traffic: &TrafficConfig,
        shared: Shared,
        stop: CancellationToken,
        abort: CancellationToken,
    ) {
        let mut cameras = HashMap::new();
        let tracker = TaskTracker::new();
        // Cameras outlive the arrivals: they answer the cars leaving.
        let camera_token = abort.child_token();
        // A lot's lanes share one count while they decide alone, as lanes on one controller do.
        let mut lot_counts: HashMap<_, Arc<std::sync::atomic::AtomicI64>> = HashMap::new();
        for device in self.devices.devices.iter().filter(|d| d.simulated) {
            let Some(gate) = device.gate.clone() else {
                continue;
            };
            let anpr = match device.kind {
                DeviceKind::GateCamera => None,
                DeviceKind::AnprHttp => {
                    let vendor = device.vendor.as_deref().and_then(AnprVendor::parse);
                    match (vendor, &self.anpr_api) {
                        (Some(vendor), Some(api)) => Some(AnprTransport {
                            vendor,
                            api: api.clone(),
                        }),
                        // A vendor the simulator does not speak: left for a real camera.
                        _ => continue,
                    }
                }
                _ => continue,
            };
            let config = CameraConfig {
                decide_alone_after: traffic.decide_alone_after,
                lot_count: Some(lot_counts.entry(device.lot.clone()).or_default().clone()),
                anpr,
                ..CameraConfig::new(host, port, DeviceAuth::Signed)
            };
            let handle = camera::spawn(
                device.clone(),
                config,
                shared.stats.clone(),
                &tracker,
                camera_token.clone(),
            );
            cameras.insert((device.lot.clone(), gate), handle);
        }
        let bays: u64 = self.city.zones.iter().map(|z| u64::from(z.bays)).sum();
        let street = if bays > 10_000 {
            // A city's worth of sensors: heartbeats every five minutes, stays of half an hour.
            StreetConfig {
                heartbeat_every: std::time::Duration::from_secs(300),
                mean_stay: std::time::Duration::from_secs(1_800),
                mean_free: std::time::Duration::from_secs(1_200),
                tick: std::time::Duration::from_secs(2),
                ..StreetConfig::demo()
            }
        } else {
            StreetConfig::demo()
        };
        street::spawn(
            &self.zones,
            Arc::new(self.city.drivers.clone()),
            host,
            port,
            &street,
            self.street_stats.clone(),
            &tracker,
            stop.clone(),
        );
        traffic::drive(&self.city, &cameras, traffic, shared, stop, abort).await;
        camera_token.cancel();
        tracker.close();
        tracker.wait().await;
    }
}

/// A zone's lot, its devices (sensors, cameras, the bridge) with fresh credentials, and the keys
/// the simulator signs with. The first zone has a short maximum stay, so overstays show.
pub fn zone_plan(
    zone: &Zone,
    tariff: usize,
) -> (LotPlan, Vec<(DevicePlan, DeviceEntry)>, ZoneKeys) {
    let lot = LotPlan {
        id: zone.id.clone(),
        operator_id: OPERATOR.into(),
        name: zone.name.clone(),
        kind: LotKind::OnStreet,
        lat: zone.lat,
        lon: zone.lon,
        capacity: zone.bays,
        time_zone: "Asia/Shanghai".into(),
        device_auth: DeviceAuth::Signed,
        gates: Vec::new(),
        bays: (0..zone.bays).map(|i| zone.bay(i)).collect(),
        max_stay_minutes: Some(if tariff.is_multiple_of(2) { 3 } else { 120 }),
        offline_policy: Default::default(),
        tariffs: vec![demo_tariff(tariff)],
    };
    let device = |id: DeviceId, kind: DeviceKind, bay| {
        // Bay devices get 16-byte keys, which the registry keeps packed.
        let secret = if kind == DeviceKind::Bridge {
            random_secret()
        } else {
            random_device_key()
        };
        let entry = DeviceEntry {
            id: id.clone(),
            kind,
            lot: zone.id.clone(),
            gate: None,
            bay,
            mqtt_username: id.to_string(),
            mqtt_password: mqtt_password(&secret),
            secret,
            simulated: true,
            vendor: None,
        };
        let plan = DevicePlan {
            id,
            kind: match kind {
                DeviceKind::BaySensor => RegistryDeviceKind::BaySensor,
                DeviceKind::BayCamera => RegistryDeviceKind::BayCamera,
                DeviceKind::Bridge => RegistryDeviceKind::Bridge,
                DeviceKind::GateCamera | DeviceKind::AnprHttp => RegistryDeviceKind::GateCamera,
            },
            lot: Some(zone.id.clone()),
            gate: None,
            bay: entry.bay.clone(),
            mqtt_username: entry.mqtt_username.clone(),
            secret: entry.secret.clone().into(),
        };
        (plan, entry)
    };
    let mut devices = Vec::new();
    let mut sensors = Vec::with_capacity(zone.bays as usize);
    let mut cameras = Vec::new();
    let (mut sensor_logins, mut camera_logins) = (Vec::new(), Vec::new());
    for i in 0..zone.bays {
        let (plan, entry) = device(zone.sensor(i), DeviceKind::BaySensor, Some(zone.bay(i)));
        sensors.push(entry.secret.clone());
        sensor_logins.push((entry.mqtt_username.clone(), entry.mqtt_password.clone()));
        devices.push((plan, entry));
        if zone.cameras {
            let (plan, entry) = device(zone.camera(i), DeviceKind::BayCamera, Some(zone.bay(i)));
            cameras.push(entry.secret.clone());
            camera_logins.push((entry.mqtt_username.clone(), entry.mqtt_password.clone()));
            devices.push((plan, entry));
        }
    }
    let (bridge_plan, bridge_entry) = device(zone.bridge(), DeviceKind::Bridge, None);
    let keys = ZoneKeys {
        bridge: bridge_entry.id.clone(),
        bridge_username: bridge_entry.mqtt_username.clone(),
        bridge_password: bridge_entry.mqtt_password.clone(),
        bridge_secret: bridge_entry.secret.clone(),
        sensors,
        cameras,
        sensor_logins,
        camera_logins,
    };
    devices.push((bridge_plan, bridge_entry));
    (lot, devices, keys)
}
