//! What the embedded broker needs to know: where to listen, how big its logs are, who may log in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::guard::Permissions;

/// Decides whether a device may log in. The registry of devices lives outside the broker; the
/// `parkflow` binary supplies an implementation backed by it.
pub trait Authenticator: Send + Sync + 'static {
    /// Whether `username`/`password` may connect with MQTT client id `client_id` (it may ask a
    /// database: logins are not on a hot path).
    fn authenticate(&self, client_id: String, username: String, password: String) -> Login;

    /// What the client connecting as `client_id` with `username` may do once logged in (asked
    /// when its CONNECT is read, just before [`Authenticator::authenticate`]; a client refused
    /// there never uses them). Synchronous: rumqttd parses packets without awaiting.
    fn permissions(&self, client_id: &str, username: &str) -> Box<dyn Permissions>;
}

/// The answer to a login, once known.
pub type Login = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// A TLS listener for devices beyond this machine: a certificate chain and its private key, both
/// PEM files.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Configuration of the embedded broker.
#[derive(Clone)]
pub struct BrokerConfig {
    /// The MQTT 3.1.1 listener (loopback by default; port 0 is not possible with rumqttd).
    pub listen: SocketAddr,
    /// The same broker over TLS (`--mqtt-tls-listen`, `--mqtt-tls-cert`, `--mqtt-tls-key`), so
    /// that passwords and plate reads do not cross a network in clear.
    pub tls: Option<TlsListener>,
    /// Size of one segment of a subscription filter's in-memory log.
    ///
    /// rumqttd keeps every message published on a filter in that log, read or not, and drops the
    /// oldest segment only when there are more than `segment_count`: a busy filter grows to
    /// `segment_bytes × segment_count` and stays there. A subscriber that falls behind the oldest
    /// segment silently skips ahead, even at QoS 1, so the product must also exceed the largest
    /// backlog the platform may build up.
    pub segment_bytes: usize,
    /// Number of segments kept per filter.
    pub segment_count: usize,
    /// The largest MQTT payload accepted (a bridge batch of 1,000 signed events needs ~300 KiB).
    pub max_payload_bytes: usize,
    /// Unacknowledged QoS 1 messages a client may send (rumqttd caps what it sends a client at
    /// 100 unacknowledged, a constant of its own).
    pub max_inflight: usize,
    /// Simultaneous connections.
    pub max_connections: usize,
    /// Who may log in.
    pub authenticator: Arc<dyn Authenticator>,
}

/// The in-memory log per subscription filter, in MiB, unless configured otherwise (the
/// platform's `--mqtt-log-mib`). rumqttd keeps it full once filled (a segment is dropped only
/// when a new one starts), so it is what a burst leaves behind (1.3–1.9 bytes of memory per
/// byte of log, BENCHMARKS); it is also the most a subscriber may fall behind before rumqttd
/// skips it ahead, so it must exceed the largest backlog.
pub const DEFAULT_LOG_MIB: u32 = 32;

impl BrokerConfig {
    /// Defaults: [`DEFAULT_LOG_MIB`] per filter in 8 segments, 512 KiB payloads.
    pub fn new(listen: SocketAddr, authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            listen,
            tls: None,
            segment_bytes: DEFAULT_LOG_MIB as usize * 1024 * 1024 / 8,
            segment_count: 8,
            max_payload_bytes: 512 * 1024,
            max_inflight: 1_000,
            max_connections: 100_000,
            authenticator,
        }
    }
}
