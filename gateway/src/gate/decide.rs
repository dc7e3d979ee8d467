//! The barrier decisions of SPEC §3 as plain functions over plain data: no IO, no clock.

use parkflow_protocol::{GateAction, GateReason};

/// A driver's standing for leave-first, pay-later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Standing {
    /// Enrolled with auto-debit and in good standing: leaves at once, billed later.
    Enrolled,
    /// Enrolled but suspended for arrears: pays at the exit.
    Suspended,
    /// Not enrolled: pays at the exit.
    NotEnrolled,
}

impl Standing {
    /// An enrolled driver's standing: leave first only with auto-debit consent and while not
    /// suspended for arrears.
    pub fn of(auto_debit: bool, suspended: bool) -> Self {
        match (auto_debit, suspended) {
            (false, _) => Self::NotEnrolled,
            (true, true) => Self::Suspended,
            (true, false) => Self::Enrolled,
        }
    }
}

/// What the platform knows when a car arrives at an entry lane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryFacts {
    pub blocked: bool,
    pub pass_holder: bool,
    pub capacity: u32,
    pub open_sessions: usize,
}

/// The answer at an entry lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryDecision {
    pub action: GateAction,
    pub reason: GateReason,
}

impl EntryDecision {
    /// Whether this decision opens a session.
    pub(crate) fn opens_session(&self) -> bool {
        self.action == GateAction::Open
    }
}

/// SPEC §3 gated entry: open unless blocked; a full lot holds unless the plate holds a pass.
pub(crate) fn entry(facts: EntryFacts) -> EntryDecision {
    let (action, reason) = if facts.blocked {
        (GateAction::Hold, GateReason::Blocked)
    } else if facts.pass_holder {
        (GateAction::Open, GateReason::PassHolder)
    } else if facts.open_sessions >= facts.capacity as usize {
        (GateAction::Hold, GateReason::LotFull)
    } else {
        (GateAction::Open, GateReason::Entered)
    };
    EntryDecision { action, reason }
}

/// How sure the platform is of the session an exit read belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Found {
    /// No open session resembles the plate.
    Nothing,
    /// A session matched with this confidence (1.0 for an exact match).
    Session { score: f64 },
}

/// What the stay costs, as far as the platform can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fee {
    Due,
    Free,
    /// The stay could not be priced (no tariff in force, a stay too long to price).
    Unknown,
}

/// What the platform knows when a car arrives at an exit lane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExitFacts {
    pub found: Found,
    pub standing: Standing,
    pub pass_holder: bool,
    pub fee: Fee,
    /// Matches scoring below this go to review.
    pub review_threshold: f64,
}

/// The answer at an exit lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitDecision {
    pub action: GateAction,
    pub reason: GateReason,
    /// Whether the found session ends now (the car leaves).
    pub closes_session: bool,
    /// Whether the case goes to the review queue.
    pub review: bool,
}

/// SPEC §3 gated exit. The barrier never traps a car because of the platform's own doubt: an exit
/// without an entry, a doubtful match, or a stay the platform cannot price opens and goes to review. A confident match opens
/// for enrolled drivers in good standing and pass holders (billed later), and for stays that cost
/// nothing; everyone else is held until they pay.
pub(crate) fn exit(facts: ExitFacts) -> ExitDecision {
    let open = |reason, review| ExitDecision {
        action: GateAction::Open,
        reason,
        closes_session: true,
        review,
    };
    match facts.found {
        Found::Nothing => ExitDecision {
            closes_session: false,
            ..open(GateReason::ReviewLater, true)
        },
        Found::Session { score } if score < facts.review_threshold => {
            open(GateReason::ReviewLater, true)
        }
        Found::Session { .. } if facts.pass_holder => open(GateReason::PassHolder, false),
        Found::Session { .. } if facts.fee == Fee::Unknown => open(GateReason::ReviewLater, true),
        Found::Session { .. } if facts.standing == Standing::Enrolled => {
            open(GateReason::BillLater, false)
        }
        Found::Session { .. } if facts.fee == Fee::Free => open(GateReason::NothingDue, false),
        Found::Session { .. } => ExitDecision {
            action: GateAction::Hold,
            reason: GateReason::PaymentRequired,
            closes_session: false,
            review: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_facts() -> EntryFacts {
        EntryFacts {
            blocked: false,
            pass_holder: false,
            capacity: 10,
            open_sessions: 3,
        }
    }

    fn exit_facts(score: f64, standing: Standing) -> ExitFacts {
        ExitFacts {
            found: Found::Session { score },
            standing,
            pass_holder: false,
            fee: Fee::Due,
            review_threshold: 0.9,
        }
    }

    #[test]
    fn an_ordinary_entry_opens_a_session() {
        let decision = entry(entry_facts());
        assert_eq!(
            (decision.action, decision.reason),
            (GateAction::Open, GateReason::Entered)
        );
        assert!(decision.opens_session());
    }

    #[test]
    fn a_blocked_plate_is_held_even_with_a_pass() {
        let decision = entry(EntryFacts {
            blocked: true,
            pass_holder: true,
            ..entry_facts()
        });
        assert_eq!(
            (decision.action, decision.reason),
            (GateAction::Hold, GateReason::Blocked)
        );
        assert!(!decision.opens_session());
    }

    #[test]
    fn a_full_lot_holds_unless_the_plate_holds_a_pass() {
        let full = EntryFacts {
            open_sessions: 10,
            ..entry_facts()
        };
        assert_eq!(entry(full).reason, GateReason::LotFull);
        assert_eq!(
            entry(EntryFacts {
                pass_holder: true,
                ..full
            })
            .reason,
            GateReason::PassHolder
        );
    }

    #[test]
    fn an_enrolled_driver_leaves_and_is_billed_later() {
        let decision = exit(exit_facts(1.0, Standing::Enrolled));
        assert_eq!(
            decision,
            ExitDecision {
                action: GateAction::Open,
                reason: GateReason::BillLater,
                closes_session: true,
                review: false
            }
        );
    }

    #[test]
    fn unenrolled_and_suspended_drivers_pay_at_the_exit() {
        for standing in [Standing::NotEnrolled, Standing::Suspended] {
            let decision = exit(exit_facts(1.0, standing));
            assert_eq!(
                (decision.action, decision.reason),
                (GateAction::Hold, GateReason::PaymentRequired)
            );
            assert!(!decision.closes_session);
        }
    }

    #[test]
    fn a_free_stay_leaves_without_paying() {
        let decision = exit(ExitFacts {
            fee: Fee::Free,
            ..exit_facts(1.0, Standing::NotEnrolled)
        });
        assert_eq!(
            (decision.action, decision.reason),
            (GateAction::Open, GateReason::NothingDue)
        );
        assert!(decision.closes_session);
    }

    #[test]
    fn a_pass_holder_leaves_whatever_their_standing() {
        let decision = exit(ExitFacts {
            pass_holder: true,
            ..exit_facts(1.0, Standing::Suspended)
        });
        assert_eq!(
            (decision.action, decision.reason),
            (GateAction::Open, GateReason::PassHolder)
        );
    }

    #[test]
    fn a_stay_that_cannot_be_priced_leaves_and_goes_to_review() {
        for standing in [Standing::Enrolled, Standing::NotEnrolled] {
            let decision = exit(ExitFacts {
                fee: Fee::Unknown,
                ..exit_facts(1.0, standing)
            });
            assert_eq!(
                (decision.action, decision.reason, decision.review),
                (GateAction::Open, GateReason::ReviewLater, true)
            );
            assert!(decision.closes_session);
        }
    }

    #[test]
    fn doubt_never_traps_a_car() {
        let low = exit(exit_facts(0.85, Standing::NotEnrolled));
        assert_eq!(
            (low.action, low.reason, low.review, low.closes_session),
            (GateAction::Open, GateReason::ReviewLater, true, true)
        );
        let none = exit(ExitFacts {
            found: Found::Nothing,
            ..exit_facts(0.0, Standing::NotEnrolled)
        });
        assert_eq!(
            (none.action, none.review, none.closes_session),
            (GateAction::Open, true, false)
        );
    }
}
