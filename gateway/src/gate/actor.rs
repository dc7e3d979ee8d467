//! The gate actor: decides, publishes, then records.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parkflow_billing::{Currency, Money, Stay};
use parkflow_protocol::{Direction, GateAction, GateCommand, GateReason, Plate};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::decide::{self, EntryFacts, ExitFacts, Found, Standing};
use super::state::{Decided, GateState, LotState, ReadKey, RepeatKey};
use super::{GateMessage, GateRead};
use crate::metrics::{ActionLabel, Metrics};
use crate::mqtt::publish::CommandPublisher;
use crate::registry::{Lot, Registry, RegistryHandle};
use crate::session::matching::{self, MatchKind};
use crate::session::{ExitMatch, OpenSession, ReviewItem, ReviewKind, SessionEnd, SessionStatus};
use crate::store::writer::{Batch, GateReadRecord, Write, WriterHandle};
use crate::store::{Db, StoreError, sessions};

/// How the actor decides.
#[derive(Debug, Clone)]
pub struct DecisionConfig {
    /// Exit matches scoring below this open the barrier but go to the review queue.
    pub review_threshold: f64,
    /// Reads of the same car at the same gate within this window are one read.
    pub repeat_window: Duration,
    /// Decisions are kept in memory this long; older repeats are looked up in the database.
    pub recent_window: Duration,
    /// Base of the `pay_url` in `hold` commands, e.g. `http://localhost:8080`.
    pub public_url: String,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            review_threshold: 0.9,
            repeat_window: Duration::seconds(30),
            recent_window: Duration::minutes(15),
            public_url: "http://localhost:8080".into(),
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
}

impl GateActor {
    /// Loads open sessions, recent decisions, enrolled plates, passes and blocks.
    pub async fn load(
        config: DecisionConfig,
        db: Db,
        registry: RegistryHandle,
        writer: WriterHandle,
        publisher: CommandPublisher,
        metrics: Arc<Metrics>,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let mut state = GateState::new(config.recent_window);
        for session in sessions::open_sessions(&db).await? {
            state
                .lots
                .entry(session.lot.clone())
                .or_default()
                .open
                .insert(session.plate.clone(), session);
        }
        for decision in sessions::decisions_since(&db, now - config.recent_window).await? {
            let read = (
                decision.lot.clone(),
                decision.gate.clone(),
                decision.command.event_id.clone(),
            );
            let car = (
                decision.lot,
                decision.gate,
                decision.plate,
                decision.direction,
            );
            let decided = Decided {
                command: decision.command,
                session_id: decision.session_id,
                at: decision.received_at,
            };
            state.recent.remember(read, car, decided);
        }
        for (plate, suspended) in sessions::enrolled_plates(&db).await? {
            state.drivers.insert(
                plate,
                if suspended {
                    Standing::Suspended
                } else {
                    Standing::Enrolled
                },
            );
        }
        for (lot, plate, from, until) in sessions::passes(&db, now).await? {
            state
                .lots
                .entry(lot)
                .or_default()
                .passes
                .entry(plate)
                .or_default()
                .push((from, until));
        }
        for (lot, plate) in sessions::blocked_plates(&db).await? {
            state.lots.entry(lot).or_default().blocked.insert(plate);
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
        })
    }

    /// Runs until every handle is gone (ingest stopped), having decided everything queued.
    pub async fn run(mut self, mut rx: mpsc::Receiver<GateMessage>) {
        while let Some(message) = rx.recv().await {
            match message {
                GateMessage::PlateRead(read) => self.plate_read(*read).await,
            }
        }
        tracing::debug!("gate actor drained and stopped");
    }

    async fn plate_read(&mut self, read: GateRead) {
        let now = read.received_at;
        self.state.recent.expire(now);
        let registry = self.registry.snapshot();
        let Some(lot) = registry.lot_by_id(&read.lot) else {
            return;
        };
        let read_key: ReadKey = (read.lot.clone(), read.gate.clone(), read.event_id.clone());

        // A repeated event id: the very same command again, nothing else.
        if let Some(decided) = self.state.recent.by_read(&read_key) {
            let command = decided.command.clone();
            self.publish(&registry, lot, &read, &command);
            return;
        }
        if read.observed_at < now - self.state.recent.window() {
            match sessions::decision(&self.db, &read.lot, &read.gate, &read.event_id).await {
                Ok(Some(stored)) => {
                    self.publish(&registry, lot, &read, &stored.command);
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    // Without knowing, deciding again could open a second session: leave it for re-delivery.
                    tracing::error!(error = %error, "failed to look up a late read's decision; not answered");
                    return;
                }
            }
        }

        // The same car read again at the same gate: one read, answered alike, recorded once more.
        let car_key: RepeatKey = (
            read.lot.clone(),
            read.gate.clone(),
            read.plate.clone(),
            read.direction,
        );
        if let Some(previous) = self
            .state
            .recent
            .by_car(&car_key, now, self.config.repeat_window)
            .cloned()
        {
            let command = GateCommand {
                command_id: Uuid::now_v7(),
                event_id: read.event_id.clone(),
                issued_at: now,
                ..previous.command
            };
            self.publish(&registry, lot, &read, &command);
            let record = record(&read, &command, previous.session_id);
            self.remember(read_key, car_key, &command, previous.session_id, now);
            self.writer
                .submit(Batch {
                    writes: vec![record],
                    ticket: read.ticket,
                })
                .await;
            return;
        }

        let drivers = &self.state.drivers;
        let lot_state = self.state.lots.entry(read.lot.clone()).or_default();
        let (command, session_id, writes) = match read.direction {
            Direction::Entry => entry(lot, lot_state, &read, &self.metrics),
            Direction::Exit => {
                let standing_of =
                    |plate: &Plate| drivers.get(plate).copied().unwrap_or(Standing::NotEnrolled);
                exit(
                    &self.config,
                    lot,
                    lot_state,
                    &read,
                    standing_of,
                    &self.metrics,
                )
            }
        };
        self.publish(&registry, lot, &read, &command);
        let mut writes = writes;
        writes.push(record(&read, &command, session_id));
        self.remember(read_key, car_key, &command, session_id, now);
        self.writer
            .submit(Batch {
                writes,
                ticket: read.ticket,
            })
            .await;
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
        self.metrics
            .decision_seconds
            .observe(read.received.elapsed().as_secs_f64());
    }

    fn remember(
        &mut self,
        read: ReadKey,
        car: RepeatKey,
        command: &GateCommand,
        session_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) {
        let decided = Decided {
            command: command.clone(),
            session_id,
            at: now,
        };
        self.state.recent.remember(read, car, decided);
    }
}

fn command(read: &GateRead, action: GateAction, reason: GateReason) -> GateCommand {
    GateCommand {
        command_id: Uuid::now_v7(),
        event_id: read.event_id.clone(),
        action,
        reason,
        issued_at: read.received_at,
        amount_due: None,
        currency: None,
        pay_url: None,
    }
}

fn record(read: &GateRead, command: &GateCommand, session_id: Option<Uuid>) -> Write {
    let amount_due_minor = match (command.amount_due, command.currency.as_deref()) {
        (Some(amount), Some(currency)) => Currency::new(currency)
            .ok()
            .and_then(|c| Money::new(amount, c).ok())
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
    }))
}

/// SPEC §3 gated entry.
fn entry(
    lot: &Lot,
    state: &mut LotState,
    read: &GateRead,
    metrics: &Metrics,
) -> (GateCommand, Option<Uuid>, Vec<Write>) {
    let pass_holder = state.has_pass(&read.plate, read.observed_at);
    let decision = decide::entry(EntryFacts {
        blocked: state.blocked.contains(&read.plate),
        pass_holder,
        capacity: lot.capacity,
        open_sessions: state.open.len(),
    });
    let command = command(read, decision.action, decision.reason);
    if !decision.opens_session() {
        return (command, None, Vec::new());
    }
    let mut writes = Vec::new();
    // A session still open for this plate means its exit was missed: it ends for review.
    if let Some(missed) = state.open.remove(&read.plate) {
        writes.push(Write::EndSession(SessionEnd {
            id: missed.id,
            status: SessionStatus::Review,
            exit_gate: None,
            exit_event: None,
            exited_at: read.observed_at.max(missed.entered_at),
            exit_match: None,
            tariff_from: None,
            fee: None,
        }));
        writes.push(review(
            lot,
            ReviewKind::MissedExit,
            Some(missed.id),
            read,
            None,
        ));
        metrics.review_items.inc();
    }
    let session = OpenSession {
        id: Uuid::now_v7(),
        lot: lot.id.clone(),
        plate: read.plate.clone(),
        plate_color: read.plate_color,
        pass_holder,
        entry_gate: Some(read.gate.clone()),
        entry_event: Some(read.event_id.clone()),
        entered_at: read.observed_at,
    };
    let id = session.id;
    state.open.insert(read.plate.clone(), session.clone());
    writes.push(Write::OpenSession(session));
    metrics.sessions_opened.inc();
    (command, Some(id), writes)
}

/// SPEC §3 gated exit.
fn exit(
    config: &DecisionConfig,
    lot: &Lot,
    state: &mut LotState,
    read: &GateRead,
    standing_of: impl Fn(&Plate) -> Standing,
    metrics: &Metrics,
) -> (GateCommand, Option<Uuid>, Vec<Write>) {
    let found = matching::best_match(
        read.plate.as_str(),
        state.open.keys().map(|plate| (plate, plate.as_str())),
    )
    .map(|m| (m.key.clone(), m.score, m.kind));
    let session = found
        .as_ref()
        .and_then(|(plate, _, _)| state.open.get(plate))
        .cloned();
    let (standing, pass_holder, fee) = match &session {
        Some(session) => {
            // The enrolled plate may be the one read now or the one read at entry.
            let standing = match standing_of(&read.plate) {
                Standing::NotEnrolled => standing_of(&session.plate),
                standing => standing,
            };
            let pass_holder =
                session.pass_holder || state.has_pass(&session.plate, read.observed_at);
            let stay = Stay {
                entered_at: session.entered_at,
                exited_at: read.observed_at.max(session.entered_at),
                plate_color: session.plate_color.or(read.plate_color),
                pass_holder,
            };
            let priced = lot
                .tariffs
                .in_force_at(session.entered_at)
                .and_then(|t| Some((t.effective_from(), t.fee(&stay).ok()?)));
            (standing, pass_holder, priced)
        }
        None => (standing_of(&read.plate), false, None),
    };
    let decision = decide::exit(ExitFacts {
        found: match &found {
            Some((_, score, _)) => Found::Session { score: *score },
            None => Found::Nothing,
        },
        standing,
        pass_holder,
        fee_due: fee.as_ref().is_some_and(|(_, money)| !money.is_zero()),
        review_threshold: config.review_threshold,
    });
    let mut command = command(read, decision.action, decision.reason);
    if let (GateAction::Hold, Some((_, money)), Some(session)) = (decision.action, &fee, &session) {
        command.amount_due = Some(money.amount());
        command.currency = Some(money.currency().as_str().to_owned());
        command.pay_url = Some(format!(
            "{}/v1/sessions/{}/pay",
            config.public_url.trim_end_matches('/'),
            session.id
        ));
    }

    let mut writes = Vec::new();
    if decision.review {
        let kind = if session.is_some() {
            ReviewKind::LowConfidenceMatch
        } else {
            ReviewKind::ExitWithoutEntry
        };
        writes.push(review(
            lot,
            kind,
            session.as_ref().map(|s| s.id),
            read,
            found.as_ref().map(|(_, score, _)| *score),
        ));
        metrics.review_items.inc();
    }
    if let (true, Some(session), Some((_, score, kind))) =
        (decision.closes_session, &session, &found)
    {
        state.open.remove(&session.plate);
        let fee_minor = fee
            .as_ref()
            .and_then(|(from, money)| Some((*from, money.to_minor().ok()?, money.currency())));
        let exit_match = match kind {
            MatchKind::Exact => ExitMatch::Exact,
            MatchKind::Fuzzy => ExitMatch::Fuzzy,
        };
        writes.push(Write::EndSession(SessionEnd {
            id: session.id,
            status: if fee_minor.is_some() {
                SessionStatus::Closed
            } else {
                SessionStatus::Review
            },
            exit_gate: Some(read.gate.clone()),
            exit_event: Some(read.event_id.clone()),
            exited_at: read.observed_at.max(session.entered_at),
            exit_match: Some((exit_match, *score)),
            tariff_from: fee_minor.map(|(from, _, _)| from),
            fee: fee_minor.map(|(_, minor, currency)| (minor, currency.as_str().to_owned())),
        }));
        match fee_minor {
            Some((_, minor, _)) => {
                metrics.sessions_closed.inc();
                metrics.fees_minor.inc_by(u64::try_from(minor).unwrap_or(0));
            }
            None => {
                tracing::warn!(lot = %lot.id, "session ended without a tariff in force; left for review");
            }
        }
    }
    (command, session.map(|s| s.id), writes)
}

fn review(
    lot: &Lot,
    kind: ReviewKind,
    session_id: Option<Uuid>,
    read: &GateRead,
    score: Option<f64>,
) -> Write {
    Write::Review(ReviewItem {
        id: Uuid::now_v7(),
        lot: lot.id.clone(),
        kind,
        session_id,
        gate: Some(read.gate.clone()),
        event_id: Some(read.event_id.clone()),
        plate: Some(read.plate.clone()),
        score,
        created_at: read.received_at,
    })
}
