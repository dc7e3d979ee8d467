//! Building and running the gateway: [`Gateway::build`] connects the database, loads the
//! registry and binds the HTTP listener (reporting its address); [`Gateway::run`] starts every
//! task and, once the token is cancelled, drains them.
//!
//! Tasks and channels: MQTT event loop → ingest → gate actor → store writer → acker, plus the
//! HTTP server. On shutdown the event loop stops first; the others drain what they hold and stop
//! as their input channels close, so everything received is decided and committed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parkflow_protocol::topic::filter;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::gate::GateHandle;
use crate::gate::actor::GateActor;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::mqtt::ingest::Ingest;
use crate::mqtt::link::INBOUND_CHANNEL_CAPACITY;
use crate::mqtt::publish::CommandPublisher;
use crate::mqtt::{ack, link};
use crate::registry::RegistryHandle;
use crate::store::{Db, StoreError, writer};

/// How long shutdown waits for tasks to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("failed to open the database")]
    Store(#[from] StoreError),
    #[error("failed to bind the http listener {addr} (change --http-listen)")]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A gateway, built and ready to run.
pub struct Gateway {
    config: GatewayConfig,
    db: Db,
    registry: RegistryHandle,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    http_addr: SocketAddr,
}

impl Gateway {
    pub async fn build(config: GatewayConfig) -> Result<Self, GatewayError> {
        let db = Db::connect(&config.database_url).await?;
        let registry = RegistryHandle::load(&db).await?;
        let listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| GatewayError::HttpBind {
                addr: config.http_listen,
                source,
            })?;
        let http_addr = listener
            .local_addr()
            .map_err(|source| GatewayError::HttpBind {
                addr: config.http_listen,
                source,
            })?;
        tracing::info!(
            engine = db.engine(),
            lots = registry.snapshot().lots().len(),
            "gateway built"
        );
        Ok(Self {
            config,
            db,
            registry,
            metrics: Arc::new(Metrics::new()),
            listener,
            http_addr,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn registry(&self) -> RegistryHandle {
        self.registry.clone()
    }

    pub fn db(&self) -> Db {
        self.db.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `token` is cancelled, then drains.
    pub async fn run(self, token: CancellationToken) -> Result<(), GatewayError> {
        let Self {
            config,
            db,
            registry,
            metrics,
            listener,
            ..
        } = self;
        let tracker = TaskTracker::new();

        let (client, eventloop) = link::connect(&config.mqtt);
        let (tickets, acker) = ack::channel(client.clone());
        let (writer_handle, writer) = writer::writer(db.clone(), metrics.clone());
        let (gates, gate_rx) = GateHandle::channel();
        let actor = GateActor::load(
            config.decisions.clone(),
            db.clone(),
            registry.clone(),
            writer_handle,
            CommandPublisher::new(client.clone()),
            metrics.clone(),
            Utc::now(),
        )
        .await?;
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CHANNEL_CAPACITY);
        let (connected_tx, connected_rx) = watch::channel(false);
        let filters = vec![filter::all_gate_plates(), filter::all_gate_states()];

        tracker.spawn(link::run(
            eventloop,
            client,
            filters,
            tickets,
            inbound_tx,
            connected_tx,
            token.clone(),
        ));
        tracker.spawn(Ingest::new(registry.clone(), metrics.clone(), gates).run(inbound_rx));
        tracker.spawn(actor.run(gate_rx));
        tracker.spawn(writer.run());
        tracker.spawn(acker.run());
        tracker.spawn(track_connection(connected_rx.clone(), metrics.clone()));

        let state = AppState {
            db: db.clone(),
            registry,
            metrics,
            mqtt_connected: connected_rx,
            admin_key: config.admin_key.map(Arc::from),
        };
        let server = axum::serve(listener, http::router(state))
            .with_graceful_shutdown(token.clone().cancelled_owned());
        tracker.spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "http server failed");
            }
        });

        token.cancelled().await;
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
            .await
            .is_ok()
        {
            tracing::info!("gateway drained and stopped");
        } else {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "gateway stopped before every task drained");
        }
        db.close().await;
        Ok(())
    }
}

/// Mirrors the MQTT connection state into `parkflow_mqtt_connected`.
async fn track_connection(mut connected: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    loop {
        metrics
            .mqtt_connected
            .set(i64::from(*connected.borrow_and_update()));
        if connected.changed().await.is_err() {
            break;
        }
    }
}
