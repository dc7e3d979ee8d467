//! Gate decisions (SPEC §3): a plate read at an entry or exit lane gets exactly one barrier
//! command, published before anything slow; the sessions it opens and closes follow to the store.
//!
//! One actor ([`actor::GateActor`]) owns the open sessions of every gated lot, the recent
//! decisions (so a repeated `event_id` gets the very same command) and the facts a decision
//! needs (enrolled plates, passes, blocks). The decisions themselves are pure (`decide`).

pub mod actor;
pub mod decide;
pub mod plan;
pub mod state;

use std::time::Instant;

use chrono::{DateTime, Utc};
use parkflow_protocol::{Direction, EventId, GateId, LotId, Plate, PlateColor};
use tokio::sync::mpsc;
use uuid::Uuid;

use self::decide::Standing;

use crate::mqtt::ack::Ticket;

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

/// A held exit that was paid through the API: the session is closed and billed.
#[derive(Debug, Clone)]
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
    /// These plates' drivers now have this standing (enrolled, suspended, or no longer enrolled).
    Standing {
        plates: Vec<Plate>,
        standing: Standing,
    },
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
    /// An operator's correction ends an open session: no read may end it from now on. Answers
    /// with the session, or `None` when it is not open (a read ended it first) or its car is
    /// held at an exit for payment.
    TakeOpen {
        lot: LotId,
        session: uuid::Uuid,
        reply: tokio::sync::oneshot::Sender<Option<crate::session::OpenSession>>,
    },
    /// The correction that took this session did not commit: it is open again (if the database
    /// says so).
    Restore(crate::session::OpenSession),
    /// Answers from work the actor handed to a task, so that it never waits for the database
    /// itself (one slow query would stall every barrier in the city).
    Done(actor::Done),
}

impl GateMessage {
    /// The gate's view of a driver whose standing billing changed (suspended, reinstated).
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
}

impl GateHandle {
    pub fn channel() -> (Self, mpsc::Receiver<GateMessage>) {
        let (tx, rx) = mpsc::channel(GATE_CHANNEL_CAPACITY);
        (Self { tx }, rx)
    }

    /// A sender that does not keep the actor alive (for the actor's own tasks' answers).
    pub fn downgrade(&self) -> mpsc::WeakSender<GateMessage> {
        self.tx.downgrade()
    }

    /// Hands a read to the actor (waits while it is behind).
    pub async fn plate_read(&self, read: GateRead) {
        self.send(GateMessage::PlateRead(Box::new(read))).await;
    }

    /// Reads drivers, passes and blocks again (here, not in the actor) and hands them over; the
    /// actor decides the reads that follow with them.
    pub async fn reload(&self, db: &crate::store::Db) {
        match actor::Facts::read(db, Utc::now()).await {
            Ok(facts) => self.send(GateMessage::Facts(Box::new(facts))).await,
            Err(error) => {
                tracing::error!(error = %error, "failed to reload drivers, passes and blocks");
            }
        }
    }

    pub async fn send(&self, message: GateMessage) {
        if self.tx.send(message).await.is_err() {
            // Only during shutdown: the event loop has stopped, so nothing is acknowledged any more.
            tracing::debug!("gate actor is gone; message dropped");
        }
    }
}

/// An open session an operator's correction took from the gate actor (`TakeOpen`). Unless it is
/// [`kept`](Self::kept) once the correction has committed, dropping it gives the session back —
/// also when the request is dropped half-way (past its timeout) — and the actor restores it only
/// while the database still has it open (a correction may commit just before its request is
/// dropped).
pub struct TakenSession {
    gates: GateHandle,
    session: Option<crate::session::OpenSession>,
}

impl TakenSession {
    pub fn new(gates: GateHandle, session: crate::session::OpenSession) -> Self {
        Self {
            gates,
            session: Some(session),
        }
    }

    /// The correction committed: the session stays out of the gate actor.
    pub fn kept(mut self) {
        self.session = None;
    }
}

impl Drop for TakenSession {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let id = session.id;
            if self
                .gates
                .tx
                .try_send(GateMessage::Restore(session))
                .is_err()
            {
                tracing::error!(session = %id, "gate actor full or gone: a session taken for a correction was not given back (its exit will go to review)");
            }
        }
    }
}
