//! Bay occupancy for a whole city (SPEC §2 `occupancy`, `heartbeat`, bay `plate`, bridges and
//! device status; SPEC §3 on-street stays).
//!
//! `state` is the pure core: every bay in a dense array, events applied by `seq`, heartbeats that
//! converge a bay to its sensor's current state, silent sensors turning their bays unknown, and
//! per-lot counts kept in step. `sessions` is the pure core of on-street stays. `actor` owns both
//! (and the gated lots' counts), `store` makes what it applies durable and reads it back at start.

pub(crate) mod actor;
pub(crate) mod sessions;
pub(crate) mod state;
pub(crate) mod store;

pub use actor::{
    BayEvent, BayView, OccupancyActor, OccupancyConfig, OccupancyHandle, OccupancyMessage,
};
pub(crate) use state::{LotCounts, Occupancy};
