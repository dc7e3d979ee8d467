//! The test city a platform is provisioned with.

use super::*;
use chrono::Utc;
use parkflow::demo::demo_tariff;
use parkflow_gateway::registry::{
    DeviceKind, GateDirection, LotKind, mqtt_password, random_device_key,
};
use parkflow_gateway::store::provision::{
    BlockPlan, DevicePlan, DriverPlan, LotPlan, OperatorPlan, PassPlan, Plan,
};
use parkflow_protocol::{BayId, DeviceId, GateId, LotId, Plate, PlateColor};
use uuid::Uuid;

/// The test city: one gated lot with an entry and an exit lane, a few drivers.
#[derive(Clone)]
pub struct World {
    pub lot: LotId,
    pub entry: GateId,
    pub exit: GateId,
    pub entry_camera: DeviceId,
    pub exit_camera: DeviceId,
    pub secrets: Vec<(DeviceId, String, String)>,
    pub enrolled: Plate,
    pub unenrolled: Plate,
    pub suspended: Plate,
    pub blocked: Plate,
    pub pass_holder: Plate,
    pub plan: Plan,
}

impl World {
    /// Lot ids are unique per test so tests sharing one external broker never meet.
    pub fn new(setup: Setup, capacity: u32) -> Self {
        let suffix = &Uuid::new_v4().simple().to_string()[..10];
        let lot = LotId::parse(&format!("lot-{suffix}")).unwrap();
        let entry = GateId::parse("in-1").unwrap();
        let exit = GateId::parse("out-1").unwrap();
        let entry_camera = DeviceId::parse(&format!("cam-in-{suffix}")).unwrap();
        let exit_camera = DeviceId::parse(&format!("cam-out-{suffix}")).unwrap();
        let plate = |p: &str| Plate::parse(p).unwrap();
        let (enrolled, unenrolled, suspended, blocked, pass_holder) = (
            plate("浙A0B818"),
            plate("浙B12345"),
            plate("浙C55555"),
            plate("浙D66666"),
            plate("浙E77777"),
        );
        let secrets: Vec<(DeviceId, String, String)> = [&entry_camera, &exit_camera]
            .into_iter()
            .map(|id| {
                let secret = format!("secret-{}", Uuid::new_v4());
                (id.clone(), mqtt_password(&secret), secret)
            })
            .collect();
        let devices = secrets
            .iter()
            .zip([&entry, &exit])
            .map(|((id, _, secret), gate)| DevicePlan {
                id: id.clone(),
                kind: DeviceKind::GateCamera,
                lot: Some(lot.clone()),
                gate: Some(gate.clone()),
                bay: None,
                mqtt_username: id.to_string(),
                secret: secret.clone().into(),
            })
            .collect();
        let driver = |plates: Vec<Plate>, suspended| DriverPlan {
            id: Uuid::new_v4(),
            name: "Test driver".into(),
            suspended,
            payment_account: Some("acct-test".into()),
            plates: plates
                .into_iter()
                .map(|p| (p, Some(PlateColor::Blue)))
                .collect(),
        };
        let plan = Plan {
            operators: vec![OperatorPlan {
                id: "op-test".into(),
                name: "Test operator".into(),
            }],
            lots: vec![LotPlan {
                id: lot.clone(),
                operator_id: "op-test".into(),
                name: "Test lot".into(),
                kind: LotKind::OffStreet,
                lat: 30.25,
                lon: 120.15,
                capacity,
                time_zone: "Asia/Shanghai".into(),
                device_auth: setup.device_auth(),
                gates: vec![
                    (entry.clone(), GateDirection::Entry),
                    (exit.clone(), GateDirection::Exit),
                ],
                bays: Vec::new(),
                max_stay_minutes: None,
                offline_policy: Default::default(),
                // Grace 0, 15-minute units, first unit 5.00 by day; night 1.00 capped at 5.00.
                tariffs: vec![demo_tariff(0)],
            }],
            devices,
            drivers: vec![
                driver(vec![enrolled.clone()], false),
                driver(vec![suspended.clone()], true),
            ],
            passes: vec![PassPlan {
                lot: lot.clone(),
                plate: pass_holder.clone(),
                valid_from: Utc::now() - chrono::Duration::days(1),
                valid_until: Utc::now() + chrono::Duration::days(30),
            }],
            blocks: vec![BlockPlan {
                lot: lot.clone(),
                plate: blocked.clone(),
                reason: "test".into(),
            }],
            anpr: Vec::new(),
        };
        Self {
            lot,
            entry,
            exit,
            entry_camera,
            exit_camera,
            secrets,
            enrolled,
            unenrolled,
            suspended,
            blocked,
            pass_holder,
            plan,
        }
    }

    /// Adds a street of one bay (`b-1`) with a sensor; returns the street and the sensor.
    pub fn add_bay_sensor(&mut self) -> (LotId, DeviceId) {
        let suffix = &Uuid::new_v4().simple().to_string()[..10];
        let street = LotId::parse(&format!("street-{suffix}")).unwrap();
        let bay = BayId::parse("b-1").unwrap();
        self.plan.lots.push(LotPlan {
            id: street.clone(),
            name: "Test street".into(),
            kind: LotKind::OnStreet,
            capacity: 1,
            gates: Vec::new(),
            bays: vec![bay.clone()],
            ..self.plan.lots[0].clone()
        });
        let sensor = DeviceId::parse(&format!("sensor-{suffix}")).unwrap();
        let secret = random_device_key();
        self.plan.devices.push(DevicePlan {
            id: sensor.clone(),
            kind: DeviceKind::BaySensor,
            lot: Some(street.clone()),
            gate: None,
            bay: Some(bay),
            mqtt_username: sensor.to_string(),
            secret: secret.clone().into(),
        });
        self.secrets
            .push((sensor.clone(), mqtt_password(&secret), secret));
        (street, sensor)
    }

    pub fn device(&self, id: &DeviceId) -> (String, String) {
        let (_, password, secret) = self.secrets.iter().find(|(d, _, _)| d == id).unwrap();
        (password.clone(), secret.clone())
    }
}
