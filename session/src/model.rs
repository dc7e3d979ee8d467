//! What a session is at each step: open (the car is in), its end, and a case for an operator.

use chrono::{DateTime, Utc};
use parkflow_protocol::{EventId, GateId, LotId, Plate, PlateColor};
use uuid::Uuid;

use crate::status::{ExitMatch, ReviewKind, SessionStatus};

/// A session that is open: the car is in the lot.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSession {
    pub id: Uuid,
    pub lot: LotId,
    pub plate: Plate,
    pub plate_color: Option<PlateColor>,
    pub pass_holder: bool,
    pub entry_gate: Option<GateId>,
    pub entry_event: Option<EventId>,
    pub entered_at: DateTime<Utc>,
}

/// The end of a session: priced (`Closed`) or left for an operator (`Review`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEnd {
    pub id: Uuid,
    pub status: SessionStatus,
    pub exit_gate: Option<GateId>,
    pub exit_event: Option<EventId>,
    pub exited_at: DateTime<Utc>,
    pub exit_match: Option<(ExitMatch, f64)>,
    /// The `effective_from` of the tariff version that priced the session.
    pub tariff_from: Option<DateTime<Utc>>,
    /// The enrolled plate whose driver is billed (the exit read's or the entry's), if any.
    pub billed_plate: Option<Plate>,
    /// The plate colour and pass the fee was priced with, so that it recomputes the same.
    pub plate_color: Option<PlateColor>,
    pub pass_holder: bool,
    /// The fee in minor units and its currency; `None` when unpriced. A doubtful match in
    /// review keeps the fee an operator's confirmation bills.
    pub fee: Option<(i64, String)>,
}

/// One case in the review queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewItem {
    pub id: Uuid,
    pub lot: LotId,
    pub kind: ReviewKind,
    pub session_id: Option<Uuid>,
    pub gate: Option<GateId>,
    pub event_id: Option<EventId>,
    pub plate: Option<Plate>,
    pub score: Option<f64>,
    pub created_at: DateTime<Utc>,
}
