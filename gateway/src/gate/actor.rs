//! The gate actor: decides, publishes, then records.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use parkflow_protocol::sign::MAX_AHEAD;
use parkflow_protocol::{
    COMMAND_LIFETIME, Direction, EventId, GateAction, GateCommand, GateId, GateReason, LotId, Plate,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::decide::Standing;
use super::plan::{self, Planned};
use super::state::{Decided, GateState, HELD_FOR, Held, HeldRead, LaneKey, ReadKey};
use super::{GateMessage, GateRead, OfflineDecided, OfflineReport, PaidExit};
use crate::cluster::Ownership;
use crate::metrics::{ActionLabel, Metrics};
use crate::mqtt::ack::Ticket;
use crate::mqtt::publish::CommandPublisher;
use crate::occupancy::{OccupancyHandle, OccupancyMessage};
use crate::privacy::PlateKey;
use crate::registry::{GateDirection, Lot, Registry, RegistryHandle};
use crate::session::matching;
use crate::session::{OpenSession, SessionStatus};
use crate::store::writer::{Batch, GateReadRecord, Write, WriterHandle};
use crate::store::{Db, StoreError, sessions};

/// How the actor decides.
#[derive(Debug, Clone)]
pub struct DecisionConfig {
    /// Exit matches scoring below this open the barrier but go to the review queue; repeated
    /// reads at one lane this alike are the same car.
    pub review_threshold: f64,
    /// Reads of the same car at the same lane within this window are one read.
    pub repeat_window: Duration,
    /// Decisions are kept in memory this long after they are made; a repeat observed longer ago
    /// than this (less the clock skew a device may have) is looked up in the database.
    pub recent_window: Duration,
    /// Base of the `pay_url` in `hold` commands, e.g. `https://pay.example.org`; empty: the
    /// address the HTTP API is bound to.
    pub public_url: String,
    /// Plates appear in logs as their keyed hash under this key.
    pub plate_key: PlateKey,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            review_threshold: 0.9,
            repeat_window: Duration::seconds(30),
            recent_window: Duration::minutes(30),
            public_url: String::new(),
            plate_key: PlateKey::random(),
        }
    }
}

/// The actor.
pub struct GateActor {
    config: DecisionConfig,
    state: GateState,
    db: Db,
    registry: RegistryHandle,
    writer: WriterHandle,
    publisher: CommandPublisher,
    metrics: Arc<Metrics>,
    /// Cars held at exits for payment, by session.
    held: HashMap<Uuid, Held>,
    /// What each lane last did (the console's lanes).
    lanes: Option<super::lanes::LaneBoard>,
    /// On a gateway node: the lots it runs now, with their leases' tokens (`cluster`).
    ownership: Option<Arc<Ownership>>,
    /// Told each lot's open sessions, which count a gated lot's occupancy when it has no bay sensors.
    occupancy: Option<OccupancyHandle>,
    /// Where the actor's database tasks send their answers ([`Done`]).
    inbox: Option<mpsc::WeakSender<GateMessage>>,
    /// Standing changes of the last minute, re-applied over facts read before they arrived.
    recent_standing: VecDeque<(Instant, Vec<Plate>, Standing)>,
    /// What plates owe from stays nobody enrolled pays for, by currency (from the standing
    /// keeper's reads): a held exit's amount due includes it.
    owed: HashMap<Plate, Vec<(String, i64)>>,
}

/// What `plate` owes in `currency` (minor units).
fn owed_in(owed: &HashMap<Plate, Vec<(String, i64)>>, plate: &Plate, currency: &str) -> i64 {
    owed.get(plate)
        .into_iter()
        .flatten()
        .filter(|(c, _)| c == currency)
        .map(|(_, minor)| minor)
        .sum()
}

/// How long standing changes are kept to be re-applied over facts read before them.
const STANDING_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a task the actor started for the database answers.
#[derive(Debug)]
pub enum Done {
    /// The stored decision for a late read (`None`: it was never decided).
    LateRead {
        read: Box<GateRead>,
        stored: Option<Box<sessions::StoredDecision>>,
    },
    /// A session a correction gave back is still open in the database; the sender is dropped
    /// once it is back among the open ones.
    StillOpen(OpenSession, tokio::sync::oneshot::Sender<()>),
    /// The stored decision for a lane's decision too old for the actor's memory (`None`: the
    /// platform never answered that read).
    OfflineLookedUp {
        decided: Box<OfflineDecided>,
        stored: Option<Box<sessions::StoredDecision>>,
    },
}

/// The facts decisions depend on (drivers, passes, blocks), as read from the database by
/// whoever changed them ([`Facts::read`]), so the actor never waits for that read.
#[derive(Debug)]
pub struct Facts {
    /// When the read began: standing changes the actor received since then are newer.
    read_at: Instant,
    enrolled: Vec<(Plate, bool)>,
    passes: Vec<(LotId, Plate, DateTime<Utc>, DateTime<Utc>)>,
    blocked: Vec<(LotId, Plate)>,
}

impl Facts {
    /// Reads enrolled plates and their standing, passes valid at `now`, and blocks.
    pub async fn read(db: &Db, now: DateTime<Utc>) -> Result<Self, StoreError> {
        let read_at = Instant::now();
        Ok(Self {
            read_at,
            enrolled: sessions::enrolled_plates(db).await?,
            passes: sessions::passes(db, now).await?,
            blocked: sessions::blocked_plates(db).await?,
        })
    }
}

/// The gates' state of some lots as stored: their open sessions and recent decisions. Read at
/// start for every lot, or by a gateway node for a lot it adopts.
#[derive(Debug)]
pub struct Gates {
    lot: Option<LotId>,
    open: Vec<OpenSession>,
    decisions: Vec<sessions::StoredDecision>,
}

impl Gates {
    /// `lot`: one lot's, else every lot's; decisions received since `since`.
    pub async fn read(
        db: &Db,
        lot: Option<&LotId>,
        since: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            lot: lot.cloned(),
            open: sessions::open_sessions(db, lot).await?,
            decisions: sessions::decisions_since(db, since, lot).await?,
        })
    }
}

/// Takes stored gates' state in (what was held of the same lot before is replaced).
fn adopt(state: &mut GateState, gates: Gates) {
    if let Some(lot) = &gates.lot {
        state.lots.entry(lot.clone()).or_default().open.clear();
        state.recent.forget_lot(lot);
    }
    for session in gates.open {
        state
            .lots
            .entry(session.lot.clone())
            .or_default()
            .open
            .insert(session.plate.clone(), session);
    }
    for decision in gates.decisions {
        let read = (
            decision.lot.clone(),
            decision.gate.clone(),
            decision.command.event_id.clone(),
        );
        let lane = (decision.lot, decision.gate, decision.direction);
        let decided = Decided {
            command: decision.command,
            plate: decision.plate,
            session_id: decision.session_id,
            at: decision.received_at,
            observed_at: decision.observed_at,
        };
        // A read held for its camera's clock decided nothing about its car (see
        // `hold_for_clock`): remembered by read only, as when it was answered.
        if decided.command.reason == GateReason::DeviceClock {
            state.recent.remember_read(read, decided);
        } else {
            state.recent.remember(read, lane, decided);
        }
    }
}

/// How a read reached the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// From ingest.
    Fresh,
    /// A late read whose stored decision was looked for already, and not found.
    LookedUp,
    /// Correctly signed by its gate's camera, refused only for its time.
    ClockRefused,
}

impl GateActor {
    /// Reports each lot's open sessions to the occupancy actor from now on.
    pub fn with_occupancy(mut self, occupancy: OccupancyHandle) -> Self {
        self.occupancy = Some(occupancy);
        self
    }

    /// Lets the actor hand database work to tasks that answer through `gates`.
    pub fn with_inbox(mut self, gates: &super::GateHandle) -> Self {
        self.inbox = Some(gates.downgrade());
        self.lanes = Some(gates.lanes().clone());
        self
    }

    /// Runs `work` on a task of its own and hands its answer back as a message, so the actor
    /// goes on deciding meanwhile. Without an inbox (never in the platform) it is not run.
    fn off_actor<F>(&self, what: &'static str, work: F)
    where
        F: Future<Output = Option<Done>> + Send + 'static,
    {
        let Some(inbox) = self.inbox.clone() else {
            tracing::error!(what, "gate actor has no inbox; database work not done");
            return;
        };
        tokio::spawn(async move {
            let Some(done) = work.await else {
                return;
            };
            match inbox.upgrade() {
                Some(gates) => {
                    if gates.send(GateMessage::Done(done)).await.is_err() {
                        tracing::debug!(what, "gate actor stopped before an answer came back");
                    }
                }
                None => tracing::debug!(what, "gate actor stopped before an answer came back"),
            }
        });
    }

    /// Whether a read observed at `observed_at` is older than the decisions kept in memory (less
    /// the clock skew a device may have): whether it was answered is in the database only.
    fn older_than_memory(&self, observed_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        observed_at < now - (self.state.recent.window() - MAX_AHEAD)
    }

    /// Looks up the stored decision of the read `key` beside the actor; `done` makes the answer
    /// of `item` with it. On a database error nothing is answered: the device, which sends the
    /// read (or its report) until answered, asks again.
    fn look_up<T: Send + 'static>(
        &self,
        what: &'static str,
        key: ReadKey,
        item: T,
        done: fn(T, Option<Box<sessions::StoredDecision>>) -> Done,
    ) {
        let db = self.db.clone();
        self.off_actor(what, async move {
            let (lot, gate, event) = &key;
            match sessions::decision(&db, lot, gate, event).await {
                Ok(stored) => Some(done(item, stored.map(Box::new))),
                Err(error) => {
                    tracing::error!(error = %error, what, "failed to look up a read's stored decision; asked again when the device sends it again");
                    None
                }
            }
        });
    }

    /// Tells the occupancy actor how many sessions of `lot` are open (it ignores repeats).
    fn report_open(&self, registry: &Registry, lot: &LotId) {
        let (Some(occupancy), Some(lot_entry)) = (&self.occupancy, registry.lot_by_id(lot)) else {
            return;
        };
        let open = self.state.lots.get(lot).map_or(0, |l| l.open.len());
        occupancy.try_send(OccupancyMessage::GatedOpen {
            lot: lot_entry.idx,
            open: u32::try_from(open).unwrap_or(u32::MAX),
        });
    }

    /// Loads open sessions, recent decisions, enrolled plates, passes and blocks.
    pub async fn load(
        config: DecisionConfig,
        db: Db,
        registry: RegistryHandle,
        writer: WriterHandle,
        publisher: CommandPublisher,
        metrics: Arc<Metrics>,
        ownership: Option<Arc<Ownership>>,
    ) -> Result<Self, StoreError> {
        let now = Utc::now();
        let mut state = GateState::new(config.recent_window);
        apply_facts(&mut state, Facts::read(&db, now).await?);
        // A gateway node reads each lot's state as it adopts the lot (`cluster`).
        if ownership.is_none() {
            adopt(
                &mut state,
                Gates::read(&db, None, now - config.recent_window).await?,
            );
        }
        let open: usize = state.lots.values().map(|l| l.open.len()).sum();
        tracing::info!(
            open_sessions = open,
            recent_decisions = state.recent.len(),
            "gate state loaded"
        );
        Ok(Self {
            config,
            state,
            db,
            registry,
            writer,
            publisher,
            metrics,
            held: HashMap::new(),
            lanes: None,
            ownership,
            occupancy: None,
            inbox: None,
            recent_standing: VecDeque::new(),
            owed: HashMap::new(),
        })
    }

    /// Runs until every handle is gone (ingest stopped), having decided everything queued.
    pub async fn run(mut self, mut rx: mpsc::Receiver<GateMessage>) {
        while let Some(message) = rx.recv().await {
            match message {
                GateMessage::PlateRead(read) => self.plate_read(*read, Arrival::Fresh).await,
                GateMessage::ClockRefused(read) => {
                    self.plate_read(*read, Arrival::ClockRefused).await;
                }
                GateMessage::Standing { plates, standing } => self.standing(plates, standing).await,
                GateMessage::Offline(report) => self.offline(*report).await,
                GateMessage::Owed(owed) => self.owed = owed,
                GateMessage::ExitPaid(paid) => {
                    if self.runs(&paid.lot) {
                        self.exit_paid(paid);
                    }
                }
                GateMessage::Adopt(gates) => {
                    let lot = gates.lot.clone();
                    adopt(&mut self.state, *gates);
                    if let Some(lot) = lot {
                        self.report_open(&self.registry.snapshot(), &lot);
                    }
                }
                GateMessage::Release(lots) => self.release(&lots),
                GateMessage::Ended { lot, session } => {
                    let _ = self.take_open(&lot, session);
                }
                GateMessage::ManualOpen {
                    lot,
                    gate,
                    command_id,
                    event_id,
                    at,
                    reply,
                } => {
                    let _ = reply.send(self.manual_open(&lot, &gate, command_id, event_id, at));
                }
                GateMessage::EndOpen {
                    lot,
                    session,
                    work,
                    reply,
                    settled,
                } => self.end_open(&lot, session, work, reply, settled),
                GateMessage::Facts(facts) => self.facts(*facts),
                GateMessage::Durable(durable) => {
                    self.writer
                        .submit(Batch {
                            writes: Vec::new(),
                            ticket: None,
                            durable: Some(durable),
                            lease: None,
                        })
                        .await;
                }
                GateMessage::Done(done) => self.done(done).await,
            }
        }
        tracing::debug!("gate actor drained and stopped");
    }

    /// Decides a read (see [`Arrival`]).
    async fn plate_read(&mut self, mut read: GateRead, arrival: Arrival) {
        let now = read.received_at;
        self.state.recent.expire(now);
        self.held
            .retain(|_, held| now - held.read.received_at <= HELD_FOR);
        if !self.runs(&read.lot) {
            // Another node's lot now (it moved while the read waited): handed on to its owner.
            self.metrics.rejected("lot_not_held");
            if let Some(ticket) = read.ticket {
                ticket.forward();
            }
            return;
        }
        let registry = self.registry.snapshot();
        let Some(lot) = registry.lot_by_id(&read.lot) else {
            return;
        };
        // A lane registered one way decides its reads that way, whatever a camera says.
        match registry.gate(lot.idx, &read.gate).map(|g| g.direction) {
            Some(GateDirection::Entry) => read.direction = Direction::Entry,
            Some(GateDirection::Exit) => read.direction = Direction::Exit,
            _ => {}
        }
        let read_key: ReadKey = (read.lot.clone(), read.gate.clone(), read.event_id.clone());

        // A repeated event id: the very same command again, nothing else.
        if let Some(decided) = self.state.recent.by_read(&read_key) {
            let command = decided.command.resent_at(now);
            self.publish(&registry, lot, &read, &command);
            return;
        }
        if arrival == Arrival::ClockRefused {
            self.hold_for_clock(&registry, lot, read, read_key).await;
            return;
        }
        if arrival == Arrival::Fresh && self.older_than_memory(read.observed_at, now) {
            // It may have been answered long ago: looked up beside the actor, decided when the
            // answer comes (deciding without knowing could open a second session).
            let key = read_key.clone();
            self.look_up("late read", key, read, |read, stored| Done::LateRead {
                read: Box::new(read),
                stored,
            });
            return;
        }

        // The same car read again at the same lane moments later: one read, answered alike.
        let lane: LaneKey = (read.lot.clone(), read.gate.clone(), read.direction);
        let repeat = self.state.recent.repeat_of(
            &lane,
            &read.plate,
            (now, read.observed_at),
            self.config.repeat_window,
            self.config.review_threshold,
        );
        // A read repeats an earlier one only while the car is where that decision left it. The
        // lane's memory files a decision under the plate it read, so a car that went out under a
        // misread plate and came back in (or came in and is going out again) would otherwise be
        // taken for its own earlier read: an entry repeats only while the stay it opened is still
        // open; an exit does not repeat while the stay this read would close now (as an exit
        // matches: exactly, or one confusion away — the car may be misread alike at both exits)
        // began after the earlier exit (a stay older than it is another car's, whose plate this
        // read may be a misread of: the read stays a repeat).
        let open = self.state.lots.get(&read.lot).map(|l| &l.open);
        let review_threshold = self.config.review_threshold;
        let repeat = repeat.filter(|previous| match (read.direction, previous.session_id) {
            (Direction::Entry, Some(opened)) => open
                .and_then(|o| o.get(&previous.plate))
                .is_some_and(|s| s.id == opened),
            (Direction::Entry, None) => true,
            (Direction::Exit, decided) => open
                .and_then(|o| {
                    let found = matching::best_match(
                        read.plate.as_str(),
                        o.keys().map(|plate| (plate, plate.as_str())),
                    )?;
                    (found.score >= review_threshold).then(|| o.get(found.key))?
                })
                .is_none_or(|s| Some(s.id) == decided || s.entered_at < previous.observed_at),
        });
        if let Some(previous) = repeat {
            let command = GateCommand {
                command_id: Uuid::now_v7(),
                event_id: read.event_id.clone(),
                issued_at: now,
                expires_at: now + COMMAND_LIFETIME,
                ..previous.command
            };
            self.publish(&registry, lot, &read, &command);
            // Remembered under the car's first plate: the next read is measured against it, so
            // that reads one confusion from each other cannot drift, read by read, to another car.
            self.state.recent.remember(
                read_key,
                lane,
                Decided {
                    command: command.clone(),
                    plate: previous.plate.clone(),
                    session_id: previous.session_id,
                    at: read.received_at,
                    observed_at: read.observed_at,
                },
            );
            self.submit(
                &read.lot,
                vec![record(&read, &command, previous.session_id)],
                read.ticket,
            )
            .await;
            return;
        }

        let drivers = &self.state.drivers;
        let owed = &self.owed;
        let lot_state = self.state.lots.entry(read.lot.clone()).or_default();
        let planned = match read.direction {
            Direction::Entry => plan::entry(lot, lot_state, &read),
            Direction::Exit => {
                let standing_of =
                    |plate: &Plate| drivers.get(plate).copied().unwrap_or(Standing::NotEnrolled);
                plan::exit(
                    lot,
                    lot_state,
                    &read,
                    standing_of,
                    &self.config,
                    false,
                    |plate, currency| owed_in(owed, plate, currency),
                )
            }
        };
        let Planned {
            command,
            session_id,
            mut writes,
            opened,
            closed_fee_minor,
            reviews,
            owed_minor,
        } = planned;
        self.publish(&registry, lot, &read, &command);
        tracing::debug!(
            lot = %read.lot,
            gate = %read.gate,
            plate = %self.config.plate_key.tag(&read.plate),
            action = ?command.action,
            reason = ?command.reason,
            "read decided"
        );
        if let (GateReason::PaymentRequired, Some(session_id)) = (command.reason, session_id) {
            let session_plate = self
                .state
                .lots
                .get(&read.lot)
                .and_then(|l| l.open.values().find(|s| s.id == session_id))
                .map(|s| s.plate.clone());
            if let Some(session_plate) = session_plate {
                self.held.insert(
                    session_id,
                    Held {
                        session_plate,
                        read: HeldRead::of(&read),
                    },
                );
            }
        }
        if opened {
            self.metrics.sessions_opened.inc();
        }
        if let Some(minor) = closed_fee_minor {
            self.metrics.sessions_closed.inc();
            self.metrics
                .fees_minor
                .inc_by(u64::try_from(minor).unwrap_or(0));
        }
        self.metrics.review_items.inc_by(reviews as u64);
        let mut recorded = record(&read, &command, session_id);
        if let Write::GateRead(record) = &mut recorded {
            record.owed_minor = owed_minor;
        }
        writes.push(recorded);
        self.remember(read_key, lane, &read, &command, session_id);
        self.report_open(&registry, &read.lot);
        self.submit(&read.lot, writes, read.ticket).await;
    }

    /// A lane's report of decisions it made alone: each is reconciled once (against the
    /// platform's own answer to the same read, when it gave one), then acknowledged with an
    /// `ack_offline` once what it changed is durable.
    async fn offline(&mut self, report: OfflineReport) {
        let OfflineReport {
            lot,
            gate,
            decisions,
            unusable,
            ticket,
        } = report;
        if !self.runs(&lot) {
            self.metrics.rejected("lot_not_held");
            if let Some(ticket) = ticket {
                ticket.forward();
            }
            return;
        }
        let registry = self.registry.snapshot();
        let Some(lot_entry) = registry.lot_by_id(&lot) else {
            return;
        };
        let now = Utc::now();
        self.state.recent.expire(now);
        let mut writes = Vec::new();
        let mut acks = unusable;
        for decided in decisions {
            let key: ReadKey = (
                lot.clone(),
                decided.read.gate.clone(),
                decided.read.event_id.clone(),
            );
            let event_id = decided.read.event_id.clone();
            if let Some(platform) = self.state.recent.by_read(&key).cloned() {
                writes.extend(self.reconcile(&registry, lot_entry, decided, Some(platform)));
            } else if self.older_than_memory(decided.read.observed_at, now) {
                // The platform may have answered it long ago: reconciled and acknowledged when
                // the lookup beside the actor answers.
                self.look_up("offline decision", key, decided, |decided, stored| {
                    Done::OfflineLookedUp {
                        decided: Box::new(decided),
                        stored,
                    }
                });
                continue;
            } else {
                writes.extend(self.reconcile(&registry, lot_entry, decided, None));
            }
            acks.push(event_id);
        }
        self.submit_acked(&lot, &gate, writes, ticket, acks).await;
    }

    /// One decision a lane made alone, against the platform's own answer to that read if it
    /// gave one: the writes that make it one session event.
    fn reconcile(
        &mut self,
        registry: &Registry,
        lot: &Lot,
        decided: OfflineDecided,
        platform: Option<Decided>,
    ) -> Vec<Write> {
        let OfflineDecided {
            read,
            action,
            reason,
            standing_version,
        } = decided;
        tracing::debug!(
            lot = %read.lot,
            gate = %read.gate,
            plate = %self.config.plate_key.tag(&read.plate),
            action = ?action,
            reason = ?reason,
            standing_version,
            "offline decision reconciled"
        );
        let drivers = &self.state.drivers;
        let standing_of =
            |plate: &Plate| drivers.get(plate).copied().unwrap_or(Standing::NotEnrolled);
        let lot_state = self.state.lots.entry(read.lot.clone()).or_default();
        let entry_as = |lot_state: &mut super::state::LotState| {
            plan::entry_as(
                lot,
                lot_state,
                &read,
                super::decide::EntryDecision { action, reason },
            )
        };
        let let_out = |lot_state: &mut super::state::LotState| {
            plan::exit(
                lot,
                lot_state,
                &read,
                standing_of,
                &self.config,
                true,
                |_, _| 0,
            )
        };
        let (mut writes, session_id) = match platform {
            // The platform never answered it: the lane's decision is the decision. An exit held
            // at the lane leaves the car inside, its stay going on.
            None => {
                let planned = match (read.direction, action) {
                    (Direction::Entry, _) => Some(entry_as(lot_state)),
                    (Direction::Exit, GateAction::Open) => Some(let_out(lot_state)),
                    _ => None,
                };
                if let Some(planned) = &planned {
                    self.count(planned);
                }
                planned.map_or((Vec::new(), None), |p| (p.writes, p.session_id))
            }
            Some(platform) if platform.command.action == action => return Vec::new(),
            // Answered otherwise: what the lane did is what happened, so its decision replaces
            // the platform's, on record and in memory, and the same decision reported again
            // changes nothing.
            Some(platform) => {
                let mut writes = Vec::new();
                let mut session_id = platform.session_id;
                let still_open = |lot_state: &super::state::LotState| {
                    platform
                        .session_id
                        .is_some_and(|id| lot_state.open.values().any(|s| s.id == id))
                };
                let held_then_let_out = read.direction == Direction::Exit
                    && action == GateAction::Open
                    && platform.command.reason == GateReason::PaymentRequired;
                if held_then_let_out {
                    // The car has gone: its stay ends at the exit read and is billed (invoiced
                    // to its plate if nobody enrolled pays), unless paid or corrected meanwhile.
                    if let Some(held) = platform.session_id {
                        self.held.remove(&held);
                    }
                    if still_open(lot_state) {
                        let planned = let_out(lot_state);
                        self.count(&planned);
                        writes.extend(planned.writes);
                    }
                } else {
                    // A disagreement, one case for an operator. Let in by the platform, held by
                    // the lane: the car never came in, its stay ends in review with the case.
                    // Held by the platform, let in by the lane: the car is inside, its stay
                    // opens. Let out by the platform, held by the lane: the stay stays ended.
                    self.metrics.offline_conflicts.inc();
                    self.metrics.review_items.inc();
                    let never_entered = match (read.direction, action, platform.session_id) {
                        (Direction::Entry, GateAction::Hold, Some(id)) => {
                            plan::never_entered(lot_state, id, &read)
                        }
                        _ => Vec::new(),
                    };
                    if never_entered.is_empty() {
                        writes.push(plan::offline_conflict(lot, &read, platform.session_id));
                    }
                    writes.extend(never_entered);
                    if read.direction == Direction::Entry && action == GateAction::Open {
                        let planned = entry_as(lot_state);
                        self.count(&planned);
                        session_id = planned.session_id;
                        writes.extend(planned.writes);
                    }
                }
                (writes, session_id)
            }
        };
        self.metrics.offline_decisions.inc();
        let command = plan::command(&read, action, reason);
        let mut recorded = record(&read, &command, session_id);
        if let Write::GateRead(record) = &mut recorded {
            record.decided_offline = true;
        }
        writes.push(recorded);
        let read_key = (read.lot.clone(), read.gate.clone(), read.event_id.clone());
        let lane = (read.lot.clone(), read.gate.clone(), read.direction);
        self.remember(read_key, lane, &read, &command, session_id);
        self.report_open(registry, &read.lot);
        writes
    }

    /// Counts what a plan opened, closed and sent to review.
    fn count(&self, planned: &Planned) {
        if planned.opened {
            self.metrics.sessions_opened.inc();
        }
        if let Some(minor) = planned.closed_fee_minor {
            self.metrics.sessions_closed.inc();
            self.metrics
                .fees_minor
                .inc_by(u64::try_from(minor).unwrap_or(0));
        }
        self.metrics.review_items.inc_by(planned.reviews as u64);
    }

    /// Submits writes like [`Self::submit`], then, once they are durable, acknowledges each
    /// reconciled decision to its lane with an `ack_offline` (so a crash before the commit
    /// leaves the lane sending it, and nothing is lost). Not acknowledged if the lease the
    /// writes were made under is gone: the lot's new owner reconciles it when the lane sends
    /// it again.
    async fn submit_acked(
        &self,
        lot: &LotId,
        gate: &GateId,
        writes: Vec<Write>,
        ticket: Option<Ticket>,
        acks: Vec<EventId>,
    ) {
        if writes.is_empty() && acks.is_empty() {
            return;
        }
        let lease = self
            .ownership
            .as_ref()
            .map(|ownership| (lot.clone(), ownership.token(lot.as_str()).unwrap_or(0)));
        let (durable, committed) = tokio::sync::oneshot::channel();
        self.writer
            .submit(Batch {
                writes,
                ticket,
                durable: Some(durable),
                lease: lease.clone(),
            })
            .await;
        let publisher = self.publisher.clone();
        let registry = self.registry.clone();
        let ownership = self.ownership.clone();
        let (lot, gate) = (lot.clone(), gate.clone());
        tokio::spawn(async move {
            // The sender is dropped once the batch's group is durable.
            let _ = committed.await;
            if let (Some(ownership), Some((lot, token))) = (&ownership, &lease)
                && ownership.token(lot.as_str()) != Some(*token)
            {
                return;
            }
            let registry = registry.snapshot();
            let Some(lot) = registry.lot_by_id(&lot) else {
                return;
            };
            for event_id in acks {
                let command = GateCommand::new(
                    Uuid::now_v7(),
                    event_id,
                    GateAction::AckOffline,
                    GateReason::Reconciled,
                    Utc::now(),
                );
                if let Err(error) = publisher.publish(&registry, lot, &gate, &command) {
                    tracing::warn!(error = %error, "ack_offline not published; the lane sends its decision again");
                }
            }
        });
    }

    /// A read refused for its camera's clock: never `open` (its time cannot be trusted to open
    /// or close a stay), but a signed `hold` with reason `device_clock`, so that the lane calls
    /// an attendant instead of waiting for an answer that never comes. Recorded like any
    /// answered read, and remembered by read only (it decided nothing about its car).
    async fn hold_for_clock(
        &mut self,
        registry: &Registry,
        lot: &Lot,
        read: GateRead,
        key: ReadKey,
    ) {
        let command = plan::command(&read, GateAction::Hold, GateReason::DeviceClock);
        self.publish(registry, lot, &read, &command);
        self.state.recent.remember_read(
            key,
            Decided {
                command: command.clone(),
                plate: read.plate.clone(),
                session_id: None,
                at: read.received_at,
                observed_at: read.observed_at,
            },
        );
        self.submit(&read.lot, vec![record(&read, &command, None)], read.ticket)
            .await;
    }

    /// Hands a read's writes to the store writer with its ack ticket; on a gateway node, with
    /// the lease they were decided under (the writer fences on it).
    async fn submit(&self, lot: &LotId, writes: Vec<Write>, ticket: Option<Ticket>) {
        let lease = self.ownership.as_ref().map(|ownership| {
            // A lot not held has no token: the fence refuses token 0.
            (lot.clone(), ownership.token(lot.as_str()).unwrap_or(0))
        });
        self.writer
            .submit(Batch {
                writes,
                ticket,
                durable: None,
                lease,
            })
            .await;
    }

    /// Whether this actor decides for `lot`: always alone, on a gateway node while it holds it.
    fn runs(&self, lot: &LotId) -> bool {
        self.ownership
            .as_ref()
            .is_none_or(|ownership| ownership.holds(lot.as_str()))
    }

    /// Forgets lots another node runs now: their open sessions, recent decisions and held exits.
    fn release(&mut self, lots: &[LotId]) {
        for lot in lots {
            self.state.lots.remove(lot);
            self.state.recent.forget_lot(lot);
            self.held.retain(|_, held| &held.read.lot != lot);
        }
    }

    /// An answer from a task the actor started.
    async fn done(&mut self, done: Done) {
        match done {
            Done::LateRead { read, stored: None } => {
                self.plate_read(*read, Arrival::LookedUp).await;
            }
            Done::LateRead {
                read,
                stored: Some(stored),
            } => {
                let registry = self.registry.snapshot();
                if let Some(lot) = registry.lot_by_id(&read.lot) {
                    let command = stored.command.resent_at(Utc::now());
                    self.publish(&registry, lot, &read, &command);
                }
            }
            Done::OfflineLookedUp { decided, stored } => {
                let registry = self.registry.snapshot();
                let Some(lot) = registry.lot_by_id(&decided.read.lot) else {
                    return;
                };
                let key: ReadKey = (
                    decided.read.lot.clone(),
                    decided.read.gate.clone(),
                    decided.read.event_id.clone(),
                );
                // Another copy of the report may have been reconciled while this one was looked up.
                let platform = match self.state.recent.by_read(&key) {
                    Some(decided) => Some(decided.clone()),
                    None => stored.map(|s| Decided {
                        command: s.command,
                        plate: s.plate,
                        session_id: s.session_id,
                        at: s.received_at,
                        observed_at: s.observed_at,
                    }),
                };
                let gate = decided.read.gate.clone();
                let event_id = decided.read.event_id.clone();
                let writes = self.reconcile(&registry, lot, *decided, platform);
                self.submit_acked(&lot.id, &gate, writes, None, vec![event_id])
                    .await;
            }
            Done::StillOpen(session, _settled) => {
                let lot = session.lot.clone();
                self.state
                    .lots
                    .entry(lot.clone())
                    .or_default()
                    .open
                    .entry(session.plate.clone())
                    .or_insert(session);
                self.report_open(&self.registry.snapshot(), &lot);
            }
        }
    }

    /// New drivers, passes and blocks; standing changes that arrived after they were read stand.
    fn facts(&mut self, facts: Facts) {
        let read_at = facts.read_at;
        apply_facts(&mut self.state, facts);
        let newer: Vec<_> = self
            .recent_standing
            .iter()
            .filter(|(at, _, _)| *at >= read_at)
            .map(|(_, plates, standing)| (plates.clone(), *standing))
            .collect();
        for (plates, standing) in newer {
            self.set_standing(&plates, standing);
        }
    }

    fn set_standing(&mut self, plates: &[Plate], standing: Standing) {
        for plate in plates {
            match standing {
                Standing::NotEnrolled => self.state.drivers.remove(plate),
                standing => self.state.drivers.insert(plate.clone(), standing),
            };
        }
    }

    /// A driver's standing changed. A car of theirs held at an exit for payment while they were
    /// suspended leaves at once when they are reinstated (its stay is billed later, as any).
    async fn standing(&mut self, plates: Vec<Plate>, standing: Standing) {
        self.set_standing(&plates, standing);
        let now = Instant::now();
        while self
            .recent_standing
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > STANDING_KEPT)
        {
            self.recent_standing.pop_front();
        }
        self.recent_standing
            .push_back((now, plates.clone(), standing));
        if standing != Standing::Enrolled {
            return;
        }
        let waiting: Vec<Uuid> = self
            .held
            .iter()
            .filter(|(_, h)| plates.contains(&h.session_plate))
            .map(|(id, _)| *id)
            .collect();
        for session_id in waiting {
            let Some(held) = self.held.remove(&session_id) else {
                continue;
            };
            let registry = self.registry.snapshot();
            let Some(lot) = registry.lot_by_id(&held.read.lot) else {
                continue;
            };
            let Some(lot_state) = self.state.lots.get_mut(&held.read.lot) else {
                continue;
            };
            let read = held.read.replay();
            let planned = plan::exit(
                lot,
                lot_state,
                &read,
                |_| Standing::Enrolled,
                &self.config,
                false,
                |_, _| 0,
            );
            if planned.command.action != GateAction::Open {
                continue;
            }
            self.publish(&registry, lot, &read, &planned.command);
            if let Some(minor) = planned.closed_fee_minor {
                self.metrics.sessions_closed.inc();
                self.metrics
                    .fees_minor
                    .inc_by(u64::try_from(minor).unwrap_or(0));
            }
            self.report_open(&registry, &held.read.lot);
            // The held read itself stays recorded with its hold; the session's end is what changes.
            self.submit(&held.read.lot, planned.writes, None).await;
        }
    }

    fn exit_paid(&mut self, paid: PaidExit) {
        self.held.remove(&paid.session_id);
        let registry = self.registry.snapshot();
        let Some(lot) = registry.lot_by_id(&paid.lot) else {
            return;
        };
        if let Some(state) = self.state.lots.get_mut(&paid.lot) {
            state
                .open
                .retain(|_, session| session.id != paid.session_id);
        }
        let command = GateCommand::new(
            Uuid::now_v7(),
            paid.event_id.clone(),
            GateAction::Open,
            GateReason::Paid,
            paid.paid_at,
        );
        if let Err(error) = self.publisher.publish(&registry, lot, &paid.gate, &command) {
            tracing::error!(error = %error, lot = %lot.id, gate = %paid.gate, "paid exit's open command not published");
            return;
        }
        self.metrics
            .barrier_commands
            .get_or_create(&ActionLabel {
                action: command.action.as_str(),
            })
            .inc();
    }

    /// See [`GateMessage::EndOpen`].
    fn end_open(
        &mut self,
        lot: &LotId,
        session: Uuid,
        work: super::Correction,
        reply: tokio::sync::oneshot::Sender<bool>,
        settled: tokio::sync::oneshot::Sender<()>,
    ) {
        let Some(taken) = self.take_open(lot, session) else {
            let _ = reply.send(false);
            return;
        };
        let _ = reply.send(true);
        let db = self.db.clone();
        self.off_actor("correction", async move {
            if work.0.await {
                return None;
            }
            // Not committed, as far as the work knows (a commit that failed on the way back may
            // have committed all the same): the session is given back if it is still open.
            match sessions::session(&db, taken.id).await {
                Ok(Some(stored)) if stored.status != SessionStatus::Open => None,
                Ok(None) => None,
                Ok(Some(_)) => Some(Done::StillOpen(taken, settled)),
                Err(error) => {
                    tracing::warn!(error = %error, session = %taken.id, "failed to check a session a correction gave back; restoring it");
                    Some(Done::StillOpen(taken, settled))
                }
            }
        });
    }

    /// Takes an open session out of the gate's open sessions, unless its car is held at an exit
    /// for payment (it is leaving through its own session).
    fn take_open(&mut self, lot: &LotId, session: Uuid) -> Option<OpenSession> {
        if self.held.contains_key(&session) {
            return None;
        }
        let open = &mut self.state.lots.get_mut(lot)?.open;
        let plate = open.iter().find(|(_, s)| s.id == session)?.0.clone();
        let taken = open.remove(&plate);
        self.report_open(&self.registry.snapshot(), lot);
        taken
    }

    fn manual_open(
        &mut self,
        lot: &LotId,
        gate: &GateId,
        command_id: Uuid,
        event_id: EventId,
        at: DateTime<Utc>,
    ) -> Result<GateCommand, String> {
        let registry = self.registry.snapshot();
        let lot = registry.lot_by_id(lot).ok_or("unknown lot")?;
        registry.gate(lot.idx, gate).ok_or("unknown gate")?;
        let command = GateCommand::new(
            command_id,
            event_id,
            GateAction::Open,
            GateReason::Manual,
            at,
        );
        self.publisher
            .publish(&registry, lot, gate, &command)
            .map_err(|e| e.to_string())?;
        self.metrics
            .barrier_commands
            .get_or_create(&ActionLabel {
                action: command.action.as_str(),
            })
            .inc();
        Ok(command)
    }

    fn publish(&self, registry: &Registry, lot: &Lot, read: &GateRead, command: &GateCommand) {
        if let Err(error) = self.publisher.publish(registry, lot, &read.gate, command) {
            tracing::error!(error = %error, lot = %lot.id, gate = %read.gate, "barrier command not published");
            return;
        }
        self.metrics
            .barrier_commands
            .get_or_create(&ActionLabel {
                action: command.action.as_str(),
            })
            .inc();
        let took = read.received.elapsed();
        self.metrics.decision_seconds.observe(took.as_secs_f64());
        if let Some(lanes) = &self.lanes {
            lanes.decided(&lot.id, &read.gate, took);
        }
    }

    fn remember(
        &mut self,
        read_key: ReadKey,
        lane: LaneKey,
        read: &GateRead,
        command: &GateCommand,
        session_id: Option<Uuid>,
    ) {
        let decided = Decided {
            command: command.clone(),
            plate: read.plate.clone(),
            session_id,
            at: read.received_at,
            observed_at: read.observed_at,
        };
        self.state.recent.remember(read_key, lane, decided);
    }
}

/// Replaces the actor's drivers, passes and blocks with `facts`.
fn apply_facts(state: &mut GateState, facts: Facts) {
    state.drivers = facts
        .enrolled
        .into_iter()
        // Enrolled plates are those of drivers who consent to auto-debit.
        .map(|(plate, suspended)| (plate, Standing::of(true, suspended)))
        .collect();
    for lot in state.lots.values_mut() {
        lot.passes.clear();
        lot.blocked.clear();
    }
    for (lot, plate, from, until) in facts.passes {
        state
            .lots
            .entry(lot)
            .or_default()
            .passes
            .entry(plate)
            .or_default()
            .push((from, until));
    }
    for (lot, plate) in facts.blocked {
        state.lots.entry(lot).or_default().blocked.insert(plate);
    }
}

fn record(read: &GateRead, command: &GateCommand, session_id: Option<Uuid>) -> Write {
    let amount_due_minor = match (command.amount_due, command.currency.as_deref()) {
        (Some(amount), Some(currency)) => parkflow_billing::Currency::new(currency)
            .ok()
            .and_then(|c| parkflow_billing::Money::new(amount, c).ok())
            .and_then(|m| m.to_minor().ok()),
        _ => None,
    };
    Write::GateRead(Box::new(GateReadRecord {
        lot: read.lot.clone(),
        gate: read.gate.clone(),
        event_id: read.event_id.clone(),
        plate: read.plate.clone(),
        plate_color: read.plate_color,
        confidence: read.confidence,
        direction: read.direction,
        observed_at: read.observed_at,
        received_at: read.received_at,
        command: command.clone(),
        amount_due_minor,
        session_id,
        decided_offline: false,
        owed_minor: None,
    }))
}
