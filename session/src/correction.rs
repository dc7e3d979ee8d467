//! Operators' corrections of review cases, as pure functions: from the case and the sessions it
//! touches (read by the caller) to the writes to make ([`Plan`]). Pricing each stay a
//! correction closes, and writing, is the caller's (`gateway::store::review`), in one
//! transaction with the case's resolution and its audit entry.
//!
//! A case's session is in review: never priced, never charged, so a correction moves no money
//! until it closes a stay, priced like any other and queued for its one charge.
//!
//! - accept: the case stands as recorded (a stay in review that ended is priced as it is);
//! - void: the stay did not happen;
//! - edit plate: the stay was read wrong (or not at all: an on-street stay without a plate
//!   becomes a session): it is the corrected plate's, priced;
//! - merge: the case's session is the other end of another session's stay (a misread exit and
//!   its entry): the entry's session takes the exit and is priced, the case's is voided;
//! - split: one recorded stay was two, cut at a given instant: both are priced.

use chrono::{DateTime, Utc};
use parkflow_db::db_time;
use parkflow_protocol::{Plate, PlateColor};
use uuid::Uuid;

use crate::status::{Resolution, SessionStatus};

/// What a correction needs besides the case.
#[derive(Debug, Clone, PartialEq)]
pub enum Correction {
    Accept,
    VoidSession,
    EditPlate {
        plate: Plate,
        plate_color: Option<PlateColor>,
    },
    Merge {
        with_session: Uuid,
    },
    Split {
        at: DateTime<Utc>,
        /// The id the second stay gets.
        second: Uuid,
    },
}

impl Correction {
    pub fn resolution(&self) -> Resolution {
        match self {
            Self::Accept => Resolution::Accept,
            Self::VoidSession => Resolution::VoidSession,
            Self::EditPlate { .. } => Resolution::EditPlate,
            Self::Merge { .. } => Resolution::Merge,
            Self::Split { .. } => Resolution::Split,
        }
    }
}

/// Why a correction does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrectionError {
    /// Only a session in review can be corrected (a closed one is billed: refund it instead).
    SessionNotInReview,
    /// The correction needs a session that ended.
    NoExit,
    /// The session to merge with is not another session of the lot, open or in review, entered
    /// before the exit.
    NotMergeable,
    /// A split must fall strictly inside the stay.
    OutsideStay,
}

/// A recorded session, as a correction reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stay {
    pub id: Uuid,
    pub lot: String,
    pub plate: String,
    pub plate_color: Option<String>,
    pub status: SessionStatus,
    pub pass_holder: bool,
    pub entered_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
    pub exit_gate: Option<String>,
    pub exit_event: Option<String>,
    /// The bay of an on-street stay.
    pub bay: Option<String>,
}

/// An on-street stay that has no session (no plate was read): its `bay_sessions` row.
#[derive(Debug, Clone, PartialEq)]
pub struct BayStay {
    pub bay: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// The case being resolved and what it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: Uuid,
    pub lot: String,
    /// The case's session, if recorded.
    pub stay: Option<Stay>,
    /// For a case without a session on an on-street lot: the stay as the bay recorded it.
    pub bay_stay: Option<BayStay>,
    /// For an exit without an entry: the read's gate and event, and when its camera saw the car
    /// (the case's creation when the read is not found).
    pub exit_read: Option<(String, String, DateTime<Utc>)>,
}

/// A session a correction inserts, in review until the plan closes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStay {
    pub id: Uuid,
    pub plate: String,
    pub plate_color: Option<String>,
    pub pass_holder: bool,
    pub entered_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
    pub bay: Option<String>,
}

/// A stay a correction closes: the caller prices it (a pass for the plate at either end makes it
/// free, as at the gates) and closes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Closing {
    pub session: Uuid,
    pub plate: String,
    pub plate_color: Option<String>,
    pub entered_at: DateTime<Utc>,
    pub exited_at: DateTime<Utc>,
    pub exit_gate: Option<String>,
    pub exit_event: Option<String>,
    /// The session recorded a pass at its entry.
    pub pass_at_entry: bool,
}

impl Closing {
    /// `stay` as recorded, for `plate` in `colour`, ending at `exited_at`.
    fn whole(
        stay: &Stay,
        plate: String,
        plate_color: Option<String>,
        exited_at: DateTime<Utc>,
    ) -> Self {
        Self {
            session: stay.id,
            plate,
            plate_color,
            entered_at: stay.entered_at,
            exited_at,
            exit_gate: stay.exit_gate.clone(),
            exit_event: stay.exit_event.clone(),
            pass_at_entry: stay.pass_holder,
        }
    }
}

/// The writes a correction makes, in this order: insert, settle, void, close.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Sessions inserted in review (closed below).
    pub insert: Vec<NewStay>,
    /// A session whose own unresolved cases the correction settles (a merge's entry).
    pub settle_cases_of: Option<Uuid>,
    /// The session voided (in review).
    pub void: Option<Uuid>,
    pub close: Vec<Closing>,
}

fn in_review(stay: Option<&Stay>) -> Result<&Stay, CorrectionError> {
    stay.filter(|s| s.status == SessionStatus::Review)
        .ok_or(CorrectionError::SessionNotInReview)
}

/// What resolving `case` with `correction` writes. `other` is the session a merge names (as
/// read), if it exists.
pub fn plan(
    case: &Case,
    other: Option<&Stay>,
    correction: &Correction,
) -> Result<Plan, CorrectionError> {
    let mut plan = Plan::default();
    let mut stay = case.stay.clone();
    // An on-street stay that ended without a plate has no session yet: the plate an operator
    // reads from the camera's images makes it one (in review until priced below).
    if let (None, Some(bay), Correction::EditPlate { plate, plate_color }) =
        (&stay, &case.bay_stay, correction)
    {
        let ended_at = bay.ended_at.ok_or(CorrectionError::NoExit)?;
        let new = NewStay {
            id: case.id,
            plate: plate.as_str().to_owned(),
            plate_color: plate_color.map(|c| c.as_str().to_owned()),
            pass_holder: false,
            entered_at: bay.started_at,
            exited_at: Some(ended_at),
            bay: Some(bay.bay.clone()),
        };
        stay = Some(Stay {
            id: new.id,
            lot: case.lot.clone(),
            plate: new.plate.clone(),
            plate_color: new.plate_color.clone(),
            status: SessionStatus::Review,
            pass_holder: false,
            entered_at: new.entered_at,
            exited_at: new.exited_at,
            exit_gate: None,
            exit_event: None,
            bay: new.bay.clone(),
        });
        plan.insert.push(new);
    }
    let stay = stay.as_ref();
    match correction {
        Correction::Accept => {
            // The stay stands as recorded: one in review that ended (a doubtful exit match, say)
            // is priced and billed as it is; anything else only leaves the queue.
            if let Ok(stay) = in_review(stay)
                && let Some(exited_at) = stay.exited_at
            {
                let (plate, colour) = (stay.plate.clone(), stay.plate_color.clone());
                plan.close
                    .push(Closing::whole(stay, plate, colour, exited_at));
            }
        }
        Correction::VoidSession => plan.void = Some(in_review(stay)?.id),
        Correction::EditPlate { plate, plate_color } => {
            let stay = in_review(stay)?;
            let exited_at = stay.exited_at.ok_or(CorrectionError::NoExit)?;
            let colour = plate_color
                .map(|c| c.as_str().to_owned())
                .or(stay.plate_color.clone());
            let mut closing = Closing::whole(stay, plate.as_str().to_owned(), colour, exited_at);
            // A pass recorded at entry was the misread plate's, not this one's.
            closing.pass_at_entry = closing.pass_at_entry && stay.plate == plate.as_str();
            plan.close.push(closing);
        }
        Correction::Merge { .. } => {
            // The exit: the case's session's (in review), or, for an exit without an entry, the
            // case's own read.
            let (exited_at, exit_gate, exit_event, colour, exit_session) = match stay {
                Some(stay) => {
                    let stay = in_review(Some(stay))?;
                    let exited_at = stay.exited_at.ok_or(CorrectionError::NoExit)?;
                    (
                        exited_at,
                        stay.exit_gate.clone(),
                        stay.exit_event.clone(),
                        stay.plate_color.clone(),
                        Some(stay.id),
                    )
                }
                None => {
                    let (gate, event, observed_at) =
                        case.exit_read.clone().ok_or(CorrectionError::NoExit)?;
                    (observed_at, Some(gate), Some(event), None, None)
                }
            };
            let entry = other
                .filter(|e| {
                    Some(e.id) != exit_session
                        && e.lot == case.lot
                        && e.status.is_correctable()
                        && e.entered_at <= exited_at
                })
                .ok_or(CorrectionError::NotMergeable)?;
            let colour = entry.plate_color.clone().or(colour);
            let mut closing = Closing::whole(entry, entry.plate.clone(), colour, exited_at);
            (closing.exit_gate, closing.exit_event) = (exit_gate, exit_event);
            plan.close.push(closing);
            plan.void = exit_session;
            // The entry's own unresolved cases (a missed exit, say) are settled by the merge.
            plan.settle_cases_of = Some(entry.id);
        }
        Correction::Split { at, second } => {
            let stay = in_review(stay)?;
            let exited_at = stay.exited_at.ok_or(CorrectionError::NoExit)?;
            let at = db_time(*at);
            if !(stay.entered_at < at && at < exited_at) {
                return Err(CorrectionError::OutsideStay);
            }
            plan.insert.push(NewStay {
                id: *second,
                plate: stay.plate.clone(),
                plate_color: stay.plate_color.clone(),
                pass_holder: stay.pass_holder,
                entered_at: at,
                exited_at: None,
                bay: stay.bay.clone(),
            });
            let (plate, colour) = (stay.plate.clone(), stay.plate_color.clone());
            let mut first = Closing::whole(stay, plate.clone(), colour.clone(), at);
            (first.exit_gate, first.exit_event) = (None, None);
            let mut then = Closing::whole(stay, plate, colour, exited_at);
            (then.session, then.entered_at) = (*second, at);
            plan.close.extend([first, then]);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use proptest::prelude::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        db_time(DateTime::<Utc>::from_timestamp(1_790_000_000, 0).unwrap())
            + Duration::minutes(minutes)
    }

    fn stay(id: u128, status: SessionStatus, entered: i64, exited: Option<i64>) -> Stay {
        Stay {
            id: Uuid::from_u128(id),
            lot: "lot-1".into(),
            plate: "浙A12345".into(),
            plate_color: Some("blue".into()),
            status,
            pass_holder: false,
            entered_at: at(entered),
            exited_at: exited.map(at),
            exit_gate: exited.map(|_| "out".into()),
            exit_event: exited.map(|_| "e-out".into()),
            bay: None,
        }
    }

    fn case(stay: Option<Stay>) -> Case {
        Case {
            id: Uuid::from_u128(99),
            lot: "lot-1".into(),
            stay,
            bay_stay: None,
            exit_read: None,
        }
    }

    fn plate(p: &str) -> Plate {
        Plate::parse(p).unwrap()
    }

    #[test]
    fn only_a_session_in_review_is_voided_or_given_another_plate() {
        for status in [
            SessionStatus::Open,
            SessionStatus::Closed,
            SessionStatus::Void,
        ] {
            let case = case(Some(stay(1, status, 0, Some(60))));
            assert_eq!(
                plan(&case, None, &Correction::VoidSession),
                Err(CorrectionError::SessionNotInReview)
            );
            let edit = Correction::EditPlate {
                plate: plate("浙A99999"),
                plate_color: None,
            };
            assert_eq!(
                plan(&case, None, &edit),
                Err(CorrectionError::SessionNotInReview)
            );
        }
        let case = case(Some(stay(1, SessionStatus::Review, 0, Some(60))));
        let voided = plan(&case, None, &Correction::VoidSession).unwrap();
        assert_eq!(voided.void, Some(Uuid::from_u128(1)));
        assert!(voided.close.is_empty());
    }

    #[test]
    fn accepting_prices_a_stay_in_review_that_ended_and_nothing_else() {
        let ended = case(Some(stay(1, SessionStatus::Review, 0, Some(60))));
        let accepted = plan(&ended, None, &Correction::Accept).unwrap();
        assert_eq!(accepted.close.len(), 1);
        assert_eq!(accepted.close[0].exited_at, at(60));
        for other in [
            case(Some(stay(1, SessionStatus::Review, 0, None))),
            case(Some(stay(1, SessionStatus::Closed, 0, Some(60)))),
            case(None),
        ] {
            assert_eq!(plan(&other, None, &Correction::Accept), Ok(Plan::default()));
        }
    }

    #[test]
    fn a_new_plate_keeps_a_pass_only_when_it_is_the_same_plate() {
        let mut recorded = stay(1, SessionStatus::Review, 0, Some(60));
        recorded.pass_holder = true;
        let case = case(Some(recorded));
        let edit = |p: &str| Correction::EditPlate {
            plate: plate(p),
            plate_color: Some(PlateColor::Green),
        };
        let other = plan(&case, None, &edit("浙A99999")).unwrap();
        assert!(!other.close[0].pass_at_entry);
        assert_eq!(other.close[0].plate_color.as_deref(), Some("green"));
        let same = plan(&case, None, &edit("浙A12345")).unwrap();
        assert!(same.close[0].pass_at_entry);
    }

    #[test]
    fn a_plate_given_to_an_on_street_stay_without_one_makes_it_a_session() {
        let mut case = case(None);
        case.bay_stay = Some(BayStay {
            bay: "b-7".into(),
            started_at: at(0),
            ended_at: Some(at(45)),
        });
        let edit = Correction::EditPlate {
            plate: plate("浙A99999"),
            plate_color: None,
        };
        let planned = plan(&case, None, &edit).unwrap();
        assert_eq!(planned.insert.len(), 1);
        assert_eq!(planned.insert[0].id, case.id);
        assert_eq!(planned.insert[0].bay.as_deref(), Some("b-7"));
        assert_eq!(planned.close[0].session, case.id);
        assert_eq!(planned.close[0].exited_at, at(45));
        case.bay_stay = Some(BayStay {
            bay: "b-7".into(),
            started_at: at(0),
            ended_at: None,
        });
        assert_eq!(plan(&case, None, &edit), Err(CorrectionError::NoExit));
    }

    #[test]
    fn a_merge_closes_the_entry_with_the_exit_and_voids_the_exit_session() {
        let exit = stay(1, SessionStatus::Review, 50, Some(60));
        let entry = stay(2, SessionStatus::Open, 0, None);
        let merge = Correction::Merge {
            with_session: entry.id,
        };
        let planned = plan(&case(Some(exit.clone())), Some(&entry), &merge).unwrap();
        assert_eq!(planned.void, Some(exit.id));
        assert_eq!(planned.settle_cases_of, Some(entry.id));
        let closing = &planned.close[0];
        assert_eq!(closing.session, entry.id);
        assert_eq!((closing.entered_at, closing.exited_at), (at(0), at(60)));
        assert_eq!(closing.exit_event.as_deref(), Some("e-out"));
        // Not with itself, another lot's, a closed one, or one entered after the exit.
        let mut other_lot = entry.clone();
        other_lot.lot = "lot-2".into();
        let closed = stay(2, SessionStatus::Closed, 0, Some(30));
        let later = stay(2, SessionStatus::Open, 61, None);
        for other in [&exit, &other_lot, &closed, &later] {
            assert_eq!(
                plan(&case(Some(exit.clone())), Some(other), &merge),
                Err(CorrectionError::NotMergeable)
            );
        }
        assert_eq!(
            plan(&case(Some(exit)), None, &merge),
            Err(CorrectionError::NotMergeable)
        );
    }

    #[test]
    fn an_exit_without_an_entry_merges_through_its_read() {
        let entry = stay(2, SessionStatus::Open, 0, None);
        let merge = Correction::Merge {
            with_session: entry.id,
        };
        let mut exit_only = case(None);
        assert_eq!(
            plan(&exit_only, Some(&entry), &merge),
            Err(CorrectionError::NoExit)
        );
        exit_only.exit_read = Some(("out".into(), "e-9".into(), at(90)));
        let planned = plan(&exit_only, Some(&entry), &merge).unwrap();
        assert_eq!(planned.void, None);
        assert_eq!(planned.close[0].exited_at, at(90));
        assert_eq!(planned.close[0].exit_event.as_deref(), Some("e-9"));
    }

    proptest! {
        /// A split prices exactly the recorded stay, cut once at `at`, as two stays; a cut
        /// outside it is refused.
        #[test]
        fn a_split_covers_the_stay_exactly(entered in 0i64..1_000, length in 1i64..1_000, cut in -10i64..1_010) {
            let recorded = stay(1, SessionStatus::Review, entered, Some(entered + length));
            let second = Uuid::from_u128(2);
            let split = Correction::Split { at: at(entered + cut), second };
            let result = plan(&case(Some(recorded.clone())), None, &split);
            if !(0 < cut && cut < length) {
                prop_assert_eq!(result, Err(CorrectionError::OutsideStay));
                return Ok(());
            }
            let planned = result.unwrap();
            prop_assert_eq!(planned.insert.len(), 1);
            prop_assert_eq!(planned.insert[0].id, second);
            let [first, then] = &planned.close[..] else { panic!("two closings") };
            prop_assert_eq!(first.session, recorded.id);
            prop_assert_eq!(then.session, second);
            prop_assert_eq!(first.entered_at, recorded.entered_at);
            prop_assert_eq!(first.exited_at, then.entered_at);
            prop_assert_eq!(Some(then.exited_at), recorded.exited_at);
            prop_assert_eq!(first.exit_event.clone(), None);
            prop_assert_eq!(then.exit_event.clone(), recorded.exit_event.clone());
        }

        /// Whatever the correction, a plan never closes or voids a session that is closed or
        /// void, and closes each session at most once, never before it began.
        #[test]
        fn a_plan_never_touches_a_billed_session(
            status in prop::sample::select(SessionStatus::ALL.to_vec()),
            other_status in prop::sample::select(SessionStatus::ALL.to_vec()),
            exited in prop::option::of(1i64..500),
            which in 0usize..5,
        ) {
            let recorded = stay(1, status, 0, exited);
            let other = stay(2, other_status, 0, None);
            let correction = match which {
                0 => Correction::Accept,
                1 => Correction::VoidSession,
                2 => Correction::EditPlate { plate: plate("浙A99999"), plate_color: None },
                3 => Correction::Merge { with_session: other.id },
                _ => Correction::Split { at: at(1), second: Uuid::from_u128(3) },
            };
            let Ok(planned) = plan(&case(Some(recorded.clone())), Some(&other), &correction) else {
                return Ok(());
            };
            let billed = |s: &Stay| matches!(s.status, SessionStatus::Closed | SessionStatus::Void);
            for (id, stay) in [(recorded.id, &recorded), (other.id, &other)] {
                if billed(stay) {
                    prop_assert!(planned.void != Some(id));
                    prop_assert!(planned.close.iter().all(|c| c.session != id));
                }
            }
            let mut closed: Vec<Uuid> = planned.close.iter().map(|c| c.session).collect();
            closed.sort();
            closed.dedup();
            prop_assert_eq!(closed.len(), planned.close.len());
            prop_assert!(planned.close.iter().all(|c| c.entered_at <= c.exited_at));
        }
    }
}
