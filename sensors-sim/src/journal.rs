//! What the simulator drove, one record per journey through a gated lot: the reads it sent and the
//! answers it got. `--verify` compares it with what the platform recorded.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use parkflow_protocol::{EventId, GateAction, GateReason, LotId, Plate, PlateColor};

/// A read and the barrier's answer to it.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The read's event ids: the first, then any second read of the same car (a double read).
    pub event_ids: Vec<EventId>,
    pub observed_at: DateTime<Utc>,
    pub action: GateAction,
    pub reason: GateReason,
    /// Decided by the lane alone (the platform did not answer in time).
    pub alone: bool,
}

/// One car's visit to a gated lot.
#[derive(Debug, Clone)]
pub struct JourneyRecord {
    pub lot: LotId,
    /// The car's real plate (an exit may have been read as another).
    pub plate: Plate,
    pub plate_color: PlateColor,
    pub entry: Answered,
    /// `None` while the car is inside (or when the run stopped before it left).
    pub exit: Option<Answered>,
    /// Whether the exit read carried a misread plate.
    pub misread: bool,
    /// Whether the driver paid at the exit (a held barrier opened by the payment).
    pub paid_at_exit: bool,
}

/// Records of every journey, in the order they ended — or none, for a demo that runs for days
/// and verifies nothing (the default).
#[derive(Debug, Default)]
pub struct Journal {
    records: Option<Mutex<Vec<JourneyRecord>>>,
}

impl Journal {
    /// A journal that keeps every record.
    pub fn recording() -> Self {
        Self {
            records: Some(Mutex::default()),
        }
    }

    pub fn record(&self, record: JourneyRecord) {
        if let Some(records) = &self.records {
            records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(record);
        }
    }

    /// Everything recorded so far.
    pub fn records(&self) -> Vec<JourneyRecord> {
        self.records.as_ref().map_or_else(Vec::new, |records| {
            records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }
}
