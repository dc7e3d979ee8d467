//! Starting and stopping the embedded broker.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttd::{
    ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings, TlsConfig,
};
use tokio::runtime::Runtime;

use crate::config::{BrokerConfig, TlsListener};
use crate::guard::Guarded;
use crate::nodelay;

/// How long start-up waits for rumqttd's listener to appear.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("mqtt listen address {0} is already in use (another broker? change --mqtt-listen)")]
    PortTaken(SocketAddr),
    #[error("failed to bind mqtt listener {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("failed to build the broker's runtime")]
    Runtime(#[source] io::Error),
    #[error("mqtt listener {0} did not come up")]
    NotListening(SocketAddr),
    #[error("failed to set TCP_NODELAY on the mqtt listener")]
    NoDelay(#[source] io::Error),
    #[error(
        "the mqtt tls certificate or key file does not exist (--mqtt-tls-cert, --mqtt-tls-key)"
    )]
    TlsFiles,
}

/// A running embedded broker. Dropping it (or [`EmbeddedBroker::stop`]) closes its port and every
/// connection; retained messages and sessions live in memory only and are gone with it.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    runtime: Option<Runtime>,
}

impl EmbeddedBroker {
    /// Starts the broker and returns once its listener accepts connections with TCP_NODELAY set.
    pub fn start(config: BrokerConfig) -> Result<Self, BrokerError> {
        let addr = config.listen;
        match probe(addr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(BrokerError::PortTaken(addr));
            }
            Err(source) => return Err(BrokerError::Bind { addr, source }),
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mqtt-broker")
            .enable_all()
            .build()
            .map_err(BrokerError::Runtime)?;

        // The router runs on a thread of its own that rumqttd spawns; it idles once its server is gone.
        let router_tx = Router::new(0, router_config(&config)).spawn();
        let guarded = Guarded::new(config.authenticator.clone());
        let mut server = Server::new(
            server_settings(&config, None),
            router_tx.clone(),
            guarded.clone(),
        );
        let serving = runtime.spawn(async move { server.start(LinkType::Remote).await });
        if let Some(tls) = &config.tls {
            if !(tls.cert.is_file() && tls.key.is_file()) {
                runtime.shutdown_background();
                return Err(BrokerError::TlsFiles);
            }
            let mut tls_server =
                Server::new(server_settings(&config, Some(tls)), router_tx, guarded);
            runtime.spawn(async move {
                if let Err(error) = tls_server.start(LinkType::Remote).await {
                    tracing::error!(%error, "the mqtt tls listener stopped");
                }
            });
        }

        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            let tls_up = match &config.tls {
                None => true,
                Some(tls) => nodelay::set_on_listener(tls.listen).map_err(BrokerError::NoDelay)?,
            };
            if tls_up && nodelay::set_on_listener(addr).map_err(BrokerError::NoDelay)? {
                tracing::info!(%addr, tls = ?config.tls.as_ref().map(|t| t.listen), "embedded mqtt broker listening");
                return Ok(Self {
                    addr,
                    tls_addr: config.tls.as_ref().map(|tls| tls.listen),
                    runtime: Some(runtime),
                });
            }
            if serving.is_finished() {
                // rumqttd's bind failed (a race with another process taking the port).
                runtime.shutdown_background();
                return Err(BrokerError::PortTaken(addr));
            }
            if Instant::now() > deadline {
                runtime.shutdown_background();
                return Err(BrokerError::NotListening(addr));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The address devices connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
            // The runtime's tasks drop (and the listener closes) on its own threads: wait for the
            // port, so that a restart on the same address right away finds it free.
            let deadline = Instant::now() + LISTEN_TIMEOUT;
            let taken = |addr: SocketAddr| probe(addr).is_err();
            while (taken(self.addr) || self.tls_addr.is_some_and(taken))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            tracing::info!(addr = %self.addr, "embedded mqtt broker stopped");
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds and releases `addr` the way rumqttd (tokio) binds it, with SO_REUSEADDR, so that
/// connections of a previous run lingering in TIME_WAIT do not count as a taken port.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)
}

fn router_config(config: &BrokerConfig) -> RouterConfig {
    RouterConfig {
        max_connections: config.max_connections,
        max_outgoing_packet_count: 1_000,
        max_segment_size: config.segment_bytes,
        max_segment_count: config.segment_count,
        ..RouterConfig::default()
    }
}

/// The plain listener's settings, or with `tls` the TLS listener's.
fn server_settings(config: &BrokerConfig, tls: Option<&TlsListener>) -> ServerSettings {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: config.max_payload_bytes,
        max_inflight_count: config.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let authenticator = config.authenticator.clone();
    connections.set_auth_handler(
        move |client_id: String, username: String, password: String| {
            let login = authenticator.authenticate(client_id.clone(), username, password);
            async move {
                let allowed = login.await;
                if !allowed {
                    tracing::debug!(client_id = %client_id, "mqtt login refused");
                }
                allowed
            }
        },
    );
    ServerSettings {
        name: if tls.is_some() {
            "parkflow-v4-tls"
        } else {
            "parkflow-v4"
        }
        .to_owned(),
        listen: tls.map_or(config.listen, |tls| tls.listen),
        tls: tls.map(|tls| TlsConfig::Rustls {
            capath: None,
            certpath: tls.cert.display().to_string(),
            keypath: tls.key.display().to_string(),
        }),
        next_connection_delay_ms: 0,
        connections,
    }
}
