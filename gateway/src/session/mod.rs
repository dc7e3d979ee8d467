//! Parking sessions as the gateway sees them: the lifecycle's types (from `parkflow-session`,
//! the one writer of sessions) and how an exit read finds its entry (`matching`).

pub mod matching;

pub use parkflow_session::{
    ExitMatch, OpenSession, ReviewItem, ReviewKind, SessionEnd, SessionStatus,
};
