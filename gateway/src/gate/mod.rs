//! Gate decisions (SPEC §3): a plate read at an entry or exit lane gets exactly one barrier
//! command, published before anything slow; the sessions it opens and closes follow to the store.
//!
//! One actor ([`actor::GateActor`]) owns the open sessions of every gated lot, the recent
//! decisions (so a repeated `event_id` gets the very same command) and the facts a decision
//! needs (enrolled plates, passes, blocks). The decisions themselves are pure (`decide`).

pub mod actor;
pub(crate) mod decide;
pub(crate) mod lanes;
pub(crate) mod plan;
pub(crate) mod standing;
pub(crate) mod state;

use std::time::Instant;

use chrono::{DateTime, Utc};
use parkflow_protocol::{Direction, EventId, GateId, LotId, Plate, PlateColor};
use tokio::sync::mpsc;
use uuid::Uuid;

use self::decide::Standing;

use crate::cluster::{Notice, Peers};
use crate::mqtt::ack::Ticket;
use std::sync::{Arc, OnceLock};

/// A correction's transaction, run for the actor on a task: `true` once it committed.
pub struct Correction(pub std::pin::Pin<Box<dyn Future<Output = bool> + Send>>);

impl std::fmt::Debug for Correction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Correction(…)")
    }
}

/// Plate reads waiting for the gate actor.
pub const GATE_CHANNEL_CAPACITY: usize = 10_000;

/// A verified plate read from a gate camera.
#[derive(Debug)]
pub struct GateRead {
    pub lot: LotId,
    pub gate: GateId,
    pub event_id: EventId,
    pub plate: Plate,
    pub plate_color: Option<PlateColor>,
    pub confidence: f64,
    pub direction: Direction,
    pub observed_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// When the message arrived, for `parkflow_decision_seconds`.
    pub received: Instant,
    pub ticket: Option<Ticket>,
}

/// A decision a lane made alone while the platform could not answer (its `offline` report),
/// verified: the read it answered, and what the lane did.
#[derive(Debug)]
pub struct OfflineDecided {
    /// The read as the lane reported it (no ticket: the report carries one for all).
    pub read: GateRead,
    pub action: parkflow_protocol::GateAction,
    pub reason: parkflow_protocol::GateReason,
    /// The standing list it was decided with (0: none).
    pub standing_version: u64,
}

/// One `offline` report of a lane.
#[derive(Debug)]
pub struct OfflineReport {
    pub lot: LotId,
    pub gate: GateId,
    pub decisions: Vec<OfflineDecided>,
    /// Decisions that cannot be reconciled (their plate does not parse): acknowledged only,
    /// so that the lane stops sending them; counted as rejected by ingest.
    pub unusable: Vec<EventId>,
    pub ticket: Option<Ticket>,
}

/// A held exit that was paid through the API: the session is closed and billed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PaidExit {
    pub session_id: Uuid,
    pub lot: LotId,
    pub gate: GateId,
    /// The held read the opening answers.
    pub event_id: EventId,
    pub paid_at: DateTime<Utc>,
}

/// What the gate actor is asked to do.
#[derive(Debug)]
pub enum GateMessage {
    PlateRead(Box<GateRead>),
    /// A read correctly signed by its gate's camera but refused for its time (the camera's clock
    /// is off): answered with a signed `hold`, reason `device_clock`, and recorded; no session.
    ClockRefused(Box<GateRead>),
    /// These plates' drivers now have this standing (enrolled, suspended, or no longer enrolled).
    Standing {
        plates: Vec<Plate>,
        standing: Standing,
    },
    /// Decisions a lane made alone: each becomes one session event, then is acknowledged.
    Offline(Box<OfflineReport>),
    /// What plates owe from stays nobody enrolled pays for, by currency in minor units (all of
    /// it, replacing what the actor knew): collected at the plate's next held exit.
    Owed(std::collections::HashMap<Plate, Vec<(String, i64)>>),
    /// Open the barrier for a held car that paid.
    ExitPaid(PaidExit),
    /// Drivers, passes and blocks read again from the database (by [`GateHandle::reload`]).
    Facts(Box<actor::Facts>),
    /// An operator opens a barrier by hand: a signed `open` (reason `manual`) answering no read,
    /// with the ids the audit trail recorded (`event_id` `manual-…`). Answers with the command, or
    /// why it was not sent.
    ManualOpen {
        lot: LotId,
        gate: GateId,
        command_id: uuid::Uuid,
        event_id: parkflow_protocol::EventId,
        at: DateTime<Utc>,
        reply: tokio::sync::oneshot::Sender<Result<parkflow_protocol::GateCommand, String>>,
    },
    /// An operator's correction ends an open session. The actor takes the session out of its
    /// open sessions (no read can end it meanwhile), runs `work` (the correction's transaction)
    /// on a task, and puts the session back unless the work committed, so it never waits for
    /// the database and a request given up half-way changes nothing. Answers `false` at once
    /// when the session is not open at the gates (a read ended it, or its car is held at an exit
    /// for payment); the work's own outcome goes wherever `work` sends it. `settled` is dropped
    /// once the session is either out for good or back among the open ones, so that whoever
    /// answers the operator does so only when the gates see the outcome.
    EndOpen {
        lot: LotId,
        session: Uuid,
        work: Correction,
        reply: tokio::sync::oneshot::Sender<bool>,
        settled: tokio::sync::oneshot::Sender<()>,
    },
    /// A gateway node adopted a lot: its stored state, read by the node's lease keeper.
    Adopt(Box<actor::Gates>),
    /// Lots this node no longer runs: forget their state.
    Release(Vec<LotId>),
    /// A session of a lot this node runs was ended by a correction made on another node.
    Ended {
        lot: LotId,
        session: Uuid,
    },
    /// Dropped once everything the gates decided before it is durable: a `pay_url` asked for
    /// the moment its hold is published waits for this instead of answering 404.
    Durable(tokio::sync::oneshot::Sender<()>),
    /// Answers from work the actor handed to a task, so that it never waits for the database
    /// itself (one slow query would stall every barrier in the city).
    Done(actor::Done),
}

impl GateMessage {
    /// The gate's view of a driver whose standing billing changed (suspended, reinstated).
    /// Opens the barrier for a held exit that was paid; `None` when its stored ids do not parse.
    pub fn exit_paid(paid: &parkflow_billing::payments::ExitPaid) -> Option<Self> {
        Some(Self::ExitPaid(PaidExit {
            session_id: paid.session_id,
            lot: LotId::parse(&paid.lot_id).ok()?,
            gate: GateId::parse(&paid.gate_id).ok()?,
            event_id: EventId::parse(&paid.event_id).ok()?,
            paid_at: Utc::now(),
        }))
    }

    pub fn standing(change: &parkflow_billing::arrears::StandingChange) -> Self {
        Self::Standing {
            plates: change
                .plates
                .iter()
                .filter_map(|p| Plate::parse(p).ok())
                .collect(),
            standing: decide::Standing::of(change.auto_debit, change.suspended),
        }
    }
}

/// Sends work to the gate actor.
#[derive(Clone)]
pub struct GateHandle {
    tx: mpsc::Sender<GateMessage>,
    /// On a gateway node: the other nodes, told of standing changes, paid exits and new facts.
    peers: Arc<OnceLock<Peers>>,
    /// The keeper of the lanes' standing lists, told when the facts change.
    standing: standing::StandingChanged,
    /// What each lane last did, for the console.
    lanes: lanes::LaneBoard,
}

impl GateHandle {
    pub fn channel() -> (Self, mpsc::Receiver<GateMessage>) {
        let (tx, rx) = mpsc::channel(GATE_CHANNEL_CAPACITY);
        (
            Self {
                tx,
                peers: Arc::default(),
                standing: standing::StandingChanged::default(),
                lanes: lanes::LaneBoard::default(),
            },
            rx,
        )
    }

    /// From now on, what changes the facts or opens a paid exit is told to the other nodes too.
    pub(crate) fn tell_peers(&self, peers: Peers) {
        let _ = self.peers.set(peers);
    }

    /// A sender that does not keep the actor alive (for the actor's own tasks' answers).
    pub fn downgrade(&self) -> mpsc::WeakSender<GateMessage> {
        self.tx.downgrade()
    }

    /// Hands a read to the actor (waits while it is behind).
    pub async fn plate_read(&self, read: GateRead) {
        self.send(GateMessage::PlateRead(Box::new(read))).await;
    }

    /// A read refused for its camera's clock, to be answered with `hold` (`device_clock`).
    pub(crate) async fn clock_refused(&self, read: GateRead) {
        self.send(GateMessage::ClockRefused(Box::new(read))).await;
    }

    /// Reads drivers, passes and blocks again (here, not in the actor) and hands them over; the
    /// actor decides the reads that follow with them.
    pub async fn reload(&self, db: &crate::store::Db) {
        if let Some(peers) = self.peers.get() {
            peers.tell(Notice::Facts).await;
        }
        self.reload_here(db).await;
    }

    /// What each lane last did (the console's lanes).
    pub(crate) fn lanes(&self) -> &lanes::LaneBoard {
        &self.lanes
    }

    /// Tells the lanes' standing keeper that drivers, passes, blocks or debts changed (it reads
    /// them again and sends the lanes what differs; the gate actor learns what plates owe).
    pub fn facts_changed(&self) {
        self.standing.tell();
    }

    /// What tells the standing keeper that the facts changed.
    pub(crate) fn standing_changed(&self) -> standing::StandingChanged {
        self.standing.clone()
    }

    /// [`GateHandle::reload`] on this node only.
    pub(crate) async fn reload_here(&self, db: &crate::store::Db) {
        self.standing.tell();
        match actor::Facts::read(db, Utc::now()).await {
            Ok(facts) => self.send(GateMessage::Facts(Box::new(facts))).await,
            Err(error) => {
                tracing::error!(error = %error, "failed to reload drivers, passes and blocks");
            }
        }
    }

    /// Waits (at most `limit`) until everything the gates decided before now is durable;
    /// whether it is.
    pub async fn durable(&self, limit: std::time::Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(GateMessage::Durable(tx)).await;
        // Never sent on: the sender dropped with its group is the answer.
        tokio::time::timeout(limit, rx).await.is_ok()
    }

    /// Sends to this node's actor; a standing change or a paid exit also to the other nodes'
    /// (the lot's owner opens the barrier, every node decides with the new standing).
    pub async fn send(&self, message: GateMessage) {
        if let Some(peers) = self.peers.get() {
            match &message {
                GateMessage::Standing { plates, standing } => {
                    peers
                        .tell(Notice::Standing {
                            plates: plates.iter().map(|p| p.as_str().to_owned()).collect(),
                            standing: *standing,
                        })
                        .await;
                }
                GateMessage::ExitPaid(paid) => peers.tell(Notice::ExitPaid(paid.clone())).await,
                _ => {}
            }
        }
        self.send_here(message).await;
    }

    /// [`GateHandle::send`] to this node's actor only.
    pub(crate) async fn send_here(&self, message: GateMessage) {
        if matches!(message, GateMessage::Standing { .. }) {
            self.standing.tell();
        }
        if self.tx.send(message).await.is_err() {
            // Only during shutdown: the event loop has stopped, so nothing is acknowledged any more.
            tracing::debug!("gate actor is gone; message dropped");
        }
    }
}
