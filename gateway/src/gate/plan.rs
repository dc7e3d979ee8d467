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
use crate::session::{ExitMatch, OpenSession};
use crate::store::writer::Write;
use parkflow_session::lifecycle::{self, Exit, Priced, Sighting};

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
    /// Of a hold's `amount_due`, what the plate owed from earlier stays.
    pub owed_minor: Option<i64>,
}

/// A command answering `read`.
pub(crate) fn command(read: &GateRead, action: GateAction, reason: GateReason) -> GateCommand {
    GateCommand::new(
        Uuid::now_v7(),
        read.event_id.clone(),
        action,
        reason,
        read.received_at,
    )
}

/// Where and when `read` saw its plate, as the session lifecycle takes it.
fn sighting(read: &GateRead) -> Sighting<'_> {
    Sighting {
        gate: &read.gate,
        event: &read.event_id,
        plate: &read.plate,
        plate_color: read.plate_color,
        observed_at: read.observed_at,
        received_at: read.received_at,
    }
}

/// SPEC §3 gated entry: decides, opens the session in `state`, and ends a session left open by a
/// missed exit (for review).
pub(crate) fn entry(lot: &Lot, state: &mut LotState, read: &GateRead) -> Planned {
    let decision = decide::entry(EntryFacts {
        blocked: state.blocked.contains(&read.plate),
        pass_holder: state.has_pass(&read.plate, read.observed_at),
        capacity: lot.capacity,
        open_sessions: state.open.len(),
    });
    entry_as(lot, state, read, decision)
}

/// An entry decided already (by the platform, or by the lane alone): its session opened when
/// the car was let in.
pub(crate) fn entry_as(
    lot: &Lot,
    state: &mut LotState,
    read: &GateRead,
    decision: decide::EntryDecision,
) -> Planned {
    let pass_holder = state.has_pass(&read.plate, read.observed_at);
    let mut planned = Planned {
        command: command(read, decision.action, decision.reason),
        session_id: None,
        writes: Vec::new(),
        opened: false,
        closed_fee_minor: None,
        reviews: 0,
        owed_minor: None,
    };
    if !decision.opens_session() {
        return planned;
    }
    if let Some(missed) = state.open.remove(&read.plate) {
        let (end, case) = lifecycle::missed_exit(Uuid::now_v7(), &missed, sighting(read));
        planned.writes.push(Write::EndSession(end));
        planned.writes.push(Write::Review(case));
        planned.reviews += 1;
    }
    let session = lifecycle::open(Uuid::now_v7(), &lot.id, sighting(read), pass_holder);
    planned.session_id = Some(session.id);
    planned.opened = true;
    state.open.insert(read.plate.clone(), session.clone());
    planned.writes.push(Write::OpenSession(session));
    planned
}

/// A case for an operator: the lane decided `read` alone otherwise than the platform had.
pub(crate) fn offline_conflict(lot: &Lot, read: &GateRead, session: Option<Uuid>) -> Write {
    Write::Review(lifecycle::case(
        Uuid::now_v7(),
        &lot.id,
        parkflow_session::ReviewKind::OfflineConflict,
        session,
        sighting(read),
        None,
    ))
}

/// A car the lane held at the entry, whose stay the platform had opened: taken out of the open
/// stays and ended in review, with the case.
pub(crate) fn never_entered(state: &mut LotState, session: Uuid, read: &GateRead) -> Vec<Write> {
    let Some(plate) = state
        .open
        .iter()
        .find(|(_, s)| s.id == session)
        .map(|(plate, _)| plate.clone())
    else {
        return Vec::new();
    };
    let Some(open) = state.open.remove(&plate) else {
        return Vec::new();
    };
    let (end, case) = lifecycle::never_entered(Uuid::now_v7(), &open, sighting(read));
    vec![Write::EndSession(end), Write::Review(case)]
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
/// the car leaves. `pay_base` is where `pay_url`s point. `let_out`: the car has left already (a
/// lane let it out alone): a decision to hold it for payment becomes an exit billed later,
/// which billing invoices to the plate when nobody enrolled pays for it.
pub(crate) fn exit(
    lot: &Lot,
    state: &mut LotState,
    read: &GateRead,
    standing_of: impl Fn(&Plate) -> Standing,
    config: &super::actor::DecisionConfig,
    let_out: bool,
    owed_of: impl Fn(&Plate, &str) -> i64,
) -> Planned {
    let (review_threshold, pay_base) = (config.review_threshold, config.public_url.as_str());
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
    let mut decision = decide::exit(ExitFacts {
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
    if let_out && decision.action == GateAction::Hold {
        decision = decide::ExitDecision {
            action: GateAction::Open,
            reason: GateReason::InvoiceLater,
            closes_session: true,
            review: false,
        };
    }
    let mut planned = Planned {
        command: command(read, decision.action, decision.reason),
        session_id: session.as_ref().map(|s| s.id),
        writes: Vec::new(),
        opened: false,
        closed_fee_minor: None,
        reviews: 0,
        owed_minor: None,
    };
    if let (GateAction::Hold, Some((_, fee_minor, money)), Some(session)) =
        (decision.action, &priced_minor, &session)
    {
        // What the plate owes from earlier stays (a car let out without standing) is collected
        // with this one: the amount due includes it.
        let currency = money.currency();
        let owed = owed_of(&session.plate, currency.as_str()).max(0);
        let due = parkflow_billing::Money::from_minor(fee_minor + owed, currency);
        if owed > 0 {
            planned.owed_minor = Some(owed);
        }
        planned.command.amount_due = Some(due.amount_in_minor_digits());
        planned.command.currency = Some(money.currency().as_str().to_owned());
        planned.command.pay_url = Some(format!(
            "{}/v1/sessions/{}/pay",
            pay_base.trim_end_matches('/'),
            session.id
        ));
    }
    if decision.review {
        let kind = lifecycle::exit_case_kind(session.is_some(), priced_minor.is_some());
        let score = found.as_ref().map(|(_, score, _)| *score);
        planned.writes.push(Write::Review(lifecycle::case(
            Uuid::now_v7(),
            &lot.id,
            kind,
            planned.session_id,
            sighting(read),
            score,
        )));
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
        let exit = Exit {
            read: sighting(read),
            matched: (exit_match, *score),
            priced: priced_minor.map(|(tariff_from, fee_minor, money)| Priced {
                tariff_from,
                fee_minor,
                currency: money.currency().as_str().to_owned(),
            }),
            // A doubtful match is not billed until an operator confirms it.
            doubtful: decision.review,
            billed_plate,
            pass_holder,
        };
        planned
            .writes
            .push(Write::EndSession(lifecycle::close(session, exit)));
    }
    planned
}
