//! What the simulator did, counted.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the simulated devices.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads_sent: AtomicU64,
    pub reads_resent: AtomicU64,
    pub commands_received: AtomicU64,
    pub commands_unmatched: AtomicU64,
    pub commands_bad_signature: AtomicU64,
    /// Commands that arrived after their `expires_at`: not carried out.
    pub commands_expired: AtomicU64,
    /// Commands whose id the gate had carried out already (a replay): not carried out again.
    pub commands_replayed: AtomicU64,
    pub reads_unanswered: AtomicU64,
    pub entries_opened: AtomicU64,
    pub entries_held: AtomicU64,
    pub exits_opened: AtomicU64,
    pub exits_held: AtomicU64,
    pub misreads: AtomicU64,
    pub double_reads: AtomicU64,
    /// Repeated answers to one read that carried another command id (must stay 0).
    pub answers_conflicting: AtomicU64,
    pub exits_paid: AtomicU64,
    pub rogue_reads: AtomicU64,
    pub reconnects: AtomicU64,
    /// The longest a lane waited from sending a read to its answer, in milliseconds.
    pub longest_wait_ms: AtomicU64,
    /// The rogue's reads (their event ids), and how many of them a gate was answered for.
    pub rogue_events: std::sync::Mutex<std::collections::HashSet<parkflow_protocol::EventId>>,
    pub rogue_answered: AtomicU64,
    /// Reads a lane decided alone (no command within 1.5 s).
    pub decided_alone: AtomicU64,
    /// Of those, answered by the platform later (the lane kept its own decision).
    pub answered_after_alone: AtomicU64,
    /// `offline` reports sent, and decisions they carried that an `ack_offline` answered.
    pub offline_reports: AtomicU64,
    pub offline_acked: AtomicU64,
    /// Standing lists (full or delta) a lane took.
    pub standing_lists: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One line of `key=value` pairs.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "reads_sent={} reads_resent={} commands={} unmatched_commands={} bad_signatures={} expired_commands={} replayed_commands={} unanswered={} \
             entries_opened={} entries_held={} exits_opened={} exits_held={} exits_paid={} misreads={} double_reads={} \
             conflicting_answers={} rogue_reads={} reconnects={} longest_wait_ms={} \
             decided_alone={} answered_after_alone={} offline_reports={} offline_acked={} standing_lists={}",
            get(&self.reads_sent),
            get(&self.reads_resent),
            get(&self.commands_received),
            get(&self.commands_unmatched),
            get(&self.commands_bad_signature),
            get(&self.commands_expired),
            get(&self.commands_replayed),
            get(&self.reads_unanswered),
            get(&self.entries_opened),
            get(&self.entries_held),
            get(&self.exits_opened),
            get(&self.exits_held),
            get(&self.exits_paid),
            get(&self.misreads),
            get(&self.double_reads),
            get(&self.answers_conflicting),
            get(&self.rogue_reads),
            get(&self.reconnects),
            get(&self.longest_wait_ms),
            get(&self.decided_alone),
            get(&self.answered_after_alone),
            get(&self.offline_reports),
            get(&self.offline_acked),
            get(&self.standing_lists),
        )
    }
}
