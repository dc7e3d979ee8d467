//! The command line: one `Config` per binary, every flag also a `PARKFLOW_…` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use parkflow_gateway::gate::actor::DecisionConfig;
use parkflow_gateway::privacy::PlateKey;
use parkflow_gateway::registry::{PLATFORM_CLIENT_PREFIX, is_platform_client_id};
use parkflow_gateway::{BrokerAcl, MqttTls};
use secrecy::{ExposeSecret, SecretString};

use crate::{MqttSetup, PlatformConfig};

/// ParkFlow: leave first, pay later.
#[derive(Debug, Parser)]
#[command(name = "parkflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(
        long,
        global = true,
        env = "PARKFLOW_LOG",
        default_value = "info,rumqttd=warn,sqlx=warn"
    )]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform (embedded broker and SQLite unless told otherwise).
    Run(Box<RunArgs>),
    /// Measure a scenario beside its baseline (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Drive a city's devices against a running platform (one started with `run --demo
    /// --demo-idle --demo-devices FILE`, on any broker).
    Sim(Box<SimArgs>),
    /// Inject faults into a running platform and judge what it lost (see BENCHMARKS.md): each
    /// scenario starts its own gateway, Mosquitto and database, drives the simulator with
    /// --verify, injects the fault, audits; exits 1 when any scenario fails.
    Chaos {
        /// gateway-kill, broker-restart, db-stall, partition, disk-full, clock-skew,
        /// embedded-kill, failover, lane-offline, or all.
        scenario: String,
        /// Shorter traffic and faults (CI).
        #[arg(long)]
        quick: bool,
        /// A PostgreSQL server the scenarios create their databases on (`…/DATABASE` to
        /// connect to first).
        #[arg(
            long,
            env = "PARKFLOW_CHAOS_POSTGRES_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/test"
        )]
        postgres_url: SecretString,
    },
    /// Print the simulated vehicle register's document number for a plate: what a driver shows
    /// to prove the plate is theirs (`registration_document`), under the register's secret.
    RegistrationDocument {
        plate: String,
        #[arg(long, env = "PARKFLOW_VEHICLE_REGISTER_SECRET", hide_env_values = true)]
        vehicle_register_secret: SecretString,
    },
    /// Check SPEC §4's invariants against the database; exits 1 naming the rows that break one.
    Audit {
        /// `sqlite:FILE` or `postgres://…`.
        #[arg(
            long,
            env = "PARKFLOW_DATABASE_URL",
            default_value = "sqlite:parkflow.db"
        )]
        database_url: SecretString,
    },
}

/// `parkflow bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The benchmark scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Plate read → barrier command round trip, beside a dumb echo client.
    Barrier {
        /// Reads to time (after a warm-up of a tenth as many).
        #[arg(long, default_value_t = 2_000)]
        reads: usize,
        /// Sensor messages a second in the background (0: none).
        #[arg(long, default_value_t = 10_000)]
        background_rate: u32,
        /// Run both sides through this external broker instead of the embedded one
        /// (`mqtt://[ADMIN:PASSWORD@]host:port`; the echo logs in with the same login).
        #[arg(long, value_parser = secret_url)]
        mqtt_url: Option<SecretString>,
        /// With --mqtt-url: keep the broker's per-device permissions (`mosquitto-dynsec`).
        #[arg(long, value_enum, requires = "mqtt_url")]
        broker_acl: Option<BrokerAclArg>,
        /// The camera and the echo connect to the embedded broker's TLS listener (a certificate
        /// made for the run), as devices beyond the machine do.
        #[arg(long, conflicts_with = "mqtt_url")]
        tls: bool,
    },
    /// An off-the-shelf camera's HTTP plate event → the platform's barrier call back to it,
    /// beside a trivial HTTP handler making the same call.
    Anpr {
        /// Events to time (after a warm-up of a tenth as many).
        #[arg(long, default_value_t = 2_000)]
        reads: usize,
    },
    /// Every scenario in turn; `--quick`: each small (about two minutes in all), for CI.
    All {
        #[arg(long)]
        quick: bool,
    },
    /// Sensor events (one signed message each) through the gateway, applied and durable, beside
    /// the same messages passed through the broker to a counting subscriber.
    Ingest {
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Through a Mosquitto started for the run (a window of 1,000 unacknowledged messages
        /// to the platform) instead of the embedded broker (rumqttd's window of 100).
        #[arg(long)]
        mosquitto: bool,
    },
    /// The embedded broker beside Mosquitto (127.0.0.1:1883), QoS 0 and 1, msg/s and loss.
    Broker {
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
    },
    /// Public availability endpoints beside a trivial axum handler, same client, same process.
    Api {
        #[arg(long, default_value_t = 5_000)]
        lots: usize,
        /// Seconds of load per endpoint.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Every bay's state through bridge batches, then one message per bay, until durable.
    Burst {
        #[arg(long, default_value_t = 848_000)]
        bays: usize,
        /// Through a Mosquitto started for the run instead of the embedded broker: the memory
        /// after the burst is then the platform's alone.
        #[arg(long)]
        mosquitto: bool,
    },
    /// The gateway's resident memory with a city's bays loaded, beside 16 bytes a bay.
    Memory {
        #[arg(long, default_value_t = 848_000)]
        bays: usize,
    },
    /// Session writes of the gate path (group-committed), beside a raw bulk insert of the rows.
    Persist {
        #[arg(long, default_value_t = 200_000)]
        sessions: usize,
        /// A PostgreSQL URL to run against (a fresh database is made there); SQLite otherwise.
        #[arg(long)]
        database_url: Option<SecretString>,
    },
    /// One gateway beside two gateway nodes sharing the lots (`--node-id`), each a process, with
    /// the same simulated traffic (Mosquitto and PostgreSQL needed): decisions, reads, lots and
    /// CPU per node.
    Nodes {
        /// Seconds of traffic for each.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The PostgreSQL server (a fresh database is made there for each).
        #[arg(
            long,
            env = "PARKFLOW_BENCH_POSTGRES_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/test"
        )]
        postgres_url: String,
    },
    /// A gate's standing list for N plates (signed, keyed hashes): bytes and times, beside the
    /// same plates in the clear.
    Standing {
        /// Plates that may leave first, one list each (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000, 1_000_000])]
        plates: Vec<usize>,
    },
    /// Settlement of closed sessions (price, charge, ledger, settle), beside a raw bulk insert.
    Settle {
        #[arg(long, default_value_t = 1_000_000)]
        sessions: usize,
        /// A PostgreSQL URL to run against (a fresh database is made there); SQLite otherwise.
        #[arg(long)]
        database_url: Option<SecretString>,
    },
}

/// `parkflow sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The devices file the platform wrote (`--demo-devices`).
    #[arg(long, env = "PARKFLOW_SIM_DEVICES")]
    pub devices: PathBuf,
    /// The broker the devices connect to.
    #[arg(
        long,
        env = "PARKFLOW_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub mqtt_url: url::Url,
    /// The city preset the platform was provisioned with (the same seed builds the same city).
    #[arg(long, default_value = "demo", value_parser = ["demo", "district", "hangzhou"])]
    pub city: String,
    /// Stop after this many seconds (0: run until Ctrl-C); the cars inside then leave.
    #[arg(long, default_value_t = 0)]
    pub duration_secs: u64,
    /// Run simulated time this many times faster than real time (a lot's day in ten minutes is
    /// 144): stays last hours and are billed as such. Needs --duration-secs; the run is stamped
    /// in the recent past so that every read is one the platform accepts.
    #[arg(long, default_value_t = 1.0, requires = "duration_secs")]
    pub speed: f64,
    /// Afterwards, compare what was driven with what the platform recorded (through its API)
    /// and exit non-zero unless nothing was lost or duplicated.
    #[arg(long)]
    pub verify: bool,
    /// The platform's HTTP API, for --verify and for paying at held exits.
    #[arg(
        long,
        env = "PARKFLOW_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api_url: url::Url,
    /// The platform admin key, for --verify.
    #[arg(
        long,
        env = "PARKFLOW_ADMIN_KEY",
        hide_env_values = true,
        required_if_eq("verify", "true")
    )]
    pub admin_key: Option<SecretString>,
    /// The longest stay, in simulated seconds (default: 90 s in real time, 5 h with --speed);
    /// the cars inside leave within it after the run.
    #[arg(long)]
    pub max_stay_secs: Option<u64>,
    /// Closed sessions whose fee --verify recomputes independently.
    #[arg(long, default_value_t = 200)]
    pub fee_sample: usize,
    /// Mean arrivals per simulated minute at each lot at peak (default: 20 in real time, 0.5
    /// with --speed).
    #[arg(long)]
    pub arrivals_per_minute: Option<f64>,
    /// A lane decides alone, from its gate's standing list, when no command answers a read
    /// within this many milliseconds (SPEC §2: 1.5 s); 0: lanes wait for the platform.
    #[arg(long, default_value_t = 1_500)]
    pub decide_alone_after_ms: u64,
    /// Also play each lot's off-the-shelf camera lane (`anpr-in`, left for a real camera
    /// otherwise): its camera sends Hikvision ISAPI events over HTTP to --api-url.
    #[arg(long)]
    pub play_anpr: bool,
}

/// `--broker-acl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerAclArg {
    /// Mosquitto 2's dynamic-security plugin.
    MosquittoDynsec,
}

impl From<BrokerAclArg> for BrokerAcl {
    fn from(acl: BrokerAclArg) -> Self {
        match acl {
            BrokerAclArg::MosquittoDynsec => Self::MosquittoDynsec,
        }
    }
}

/// `parkflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The HTTP API's address.
    #[arg(long, env = "PARKFLOW_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// The embedded MQTT broker's address (ignored with --mqtt-url).
    #[arg(long, env = "PARKFLOW_MQTT_LISTEN", default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// With `--mqtt-url mqtts://…`: trust only the CA certificates of this PEM file (default:
    /// the system's roots).
    #[arg(long, env = "PARKFLOW_MQTT_CA")]
    pub mqtt_ca: Option<PathBuf>,
    /// The embedded broker's TLS listener for devices beyond this machine, with
    /// --mqtt-tls-cert and --mqtt-tls-key (PEM files).
    #[arg(long, env = "PARKFLOW_MQTT_TLS_LISTEN", default_value = "0.0.0.0:8883")]
    pub mqtt_tls_listen: SocketAddr,
    /// The embedded broker's in-memory log per subscription filter, in MiB (eight segments).
    /// rumqttd keeps every message of a filter in it, read or not, until it is full: this bounds
    /// the broker's memory after a burst. A platform link that falls further behind than the
    /// log holds silently misses messages (FINDINGS), so it must exceed the largest backlog.
    #[arg(long, env = "PARKFLOW_MQTT_LOG_MIB", default_value_t = parkflow_broker::DEFAULT_LOG_MIB, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub mqtt_log_mib: u32,
    /// The password of the platform's own login at the embedded broker (user
    /// `parkflow-platform`), for a tool that must read or publish for every device (a load
    /// generator: `parkflow bench`). Whoever holds it is the platform; keep it like the admin
    /// key. Random per start when unset.
    #[arg(long, env = "PARKFLOW_MQTT_PLATFORM_PASSWORD", hide_env_values = true)]
    pub mqtt_platform_password: Option<SecretString>,
    /// The certificate chain of the embedded broker's TLS listener (PEM).
    #[arg(long, env = "PARKFLOW_MQTT_TLS_CERT", requires = "mqtt_tls_key")]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// The private key of that certificate (PEM).
    #[arg(long, env = "PARKFLOW_MQTT_TLS_KEY", requires = "mqtt_tls_cert")]
    pub mqtt_tls_key: Option<PathBuf>,
    /// `sqlite:FILE` (created if missing) or `postgres://user@host/db`.
    #[arg(
        long,
        env = "PARKFLOW_DATABASE_URL",
        default_value = "sqlite:parkflow.db"
    )]
    pub database_url: SecretString,
    /// An external MQTT broker, `mqtt[s]://[user:password@]host[:port]`, instead of the embedded
    /// one (`mqtts`: TLS, port 8883 by default).
    #[arg(long, env = "PARKFLOW_MQTT_URL", hide_env_values = true, value_parser = secret_url)]
    pub mqtt_url: Option<SecretString>,
    /// The platform's MQTT client id (its persistent session lives under it); it begins with
    /// `parkflow-`, a prefix no device may use.
    #[arg(
        long,
        env = "PARKFLOW_MQTT_CLIENT_ID",
        default_value = "parkflow-gateway"
    )]
    pub mqtt_client_id: String,
    /// The platform admin's API key; generated and printed with --demo when not given.
    #[arg(long, env = "PARKFLOW_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<SecretString>,
    /// The key an external broker (EMQX, VerneMQ) shows to `POST /v1/broker/authenticate` and
    /// `/v1/broker/authorize`, which answer only when it is set (README, "Production broker").
    #[arg(long, env = "PARKFLOW_BROKER_HOOK_KEY", hide_env_values = true)]
    pub broker_hook_key: Option<SecretString>,
    /// Keep the external broker's per-device permissions in step with the registry:
    /// `mosquitto-dynsec` (Mosquitto 2's dynamic-security plugin; --mqtt-url names its admin
    /// user). README, "Production broker".
    #[arg(long, env = "PARKFLOW_BROKER_ACL", value_enum)]
    pub broker_acl: Option<BrokerAclArg>,
    /// A reverse proxy (CIDR, repeatable) whose `X-Forwarded-For` gives the client's address
    /// for rate limits and stream caps; from anyone else the header is ignored.
    #[arg(long, env = "PARKFLOW_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<ipnet::IpNet>,
    /// Open availability streams (`/v1/availability/stream`) allowed per client address.
    #[arg(long, env = "PARKFLOW_MAX_STREAMS_PER_ADDRESS", default_value_t = 4)]
    pub max_streams_per_address: u32,
    /// Open availability streams allowed in all.
    #[arg(long, env = "PARKFLOW_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: u32,
    /// Serve `/metrics` without a key on this (private) address for Prometheus; on the API
    /// listener it needs the platform admin's key, since it carries revenue figures.
    #[arg(long, env = "PARKFLOW_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Run as one of several gateway nodes sharing the city's lots (any number, each with its
    /// own id, against one PostgreSQL and one external broker): README, "Running more than one
    /// node".
    #[arg(long, env = "PARKFLOW_NODE_ID")]
    pub node_id: Option<String>,
    /// The address drivers reach the API at, for payment links (defaults to the HTTP address).
    #[arg(long, env = "PARKFLOW_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    /// A bay whose sensor is silent this many seconds turns unknown.
    #[arg(long, env = "PARKFLOW_HEARTBEAT_DEADLINE_SECS", default_value_t = 900)]
    pub heartbeat_deadline_secs: u32,
    /// A lot is `almostFull` once its free bays are at most this share of its bays.
    #[arg(long, env = "PARKFLOW_ALMOST_FULL_RATIO", default_value_t = 0.1)]
    pub almost_full_ratio: f64,
    /// The key plates are hashed under in logs and pseudonyms (random per start when unset:
    /// set it for tags and pseudonyms that stay the same across restarts).
    #[arg(long, env = "PARKFLOW_PLATE_KEY", hide_env_values = true)]
    pub plate_key: Option<SecretString>,
    /// The key device signing secrets are sealed under in the database (at least 32 characters;
    /// keep it outside the database and its backups). Without one they are stored in clear (and
    /// the platform says so at start); with one, those stored in clear are sealed at start.
    #[arg(long, env = "PARKFLOW_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<SecretString>,
    /// Let ANPR cameras' barrier calls (`control.url`) go to this machine's loopback addresses:
    /// for a camera simulator or bench beside the platform. Refused without it, as are
    /// link-local and cloud metadata addresses always.
    #[arg(long)]
    pub barrier_calls_to_loopback: bool,
    /// The simulated vehicle register's secret: drivers prove a plate is theirs with its
    /// registration document number (`parkflow registration-document PLATE` prints it). Random
    /// per start when unset.
    #[arg(long, env = "PARKFLOW_VEHICLE_REGISTER_SECRET", hide_env_values = true)]
    pub vehicle_register_secret: Option<SecretString>,
    /// Plates of sessions that ended longer ago than this are pseudonymised.
    #[arg(long, env = "PARKFLOW_PLATE_RETENTION_DAYS", default_value_t = 180)]
    pub plate_retention_days: u32,
    /// Public reads (availability, feeds, tariffs) allowed per client address per second.
    #[arg(long, env = "PARKFLOW_PUBLIC_RATE", default_value_t = 50)]
    pub public_rate: u32,
    /// Driver requests (enrolment, `/v1/me…`, paying) allowed per client address per second.
    #[arg(long, env = "PARKFLOW_DRIVER_RATE", default_value_t = 20)]
    pub driver_rate: u32,
    /// Seed a demo city and run simulated traffic in-process.
    #[arg(long, env = "PARKFLOW_DEMO")]
    pub demo: bool,
    /// With --demo: the city to simulate — `demo` (3 gated lots, 80 bays with sensors),
    /// `district` (30 gated lots, 84,800 bays) or `hangzhou` (300 gated lots, 848,000 bays).
    #[arg(long, env = "PARKFLOW_DEMO_CITY", default_value = "demo", value_parser = ["demo", "district", "hangzhou"])]
    pub demo_city: String,
    /// With --demo: provision the city but drive no traffic (for `parkflow sim` or your own devices).
    #[arg(long, env = "PARKFLOW_DEMO_IDLE", requires = "demo")]
    pub demo_idle: bool,
    /// With --demo: write the demo's devices and their credentials to this JSON file.
    #[arg(long, env = "PARKFLOW_DEMO_DEVICES", requires = "demo")]
    pub demo_devices: Option<PathBuf>,
}

/// A URL that may carry a password: checked as a URL, then kept where it never prints.
fn secret_url(s: &str) -> Result<SecretString, url::ParseError> {
    url::Url::parse(s)?;
    Ok(s.into())
}

/// The platform admin key's shortest length: 128 bits written as hex (issue 14).
const MIN_ADMIN_KEY_CHARS: usize = 32;

impl RunArgs {
    /// The external broker's URL, password included.
    pub fn mqtt_url(&self) -> Option<url::Url> {
        // Parsed once already, by clap.
        self.mqtt_url
            .as_ref()
            .and_then(|url| url::Url::parse(url.expose_secret()).ok())
    }

    /// Checks what clap cannot: the broker URL's scheme and host.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(key) = &self.admin_key
            && key.expose_secret().chars().count() < MIN_ADMIN_KEY_CHARS
        {
            return Err(format!(
                "--admin-key must have at least {MIN_ADMIN_KEY_CHARS} characters (128 bits as hex; \
                 `openssl rand -hex 16` makes one)"
            ));
        }
        if let Some(password) = &self.mqtt_platform_password
            && password.expose_secret().chars().count() < MIN_ADMIN_KEY_CHARS
        {
            return Err(format!(
                "--mqtt-platform-password must have at least {MIN_ADMIN_KEY_CHARS} characters"
            ));
        }
        if let Some(url) = &self.mqtt_url() {
            if !matches!(url.scheme(), "mqtt" | "tcp" | "mqtts") {
                return Err(format!(
                    "--mqtt-url must start with mqtt:// or mqtts://, not {}://",
                    url.scheme()
                ));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err("--mqtt-url needs a host".into());
            }
        }
        let database_url = self.database_url.expose_secret();
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres")) {
            return Err("--database-url must be sqlite:FILE or postgres://…".into());
        }
        if self.broker_acl.is_some()
            && self
                .mqtt_url()
                .is_none_or(|url| url.username().is_empty() || url.password().is_none())
        {
            return Err("--broker-acl keeps an external broker's permissions: give --mqtt-url mqtt[s]://ADMIN:PASSWORD@host with the broker's admin login".into());
        }
        if self.mqtt_url.is_some() && self.mqtt_tls_cert.is_some() {
            return Err("--mqtt-tls-cert is for the embedded broker; with --mqtt-url the external broker holds the certificate".into());
        }
        if self.mqtt_url.is_none() && self.mqtt_listen.port() == 0 {
            return Err(
                "--mqtt-listen needs a port: the embedded broker cannot report one chosen for it"
                    .into(),
            );
        }
        if let Some(node) = &self.node_id {
            if node.is_empty()
                || node.len() > 64
                || !node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err("--node-id must be 1 to 64 letters, digits, '-' or '_'".into());
            }
            if !database_url.starts_with("postgres") {
                return Err("--node-id needs --database-url postgres://… (the nodes share it; SQLite is one process's database)".into());
            }
            if self.mqtt_url.is_none() {
                return Err("--node-id needs --mqtt-url (the nodes share one external broker; the embedded one lives in one process)".into());
            }
        }
        if !(0.0..1.0).contains(&self.almost_full_ratio) {
            return Err("--almost-full-ratio must be at least 0 and below 1".into());
        }
        if self.heartbeat_deadline_secs == 0 || self.public_rate == 0 {
            return Err("--heartbeat-deadline-secs and --public-rate must be above 0".into());
        }
        if !is_platform_client_id(&self.mqtt_client_id) {
            return Err(format!(
                "--mqtt-client-id must begin with {PLATFORM_CLIENT_PREFIX:?} (ids reserved for the platform, refused to devices)"
            ));
        }
        Ok(())
    }
}

impl RunArgs {
    /// The platform these flags describe.
    pub fn platform_config(&self) -> PlatformConfig {
        let mqtt = match &self.mqtt_url() {
            Some(url) => MqttSetup::External {
                host: url.host_str().unwrap_or_default().to_owned(),
                port: url
                    .port()
                    .unwrap_or(if url.scheme() == "mqtts" { 8883 } else { 1883 }),
                tls: (url.scheme() == "mqtts").then(|| MqttTls {
                    ca: self.mqtt_ca.clone(),
                }),
                credentials: (!url.username().is_empty()).then(|| {
                    (
                        url.username().to_owned(),
                        url.password().unwrap_or_default().into(),
                    )
                }),
            },
            None => MqttSetup::Embedded {
                listen: self.mqtt_listen,
            },
        };
        // Without --public-url, payment links point at the address the API is bound to.
        let public_url = self
            .public_url
            .as_ref()
            .map(|url| url.as_str().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let mut config = PlatformConfig::new(self.http_listen, self.database_url.clone(), mqtt);
        config.mqtt_client_id = self.mqtt_client_id.clone();
        config.admin_key = self.admin_key.clone();
        config.broker_hook_key = self.broker_hook_key.clone();
        config.broker_acl = self.broker_acl.map(BrokerAcl::from);
        if let (Some(cert), Some(key)) = (&self.mqtt_tls_cert, &self.mqtt_tls_key) {
            config.mqtt_tls = Some(parkflow_broker::TlsListener {
                listen: self.mqtt_tls_listen,
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        config.mqtt_log_bytes = self.mqtt_log_mib as usize * 1024 * 1024;
        config
            .mqtt_platform_password
            .clone_from(&self.mqtt_platform_password);
        config.trusted_proxies.clone_from(&self.trusted_proxy);
        config.max_streams_per_address = self.max_streams_per_address;
        config.max_streams = self.max_streams;
        config.metrics_listen = self.metrics_listen;
        config.node_id = self.node_id.clone();
        config.secrets_key.clone_from(&self.secrets_key);
        config.barrier_calls_to_loopback = self.barrier_calls_to_loopback;
        if let Some(secret) = &self.vehicle_register_secret {
            config.vehicle_register_secret = secret.clone();
        }
        config.decisions = DecisionConfig {
            public_url,
            plate_key: self
                .plate_key
                .as_ref()
                .map_or_else(PlateKey::random, |key| {
                    PlateKey::new(key.expose_secret().as_bytes())
                }),
            ..DecisionConfig::default()
        };
        config.retention.retention = chrono::Duration::days(i64::from(self.plate_retention_days));
        config.occupancy.heartbeat_deadline =
            chrono::Duration::seconds(i64::from(self.heartbeat_deadline_secs));
        config.occupancy.thresholds.almost_full_ratio = self.almost_full_ratio;
        config.public_rate_per_second = self.public_rate;
        config.driver_rate_per_second = self.driver_rate;
        config
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::{Cli, Command};

    const SECRETS: [&str; 5] = [
        "adm1n-secret-0123456789abcdef01234",
        "pl4te-secret",
        "db-p4ss",
        "mqtt-p4ss",
        "h00k-secret",
    ];

    /// The URL is for connecting with: it carries the password.
    #[test]
    fn the_broker_url_keeps_its_password_for_connecting() {
        let cli = Cli::try_parse_from([
            "parkflow",
            "run",
            "--mqtt-url",
            "mqtt://gateway:mqtt-p4ss@broker.internal:1883",
        ])
        .unwrap();
        let Command::Run(args) = &cli.command else {
            panic!("not a run command");
        };
        assert_eq!(args.mqtt_url().unwrap().password(), Some(SECRETS[3]));
        let bad = Cli::try_parse_from(["parkflow", "run", "--mqtt-url", "not a url"]);
        assert!(bad.is_err());
    }

    /// A guessable admin key is refused at start: it opens every operator's lots and money.
    #[test]
    fn a_short_admin_key_is_refused() {
        let run = |key: &str| {
            let cli = Cli::try_parse_from(["parkflow", "run", "--admin-key", key]).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("not a run command");
            };
            args.validate()
        };
        assert!(run("admin").unwrap_err().contains("at least 32"));
        assert!(run(&"7".repeat(31)).is_err());
        assert!(run("0123456789abcdef0123456789abcdef").is_ok());
    }

    /// The embedded broker's log is sized in MiB, from 1 to 4,096; 32 unless told.
    #[test]
    fn the_broker_log_is_sized_in_mib_within_bounds() {
        let log = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["parkflow", "run"], args].concat())?;
            let Command::Run(run) = cli.command else {
                panic!("not a run command");
            };
            Ok::<_, clap::Error>(run.platform_config().mqtt_log_bytes)
        };
        assert_eq!(log(&[]).unwrap(), 32 << 20);
        assert_eq!(log(&["--mqtt-log-mib", "32"]).unwrap(), 32 << 20);
        assert!(log(&["--mqtt-log-mib", "0"]).is_err());
        assert!(log(&["--mqtt-log-mib", "5000"]).is_err());
    }

    /// The platform's client id is one no device may take.
    #[test]
    fn the_platform_client_id_is_reserved() {
        let run = |id: &str| {
            let cli = Cli::try_parse_from(["parkflow", "run", "--mqtt-client-id", id]).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("not a run command");
            };
            args.validate()
        };
        assert!(run("parkflow-gateway-2").is_ok());
        assert!(run("gateway").unwrap_err().contains("parkflow-"));
    }

    /// A configuration printed whole (a `{:?}` in a log line, a panic) shows none of its secrets.
    #[test]
    fn no_secret_in_printed_configuration() {
        let cli = Cli::try_parse_from([
            "parkflow",
            "run",
            "--admin-key",
            SECRETS[0],
            "--plate-key",
            SECRETS[1],
            "--database-url",
            "postgres://parkflow:db-p4ss@db.internal/parkflow",
            "--mqtt-url",
            "mqtts://gateway:mqtt-p4ss@broker.internal",
            "--broker-hook-key",
            "h00k-secret",
        ])
        .unwrap();
        let Command::Run(args) = &cli.command else {
            panic!("not a run command");
        };
        args.validate().unwrap();
        let config = args.platform_config();
        let gateway = config.gateway_config("platform-p4ss");
        for printed in [
            format!("{cli:?}"),
            format!("{config:?}"),
            format!("{gateway:?}"),
            format!("{:?}", gateway.mqtt),
        ] {
            for secret in SECRETS {
                assert!(!printed.contains(secret), "{secret} printed in {printed}");
            }
        }
    }
}
