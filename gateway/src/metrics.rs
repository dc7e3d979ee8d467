//! The platform's Prometheus metrics. Labels are of low cardinality: an action, a reason, an
//! engine — never a bay, a device or a plate.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub plate_reads: Counter,
    /// ANPR reads sent over HTTP to this node for a lot another node runs, passed on to it.
    pub anpr_forwarded: Counter,
    pub barrier_commands: Family<ActionLabel, Counter>,
    /// Barrier calls to off-the-shelf cameras, by result (`ok`, `failed`).
    pub barrier_calls: Family<OutcomeLabel, Counter>,
    pub sessions_opened: Counter,
    pub sessions_closed: Counter,
    pub fees_minor: Counter,
    pub review_items: Counter,
    pub events_rejected: Family<ReasonLabel, Counter>,
    pub decision_seconds: Histogram,
    pub store_batches: Counter,
    pub store_batch_size: Histogram,
    pub store_write_errors: Counter,
    pub store_writes_failing: Gauge,
    pub store_writes_fenced: Counter,
    pub lots_held: Gauge,
    /// Standing lists published to gates, full and delta.
    pub standing_lists: Family<KindLabel, Counter>,
    /// Decisions lanes made alone, reconciled (each once).
    pub offline_decisions: Counter,
    /// Of those, decisions the platform had made otherwise (to review).
    pub offline_conflicts: Counter,
    pub mqtt_connected: Gauge,
    pub bay_events: Family<OutcomeLabel, Counter>,
    pub bay_heartbeats: Counter,
    pub bay_sessions_opened: Counter,
    pub bay_sessions_closed: Counter,
    pub bay_states_written: Counter,
    pub bays_unknown: Gauge,
    pub bays_battery_low: Gauge,
    pub availability_subscribers: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("parkflow");
        let plate_reads = Counter::default();
        registry.register(
            "plate_reads",
            "Gate plate reads accepted for a decision",
            plate_reads.clone(),
        );
        let anpr_forwarded = Counter::default();
        registry.register(
            "anpr_forwarded",
            "ANPR reads received over HTTP for a lot another gateway node runs, passed on to it",
            anpr_forwarded.clone(),
        );
        let barrier_commands = Family::<ActionLabel, Counter>::default();
        registry.register(
            "barrier_commands",
            "Barrier commands published, by action",
            barrier_commands.clone(),
        );
        let barrier_calls = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "barrier_calls",
            "Barrier calls to off-the-shelf ANPR cameras, by outcome",
            barrier_calls.clone(),
        );
        let sessions_opened = Counter::default();
        registry.register(
            "sessions_opened",
            "Parking sessions opened",
            sessions_opened.clone(),
        );
        let sessions_closed = Counter::default();
        registry.register(
            "sessions_closed",
            "Parking sessions closed and priced",
            sessions_closed.clone(),
        );
        let fees_minor = Counter::default();
        registry.register(
            "fees_minor_units",
            "Fees of closed sessions, in minor units of their currency",
            fees_minor.clone(),
        );
        let review_items = Counter::default();
        registry.register(
            "review_items",
            "Cases sent to the operators' review queue",
            review_items.clone(),
        );
        let events_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "events_rejected",
            "Messages rejected, by reason",
            events_rejected.clone(),
        );
        // 50 µs … ~1.6 s.
        let decision_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "decision_seconds",
            "Time from a plate read's arrival to its barrier command's publication",
            decision_seconds.clone(),
        );
        let store_batches = Counter::default();
        registry.register(
            "store_batches",
            "Group commits of the store writer",
            store_batches.clone(),
        );
        let store_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "store_batch_size",
            "Writes per group commit",
            store_batch_size.clone(),
        );
        let store_write_errors = Counter::default();
        registry.register(
            "store_write_errors",
            "Writes the store failed to make",
            store_write_errors.clone(),
        );
        let store_writes_failing = Gauge::default();
        registry.register(
            "store_writes_failing",
            "Store writers whose database write is failing for now and being retried (its messages wait unacknowledged)",
            store_writes_failing.clone(),
        );
        let store_writes_fenced = Counter::default();
        registry.register(
            "store_writes_fenced",
            "Writes not made because this gateway node lost the lot's lease after deciding them",
            store_writes_fenced.clone(),
        );
        let lots_held = Gauge::default();
        registry.register(
            "lots_held",
            "Lots this gateway node runs now (with --node-id)",
            lots_held.clone(),
        );
        let standing_lists = Family::<KindLabel, Counter>::default();
        registry.register(
            "standing_lists",
            "Standing lists published to gates for deciding alone, by kind (full, delta)",
            standing_lists.clone(),
        );
        let offline_decisions = Counter::default();
        registry.register(
            "offline_decisions",
            "Decisions lanes made alone that changed the record: reads the platform had not answered, or had answered otherwise",
            offline_decisions.clone(),
        );
        let offline_conflicts = Counter::default();
        registry.register(
            "offline_conflicts",
            "Decisions lanes made alone that the platform had made otherwise (sent to review)",
            offline_conflicts.clone(),
        );
        let mqtt_connected = Gauge::default();
        registry.register(
            "mqtt_connected",
            "Whether the platform's MQTT connection is up",
            mqtt_connected.clone(),
        );
        let bay_events = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "bay_events",
            "Bay occupancy events, by outcome (applied, or stale: a repeat or out of order)",
            bay_events.clone(),
        );
        let bay_heartbeats = Counter::default();
        registry.register(
            "bay_heartbeats",
            "Bay sensor heartbeats accepted",
            bay_heartbeats.clone(),
        );
        let bay_sessions_opened = Counter::default();
        registry.register(
            "bay_sessions_opened",
            "On-street stays opened",
            bay_sessions_opened.clone(),
        );
        let bay_sessions_closed = Counter::default();
        registry.register(
            "bay_sessions_closed",
            "On-street stays ended",
            bay_sessions_closed.clone(),
        );
        let bay_states_written = Counter::default();
        registry.register(
            "bay_states_written",
            "Bay states made durable",
            bay_states_written.clone(),
        );
        let bays_unknown = Gauge::default();
        registry.register(
            "bays_unknown",
            "Bays whose state is unknown (never heard, silent past the deadline, or offline)",
            bays_unknown.clone(),
        );
        let bays_battery_low = Gauge::default();
        registry.register(
            "bays_battery_low",
            "Bays whose sensor reports a battery below 20%",
            bays_battery_low.clone(),
        );
        let availability_subscribers = Gauge::default();
        registry.register(
            "availability_subscribers",
            "Clients connected to the availability stream",
            availability_subscribers.clone(),
        );
        Self {
            bay_events,
            bay_heartbeats,
            bay_sessions_opened,
            bay_sessions_closed,
            bay_states_written,
            bays_unknown,
            bays_battery_low,
            availability_subscribers,
            registry,
            plate_reads,
            anpr_forwarded,
            barrier_commands,
            barrier_calls,
            sessions_opened,
            sessions_closed,
            fees_minor,
            review_items,
            events_rejected,
            decision_seconds,
            store_batches,
            store_batch_size,
            store_write_errors,
            store_writes_failing,
            store_writes_fenced,
            lots_held,
            standing_lists,
            offline_decisions,
            offline_conflicts,
            mqtt_connected,
        }
    }

    /// Counts a rejected message.
    pub fn rejected(&self, reason: &'static str) {
        self.events_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported_with_their_spec_names() {
        let metrics = Metrics::new();
        metrics.plate_reads.inc();
        metrics
            .barrier_commands
            .get_or_create(&ActionLabel { action: "open" })
            .inc();
        metrics.rejected("bad_signature");
        metrics.decision_seconds.observe(0.001);
        let text = metrics.encode();
        for line in [
            "parkflow_plate_reads_total 1",
            "parkflow_barrier_commands_total{action=\"open\"} 1",
            "parkflow_events_rejected_total{reason=\"bad_signature\"} 1",
            "parkflow_decision_seconds_count 1",
            "parkflow_sessions_opened_total 0",
            "parkflow_sessions_closed_total 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
