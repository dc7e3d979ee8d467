//! A city model, seeded and reproducible: gated lots with entry and exit lanes, on-street zones
//! whose bays have sensors (some also cameras) reporting through a bridge, and the drivers who
//! park there. Bays are not listed one by one: a zone knows how many it has and names them.

use parkflow_protocol::{BayId, DeviceId, GateId, LotId, Plate, PlateColor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Letters and digits that occur on Chinese plates (no I, no O).
const PLATE_CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ0123456789";
const PLATE_LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";

/// How big a city to build.
#[derive(Debug, Clone)]
pub struct CityConfig {
    pub seed: u64,
    pub gated_lots: usize,
    /// Bays per gated lot.
    pub capacity: u32,
    pub drivers: usize,
    /// Share of drivers enrolled for leave-first, pay-later.
    pub enrolled_share: f64,
    /// Share of enrolled drivers suspended for arrears.
    pub suspended_share: f64,
    /// On-street zones and their bays (each with a sensor).
    pub zones: usize,
    pub bays_per_zone: u32,
    /// Share of zones whose sensors' events travel in bridge batches (the others: one message each).
    pub bridged_share: f64,
    /// Share of zones whose bays also have a camera reading plates.
    pub camera_share: f64,
}

impl CityConfig {
    /// A few lots, enough to watch sessions open and close.
    pub fn demo() -> Self {
        Self {
            seed: 7,
            gated_lots: 3,
            capacity: 60,
            drivers: 400,
            enrolled_share: 0.9,
            suspended_share: 0.02,
            zones: 2,
            bays_per_zone: 40,
            bridged_share: 0.5,
            camera_share: 1.0,
        }
    }

    /// A Hangzhou-sized city: 848,000 sensor bays in 2,120 zones of 400, and 300 gated lots.
    pub fn hangzhou() -> Self {
        Self {
            seed: 848,
            gated_lots: 300,
            capacity: 200,
            drivers: 50_000,
            enrolled_share: 0.8,
            suspended_share: 0.01,
            zones: 2_120,
            bays_per_zone: 400,
            bridged_share: 0.95,
            camera_share: 0.3,
        }
    }

    /// A named preset: `demo`, `district` (a tenth of a city) or `hangzhou`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "demo" => Some(Self::demo()),
            "district" => Some(Self {
                gated_lots: 30,
                zones: 212,
                drivers: 5_000,
                ..Self::hangzhou()
            }),
            "hangzhou" => Some(Self::hangzhou()),
            _ => None,
        }
    }
}

/// An on-street zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub id: LotId,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub bays: u32,
    /// Events go in bridge batches (else one message per event, still through the bridge's link).
    pub bridged: bool,
    pub cameras: bool,
}

fn valid<T, E>(parsed: Result<T, E>) -> T {
    parsed.unwrap_or_else(|_| unreachable!("valid by construction"))
}

impl Zone {
    /// The id of bay `i`.
    pub fn bay(&self, i: u32) -> BayId {
        valid(BayId::parse(&format!("b-{i:04}")))
    }

    /// The sensor of bay `i`.
    pub fn sensor(&self, i: u32) -> DeviceId {
        valid(DeviceId::parse(&format!("s-{}-{i:04}", self.id)))
    }

    /// The camera of bay `i` (in zones with cameras).
    pub fn camera(&self, i: u32) -> DeviceId {
        valid(DeviceId::parse(&format!("c-{}-{i:04}", self.id)))
    }

    /// The network-server bridge that carries the zone's traffic.
    pub fn bridge(&self) -> DeviceId {
        valid(DeviceId::parse(&format!("nb-{}", self.id)))
    }
}

/// A lane of a gated lot.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    pub gate: GateId,
    pub direction: LaneDirection,
    /// `false`: the lane's camera is left idle for an outside device.
    pub simulated: bool,
}

/// Which way a lane lets cars through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneDirection {
    Entry,
    Exit,
    Both,
}

/// A gated lot.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedLot {
    pub id: LotId,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub capacity: u32,
    pub lanes: Vec<Lane>,
}

/// A driver and their car.
#[derive(Debug, Clone, PartialEq)]
pub struct Driver {
    pub plate: Plate,
    pub plate_color: PlateColor,
    pub enrolled: bool,
    pub suspended: bool,
}

/// The whole city.
#[derive(Debug, Clone, PartialEq)]
pub struct City {
    pub lots: Vec<GatedLot>,
    pub zones: Vec<Zone>,
    pub drivers: Vec<Driver>,
}

impl City {
    /// Builds the city `config` describes; the same seed gives the same city.
    pub fn generate(config: &CityConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let lots = (0..config.gated_lots)
            .map(|i| {
                let id = LotId::parse(&format!("hz-gated-{i:03}"))
                    .unwrap_or_else(|_| unreachable!("valid by construction"));
                let lane = |name: &str, direction, simulated| Lane {
                    gate: GateId::parse(name)
                        .unwrap_or_else(|_| unreachable!("valid by construction")),
                    direction,
                    simulated,
                };
                GatedLot {
                    id,
                    name: format!("West Lake car park {}", i + 1),
                    // Around Hangzhou's West Lake.
                    lat: 30.25 + rng.random_range(-0.05..0.05),
                    lon: 120.15 + rng.random_range(-0.05..0.05),
                    capacity: config.capacity,
                    lanes: vec![
                        lane("in-1", LaneDirection::Entry, true),
                        lane("out-1", LaneDirection::Exit, true),
                        lane("ext-1", LaneDirection::Both, false),
                    ],
                }
            })
            .collect();
        let zones = (0..config.zones)
            .map(|i| Zone {
                id: valid(LotId::parse(&format!("hz-zone-{i:04}"))),
                name: format!("Street zone {}", i + 1),
                // Spread over the city around West Lake.
                lat: 30.25 + rng.random_range(-0.15..0.15),
                lon: 120.15 + rng.random_range(-0.15..0.15),
                bays: config.bays_per_zone,
                bridged: rng.random_bool(config.bridged_share),
                cameras: rng.random_bool(config.camera_share),
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut drivers = Vec::with_capacity(config.drivers);
        while drivers.len() < config.drivers {
            let green = rng.random_bool(0.2);
            let plate = random_plate(&mut rng, green);
            if !seen.insert(plate.clone()) {
                continue;
            }
            let enrolled = rng.random_bool(config.enrolled_share);
            drivers.push(Driver {
                plate,
                plate_color: if green {
                    PlateColor::Green
                } else {
                    PlateColor::Blue
                },
                enrolled,
                suspended: enrolled && rng.random_bool(config.suspended_share),
            });
        }
        Self {
            lots,
            zones,
            drivers,
        }
    }
}

/// A Zhejiang plate: 浙, a city letter, then 5 characters (ordinary) or D/F and 5 more (new energy).
pub fn random_plate(rng: &mut impl Rng, new_energy: bool) -> Plate {
    let mut plate = String::from("浙");
    plate.push(char::from(PLATE_LETTERS[rng.random_range(0..8)]));
    if new_energy {
        plate.push(if rng.random_bool(0.5) { 'D' } else { 'F' });
    }
    for _ in 0..5 {
        plate.push(char::from(
            PLATE_CHARS[rng.random_range(0..PLATE_CHARS.len())],
        ));
    }
    Plate::parse(&plate).unwrap_or_else(|_| unreachable!("valid by construction"))
}

/// The characters ANPR engines confuse (SPEC §3).
pub const CONFUSIONS: &[(char, char)] = &[
    ('0', 'D'),
    ('D', '0'),
    ('0', 'Q'),
    ('1', '7'),
    ('7', '1'),
    ('8', 'B'),
    ('B', '8'),
    ('5', 'S'),
    ('S', '5'),
    ('2', 'Z'),
    ('Z', '2'),
    ('6', 'G'),
    ('G', '6'),
];

/// The plate as a camera might misread it: one confusable character swapped, if it has one.
pub fn misread(plate: &Plate, rng: &mut impl Rng) -> Option<String> {
    let chars: Vec<char> = plate.as_str().chars().collect();
    let candidates: Vec<usize> = (2..chars.len())
        .filter(|i| CONFUSIONS.iter().any(|(from, _)| *from == chars[*i]))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let at = candidates[rng.random_range(0..candidates.len())];
    let options: Vec<char> = CONFUSIONS
        .iter()
        .filter(|(from, _)| *from == chars[at])
        .map(|(_, to)| *to)
        .collect();
    let mut misread = chars;
    misread[at] = options[rng.random_range(0..options.len())];
    Some(misread.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_builds_the_same_city() {
        assert_eq!(
            City::generate(&CityConfig::demo()),
            City::generate(&CityConfig::demo())
        );
    }

    #[test]
    fn every_lot_leaves_a_lane_for_an_outside_device() {
        let city = City::generate(&CityConfig::demo());
        assert!(
            city.lots
                .iter()
                .all(|lot| lot.lanes.iter().any(|lane| !lane.simulated))
        );
    }

    #[test]
    fn plates_are_valid_and_unique() {
        let city = City::generate(&CityConfig {
            drivers: 2_000,
            ..CityConfig::demo()
        });
        let unique: std::collections::HashSet<_> = city.drivers.iter().map(|d| &d.plate).collect();
        assert_eq!(unique.len(), 2_000);
    }

    #[test]
    fn a_misread_changes_one_confusable_character() {
        let mut rng = StdRng::seed_from_u64(1);
        let plate = Plate::parse("浙A0B123").unwrap();
        for _ in 0..20 {
            let read = misread(&plate, &mut rng).unwrap();
            let differing = read
                .chars()
                .zip(plate.as_str().chars())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 1);
        }
        assert!(misread(&Plate::parse("浙AHJKLM").unwrap(), &mut rng).is_none());
    }
}
