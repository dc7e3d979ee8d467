//! A session's transitions other than an operator's corrections ([`crate::correction`]), as pure
//! functions: from what the caller knows (the session, the read, the price it looked up) to the
//! writes to make, which the caller hands to [`crate::repo`] in its transaction.
//!
//! - [`open`]: a car is read entering: its session opens;
//! - [`missed_exit`]: a plate enters while its session is still open (its exit was missed): that
//!   session ends in review, with a case;
//! - [`close`]: a car leaves: its session ends priced (`Closed`), or in review when the match is
//!   doubtful or no tariff priced the stay — [`case`] is the case sent with it;
//! - [`StreetEnd`]: how an on-street stay ends, and the case it leaves;
//! - [`HeldExit::paid`]: a car held at the exit paid: its session closes at the held read;
//! - [`pseudonymise`]: after the retention period, a plate gives way to its pseudonym.
//!
//! Ids are the caller's (a new one is `Uuid::now_v7()`), so every function here is deterministic.

use chrono::{DateTime, Utc};
use parkflow_protocol::{EventId, GateId, LotId, Plate, PlateColor};
use uuid::Uuid;

use crate::model::{OpenSession, ReviewItem, SessionEnd};
use crate::status::{ExitMatch, ReviewKind, SessionStatus};

/// A plate read at a gate: where, what, and when.
#[derive(Debug, Clone, Copy)]
pub struct Sighting<'a> {
    pub gate: &'a GateId,
    pub event: &'a EventId,
    pub plate: &'a Plate,
    pub plate_color: Option<PlateColor>,
    /// When the camera saw the car.
    pub observed_at: DateTime<Utc>,
    /// When the platform heard of it (a case is dated by this).
    pub received_at: DateTime<Utc>,
}

/// The session a car entering at `read` opens.
pub fn open(id: Uuid, lot: &LotId, read: Sighting<'_>, pass_holder: bool) -> OpenSession {
    OpenSession {
        id,
        lot: lot.clone(),
        plate: read.plate.clone(),
        plate_color: read.plate_color,
        pass_holder,
        entry_gate: Some(read.gate.clone()),
        entry_event: Some(read.event.clone()),
        entered_at: read.observed_at,
    }
}

/// A case for an operator about `read` (and the session it concerns, if any).
pub fn case(
    id: Uuid,
    lot: &LotId,
    kind: ReviewKind,
    session: Option<Uuid>,
    read: Sighting<'_>,
    score: Option<f64>,
) -> ReviewItem {
    ReviewItem {
        id,
        lot: lot.clone(),
        kind,
        session_id: session,
        gate: Some(read.gate.clone()),
        event_id: Some(read.event.clone()),
        plate: Some(read.plate.clone()),
        score,
        created_at: read.received_at,
    }
}

/// The plate of `missed` entered again at `read`: the session's exit was missed. It ends in
/// review (unpriced: nobody knows when the car left) with a case naming it.
pub fn missed_exit(
    case_id: Uuid,
    missed: &OpenSession,
    read: Sighting<'_>,
) -> (SessionEnd, ReviewItem) {
    let exited_at = read.observed_at.max(missed.entered_at);
    in_review(case_id, missed, exited_at, ReviewKind::MissedExit, read)
}

/// A stay the platform opened for a car its lane held at the entry (the lane decided alone and
/// the platform answered the late read otherwise): the car never came in. It ends in review,
/// unpriced, where it began, with a case naming it.
pub fn never_entered(
    case_id: Uuid,
    session: &OpenSession,
    read: Sighting<'_>,
) -> (SessionEnd, ReviewItem) {
    in_review(
        case_id,
        session,
        session.entered_at,
        ReviewKind::OfflineConflict,
        read,
    )
}

/// `session` ended in review, unpriced, at `exited_at`, with a case of `kind` naming it.
fn in_review(
    case_id: Uuid,
    session: &OpenSession,
    exited_at: DateTime<Utc>,
    kind: ReviewKind,
    read: Sighting<'_>,
) -> (SessionEnd, ReviewItem) {
    let end = SessionEnd {
        id: session.id,
        status: SessionStatus::Review,
        exit_gate: None,
        exit_event: None,
        exited_at,
        exit_match: None,
        tariff_from: None,
        billed_plate: None,
        plate_color: session.plate_color,
        pass_holder: session.pass_holder,
        fee: None,
    };
    let case = case(case_id, &session.lot, kind, Some(session.id), read, None);
    (end, case)
}

/// A stay's price: the tariff version in force at entry, and the fee in minor units.
#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    pub tariff_from: DateTime<Utc>,
    pub fee_minor: i64,
    pub currency: String,
}

/// How a car left: the read, how it matched its session, and what the caller found out.
#[derive(Debug, Clone)]
pub struct Exit<'a> {
    pub read: Sighting<'a>,
    pub matched: (ExitMatch, f64),
    /// `None` when no tariff priced the stay.
    pub priced: Option<Priced>,
    /// The match is too weak to bill without an operator's word.
    pub doubtful: bool,
    /// The enrolled plate whose driver is billed (the exit read's or the entry's), if any.
    pub billed_plate: Option<Plate>,
    pub pass_holder: bool,
}

/// The end of `session` when its car leaves: priced and closed, or in review when the match is
/// doubtful or the stay unpriced. A doubtful match keeps its price, for the operator who confirms
/// it. The car never leaves before it entered.
pub fn close(session: &OpenSession, exit: Exit<'_>) -> SessionEnd {
    let status = if exit.priced.is_some() && !exit.doubtful {
        SessionStatus::Closed
    } else {
        SessionStatus::Review
    };
    SessionEnd {
        id: session.id,
        status,
        exit_gate: Some(exit.read.gate.clone()),
        exit_event: Some(exit.read.event.clone()),
        exited_at: exit.read.observed_at.max(session.entered_at),
        exit_match: Some(exit.matched),
        tariff_from: exit.priced.as_ref().map(|p| p.tariff_from),
        billed_plate: exit.billed_plate,
        plate_color: session.plate_color.or(exit.read.plate_color),
        pass_holder: exit.pass_holder,
        fee: exit.priced.map(|p| (p.fee_minor, p.currency)),
    }
}

/// The case a gated exit that needs an operator opens: no session found, a session no tariff
/// priced, or a session matched with low confidence.
pub fn exit_case_kind(found_session: bool, priced: bool) -> ReviewKind {
    match (found_session, priced) {
        (false, _) => ReviewKind::ExitWithoutEntry,
        (true, false) => ReviewKind::Unpriced,
        (true, true) => ReviewKind::LowConfidenceMatch,
    }
}

/// How an on-street stay ended, as the bay writer records it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreetEnd<'a> {
    /// Priced by the lot's tariff: a closed session, queued for its charge.
    Priced {
        pass_holder: bool,
        tariff_from: DateTime<Utc>,
        fee_minor: i64,
        currency: &'a str,
    },
    /// A plate but no tariff in force: in review.
    Unpriced,
    /// No plate was read: a case without a session (an operator may give the plate).
    NoPlate,
    /// The sensor fell silent or the platform restarted mid-stay: in review.
    Interrupted,
}

impl StreetEnd<'_> {
    /// The status of the stay's session (and of its `bay_sessions` row).
    pub fn status(self) -> SessionStatus {
        match self {
            Self::Priced { .. } => SessionStatus::Closed,
            _ => SessionStatus::Review,
        }
    }

    /// The case an operator gets, if any, and whether it names the stay's session.
    pub fn case(self, has_plate: bool) -> Option<(ReviewKind, bool)> {
        match self {
            Self::Priced { .. } => None,
            Self::Unpriced if has_plate => Some((ReviewKind::Unpriced, true)),
            Self::Interrupted if has_plate => Some((ReviewKind::MissedExit, true)),
            _ => Some((ReviewKind::NoPlate, false)),
        }
    }
}

/// A session held at an exit for its fee, as a payment reads it.
#[derive(Debug, Clone, Copy)]
pub struct HeldExit<'a> {
    pub session: Uuid,
    pub status: SessionStatus,
    pub entered_at: DateTime<Utc>,
    /// The held read: its gate, event and time.
    pub gate: &'a str,
    pub event: &'a str,
    pub held_at: DateTime<Utc>,
}

/// Why a held exit cannot be paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session is not open")]
pub struct NotOpen;

/// A held exit that was paid: where and when the car left, and what it paid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaidExit<'a> {
    pub session: Uuid,
    pub exit_gate: &'a str,
    pub exit_event: &'a str,
    pub exited_at: DateTime<Utc>,
    pub fee_minor: i64,
    pub currency: &'a str,
}

impl<'a> HeldExit<'a> {
    /// When the car leaves once paid: at the held read, never before it entered. The fee's day.
    pub fn exited_at(&self) -> DateTime<Utc> {
        self.held_at.max(self.entered_at)
    }

    /// Whether a payment may start: only an open session's exit is paid (a retry of a payment
    /// already started finishes it whatever the session became).
    pub fn payable(&self) -> Result<(), NotOpen> {
        match self.status {
            SessionStatus::Open => Ok(()),
            _ => Err(NotOpen),
        }
    }

    /// The close a payment of `fee_minor` makes. The gate may have ended the session meanwhile
    /// (the car read again): the repository keeps that end and records the fee paid.
    pub fn paid(&self, fee_minor: i64, currency: &'a str) -> PaidExit<'a> {
        PaidExit {
            session: self.session,
            exit_gate: self.gate,
            exit_event: self.event,
            exited_at: self.exited_at(),
            fee_minor,
            currency,
        }
    }
}

/// What pseudonyms start with (no plate does: plates are letters and digits only).
pub const PSEUDONYM_PREFIX: &str = "anon-";

/// A plate to replace by its pseudonym in whatever ended, or was recorded, before `cutoff`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pseudonymisation<'a> {
    pub plate: &'a str,
    pub pseudonym: String,
    pub cutoff: DateTime<Utc>,
}

/// Why a plate is not pseudonymised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotPseudonymised {
    #[error("the plate is a pseudonym already")]
    Already,
    #[error("a pseudonym must start with {PSEUDONYM_PREFIX:?}")]
    BadPseudonym,
}

/// Replacing `plate` by `pseudonym` (from the caller's keyed hash) before `cutoff`.
pub fn pseudonymise(
    plate: &str,
    pseudonym: String,
    cutoff: DateTime<Utc>,
) -> Result<Pseudonymisation<'_>, NotPseudonymised> {
    if plate.starts_with(PSEUDONYM_PREFIX) {
        return Err(NotPseudonymised::Already);
    }
    if !pseudonym.starts_with(PSEUDONYM_PREFIX) {
        return Err(NotPseudonymised::BadPseudonym);
    }
    Ok(Pseudonymisation {
        plate,
        pseudonym,
        cutoff,
    })
}

impl Pseudonymisation<'_> {
    /// Whether a session of `status` that ended at `exited_at` loses its plate: an open session
    /// keeps it whatever its age (the car is still inside). The repository's SQL says the same.
    pub fn applies_to_session(
        &self,
        status: SessionStatus,
        exited_at: Option<DateTime<Utc>>,
    ) -> bool {
        status != SessionStatus::Open && exited_at.is_some_and(|at| at < self.cutoff)
    }

    /// Whether a case made at `created_at` loses its plate.
    pub fn applies_to_case(&self, created_at: DateTime<Utc>) -> bool {
        created_at < self.cutoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use proptest::prelude::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_790_000_000, 0).unwrap() + Duration::minutes(minutes)
    }

    struct Ids {
        gate: GateId,
        event: EventId,
        plate: Plate,
        lot: LotId,
    }

    fn ids() -> Ids {
        Ids {
            gate: GateId::parse("out-1").unwrap(),
            event: EventId::parse("e-1").unwrap(),
            plate: Plate::parse("浙A12345").unwrap(),
            lot: LotId::parse("lot-1").unwrap(),
        }
    }

    fn sighting(ids: &Ids, observed: i64) -> Sighting<'_> {
        Sighting {
            gate: &ids.gate,
            event: &ids.event,
            plate: &ids.plate,
            plate_color: Some(PlateColor::Blue),
            observed_at: at(observed),
            received_at: at(observed) + Duration::seconds(1),
        }
    }

    fn status() -> impl Strategy<Value = SessionStatus> {
        prop::sample::select(SessionStatus::ALL.to_vec())
    }

    #[test]
    fn an_entry_opens_a_session_at_the_read() {
        let ids = ids();
        let session = open(Uuid::from_u128(1), &ids.lot, sighting(&ids, 5), true);
        assert_eq!(session.entered_at, at(5));
        assert_eq!(session.plate, ids.plate);
        assert_eq!(session.entry_gate.as_ref(), Some(&ids.gate));
        assert!(session.pass_holder);
    }

    #[test]
    fn each_exit_that_needs_an_operator_has_its_own_kind() {
        assert_eq!(exit_case_kind(false, true), ReviewKind::ExitWithoutEntry);
        assert_eq!(exit_case_kind(false, false), ReviewKind::ExitWithoutEntry);
        assert_eq!(exit_case_kind(true, false), ReviewKind::Unpriced);
        assert_eq!(exit_case_kind(true, true), ReviewKind::LowConfidenceMatch);
    }

    #[test]
    fn a_pseudonym_is_never_pseudonymised_again_and_must_look_like_one() {
        let cutoff = at(0);
        assert_eq!(
            pseudonymise("anon-abc", "anon-def".into(), cutoff),
            Err(NotPseudonymised::Already)
        );
        assert_eq!(
            pseudonymise("浙A12345", "浙B00000".into(), cutoff),
            Err(NotPseudonymised::BadPseudonym)
        );
        assert!(pseudonymise("浙A12345", "anon-x".into(), cutoff).is_ok());
    }

    proptest! {
        /// A session closes priced exactly when it was priced and the match is sure; whatever
        /// the clocks say, it never ends before it began, and a closed one always has its fee.
        #[test]
        fn a_closed_session_is_priced_sure_and_never_ends_before_it_began(
            entered in -600i64..600,
            observed in -600i64..600,
            priced in any::<bool>(),
            doubtful in any::<bool>(),
            fee in 0i64..100_000,
            score in 0.0f64..=1.0,
        ) {
            let ids = ids();
            let session = open(Uuid::from_u128(7), &ids.lot, sighting(&ids, entered), false);
            let end = close(&session, Exit {
                read: sighting(&ids, observed),
                matched: (ExitMatch::Fuzzy, score),
                priced: priced.then(|| Priced {
                    tariff_from: at(-1_000),
                    fee_minor: fee,
                    currency: "CNY".into(),
                }),
                doubtful,
                billed_plate: None,
                pass_holder: false,
            });
            prop_assert_eq!(end.id, session.id);
            prop_assert!(end.exited_at >= session.entered_at);
            prop_assert_eq!(end.exited_at, at(observed.max(entered)));
            prop_assert_eq!(end.status == SessionStatus::Closed, priced && !doubtful);
            prop_assert_eq!(end.fee.is_some(), priced);
            prop_assert_eq!(end.tariff_from.is_some(), priced);
            if end.status == SessionStatus::Closed {
                prop_assert_eq!(end.fee, Some((fee, "CNY".to_owned())));
            }
        }

        /// A missed exit ends the session in review, unpriced, never before it began, with one
        /// case that names it.
        #[test]
        fn a_missed_exit_sends_its_session_to_review_with_a_case(
            entered in -600i64..600,
            observed in -600i64..600,
        ) {
            let ids = ids();
            let session = open(Uuid::from_u128(7), &ids.lot, sighting(&ids, entered), true);
            let (end, case) = missed_exit(Uuid::from_u128(8), &session, sighting(&ids, observed));
            prop_assert_eq!(end.status, SessionStatus::Review);
            prop_assert_eq!(end.fee, None);
            prop_assert!(end.exited_at >= session.entered_at);
            prop_assert!(end.pass_holder);
            prop_assert_eq!(case.kind, ReviewKind::MissedExit);
            prop_assert_eq!(case.session_id, Some(session.id));
            prop_assert_eq!(case.lot, session.lot);
        }

        /// Only an open session's exit may be paid; the paid exit closes at the held read, never
        /// before entry, for the fee paid.
        #[test]
        fn only_an_open_session_is_paid_and_it_closes_at_the_held_read(
            status in status(),
            entered in -600i64..600,
            held in -600i64..600,
            fee in 1i64..100_000,
        ) {
            let held_exit = HeldExit {
                session: Uuid::from_u128(3),
                status,
                entered_at: at(entered),
                gate: "out-1",
                event: "e-9",
                held_at: at(held),
            };
            prop_assert_eq!(held_exit.payable().is_ok(), status == SessionStatus::Open);
            let paid = held_exit.paid(fee, "CNY");
            prop_assert_eq!(paid.exited_at, at(held.max(entered)));
            prop_assert_eq!(paid.fee_minor, fee);
            prop_assert_eq!(paid.session, held_exit.session);
            prop_assert_eq!(paid.exit_event, "e-9");
        }

        /// A street stay closes exactly when priced; otherwise it is in review with a case, which
        /// names its session only when there is one (a plate).
        #[test]
        fn a_street_stay_is_closed_when_priced_else_reviewed_with_a_case(
            end in prop::sample::select(vec![0u8, 1, 2, 3]),
            has_plate in any::<bool>(),
        ) {
            let end = match end {
                0 => StreetEnd::Priced {
                    pass_holder: false,
                    tariff_from: at(0),
                    fee_minor: 300,
                    currency: "CNY",
                },
                1 => StreetEnd::Unpriced,
                2 => StreetEnd::NoPlate,
                _ => StreetEnd::Interrupted,
            };
            let priced = matches!(end, StreetEnd::Priced { .. });
            prop_assert_eq!(end.status() == SessionStatus::Closed, priced);
            match end.case(has_plate) {
                None => prop_assert!(priced),
                Some((_, names_session)) => {
                    prop_assert!(!priced);
                    prop_assert!(!names_session || has_plate);
                }
            }
        }

        /// Applied to any set of sessions, a pseudonymisation leaves open sessions and those that
        /// ended at or after the cutoff as they were; applying it twice changes nothing more.
        #[test]
        fn pseudonymising_spares_open_and_recent_sessions_and_is_idempotent(
            sessions in prop::collection::vec((status(), prop::option::of(-100i64..100)), 0..20),
            cutoff in -100i64..100,
        ) {
            let plate = "浙A12345";
            let mut table: Vec<(SessionStatus, Option<DateTime<Utc>>, String)> = sessions
                .iter()
                .map(|(status, exited)| (*status, exited.map(at), plate.to_owned()))
                .collect();
            let apply = |table: &mut Vec<(SessionStatus, Option<DateTime<Utc>>, String)>| {
                for (status, exited_at, stored) in table.iter_mut() {
                    let Ok(change) = pseudonymise(stored, "anon-1".into(), at(cutoff)) else {
                        continue;
                    };
                    if change.applies_to_session(*status, *exited_at) {
                        *stored = change.pseudonym;
                    }
                }
            };
            apply(&mut table);
            let once = table.clone();
            apply(&mut table);
            prop_assert_eq!(&once, &table);
            for (status, exited_at, stored) in &table {
                let old_enough = exited_at.is_some_and(|t| t < at(cutoff));
                let changed = stored != plate;
                prop_assert_eq!(changed, *status != SessionStatus::Open && old_enough);
            }
        }
    }
}
