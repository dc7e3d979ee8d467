//! Lanes that keep going when the platform cannot answer (SPEC §2, `standing` and `offline`):
//! the simulator's lanes — the reference lane device — decide alone from their gate's signed
//! standing list while the platform is stopped, and the platform, back, makes each decision one
//! session event and acknowledges it. Every scenario runs on SQLite with the embedded broker,
//! on PostgreSQL, and with Mosquitto.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::{Broker, Database, Setup, TestDevice, TestPlatform, World, eventually};
use chrono::Utc;
use parkflow_db::{Db, query};
use parkflow_protocol::sign::{plain, seal};
use parkflow_protocol::standing::{OfflineDecision, OfflineReport};
use parkflow_protocol::{DeviceAuth, Direction, GateAction, GateReason, PlateColor, Topic};
use parkflow_sensors_sim::camera::{self, CameraConfig, CameraHandle, Sighting, decided_alone};
use parkflow_sensors_sim::{DeviceEntry, DeviceKind, Stats};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WAIT: Duration = Duration::from_secs(20);

/// The simulator's lanes of the world's lot: one count, as lanes on one controller share it.
#[derive(Default)]
struct Lanes {
    stats: Arc<Stats>,
    count: Arc<std::sync::atomic::AtomicI64>,
    tracker: TaskTracker,
    token: CancellationToken,
}

impl Lanes {
    /// A lane for one of the world's gates, deciding alone after 1.5 s.
    fn lane(
        &self,
        platform: &TestPlatform,
        world: &World,
        camera: &parkflow_protocol::DeviceId,
        gate: &parkflow_protocol::GateId,
    ) -> CameraHandle {
        let (password, secret) = world.device(camera);
        let device = DeviceEntry {
            id: camera.clone(),
            kind: DeviceKind::GateCamera,
            lot: world.lot.clone(),
            gate: Some(gate.clone()),
            bay: None,
            mqtt_username: camera.to_string(),
            mqtt_password: password,
            secret,
            simulated: true,
            vendor: None,
        };
        let config = CameraConfig {
            lot_count: Some(self.count.clone()),
            ..CameraConfig::new(
                platform.mqtt.0.clone(),
                platform.mqtt.1,
                platform.setup.device_auth(),
            )
            .deciding_alone()
        };
        camera::spawn(
            device,
            config,
            self.stats.clone(),
            &self.tracker,
            self.token.clone(),
        )
    }

    /// The world's entry and exit lanes, once each holds its standing list.
    async fn start(platform: &TestPlatform, world: &World) -> (Self, CameraHandle, CameraHandle) {
        let lanes = Self::default();
        let entry = lanes.lane(platform, world, &world.entry_camera, &world.entry);
        let exit = lanes.lane(platform, world, &world.exit_camera, &world.exit);
        eventually(WAIT, "both lanes' standing lists", || async {
            (lanes.stats.standing_lists.load(Ordering::Relaxed) >= 2).then_some(())
        })
        .await;
        (lanes, entry, exit)
    }

    async fn stop(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// `report` as the world's entry camera sends it: signed, or plain JSON in `broker` mode.
fn entry_report(setup: Setup, world: &World, report: &OfflineReport) -> Vec<u8> {
    let topic = Topic::GateOffline {
        lot: world.lot.clone(),
        gate: world.entry.clone(),
    };
    let (_, secret) = world.device(&world.entry_camera);
    match setup.device_auth() {
        DeviceAuth::Signed => seal(&topic, report, &world.entry_camera, secret.as_bytes()),
        DeviceAuth::Broker => plain(&topic, report),
    }
}

fn sighting(plate: &str, direction: Direction) -> Sighting {
    Sighting {
        plate: plate.to_owned(),
        plate_color: Some(PlateColor::Blue),
        confidence: 0.97,
        direction,
        observed_at: Utc::now(),
    }
}

async fn session_of(platform: &TestPlatform, world: &World, plate: &str) -> Vec<serde_json::Value> {
    platform
        .sessions(&world.lot)
        .await
        .into_iter()
        .filter(|s| s["plate"] == plate)
        .collect()
}

/// The platform is stopped while cars come and go: every lane answers within 2 s from its
/// list (a driver suspended before the outage held, a plate blocked just before it held at the
/// entry, a walk-in let out), and once the platform is back each decision is one session event,
/// acknowledged; the walk-in's stay becomes an invoice to its plate.
async fn lanes_decide_alone_while_the_platform_is_down(setup: Setup) {
    let world = World::new(setup, 10);
    let mut platform = TestPlatform::start(setup, &world).await;
    let (lanes, entry, exit) = Lanes::start(&platform, &world).await;
    let stats = lanes.stats.clone();

    // Online: three cars in, answered by the platform.
    for plate in [&world.enrolled, &world.unenrolled, &world.suspended] {
        let command = entry
            .read(sighting(plate.as_str(), Direction::Entry))
            .await
            .unwrap();
        assert!(!decided_alone(&command));
        assert_eq!(command.action, GateAction::Open);
    }
    // A plate blocked now reaches the entry lane's list before the outage.
    let lists = stats.standing_lists.load(Ordering::Relaxed);
    let late_block = "浙F13579";
    let (status, _) = platform
        .call_as(
            crate::support::ADMIN_KEY,
            reqwest::Method::POST,
            &format!("/v1/lots/{}/blocks", world.lot),
            Some(serde_json::json!({"plate": late_block, "reason": "stolen"})),
        )
        .await;
    assert_eq!(status, 201);
    eventually(WAIT, "the block in the lanes' lists", || async {
        (stats.standing_lists.load(Ordering::Relaxed) >= lists + 2).then_some(())
    })
    .await;

    platform.pause().await;
    let newcomer = "浙G24680";
    let cases = [
        (
            &exit,
            world.enrolled.as_str(),
            Direction::Exit,
            GateAction::Open,
            GateReason::BillLater,
        ),
        (
            &exit,
            world.suspended.as_str(),
            Direction::Exit,
            GateAction::Hold,
            GateReason::PaymentRequired,
        ),
        (
            &exit,
            world.unenrolled.as_str(),
            Direction::Exit,
            GateAction::Open,
            GateReason::InvoiceLater,
        ),
        (
            &entry,
            late_block,
            Direction::Entry,
            GateAction::Hold,
            GateReason::Blocked,
        ),
        (
            &entry,
            newcomer,
            Direction::Entry,
            GateAction::Open,
            GateReason::Entered,
        ),
    ];
    for (lane, plate, direction, action, reason) in cases {
        let asked = Instant::now();
        let command = lane.read(sighting(plate, direction)).await.unwrap();
        let waited = asked.elapsed();
        assert!(decided_alone(&command), "{plate}: the lane decided alone");
        assert_eq!(
            (command.action, command.reason),
            (action, reason),
            "{plate}"
        );
        assert!(waited < Duration::from_secs(2), "{plate} waited {waited:?}");
    }
    assert_eq!(stats.decided_alone.load(Ordering::Relaxed), 5);

    platform.resume().await;
    eventually(WAIT, "every decision made alone acknowledged", || async {
        (stats.offline_acked.load(Ordering::Relaxed) == 5).then_some(())
    })
    .await;
    // Each decision one session event: out, out, still in (held), never in, in.
    let status_of = |sessions: &[serde_json::Value]| {
        sessions
            .iter()
            .map(|s| s["status"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        status_of(&session_of(&platform, &world, world.enrolled.as_str()).await),
        ["closed"]
    );
    assert_eq!(
        status_of(&session_of(&platform, &world, world.unenrolled.as_str()).await),
        ["closed"]
    );
    assert_eq!(
        status_of(&session_of(&platform, &world, world.suspended.as_str()).await),
        ["open"]
    );
    assert!(session_of(&platform, &world, late_block).await.is_empty());
    assert_eq!(
        status_of(&session_of(&platform, &world, newcomer).await),
        ["open"]
    );
    assert_eq!(platform.sessions(&world.lot).await.len(), 4);

    // The walk-in let out without standing owes an invoice tied to its plate.
    let db = Db::connect(&platform.database_url).await.unwrap();
    let plate = world.unenrolled.as_str().to_owned();
    eventually(WAIT, "the walk-in's invoice", || {
        let (db, plate) = (db.clone(), plate.clone());
        async move {
            let rows: Vec<(i64,)> = query(
                "SELECT amount_minor FROM invoices WHERE plate = $1 AND driver_id IS NULL AND status = 'open'",
            )
            .bind(plate)
            .fetch_all(&db)
            .await
            .unwrap();
            (rows.len() == 1 && rows[0].0 > 0).then_some(())
        }
    })
    .await;
    // Nothing went to review: the lanes and the platform agree.
    let cases = platform
        .admin_get(&format!("/v1/review?lot={}", world.lot))
        .await;
    assert_eq!(cases.as_array().map_or(0, Vec::len), 0, "{cases}");

    lanes.stop().await;
    platform.stop().await;
}

/// A lane's report, sent twice and followed by the read it answers, opens one session; the
/// platform acknowledges it. The same report signed by another lane's camera changes nothing.
async fn an_offline_report_counts_once_and_only_from_its_own_lane(setup: Setup) {
    let world = World::new(setup, 10);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let read = entry.read_at(
        "浙H11223",
        Direction::Entry,
        Utc::now() - chrono::Duration::seconds(20),
    );
    let decision = OfflineDecision {
        event_id: read.event_id.clone(),
        plate: read.plate.clone(),
        plate_color: read.plate_color,
        direction: Direction::Entry,
        observed_at: read.observed_at,
        action: GateAction::Open,
        reason: GateReason::Entered,
        standing_version: 1,
    };
    let topic = Topic::GateOffline {
        lot: world.lot.clone(),
        gate: world.entry.clone(),
    };
    let report = OfflineReport {
        decisions: vec![decision.clone()],
    };

    // The exit camera's key signs for the entry lane: refused, counted, nothing recorded. (It
    // goes out on the entry lane's connection: the embedded broker holds the exit camera's own to
    // its own topics; with `device_auth: broker` that is all there is to it.)
    if setup.device_auth() == DeviceAuth::Signed {
        let rejected = platform
            .metric("parkflow_events_rejected_total{reason=\"not_registered\"}")
            .await;
        let (_, exit_secret) = world.device(&world.exit_camera);
        entry
            .publish_raw(
                &topic.to_string(),
                seal(&topic, &report, &world.exit_camera, exit_secret.as_bytes()),
            )
            .await;
        eventually(WAIT, "the forged report counted", || async {
            (platform
                .metric("parkflow_events_rejected_total{reason=\"not_registered\"}")
                .await
                > rejected)
                .then_some(())
        })
        .await;
        assert!(platform.sessions(&world.lot).await.is_empty());
    }

    let payload = entry_report(setup, &world, &report);
    entry.publish_raw(&topic.to_string(), payload.clone()).await;
    entry.publish_raw(&topic.to_string(), payload).await;
    let ack = entry.command_for(&read.event_id).await;
    assert_eq!(
        (ack.action, ack.reason),
        (GateAction::AckOffline, GateReason::Reconciled)
    );
    // The read itself, sent late as a lane does: answered as the lane decided, nothing more.
    let answer = entry.decide_again(&read).await;
    assert_eq!(
        (answer.action, answer.reason),
        (GateAction::Open, GateReason::Entered)
    );
    // The acknowledgement follows the commit, and a repeated read writes nothing: the record is
    // final here.
    let sessions = platform.sessions(&world.lot).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(
        sessions[0]["entered_at"]
            .as_str()
            .map(|t| t[..19].to_owned()),
        Some(read.observed_at.format("%Y-%m-%dT%H:%M:%S").to_string()),
    );
    platform.stop().await;
}

/// The usual order after an outage: the lane's read reaches the platform before its report. The
/// platform let the car in; the lane, deciding alone, had held it (it counted the lot full). The
/// lane's decision stands: the stay ends in review (the car never came in), one case however
/// often the report comes, also after a restart, and the record shows the lane's hold.
async fn a_late_read_the_lane_held_ends_the_platforms_stay_once(setup: Setup) {
    let world = World::new(setup, 10);
    let mut platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let read = entry.read_at(
        "浙J24681",
        Direction::Entry,
        Utc::now() - chrono::Duration::seconds(30),
    );
    let answer = entry.decide(&read).await;
    assert_eq!(answer.action, GateAction::Open);
    let report = OfflineReport {
        decisions: vec![OfflineDecision {
            event_id: read.event_id.clone(),
            plate: read.plate.clone(),
            plate_color: read.plate_color,
            direction: Direction::Entry,
            observed_at: read.observed_at,
            action: GateAction::Hold,
            reason: GateReason::LotFull,
            standing_version: 7,
        }],
    };
    let topic = Topic::GateOffline {
        lot: world.lot.clone(),
        gate: world.entry.clone(),
    };
    let payload = entry_report(setup, &world, &report);
    for _ in 0..3 {
        entry.publish_raw(&topic.to_string(), payload.clone()).await;
    }
    let ack = entry.command_for(&read.event_id).await;
    assert_eq!(answer.event_id, ack.event_id);
    let session = eventually(WAIT, "the stay ended in review", || async {
        let sessions = platform.sessions(&world.lot).await;
        (sessions.len() == 1 && sessions[0]["status"] == "review").then(|| sessions[0].clone())
    })
    .await;
    assert_eq!(session["entered_at"], session["exited_at"], "{session}");
    // Restarted, the platform hears the report once more (a lane that missed the ack).
    drop(entry);
    platform.restart().await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    entry.publish_raw(&topic.to_string(), payload).await;
    let ack = entry.command_for(&read.event_id).await;
    assert_eq!(ack.action, GateAction::AckOffline);
    let cases = platform
        .admin_get(&format!("/v1/review?lot={}", world.lot))
        .await;
    let conflicts = cases
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "offline_conflict")
        .count();
    assert_eq!(conflicts, 1, "{cases}");
    assert_eq!(platform.sessions(&world.lot).await.len(), 1);
    // The read, sent again: answered as the lane decided.
    let again = entry.decide_again(&read).await;
    assert_eq!(
        (again.action, again.reason),
        (GateAction::Hold, GateReason::LotFull)
    );
    platform.stop().await;
}

/// A walk-in its lane let out alone owes an invoice to its plate; when the car comes again and
/// is held at the exit for that stay, the amount due includes the debt, and paying it clears
/// both: the invoice paid (its own payment), the stay closed at its fee.
async fn a_walk_in_let_out_alone_pays_its_debt_at_the_next_visit(setup: Setup) {
    let world = World::new(setup, 10);
    let mut platform = TestPlatform::start(setup, &world).await;
    let (lanes, entry, exit) = Lanes::start(&platform, &world).await;
    let walk_in = world.unenrolled.as_str();
    let first = entry
        .read(sighting(walk_in, Direction::Entry))
        .await
        .unwrap();
    assert_eq!(first.action, GateAction::Open);
    platform.pause().await;
    let out = exit.read(sighting(walk_in, Direction::Exit)).await.unwrap();
    assert!(decided_alone(&out));
    assert_eq!(out.reason, GateReason::InvoiceLater);
    platform.resume().await;
    let db = Db::connect(&platform.database_url).await.unwrap();
    let owed = eventually(WAIT, "the walk-in's invoice", || {
        let db = db.clone();
        async move {
            let rows: Vec<(i64,)> = query(
                "SELECT amount_minor FROM invoices WHERE plate = $1 AND driver_id IS NULL AND status = 'open'",
            )
            .bind(walk_in)
            .fetch_all(&db)
            .await
            .unwrap();
            rows.first().map(|(minor,)| *minor)
        }
    })
    .await;

    // The next visit, the platform answering: held at the exit for this stay and the debt.
    let back = entry
        .read(sighting(walk_in, Direction::Entry))
        .await
        .unwrap();
    assert!(!decided_alone(&back));
    let owed_major = rust_decimal::Decimal::new(owed, 2);
    // Billing tells the gates of the debt at once: the lanes' lists get it as a delta (the
    // first since the restart), and the gate actor learns it in the same round.
    eventually(WAIT, "the debt in the lanes' lists", || async {
        (platform
            .metric("parkflow_standing_lists_total{kind=\"delta\"}")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    let held = exit.read(sighting(walk_in, Direction::Exit)).await.unwrap();
    assert_eq!(
        (held.action, held.reason),
        (GateAction::Hold, GateReason::PaymentRequired)
    );
    assert!(held.amount_due.unwrap() > owed_major, "{held:?}");
    let pay_url = held.pay_url.clone().unwrap();
    let paid = reqwest::Client::new()
        .post(&pay_url)
        .header("Idempotency-Key", "next-visit")
        .json(&serde_json::json!({ "payment_account": "acct-walk-in" }))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    let paid: serde_json::Value = paid.json().await.unwrap();
    assert_eq!(paid["amount"], held.amount_due.unwrap().to_string());
    let open_debts: Vec<(i64,)> =
        query("SELECT amount_minor FROM invoices WHERE plate = $1 AND status = 'open'")
            .bind(walk_in)
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(open_debts.is_empty(), "{open_debts:?}");
    let stays = session_of(&platform, &world, walk_in).await;
    let fees: Vec<String> = stays
        .iter()
        .filter(|s| s["status"] == "closed")
        .map(|s| s["fee"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fees.len(), 2, "{stays:?}");
    assert!(
        fees.contains(&(held.amount_due.unwrap() - owed_major).to_string()),
        "{fees:?}"
    );
    let audit = parkflow_billing::audit::audit(&db).await.unwrap();
    assert!(audit.violations.is_empty(), "{audit:?}");
    lanes.stop().await;
    platform.stop().await;
}

macro_rules! scenarios {
    ($module:ident, $database:expr, $broker:expr) => {
        mod $module {
            use super::*;

            async fn run<F: std::future::Future<Output = ()>>(scenario: fn(Setup) -> F) {
                if let Some(setup) = Setup::available($database, $broker) {
                    scenario(setup).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lanes_decide_alone_while_the_platform_is_down() {
                run(super::lanes_decide_alone_while_the_platform_is_down).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_offline_report_counts_once_and_only_from_its_own_lane() {
                run(super::an_offline_report_counts_once_and_only_from_its_own_lane).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_walk_in_let_out_alone_pays_its_debt_at_the_next_visit() {
                run(super::a_walk_in_let_out_alone_pays_its_debt_at_the_next_visit).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_late_read_the_lane_held_ends_the_platforms_stay_once() {
                run(super::a_late_read_the_lane_held_ends_the_platforms_stay_once).await;
            }
        }
    };
}

scenarios!(sqlite_embedded, Database::Sqlite, Broker::Embedded);
scenarios!(postgres_embedded, Database::Postgres, Broker::Embedded);
scenarios!(sqlite_mosquitto, Database::Sqlite, Broker::Mosquitto);
scenarios!(sqlite_dynsec, Database::Sqlite, Broker::MosquittoDynsec);
