//! The gate actor's state: open sessions per lot, recent decisions, and the facts decisions need.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};
use parkflow_protocol::{Direction, EventId, GateCommand, GateId, LotId, Plate};
use uuid::Uuid;

use super::GateRead;
use super::decide::Standing;
use crate::session::OpenSession;
use crate::session::matching::similarity;

/// When a pass is valid: `[from, until)`.
pub(crate) type Validity = (DateTime<Utc>, DateTime<Utc>);

/// A lot's share of the state.
#[derive(Debug, Default)]
pub(crate) struct LotState {
    /// Open sessions by plate: at most one per plate and lot.
    pub open: HashMap<Plate, OpenSession>,
    pub blocked: HashSet<Plate>,
    pub passes: HashMap<Plate, Vec<Validity>>,
}

impl LotState {
    /// Whether `plate` holds a pass for this lot at `at`.
    pub(crate) fn has_pass(&self, plate: &Plate, at: DateTime<Utc>) -> bool {
        self.passes.get(plate).is_some_and(|passes| {
            passes
                .iter()
                .any(|(from, until)| *from <= at && at < *until)
        })
    }
}

/// Identifies one read: a device's event id on one gate.
pub(crate) type ReadKey = (LotId, GateId, EventId);
/// A lane and the way cars pass it.
pub(crate) type LaneKey = (LotId, GateId, Direction);

/// A decision that was made, kept to answer repeats.
#[derive(Debug, Clone)]
pub(crate) struct Decided {
    pub command: GateCommand,
    pub plate: Plate,
    pub session_id: Option<Uuid>,
    /// When the platform received the read.
    pub at: DateTime<Utc>,
    /// When the camera saw the car.
    pub observed_at: DateTime<Utc>,
}

/// Recent decisions: by read (a repeated event id gets the same command) and by lane (the same
/// car read again moments later is the same read), forgotten after their windows.
#[derive(Debug)]
pub(crate) struct RecentDecisions {
    window: Duration,
    by_read: HashMap<ReadKey, Decided>,
    order: VecDeque<(DateTime<Utc>, ReadKey)>,
    by_lane: HashMap<LaneKey, VecDeque<Decided>>,
    /// When each car (lot, plate) was last decided on, at any lane.
    last_by_car: HashMap<(LotId, Plate), DateTime<Utc>>,
}

impl RecentDecisions {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            by_read: HashMap::new(),
            order: VecDeque::new(),
            by_lane: HashMap::new(),
            last_by_car: HashMap::new(),
        }
    }

    /// How long decisions are remembered by read.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    pub(crate) fn by_read(&self, key: &ReadKey) -> Option<&Decided> {
        self.by_read.get(key)
    }

    /// The latest decision at this lane within `within` of `now` for a plate at least
    /// `min_similarity` alike (a one-character misread of the same car counts), seen by the camera
    /// within `within` of `observed_at` too (a lane forwarding its backlog sends reads received
    /// together but seen hours apart), unless that car was decided on since at another lane (it
    /// went in, or out, in between). `at` is (received, observed).
    pub(crate) fn repeat_of(
        &mut self,
        lane: &LaneKey,
        plate: &Plate,
        at: (DateTime<Utc>, DateTime<Utc>),
        within: Duration,
        min_similarity: f64,
    ) -> Option<Decided> {
        let (now, observed_at) = at;
        let recent = self.by_lane.get_mut(lane)?;
        while recent.front().is_some_and(|d| now - d.at > within) {
            recent.pop_front();
        }
        let previous = recent.iter().rev().find(|d| {
            (d.observed_at - observed_at).abs() <= within
                && similarity(d.plate.as_str(), plate.as_str()) >= min_similarity
        })?;
        let last = self
            .last_by_car
            .get(&(lane.0.clone(), previous.plate.clone()));
        (last == Some(&previous.at)).then(|| previous.clone())
    }

    pub(crate) fn remember(&mut self, read: ReadKey, lane: LaneKey, decided: Decided) {
        self.order.push_back((decided.at, read.clone()));
        self.last_by_car
            .insert((lane.0.clone(), decided.plate.clone()), decided.at);
        self.by_lane
            .entry(lane)
            .or_default()
            .push_back(decided.clone());
        self.by_read.insert(read, decided);
    }

    /// Remembers a decision by its read only: a read that decided nothing about its car (refused
    /// for its camera's clock) must not make the car's next read a repeat of it.
    pub(crate) fn remember_read(&mut self, read: ReadKey, decided: Decided) {
        self.order.push_back((decided.at, read.clone()));
        self.by_read.insert(read, decided);
    }

    /// Forgets every decision of a lot (its gates are another node's now).
    pub(crate) fn forget_lot(&mut self, lot: &LotId) {
        self.by_read.retain(|(l, _, _), _| l != lot);
        self.order.retain(|(_, (l, _, _))| l != lot);
        self.by_lane.retain(|(l, _, _), _| l != lot);
        self.last_by_car.retain(|(l, _), _| l != lot);
    }

    /// Forgets what is older than the window.
    pub(crate) fn expire(&mut self, now: DateTime<Utc>) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now - *at > self.window)
        {
            if let Some((_, read)) = self.order.pop_front() {
                self.by_read.remove(&read);
            }
        }
        self.by_lane.retain(|_, recent| {
            while recent
                .front()
                .is_some_and(|d| now - d.at > Duration::minutes(5))
            {
                recent.pop_front();
            }
            !recent.is_empty()
        });
        let window = self.window;
        self.last_by_car.retain(|_, at| now - *at <= window);
    }

    pub(crate) fn len(&self) -> usize {
        self.by_read.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.by_read.is_empty()
    }
}

/// Everything the gate actor owns.
#[derive(Debug)]
pub(crate) struct GateState {
    pub lots: HashMap<LotId, LotState>,
    /// Enrolled plates and their driver's standing.
    pub drivers: HashMap<Plate, Standing>,
    pub recent: RecentDecisions,
}

impl GateState {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            lots: HashMap::new(),
            drivers: HashMap::new(),
            recent: RecentDecisions::new(window),
        }
    }
}

/// How long a car held at an exit waits for its driver's reinstatement to open the barrier.
pub(crate) const HELD_FOR: Duration = Duration::minutes(15);

/// The read a car was held on, kept to answer it again.
#[derive(Debug, Clone)]
pub(crate) struct HeldRead {
    pub lot: parkflow_protocol::LotId,
    gate: parkflow_protocol::GateId,
    event_id: parkflow_protocol::EventId,
    plate: Plate,
    plate_color: Option<parkflow_protocol::PlateColor>,
    confidence: f64,
    observed_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl HeldRead {
    pub(crate) fn of(read: &GateRead) -> Self {
        Self {
            lot: read.lot.clone(),
            gate: read.gate.clone(),
            event_id: read.event_id.clone(),
            plate: read.plate.clone(),
            plate_color: read.plate_color,
            confidence: read.confidence,
            observed_at: read.observed_at,
            received_at: read.received_at,
        }
    }

    pub(crate) fn replay(&self) -> GateRead {
        GateRead {
            lot: self.lot.clone(),
            gate: self.gate.clone(),
            event_id: self.event_id.clone(),
            plate: self.plate.clone(),
            plate_color: self.plate_color,
            confidence: self.confidence,
            direction: Direction::Exit,
            observed_at: self.observed_at,
            received_at: self.received_at,
            received: std::time::Instant::now(),
            ticket: None,
        }
    }
}

/// A car waiting at an exit for payment.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub session_plate: Plate,
    pub read: HeldRead,
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkflow_protocol::{GateAction, GateReason};

    fn decided(plate: &str, at: DateTime<Utc>) -> Decided {
        Decided {
            command: GateCommand::new(
                Uuid::now_v7(),
                EventId::parse("e").unwrap(),
                GateAction::Open,
                GateReason::Entered,
                at,
            ),
            plate: Plate::parse(plate).unwrap(),
            session_id: None,
            at,
            observed_at: at,
        }
    }

    fn keys(event: &str) -> (ReadKey, LaneKey) {
        let lot = LotId::parse("l").unwrap();
        let gate = GateId::parse("g").unwrap();
        (
            (lot.clone(), gate.clone(), EventId::parse(event).unwrap()),
            (lot, gate, Direction::Entry),
        )
    }

    #[test]
    fn decisions_are_forgotten_after_the_window() {
        let t0 = Utc::now();
        let mut recent = RecentDecisions::new(Duration::minutes(15));
        let (read, lane) = keys("e1");
        recent.remember(read.clone(), lane, decided("浙A12345", t0));
        recent.expire(t0 + Duration::minutes(10));
        assert!(recent.by_read(&read).is_some());
        recent.expire(t0 + Duration::minutes(16));
        assert!(recent.by_read(&read).is_none() && recent.is_empty());
    }

    #[test]
    fn the_same_car_read_again_moments_later_is_a_repeat_even_if_misread() {
        let t0 = Utc::now();
        let mut recent = RecentDecisions::new(Duration::minutes(15));
        let (read, lane) = keys("e1");
        recent.remember(read, lane.clone(), decided("浙A0B818", t0));
        let within = Duration::seconds(30);
        let plate = |p| Plate::parse(p).unwrap();
        assert!(
            recent
                .repeat_of(
                    &lane,
                    &plate("浙A0B818"),
                    (t0 + Duration::seconds(5), t0 + Duration::seconds(5)),
                    within,
                    0.9
                )
                .is_some()
        );
        assert!(
            recent
                .repeat_of(
                    &lane,
                    &plate("浙AD B818"),
                    (t0 + Duration::seconds(5), t0 + Duration::seconds(5)),
                    within,
                    0.9
                )
                .is_some()
        );
        assert!(
            recent
                .repeat_of(
                    &lane,
                    &plate("浙A9K327"),
                    (t0 + Duration::seconds(5), t0 + Duration::seconds(5)),
                    within,
                    0.9
                )
                .is_none()
        );
        assert!(
            recent
                .repeat_of(
                    &lane,
                    &plate("浙A0B818"),
                    (t0 + Duration::seconds(31), t0 + Duration::seconds(31)),
                    within,
                    0.9
                )
                .is_none()
        );
    }

    #[test]
    fn reads_received_together_but_seen_hours_apart_are_not_repeats() {
        let t0 = Utc::now();
        let mut recent = RecentDecisions::new(Duration::minutes(15));
        let (read, lane) = keys("e1");
        let mut earlier = decided("浙A0B818", t0);
        earlier.observed_at = t0 - Duration::hours(3);
        recent.remember(read, lane.clone(), earlier);
        let plate = Plate::parse("浙A0B818").unwrap();
        let later = (t0 + Duration::seconds(2), t0 - Duration::hours(1));
        assert!(
            recent
                .repeat_of(&lane, &plate, later, Duration::seconds(30), 0.9)
                .is_none()
        );
    }

    #[test]
    fn a_car_that_went_in_and_out_since_is_not_a_repeat() {
        let t0 = Utc::now();
        let mut recent = RecentDecisions::new(Duration::minutes(15));
        let lot = LotId::parse("l").unwrap();
        let exit_lane = (lot.clone(), GateId::parse("out").unwrap(), Direction::Exit);
        let entry_lane = (lot.clone(), GateId::parse("in").unwrap(), Direction::Entry);
        let read = |event: &str, gate: &str| {
            (
                lot.clone(),
                GateId::parse(gate).unwrap(),
                EventId::parse(event).unwrap(),
            )
        };
        recent.remember(
            read("e1", "out"),
            exit_lane.clone(),
            decided("浙A0B818", t0),
        );
        recent.remember(
            read("e2", "in"),
            entry_lane,
            decided("浙A0B818", t0 + Duration::seconds(5)),
        );
        let plate = Plate::parse("浙A0B818").unwrap();
        assert!(
            recent
                .repeat_of(
                    &exit_lane,
                    &plate,
                    (t0 + Duration::seconds(10), t0 + Duration::seconds(10)),
                    Duration::seconds(30),
                    0.9
                )
                .is_none()
        );
    }
}
