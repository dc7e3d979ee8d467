//! Every bay's state in 16 bytes, indexed by a dense bay number, with per-lot counts.
//!
//! Bays are numbered lot by lot at load time, so a lot is a contiguous range of bay numbers.
//! Invariants, after any sequence of calls: for every lot `free + occupied + unknown = total`,
//! and the counts equal a recount of the lot's bays.

use chrono::{DateTime, Duration, Utc};

/// A bay's number in the dense array.
pub(crate) type BayIdx = u32;
/// A lot's number (the registry's `LotIdx`).
pub(crate) type LotNo = u32;

/// What the platform believes about a bay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Occupancy {
    /// Never heard from, or silent past its heartbeat deadline.
    Unknown,
    Free,
    Occupied,
}

const UNKNOWN: u8 = 0;
const FREE: u8 = 1;
const OCCUPIED: u8 = 2;
const OCCUPANCY_MASK: u8 = 0b11;
const BATTERY_LOW: u8 = 0b100;

/// One bay: 16 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Bay {
    /// The `seq` of the last occupancy event applied (0: none yet).
    seq: u64,
    /// When the sensor was last heard, in seconds since the state's epoch (0: never).
    heard: u32,
    flags: u8,
}

impl Bay {
    fn occupancy(self) -> Occupancy {
        match self.flags & OCCUPANCY_MASK {
            FREE => Occupancy::Free,
            OCCUPIED => Occupancy::Occupied,
            _ => Occupancy::Unknown,
        }
    }

    fn set(&mut self, occupancy: Occupancy) {
        let bits = match occupancy {
            Occupancy::Unknown => UNKNOWN,
            Occupancy::Free => FREE,
            Occupancy::Occupied => OCCUPIED,
        };
        self.flags = (self.flags & !OCCUPANCY_MASK) | bits;
    }
}

/// A lot's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LotCounts {
    pub total: u32,
    pub free: u32,
    pub occupied: u32,
    pub unknown: u32,
}

impl LotCounts {
    fn slot(&mut self, occupancy: Occupancy) -> &mut u32 {
        match occupancy {
            Occupancy::Unknown => &mut self.unknown,
            Occupancy::Free => &mut self.free,
            Occupancy::Occupied => &mut self.occupied,
        }
    }
}

/// What a call did to a bay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// An event no newer than what was applied already (a repeat, or out of order): nothing changed.
    Stale,
    /// Heard from, same state.
    Unchanged,
    /// The bay's occupancy changed.
    Changed {
        lot: LotNo,
        from: Occupancy,
        to: Occupancy,
    },
}

/// Every bay of the city.
#[derive(Debug, Clone)]
pub(crate) struct OccupancyState {
    bays: Vec<Bay>,
    /// `lot_starts[lot]` is the first bay of `lot`; the last entry is the number of bays.
    lot_starts: Vec<BayIdx>,
    counts: Vec<LotCounts>,
    epoch: DateTime<Utc>,
}

impl OccupancyState {
    /// A city whose lot `i` has `bays_per_lot[i]` bays, all unknown. Times are kept as seconds
    /// since `epoch` (a u32 lasts 136 years).
    pub(crate) fn new(bays_per_lot: &[u32], epoch: DateTime<Utc>) -> Self {
        let mut lot_starts = Vec::with_capacity(bays_per_lot.len() + 1);
        let mut next: BayIdx = 0;
        for bays in bays_per_lot {
            lot_starts.push(next);
            next = next.saturating_add(*bays);
        }
        lot_starts.push(next);
        let counts = bays_per_lot
            .iter()
            .map(|&total| LotCounts {
                total,
                unknown: total,
                ..LotCounts::default()
            })
            .collect();
        Self {
            bays: vec![Bay::default(); next as usize],
            lot_starts,
            counts,
            epoch,
        }
    }

    /// The same city after the registry changed: a state for `bays_per_lot`, where new bay `n`
    /// carries what old bay `old_of(n)` knew (a bay without an old one starts unknown).
    pub(crate) fn remapped(
        &self,
        bays_per_lot: &[u32],
        old_of: impl Fn(BayIdx) -> Option<BayIdx>,
    ) -> Self {
        let mut state = Self::new(bays_per_lot, self.epoch);
        for bay in 0..state.bays.len() as BayIdx {
            if let Some(old) = old_of(bay).and_then(|old| self.bays.get(old as usize)) {
                let to = old.occupancy();
                state.bays[bay as usize] = *old;
                state.bays[bay as usize].set(Occupancy::Unknown);
                state.transition(bay, to);
            }
        }
        state
    }

    pub(crate) fn bays(&self) -> usize {
        self.bays.len()
    }

    /// The lot a bay belongs to.
    pub(crate) fn lot_of(&self, bay: BayIdx) -> LotNo {
        // The last start not after `bay`.
        (self.lot_starts.partition_point(|&start| start <= bay) - 1) as LotNo
    }

    /// The bay numbers of `lot`.
    pub(crate) fn bays_of(&self, lot: LotNo) -> std::ops::Range<BayIdx> {
        self.lot_starts[lot as usize]..self.lot_starts[lot as usize + 1]
    }

    pub(crate) fn counts(&self, lot: LotNo) -> LotCounts {
        self.counts[lot as usize]
    }

    pub(crate) fn occupancy(&self, bay: BayIdx) -> Occupancy {
        self.bays[bay as usize].occupancy()
    }

    pub(crate) fn battery_low(&self, bay: BayIdx) -> bool {
        self.bays[bay as usize].flags & BATTERY_LOW != 0
    }

    /// The `seq` of the last occupancy event applied to the bay (0: none).
    pub(crate) fn seq(&self, bay: BayIdx) -> u64 {
        self.bays[bay as usize].seq
    }

    /// When the bay's sensor was last heard (`None`: never).
    pub(crate) fn heard_at(&self, bay: BayIdx) -> Option<DateTime<Utc>> {
        let heard = self.bays[bay as usize].heard;
        (heard > 0).then(|| self.epoch + Duration::seconds(i64::from(heard)))
    }

    fn seconds(&self, at: DateTime<Utc>) -> u32 {
        u32::try_from((at - self.epoch).num_seconds().max(1)).unwrap_or(u32::MAX)
    }

    fn transition(&mut self, bay: BayIdx, to: Occupancy) -> Change {
        let lot = self.lot_of(bay);
        let from = self.bays[bay as usize].occupancy();
        if from == to {
            return Change::Unchanged;
        }
        self.bays[bay as usize].set(to);
        let counts = &mut self.counts[lot as usize];
        *counts.slot(from) -= 1;
        *counts.slot(to) += 1;
        Change::Changed { lot, from, to }
    }

    /// An occupancy event: applied only if its `seq` is above the last applied one.
    pub(crate) fn apply(
        &mut self,
        bay: BayIdx,
        occupied: bool,
        seq: u64,
        at: DateTime<Utc>,
    ) -> Change {
        let heard = self.seconds(at);
        let state = &mut self.bays[bay as usize];
        if seq <= state.seq {
            return Change::Stale;
        }
        state.seq = seq;
        state.heard = state.heard.max(heard);
        self.transition(
            bay,
            if occupied {
                Occupancy::Occupied
            } else {
                Occupancy::Free
            },
        )
    }

    /// A heartbeat: the sensor is alive, and its current state wins unless it is older than an
    /// event already applied (`seq` below the applied one).
    pub(crate) fn heartbeat(
        &mut self,
        bay: BayIdx,
        occupied: bool,
        seq: u64,
        battery_low: bool,
        at: DateTime<Utc>,
    ) -> Change {
        let heard = self.seconds(at);
        let state = &mut self.bays[bay as usize];
        state.heard = state.heard.max(heard);
        state.flags = if battery_low {
            state.flags | BATTERY_LOW
        } else {
            state.flags & !BATTERY_LOW
        };
        if seq < state.seq {
            return Change::Stale;
        }
        state.seq = seq;
        self.transition(
            bay,
            if occupied {
                Occupancy::Occupied
            } else {
                Occupancy::Free
            },
        )
    }

    /// Bays not heard from within `deadline` of `now` become unknown; returns those that did.
    pub(crate) fn expire(&mut self, now: DateTime<Utc>, deadline: Duration) -> Vec<BayIdx> {
        let cutoff = self.seconds(now - deadline);
        let silent: Vec<BayIdx> = (0..self.bays.len() as BayIdx)
            .filter(|&b| {
                let bay = self.bays[b as usize];
                bay.occupancy() != Occupancy::Unknown && bay.heard < cutoff
            })
            .collect();
        for &bay in &silent {
            self.transition(bay, Occupancy::Unknown);
        }
        silent
    }

    /// A bay's state as remembered from before a restart, heard at `at`.
    pub(crate) fn restore(&mut self, bay: BayIdx, occupied: bool, seq: u64, at: DateTime<Utc>) {
        let heard = self.seconds(at);
        let state = &mut self.bays[bay as usize];
        state.seq = state.seq.max(seq);
        state.heard = state.heard.max(heard);
        self.transition(
            bay,
            if occupied {
                Occupancy::Occupied
            } else {
                Occupancy::Free
            },
        );
    }

    /// Records what a sensor said of its battery (`None`: it said nothing).
    pub(crate) fn set_battery_low(&mut self, bay: BayIdx, low: Option<bool>) {
        if let Some(low) = low {
            let state = &mut self.bays[bay as usize];
            state.flags = if low {
                state.flags | BATTERY_LOW
            } else {
                state.flags & !BATTERY_LOW
            };
        }
    }

    /// A bay whose device went offline (its last will) is unknown until heard from again.
    pub(crate) fn offline(&mut self, bay: BayIdx) -> Change {
        self.transition(bay, Occupancy::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn state() -> OccupancyState {
        OccupancyState::new(&[3, 0, 2], t(0))
    }

    #[test]
    fn a_bay_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Bay>(), 16);
    }

    #[test]
    fn bays_are_numbered_lot_by_lot() {
        let state = state();
        assert_eq!(
            (
                state.lot_of(0),
                state.lot_of(2),
                state.lot_of(3),
                state.lot_of(4)
            ),
            (0, 0, 2, 2)
        );
        assert_eq!(state.bays_of(1), 3..3);
        assert_eq!(
            state.counts(2),
            LotCounts {
                total: 2,
                free: 0,
                occupied: 0,
                unknown: 2
            }
        );
    }

    #[test]
    fn events_apply_in_seq_order_and_stale_ones_change_nothing() {
        let mut state = state();
        assert_eq!(
            state.apply(1, true, 5, t(10)),
            Change::Changed {
                lot: 0,
                from: Occupancy::Unknown,
                to: Occupancy::Occupied
            }
        );
        assert_eq!(
            state.apply(1, false, 4, t(11)),
            Change::Stale,
            "out of order"
        );
        assert_eq!(state.apply(1, true, 5, t(12)), Change::Stale, "repeated");
        assert_eq!(state.occupancy(1), Occupancy::Occupied);
        assert_eq!(
            state.apply(1, false, 6, t(13)),
            Change::Changed {
                lot: 0,
                from: Occupancy::Occupied,
                to: Occupancy::Free
            }
        );
        assert_eq!(
            state.counts(0),
            LotCounts {
                total: 3,
                free: 1,
                occupied: 0,
                unknown: 2
            }
        );
    }

    #[test]
    fn a_heartbeat_converges_a_bay_whose_event_was_lost() {
        let mut state = state();
        state.apply(0, true, 1, t(1));
        // Event 2 (free) was lost; the heartbeat says free with seq 2.
        assert!(matches!(
            state.heartbeat(0, false, 2, false, t(60)),
            Change::Changed {
                to: Occupancy::Free,
                ..
            }
        ));
        // An older heartbeat than the applied event changes nothing but still says the sensor lives.
        state.apply(0, true, 3, t(61));
        assert_eq!(state.heartbeat(0, false, 2, true, t(62)), Change::Stale);
        assert_eq!(state.occupancy(0), Occupancy::Occupied);
        assert!(state.battery_low(0));
    }

    #[test]
    fn a_silent_sensor_turns_its_bay_unknown() {
        let mut state = state();
        state.apply(0, true, 1, t(0));
        state.apply(1, false, 1, t(0));
        state.heartbeat(1, false, 1, false, t(500));
        assert_eq!(state.expire(t(700), Duration::seconds(600)), vec![0]);
        assert_eq!(state.occupancy(0), Occupancy::Unknown);
        assert_eq!(state.occupancy(1), Occupancy::Free);
        assert_eq!(
            state.counts(0),
            LotCounts {
                total: 3,
                free: 1,
                occupied: 0,
                unknown: 2
            }
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Event {
            bay: u32,
            occupied: bool,
            seq: u64,
            at: i64,
        },
        Heartbeat {
            bay: u32,
            occupied: bool,
            seq: u64,
            at: i64,
        },
        Expire {
            at: i64,
        },
        Offline {
            bay: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..20u32, any::<bool>(), 0..30u64, 0..5_000i64).prop_map(
                |(bay, occupied, seq, at)| Op::Event {
                    bay,
                    occupied,
                    seq,
                    at
                }
            ),
            (0..20u32, any::<bool>(), 0..30u64, 0..5_000i64).prop_map(
                |(bay, occupied, seq, at)| Op::Heartbeat {
                    bay,
                    occupied,
                    seq,
                    at
                }
            ),
            (0..5_000i64).prop_map(|at| Op::Expire { at }),
            (0..20u32).prop_map(|bay| Op::Offline { bay }),
        ]
    }

    proptest! {
        #[test]
        fn counts_always_match_a_recount(ops in proptest::collection::vec(op(), 0..200)) {
            let mut state = OccupancyState::new(&[5, 0, 7, 8], t(0));
            for op in ops {
                match op {
                    Op::Event { bay, occupied, seq, at } => { state.apply(bay, occupied, seq, t(at)); }
                    Op::Heartbeat { bay, occupied, seq, at } => { state.heartbeat(bay, occupied, seq, false, t(at)); }
                    Op::Expire { at } => { state.expire(t(at), Duration::seconds(600)); }
                    Op::Offline { bay } => { state.offline(bay); }
                }
                for lot in 0..4 {
                    let counts = state.counts(lot);
                    let mut recount = LotCounts { total: counts.total, ..LotCounts::default() };
                    for bay in state.bays_of(lot) {
                        *recount.slot(state.occupancy(bay)) += 1;
                    }
                    prop_assert_eq!(counts, recount);
                    prop_assert_eq!(counts.free + counts.occupied + counts.unknown, counts.total);
                }
            }
        }

        #[test]
        fn the_highest_seq_wins_whatever_the_order(mut events in proptest::collection::vec((any::<bool>(), 1..1_000u64), 1..30)) {
            let mut state = OccupancyState::new(&[1], t(0));
            for (occupied, seq) in &events {
                state.apply(0, *occupied, *seq, t(1));
            }
            events.sort_by_key(|(_, seq)| *seq);
            let highest = events.last().map(|(_, seq)| *seq).unwrap();
            let winner = events.iter().find(|(_, seq)| *seq == highest).map(|(o, _)| *o).unwrap();
            // With duplicate seqs the first one delivered wins; among distinct seqs the highest does.
            if events.iter().filter(|(_, seq)| *seq == highest).count() == 1 {
                prop_assert_eq!(state.occupancy(0), if winner { Occupancy::Occupied } else { Occupancy::Free });
            }
        }

        #[test]
        fn a_renumbered_city_keeps_what_each_bay_knew(
            ops in proptest::collection::vec(op(), 0..100),
            inserted in 0..4u32,
        ) {
            // Lot 2 gains `inserted` bays at its start: its old bays move up by that much.
            let mut state = OccupancyState::new(&[5, 0, 7, 8], t(0));
            for op in ops {
                if let Op::Event { bay, occupied, seq, at } = op {
                    state.apply(bay, occupied, seq, t(at));
                }
            }
            let old_of = |bay: BayIdx| match bay {
                0..5 => Some(bay),
                b if b < 5 + inserted => None,
                b => Some(b - inserted),
            };
            let renumbered = state.remapped(&[5, 0, 7 + inserted, 8], old_of);
            for bay in 0..renumbered.bays() as BayIdx {
                let expected = old_of(bay).map_or(Occupancy::Unknown, |old| state.occupancy(old));
                prop_assert_eq!(renumbered.occupancy(bay), expected);
            }
            for lot in 0..4 {
                let counts = renumbered.counts(lot);
                prop_assert_eq!(counts.free + counts.occupied + counts.unknown, counts.total);
            }
            prop_assert_eq!(renumbered.counts(2).total, 7 + inserted);
        }
    }
}
