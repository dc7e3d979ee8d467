//! Parking sessions: what they are, and how an exit read finds its entry (`matching`).

pub mod matching;

use chrono::{DateTime, Utc};
use parkflow_protocol::{EventId, GateId, LotId, Plate, PlateColor};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// The car is parked.
    Open,
    /// The car left; the session is priced.
    Closed,
    /// The session ended in a way the platform could not price on its own (a missed exit, no tariff).
    Review,
    /// Cancelled by an operator.
    Void,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Review => "review",
            Self::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "closed" => Some(Self::Closed),
            "review" => Some(Self::Review),
            "void" => Some(Self::Void),
            _ => None,
        }
    }
}

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

/// How an exit read found its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitMatch {
    Exact,
    Fuzzy,
}

impl ExitMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Fuzzy => "fuzzy",
        }
    }
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
    /// The fee in minor units and its currency; `None` for a session left for review.
    pub fee: Option<(i64, String)>,
}

/// Why a case needs an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewKind {
    /// A car left without a matching entry.
    ExitWithoutEntry,
    /// An exit matched an entry only with low confidence.
    LowConfidenceMatch,
    /// A plate entered while a session for it was still open: its exit was missed.
    MissedExit,
    /// An on-street session ended without a plate.
    NoPlate,
    /// A car left but its stay could not be priced (no tariff in force).
    Unpriced,
}

impl ReviewKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExitWithoutEntry => "exit_without_entry",
            Self::LowConfidenceMatch => "low_confidence_match",
            Self::MissedExit => "missed_exit",
            Self::NoPlate => "no_plate",
            Self::Unpriced => "unpriced",
        }
    }
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
