//! Planning one gate decision: from a read and the lot's state to the command, the state change
//! and the writes. No IO: the actor publishes and submits what is planned here.

use chrono::{DateTime, Utc};
use parkflow_billing::Stay;
use parkflow_protocol::{GateAction, GateCommand, GateReason, Plate};
use uuid::Uuid;

use super::GateRead;
use super::decide::{self, EntryFacts, ExitFacts, Fee, Found, Standing};
use super::state::LotState;
use crate::registry::Lot;
use crate::session::matching::{self, MatchKind};
use crate::session::{ExitMatch, OpenSession, ReviewItem, ReviewKind, SessionEnd, SessionStatus};
use crate::store::writer::Write;

/// What a decision does.
#[derive(Debug)]
pub(crate) struct Planned {
    pub command: GateCommand,
    /// The session the read opened, ended or was matched to.
    pub session_id: Option<Uuid>,
    pub writes: Vec<Write>,
    pub opened: bool,
    /// The fee of a session closed and priced, in minor units.
    pub closed_fee_minor: Option<i64>,
    pub reviews: usize,
}

/// A command answering `read`.
pub(crate) fn command(read: &GateRead, action: GateAction, reason: GateReason) -> GateCommand {
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

/// SPEC §3 gated entry: decides, opens the session in `state`, and ends a session left open by a
/// missed exit (for review).
pub(crate) fn entry(lot: &Lot, state: &mut LotState, read: &GateRead) -> Planned {
    let pass_holder = state.has_pass(&read.plate, read.observed_at);
    let decision = decide::entry(EntryFacts {
        blocked: state.blocked.contains(&read.plate),
        pass_holder,
        capacity: lot.capacity,
        open_sessions: state.open.len(),
    });
    let mut planned = Planned {
        command: command(read, decision.action, decision.reason),
        session_id: None,
        writes: Vec::new(),
        opened: false,
        closed_fee_minor: None,
        reviews: 0,
    };
    if !decision.opens_session() {
        return planned;
    }
    if let Some(missed) = state.open.remove(&read.plate) {
        planned.writes.push(Write::EndSession(SessionEnd {
            id: missed.id,
            status: SessionStatus::Review,
            exit_gate: None,
            exit_event: None,
            exited_at: read.observed_at.max(missed.entered_at),
            exit_match: None,
            tariff_from: None,
            fee: None,
            billed_plate: None,
            plate_color: missed.plate_color,
            pass_holder: missed.pass_holder,
        }));
        planned.writes.push(review(
            lot,
            ReviewKind::MissedExit,
            Some(missed.id),
            read,
            None,
        ));
        planned.reviews += 1;
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
    planned.session_id = Some(session.id);
    planned.opened = true;
    state.open.insert(read.plate.clone(), session.clone());
    planned.writes.push(Write::OpenSession(session));
    planned
}

/// The fee of ending `session` at `exited_at`: the tariff version in force at entry, and the fee.
fn price(
    lot: &Lot,
    session: &OpenSession,
    exited_at: DateTime<Utc>,
    pass_holder: bool,
    read: &GateRead,
) -> Option<(DateTime<Utc>, parkflow_billing::Money)> {
    let stay = Stay {
        entered_at: session.entered_at,
        exited_at,
        plate_color: session.plate_color.or(read.plate_color),
        pass_holder,
    };
    let tariff = lot.tariffs.in_force_at(session.entered_at)?;
    Some((tariff.effective_from(), tariff.fee(&stay).ok()?))
}

/// SPEC §3 gated exit: finds the session (exact, then fuzzy), decides, and ends the session when
/// the car leaves. `pay_base` is where `pay_url`s point.
pub(crate) fn exit(
    lot: &Lot,
    state: &mut LotState,
    read: &GateRead,
    standing_of: impl Fn(&Plate) -> Standing,
    review_threshold: f64,
    pay_base: &str,
) -> Planned {
    let found = matching::best_match(
        read.plate.as_str(),
        state.open.keys().map(|plate| (plate, plate.as_str())),
    )
    .map(|m| (m.key.clone(), m.score, m.kind));
    let session = found
        .as_ref()
        .and_then(|(plate, _, _)| state.open.get(plate))
        .cloned();
    let exited_at = session
        .as_ref()
        .map_or(read.observed_at, |s| read.observed_at.max(s.entered_at));
    let mut billed_plate = None;
    let (standing, pass_holder, priced) = match &session {
        Some(session) => {
            // The enrolled plate may be the one read now or the one read at entry.
            let standing = match standing_of(&read.plate) {
                Standing::NotEnrolled => {
                    let standing = standing_of(&session.plate);
                    billed_plate =
                        (standing != Standing::NotEnrolled).then(|| session.plate.clone());
                    standing
                }
                standing => {
                    billed_plate = Some(read.plate.clone());
                    standing
                }
            };
            let pass_holder =
                session.pass_holder || state.has_pass(&session.plate, read.observed_at);
            (
                standing,
                pass_holder,
                price(lot, session, exited_at, pass_holder, read),
            )
        }
        None => (standing_of(&read.plate), false, None),
    };
    let priced_minor = priced
        .as_ref()
        .and_then(|(from, money)| Some((*from, money.to_minor().ok()?, *money)));
    let decision = decide::exit(ExitFacts {
        found: match &found {
            Some((_, score, _)) => Found::Session { score: *score },
            None => Found::Nothing,
        },
        standing,
        pass_holder,
        fee: match &priced_minor {
            None => Fee::Unknown,
            Some((_, 0, _)) => Fee::Free,
            Some(_) => Fee::Due,
        },
        review_threshold,
    });
    let mut planned = Planned {
        command: command(read, decision.action, decision.reason),
        session_id: session.as_ref().map(|s| s.id),
        writes: Vec::new(),
        opened: false,
        closed_fee_minor: None,
        reviews: 0,
    };
    if let (GateAction::Hold, Some((_, _, money)), Some(session)) =
        (decision.action, &priced_minor, &session)
    {
        planned.command.amount_due = Some(money.amount_in_minor_digits());
        planned.command.currency = Some(money.currency().as_str().to_owned());
        planned.command.pay_url = Some(format!(
            "{}/v1/sessions/{}/pay",
            pay_base.trim_end_matches('/'),
            session.id
        ));
    }
    if decision.review {
        let kind = match (&session, &priced_minor) {
            (None, _) => ReviewKind::ExitWithoutEntry,
            (Some(_), None) => ReviewKind::Unpriced,
            (Some(_), Some(_)) => ReviewKind::LowConfidenceMatch,
        };
        let score = found.as_ref().map(|(_, score, _)| *score);
        planned
            .writes
            .push(review(lot, kind, planned.session_id, read, score));
        planned.reviews += 1;
    }
    if let (true, Some(session), Some((_, score, kind))) =
        (decision.closes_session, &session, &found)
    {
        state.open.remove(&session.plate);
        let exit_match = match kind {
            MatchKind::Exact => ExitMatch::Exact,
            MatchKind::Fuzzy => ExitMatch::Fuzzy,
        };
        planned.closed_fee_minor = priced_minor.map(|(_, minor, _)| minor);
        planned.writes.push(Write::EndSession(SessionEnd {
            id: session.id,
            // A doubtful match is not billed until an operator confirms it.
            status: if priced_minor.is_some() && !decision.review {
                SessionStatus::Closed
            } else {
                SessionStatus::Review
            },
            exit_gate: Some(read.gate.clone()),
            exit_event: Some(read.event_id.clone()),
            exited_at,
            exit_match: Some((exit_match, *score)),
            tariff_from: priced_minor.map(|(from, _, _)| from),
            fee: priced_minor
                .map(|(_, minor, money)| (minor, money.currency().as_str().to_owned())),
            billed_plate,
            plate_color: session.plate_color.or(read.plate_color),
            pass_holder,
        }));
    }
    planned
}
