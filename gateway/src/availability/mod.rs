//! Live availability for navigation apps and big screens (SPEC §5, and the retained MQTT topic of §2).
//!
//! The occupancy actor owns the counts; every [`PUBLISH_INTERVAL`] it publishes the lots that
//! changed: a new [`Board`] snapshot for HTTP readers (behind an `ArcSwap`: readers never wait),
//! and one event per changed lot to the server-sent-event subscribers through a broadcast ring of
//! [`STREAM_BUFFER`] events shared by all of them: a subscriber that falls further behind than
//! that is dropped, so nobody buffers for a slow client and nobody waits for one. `feeds` renders
//! FIWARE and DATEX II from the same snapshot.

pub(crate) mod feeds;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parkflow_protocol::{Availability, LotStatus};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::occupancy::LotCounts;
use crate::registry::{Location, Lot, LotKind};

/// Availability events kept for stream subscribers; one further behind is dropped.
pub(crate) const STREAM_BUFFER: usize = 4_096;
/// How often changed lots are published to readers and subscribers.
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_millis(200);
/// The retained MQTT topic carries at most one update per lot per this interval.
pub(crate) const MQTT_INTERVAL: Duration = Duration::from_secs(1);

/// When a lot counts as almost full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusThresholds {
    /// `almostFull` once free bays are at most this share of the total (0.1: one bay in ten).
    pub almost_full_ratio: f64,
}

impl Default for StatusThresholds {
    fn default() -> Self {
        Self {
            almost_full_ratio: 0.1,
        }
    }
}

impl StatusThresholds {
    /// The FIWARE status of a lot with these counts. A lot with no bays is `closed`; with no bay
    /// known to be free (occupied or unknown) it is `full`, so no app sends drivers to a lot it
    /// cannot see a space in.
    pub fn status(&self, counts: &LotCounts) -> LotStatus {
        if counts.total == 0 {
            LotStatus::Closed
        } else if counts.free == 0 {
            LotStatus::Full
        } else if f64::from(counts.free) <= self.almost_full_ratio * f64::from(counts.total) {
            LotStatus::AlmostFull
        } else {
            LotStatus::SpacesAvailable
        }
    }
}

/// One lot's published counts, and its `GET /v1/lots/{lot}/availability` body rendered once
/// per change (readers copy bytes instead of serializing per request).
#[derive(Debug, Clone, PartialEq)]
pub struct LotAvailability {
    pub counts: LotCounts,
    pub status: LotStatus,
    /// When the counts last changed.
    pub observed_at: DateTime<Utc>,
    pub json: Bytes,
}

impl LotAvailability {
    pub fn new(
        lot: &Lot,
        counts: LotCounts,
        status: LotStatus,
        observed_at: DateTime<Utc>,
    ) -> Self {
        let mut availability = Self {
            counts,
            status,
            observed_at,
            json: Bytes::new(),
        };
        // A struct of plain fields always serializes.
        availability.json = Bytes::from(
            serde_json::to_vec(&LotAvailabilityView::new(lot, &availability)).unwrap_or_default(),
        );
        availability
    }
}

/// Every lot's counts at one moment, indexed by `LotIdx` of `registry` (the snapshot the
/// occupancy actor numbered them with: readers resolve lots through it, not a newer one).
#[derive(Debug, Clone, Default)]
pub struct Board {
    pub lots: Vec<LotAvailability>,
    pub registry: Arc<crate::registry::Registry>,
}

/// The body of `GET /v1/lots/{lot}/availability`, of each `near` result and of each SSE event.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LotAvailabilityView {
    pub lot: String,
    pub name: String,
    pub kind: LotKind,
    pub location: Location,
    pub total: u32,
    pub free: u32,
    pub occupied: u32,
    pub unknown: u32,
    pub status: LotStatus,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub observed_at: DateTime<Utc>,
}

impl LotAvailabilityView {
    pub fn new(lot: &Lot, availability: &LotAvailability) -> Self {
        Self {
            lot: lot.id.to_string(),
            name: lot.name.clone(),
            kind: lot.kind,
            location: lot.location,
            total: availability.counts.total,
            free: availability.counts.free,
            occupied: availability.counts.occupied,
            unknown: availability.counts.unknown,
            status: availability.status,
            observed_at: availability.observed_at,
        }
    }

    /// The retained MQTT message (SPEC §2 `lots/{lot}/availability`).
    pub fn mqtt(&self, lot: &Lot) -> Availability {
        Availability {
            lot: lot.id.clone(),
            total: self.total,
            free: self.free,
            occupied: self.occupied,
            unknown: self.unknown,
            status: self.status,
            observed_at: self.observed_at,
        }
    }
}

/// Where readers find the latest board and subscribe to changes.
#[derive(Clone)]
pub struct AvailabilityHandle {
    board: Arc<ArcSwap<Board>>,
    events: broadcast::Sender<Arc<LotAvailabilityView>>,
}

impl AvailabilityHandle {
    pub fn new(board: Board) -> Self {
        Self {
            board: Arc::new(ArcSwap::from_pointee(board)),
            events: broadcast::channel(STREAM_BUFFER).0,
        }
    }

    /// The latest board.
    pub fn board(&self) -> Arc<Board> {
        self.board.load_full()
    }

    /// Replaces the board (the occupancy actor, at each publish).
    pub fn publish(&self, board: Board) {
        self.board.store(Arc::new(board));
    }

    /// Sends one lot's change to every stream subscriber (never waits).
    pub fn announce(&self, view: LotAvailabilityView) {
        // No subscriber is not an error.
        let _ = self.events.send(Arc::new(view));
    }

    /// Subscribes to changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LotAvailabilityView>> {
        self.events.subscribe()
    }

    /// Stream subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.events.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: u32, free: u32, occupied: u32) -> LotCounts {
        LotCounts {
            total,
            free,
            occupied,
            unknown: total - free - occupied,
        }
    }

    #[test]
    fn status_follows_the_free_share() {
        let thresholds = StatusThresholds::default();
        assert_eq!(
            thresholds.status(&counts(100, 50, 50)),
            LotStatus::SpacesAvailable
        );
        assert_eq!(
            thresholds.status(&counts(100, 11, 89)),
            LotStatus::SpacesAvailable
        );
        assert_eq!(
            thresholds.status(&counts(100, 10, 90)),
            LotStatus::AlmostFull
        );
        assert_eq!(
            thresholds.status(&counts(100, 1, 99)),
            LotStatus::AlmostFull
        );
        assert_eq!(thresholds.status(&counts(100, 0, 100)), LotStatus::Full);
        assert_eq!(thresholds.status(&counts(0, 0, 0)), LotStatus::Closed);
    }

    #[test]
    fn the_rendered_body_is_the_view() {
        let lot = Lot {
            idx: 0,
            id: parkflow_protocol::LotId::parse("l-1").unwrap(),
            operator_id: "op".into(),
            name: "Lot <1>".into(),
            kind: LotKind::OnStreet,
            location: Location {
                lat: 30.0,
                lon: 120.0,
            },
            capacity: 100,
            time_zone: "Asia/Shanghai".into(),
            device_auth: parkflow_protocol::DeviceAuth::Signed,
            tariffs: Default::default(),
            offline_policy: Default::default(),
            review_pictures: false,
            max_stay: None,
        };
        let availability = LotAvailability::new(
            &lot,
            counts(100, 40, 50),
            LotStatus::SpacesAvailable,
            Utc::now(),
        );
        let body: serde_json::Value = serde_json::from_slice(&availability.json).unwrap();
        assert_eq!(
            body,
            serde_json::to_value(LotAvailabilityView::new(&lot, &availability)).unwrap()
        );
        assert_eq!(
            (body["free"].as_u64(), body["unknown"].as_u64()),
            (Some(40), Some(10))
        );
    }

    #[test]
    fn a_lot_whose_bays_are_all_unknown_is_not_shown_as_having_space() {
        assert_eq!(
            StatusThresholds::default().status(&counts(10, 0, 0)),
            LotStatus::Full
        );
    }

    #[test]
    fn the_almost_full_threshold_is_configurable() {
        let thresholds = StatusThresholds {
            almost_full_ratio: 0.5,
        };
        assert_eq!(thresholds.status(&counts(10, 5, 5)), LotStatus::AlmostFull);
    }
}
