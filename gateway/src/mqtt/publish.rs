//! Publishing barrier commands: signed with the gate camera's secret so a gate obeys only the platform.

use parkflow_protocol::sign::{plain, seal};
use parkflow_protocol::{DeviceAuth, GateCommand, GateId, Topic};
use rumqttc::{AsyncClient, QoS};
use secrecy::ExposeSecret;

use crate::registry::{Lot, Registry};

/// Why a command could not be queued for publication.
#[derive(Debug, thiserror::Error)]
#[error("failed to queue a barrier command")]
pub struct PublishError(#[from] rumqttc::ClientError);

/// Publishes commands to gates (and hands those of lanes with an off-the-shelf camera to the
/// barrier relay, which makes the vendor's call).
#[derive(Clone)]
pub struct CommandPublisher {
    client: AsyncClient,
    relay: Option<crate::anpr::barrier::BarrierRelay>,
}

impl CommandPublisher {
    pub fn new(client: AsyncClient) -> Self {
        Self {
            client,
            relay: None,
        }
    }

    /// Commands for lanes whose camera opens its barrier over HTTP go to `relay` too.
    pub(crate) fn with_relay(mut self, relay: crate::anpr::barrier::BarrierRelay) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Signs `command` for `gate` of `lot` and queues it (QoS 1) without waiting: the decision
    /// path never blocks on the network. If the queue is full the command is lost, and the camera,
    /// which re-sends its read until answered, gets the same command again.
    /// A gate without a registered camera gets plain JSON.
    pub fn publish(
        &self,
        registry: &Registry,
        lot: &Lot,
        gate: &GateId,
        command: &GateCommand,
    ) -> Result<(), PublishError> {
        let topic = Topic::GateCommand {
            lot: lot.id.clone(),
            gate: gate.clone(),
        };
        let camera = registry
            .gate(lot.idx, gate)
            .and_then(|g| g.camera.as_ref())
            .and_then(|id| registry.device(id));
        let payload = match camera {
            Some(camera) => seal(
                &topic,
                command,
                &camera.id,
                camera.secret.expose_secret().as_bytes(),
            ),
            None => {
                if lot.device_auth == DeviceAuth::Signed {
                    tracing::debug!(lot = %lot.id, gate = %gate, "gate has no registered camera; command sent unsigned");
                }
                plain(&topic, command)
            }
        };
        if let (Some(relay), Some(control)) = (
            &self.relay,
            camera
                .and_then(|c| c.anpr.as_ref())
                .and_then(|a| a.control.clone()),
        ) {
            relay.send(crate::anpr::barrier::Call {
                lot: lot.id.clone(),
                gate: gate.clone(),
                control,
                command: command.clone(),
            });
        }
        self.client
            .try_publish(topic.to_string(), QoS::AtLeastOnce, false, payload)?;
        Ok(())
    }
}
