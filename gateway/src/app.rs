//! Building and running the gateway: [`Gateway::build`] connects the database, loads the
//! registry and binds the HTTP listener (reporting its address); [`Gateway::run`] starts every
//! task and, once the token is cancelled, drains them.
//!
//! Tasks and channels: MQTT event loop → ingest → gate actor → store writer → acker; on a second
//! MQTT connection of its own, event loop → ingest → occupancy actor → bay writer → acker for bay
//! sensors, cameras and bridges (a city's bay traffic never queues in front of a plate read);
//! plus the HTTP server. On shutdown the event loop stops first; the others drain what they hold and stop
//! as their input channels close, so everything received is decided and committed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parkflow_protocol::topic::filter;
use rumqttc::{AsyncClient, EventLoop};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BrokerAcl, GatewayConfig};
use crate::gate::actor::GateActor;
use crate::gate::{GateHandle, GateMessage};
use parkflow_billing::payments::PaymentsApi;

use crate::availability::AvailabilityHandle;
use crate::cluster::{self, Keeper, Ownership, Peers};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::mqtt::dynsec::Dynsec;
use crate::mqtt::ingest::Ingest;
use crate::mqtt::link::INBOUND_CHANNEL_CAPACITY;
use crate::mqtt::publish::CommandPublisher;
use crate::mqtt::{ack, link};
use crate::occupancy::store::{BayWriter, bay_writer};
use crate::occupancy::{OccupancyActor, OccupancyHandle, OccupancyMessage};
use crate::registry::RegistryHandle;
use crate::registry::access::PlatformLogin;
use crate::store::leases::Leases;
use crate::store::writer::{self, Writer};
use crate::store::{Db, StoreError};

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
    #[error("the broker's TLS could not be set up (--mqtt-url mqtts://, --mqtt-ca)")]
    MqttTls(#[from] crate::mqtt::link::TlsSetupError),
    #[error("the broker's permissions could not be set up (--broker-acl)")]
    BrokerAcl(#[from] crate::mqtt::dynsec::DynsecError),
    #[error("--node-id: {0}")]
    Node(#[from] crate::store::leases::LeaseError),
    #[error("failed to bind the metrics listener {addr} (change --metrics-listen)")]
    MetricsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--secrets-key: {0}")]
    SecretsKey(#[from] parkflow_db::sealed::WeakKey),
}

/// A gateway, built and ready to run: its state is loaded, its listener bound.
pub struct Gateway {
    config: GatewayConfig,
    db: Db,
    registry: RegistryHandle,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    http_addr: SocketAddr,
    /// `/metrics` without a key, for Prometheus on a private address (`--metrics-listen`).
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    client: AsyncClient,
    eventloop: EventLoop,
    /// A second connection for bay sensors, cameras and bridges, so a city's bay traffic never
    /// queues in front of a plate read.
    bay_client: AsyncClient,
    bay_eventloop: EventLoop,
    writer: Writer,
    actor: GateActor,
    gates: GateHandle,
    gate_rx: mpsc::Receiver<GateMessage>,
    payments: Arc<dyn PaymentsApi>,
    occupancy_actor: OccupancyActor,
    occupancy: OccupancyHandle,
    occupancy_rx: mpsc::Receiver<OccupancyMessage>,
    bay_writer: BayWriter,
    availability: AvailabilityHandle,
    /// The broker's permission lists, kept by the platform (`--broker-acl`), and what stops
    /// their connection.
    broker_acl: Option<(Arc<Dynsec>, CancellationToken)>,
    /// On a gateway node: its leases and the lots it holds.
    node: Option<(Leases, Arc<Ownership>)>,
    /// The broker's TLS, if any.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Barrier calls to off-the-shelf cameras, and the task that makes them.
    relay: (
        crate::anpr::barrier::BarrierRelay,
        crate::anpr::barrier::RelayTask,
    ),
}

impl Gateway {
    /// Opens the database, loads the registry and the gate state, binds the HTTP listener.
    /// `payments` takes payments made through the API (with the platform's payment provider).
    pub async fn build(
        config: GatewayConfig,
        payments: impl FnOnce(Db) -> Arc<dyn PaymentsApi>,
    ) -> Result<Self, GatewayError> {
        let db = open_database(&config).await?;
        let registry = RegistryHandle::load(&db).await?;
        if config.broker_hook_key.is_none() && config.broker_acl.is_none() {
            let trusting: Vec<String> = registry
                .snapshot()
                .lots()
                .iter()
                .filter(|lot| lot.device_auth == parkflow_protocol::DeviceAuth::Broker)
                .map(|lot| lot.id.to_string())
                .collect();
            if !trusting.is_empty() {
                tracing::warn!(
                    lots = ?trusting,
                    "these lots accept unsigned device messages (device_auth broker) but the platform keeps no broker's permissions (--broker-hook-key, --broker-acl): unless the broker enforces topic ACLs of its own, any device can speak for them"
                );
            }
        }
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
        let metrics_listener = match config.metrics_listen {
            None => None,
            Some(addr) => {
                let bind = |source| GatewayError::MetricsBind { addr, source };
                let listener = TcpListener::bind(addr).await.map_err(bind)?;
                let local = listener.local_addr().map_err(bind)?;
                Some((listener, local))
            }
        };
        let metrics = Arc::new(Metrics::new());
        let mut config = config;
        if config.decisions.public_url.is_empty() {
            config.decisions.public_url = format!("http://{http_addr}");
        }
        let tls = match &config.mqtt.tls {
            None => None,
            Some(tls) => Some(Arc::new(tls.client_config()?)),
        };
        // Devices' permissions are in place before the platform's own links connect (which
        // need the platform's role on such a broker).
        let broker_acl = match config.broker_acl {
            None => None,
            Some(BrokerAcl::MosquittoDynsec) => {
                let stop = CancellationToken::new();
                let dynsec = Arc::new(Dynsec::connect(
                    &config.mqtt,
                    config.node_id.as_deref(),
                    tls.as_ref(),
                    stop.clone(),
                ));
                match dynsec.prepare(&db).await {
                    Ok(report) => tracing::info!(
                        put = report.put,
                        deleted = report.deleted,
                        "mosquitto dynamic security in step with the registry"
                    ),
                    Err(error) => {
                        stop.cancel();
                        return Err(error.into());
                    }
                }
                Some((dynsec, stop))
            }
        };
        let node = match &config.node_id {
            None => None,
            Some(id) => Some((
                Leases::new(db.clone(), id, crate::cluster::LEASE_TTL)?,
                Arc::new(Ownership::new(id)),
            )),
        };
        let ownership = node.as_ref().map(|(_, ownership)| ownership.clone());
        // Each node keeps persistent sessions of its own.
        let gate_mqtt = crate::mqtt::MqttConfig {
            client_id: match &config.node_id {
                Some(id) => format!("{}-{id}", config.mqtt.client_id),
                None => config.mqtt.client_id.clone(),
            },
            ..config.mqtt.clone()
        };
        let (client, eventloop) = link::connect(&gate_mqtt, tls.as_ref());
        let bay_mqtt = crate::mqtt::MqttConfig {
            client_id: format!("{}-bays", gate_mqtt.client_id),
            ..config.mqtt.clone()
        };
        let (bay_client, bay_eventloop) = link::connect(&bay_mqtt, tls.as_ref());
        let (writer_handle, writer) = writer::writer(db.clone(), metrics.clone());
        let writer = match &config.node_id {
            Some(id) => writer.fenced(id),
            None => writer,
        };
        let (occupancy, occupancy_rx) = OccupancyHandle::channel();
        let (relay, relay_task) = crate::anpr::barrier::BarrierRelay::new(
            metrics.clone(),
            crate::anpr::barrier::Destinations {
                loopback: config.barrier_calls_to_loopback,
            },
        );
        let actor = GateActor::load(
            config.decisions.clone(),
            db.clone(),
            registry.clone(),
            writer_handle,
            CommandPublisher::new(client.clone()).with_relay(relay.clone()),
            metrics.clone(),
            ownership.clone(),
        )
        .await?
        .with_occupancy(occupancy.clone());
        let (gates, gate_rx) = GateHandle::channel();
        let actor = actor.with_inbox(&gates);
        let restored = crate::occupancy::store::restore(&db, &registry.snapshot(), None).await?;
        let (bay_writer_handle, bay_writer) = bay_writer(db.clone(), metrics.clone());
        let availability = AvailabilityHandle::new(Default::default());
        let occupancy_actor = OccupancyActor::new(
            config.occupancy.clone(),
            &registry,
            restored,
            availability.clone(),
            bay_writer_handle,
            Some(bay_client.clone()),
            metrics.clone(),
            Utc::now(),
        );
        let occupancy_actor = match &ownership {
            Some(ownership) => occupancy_actor.with_ownership(ownership.clone()),
            None => occupancy_actor,
        };
        let payments = payments(db.clone());
        tracing::info!(
            engine = db.engine().as_str(),
            lots = registry.snapshot().lots().len(),
            bays = registry.snapshot().bays().len(),
            "gateway built"
        );
        Ok(Self {
            config,
            db,
            registry,
            metrics,
            listener,
            http_addr,
            metrics_listener,
            client,
            eventloop,
            bay_client,
            bay_eventloop,
            writer,
            actor,
            gates,
            gate_rx,
            payments,
            occupancy_actor,
            occupancy,
            occupancy_rx,
            bay_writer,
            availability,
            broker_acl,
            node,
            tls,
            relay: (relay, relay_task),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where `/metrics` is served without a key, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
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

    /// Brings the broker's permission lists (`--broker-acl`) in step with the registry now,
    /// rather than at the next minute's reconciliation (after provisioning). Nothing to do
    /// without such a broker.
    pub async fn sync_broker(&self) -> Result<(), GatewayError> {
        if let Some((dynsec, _)) = &self.broker_acl {
            dynsec.reconcile(&self.db).await?;
        }
        Ok(())
    }

    /// Talks to the gate actor (standing changes, paid exits, reloads).
    pub fn gates(&self) -> GateHandle {
        self.gates.clone()
    }

    /// Talks to the occupancy actor (pass reloads, recounts).
    pub fn occupancy(&self) -> OccupancyHandle {
        self.occupancy.clone()
    }

    /// Runs until `token` is cancelled, then drains. A core task that ends on its own (it failed)
    /// cancels the token: a gateway that cannot decide must not look alive.
    pub async fn run(self, token: CancellationToken) -> Result<(), GatewayError> {
        let Self {
            config,
            db,
            registry,
            metrics,
            listener,
            metrics_listener,
            client,
            eventloop,
            bay_client,
            bay_eventloop,
            writer,
            actor,
            gates,
            gate_rx,
            payments,
            occupancy_actor,
            occupancy,
            occupancy_rx,
            bay_writer,
            availability,
            broker_acl,
            node,
            tls,
            relay: (relay, relay_task),
            ..
        } = self;
        let tracker = TaskTracker::new();
        let core =
            |name: &'static str,
             task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
                let token = token.clone();
                tracker.spawn(async move {
                    // A panic stops the gateway too: a half-dead gateway must not keep acking.
                    if futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(task))
                        .await
                        .is_err()
                    {
                        tracing::error!(task = name, "core task panicked; stopping the gateway");
                        token.cancel();
                    } else if !token.is_cancelled() {
                        tracing::error!(
                            task = name,
                            "core task ended on its own; stopping the gateway"
                        );
                        token.cancel();
                    }
                })
            };
        // Two links, each with its own event loop, ingest and acker: gate cameras on one, bay
        // sensors, cameras and bridges on the other. Each drops the other's filters.
        let gate_filters = vec![
            filter::all_gate_plates(),
            filter::all_gate_states(),
            filter::all_gate_offline(),
        ];
        let bay_filters = vec![
            filter::all_bays(),
            filter::all_bridges(),
            filter::all_device_status(),
        ];
        let ownership = node.as_ref().map(|(_, ownership)| ownership.clone());
        let links = match &node {
            None => [
                link::Filters {
                    own: gate_filters.clone(),
                    foreign: bay_filters.clone(),
                    lots: None,
                },
                link::Filters {
                    own: bay_filters,
                    foreign: gate_filters,
                    lots: None,
                },
            ],
            // A node subscribes per lot, as its leases say; on the bay link it also follows
            // every lot's availability (the lots other nodes run). The single gateway's
            // wildcards, kept by a persistent session, go.
            Some(_) => {
                let mut wildcards = gate_filters;
                wildcards.extend(bay_filters);
                [
                    link::Filters {
                        own: Vec::new(),
                        foreign: wildcards.clone(),
                        lots: Some(Default::default()),
                    },
                    link::Filters {
                        own: vec![filter::all_device_status(), filter::all_availability()],
                        foreign: wildcards
                            .into_iter()
                            .filter(|f| *f != filter::all_device_status())
                            .collect(),
                        lots: Some(Default::default()),
                    },
                ]
            }
        };
        let node_state = node
            .as_ref()
            .map(|(_, ownership)| (ownership.clone(), Peers::new(db.clone(), ownership.node())));
        if let Some((ownership, peers)) = &node_state {
            registry.tell_peers(peers.clone());
            gates.tell_peers(peers.clone());
            tracker.spawn(cluster::listen(
                peers.clone(),
                ownership.clone(),
                registry.clone(),
                gates.clone(),
                occupancy.clone(),
                token.clone(),
            ));
        }
        if let Some((leases, ownership)) = node {
            let [gate_link, bay_link] = &links;
            let keeper = Keeper {
                leases,
                ownership,
                db: db.clone(),
                registry: registry.clone(),
                gates: gates.clone(),
                occupancy: occupancy.clone(),
                links: vec![
                    cluster::Link {
                        client: client.clone(),
                        filters: gate_link.lots.clone().unwrap_or_default(),
                        of_lot: cluster::gate_filters,
                        own: gate_link.own.clone(),
                    },
                    cluster::Link {
                        client: bay_client.clone(),
                        filters: bay_link.lots.clone().unwrap_or_default(),
                        of_lot: cluster::bay_filters,
                        own: bay_link.own.clone(),
                    },
                ],
                recent_window: config.decisions.recent_window,
                metrics: metrics.clone(),
                last_renewed: std::sync::Mutex::new(std::time::Instant::now()),
                mqtt: config.mqtt.clone(),
                tls: tls.clone(),
            };
            // Before the links connect: the lots it holds are adopted before their queued
            // messages arrive.
            keeper.start().await;
            tracker.spawn(keeper.run(token.clone()));
        }
        // The gate link's client also sends the lanes' standing lists.
        let standing_client = client.clone();
        let links = [
            (
                ["mqtt event loop", "ingest", "acker"],
                client,
                eventloop,
                links[0].clone(),
            ),
            (
                ["mqtt event loop (bays)", "ingest (bays)", "acker (bays)"],
                bay_client,
                bay_eventloop,
                links[1].clone(),
            ),
        ];
        let mut links_connected = Vec::with_capacity(links.len());
        for ([loop_name, ingest_name, acker_name], client, eventloop, filters) in links {
            let (tickets, acker) = ack::channel(client.clone());
            let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CHANNEL_CAPACITY);
            let (connected_tx, connected) = watch::channel(false);
            core(
                loop_name,
                Box::pin(link::run(
                    eventloop,
                    client,
                    filters,
                    tickets,
                    inbound_tx,
                    connected_tx,
                    token.clone(),
                )),
            );
            let ingest = Ingest::new(
                registry.clone(),
                metrics.clone(),
                gates.clone(),
                occupancy.clone(),
            )
            .with_ownership(ownership.clone());
            core(ingest_name, Box::pin(ingest.run(inbound_rx)));
            core(acker_name, Box::pin(acker.run()));
            links_connected.push(connected);
        }
        core("gate actor", Box::pin(actor.run(gate_rx)));
        tracker.spawn(
            crate::gate::standing::StandingKeeper::new(
                db.clone(),
                registry.clone(),
                availability.clone(),
                standing_client,
                config.decisions.plate_key.standing_key(),
                ownership.clone(),
                metrics.clone(),
                gates.clone(),
            )
            .run(token.clone()),
        );
        core("store writer", Box::pin(writer.run()));
        core(
            "occupancy actor",
            Box::pin(occupancy_actor.run(occupancy_rx)),
        );
        core("bay writer", Box::pin(bay_writer.run()));
        let (all_connected_tx, connected_rx) = watch::channel(false);
        tracker.spawn(all_connected(links_connected, all_connected_tx));
        tracker.spawn(track_connection(connected_rx.clone(), metrics.clone()));
        if let Some((dynsec, _)) = &broker_acl {
            tracker.spawn(dynsec.clone().keep_in_step(db.clone(), token.clone()));
        }
        let public_limit = http::limit::PublicLimit::per_second(config.public_rate_per_second);
        let driver_limit = http::limit::AddressLimit::per_second(config.driver_rate_per_second);
        tracker.spawn(forget_idle_clients(
            public_limit.clone(),
            driver_limit.clone(),
            token.clone(),
        ));

        tracker.spawn(resolve_stale_payments(
            payments.clone(),
            gates.clone(),
            token.clone(),
        ));
        tracker.spawn(check_mandates(
            payments.clone(),
            gates.clone(),
            config.mandate_check.every,
            token.clone(),
        ));
        tracker.spawn(relay_task.run(token.clone()));
        let state = AppState::new(crate::http::AppStateInner {
            relay,
            // Without a broker keeping permission lists, a revoked or rotated device is
            // disconnected by taking over its session (such a broker kicks it itself).
            kicker: config.broker_acl.is_none().then(|| {
                Arc::new(crate::mqtt::kick::Kicker {
                    mqtt: config.mqtt.clone(),
                    tls: tls.clone(),
                })
            }),
            verifiers: parkflow_billing::claims::Verifiers::shipped(
                db.clone(),
                parkflow_billing::claims::SimulatedRegister::new(
                    config.vehicle_register_secret.clone(),
                ),
            ),
            db: db.clone(),
            registry,
            metrics,
            gates,
            payments,
            mqtt_connected: connected_rx,
            admin_key_hash: config
                .admin_key
                .map(|key| crate::registry::password_hash(key.expose_secret())),
            availability,
            occupancy,
            public_limit,
            driver_limit,
            shutdown: token.clone(),
            trusted_proxies: http::limit::TrustedProxies::new(config.trusted_proxies.clone()),
            streams: http::limit::StreamLimit::new(
                config.max_streams_per_address,
                config.max_streams,
            ),
            broker_hook: config.broker_hook_key.map(|key| {
                Arc::new(http::BrokerHook {
                    key,
                    platform: config
                        .mqtt
                        .credentials
                        .clone()
                        .map(|(username, password)| PlatformLogin { username, password }),
                })
            }),
            broker_acl: broker_acl.as_ref().map(|(dynsec, _)| dynsec.clone()),
            node: node_state,
        });
        if let Some((metrics_listener, _)) = metrics_listener {
            let server = axum::serve(
                metrics_listener,
                http::metrics_router(state.metrics.clone()),
            )
            .with_graceful_shutdown(token.clone().cancelled_owned());
            tracker.spawn(async move {
                if let Err(error) = server.await {
                    tracing::error!(%error, "metrics server failed");
                }
            });
        }
        let server = axum::serve(
            listener,
            http::router(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(token.clone().cancelled_owned());
        let http_token = token.clone();
        tracker.spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "http server failed");
                http_token.cancel();
            }
        });

        token.cancelled().await;
        if let Some((_, stop)) = &broker_acl {
            stop.cancel();
        }
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

/// Keeps the rate limiters' memory to the clients seen lately.
async fn forget_idle_clients(
    public: http::limit::PublicLimit,
    drivers: http::limit::AddressLimit,
    token: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = every.tick() => {
                public.forget_idle();
                drivers.forget_idle();
            }
        }
    }
}

/// Ready means every connection is up and subscribed.
async fn all_connected(mut links: Vec<watch::Receiver<bool>>, all: watch::Sender<bool>) {
    loop {
        // Every link's value is read (marked seen), so `changed` waits for the next change.
        let states: Vec<bool> = links
            .iter_mut()
            .map(|link| *link.borrow_and_update())
            .collect();
        all.send_replace(states.iter().all(|&up| up));
        let changes = links.iter_mut().map(|link| Box::pin(link.changed()));
        if futures::future::select_all(changes).await.0.is_err() {
            break;
        }
    }
    all.send_replace(false);
}

/// Connects and migrates the database; with a secrets key, device secrets are sealed at rest (those
/// stored in clear before are sealed now).
async fn open_database(config: &GatewayConfig) -> Result<Db, GatewayError> {
    let db = Db::connect(config.database_url.expose_secret()).await?;
    let Some(key) = &config.secrets_key else {
        tracing::warn!(
            "device secrets are stored in clear in the database: set --secrets-key to seal them at rest"
        );
        return Ok(db);
    };
    let db = db.with_secrets_key(parkflow_db::SecretsKey::new(key.expose_secret())?);
    let sealed = crate::store::devices::seal_clear_secrets(&db).await?;
    if sealed > 0 {
        tracing::info!(
            devices = sealed,
            "device secrets stored in clear were sealed"
        );
    }
    Ok(db)
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

/// From the start, and then as often as mandates are due again (at most every half minute): asks
/// the provider about drivers' mandates; one expired or revoked ends auto-debit, and the gates hold
/// that driver's cars for payment from then on.
async fn check_mandates(
    payments: Arc<dyn PaymentsApi>,
    gates: GateHandle,
    every: std::time::Duration,
    token: CancellationToken,
) {
    let pause = every.min(std::time::Duration::from_secs(30));
    loop {
        match payments.check_mandates().await {
            Ok(changes) => {
                for change in &changes {
                    gates.send(GateMessage::standing(change)).await;
                }
            }
            Err(error) => tracing::warn!(%error, "checking mandates failed"),
        }
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Every half minute, payments the provider has not answered for [`STALE_AFTER`] are asked about
/// again and settled: one that went through opens its held barrier (or reinstates its driver), one
/// the provider never received is failed so the driver can pay again.
///
/// [`STALE_AFTER`]: parkflow_billing::payments::STALE_AFTER
async fn resolve_stale_payments(
    payments: Arc<dyn PaymentsApi>,
    gates: GateHandle,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
        }
        match payments.resolve_stale().await {
            Ok(resolved) => {
                for paid in &resolved.exits_paid {
                    if let Some(open) = GateMessage::exit_paid(paid) {
                        gates.send(open).await;
                    }
                }
                for change in &resolved.reinstated {
                    gates.send(GateMessage::standing(change)).await;
                }
            }
            Err(error) => tracing::warn!(%error, "resolving stale payments failed"),
        }
    }
}
