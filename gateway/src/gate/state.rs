//! The gate actor's state: open sessions per lot, recent decisions, and the facts decisions need.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};
use parkflow_protocol::{Direction, EventId, GateCommand, GateId, LotId, Plate};
use uuid::Uuid;

use super::decide::Standing;
use crate::session::OpenSession;

/// When a pass is valid: `[from, until)`.
pub type Validity = (DateTime<Utc>, DateTime<Utc>);

/// A lot's share of the state.
#[derive(Debug, Default)]
pub struct LotState {
    /// Open sessions by plate: at most one per plate and lot.
    pub open: HashMap<Plate, OpenSession>,
    pub blocked: HashSet<Plate>,
    pub passes: HashMap<Plate, Vec<Validity>>,
}

impl LotState {
    /// Whether `plate` holds a pass for this lot at `at`.
    pub fn has_pass(&self, plate: &Plate, at: DateTime<Utc>) -> bool {
        self.passes.get(plate).is_some_and(|passes| {
            passes
                .iter()
                .any(|(from, until)| *from <= at && at < *until)
        })
    }
}

/// Identifies one read: a device's event id on one gate.
pub type ReadKey = (LotId, GateId, EventId);
/// Identifies "the same car at the same gate, the same way".
pub type RepeatKey = (LotId, GateId, Plate, Direction);

/// A decision that was made, kept to answer repeats.
#[derive(Debug, Clone)]
pub struct Decided {
    pub command: GateCommand,
    pub session_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

/// Recent decisions, by read and by car, forgotten after a window.
#[derive(Debug)]
pub struct RecentDecisions {
    window: Duration,
    by_read: HashMap<ReadKey, Decided>,
    by_car: HashMap<RepeatKey, Decided>,
    order: VecDeque<(DateTime<Utc>, ReadKey, RepeatKey)>,
}

impl RecentDecisions {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            by_read: HashMap::new(),
            by_car: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn by_read(&self, key: &ReadKey) -> Option<&Decided> {
        self.by_read.get(key)
    }

    /// The last decision for this car at this gate, if it was made within `within` of `now`.
    pub fn by_car(
        &self,
        key: &RepeatKey,
        now: DateTime<Utc>,
        within: Duration,
    ) -> Option<&Decided> {
        self.by_car.get(key).filter(|d| now - d.at <= within)
    }

    pub fn remember(&mut self, read: ReadKey, car: RepeatKey, decided: Decided) {
        self.order
            .push_back((decided.at, read.clone(), car.clone()));
        self.by_car.insert(car, decided.clone());
        self.by_read.insert(read, decided);
    }

    /// Forgets what is older than the window.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        while let Some((at, _, _)) = self.order.front() {
            if now - *at <= self.window {
                break;
            }
            if let Some((at, read, car)) = self.order.pop_front() {
                self.by_read.remove(&read);
                if self.by_car.get(&car).is_some_and(|d| d.at == at) {
                    self.by_car.remove(&car);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_read.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_read.is_empty()
    }
}

/// Everything the gate actor owns.
#[derive(Debug)]
pub struct GateState {
    pub lots: HashMap<LotId, LotState>,
    /// Enrolled plates and their driver's standing.
    pub drivers: HashMap<Plate, Standing>,
    pub recent: RecentDecisions,
}

impl GateState {
    pub fn new(window: Duration) -> Self {
        Self {
            lots: HashMap::new(),
            drivers: HashMap::new(),
            recent: RecentDecisions::new(window),
        }
    }

    pub fn standing(&self, plate: &Plate) -> Standing {
        self.drivers
            .get(plate)
            .copied()
            .unwrap_or(Standing::NotEnrolled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkflow_protocol::{GateAction, GateReason};

    fn decided(at: DateTime<Utc>) -> Decided {
        Decided {
            command: GateCommand {
                command_id: Uuid::now_v7(),
                event_id: EventId::parse("e").unwrap(),
                action: GateAction::Open,
                reason: GateReason::Entered,
                issued_at: at,
                amount_due: None,
                currency: None,
                pay_url: None,
            },
            session_id: None,
            at,
        }
    }

    fn keys(event: &str) -> (ReadKey, RepeatKey) {
        let lot = LotId::parse("l").unwrap();
        let gate = GateId::parse("g").unwrap();
        let plate = Plate::parse("浙A12345").unwrap();
        (
            (lot.clone(), gate.clone(), EventId::parse(event).unwrap()),
            (lot, gate, plate, Direction::Entry),
        )
    }

    #[test]
    fn decisions_are_forgotten_after_the_window() {
        let t0 = Utc::now();
        let mut recent = RecentDecisions::new(Duration::minutes(15));
        let (read, car) = keys("e1");
        recent.remember(read.clone(), car.clone(), decided(t0));
        recent.expire(t0 + Duration::minutes(10));
        assert!(recent.by_read(&read).is_some());
        assert!(
            recent
                .by_car(&car, t0 + Duration::minutes(10), Duration::seconds(30))
                .is_none()
        );
        recent.expire(t0 + Duration::minutes(16));
        assert!(recent.by_read(&read).is_none() && recent.is_empty());
    }

    #[test]
    fn a_newer_read_of_the_same_car_survives_the_expiry_of_the_older() {
        let t0 = Utc::now();
        let mut recent = RecentDecisions::new(Duration::minutes(1));
        let (read1, car) = keys("e1");
        let (read2, _) = keys("e2");
        recent.remember(read1, car.clone(), decided(t0));
        recent.remember(read2, car.clone(), decided(t0 + Duration::seconds(50)));
        recent.expire(t0 + Duration::seconds(70));
        assert!(
            recent
                .by_car(&car, t0 + Duration::seconds(70), Duration::minutes(1))
                .is_some()
        );
        assert_eq!(recent.len(), 1);
    }
}
