//! The occupancy actor: the one owner of every bay's state, the on-street stays and the gated
//! lots' counts. It applies what ingest hands it, sends the writes of each round to the bay
//! writer (which acknowledges the messages once durable), and publishes availability: the board
//! and stream events every [`PUBLISH_INTERVAL`], the retained MQTT topic at most once a second per lot.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow_protocol::Topic;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, oneshot};

use super::sessions::{BayPlate, BaySessionWrite, BaySessions};
use super::state::{Change, LotCounts, Occupancy, OccupancyState};
use super::store::{BayBatch, BayStateRow, BayWriterHandle, Restored};
use crate::availability::{
    AvailabilityHandle, Board, LotAvailability, LotAvailabilityView, MQTT_INTERVAL,
    PUBLISH_INTERVAL, StatusThresholds,
};
use crate::cluster::Ownership;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::mqtt::ack::Ticket;
use crate::registry::{BayIdx, LotIdx, Registry, RegistryHandle};

/// Messages waiting for the actor.
pub(crate) const OCCUPANCY_CHANNEL_CAPACITY: usize = 8_192;
/// The most messages handled in one round (one batch to the writer).
const MAX_ROUND: usize = 1_024;
/// A battery below this share is reported low.
pub(crate) const BATTERY_LOW_PCT: u8 = 20;

/// How the actor runs.
#[derive(Debug, Clone)]
pub struct OccupancyConfig {
    /// A bay whose sensor is silent this long turns unknown.
    pub heartbeat_deadline: chrono::Duration,
    /// How often silent sensors and overstays are looked for.
    pub sweep_interval: Duration,
    pub thresholds: StatusThresholds,
}

impl Default for OccupancyConfig {
    fn default() -> Self {
        Self {
            heartbeat_deadline: chrono::Duration::minutes(15),
            sweep_interval: Duration::from_secs(5),
            thresholds: StatusThresholds::default(),
        }
    }
}

/// One occupancy event, from a sensor's own topic or a bridge batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BayEvent {
    pub bay: BayIdx,
    pub occupied: bool,
    pub seq: u64,
    pub observed_at: DateTime<Utc>,
    /// When the platform received it: a sensor counts as heard by this clock, not its own.
    pub received_at: DateTime<Utc>,
    pub battery_pct: Option<u8>,
}

/// What the actor is told. Bay numbers are those of `registry`, the snapshot ingest checked the
/// message against; the actor translates them if its own registry is newer.
#[derive(Debug)]
pub enum OccupancyMessage {
    /// Occupancy events of one message (one, or a bridge batch's).
    Events {
        registry: Arc<Registry>,
        events: Vec<BayEvent>,
        ticket: Option<Ticket>,
    },
    Heartbeat {
        registry: Arc<Registry>,
        beat: BayEvent,
    },
    Plate {
        registry: Arc<Registry>,
        bay: BayIdx,
        read: BayPlate,
        ticket: Option<Ticket>,
    },
    /// A sensor's last will (or its own "offline"): its bay is unknown until heard again.
    Offline {
        registry: Arc<Registry>,
        bay: BayIdx,
    },
    /// A gated lot's open sessions now.
    GatedOpen { lot: LotIdx, open: u32 },
    /// A gateway node adopted a lot: its stored bays, read by the node's lease keeper.
    Adopt {
        registry: Arc<Registry>,
        lot: LotIdx,
        restored: Box<Restored>,
    },
    /// Lots another node runs now: their open stays are forgotten here.
    Release {
        registry: Arc<Registry>,
        lots: Vec<LotIdx>,
    },
    /// Another node's lot's counts, as its owner published them (retained).
    Remote(parkflow_protocol::Availability),
    /// An operator asks how a lot's bays are.
    Bays {
        lot: LotIdx,
        reply: oneshot::Sender<Vec<BayView>>,
    },
    /// Passes valid now, read again after they were issued or changed ([`OccupancyHandle::reload_passes`]).
    Passes(Vec<PassRow>),
    /// How many sessions of a gated lot are open now (an operator is about to record a recount).
    GatedOpenNow {
        lot: LotIdx,
        reply: oneshot::Sender<u32>,
    },
    /// An operator's recount of a gated lot, recorded: `occupied` cars counted while `open`
    /// sessions were open. Answers with the lot's counts.
    Recounted {
        lot: LotIdx,
        occupied: u32,
        open: u32,
        reply: oneshot::Sender<LotCounts>,
    },
}

/// A pass as the occupancy actor reads it: lot, plate, valid from, valid until.
pub(crate) type PassRow = (
    parkflow_protocol::LotId,
    parkflow_protocol::Plate,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// A bay as its operator sees it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub struct BayView {
    pub bay: String,
    pub state: &'static str,
    pub battery_low: bool,
    #[serde(with = "parkflow_protocol::time::rfc3339::option")]
    pub heard_at: Option<DateTime<Utc>>,
    /// The open stay, if any: since when, and whether it is past the lot's maximum stay.
    #[serde(with = "parkflow_protocol::time::rfc3339::option")]
    pub stay_started_at: Option<DateTime<Utc>>,
    /// The confidence of the open stay's best plate read, if one is attached.
    pub stay_plate_confidence: Option<f64>,
    pub overstay: bool,
}

/// Talks to the occupancy actor.
#[derive(Clone)]
pub struct OccupancyHandle {
    tx: mpsc::Sender<OccupancyMessage>,
}

impl OccupancyHandle {
    pub fn channel() -> (Self, mpsc::Receiver<OccupancyMessage>) {
        let (tx, rx) = mpsc::channel(OCCUPANCY_CHANNEL_CAPACITY);
        (Self { tx }, rx)
    }

    /// Reads passes again (here, not in the actor) and hands them over.
    pub async fn reload_passes(&self, db: &crate::store::Db) {
        match crate::store::sessions::passes(db, Utc::now()).await {
            Ok(rows) => self.send(OccupancyMessage::Passes(rows)).await,
            Err(error) => tracing::error!(%error, "failed to reload passes"),
        }
    }

    /// Records an operator's recount of a gated lot (`occupied` cars) against the sessions open
    /// now, then applies it; answers with the lot's counts (`None`: the actor is gone).
    pub async fn recount(
        &self,
        db: &crate::store::Db,
        lot: &crate::registry::Lot,
        occupied: u32,
    ) -> Result<Option<LotCounts>, crate::store::StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(OccupancyMessage::GatedOpenNow {
            lot: lot.idx,
            reply,
        })
        .await;
        let Ok(open) = answer.await else {
            return Ok(None);
        };
        super::store::recount(db, lot.id.as_str(), occupied, open, Utc::now()).await?;
        let (reply, answer) = oneshot::channel();
        self.send(OccupancyMessage::Recounted {
            lot: lot.idx,
            occupied,
            open,
            reply,
        })
        .await;
        Ok(answer.await.ok())
    }

    /// Queues a message; waits while the actor is behind (back-pressure to ingest).
    pub async fn send(&self, message: OccupancyMessage) {
        if let Err(mpsc::error::SendError(message)) = self.tx.send(message).await {
            tracing::error!("occupancy actor is gone; message dropped (it will be re-delivered)");
            match message {
                OccupancyMessage::Events {
                    ticket: Some(ticket),
                    ..
                }
                | OccupancyMessage::Plate {
                    ticket: Some(ticket),
                    ..
                } => ticket.abandon(),
                _ => {}
            }
        }
    }

    /// Queues without waiting (the gate actor must never wait on occupancy): a full queue drops
    /// the message, which for absolute counts is harmless — the next one carries the count.
    pub fn try_send(&self, message: OccupancyMessage) {
        if self.tx.try_send(message).is_err() {
            tracing::debug!("occupancy queue full; count update skipped");
        }
    }
}

/// A gated lot without bay sensors: occupied = open sessions + the operator's correction.
#[derive(Debug, Clone, Copy, Default)]
struct Gated {
    open: u32,
    /// `occupied counted − open sessions then`, from the last recount.
    correction: i64,
}

/// The actor.
pub struct OccupancyActor {
    config: OccupancyConfig,
    registry_handle: RegistryHandle,
    registry: Arc<Registry>,
    state: OccupancyState,
    sessions: BaySessions,
    gated: Vec<Gated>,
    availability: AvailabilityHandle,
    board: Board,
    /// Lots changed since the last publish, and since the last MQTT publish.
    dirty: Vec<bool>,
    mqtt_dirty: Vec<bool>,
    writer: BayWriterHandle,
    client: Option<AsyncClient>,
    metrics: Arc<Metrics>,
    round: BayBatch,
    /// Valid passes by lot and plate: a pass holder's on-street stay is free.
    passes: Passes,
    /// On a gateway node: the lots it runs (`cluster`); the others' counts come from their
    /// owners' retained availability (`remote`), and nothing is swept, written or published
    /// for them here.
    ownership: Option<Arc<Ownership>>,
    remote: std::collections::HashMap<parkflow_protocol::LotId, LotCounts>,
}

type Passes = std::collections::HashMap<
    (parkflow_protocol::LotId, parkflow_protocol::Plate),
    Vec<(DateTime<Utc>, DateTime<Utc>)>,
>;

fn passes_by_plate(rows: Vec<PassRow>) -> Passes {
    let mut passes = Passes::new();
    for (lot, plate, from, until) in rows {
        passes.entry((lot, plate)).or_default().push((from, until));
    }
    passes
}

impl OccupancyActor {
    /// Builds the state from the registry and what the database remembers. Every remembered bay
    /// counts as heard `now`: its sensor gets one deadline to speak before the bay turns unknown.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: OccupancyConfig,
        registry: &RegistryHandle,
        restored: Restored,
        availability: AvailabilityHandle,
        writer: BayWriterHandle,
        client: Option<AsyncClient>,
        metrics: Arc<Metrics>,
        now: DateTime<Utc>,
    ) -> Self {
        let registry_handle = registry.clone();
        let registry = registry.snapshot();
        let mut state = OccupancyState::new(&registry.bays().bays_per_lot(), now);
        for (bay, occupied, seq) in restored.states {
            state.restore(bay, occupied, seq, now);
        }
        let gated = registry
            .lots()
            .iter()
            .map(|lot| {
                let open = restored
                    .gated_open
                    .get(lot.id.as_str())
                    .copied()
                    .unwrap_or(0);
                let correction = restored
                    .recounts
                    .get(lot.id.as_str())
                    .map(|&(counted, open_then)| i64::from(counted) - i64::from(open_then))
                    .unwrap_or(0);
                Gated { open, correction }
            })
            .collect();
        let lots = registry.lots().len();
        let passes = passes_by_plate(restored.passes);
        let mut actor = Self {
            passes,
            config,
            state,
            sessions: BaySessions::restore(restored.open),
            gated,
            availability,
            board: Board {
                lots: Vec::new(),
                registry: registry.clone(),
            },
            dirty: vec![true; lots],
            mqtt_dirty: vec![true; lots],
            writer,
            client,
            metrics,
            round: BayBatch::default(),
            registry,
            registry_handle,
            ownership: None,
            remote: std::collections::HashMap::new(),
        };
        actor.board.lots = (0..lots as LotIdx)
            .map(|lot| actor.lot_availability(lot, now))
            .collect();
        actor.availability.publish(actor.board.clone());
        actor
    }

    /// Runs only the lots `ownership` holds, from now on (a gateway node).
    pub(crate) fn with_ownership(mut self, ownership: Arc<Ownership>) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// Whether this actor runs `lot`: always alone, on a gateway node while it holds it.
    fn runs(&self, lot: LotIdx) -> bool {
        self.ownership
            .as_ref()
            .is_none_or(|ownership| ownership.holds(self.registry.lot(lot).id.as_str()))
    }

    fn runs_bay(&self, bay: BayIdx) -> bool {
        self.ownership.is_none() || self.runs(self.lot_of(bay))
    }

    fn counts(&self, lot: LotIdx) -> LotCounts {
        if !self.runs(lot)
            && let Some(counts) = self.remote.get(&self.registry.lot(lot).id)
        {
            return *counts;
        }
        if self.registry.has_bay_sensors(lot) {
            return self.state.counts(lot);
        }
        // Counted from entries and exits: never negative, never above capacity.
        let total = self.registry.lot(lot).capacity;
        let gated = self.gated[lot as usize];
        let occupied = (i64::from(gated.open) + gated.correction).clamp(0, i64::from(total)) as u32;
        LotCounts {
            total,
            free: total - occupied,
            occupied,
            unknown: 0,
        }
    }

    fn lot_availability(&self, lot: LotIdx, at: DateTime<Utc>) -> LotAvailability {
        let counts = self.counts(lot);
        let status = self.config.thresholds.status(&counts);
        LotAvailability::new(self.registry.lot(lot), counts, status, at)
    }

    /// Runs until every handle is dropped, handling what is queued first.
    pub async fn run(mut self, mut rx: mpsc::Receiver<OccupancyMessage>) {
        let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
        let mut mqtt = tokio::time::interval(MQTT_INTERVAL);
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        for timer in [&mut publish, &mut mqtt, &mut sweep] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut messages = Vec::with_capacity(MAX_ROUND);
        loop {
            tokio::select! {
                received = rx.recv_many(&mut messages, MAX_ROUND) => {
                    if received == 0 {
                        break;
                    }
                    for message in messages.drain(..) {
                        self.handle(message).await;
                    }
                    self.flush().await;
                }
                _ = publish.tick() => {
                    self.sync_registry().await;
                    self.publish(Utc::now());
                }
                _ = mqtt.tick() => self.publish_mqtt(),
                _ = sweep.tick() => {
                    self.sweep(Utc::now());
                    self.flush().await;
                }
            }
        }
        self.flush().await;
        self.publish(Utc::now());
        tracing::debug!("occupancy actor drained and stopped");
    }

    fn lot_of(&self, bay: BayIdx) -> LotIdx {
        self.state.lot_of(bay)
    }

    /// Notes what a change did: the lot's counts moved, and a stay may open or end.
    fn changed(&mut self, change: Change, bay: BayIdx, at: DateTime<Utc>) {
        if let Change::Changed { lot, to, .. } = change {
            self.dirty[lot as usize] = true;
            self.mqtt_dirty[lot as usize] = true;
            let registry = self.registry.clone();
            let passes = &self.passes;
            let lot_entry = registry.lot(lot);
            let has_pass = |plate: &parkflow_protocol::Plate, at: DateTime<Utc>| {
                passes
                    .get(&(lot_entry.id.clone(), plate.clone()))
                    .is_some_and(|valid| {
                        valid.iter().any(|(from, until)| *from <= at && at < *until)
                    })
            };
            if let Some(write) = self
                .sessions
                .on_change_with_passes(lot_entry, bay, to, at, has_pass)
            {
                match write {
                    BaySessionWrite::Open { .. } => self.metrics.bay_sessions_opened.inc(),
                    _ => self.metrics.bay_sessions_closed.inc(),
                };
                self.round.sessions.push(write);
            }
        }
    }

    /// Follows the registry: when it changed (lots or bays provisioned), the state is renumbered.
    /// The writes of the round so far go first: they are numbered against the old registry.
    async fn sync_registry(&mut self) {
        let latest = self.registry_handle.snapshot();
        if Arc::ptr_eq(&latest, &self.registry) {
            return;
        }
        self.flush().await;
        let old = std::mem::replace(&mut self.registry, latest.clone());
        let new = latest;
        self.state = self
            .state
            .remapped(&new.bays().bays_per_lot(), |bay| translate(&new, &old, bay));
        self.sessions.remap(|bay| translate(&old, &new, bay));
        let mut gated = vec![Gated::default(); new.lots().len()];
        for lot in old.lots() {
            if let (Some(to), Some(count)) =
                (new.lot_by_id(&lot.id), self.gated.get(lot.idx as usize))
            {
                gated[to.idx as usize] = *count;
            }
        }
        self.gated = gated;
        let now = Utc::now();
        let lots = new.lots().len();
        self.board.registry = new.clone();
        self.board.lots = (0..lots as LotIdx)
            .map(|lot| self.lot_availability(lot, now))
            .collect();
        self.dirty = vec![false; lots];
        self.mqtt_dirty = vec![true; lots];
        self.availability.publish(self.board.clone());
        for (lot, availability) in new.lots().iter().zip(&self.board.lots) {
            self.availability
                .announce(LotAvailabilityView::new(lot, availability));
        }
        tracing::info!(
            lots,
            bays = new.bays().len(),
            "occupancy follows the new registry"
        );
    }

    /// Occupied again past a gap in `seq` (from an event or a heartbeat) while a stay is open: a
    /// departure and an arrival were lost in between, so the stay ends for review and another starts.
    fn check_gap(
        &mut self,
        bay: BayIdx,
        seq_before: u64,
        report: &BayEvent,
        heard_before: Option<DateTime<Utc>>,
    ) {
        let gap = seq_before > 0 && report.seq > seq_before + 1;
        if gap && report.occupied && self.sessions.get(bay).is_some() {
            let writes = self
                .sessions
                .interrupted(bay, heard_before, report.observed_at);
            self.round.sessions.extend(writes);
        }
    }

    /// A lot number of `from` in the actor's registry.
    fn local_lot(&self, from: &Registry, lot: LotIdx) -> Option<LotIdx> {
        let id = &from.lots().get(lot as usize)?.id;
        self.registry.lot_by_id(id).map(|l| l.idx)
    }

    /// A bay number of `from` in the actor's registry.
    fn local(&self, from: &Arc<Registry>, bay: BayIdx) -> Option<BayIdx> {
        if Arc::ptr_eq(from, &self.registry) {
            Some(bay)
        } else {
            translate(from, &self.registry, bay)
        }
    }

    async fn handle(&mut self, message: OccupancyMessage) {
        self.sync_registry().await;
        match message {
            OccupancyMessage::Events {
                registry,
                events,
                ticket,
            } => {
                for mut event in events {
                    let Some(bay) = self.local(&registry, event.bay) else {
                        continue;
                    };
                    if !self.runs_bay(bay) {
                        // Another node's lot now: handed on to its owner (a message carries
                        // one lot's events).
                        if let Some(ticket) = ticket {
                            ticket.forward();
                        }
                        return;
                    }
                    event.bay = bay;
                    let (seq_before, heard_before) =
                        (self.state.seq(bay), self.state.heard_at(bay));
                    self.state.set_battery_low(
                        event.bay,
                        event.battery_pct.map(|pct| pct < BATTERY_LOW_PCT),
                    );
                    let change =
                        self.state
                            .apply(event.bay, event.occupied, event.seq, event.received_at);
                    let outcome = if change == Change::Stale {
                        "stale"
                    } else {
                        self.round.states.push(BayStateRow {
                            bay: event.bay,
                            occupied: event.occupied,
                            seq: event.seq,
                            observed_at: event.observed_at,
                            battery_pct: event.battery_pct,
                        });
                        "applied"
                    };
                    self.metrics
                        .bay_events
                        .get_or_create(&OutcomeLabel { outcome })
                        .inc();
                    self.changed(change, event.bay, event.observed_at);
                    self.check_gap(bay, seq_before, &event, heard_before);
                }
                self.round.tickets.extend(ticket);
            }
            OccupancyMessage::Heartbeat { registry, mut beat } => {
                let Some(bay) = self.local(&registry, beat.bay) else {
                    return;
                };
                if !self.runs_bay(bay) {
                    return;
                }
                beat.bay = bay;
                let (seq_before, heard_before) = (self.state.seq(bay), self.state.heard_at(bay));
                self.metrics.bay_heartbeats.inc();
                let change = self.state.heartbeat(
                    beat.bay,
                    beat.occupied,
                    beat.seq,
                    beat.battery_pct.is_some_and(|pct| pct < BATTERY_LOW_PCT),
                    beat.received_at,
                );
                if let Change::Changed { to, .. } = change {
                    // The heartbeat corrected a state whose event was lost: remember it.
                    if to != Occupancy::Unknown {
                        self.round.states.push(BayStateRow {
                            bay: beat.bay,
                            occupied: beat.occupied,
                            seq: beat.seq,
                            observed_at: beat.observed_at,
                            battery_pct: beat.battery_pct,
                        });
                    }
                }
                self.changed(change, beat.bay, beat.observed_at);
                self.check_gap(bay, seq_before, &beat, heard_before);
            }
            OccupancyMessage::Plate {
                registry,
                bay,
                read,
                ticket,
            } => {
                let Some(bay) = self.local(&registry, bay) else {
                    return;
                };
                if !self.runs_bay(bay) {
                    if let Some(ticket) = ticket {
                        ticket.forward();
                    }
                    return;
                }
                let write = self.sessions.plate(bay, read);
                self.round.sessions.extend(write);
                self.round.tickets.extend(ticket);
            }
            OccupancyMessage::Offline { registry, bay } => {
                if let Some(bay) = self.local(&registry, bay)
                    && self.runs_bay(bay)
                {
                    let change = self.state.offline(bay);
                    self.changed(change, bay, Utc::now());
                }
            }
            OccupancyMessage::GatedOpen { lot, open } => {
                if let Some(gated) = self.gated.get_mut(lot as usize)
                    && gated.open != open
                {
                    gated.open = open;
                    self.dirty[lot as usize] = true;
                    self.mqtt_dirty[lot as usize] = true;
                }
            }
            OccupancyMessage::Passes(rows) => self.passes = passes_by_plate(rows),
            OccupancyMessage::Adopt {
                registry,
                lot,
                restored,
            } => self.adopt(&registry, lot, *restored),
            OccupancyMessage::Release { registry, lots } => {
                for lot in lots {
                    let Some(lot) = self.local_lot(&registry, lot) else {
                        continue;
                    };
                    let bays = self.state.bays_of(lot);
                    self.sessions.forget(|bay| bays.contains(&bay));
                }
            }
            OccupancyMessage::Remote(availability) => {
                let Some(lot) = self.registry.lot_by_id(&availability.lot).map(|l| l.idx) else {
                    return;
                };
                if self.runs(lot) {
                    // This node's own, echoed back.
                    return;
                }
                self.remote.insert(
                    availability.lot.clone(),
                    LotCounts {
                        total: availability.total,
                        free: availability.free,
                        occupied: availability.occupied,
                        unknown: availability.unknown,
                    },
                );
                self.dirty[lot as usize] = true;
            }
            OccupancyMessage::Bays { lot, reply } => {
                // The asker may have given up waiting.
                let _ = reply.send(self.bay_views(lot));
            }
            OccupancyMessage::GatedOpenNow { lot, reply } => {
                let open = self.gated.get(lot as usize).map_or(0, |g| g.open);
                // The asker may have given up waiting.
                let _ = reply.send(open);
            }
            OccupancyMessage::Recounted {
                lot,
                occupied,
                open,
                reply,
            } => {
                let counts = self.recounted(lot, occupied, open);
                // The asker may have given up waiting.
                let _ = reply.send(counts);
            }
        }
    }

    fn bay_views(&self, lot: LotIdx) -> Vec<BayView> {
        let bays = self.registry.bays();
        bays.bays_of(lot)
            .map(|bay| {
                let stay = self.sessions.get(bay);
                BayView {
                    bay: bays.name(bay).to_owned(),
                    state: match self.state.occupancy(bay) {
                        Occupancy::Free => "free",
                        Occupancy::Occupied => "occupied",
                        Occupancy::Unknown => "unknown",
                    },
                    battery_low: self.state.battery_low(bay),
                    heard_at: self.state.heard_at(bay),
                    stay_started_at: stay.map(|s| s.started_at),
                    stay_plate_confidence: stay
                        .and_then(|s| s.plate.as_ref())
                        .map(|p| p.confidence),
                    overstay: stay.is_some_and(|s| s.overstay_flagged),
                }
            })
            .collect()
    }

    /// Applies a recorded recount: the lot's count is corrected by what the operator saw.
    fn recounted(&mut self, lot: LotIdx, occupied: u32, open: u32) -> LotCounts {
        if let Some(gated) = self.gated.get_mut(lot as usize) {
            gated.correction = i64::from(occupied) - i64::from(open);
            self.dirty[lot as usize] = true;
            self.mqtt_dirty[lot as usize] = true;
        }
        self.counts(lot)
    }

    /// Takes a lot's stored state in (a gateway node adopting it): its bays' states, their open
    /// stays, its gated count and recount.
    fn adopt(&mut self, from: &Arc<Registry>, lot: LotIdx, restored: Restored) {
        let Some(lot) = self.local_lot(from, lot) else {
            return;
        };
        let now = Utc::now();
        for (bay, occupied, seq) in restored.states {
            if let Some(bay) = self.local(from, bay) {
                self.state.restore(bay, occupied, seq, now);
            }
        }
        let bays = self.state.bays_of(lot);
        self.sessions.forget(|bay| bays.contains(&bay));
        for (bay, session) in restored.open {
            if let Some(bay) = self.local(from, bay) {
                self.sessions.adopt(bay, session);
            }
        }
        let id = &self.registry.lot(lot).id;
        let gated = Gated {
            open: restored.gated_open.get(id.as_str()).copied().unwrap_or(0),
            correction: restored
                .recounts
                .get(id.as_str())
                .map(|&(counted, open_then)| i64::from(counted) - i64::from(open_then))
                .unwrap_or(0),
        };
        self.remote.remove(id);
        if let Some(slot) = self.gated.get_mut(lot as usize) {
            *slot = gated;
        }
        self.dirty[lot as usize] = true;
        self.mqtt_dirty[lot as usize] = true;
    }

    /// Silent sensors' bays turn unknown; overstays are flagged.
    fn sweep(&mut self, now: DateTime<Utc>) {
        for bay in self.state.expire(now, self.config.heartbeat_deadline) {
            if !self.runs_bay(bay) {
                // Another node's: its counts come from its owner.
                continue;
            }
            let lot = self.lot_of(bay) as usize;
            self.dirty[lot] = true;
            self.mqtt_dirty[lot] = true;
        }
        let registry = self.registry.clone();
        let state = &self.state;
        let ownership = &self.ownership;
        let flagged = self.sessions.overstays(now, |bay| {
            let lot = registry.lot(state.lot_of(bay));
            ownership
                .as_ref()
                .is_none_or(|o| o.holds(lot.id.as_str()))
                .then_some(lot.max_stay)
                .flatten()
        });
        self.round.sessions.extend(flagged);
        self.metrics.bays_battery_low.set(
            (0..self.state.bays() as BayIdx)
                .filter(|&bay| self.state.battery_low(bay))
                .count() as i64,
        );
        self.metrics.bays_unknown.set(
            (0..registry.lots().len() as LotIdx)
                .filter(|&lot| registry.has_bay_sensors(lot))
                .map(|lot| i64::from(self.state.counts(lot).unknown))
                .sum(),
        );
    }

    /// Hands this round's writes to the bay writer (waiting if it is behind).
    async fn flush(&mut self) {
        if self.round.is_empty() {
            return;
        }
        let round = std::mem::take(&mut self.round);
        self.writer.submit(self.registry.clone(), round).await;
    }

    /// Publishes the lots that changed: a new board, and one stream event each.
    fn publish(&mut self, now: DateTime<Utc>) {
        let mut any = false;
        for lot in 0..self.dirty.len() {
            if !std::mem::take(&mut self.dirty[lot]) {
                continue;
            }
            let counts = self.counts(lot as LotIdx);
            let current = &self.board.lots[lot];
            if counts == current.counts && self.config.thresholds.status(&counts) == current.status
            {
                continue;
            }
            self.board.lots[lot] = self.lot_availability(lot as LotIdx, now);
            let current = &self.board.lots[lot];
            any = true;
            self.availability.announce(LotAvailabilityView::new(
                self.registry.lot(lot as LotIdx),
                current,
            ));
        }
        if any {
            self.availability.publish(self.board.clone());
        }
        self.metrics
            .availability_subscribers
            .set(self.availability.subscribers() as i64);
    }

    /// Publishes the retained `lots/{lot}/availability` of lots changed in the last second.
    fn publish_mqtt(&mut self) {
        let Some(client) = &self.client else { return };
        for lot in 0..self.mqtt_dirty.len() {
            if !self.mqtt_dirty[lot] || self.dirty[lot] || !self.runs(lot as LotIdx) {
                // Not changed, or changed but not on the board yet (next second).
                continue;
            }
            let registry_lot = self.registry.lot(lot as LotIdx);
            let view = LotAvailabilityView::new(registry_lot, &self.board.lots[lot]);
            let topic = Topic::LotAvailability {
                lot: registry_lot.id.clone(),
            };
            let payload = serde_json::to_vec(&view.mqtt(registry_lot)).unwrap_or_default();
            match client.try_publish(topic.to_string(), QoS::AtMostOnce, true, payload) {
                Ok(()) => self.mqtt_dirty[lot] = false,
                // The client's queue is full: try again next second.
                Err(_) => break,
            }
        }
    }
}

/// Bay `bay` of registry `from`, numbered in registry `to` (by lot id and bay id).
fn translate(from: &Registry, to: &Registry, bay: BayIdx) -> Option<BayIdx> {
    let lot = from.lots().get(from.bays().lot_of(bay) as usize)?;
    let target = to.lot_by_id(&lot.id)?;
    to.bays().find(target.idx, from.bays().name(bay))
}
