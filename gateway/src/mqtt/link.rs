//! The MQTT connection and its event loop task.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use parkflow_protocol::Topic;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::ack::{Ticket, TicketIssuer};

/// Requests (publishes, acks, subscribes) queued for the event loop.
const REQUEST_CHANNEL_CAPACITY: usize = 10_000;
/// Messages between the event loop task and ingest.
pub(crate) const INBOUND_CHANNEL_CAPACITY: usize = 10_000;

/// Where and as whom the platform connects.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Stable across restarts: the broker keeps the persistent session under it.
    pub client_id: String,
    /// User name and password.
    pub credentials: Option<(String, SecretString)>,
    pub keep_alive: Duration,
    /// QoS 1 messages the broker may have in flight to us.
    pub inflight: u16,
    /// Connect over TLS (`mqtts://`), trusting these roots.
    pub tls: Option<MqttTls>,
}

/// TLS to the broker: the system's roots, or only the certificates of a CA file (PEM).
#[derive(Debug, Clone, Default)]
pub struct MqttTls {
    pub ca: Option<std::path::PathBuf>,
}

/// Why the broker's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the CA file {path} could not be read as PEM certificates")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no trusted root certificate (the CA file is empty, or the system has none)")]
    NoRoots,
    #[error("TLS configuration failed")]
    Rustls(#[from] rustls::Error),
}

impl MqttTls {
    /// The client configuration: TLS 1.2 or 1.3 with ring, and the roots this trusts.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsSetupError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                for cert in
                    CertificateDer::pem_file_iter(path).map_err(|source| TlsSetupError::CaFile {
                        path: path.clone(),
                        source,
                    })?
                {
                    let cert = cert.map_err(|source| TlsSetupError::CaFile {
                        path: path.clone(),
                        source,
                    })?;
                    roots.add(cert)?;
                }
            }
            None => {
                let (added, _ignored) =
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                tracing::debug!(roots = added, "system roots loaded for the broker's TLS");
            }
        }
        if roots.is_empty() {
            return Err(TlsSetupError::NoRoots);
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// One message as it arrived.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub topic: Result<Topic, String>,
    pub payload: Bytes,
    pub received_at: DateTime<Utc>,
    pub received: Instant,
    /// Present for QoS 1 messages: drop it when the message is finished.
    pub ticket: Option<Ticket>,
}

/// Creates the client and its event loop: persistent session, manual acks, TCP_NODELAY.
pub(crate) fn connect(
    config: &MqttConfig,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(config.keep_alive)
        .set_inflight(config.inflight)
        .set_max_packet_size(1024 * 1024, 1024 * 1024)
        .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    if let Some((username, password)) = &config.credentials {
        options.set_credentials(username, password.expose_secret());
    }
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(5);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// The filters a connection subscribes to, and those it must not hold (another connection's: a
/// persistent session kept from an older layout may still have them).
#[derive(Debug, Clone)]
pub(crate) struct Filters {
    pub own: Vec<String>,
    pub foreign: Vec<String>,
    /// A gateway node's per-lot filters (`cluster`), changed as its leases change: subscribed
    /// again with the others on every (re)connection.
    pub lots: Option<LotFilters>,
}

/// The filters of the lots a node holds now, shared between its lease keeper and its links.
pub(crate) type LotFilters = std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

/// The event loop task: polls, subscribes on every (re)connection, stamps and forwards messages.
pub(crate) async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Filters,
    mut tickets: TicketIssuer,
    inbound: mpsc::Sender<Inbound>,
    connected: watch::Sender<bool>,
    token: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let event = tokio::select! {
            () = token.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let received = Instant::now();
                let received_at = Utc::now();
                let topic = Topic::parse(&publish.topic).map_err(|_| publish.topic.clone());
                let payload = publish.payload.clone();
                let ticket = match publish.qos {
                    QoS::AtMostOnce => None,
                    _ => tickets.issue(publish).await,
                };
                let message = Inbound {
                    topic,
                    payload,
                    received_at,
                    received,
                    ticket,
                };
                if inbound.send(message).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(50);
                tickets.reconnected().await;
                tracing::info!(session_present = ack.session_present, "mqtt connected");
                // Subscribing again is harmless when the broker kept the session, and needed when it did not.
                let mut subscriptions: Vec<SubscribeFilter> = filters
                    .own
                    .iter()
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                    .collect();
                if let Some(lots) = &filters.lots {
                    let lots = lots
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    subscriptions.extend(
                        lots.iter()
                            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                    );
                }
                if subscriptions.is_empty() {
                    // A node that holds no lot yet: connected is all there is to be.
                    connected.send_replace(true);
                } else if let Err(error) = client.try_subscribe_many(subscriptions) {
                    tracing::error!(%error, "failed to queue the subscriptions");
                }
                if ack.session_present {
                    for foreign in &filters.foreign {
                        if let Err(error) = client.try_unsubscribe(foreign.as_str()) {
                            tracing::warn!(%error, "failed to queue an unsubscription");
                        }
                    }
                }
            }
            // Ready once subscribed: a message published before would reach nobody.
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure));
                if refused {
                    tracing::error!("the broker refused a subscription; not ready");
                } else {
                    connected.send_replace(true);
                }
            }
            Ok(_) => {}
            Err(error) => {
                if connected.send_replace(false) {
                    tracing::warn!(%error, "mqtt connection lost; reconnecting");
                } else {
                    tracing::debug!(%error, "mqtt reconnect failed");
                }
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    connected.send_replace(false);
    tracing::debug!("mqtt event loop stopped");
}
