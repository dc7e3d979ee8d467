//! The gateway's configuration. The `parkflow` binary builds it from flags and `PARKFLOW_…`
//! variables; tests build it directly.

use std::net::SocketAddr;

use secrecy::SecretString;

use crate::gate::actor::DecisionConfig;
use crate::mqtt::MqttConfig;
use crate::occupancy::OccupancyConfig;

/// A broker whose permission lists the platform keeps in step with its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerAcl {
    /// Mosquitto 2 with the dynamic-security plugin ([`crate::mqtt::dynsec`]).
    MosquittoDynsec,
}

/// Everything the gateway needs to start.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The HTTP API's listen address (port 0 picks a free port).
    pub http_listen: SocketAddr,
    /// `sqlite:path.db` or `postgres://…` (a URL may carry a password).
    pub database_url: SecretString,
    pub mqtt: MqttConfig,
    pub decisions: DecisionConfig,
    pub occupancy: OccupancyConfig,
    /// Public reads (availability, feeds, tariffs) allowed per client IP address per second.
    pub public_rate_per_second: u32,
    /// Driver endpoints' requests allowed per client IP address per second.
    pub driver_rate_per_second: u32,
    /// The platform admin's API key (`Authorization: Bearer …`); admin endpoints are closed without one.
    pub admin_key: Option<SecretString>,
    /// The key brokers show to `POST /v1/broker/authenticate` and `/authorize`; without one
    /// those endpoints are not served.
    pub broker_hook_key: Option<SecretString>,
    /// Permissions the platform keeps in the broker itself (`--broker-acl`).
    pub broker_acl: Option<BrokerAcl>,
    /// Reverse proxies whose `X-Forwarded-For` gives the client's address (rate limits, stream caps).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Open availability streams allowed per client address, and in all.
    pub max_streams_per_address: u32,
    pub max_streams: u32,
    /// Where `/metrics` is served without a key (a private address for Prometheus); on the API
    /// listener it needs the platform admin's key.
    pub metrics_listen: Option<SocketAddr>,
    /// One of several gateway nodes sharing the city's lots by leases (PostgreSQL and an
    /// external broker; `cluster`): this node's id.
    pub node_id: Option<String>,
    /// The simulated vehicle register's secret: a plate's registration document number is a
    /// keyed hash of the plate under it (`parkflow_billing::claims::SimulatedRegister`).
    pub vehicle_register_secret: SecretString,
    /// How often each driver's payment mandate is asked about again.
    pub mandate_check: parkflow_billing::mandates::MandateCheck,
    /// The key device secrets are sealed under at rest (`--secrets-key`); in clear without one.
    pub secrets_key: Option<SecretString>,
    /// Whether ANPR cameras' barrier calls may go to this machine's loopback addresses (a camera
    /// simulator or bench beside the platform); refused otherwise.
    pub barrier_calls_to_loopback: bool,
}
