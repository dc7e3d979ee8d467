//! Statuses, review kinds and resolutions: enums in the code, their `as_str` in the database.

use serde::{Deserialize, Serialize};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub const ALL: [Self; 4] = [Self::Open, Self::Closed, Self::Review, Self::Void];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Review => "review",
            Self::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// A session an operator's correction may still end (never a priced or voided one).
    pub fn is_correctable(self) -> bool {
        matches!(self, Self::Open | Self::Review)
    }
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

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Exact, Self::Fuzzy]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// Why a case needs an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// A lane decided alone while the platform was away, and the platform had already
    /// answered the same read otherwise (or would not have let the car through).
    OfflineConflict,
}

impl ReviewKind {
    pub const ALL: [Self; 6] = [
        Self::ExitWithoutEntry,
        Self::LowConfidenceMatch,
        Self::MissedExit,
        Self::NoPlate,
        Self::Unpriced,
        Self::OfflineConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExitWithoutEntry => "exit_without_entry",
            Self::LowConfidenceMatch => "low_confidence_match",
            Self::MissedExit => "missed_exit",
            Self::NoPlate => "no_plate",
            Self::Unpriced => "unpriced",
            Self::OfflineConflict => "offline_conflict",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s)
    }
}

/// What an operator decided about a case, as recorded on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The case stands as recorded.
    Accept,
    /// The case's session (in review: never priced, never charged) did not happen.
    VoidSession,
    /// The case's session is the stay of another plate (`plate`): priced and billed as such.
    EditPlate,
    /// The case's session is the exit of another session's stay (`with_session`, open or in
    /// review, same lot): that session takes the exit and is priced; the case's is voided.
    Merge,
    /// The case's session was two stays, the second from `at`: both are priced.
    Split,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accepted",
            Self::VoidSession => "session_voided",
            Self::EditPlate => "plate_edited",
            Self::Merge => "merged",
            Self::Split => "split",
        }
    }
}

/// A status or kind the database holds that the code does not know (a newer version wrote it,
/// or the row was edited by hand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct Unknown {
    pub what: &'static str,
    pub value: String,
}

/// Reads a status (or kind) stored as text: the one of `all` whose `text` is `value`, or
/// [`Unknown`]. Every status enum's `TryFrom<String>` (what `#[sqlx(try_from = "String")]`
/// decodes rows with) is this.
pub fn from_text<T: Copy>(
    value: String,
    all: &[T],
    text: fn(T) -> &'static str,
    what: &'static str,
) -> Result<T, Unknown> {
    match all.iter().copied().find(|variant| text(*variant) == value) {
        Some(variant) => Ok(variant),
        None => Err(Unknown { what, value }),
    }
}

/// Rows decode a status through this (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for SessionStatus {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(value, &Self::ALL, Self::as_str, "session status")
    }
}

/// Rows decode a kind through this (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for ReviewKind {
    type Error = Unknown;

    fn try_from(value: String) -> Result<Self, Unknown> {
        from_text(value, &Self::ALL, Self::as_str, "review kind")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_and_kind_reads_back_from_its_text() {
        for status in SessionStatus::ALL {
            assert_eq!(SessionStatus::parse(status.as_str()), Some(status));
        }
        for kind in ReviewKind::ALL {
            assert_eq!(ReviewKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(SessionStatus::parse("OPEN"), None);
    }

    #[test]
    fn only_open_and_review_sessions_can_be_corrected() {
        let correctable: Vec<_> = SessionStatus::ALL
            .into_iter()
            .filter(|s| s.is_correctable())
            .collect();
        assert_eq!(correctable, [SessionStatus::Open, SessionStatus::Review]);
    }
}
