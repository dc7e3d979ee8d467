//! Per-client permissions inside the embedded broker.
//!
//! rumqttd asks only "may this client log in?". Everything else a client sends goes through the
//! [`Protocol`] that parses its packets, and rumqttd gives each connection its own copy of it: so
//! [`Guarded`] reads the CONNECT, asks the [`Authenticator`] what that client may do, and then
//! holds each later packet to it. A client that reaches beyond its permissions (a topic not its
//! own, a retained message where it may not leave one, a packet larger than its messages can be)
//! is disconnected before rumqttd routes anything: MQTT 3.1.1 has no way to refuse a single
//! PUBLISH, and a SUBACK failure code is not something rumqttd can send.

use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Error, Packet, Protocol};

use crate::config::{Authenticator, Login};

/// The largest CONNECT read: a client id, a login and a last will (a signed status, well under
/// 1 KiB in ParkFlow's protocol).
const MAX_CONNECT_BYTES: usize = 16 * 1024;

/// What one logged-in client may do. Asked once at its CONNECT; a change of the client's
/// standing (rotation, revocation) reaches it by disconnecting it.
pub trait Permissions: Send + Sync {
    /// The largest packet (after its fixed header) the client may send: a bigger one closes
    /// the connection as soon as its header is read, before its bytes are buffered.
    fn max_packet_bytes(&self) -> usize;
    /// Whether the client may publish `payload_bytes` on `topic`, retained or not (also asked of
    /// its last will).
    fn may_publish(&self, topic: &str, retain: bool, payload_bytes: usize) -> bool;
    /// Whether the client may subscribe to `filter`.
    fn may_subscribe(&self, filter: &str) -> bool;
}

/// Everything allowed, up to the listener's packet size: the platform's own clients, and
/// benches that measure the broker without the registry.
pub struct Unrestricted;

impl Permissions for Unrestricted {
    fn max_packet_bytes(&self) -> usize {
        usize::MAX
    }

    fn may_publish(&self, _: &str, _: bool, _: usize) -> bool {
        true
    }

    fn may_subscribe(&self, _: &str) -> bool {
        true
    }
}

/// Lets anyone log in and do anything: for benches that measure the broker itself and for tests
/// where it stands in for an outside broker. Never in front of devices.
pub struct Anyone;

impl Authenticator for Anyone {
    fn authenticate(&self, _: String, _: String, _: String) -> Login {
        Box::pin(std::future::ready(true))
    }

    fn permissions(&self, _: &str, _: &str) -> Box<dyn Permissions> {
        Box::new(Unrestricted)
    }
}

/// MQTT 3.1.1 as rumqttd reads it, held to the permissions of the client that connected.
#[derive(Clone)]
pub(crate) struct Guarded {
    authenticator: Arc<dyn Authenticator>,
    /// `None` until the CONNECT is read; each connection starts from a fresh clone.
    client: Option<(String, Arc<dyn Permissions>)>,
}

impl Guarded {
    pub(crate) fn new(authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            authenticator,
            client: None,
        }
    }

    fn check(&mut self, packet: &Packet) -> Result<(), Error> {
        let Some((client_id, permissions)) = &self.client else {
            // The first packet. rumqttd refuses anything but a CONNECT here, and checks the login
            // right after this read: permissions for a client id that fails it are never used.
            if let Packet::Connect(connect, _, will, _, login) = packet {
                let username = login.as_ref().map_or("", |login| login.username.as_str());
                let permissions = self.authenticator.permissions(&connect.client_id, username);
                if let Some(will) = will {
                    let topic = std::str::from_utf8(&will.topic).unwrap_or("");
                    if !permissions.may_publish(topic, will.retain, will.message.len()) {
                        return refuse(&connect.client_id, "last will", topic);
                    }
                }
                self.client = Some((connect.client_id.clone(), Arc::from(permissions)));
            }
            return Ok(());
        };
        match packet {
            Packet::Publish(publish, _) => {
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                if !permissions.may_publish(topic, publish.retain, publish.payload.len()) {
                    let what = if publish.retain {
                        "retained publish"
                    } else {
                        "publish"
                    };
                    return refuse(client_id, what, topic);
                }
            }
            Packet::Subscribe(subscribe, _) => {
                if let Some(filter) = subscribe
                    .filters
                    .iter()
                    .find(|filter| !permissions.may_subscribe(&filter.path))
                {
                    return refuse(client_id, "subscribe", &filter.path);
                }
            }
            // A second CONNECT on one connection is a protocol violation; it must not change
            // whose permissions apply.
            Packet::Connect(..) => return refuse(client_id, "second connect", ""),
            _ => {}
        }
        Ok(())
    }
}

fn refuse(client_id: &str, what: &str, topic: &str) -> Result<(), Error> {
    tracing::warn!(
        client_id,
        topic,
        "mqtt {what} beyond the client's permissions; disconnected"
    );
    Err(Error::IncorrectPacketFormat)
}

impl Protocol for Guarded {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        let limit = match &self.client {
            None => MAX_CONNECT_BYTES,
            Some((_, permissions)) => permissions.max_packet_bytes(),
        }
        .min(max_size);
        let packet = match V4.read_mut(stream, limit) {
            Err(Error::PayloadSizeLimitExceeded(size)) => {
                let client_id = self.client.as_ref().map_or("", |(id, _)| id.as_str());
                tracing::warn!(
                    client_id,
                    size,
                    limit,
                    "mqtt packet larger than the client may send; disconnected"
                );
                return Err(Error::PayloadSizeLimitExceeded(size));
            }
            other => other?,
        };
        self.check(&packet)?;
        Ok(packet)
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, Error> {
        V4.write(packet, write)
    }
}
