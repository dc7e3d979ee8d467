//! Finding the lots near a point: an R*-tree over the lots' positions on the unit sphere.
//!
//! A position is stored as a 3-D unit vector, so straight-line (chord) distance between two
//! points grows with their great-circle distance everywhere on Earth, poles and the antimeridian
//! included; the tree's nearest-first walk is then nearest-first on the ground too.

use rstar::primitives::GeomWithData;
use rstar::{PointDistance, RTree};

use super::LotIdx;

/// Mean Earth radius in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

type Entry = GeomWithData<[f64; 3], LotIdx>;

/// A spatial index of lot positions.
#[derive(Debug, Default)]
pub struct LotLocator {
    tree: RTree<Entry>,
}

fn unit_vector(lat: f64, lon: f64) -> [f64; 3] {
    let (lat, lon) = (lat.to_radians(), lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

/// Great-circle distance in metres for a chord of the unit sphere.
fn metres(chord: f64) -> f64 {
    2.0 * EARTH_RADIUS_M * (chord / 2.0).clamp(0.0, 1.0).asin()
}

/// The chord of the unit sphere for a great-circle distance in metres.
fn chord(metres: f64) -> f64 {
    let angle = (metres / EARTH_RADIUS_M).min(std::f64::consts::PI);
    2.0 * (angle / 2.0).sin()
}

impl LotLocator {
    /// Indexes `(lot, lat, lon)` triples.
    pub fn new(lots: impl IntoIterator<Item = (LotIdx, f64, f64)>) -> Self {
        let entries = lots
            .into_iter()
            .map(|(lot, lat, lon)| GeomWithData::new(unit_vector(lat, lon), lot))
            .collect();
        Self {
            tree: RTree::bulk_load(entries),
        }
    }

    /// Up to `limit` lots within `radius_m` of the point, nearest first, with their distance in metres.
    ///
    /// The lots within the radius are gathered without ordering (cheap: no queue of tree nodes)
    /// and sorted; only when more than [`GATHER_AT_MOST`] are within it does the tree's
    /// nearest-first walk take over, which stops after `limit` lots however many are near.
    pub fn near(&self, lat: f64, lon: f64, radius_m: f64, limit: usize) -> Vec<(LotIdx, f64)> {
        let point = unit_vector(lat, lon);
        let max_chord = chord(radius_m);
        let max_d2 = max_chord * max_chord;
        let mut within = Vec::new();
        for entry in self.tree.locate_within_distance(point, max_d2) {
            if within.len() == GATHER_AT_MOST {
                return self
                    .tree
                    .nearest_neighbor_iter_with_distance_2(point)
                    .take_while(|(_, d2)| *d2 <= max_d2)
                    .take(limit)
                    .map(|(entry, d2)| (entry.data, metres(d2.sqrt())))
                    .collect();
            }
            within.push((entry.data, entry.distance_2(&point)));
        }
        let nearer = |a: &(LotIdx, f64), b: &(LotIdx, f64)| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0));
        if within.len() > limit && limit > 0 {
            within.select_nth_unstable_by(limit - 1, nearer);
        }
        within.truncate(limit);
        within.sort_unstable_by(nearer);
        within
            .into_iter()
            .map(|(lot, d2)| (lot, metres(d2.sqrt())))
            .collect()
    }
}

/// Lots gathered within a radius before [`LotLocator::near`] walks nearest-first instead.
const GATHER_AT_MOST: usize = 1_024;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Haversine distance, the plain formula, to check the index against.
    fn haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
        let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (b.1 - a.1).to_radians();
        let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * h.sqrt().asin()
    }

    #[test]
    fn nearest_lots_come_first_and_far_ones_are_left_out() {
        let hangzhou = (30.2741, 120.1551);
        let locator = LotLocator::new([
            (0, 30.2800, 120.1600), // ~800 m
            (1, 30.2745, 120.1555), // ~60 m
            (2, 31.2304, 121.4737), // Shanghai, ~165 km
            (3, 30.2700, 120.1500), // ~700 m
        ]);
        let near = locator.near(hangzhou.0, hangzhou.1, 2_000.0, 10);
        let lots: Vec<LotIdx> = near.iter().map(|(lot, _)| *lot).collect();
        assert_eq!(lots, vec![1, 3, 0]);
        assert!((near[0].1 - haversine(hangzhou, (30.2745, 120.1555))).abs() < 0.5);
        assert_eq!(locator.near(hangzhou.0, hangzhou.1, 2_000.0, 2).len(), 2);
        assert_eq!(locator.near(hangzhou.0, hangzhou.1, 10.0, 10).len(), 0);
    }

    #[test]
    fn many_lots_within_the_radius_are_walked_nearest_first() {
        // More lots within the radius than are gathered: the nearest-first walk answers, and
        // agrees with gathering fewer.
        let lots = (0..GATHER_AT_MOST as u32 * 2).map(|i| {
            (
                i,
                30.0 + f64::from(i % 50) * 1e-4,
                120.0 + f64::from(i / 50) * 1e-4,
            )
        });
        let locator = LotLocator::new(lots);
        let walked = locator.near(30.0025, 120.002, 5_000.0, 20);
        assert_eq!(walked.len(), 20);
        assert!(walked.windows(2).all(|pair| pair[0].1 <= pair[1].1));
        let gathered = locator.near(30.0025, 120.002, walked[19].1 + 0.01, 20);
        assert_eq!(
            gathered.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
            walked.iter().map(|(_, d)| *d).collect::<Vec<_>>()
        );
        // Past the gathering bound the radius still holds: a corner of the grid is ~340 m from
        // its centre, so a 230 m radius leaves some lots out.
        let within = locator.near(30.0025, 120.002, 230.0, usize::MAX);
        assert!(within.len() > GATHER_AT_MOST && within.len() < GATHER_AT_MOST * 2);
        assert!(within.iter().all(|(_, d)| *d <= 230.0));
    }

    #[test]
    fn lots_across_the_antimeridian_are_near_each_other() {
        let locator = LotLocator::new([(0, 0.0, 179.9995), (1, 0.0, 170.0)]);
        let near = locator.near(0.0, -179.9995, 500.0, 10);
        assert_eq!(near.len(), 1);
        assert_eq!(near[0].0, 0);
    }

    proptest! {
        #[test]
        fn the_index_agrees_with_a_scan(
            points in proptest::collection::vec((-60.0f64..60.0, -179.0f64..179.0), 1..60),
            center in (-60.0f64..60.0, -179.0f64..179.0),
            radius in 1_000.0f64..3_000_000.0,
        ) {
            let locator = LotLocator::new(points.iter().enumerate().map(|(i, p)| (i as LotIdx, p.0, p.1)));
            let found = locator.near(center.0, center.1, radius, usize::MAX);
            let mut expected: Vec<(LotIdx, f64)> = points
                .iter()
                .enumerate()
                .map(|(i, p)| (i as LotIdx, haversine(center, *p)))
                .filter(|(_, d)| *d <= radius)
                .collect();
            expected.sort_by(|a, b| a.1.total_cmp(&b.1));
            // Points within a metre of the edge may fall either side through rounding.
            let near_edge = |d: f64| (d - radius).abs() < 1.0;
            let found_ids: Vec<LotIdx> = found.iter().filter(|(_, d)| !near_edge(*d)).map(|(l, _)| *l).collect();
            let expected_ids: Vec<LotIdx> = expected.iter().filter(|(_, d)| !near_edge(*d)).map(|(l, _)| *l).collect();
            prop_assert_eq!(found_ids.len(), expected_ids.len());
            for pair in found.windows(2) {
                prop_assert!(pair[0].1 <= pair[1].1 + 1e-6);
            }
            for (lot, d) in &found {
                prop_assert!((d - haversine(center, points[*lot as usize])).abs() < 1.0);
            }
        }
    }
}
