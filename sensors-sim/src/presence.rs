//! A device's status (SPEC §2, `devices/{device}/status`): on each connection it picks a random
//! connection value and publishes a signed `online` for it, and its last will is the signed
//! `offline` of that same connection — so the platform applies only the `offline` of the
//! connection it last saw, never an earlier one's or a forger's.

use chrono::Utc;
use parkflow_protocol::sign::{plain, seal};
use parkflow_protocol::{DeviceAuth, DeviceId, DeviceStatus, StatusReport, Topic};
use rumqttc::{LastWill, QoS};
use uuid::Uuid;

/// One device's status messages.
pub struct Presence {
    topic: Topic,
    device: DeviceId,
    secret: String,
    auth: DeviceAuth,
    connection: String,
}

impl Presence {
    pub fn new(device: DeviceId, secret: String, auth: DeviceAuth) -> Self {
        Self {
            topic: Topic::DeviceStatus {
                device: device.clone(),
            },
            device,
            secret,
            auth,
            connection: String::new(),
        }
    }

    /// Picks the value of the next connection; the last will to connect with is its `offline`.
    pub fn next_connection(&mut self) -> LastWill {
        self.connection = Uuid::new_v4().simple().to_string();
        LastWill::new(
            self.topic.to_string(),
            self.payload(DeviceStatus::Offline),
            QoS::AtLeastOnce,
            true,
        )
    }

    /// Where the status goes (retained).
    pub fn topic(&self) -> String {
        self.topic.to_string()
    }

    /// The current connection's `online`.
    pub fn online(&self) -> Vec<u8> {
        self.payload(DeviceStatus::Online)
    }

    fn payload(&self, status: DeviceStatus) -> Vec<u8> {
        let report = StatusReport {
            status,
            connection: self.connection.clone(),
            observed_at: Utc::now(),
        };
        match self.auth {
            DeviceAuth::Signed => seal(&self.topic, &report, &self.device, self.secret.as_bytes()),
            DeviceAuth::Broker => plain(&self.topic, &report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkflow_protocol::sign::open;

    #[test]
    fn each_connection_has_its_own_signed_online_and_will() {
        let device = DeviceId::parse("sensor-1").unwrap();
        let mut presence = Presence::new(device.clone(), "s3cret".into(), DeviceAuth::Signed);
        let will = presence.next_connection();
        let topic = presence.topic();
        let opened = |payload: &[u8]| {
            open::<StatusReport, _>(payload, &topic, DeviceAuth::Signed, |kid| {
                (kid == &device).then_some("s3cret")
            })
            .unwrap()
            .body
        };
        let offline = opened(&will.message);
        let online = opened(&presence.online());
        assert_eq!(offline.status, DeviceStatus::Offline);
        assert_eq!(online.status, DeviceStatus::Online);
        assert_eq!(offline.connection, online.connection);
        let first = online.connection;
        presence.next_connection();
        assert_ne!(opened(&presence.online()).connection, first);
    }
}
