//! A simulated gate camera and its lane, honest to SPEC §2: it signs each plate read (or sends
//! plain JSON to a lot whose broker enforces ACLs), re-sends the same read after 2 s and then
//! with back-off until a `command` answering its `event_id` arrives, and obeys only commands it
//! can verify.
//!
//! When no command answers a read within `decide_alone_after` (1.5 s), the lane decides alone
//! from the signed `standing` list the platform keeps on its gate, carries that decision out,
//! keeps sending the read (a later answer changes nothing), and reports the decision on its
//! `offline` topic every 2 s until an `ack_offline` answers it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow_protocol::sign::{open, plain, seal};
use parkflow_protocol::standing::{
    DECIDE_ALONE_AFTER, MAX_REPORTED, OfflineDecision, OfflineReport, StandingList, StandingView,
};
use parkflow_protocol::{
    DeviceAuth, DeviceId, Direction, EventId, GateAction, GateCommand, GatePlateRead, Plate,
    PlateColor, Topic,
};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::devices::DeviceEntry;
use crate::presence::Presence;
use crate::stats::Stats;

/// Reads waiting for a camera task.
const REQUEST_CAPACITY: usize = 256;

/// How a camera connects and retries.
#[derive(Debug, Clone)]
pub struct CameraConfig {
    pub host: String,
    pub port: u16,
    /// How the lot authenticates devices: `Signed` reads are JWS, `Broker` reads plain JSON.
    pub auth: DeviceAuth,
    /// The first re-send comes after this; each later one after twice the previous wait.
    pub first_retry: Duration,
    pub max_retry: Duration,
    /// Sends of one read before giving up (a real camera never does: the default is unlimited).
    pub max_attempts: u32,
    /// A read no command answered this long after it was first sent is decided by the lane
    /// alone; `None`: the lane waits for the platform however long it takes.
    pub decide_alone_after: Option<Duration>,
    /// The count a lot's lanes keep together while deciding alone (cars let in less cars let
    /// out since the newest list), as lanes wired to one lot controller do; `None`: this lane
    /// counts alone (an entry lane's count then only grows).
    pub lot_count: Option<Arc<std::sync::atomic::AtomicI64>>,
    /// An off-the-shelf ANPR camera: it sends its reads over HTTP in its vendor's format (to
    /// `POST /v1/anpr/{id}`) instead of MQTT; its barrier still hears the platform's commands
    /// on the gate's `command` topic (a ParkFlow barrier controller).
    pub anpr: Option<AnprTransport>,
    /// Connects over TLS with this client configuration (the broker's TLS listener).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// How a simulated off-the-shelf camera sends its reads.
#[derive(Debug, Clone)]
pub struct AnprTransport {
    pub vendor: AnprVendor,
    /// The platform's HTTP address (`http://host:port`).
    pub api: String,
}

/// The vendors' formats the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnprVendor {
    Hikvision,
    Platerecognizer,
}

impl AnprVendor {
    /// As the platform names it (and prefixes the vendor's event ids with).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hikvision => "hikvision",
            Self::Platerecognizer => "platerecognizer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Hikvision, Self::Platerecognizer]
            .into_iter()
            .find(|v| v.as_str() == s)
    }

    /// The vendor's own event for `read` (its id the vendor's event id), and its content type.
    pub fn event(self, camera: &str, read: &GatePlateRead) -> (&'static str, String) {
        let at = read
            .observed_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        match self {
            Self::Hikvision => (
                "application/xml",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                     <EventNotificationAlert version=\"2.0\" xmlns=\"http://www.isapi.org/ver20/XMLSchema\">\
                     <channelID>1</channelID><dateTime>{at}</dateTime><activePostCount>1</activePostCount>\
                     <eventType>ANPR</eventType><eventState>active</eventState>\
                     <eventDescription>ANPR</eventDescription><ANPR><licensePlate>{plate}</licensePlate>\
                     <confidenceLevel>{confidence}</confidenceLevel>{color}</ANPR>\
                     <UUID>{id}</UUID></EventNotificationAlert>",
                    plate = read.plate,
                    confidence = (read.confidence * 100.0).round(),
                    color = read
                        .plate_color
                        .map(|c| format!("<plateColor>{}</plateColor>", c.as_str()))
                        .unwrap_or_default(),
                    id = read.event_id.as_str(),
                ),
            ),
            Self::Platerecognizer => (
                "application/json",
                serde_json::json!({
                    "hook": {"target": "parkflow", "id": camera, "event": "recognition"},
                    "data": {
                        "camera_id": camera,
                        "filename": read.event_id.as_str(),
                        "timestamp": at,
                        "results": [{"plate": read.plate, "score": read.confidence,
                                     "candidates": [{"plate": read.plate, "score": read.confidence}]}],
                    }
                })
                .to_string(),
            ),
        }
    }
}

impl CameraConfig {
    pub fn new(host: impl Into<String>, port: u16, auth: DeviceAuth) -> Self {
        Self {
            host: host.into(),
            port,
            auth,
            first_retry: Duration::from_secs(2),
            max_retry: Duration::from_secs(16),
            max_attempts: u32::MAX,
            decide_alone_after: None,
            lot_count: None,
            anpr: None,
            tls: None,
        }
    }

    /// The same camera, deciding alone after the protocol's 1.5 s.
    pub fn deciding_alone(self) -> Self {
        Self {
            decide_alone_after: Some(DECIDE_ALONE_AFTER),
            ..self
        }
    }
}

/// How often a lane reports the decisions it made alone until they are acknowledged.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Whether a command handed back by a camera is the lane's own decision (made alone, while the
/// platform did not answer), not the platform's: its id is nil.
pub fn decided_alone(command: &GateCommand) -> bool {
    command.command_id.is_nil()
}

/// Why a read got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("no command answered the read after {0} sends")]
    Unanswered(u32),
    #[error("camera stopped")]
    Stopped,
}

/// A plate the camera reads.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub plate: String,
    pub plate_color: Option<PlateColor>,
    pub confidence: f64,
    pub direction: Direction,
    pub observed_at: DateTime<Utc>,
}

enum Request {
    /// Send a read and answer with the command that answers it.
    Read {
        read: GatePlateRead,
        reply: oneshot::Sender<Result<GateCommand, CameraError>>,
    },
    /// Answer with the next command for a read already answered (a held exit, opened once paid).
    Await {
        event_id: EventId,
        reply: oneshot::Sender<Result<GateCommand, CameraError>>,
    },
    /// Publish a read, signed with this camera's own key, on another gate's topic.
    Rogue { topic: Topic, read: GatePlateRead },
    /// Drop the connection; the camera connects again and re-sends what is unanswered.
    Reconnect,
}

/// Event ids answered, remembered to catch a repeated answer with another command id.
const ANSWERED_MEMORY: usize = 50_000;

struct Pending {
    read: GatePlateRead,
    payload: Vec<u8>,
    /// When the read was first sent: the lane waits from then until its answer.
    sent: Instant,
    attempts: u32,
    wait: Duration,
    next: Instant,
    /// `None` once the lane decided alone (the read is still sent until the platform answers).
    reply: Option<oneshot::Sender<Result<GateCommand, CameraError>>>,
}

/// Talks to a running camera.
#[derive(Clone)]
pub struct CameraHandle {
    tx: mpsc::Sender<Request>,
    /// An off-the-shelf camera's vendor and id: the platform records its reads under ids
    /// prefixed with them ([`anpr_event_id`]).
    anpr: Option<(AnprVendor, DeviceId)>,
}

/// The id the platform records an off-the-shelf camera's read under: the vendor's event id,
/// prefixed with the vendor and the camera (the gateway's `anpr::vendors::event_id` for the
/// short ids the simulator uses).
fn anpr_event_id(vendor: AnprVendor, camera: &DeviceId, id: &EventId) -> EventId {
    EventId::parse(&format!("{}:{camera}:{id}", vendor.as_str())).unwrap_or_else(|_| id.clone())
}

impl CameraHandle {
    /// The id the platform records a read sent as `id` under (the same for a ParkFlow camera).
    pub fn recorded_id(&self, id: &EventId) -> EventId {
        match &self.anpr {
            Some((vendor, camera)) => anpr_event_id(*vendor, camera, id),
            None => id.clone(),
        }
    }

    /// Reads a plate and waits for the platform's answer.
    pub async fn read(&self, sighting: Sighting) -> Result<GateCommand, CameraError> {
        let event_id =
            EventId::parse(&uuid::Uuid::new_v4().to_string()).map_err(|_| CameraError::Stopped)?;
        self.read_as(event_id, sighting).await
    }

    /// Reads a plate under a given event id (a device re-sending after a restart uses the same one).
    pub async fn read_as(
        &self,
        event_id: EventId,
        sighting: Sighting,
    ) -> Result<GateCommand, CameraError> {
        let read = GatePlateRead {
            event_id,
            plate: sighting.plate,
            plate_color: sighting.plate_color,
            confidence: sighting.confidence,
            direction: sighting.direction,
            observed_at: sighting.observed_at,
        };
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Read { read, reply })
            .await
            .map_err(|_| CameraError::Stopped)?;
        answer.await.map_err(|_| CameraError::Stopped)?
    }

    /// Watches for the next command answering `event_id` (a held exit opens once paid): the
    /// returned future resolves with it. Watch before paying, so the command cannot slip past.
    pub async fn watch(
        &self,
        event_id: EventId,
    ) -> Result<impl Future<Output = Result<GateCommand, CameraError>> + use<>, CameraError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Await { event_id, reply })
            .await
            .map_err(|_| CameraError::Stopped)?;
        Ok(async move { answer.await.map_err(|_| CameraError::Stopped)? })
    }

    /// Publishes a read for another gate, signed with this camera's own key: what a rogue or
    /// compromised device would try. The platform must refuse it.
    pub async fn publish_rogue(&self, topic: Topic, sighting: Sighting) {
        let Ok(event_id) = EventId::parse(&uuid::Uuid::new_v4().to_string()) else {
            return;
        };
        let read = GatePlateRead {
            event_id,
            plate: sighting.plate,
            plate_color: sighting.plate_color,
            confidence: sighting.confidence,
            direction: sighting.direction,
            observed_at: sighting.observed_at,
        };
        let _ = self.tx.send(Request::Rogue { topic, read }).await;
    }

    /// Drops the camera's connection; it connects again at once.
    pub async fn reconnect(&self) {
        let _ = self.tx.send(Request::Reconnect).await;
    }
}

/// Starts a camera for `device`: its MQTT connection (client id = device id, last will
/// `offline`) and its task, on `tracker`. Both stop when `token` is cancelled.
pub fn spawn(
    device: DeviceEntry,
    config: CameraConfig,
    stats: Arc<Stats>,
    tracker: &TaskTracker,
    token: CancellationToken,
) -> CameraHandle {
    let (tx, rx) = mpsc::channel(REQUEST_CAPACITY);
    let (inbound_tx, inbound_rx) = mpsc::channel(REQUEST_CAPACITY);
    let mut presence = Presence::new(device.id.clone(), device.secret.clone(), config.auth);
    let mut options = MqttOptions::new(device.id.as_str(), &config.host, config.port);
    options.set_credentials(&device.mqtt_username, &device.mqtt_password);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_session(true);
    // A standing list for a lot of tens of thousands of drivers is hundreds of kilobytes.
    options.set_max_packet_size(1024 * 1024, 64 * 1024);
    options.set_last_will(presence.next_connection());
    if let Some(tls) = &config.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1_000);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);

    let Some(gate) = device.gate.clone() else {
        tracing::error!(device = %device.id, "camera without a gate");
        return CameraHandle { tx, anpr: None };
    };
    let command_topic = Topic::GateCommand {
        lot: device.lot.clone(),
        gate: gate.clone(),
    }
    .to_string();
    let standing_topic = Topic::GateStanding {
        lot: device.lot.clone(),
        gate: gate.clone(),
    }
    .to_string();
    let offline_topic = Topic::GateOffline {
        lot: device.lot.clone(),
        gate: gate.clone(),
    };
    let poll_token = token.clone();
    let poll_client = client.clone();
    let subscribe_topic = command_topic.clone();
    let subscribe_standing = standing_topic.clone();
    tracker.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let event = tokio::select! {
                () = poll_token.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    let _ = poll_client.try_subscribe(subscribe_topic.as_str(), QoS::AtLeastOnce);
                    let _ =
                        poll_client.try_subscribe(subscribe_standing.as_str(), QoS::AtLeastOnce);
                    let _ = poll_client.try_publish(
                        presence.topic(),
                        QoS::AtLeastOnce,
                        true,
                        presence.online(),
                    );
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if inbound_tx.send(publish).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "camera connection failed; retrying");
                    // The next connection is another: its own value, its own will.
                    eventloop
                        .mqtt_options
                        .set_last_will(presence.next_connection());
                    tokio::select! {
                        () = poll_token.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::debug!("camera connection closed");
    });
    let topic = Topic::GatePlate {
        lot: device.lot.clone(),
        gate,
    };
    let lot_count = config.lot_count.clone().unwrap_or_default();
    let camera = Camera {
        device,
        topic,
        command_topic,
        standing_topic,
        offline_topic,
        config,
        client,
        stats,
        standing: StandingView::default(),
        offline: std::collections::BTreeMap::new(),
        next_report: Instant::now(),
        inside_since_list: lot_count,
        pending: HashMap::new(),
        waiting: HashMap::new(),
        answered: HashMap::new(),
        replaced: HashMap::new(),
        answered_order: std::collections::VecDeque::new(),
        carried_out: HashSet::new(),
    };
    let anpr = camera
        .config
        .anpr
        .as_ref()
        .map(|anpr| (anpr.vendor, camera.device.id.clone()));
    tracker.spawn(camera.run(rx, inbound_rx, token));
    CameraHandle { tx, anpr }
}

struct Camera {
    device: DeviceEntry,
    topic: Topic,
    command_topic: String,
    standing_topic: String,
    offline_topic: Topic,
    /// What the lane decides alone with.
    standing: StandingView,
    /// Decisions made alone and not yet acknowledged, by read.
    offline: std::collections::BTreeMap<EventId, OfflineDecision>,
    next_report: Instant,
    /// Cars this lot's lanes let in less those they let out, deciding alone since the newest
    /// list (shared by the lot's lanes when they share a controller).
    inside_since_list: Arc<std::sync::atomic::AtomicI64>,
    config: CameraConfig,
    client: AsyncClient,
    stats: Arc<Stats>,
    pending: HashMap<EventId, Pending>,
    /// Reads whose next command someone awaits.
    waiting: HashMap<EventId, oneshot::Sender<Result<GateCommand, CameraError>>>,
    /// The command id that answered each recent read, oldest first in `answered_order`.
    answered: HashMap<EventId, (Uuid, GateAction)>,
    answered_order: std::collections::VecDeque<EventId>,
    /// The ids of the commands carried out, for the reads in `answered`.
    carried_out: HashSet<Uuid>,
    /// A read's earlier command (its `hold`) once a later one (the `open` after payment)
    /// answered it.
    replaced: HashMap<EventId, Uuid>,
}

/// What a gate does with a command whose signature verified.
#[derive(Debug, PartialEq, Eq)]
enum Obey {
    Carry,
    /// Past its `expires_at` (or claiming a longer life than the protocol allows): a late or
    /// replayed command.
    Expired,
    /// Carried out already: a replay.
    Replayed,
}

/// SPEC §2: a gate ignores expired commands and command ids it has carried out.
fn obey(command: &GateCommand, now: DateTime<Utc>, carried_out: &HashSet<Uuid>) -> Obey {
    if !command.is_live(now) {
        Obey::Expired
    } else if carried_out.contains(&command.command_id) {
        Obey::Replayed
    } else {
        Obey::Carry
    }
}

impl Camera {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbound: mpsc::Receiver<rumqttc::Publish>,
        token: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                request = requests.recv() => match request {
                    Some(request) => self.request(request),
                    None => break,
                },
                publish = inbound.recv() => match publish {
                    Some(publish) if publish.topic == self.standing_topic => self.standing(&publish),
                    Some(publish) => self.command(&publish),
                    None => break,
                },
                _ = tick.tick() => {
                    self.retry();
                    self.report();
                }
            }
        }
        for (_, pending) in self.pending.drain() {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(CameraError::Stopped));
            }
        }
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(CameraError::Stopped));
        }
        tracing::debug!(device = %self.device.id, "camera stopped");
    }

    /// `body` as this camera publishes it on `topic`: signed, or plain JSON to a lot whose
    /// broker enforces ACLs.
    fn encode<T: serde::Serialize>(&self, topic: &Topic, body: &T) -> Vec<u8> {
        match self.config.auth {
            DeviceAuth::Signed => seal(topic, body, &self.device.id, self.device.secret.as_bytes()),
            DeviceAuth::Broker => plain(topic, body),
        }
    }

    fn payload(&self, read: &GatePlateRead) -> Vec<u8> {
        self.encode(&self.topic, read)
    }

    /// Sends a read's payload: published on MQTT, or posted as an ANPR camera's HTTP event.
    fn transmit(&self, payload: Vec<u8>) {
        transmit(
            &self.client,
            &self.config,
            &self.device,
            &self.topic,
            payload,
        );
    }

    fn request(&mut self, request: Request) {
        match request {
            Request::Read { read, reply } => self.send(read, reply),
            Request::Await { event_id, reply } => {
                self.waiting.insert(event_id, reply);
            }
            Request::Rogue { topic, read } => {
                if let Ok(mut rogue) = self.stats.rogue_events.lock() {
                    rogue.insert(read.event_id.clone());
                }
                let payload = seal(
                    &topic,
                    &read,
                    &self.device.id,
                    self.device.secret.as_bytes(),
                );
                let _ =
                    self.client
                        .try_publish(topic.to_string(), QoS::AtLeastOnce, false, payload);
                Stats::add(&self.stats.rogue_reads);
            }
            Request::Reconnect => {
                // The connection task sees the connection end and connects again.
                let _ = self.client.try_disconnect();
                Stats::add(&self.stats.reconnects);
            }
        }
    }

    fn send(
        &mut self,
        mut read: GatePlateRead,
        reply: oneshot::Sender<Result<GateCommand, CameraError>>,
    ) {
        let payload = match &self.config.anpr {
            // The vendor's event carries the camera's own id; the platform answers under it,
            // prefixed with the vendor and the camera.
            Some(anpr) => {
                let (_, event) = anpr.vendor.event(self.device.id.as_str(), &read);
                read.event_id = anpr_event_id(anpr.vendor, &self.device.id, &read.event_id);
                event.into_bytes()
            }
            None => self.payload(&read),
        };
        // A full request queue behaves like a lost message: the retry sends it again.
        self.transmit(payload.clone());
        Stats::add(&self.stats.reads_sent);
        let wait = self.config.first_retry;
        let pending = Pending {
            read: read.clone(),
            payload,
            sent: Instant::now(),
            attempts: 1,
            wait,
            next: Instant::now() + wait,
            reply: Some(reply),
        };
        self.pending.insert(read.event_id, pending);
    }

    /// A standing list for this gate, signed with its own secret: what it decides alone with.
    fn standing(&mut self, publish: &rumqttc::Publish) {
        let own: &DeviceId = &self.device.id;
        let opened = open::<StandingList, _>(
            &publish.payload,
            &self.standing_topic,
            self.config.auth,
            |kid| (kid == own).then(|| self.device.secret.clone()),
        );
        let list = match opened {
            Ok(opened) => opened.body,
            Err(error) => {
                tracing::warn!(device = %self.device.id, error = %error, "standing list refused");
                Stats::add(&self.stats.commands_bad_signature);
                return;
            }
        };
        match self.standing.apply(list, self.device.secret.as_bytes()) {
            Ok(()) => {
                // The list's count is the platform's now.
                self.inside_since_list
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                Stats::add(&self.stats.standing_lists);
            }
            Err(error) => {
                tracing::debug!(device = %self.device.id, %error, "standing list not taken");
            }
        }
    }

    /// No command answered the read in time: the lane decides alone from its list, carries
    /// the decision out and reports it.
    fn decide_alone(&mut self, event_id: &EventId) {
        let Some(pending) = self.pending.get_mut(event_id) else {
            return;
        };
        let Some(reply) = pending.reply.take() else {
            return;
        };
        let read = &pending.read;
        // The list hashes plates as the platform normalises them.
        let plate = Plate::parse(&read.plate)
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|_| read.plate.clone());
        let inside = i64::from(self.standing.occupied())
            + self
                .inside_since_list
                .load(std::sync::atomic::Ordering::Relaxed);
        let inside = u32::try_from(inside.max(0)).unwrap_or(u32::MAX);
        let (action, reason) = self.standing.decide(&plate, read.direction, inside);
        if action == GateAction::Open {
            self.inside_since_list.fetch_add(
                match read.direction {
                    Direction::Entry => 1,
                    Direction::Exit => -1,
                },
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let decision = OfflineDecision {
            event_id: event_id.clone(),
            plate: read.plate.clone(),
            plate_color: read.plate_color,
            direction: read.direction,
            observed_at: read.observed_at,
            action,
            reason,
            standing_version: self.standing.version(),
        };
        self.offline.insert(event_id.clone(), decision);
        self.next_report = Instant::now();
        Stats::add(&self.stats.decided_alone);
        let waited = u64::try_from(pending.sent.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.stats
            .longest_wait_ms
            .fetch_max(waited, std::sync::atomic::Ordering::Relaxed);
        let command = GateCommand::new(Uuid::nil(), event_id.clone(), action, reason, Utc::now());
        // The lane's own answer: the platform's, when it comes, changes nothing here.
        self.remember(&command);
        let _ = reply.send(Ok(command));
    }

    /// Reports the decisions made alone that are not acknowledged yet.
    fn report(&mut self) {
        if self.offline.is_empty() || Instant::now() < self.next_report {
            return;
        }
        self.next_report = Instant::now() + REPORT_EVERY;
        let report = OfflineReport {
            decisions: self.offline.values().take(MAX_REPORTED).cloned().collect(),
        };
        let payload = self.encode(&self.offline_topic, &report);
        let _ = self.client.try_publish(
            self.offline_topic.to_string(),
            QoS::AtLeastOnce,
            false,
            payload,
        );
        Stats::add(&self.stats.offline_reports);
    }

    fn retry(&mut self) {
        let now = Instant::now();
        let mut gave_up = Vec::new();
        let mut alone = Vec::new();
        for (event_id, pending) in &mut self.pending {
            if pending.reply.is_some()
                && self
                    .config
                    .decide_alone_after
                    .is_some_and(|after| pending.sent.elapsed() >= after)
            {
                alone.push(event_id.clone());
            }
            if pending.next > now {
                continue;
            }
            if pending.attempts >= self.config.max_attempts {
                gave_up.push(event_id.clone());
                continue;
            }
            let payload = pending.payload.clone();
            transmit(
                &self.client,
                &self.config,
                &self.device,
                &self.topic,
                payload,
            );
            Stats::add(&self.stats.reads_resent);
            pending.attempts += 1;
            pending.wait = (pending.wait * 2).min(self.config.max_retry);
            pending.next = now + pending.wait;
        }
        for event_id in alone {
            self.decide_alone(&event_id);
        }
        for event_id in gave_up {
            if let Some(pending) = self.pending.remove(&event_id)
                && let Some(reply) = pending.reply
            {
                Stats::add(&self.stats.reads_unanswered);
                let _ = reply.send(Err(CameraError::Unanswered(pending.attempts)));
            }
        }
    }

    fn command(&mut self, publish: &rumqttc::Publish) {
        if publish.topic != self.command_topic {
            return;
        }
        let own: &DeviceId = &self.device.id;
        let opened = open::<GateCommand, _>(
            &publish.payload,
            &self.command_topic,
            self.config.auth,
            |kid| (kid == own).then(|| self.device.secret.clone()),
        );
        let command = match opened {
            Ok(opened) => opened.body,
            Err(error) => {
                tracing::warn!(device = %self.device.id, error = %error, "command refused");
                Stats::add(&self.stats.commands_bad_signature);
                return;
            }
        };
        Stats::add(&self.stats.commands_received);
        match obey(&command, Utc::now(), &self.carried_out) {
            Obey::Carry => {}
            Obey::Expired => {
                tracing::warn!(device = %self.device.id, command = %command.command_id, "expired command ignored");
                Stats::add(&self.stats.commands_expired);
                return;
            }
            Obey::Replayed => {
                Stats::add(&self.stats.commands_replayed);
                return;
            }
        }
        if command.action == GateAction::AckOffline {
            if self.offline.remove(&command.event_id).is_some() {
                Stats::add(&self.stats.offline_acked);
            }
            return;
        }
        // A held car waits for the `open` its payment brings; another `hold` for the same read
        // (the read re-sent while the platform restarted, decided again) is not that answer.
        if command.action == GateAction::Open
            && let Some(reply) = self.waiting.remove(&command.event_id)
        {
            self.remember(&command);
            let _ = reply.send(Ok(command));
            return;
        }
        match self.pending.remove(&command.event_id) {
            // Decided alone already: the lane keeps its own decision; the read stops.
            Some(Pending { reply: None, .. }) => {
                Stats::add(&self.stats.answered_after_alone);
            }
            Some(Pending {
                reply: Some(reply),
                sent,
                ..
            }) => {
                let waited = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.stats
                    .longest_wait_ms
                    .fetch_max(waited, std::sync::atomic::Ordering::Relaxed);
                self.remember(&command);
                let _ = reply.send(Ok(command));
            }
            // A re-sent answer to a read already answered (told by its event id): the same
            // command again is a repeat; another command is a conflict only if it decides
            // otherwise (open where the lane was told hold, or the reverse) — a read decided
            // again alike after a restart let the car do what the first answer said.
            None => {
                Stats::add(&self.stats.commands_unmatched);
                // A command for a read this gate never sent: the rogue's, accepted.
                if self
                    .stats
                    .rogue_events
                    .lock()
                    .is_ok_and(|rogue| rogue.contains(&command.event_id))
                {
                    Stats::add(&self.stats.rogue_answered);
                }
                if self
                    .answered
                    .get(&command.event_id)
                    .is_some_and(|(id, action)| {
                        // A read the lane decided alone was answered by the lane itself
                        // (a nil id): the platform's answer may well differ, and changes nothing.
                        !id.is_nil() && *id != command.command_id && *action != command.action
                    })
                {
                    Stats::add(&self.stats.answers_conflicting);
                }
            }
        }
    }

    fn remember(&mut self, command: &GateCommand) {
        if self.answered_order.len() >= ANSWERED_MEMORY
            && let Some(oldest) = self.answered_order.pop_front()
            && let Some((carried, _)) = self.answered.remove(&oldest)
        {
            self.carried_out.remove(&carried);
            if let Some(replaced) = self.replaced.remove(&oldest) {
                self.carried_out.remove(&replaced);
            }
        }
        self.carried_out.insert(command.command_id);
        // The `open` after a payment follows the read's `hold`: both stay carried out (a
        // re-delivered hold is a replay, not a conflict) until the read is forgotten.
        if let Some((replaced, _)) = self.answered.insert(
            command.event_id.clone(),
            (command.command_id, command.action),
        ) {
            self.replaced.insert(command.event_id.clone(), replaced);
        }
        self.answered_order.push_back(command.event_id.clone());
    }
}

/// Sends a read's payload as the camera sends its reads (see [`Camera::transmit`]). An HTTP
/// event is posted on a task of its own and, as cameras do, sent again until it is answered
/// `200` (the platform's word that the read is on record), a second apart, for up to a minute:
/// the barrier may have opened on a decision that was never recorded (its node died first).
fn transmit(
    client: &AsyncClient,
    config: &CameraConfig,
    device: &DeviceEntry,
    topic: &Topic,
    payload: Vec<u8>,
) {
    let Some(anpr) = &config.anpr else {
        let _ = client.try_publish(topic.to_string(), QoS::AtLeastOnce, false, payload);
        return;
    };
    let content_type = match anpr.vendor {
        AnprVendor::Hikvision => "application/xml",
        AnprVendor::Platerecognizer => "application/json",
    };
    let url = format!("{}/v1/anpr/{}", anpr.api, device.id);
    let (user, password) = (device.id.to_string(), device.mqtt_password.clone());
    tokio::spawn(async move {
        static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let http = HTTP.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap_or_default()
        });
        for _ in 0..60 {
            let sent = http
                .post(&url)
                .basic_auth(&user, Some(&password))
                .header("content-type", content_type)
                .body(payload.clone())
                .send()
                .await;
            if sent.is_ok_and(|answer| answer.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkflow_protocol::{GateAction, GateReason};

    fn open_command(issued_at: DateTime<Utc>) -> GateCommand {
        GateCommand::new(
            Uuid::now_v7(),
            EventId::parse("e-1").unwrap(),
            GateAction::Open,
            GateReason::Entered,
            issued_at,
        )
    }

    /// A captured `open` replayed to the gate later, or again, is not carried out.
    #[test]
    fn a_gate_ignores_expired_and_replayed_commands() {
        let now = Utc::now();
        let mut carried_out = HashSet::new();
        let fresh = open_command(now);
        assert_eq!(obey(&fresh, now, &carried_out), Obey::Carry);
        carried_out.insert(fresh.command_id);
        assert_eq!(obey(&fresh, now, &carried_out), Obey::Replayed);
        let old = open_command(now - chrono::TimeDelta::seconds(31));
        assert_eq!(obey(&old, now, &carried_out), Obey::Expired);
        let stretched = GateCommand {
            expires_at: now + chrono::TimeDelta::days(1),
            ..open_command(now - chrono::TimeDelta::minutes(5))
        };
        assert_eq!(obey(&stretched, now, &carried_out), Obey::Expired);
    }
}
