//! Traffic through the gated lots: cars arrive on a daily curve, are read at an entry lane, stay,
//! and leave through an exit lane — sometimes misread, sometimes read twice. A driver held at the
//! exit pays at the `pay_url` and leaves when the barrier opens. Cameras drop their connections
//! now and then, and a rogue camera publishes reads on other lots' gates. Every journey is written
//! to the journal for `--verify`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parkflow_protocol::{Direction, EventId, GateAction, GateId, LotId, Plate, Topic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::camera::{CameraHandle, Sighting};
use crate::city::{City, Driver, GatedLot, LaneDirection, misread};
use crate::clock::SimClock;
use crate::journal::{Answered, Journal, JourneyRecord};
use crate::stats::Stats;
use crate::street::demand;

/// How busy the lots are. Arrivals and stays are in simulated time (see [`SimClock`]).
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub seed: u64,
    /// Mean arrivals per simulated minute at each lot at peak demand.
    pub arrivals_per_minute: f64,
    pub min_stay: Duration,
    pub max_stay: Duration,
    /// Share of exits read with one confused character.
    pub misread_share: f64,
    /// Share of reads followed by a second read of the same car (a new event id).
    pub double_read_share: f64,
    /// Every this often (real time), one camera drops its connection and connects again.
    pub reconnect_every: Option<Duration>,
    /// Every this often (real time), a camera publishes a read on another lot's gate.
    pub rogue_every: Option<Duration>,
    /// The account a driver held at an exit pays with.
    pub walk_in_account: String,
    /// Whether arrivals follow the daily curve (morning and evening peaks, quiet nights).
    pub daily_curve: bool,
    /// Lanes decide alone when no command answers a read this long (`None`: they wait).
    pub decide_alone_after: Option<Duration>,
}

impl TrafficConfig {
    /// Lively enough in real time that sessions open and close within a minute.
    pub fn demo() -> Self {
        Self {
            seed: 11,
            arrivals_per_minute: 20.0,
            min_stay: Duration::from_secs(10),
            max_stay: Duration::from_secs(90),
            misread_share: 0.05,
            double_read_share: 0.1,
            reconnect_every: Some(Duration::from_secs(20)),
            rogue_every: Some(Duration::from_secs(5)),
            walk_in_account: "walk-in-card".into(),
            daily_curve: false,
            decide_alone_after: Some(parkflow_protocol::standing::DECIDE_ALONE_AFTER),
        }
    }

    /// A lot's day, for a clock running faster than real time: stays of a quarter of an hour to
    /// five hours, about one arrival every two minutes at peak.
    pub fn day() -> Self {
        Self {
            arrivals_per_minute: 0.5,
            min_stay: Duration::from_secs(15 * 60),
            max_stay: Duration::from_secs(5 * 3_600),
            daily_curve: true,
            decide_alone_after: Some(parkflow_protocol::standing::DECIDE_ALONE_AFTER),
            ..Self::demo()
        }
    }
}

/// What every journey shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub clock: SimClock,
    pub stats: Arc<Stats>,
    pub journal: Arc<Journal>,
    pub http: reqwest::Client,
}

/// Drives every lot of `city` whose lanes have cameras in `cameras`. When `stop` is cancelled no
/// car arrives any more and the cars inside leave; when `abort` is cancelled everything ends.
pub async fn drive(
    city: &City,
    cameras: &HashMap<(LotId, GateId), CameraHandle>,
    config: &TrafficConfig,
    shared: Shared,
    stop: CancellationToken,
    abort: CancellationToken,
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
        let lane = Lot {
            lot: lot.clone(),
            drivers: Arc::new(drivers),
            entries,
            exits,
        };
        let seed = config.seed.wrapping_add(i as u64);
        lots.spawn(lane.drive(
            config.clone(),
            seed,
            shared.clone(),
            stop.clone(),
            abort.clone(),
        ));
    }
    let mut chaos = JoinSet::new();
    if let Some(every) = config.reconnect_every {
        chaos.spawn(reconnects(
            cameras.values().cloned().collect(),
            every,
            config.seed,
            stop.clone(),
        ));
    }
    if let (Some(every), Some(rogue)) = (config.rogue_every, rogue_plan(city, cameras)) {
        chaos.spawn(rogue.run(every, shared.clone(), stop.clone()));
    }
    while lots.join_next().await.is_some() {}
    chaos.shutdown().await;
}

/// One camera at a time drops its connection, at random, every `every`.
async fn reconnects(
    cameras: Vec<CameraHandle>,
    every: Duration,
    seed: u64,
    stop: CancellationToken,
) {
    if cameras.is_empty() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        cameras[rng.random_range(0..cameras.len())]
            .reconnect()
            .await;
    }
}

/// A camera of the first lot that publishes, signed with its own key, on the second lot's entry
/// gate: the platform must refuse every such read (a device speaks only for its own gate).
struct Rogue {
    camera: CameraHandle,
    target: Topic,
}

fn rogue_plan(city: &City, cameras: &HashMap<(LotId, GateId), CameraHandle>) -> Option<Rogue> {
    let own = city.lots.first()?;
    let other = city.lots.get(1)?;
    let camera = own
        .lanes
        .iter()
        .find_map(|lane| cameras.get(&(own.id.clone(), lane.gate.clone())))?;
    let gate = other
        .lanes
        .iter()
        .find(|lane| lane.direction == LaneDirection::Entry)?;
    Some(Rogue {
        camera: camera.clone(),
        target: Topic::GatePlate {
            lot: other.id.clone(),
            gate: gate.gate.clone(),
        },
    })
}

/// Plates the rogue sends: no simulated driver has one, so a session with it is a rogue's.
pub const ROGUE_PLATE_PREFIX: &str = "RGE";

impl Rogue {
    async fn run(self, every: Duration, shared: Shared, stop: CancellationToken) {
        let mut n = 0u32;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            n += 1;
            let sighting = Sighting {
                plate: format!("{ROGUE_PLATE_PREFIX}{:05}", n % 100_000),
                plate_color: None,
                confidence: 0.99,
                direction: Direction::Entry,
                observed_at: shared.clock.now(),
            };
            self.camera
                .publish_rogue(self.target.clone(), sighting)
                .await;
        }
    }
}

/// A lot's simulated lanes and the drivers who park there.
struct Lot {
    lot: GatedLot,
    drivers: Arc<Vec<Driver>>,
    entries: Vec<CameraHandle>,
    exits: Vec<CameraHandle>,
}

impl Lot {
    async fn drive(
        self,
        config: TrafficConfig,
        seed: u64,
        shared: Shared,
        stop: CancellationToken,
        abort: CancellationToken,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut away: Vec<usize> = (0..self.drivers.len()).collect();
        let mut journeys = JoinSet::new();
        loop {
            // Exponential gaps between arrivals (a Poisson process) on the daily curve.
            let curve = if config.daily_curve {
                demand(shared.clock.now())
            } else {
                1.0
            };
            let rate = config.arrivals_per_minute.max(0.001) * curve;
            let gap = -(60.0 / rate) * (1.0 - rng.random::<f64>()).ln();
            tokio::select! {
                () = stop.cancelled() => break,
                Some(done) = journeys.join_next(), if !journeys.is_empty() => {
                    // A car still inside (held at the exit) does not come again.
                    if let Ok((driver, true)) = done { away.push(driver); }
                    continue;
                }
                () = shared.clock.sleep(Duration::from_secs_f64(gap)) => {}
            }
            if away.is_empty() {
                continue;
            }
            let driver = away.swap_remove(rng.random_range(0..away.len()));
            let journey = Journey {
                lot: self.lot.id.clone(),
                driver,
                drivers: self.drivers.clone(),
                entry: self.entries[rng.random_range(0..self.entries.len())].clone(),
                exit: self.exits[rng.random_range(0..self.exits.len())].clone(),
                stay: rng.random_range(config.min_stay..=config.max_stay),
                misread: rng.random_bool(config.misread_share),
                double_read: rng.random_bool(config.double_read_share),
                seed: rng.random(),
                walk_in_account: config.walk_in_account.clone(),
                shared: shared.clone(),
            };
            let abort = abort.clone();
            journeys.spawn(async move {
                let out = tokio::select! {
                    () = abort.cancelled() => true,
                    out = journey.run() => out,
                };
                (driver, out)
            });
        }
        // No more arrivals: the cars inside leave (unless everything is aborted).
        tokio::select! {
            () = abort.cancelled() => journeys.shutdown().await,
            () = async { while journeys.join_next().await.is_some() {} } => {}
        }
        tracing::debug!(lot = %self.lot.id, "traffic stopped");
    }
}

struct Journey {
    lot: LotId,
    driver: usize,
    drivers: Arc<Vec<Driver>>,
    entry: CameraHandle,
    exit: CameraHandle,
    stay: Duration,
    misread: bool,
    double_read: bool,
    seed: u64,
    walk_in_account: String,
    shared: Shared,
}

fn new_event_id() -> EventId {
    EventId::parse(&uuid::Uuid::new_v4().to_string())
        .unwrap_or_else(|_| unreachable!("a UUID is a valid event id"))
}

impl Journey {
    /// Drives the car in and out; whether it is out of the lot at the end (a car held at the
    /// exit and not let out is still inside: its driver does not come again).
    async fn run(self) -> bool {
        let driver = &self.drivers[self.driver];
        let stats = &self.shared.stats;
        let clock = self.shared.clock;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let sighting = |plate: String, direction, confidence| Sighting {
            plate,
            plate_color: Some(driver.plate_color),
            confidence,
            direction,
            observed_at: clock.now(),
        };
        let first_id = new_event_id();
        let mut entry_ids = vec![first_id.clone()];
        let entered_at = clock.now();
        // Sometimes the camera reads the car twice, a moment apart (a new event id each time).
        let double_id = self.double_read.then(new_event_id);
        if let Some(id) = &double_id {
            entry_ids.push(id.clone());
        }
        let double_read = async {
            if let Some(id) = double_id {
                Stats::add(&stats.double_reads);
                let moment = Duration::from_millis(300);
                clock.sleep(moment).await;
                let again = Sighting {
                    observed_at: entered_at + chrono::Duration::milliseconds(300),
                    ..sighting(driver.plate.as_str().to_owned(), Direction::Entry, 0.9)
                };
                let _ = self.entry.read_as(id, again).await;
            }
        };
        let first_read = self.entry.read_as(
            first_id,
            Sighting {
                observed_at: entered_at,
                ..sighting(driver.plate.as_str().to_owned(), Direction::Entry, 0.97)
            },
        );
        let (entered, ()) = tokio::join!(first_read, double_read);
        let Ok(command) = entered else {
            return true;
        };
        let mut record = JourneyRecord {
            lot: self.lot.clone(),
            plate: driver.plate.clone(),
            plate_color: driver.plate_color,
            entry: Answered {
                event_ids: entry_ids
                    .iter()
                    .map(|id| self.entry.recorded_id(id))
                    .collect(),
                observed_at: entered_at,
                action: command.action,
                reason: command.reason,
                alone: crate::camera::decided_alone(&command),
            },
            exit: None,
            misread: false,
            paid_at_exit: false,
        };
        if command.action == GateAction::Hold {
            Stats::add(&stats.entries_held);
            self.shared.journal.record(record);
            return true;
        }
        Stats::add(&stats.entries_opened);
        clock.sleep(self.stay).await;
        let plate = match self
            .misread
            .then(|| misread(&driver.plate, &mut rng))
            .flatten()
        {
            Some(misread) => {
                Stats::add(&stats.misreads);
                record.misread = true;
                misread
            }
            None => driver.plate.as_str().to_owned(),
        };
        let exit_id = new_event_id();
        let exited_at = clock.now();
        let read = Sighting {
            observed_at: exited_at,
            ..sighting(plate, Direction::Exit, 0.95)
        };
        // The journey is recorded even when the run is aborted before the car leaves.
        let answered = self.exit.read_as(exit_id.clone(), read).await;
        let mut out = false;
        if let Ok(command) = answered {
            record.exit = Some(Answered {
                event_ids: vec![self.exit.recorded_id(&exit_id)],
                observed_at: exited_at,
                action: command.action,
                reason: command.reason,
                alone: crate::camera::decided_alone(&command),
            });
            match (command.action, command.pay_url) {
                (GateAction::Open, _) => {
                    Stats::add(&stats.exits_opened);
                    out = true;
                }
                (GateAction::Hold, Some(pay_url)) => {
                    Stats::add(&stats.exits_held);
                    if self.pay_at_exit(exit_id, &pay_url).await {
                        Stats::add(&stats.exits_paid);
                        record.paid_at_exit = true;
                        out = true;
                    }
                }
                (GateAction::Hold | GateAction::AckOffline, None) => {
                    Stats::add(&stats.exits_held);
                }
                // Never handed to a lane's driver: an acknowledgement answers no read.
                (GateAction::AckOffline, Some(_)) => {}
            }
        }
        self.shared.journal.record(record);
        out
    }

    /// Pays at the held barrier's `pay_url` (retrying with the same idempotency key) and waits
    /// for the barrier to open.
    async fn pay_at_exit(&self, exit_id: EventId, pay_url: &str) -> bool {
        let Ok(opened) = self.exit.watch(exit_id.clone()).await else {
            return false;
        };
        let key = format!("sim-{exit_id}");
        let body = serde_json::json!({ "payment_account": self.walk_in_account });
        // The driver reads the amount on the display before paying.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A driver at a closed barrier keeps trying while the platform cannot answer (a
        // restart, a full disk); a car cannot leave the lane, nor come back in, meanwhile.
        let mut paid = false;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
        for attempt in 0u32.. {
            if tokio::time::Instant::now() >= give_up {
                break;
            }
            let sent = self
                .shared
                .http
                .post(pay_url)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    paid = true;
                    break;
                }
                // Refused (declined, already paid): asking again changes nothing.
                Ok(response) if response.status().is_client_error() => {
                    tracing::warn!(status = %response.status(), "payment at the exit refused");
                    break;
                }
                Ok(response) => {
                    tracing::debug!(status = %response.status(), "payment at the exit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(3))).await;
                }
                Err(error) => {
                    tracing::debug!(%error, "payment at the exit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(3))).await;
                }
            }
        }
        if !paid {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(30), opened).await,
            Ok(Ok(command)) if command.action == GateAction::Open
        )
    }
}

/// Whether `plate` is one the rogue camera sends.
pub fn is_rogue_plate(plate: &Plate) -> bool {
    plate.as_str().starts_with(ROGUE_PLATE_PREFIX)
}
