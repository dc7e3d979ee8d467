//! Disconnecting a device whose credentials were revoked or rotated. Brokers that check logins
//! only at CONNECT (the embedded one; an external one behind the HTTP hooks) leave a connected
//! device connected. MQTT's session takeover closes it: the platform, which may log in under any
//! client id, connects under the device's id (the broker drops the device's connection and its
//! session) and leaves at once. The device's reconnection then meets the registry, which refuses
//! it (revoked) or wants the new password (rotated).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use secrecy::ExposeSecret;

use super::MqttConfig;

/// How long a takeover may take before it is given up (the call that asked for it says so).
const WITHIN: Duration = Duration::from_secs(2);

/// Closes the broker connection of the client `client_id`, if it has one.
#[derive(Clone)]
pub(crate) struct Kicker {
    pub mqtt: MqttConfig,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why a takeover did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KickError {
    #[error("the broker refused the takeover connection: {0}")]
    Refused(String),
    #[error("the broker did not answer within {WITHIN:?}")]
    TimedOut,
}

impl Kicker {
    /// Takes over `client_id`'s session (clean: the device's subscriptions go with it) and
    /// disconnects.
    pub(crate) async fn disconnect(&self, client_id: &str) -> Result<(), KickError> {
        let mut options = MqttOptions::new(client_id, &self.mqtt.host, self.mqtt.port);
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(5));
        if let Some((username, password)) = &self.mqtt.credentials {
            options.set_credentials(username, password.expose_secret());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 4);
        let connected = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(KickError::Refused(error.to_string())),
                }
            }
        };
        tokio::time::timeout(WITHIN, connected)
            .await
            .map_err(|_| KickError::TimedOut)??;
        // Leave: the DISCONNECT goes out on the next poll; the connection then ends.
        let _ = client.disconnect().await;
        let _ =
            tokio::time::timeout(WITHIN, async { while eventloop.poll().await.is_ok() {} }).await;
        Ok(())
    }
}
