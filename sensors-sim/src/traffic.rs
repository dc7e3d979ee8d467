//! Traffic through the gated lots: cars arrive, are read at an entry lane, stay, and leave
//! through an exit lane — sometimes misread, sometimes read twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parkflow_protocol::{Direction, GateAction, GateId, LotId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::camera::{CameraHandle, Sighting};
use crate::city::{City, Driver, GatedLot, LaneDirection, misread};
use crate::stats::Stats;

/// How busy the lots are.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub seed: u64,
    /// Mean arrivals per minute at each lot.
    pub arrivals_per_minute: f64,
    pub min_stay: Duration,
    pub max_stay: Duration,
    /// Share of exits read with one confused character.
    pub misread_share: f64,
    /// Share of reads followed by a second read of the same car (a new event id).
    pub double_read_share: f64,
}

impl TrafficConfig {
    /// Lively enough that sessions open and close within a minute.
    pub fn demo() -> Self {
        Self {
            seed: 11,
            arrivals_per_minute: 20.0,
            min_stay: Duration::from_secs(10),
            max_stay: Duration::from_secs(90),
            misread_share: 0.05,
            double_read_share: 0.1,
        }
    }
}

/// Drives every lot of `city` whose lanes have cameras in `cameras`, until `token` is cancelled.
pub async fn drive(
    city: &City,
    cameras: &HashMap<(LotId, GateId), CameraHandle>,
    config: &TrafficConfig,
    stats: Arc<Stats>,
    token: CancellationToken,
) {
    let mut lots = JoinSet::new();
    for (i, lot) in city.lots.iter().enumerate() {
        let lane_cameras = |direction: LaneDirection| -> Vec<CameraHandle> {
            lot.lanes
                .iter()
                .filter(|lane| lane.simulated && lane.direction == direction)
                .filter_map(|lane| cameras.get(&(lot.id.clone(), lane.gate.clone())).cloned())
                .collect()
        };
        let (entries, exits) = (
            lane_cameras(LaneDirection::Entry),
            lane_cameras(LaneDirection::Exit),
        );
        if entries.is_empty() || exits.is_empty() {
            continue;
        }
        // Each driver parks in one lot, so a car is never in two places.
        let drivers: Vec<Driver> = city
            .drivers
            .iter()
            .skip(i)
            .step_by(city.lots.len())
            .cloned()
            .collect();
        let seed = config.seed.wrapping_add(i as u64);
        lots.spawn(drive_lot(
            lot.clone(),
            drivers,
            entries,
            exits,
            config.clone(),
            seed,
            stats.clone(),
            token.clone(),
        ));
    }
    while lots.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments)]
async fn drive_lot(
    lot: GatedLot,
    drivers: Vec<Driver>,
    entries: Vec<CameraHandle>,
    exits: Vec<CameraHandle>,
    config: TrafficConfig,
    seed: u64,
    stats: Arc<Stats>,
    token: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut away: Vec<usize> = (0..drivers.len()).collect();
    let mut journeys = JoinSet::new();
    let drivers = Arc::new(drivers);
    let mean_gap = 60.0 / config.arrivals_per_minute.max(0.001);
    loop {
        // Exponential gaps between arrivals (a Poisson process).
        let gap = -mean_gap * (1.0 - rng.random::<f64>()).ln();
        tokio::select! {
            () = token.cancelled() => break,
            Some(done) = journeys.join_next(), if !journeys.is_empty() => {
                if let Ok(driver) = done { away.push(driver); }
                continue;
            }
            () = tokio::time::sleep(Duration::from_secs_f64(gap)) => {}
        }
        if away.is_empty() {
            continue;
        }
        let driver = away.swap_remove(rng.random_range(0..away.len()));
        let journey = Journey {
            driver,
            drivers: drivers.clone(),
            entry: entries[rng.random_range(0..entries.len())].clone(),
            exit: exits[rng.random_range(0..exits.len())].clone(),
            stay: rng.random_range(config.min_stay..=config.max_stay),
            misread: rng.random_bool(config.misread_share),
            double_read: rng.random_bool(config.double_read_share),
            seed: rng.random(),
            stats: stats.clone(),
        };
        let token = token.clone();
        journeys.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = journey.run() => {}
            }
            driver
        });
    }
    tracing::debug!(lot = %lot.id, "traffic stopped");
    journeys.shutdown().await;
}

struct Journey {
    driver: usize,
    drivers: Arc<Vec<Driver>>,
    entry: CameraHandle,
    exit: CameraHandle,
    stay: Duration,
    misread: bool,
    double_read: bool,
    seed: u64,
    stats: Arc<Stats>,
}

impl Journey {
    async fn run(self) {
        let driver = &self.drivers[self.driver];
        let mut rng = StdRng::seed_from_u64(self.seed);
        let sighting = |plate: String, direction, confidence| Sighting {
            plate,
            plate_color: Some(driver.plate_color),
            confidence,
            direction,
            observed_at: Utc::now(),
        };
        // Sometimes the camera reads the car twice, a moment apart (a new event id each time).
        let double_read = async {
            if self.double_read {
                Stats::add(&self.stats.double_reads);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let again = sighting(driver.plate.as_str().to_owned(), Direction::Entry, 0.9);
                let _ = self.entry.read(again).await;
            }
        };
        let first_read = self.entry.read(sighting(
            driver.plate.as_str().to_owned(),
            Direction::Entry,
            0.97,
        ));
        let (entered, ()) = tokio::join!(first_read, double_read);
        let Ok(command) = entered else {
            return;
        };
        if command.action == GateAction::Hold {
            Stats::add(&self.stats.entries_held);
            return;
        }
        Stats::add(&self.stats.entries_opened);
        tokio::time::sleep(self.stay).await;
        let plate = match self
            .misread
            .then(|| misread(&driver.plate, &mut rng))
            .flatten()
        {
            Some(misread) => {
                Stats::add(&self.stats.misreads);
                misread
            }
            None => driver.plate.as_str().to_owned(),
        };
        let Ok(command) = self.exit.read(sighting(plate, Direction::Exit, 0.95)).await else {
            return;
        };
        match command.action {
            GateAction::Open => Stats::add(&self.stats.exits_opened),
            GateAction::Hold => Stats::add(&self.stats.exits_held),
        }
    }
}
