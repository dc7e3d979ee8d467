//! What each lane last did, as the console shows it: how long the platform took over its last
//! decision (from the read's arrival to the command's publication), and the last barrier
//! `state` it reported. Kept in memory by this node (a node shows the lanes it hears and
//! decides for); the gate actor and the MQTT ingest write it, the console reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parkflow_protocol::{GateId, GateState, LotId};

/// One lane's last decision and barrier report.
#[derive(Debug, Clone, Default)]
pub(crate) struct LaneFacts {
    pub decision: Option<Duration>,
    pub barrier: Option<GateState>,
}

/// Every lane's [`LaneFacts`] by lot and gate, shared by the gate handle's clones.
#[derive(Debug, Clone, Default)]
pub(crate) struct LaneBoard(Arc<Mutex<HashMap<LotId, HashMap<GateId, LaneFacts>>>>);

impl LaneBoard {
    /// `work` on the facts of `gate` of `lot`. A lane already known is found by reference: the
    /// decision path allocates nothing here after a lane's first decision.
    fn with(&self, lot: &LotId, gate: &GateId, work: impl FnOnce(&mut LaneFacts)) {
        let mut lots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(facts) = lots.get_mut(lot).and_then(|gates| gates.get_mut(gate)) {
            return work(facts);
        }
        let facts = lots
            .entry(lot.clone())
            .or_default()
            .entry(gate.clone())
            .or_default();
        work(facts);
    }

    /// The gate actor published a decision on `gate` of `lot`, `took` after the read arrived.
    pub(crate) fn decided(&self, lot: &LotId, gate: &GateId, took: Duration) {
        self.with(lot, gate, |facts| facts.decision = Some(took));
    }

    /// The lane reported its barrier; the latest report by its own time is kept.
    pub(crate) fn barrier_reported(&self, lot: &LotId, gate: &GateId, state: GateState) {
        self.with(lot, gate, |facts| {
            if facts
                .barrier
                .as_ref()
                .is_none_or(|kept| kept.observed_at <= state.observed_at)
            {
                facts.barrier = Some(state);
            }
        });
    }

    /// The facts of each lane of `lot` this node has.
    pub(crate) fn of_lot(&self, lot: &LotId) -> Vec<(GateId, LaneFacts)> {
        let lots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lots.get(lot).map_or_else(Vec::new, |gates| {
            gates
                .iter()
                .map(|(gate, facts)| (gate.clone(), facts.clone()))
                .collect()
        })
    }
}
