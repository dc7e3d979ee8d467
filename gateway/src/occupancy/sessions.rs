//! On-street stays (SPEC §3): a bay going occupied opens a bay session, bay camera reads attach
//! the plate (the best confidence wins), the bay going free closes it, priced with the lot's
//! tariff; one without a plate goes to review; stays past the lot's maximum are flagged once.
//!
//! Plain data and functions: the occupancy actor feeds transitions in and writes what comes out.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use parkflow_billing::Stay;
use parkflow_protocol::{EventId, Plate, PlateColor};
use uuid::Uuid;

use super::Occupancy;
use crate::registry::{BayIdx, Lot};

/// A plate read waits this long for its bay to go occupied (a camera may fire before the sensor).
pub(crate) const PENDING_PLATE_WINDOW: Duration = Duration::seconds(120);

/// The best plate read of a stay.
#[derive(Debug, Clone, PartialEq)]
pub struct BayPlate {
    pub plate: Plate,
    pub color: Option<PlateColor>,
    pub confidence: f64,
    pub event_id: EventId,
    pub observed_at: DateTime<Utc>,
}

/// A stay in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenBaySession {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    /// Boxed: a city holds hundreds of thousands of open stays and most have no read, so the
    /// read's ~70 bytes are paid only by those that do (a stay is 40 bytes, not 96).
    pub plate: Option<Box<BayPlate>>,
    pub overstay_flagged: bool,
}

const _: () = assert!(std::mem::size_of::<OpenBaySession>() <= 40);

/// How a stay ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BayEnd {
    /// Priced: billing charges it (a `sessions` row with this fee).
    Priced {
        plate: BayPlate,
        /// The plate holds a pass for the lot: the stay is free (SPEC §4).
        pass_holder: bool,
        tariff_from: DateTime<Utc>,
        fee_minor: i64,
        currency: String,
    },
    /// A plate but no tariff that prices the stay: review.
    Unpriced { plate: BayPlate },
    /// Nobody read a plate: review.
    NoPlate,
    /// The bay's sensor skipped `seq`s and reported occupied again: a departure and an arrival
    /// were lost, so where this stay ended is not known. Review (`missed_exit`), never billed as is.
    Interrupted { plate: Option<BayPlate> },
}

/// What the actor writes for the stays.
#[derive(Debug, Clone, PartialEq)]
pub enum BaySessionWrite {
    Open {
        id: Uuid,
        bay: BayIdx,
        started_at: DateTime<Utc>,
        plate: Option<BayPlate>,
    },
    Plate {
        id: Uuid,
        plate: BayPlate,
    },
    Close {
        id: Uuid,
        bay: BayIdx,
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
        end: BayEnd,
    },
    Overstay {
        id: Uuid,
        bay: BayIdx,
        at: DateTime<Utc>,
    },
}

/// Every open stay, by bay.
#[derive(Debug, Default)]
pub(crate) struct BaySessions {
    open: HashMap<BayIdx, OpenBaySession>,
    /// Plate reads that came before their bay went occupied.
    pending: HashMap<BayIdx, BayPlate>,
    /// When each bay last went free (for a while): a read from before then is of the car that left.
    freed: HashMap<BayIdx, DateTime<Utc>>,
}

impl BaySessions {
    /// Stays that were open when the platform last stopped.
    pub(crate) fn restore(open: impl IntoIterator<Item = (BayIdx, OpenBaySession)>) -> Self {
        Self {
            open: open.into_iter().collect(),
            pending: HashMap::new(),
            freed: HashMap::new(),
        }
    }

    /// Renumbers the bays after the registry changed; stays of bays that are gone are forgotten
    /// here (their rows stay open in the database for an operator).
    pub(crate) fn remap(&mut self, new_of: impl Fn(BayIdx) -> Option<BayIdx>) {
        self.open = std::mem::take(&mut self.open)
            .into_iter()
            .filter_map(|(bay, session)| Some((new_of(bay)?, session)))
            .collect();
        self.pending = std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|(bay, plate)| Some((new_of(bay)?, plate)))
            .collect();
        self.freed = std::mem::take(&mut self.freed)
            .into_iter()
            .filter_map(|(bay, at)| Some((new_of(bay)?, at)))
            .collect();
    }

    /// Forgets what is known of these bays (their lot is another gateway node's now).
    pub(crate) fn forget(&mut self, of: impl Fn(BayIdx) -> bool) {
        self.open.retain(|&bay, _| !of(bay));
        self.pending.retain(|&bay, _| !of(bay));
        self.freed.retain(|&bay, _| !of(bay));
    }

    /// A stay open in the database, taken in as a gateway node adopts its lot.
    pub(crate) fn adopt(&mut self, bay: BayIdx, session: OpenBaySession) {
        self.open.insert(bay, session);
    }

    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn get(&self, bay: BayIdx) -> Option<&OpenBaySession> {
        self.open.get(&bay)
    }

    /// A bay's occupancy changed at `at`: opens a stay when it became occupied, closes (and
    /// prices) the stay when it became free. A bay going unknown (silent sensor) keeps its stay.
    #[cfg(test)]
    pub(crate) fn on_change(
        &mut self,
        lot: &Lot,
        bay: BayIdx,
        to: Occupancy,
        at: DateTime<Utc>,
    ) -> Option<BaySessionWrite> {
        self.on_change_with_passes(lot, bay, to, at, |_, _| false)
    }

    /// [`Self::on_change`], knowing which plates hold a pass for the lot at a time.
    pub(crate) fn on_change_with_passes(
        &mut self,
        lot: &Lot,
        bay: BayIdx,
        to: Occupancy,
        at: DateTime<Utc>,
        has_pass: impl Fn(&Plate, DateTime<Utc>) -> bool,
    ) -> Option<BaySessionWrite> {
        match to {
            Occupancy::Occupied if !self.open.contains_key(&bay) => {
                let plate = self
                    .pending
                    .remove(&bay)
                    .filter(|p| p.observed_at >= at - PENDING_PLATE_WINDOW);
                let session = OpenBaySession {
                    id: Uuid::now_v7(),
                    started_at: at,
                    plate: plate.clone().map(Box::new),
                    overstay_flagged: false,
                };
                let write = BaySessionWrite::Open {
                    id: session.id,
                    bay,
                    started_at: at,
                    plate,
                };
                self.open.insert(bay, session);
                Some(write)
            }
            Occupancy::Free => {
                let session = self.open.remove(&bay)?;
                let ended_at = at.max(session.started_at);
                self.freed.insert(bay, ended_at);
                Some(BaySessionWrite::Close {
                    id: session.id,
                    bay,
                    started_at: session.started_at,
                    ended_at,
                    end: price(lot, &session, ended_at, has_pass),
                })
            }
            _ => None,
        }
    }

    /// The sensor of an occupied bay skipped `seq`s and still says occupied: the stay in progress
    /// may be two cars'. It ends for review at `last_heard` and a new one starts at `at`.
    pub(crate) fn interrupted(
        &mut self,
        bay: BayIdx,
        last_heard: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Vec<BaySessionWrite> {
        let Some(session) = self.open.remove(&bay) else {
            return Vec::new();
        };
        let ended_at = last_heard
            .unwrap_or(at)
            .clamp(session.started_at, at.max(session.started_at));
        self.freed.insert(bay, ended_at);
        let next = OpenBaySession {
            id: Uuid::now_v7(),
            started_at: at,
            plate: None,
            overstay_flagged: false,
        };
        let writes = vec![
            BaySessionWrite::Close {
                id: session.id,
                bay,
                started_at: session.started_at,
                ended_at,
                end: BayEnd::Interrupted {
                    plate: session.plate.map(|p| *p),
                },
            },
            BaySessionWrite::Open {
                id: next.id,
                bay,
                started_at: at,
                plate: None,
            },
        ];
        self.open.insert(bay, next);
        writes
    }

    /// A plate read for a bay: attached to its stay if better than what it has; kept for a
    /// moment if the bay is not occupied yet.
    pub(crate) fn plate(&mut self, bay: BayIdx, read: BayPlate) -> Option<BaySessionWrite> {
        let Some(session) = self.open.get_mut(&bay) else {
            if self
                .freed
                .get(&bay)
                .is_some_and(|&freed| read.observed_at <= freed)
            {
                // A late read of the car that just left.
                return None;
            }
            let better = self.pending.get(&bay).is_none_or(|p| {
                read.confidence > p.confidence
                    || read.observed_at > p.observed_at + PENDING_PLATE_WINDOW
            });
            if better {
                self.pending.insert(bay, read);
            }
            return None;
        };
        let before_departure = self
            .freed
            .get(&bay)
            .is_some_and(|&freed| read.observed_at <= freed);
        if before_departure || read.observed_at < session.started_at - PENDING_PLATE_WINDOW {
            // A read of an earlier car.
            return None;
        }
        let better = session
            .plate
            .as_ref()
            .is_none_or(|p| read.confidence > p.confidence);
        if !better {
            return None;
        }
        session.plate = Some(Box::new(read.clone()));
        Some(BaySessionWrite::Plate {
            id: session.id,
            plate: read,
        })
    }

    /// Flags the stays past their lot's maximum, once each.
    pub(crate) fn overstays(
        &mut self,
        now: DateTime<Utc>,
        max_stay_of: impl Fn(BayIdx) -> Option<Duration>,
    ) -> Vec<BaySessionWrite> {
        let mut flagged = Vec::new();
        for (&bay, session) in &mut self.open {
            if session.overstay_flagged {
                continue;
            }
            if let Some(max) = max_stay_of(bay)
                && now - session.started_at > max
            {
                session.overstay_flagged = true;
                flagged.push(BaySessionWrite::Overstay {
                    id: session.id,
                    bay,
                    at: now,
                });
            }
        }
        // Forget plate reads whose car never showed, and departures long past.
        self.pending
            .retain(|_, p| p.observed_at >= now - PENDING_PLATE_WINDOW);
        self.freed
            .retain(|_, &mut freed| freed >= now - PENDING_PLATE_WINDOW);
        give_back(&mut self.pending);
        give_back(&mut self.freed);
        flagged
    }
}

/// Hands back the room a burst left in `map` once it is a quarter full (a city's burst of
/// departures fills `freed` with 424,000 entries for two minutes; 17 MB stayed after).
fn give_back<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    let floor = map.len().max(1_024);
    if map.capacity() > 4 * floor {
        map.shrink_to(2 * floor);
    }
}

/// Prices a finished stay with the tariff in force at its start.
fn price(
    lot: &Lot,
    session: &OpenBaySession,
    ended_at: DateTime<Utc>,
    has_pass: impl Fn(&Plate, DateTime<Utc>) -> bool,
) -> BayEnd {
    let Some(plate) = session.plate.as_deref().cloned() else {
        return BayEnd::NoPlate;
    };
    let pass_holder = has_pass(&plate.plate, session.started_at);
    let stay = Stay {
        entered_at: session.started_at,
        exited_at: ended_at,
        plate_color: plate.color,
        pass_holder,
    };
    let priced = lot
        .tariffs
        .in_force_at(session.started_at)
        .and_then(|tariff| {
            let fee = tariff.fee(&stay).ok()?;
            Some((
                tariff.effective_from(),
                fee.to_minor().ok()?,
                fee.currency(),
            ))
        });
    match priced {
        Some((tariff_from, fee_minor, currency)) => BayEnd::Priced {
            plate,
            pass_holder,
            tariff_from,
            fee_minor,
            currency: currency.as_str().to_owned(),
        },
        None => BayEnd::Unpriced { plate },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkflow_billing::{TariffDefinition, TariffSchedule};
    use parkflow_protocol::{DeviceAuth, LotId};

    use crate::registry::{Location, LotKind};

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::minutes(minutes)
    }

    fn lot(priced: bool) -> Lot {
        let mut tariffs = TariffSchedule::default();
        if priced {
            let definition: TariffDefinition = serde_json::from_str(
                r#"{"currency": "CNY", "time_zone": "Asia/Shanghai", "grace_minutes": 0, "unit_minutes": 15,
                    "bands": [{"from": "00:00", "to": "00:00", "unit_price": "2.00"}],
                    "effective_from": "2026-01-01T00:00:00Z"}"#,
            )
            .unwrap();
            tariffs.add(definition.validate().unwrap()).unwrap();
        }
        Lot {
            idx: 0,
            id: LotId::parse("zone").unwrap(),
            operator_id: "op".into(),
            name: "Zone".into(),
            kind: LotKind::OnStreet,
            location: Location {
                lat: 30.0,
                lon: 120.0,
            },
            capacity: 4,
            time_zone: "Asia/Shanghai".into(),
            device_auth: DeviceAuth::Signed,
            tariffs,
            offline_policy: Default::default(),
            review_pictures: false,
            max_stay: Some(Duration::minutes(120)),
        }
    }

    fn read(plate: &str, confidence: f64, at: DateTime<Utc>) -> BayPlate {
        BayPlate {
            plate: Plate::parse(plate).unwrap(),
            color: None,
            confidence,
            event_id: EventId::parse(&format!("e-{}", (confidence * 100.0) as u32)).unwrap(),
            observed_at: at,
        }
    }

    #[test]
    fn the_best_plate_read_prices_the_stay_when_the_bay_goes_free() {
        let (lot, mut stays) = (lot(true), BaySessions::default());
        assert!(matches!(
            stays.on_change(&lot, 0, Occupancy::Occupied, t(0)),
            Some(BaySessionWrite::Open { plate: None, .. })
        ));
        assert!(stays.plate(0, read("浙A12345", 0.9, t(1))).is_some());
        assert!(
            stays.plate(0, read("浙A1234S", 0.5, t(2))).is_none(),
            "a worse read changes nothing"
        );
        // A silent sensor keeps the stay open.
        assert!(
            stays
                .on_change(&lot, 0, Occupancy::Unknown, t(10))
                .is_none()
        );
        let Some(BaySessionWrite::Close {
            end,
            started_at,
            ended_at,
            ..
        }) = stays.on_change(&lot, 0, Occupancy::Free, t(40))
        else {
            panic!("the stay closes")
        };
        assert_eq!((started_at, ended_at), (t(0), t(40)));
        match end {
            // 40 minutes: three 15-minute units at 2.00.
            BayEnd::Priced {
                plate,
                fee_minor,
                currency,
                ..
            } => {
                assert_eq!(
                    (plate.plate.as_str(), fee_minor, currency.as_str()),
                    ("浙A12345", 600, "CNY")
                );
            }
            other => panic!("expected a priced stay, got {other:?}"),
        }
        assert_eq!(stays.open_count(), 0);
    }

    #[test]
    fn a_stay_without_a_plate_or_a_tariff_goes_to_review() {
        let mut stays = BaySessions::default();
        stays.on_change(&lot(true), 1, Occupancy::Occupied, t(0));
        let closed = stays.on_change(&lot(true), 1, Occupancy::Free, t(30));
        assert!(matches!(
            closed,
            Some(BaySessionWrite::Close {
                end: BayEnd::NoPlate,
                ..
            })
        ));
        stays.on_change(&lot(false), 2, Occupancy::Occupied, t(0));
        stays.plate(2, read("浙B54321", 0.8, t(1)));
        let closed = stays.on_change(&lot(false), 2, Occupancy::Free, t(30));
        assert!(matches!(
            closed,
            Some(BaySessionWrite::Close {
                end: BayEnd::Unpriced { .. },
                ..
            })
        ));
    }

    #[test]
    fn a_plate_read_just_before_the_sensor_reports_joins_the_stay() {
        let mut stays = BaySessions::default();
        assert!(stays.plate(3, read("浙C11111", 0.7, t(0))).is_none());
        let opened = stays.on_change(&lot(true), 3, Occupancy::Occupied, t(1));
        assert!(matches!(
            opened,
            Some(BaySessionWrite::Open { plate: Some(_), .. })
        ));
        // A read long before is some earlier car's.
        assert!(stays.plate(1, read("浙C22222", 0.7, t(0))).is_none());
        let opened = stays.on_change(&lot(true), 1, Occupancy::Occupied, t(10));
        assert!(matches!(
            opened,
            Some(BaySessionWrite::Open { plate: None, .. })
        ));
    }

    #[test]
    fn a_late_read_of_the_car_that_left_is_not_the_next_cars_plate() {
        let mut stays = BaySessions::default();
        stays.on_change(&lot(true), 0, Occupancy::Occupied, t(0));
        stays.on_change(&lot(true), 0, Occupancy::Free, t(30));
        // Read at 29 minutes (before the car left), delivered after.
        assert!(stays.plate(0, read("浙D33333", 0.9, t(29))).is_none());
        let opened = stays.on_change(&lot(true), 0, Occupancy::Occupied, t(31));
        assert!(matches!(
            opened,
            Some(BaySessionWrite::Open { plate: None, .. })
        ));
    }

    #[test]
    fn a_gap_in_seq_while_occupied_ends_the_stay_for_review_and_starts_another() {
        let mut stays = BaySessions::default();
        stays.on_change(&lot(true), 0, Occupancy::Occupied, t(0));
        stays.plate(0, read("浙E44444", 0.9, t(1)));
        let writes = stays.interrupted(0, Some(t(20)), t(90));
        assert!(matches!(
            &writes[..],
            [
                BaySessionWrite::Close {
                    end: BayEnd::Interrupted { plate: Some(_) },
                    ..
                },
                BaySessionWrite::Open { plate: None, .. }
            ]
        ));
        assert_eq!(stays.get(0).unwrap().started_at, t(90));
        assert!(stays.interrupted(5, None, t(90)).is_empty());
    }

    #[test]
    fn a_pass_holders_stay_is_free() {
        let mut stays = BaySessions::default();
        let lot = lot(true);
        stays.on_change(&lot, 0, Occupancy::Occupied, t(0));
        stays.plate(0, read("浙F55555", 0.9, t(1)));
        let closed = stays.on_change_with_passes(&lot, 0, Occupancy::Free, t(40), |plate, _| {
            plate.as_str() == "浙F55555"
        });
        assert!(matches!(
            closed,
            Some(BaySessionWrite::Close {
                end: BayEnd::Priced {
                    pass_holder: true,
                    fee_minor: 0,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn an_overstay_is_flagged_once() {
        let mut stays = BaySessions::default();
        stays.on_change(&lot(true), 0, Occupancy::Occupied, t(0));
        let max = |_| Some(Duration::minutes(120));
        assert!(stays.overstays(t(119), max).is_empty());
        assert_eq!(stays.overstays(t(121), max).len(), 1);
        assert!(stays.overstays(t(200), max).is_empty());
        assert!(stays.get(0).unwrap().overstay_flagged);
    }
}
