//! A device that speaks the protocol over MQTT.

use std::time::Duration;

use super::*;
use chrono::{DateTime, Utc};
use parkflow_protocol::sign::{open, plain, seal};
use parkflow_protocol::{
    DeviceAuth, DeviceId, Direction, EventId, GateCommand, GateId, GatePlateRead, LotId,
    PlateColor, Topic,
};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A device on the broker: a gate camera, or anything pretending to be one.
pub struct TestDevice {
    pub id: DeviceId,
    pub lot: LotId,
    pub gate: GateId,
    secret: String,
    auth: DeviceAuth,
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    seen: Vec<GateCommand>,
    connection: JoinHandle<()>,
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        // Another device may connect under the same client id next; this one must be gone.
        self.connection.abort();
    }
}

impl TestDevice {
    /// Connects as `id` (client id = device id) and subscribes to its gate's command topic.
    pub async fn connect(
        platform: &TestPlatform,
        world: &World,
        id: &DeviceId,
        gate: &GateId,
    ) -> Self {
        let (password, secret) = world.device(id);
        let mut options = MqttOptions::new(id.as_str(), &platform.mqtt.0, platform.mqtt.1);
        if platform.setup.broker.checks_logins() {
            options.set_credentials(id.as_str(), &password);
        }
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let topic = Topic::GateCommand {
            lot: world.lot.clone(),
            gate: gate.clone(),
        }
        .to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::channel(1);
        let subscribe_client = client.clone();
        let connection = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        subscribe_client
                            .try_subscribe(topic.as_str(), QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
            .await
            .expect("device subscribed");
        Self {
            id: id.clone(),
            lot: world.lot.clone(),
            gate: gate.clone(),
            secret,
            auth: platform.setup.device_auth(),
            client,
            commands: rx,
            seen: Vec::new(),
            connection,
        }
    }

    pub fn read(&self, plate: &str, direction: Direction) -> GatePlateRead {
        GatePlateRead {
            event_id: EventId::parse(&Uuid::new_v4().to_string()).unwrap(),
            plate: plate.to_owned(),
            plate_color: Some(PlateColor::Blue),
            confidence: 0.97,
            direction,
            observed_at: Utc::now(),
        }
    }

    pub fn read_at(
        &self,
        plate: &str,
        direction: Direction,
        observed_at: DateTime<Utc>,
    ) -> GatePlateRead {
        GatePlateRead {
            observed_at,
            ..self.read(plate, direction)
        }
    }

    pub fn plate_topic(&self) -> Topic {
        Topic::GatePlate {
            lot: self.lot.clone(),
            gate: self.gate.clone(),
        }
    }

    /// The read as this device publishes it: signed, or plain JSON in `broker` mode.
    pub fn encode(&self, read: &GatePlateRead) -> Vec<u8> {
        match self.auth {
            DeviceAuth::Signed => seal(&self.plate_topic(), read, &self.id, self.secret.as_bytes()),
            DeviceAuth::Broker => plain(&self.plate_topic(), read),
        }
    }

    pub fn sign(&self, read: &GatePlateRead) -> Vec<u8> {
        seal(&self.plate_topic(), read, &self.id, self.secret.as_bytes())
    }

    pub async fn publish(&self, read: &GatePlateRead) {
        self.publish_raw(&self.plate_topic().to_string(), self.encode(read))
            .await;
    }

    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Waits for the command answering `event_id` (verifying its signature) and returns it.
    pub async fn command_for(&mut self, event_id: &EventId) -> GateCommand {
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, async {
            loop {
                if let Some(found) = self.seen.iter().find(|c| &c.event_id == event_id) {
                    return found.clone();
                }
                let (topic, payload) = self.commands.recv().await.expect("device connection alive");
                let own = self.id.clone();
                let secret = self.secret.clone();
                let command = open::<GateCommand, _>(&payload, &topic, DeviceAuth::Signed, |kid| {
                    (kid == &own).then_some(secret)
                })
                .expect("commands are signed with this camera's secret")
                .body;
                self.seen.push(command);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no command answered event {event_id} within {deadline:?}"))
    }

    /// Publishes `read` and waits for its command.
    pub async fn decide(&mut self, read: &GatePlateRead) -> GateCommand {
        self.publish(read).await;
        self.command_for(&read.event_id).await
    }

    /// Publishes `read` again and waits for a barrier command answering it (not an
    /// `ack_offline`) beyond those seen already.
    pub async fn decide_again(&mut self, read: &GatePlateRead) -> GateCommand {
        let before = self.commands_for(&read.event_id).len();
        self.publish(read).await;
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, async {
            loop {
                let seen = self.commands_for(&read.event_id);
                if let Some(found) = seen[before.min(seen.len())..]
                    .iter()
                    .find(|c| c.action != parkflow_protocol::GateAction::AckOffline)
                {
                    return found.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no command answered event {} again", read.event_id))
    }

    /// Commands received so far for `event_id` (after taking in what has arrived).
    pub fn commands_for(&mut self, event_id: &EventId) -> Vec<GateCommand> {
        while let Ok((topic, payload)) = self.commands.try_recv() {
            let opened = open::<GateCommand, _>(&payload, &topic, DeviceAuth::Signed, |_| {
                Some(self.secret.clone())
            })
            .expect("commands are signed with this camera's secret");
            self.seen.push(opened.body);
        }
        self.seen
            .iter()
            .filter(|c| &c.event_id == event_id)
            .cloned()
            .collect()
    }

    pub fn commands_seen_for(&mut self, event_id: &EventId) -> usize {
        self.commands_for(event_id).len()
    }
}
