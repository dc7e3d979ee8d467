//! Bay occupancy for a whole city (SPEC §2 `occupancy` and `heartbeat`, SPEC §5 availability).
//!
//! `state` is the pure core: every bay in a dense array, events applied by `seq`, heartbeats that
//! converge a bay to its sensor's current state, silent sensors turning their bays unknown, and
//! per-lot counts kept in step. The actor, ingest and publishing around it come with the
//! occupancy issue; the core is here, tested, first.

pub mod state;

pub use state::{Change, LotCounts, Occupancy, OccupancyState};
