//! Off-the-shelf ANPR cameras: lanes whose camera pushes its vendor's own HTTP event and opens
//! its barrier through its own HTTP call. The events are the documented samples of
//! `tests/fixtures/anpr/` (the plate and times made this test's); a fake camera HTTP server
//! receives the barrier calls.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method as HttpMethod, Uri};
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{ADMIN_KEY, Broker, Database, Setup, TestPlatform, World, eventually};

/// What the fake camera was asked: method, path, body.
type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

/// A camera's HTTP side: answers 200 to anything and keeps what it was asked.
async fn fake_camera() -> (SocketAddr, Calls) {
    let calls = Calls::default();
    let kept = calls.clone();
    let app = axum::Router::new().fallback(move |method: HttpMethod, uri: Uri, body: Bytes| {
        let kept = kept.clone();
        async move {
            kept.lock().unwrap().push((
                method.to_string(),
                uri.path().to_owned(),
                String::from_utf8_lossy(&body).into_owned(),
            ));
            "OK"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, calls)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/anpr")
            .join(name),
    )
    .unwrap()
}

/// Registers a gate and its `anpr_http` camera; the camera's password.
async fn anpr_lane(
    platform: &TestPlatform,
    world: &World,
    gate: &str,
    direction: &str,
    camera: &str,
    vendor: &str,
    control_url: String,
) -> String {
    let (status, answer) = platform
        .call(
            Some(ADMIN_KEY),
            Method::POST,
            &format!("/v1/lots/{}/gates", world.lot),
            Some(&json!({"id": gate, "direction": direction})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, registered) = platform
        .call(
            Some(ADMIN_KEY),
            Method::POST,
            &format!("/v1/lots/{}/devices", world.lot),
            Some(
                &json!({"id": camera, "kind": "anpr_http", "gate": gate, "vendor": vendor,
                         "control": {"kind": "http", "url": control_url}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    assert_eq!(registered["kind"], "anpr_http");
    registered["mqtt_password"].as_str().unwrap().to_owned()
}

async fn push(
    platform: &TestPlatform,
    camera: &str,
    password: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{camera}:{password}"));
    let response = reqwest::Client::new()
        .post(platform.url(&format!("/v1/anpr/{camera}")))
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Pushes `body` as a camera that speaks HTTP Digest: asked, then answering the challenge.
async fn push_digest(
    platform: &TestPlatform,
    camera: &str,
    password: &str,
    content_type: &str,
    body: String,
) -> StatusCode {
    use md5::{Digest as _, Md5};
    let md5 = |text: String| -> String {
        Md5::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let uri = format!("/v1/anpr/{camera}");
    let client = reqwest::Client::new();
    let asked = client
        .post(platform.url(&uri))
        .header("content-type", content_type)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), StatusCode::UNAUTHORIZED);
    let challenge = asked
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("Digest "))
        .expect("a Digest challenge")
        .to_owned();
    let field = |name: &str| {
        challenge
            .split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned()
    };
    let (realm, nonce) = (field("realm"), field("nonce"));
    let ha1 = md5(format!("{camera}:{realm}:{password}"));
    let ha2 = md5(format!("POST:{uri}"));
    let response = md5(format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    let authorization = format!(
        "Digest username=\"{camera}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\", response=\"{response}\""
    );
    client
        .post(platform.url(&uri))
        .header("authorization", authorization)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// `vendor`'s documented sample event, made this test's: the plate, the time and the event id.
/// The content type it comes with.
fn event(
    vendor: &str,
    plate: &str,
    at: chrono::DateTime<chrono::Utc>,
    id: u32,
) -> (&'static str, String) {
    let ms = at.timestamp_millis();
    match vendor {
        "hikvision" => (
            "text/xml",
            fixture("hikvision_anpr.xml")
                .replace("浙A12345", plate)
                .replace(
                    "2025-03-14T08:21:07.512+08:00",
                    &at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                )
                .replace(
                    "5f0c2c1e-8b4a-4d6e-9a31-7c2f0e9d4b18",
                    &format!("uuid-{id}"),
                ),
        ),
        "dahua" => (
            "application/json",
            fixture("dahua_traffic_junction.json")
                .replace("浙A12345", plate)
                .replace("1741911667", &at.timestamp().to_string())
                .replace("188342917", &id.to_string()),
        ),
        "axis" => (
            "application/json",
            fixture("axis_lpv.json")
                .replace("KLM482", plate)
                .replace("1741940142318", &ms.to_string())
                .replace("\"71408\"", &format!("\"{id}\"")),
        ),
        "platerecognizer" => (
            "application/json",
            fixture("platerecognizer_stream.json")
                .replace("fz482kd", plate)
                .replace("2025-03-14T09:02:51.204117Z", &at.to_rfc3339())
                .replace("10-02-51.204117", &format!("shot-{id}")),
        ),
        "openalpr" => (
            "application/json",
            fixture("openalpr_alpr_group.json")
                .replace("8KTP493", plate)
                .replace("1741999212104", &ms.to_string())
                .replace("1741999213530", &format!("{id}")),
        ),
        _ => unreachable!("a vendor of the test"),
    }
}

/// Every vendor, a lane each way: the camera's own events open and close a stay with the
/// tariff's fee, the same event again is one read, and the barrier call reaches the camera.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vendors_events_open_and_close_a_stay() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 20);
    let platform = TestPlatform::start(setup, &world).await;
    let (camera_addr, calls) = fake_camera().await;
    let plates = ["浙B10001", "浙B10002", "浙B10003", "浙B10004", "浙B10005"];
    let vendors = ["hikvision", "dahua", "axis", "platerecognizer", "openalpr"];
    // Their drivers leave first and pay later: the exit closes the stay.
    for plate in plates {
        let document = crate::support::registration_document(plate);
        let (status, enrolled) = platform
            .call(
                None,
                Method::POST,
                "/v1/drivers",
                Some(
                    &json!({"name": "Driver", "payment_account": "acct", "auto_debit_consent": true,
                             "plates": [{"plate": plate, "registration_document": document}]}),
                ),
            )
            .await;
        assert_eq!(
            enrolled["claims"][0]["status"], "granted",
            "{status} {enrolled}"
        );
    }
    for (n, (vendor, plate)) in vendors.into_iter().zip(plates).enumerate() {
        let (entry_gate, exit_gate) = (format!("in-{vendor}"), format!("out-{vendor}"));
        let control = |gate: &str| format!("http://{camera_addr}/{vendor}/{gate}");
        let entry_password = anpr_lane(
            &platform,
            &world,
            &entry_gate,
            "entry",
            &format!("cam-{vendor}-in"),
            vendor,
            control(&entry_gate),
        )
        .await;
        let exit_password = anpr_lane(
            &platform,
            &world,
            &exit_gate,
            "exit",
            &format!("cam-{vendor}-out"),
            vendor,
            control(&exit_gate),
        )
        .await;
        let id = u32::try_from(n).unwrap() * 10;
        let (kind, entered) = event(
            vendor,
            plate,
            chrono::Utc::now() - chrono::Duration::minutes(50),
            id,
        );
        for _ in 0..2 {
            let (status, answer) = push(
                &platform,
                &format!("cam-{vendor}-in"),
                &entry_password,
                kind,
                entered.clone(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{vendor} entry: {answer}");
        }
        let (kind, left) = event(vendor, plate, chrono::Utc::now(), id + 1);
        let (status, answer) = push(
            &platform,
            &format!("cam-{vendor}-out"),
            &exit_password,
            kind,
            left,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{vendor} exit: {answer}");
        let stays: Vec<Value> = eventually(Duration::from_secs(10), vendor, || async {
            let stays: Vec<Value> = platform
                .sessions(&world.lot)
                .await
                .into_iter()
                .filter(|s| s["plate"] == plate)
                .collect();
            stays
                .iter()
                .any(|s| s["status"] == "closed")
                .then_some(stays)
        })
        .await;
        assert_eq!(
            stays.len(),
            1,
            "{vendor}: the repeated entry is one read: {stays:?}"
        );
        assert_eq!(stays[0]["entry_gate"], entry_gate.as_str());
        let (_, quote) = platform
            .call(
                None,
                Method::GET,
                &format!(
                    "/v1/lots/{}/quote?entered_at={}&exited_at={}",
                    world.lot,
                    stays[0]["entered_at"].as_str().unwrap(),
                    stays[0]["exited_at"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(stays[0]["fee"], quote["amount"], "{vendor}");
        // The entry's barrier opened through the vendor's call.
        eventually(Duration::from_secs(10), "the entry's barrier call", || {
            let calls = calls.clone();
            let path = format!("/{vendor}/{entry_gate}");
            async move {
                calls
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(_, p, _)| *p == path)
                    .then_some(())
            }
        })
        .await;
    }
    platform.stop().await;
}

/// A Hikvision camera at the entry and a Plate Recognizer one at the exit: the car's stay opens
/// and closes with the tariff's fee, each barrier call reaches its camera, the same event again
/// is one read, and wrong credentials are refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_events_open_and_close_a_stay_and_call_the_barrier() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 20);
    let platform = TestPlatform::start(setup, &world).await;
    let (camera_addr, calls) = fake_camera().await;
    let entry_password = anpr_lane(
        &platform,
        &world,
        "in-hik",
        "entry",
        "cam-hik-in",
        "hikvision",
        format!("http://{camera_addr}/ISAPI/Parking/channels/1/barrierGate"),
    )
    .await;
    let exit_password = anpr_lane(
        &platform,
        &world,
        "out-pr",
        "exit",
        "cam-pr-out",
        "platerecognizer",
        format!("http://{camera_addr}/relay/out-pr"),
    )
    .await;
    let plate = world.enrolled.as_str().to_owned();
    let entered_at = chrono::Utc::now() - chrono::Duration::minutes(95);
    let entry_event = fixture("hikvision_anpr.xml")
        .replace("浙A12345", &plate)
        .replace(
            "2025-03-14T08:21:07.512+08:00",
            &entered_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );

    // Wrong credentials: refused, counted, nothing read.
    let before = platform
        .metric("parkflow_events_rejected_total{reason=\"bad_credentials\"}")
        .await;
    let (status, _) = push(
        &platform,
        "cam-hik-in",
        "guess",
        "text/xml",
        entry_event.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = push(
        &platform,
        "cam-pr-out",
        &entry_password,
        "text/xml",
        entry_event.clone(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "another camera's password"
    );
    assert!(
        platform
            .metric("parkflow_events_rejected_total{reason=\"bad_credentials\"}")
            .await
            >= before + 2.0
    );
    assert!(platform.sessions(&world.lot).await.is_empty());

    // The entry, twice (a camera re-sending its event): one read, one stay.
    let (status, accepted) = push(
        &platform,
        "cam-hik-in",
        &entry_password,
        "text/xml",
        entry_event.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    let (status, again) = push(
        &platform,
        "cam-hik-in",
        &entry_password,
        "text/xml",
        entry_event,
    )
    .await;
    assert_eq!(
        (status, &again["event_id"]),
        (StatusCode::OK, &accepted["event_id"])
    );
    let opened = eventually(Duration::from_secs(10), "the barrier call", || {
        let calls = calls.clone();
        async move {
            let calls = calls.lock().unwrap();
            calls
                .iter()
                .find(|(method, path, _)| method == "PUT" && path.ends_with("/barrierGate"))
                .cloned()
        }
    })
    .await;
    assert!(
        opened.2.contains("<ctrlMode>open</ctrlMode>"),
        "{}",
        opened.2
    );
    let sessions = platform.sessions(&world.lot).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");

    // The exit, through Plate Recognizer: the stay closes with the tariff's fee and the exit's
    // relay hears the decision.
    let exit_event = fixture("platerecognizer_stream.json")
        .replace("fz482kd", &plate)
        .replace(
            "2025-03-14T09:02:51.204117Z",
            &chrono::Utc::now().to_rfc3339(),
        );
    let (status, answer) = push(
        &platform,
        "cam-pr-out",
        &exit_password,
        "application/json",
        exit_event,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let relayed = eventually(Duration::from_secs(10), "the exit's relay call", || {
        let calls = calls.clone();
        async move {
            let calls = calls.lock().unwrap();
            calls
                .iter()
                .find(|(_, path, _)| path == "/relay/out-pr")
                .cloned()
        }
    })
    .await;
    // By the time the exit's call came, any call for the re-sent entry (answered before the exit
    // was sent) would have too: the barrier was not opened a second time (the car behind would
    // follow through).
    let opens = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(method, path, _)| method == "PUT" && path.ends_with("/barrierGate"))
        .count();
    assert_eq!(opens, 1, "the barrier opened again for a repeated event");
    let decision: Value = serde_json::from_str(&relayed.2).unwrap();
    assert_eq!(
        (&decision["action"], &decision["gate"]),
        (&json!("open"), &json!("out-pr"))
    );
    let closed = eventually(Duration::from_secs(10), "the stay closed", || async {
        let sessions = platform.sessions(&world.lot).await;
        sessions
            .into_iter()
            .find(|s| s["status"] == "closed" && s["plate"] == plate.as_str())
    })
    .await;
    let (_, quote) = platform
        .call(
            None,
            Method::GET,
            &format!(
                "/v1/lots/{}/quote?entered_at={}&exited_at={}",
                world.lot,
                closed["entered_at"].as_str().unwrap(),
                closed["exited_at"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(closed["fee"], quote["amount"], "{closed} {quote}");
    // The lane shows its last barrier call.
    let (_, lanes) = platform
        .call(
            Some(ADMIN_KEY),
            Method::GET,
            &format!("/v1/lots/{}/lanes", world.lot),
            None,
        )
        .await;
    let lane = lanes
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["gate"] == "out-pr")
        .unwrap();
    assert_eq!(lane["last_barrier_call"]["ok"], true, "{lanes}");

    // A camera that speaks HTTP Digest instead of Basic: challenged, then accepted.
    let (kind, event) = event("hikvision", "浙B77777", chrono::Utc::now(), 999);
    assert_eq!(
        push_digest(
            &platform,
            "cam-hik-in",
            &entry_password,
            kind,
            event.clone()
        )
        .await,
        StatusCode::OK
    );
    assert_ne!(
        push_digest(&platform, "cam-hik-in", "guess", kind, event).await,
        StatusCode::OK
    );
    // Too large (pictures over 4 MiB): refused with 413, counted, nothing read.
    let before = platform
        .metric("parkflow_events_rejected_total{reason=\"oversized\"}")
        .await;
    let huge = format!(
        "{}{}",
        "x".repeat(5 * 1024 * 1024),
        "<EventNotificationAlert/>"
    );
    let (status, _) = push(&platform, "cam-hik-in", &entry_password, "text/xml", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        platform
            .metric("parkflow_events_rejected_total{reason=\"oversized\"}")
            .await,
        before + 1.0
    );
    // Not an event of the vendor: refused with a clear status.
    let (status, answer) = push(
        &platform,
        "cam-hik-in",
        &entry_password,
        "text/xml",
        "<nope/>",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    platform.stop().await;
}

/// The simulator plays an off-the-shelf camera: its reads go over HTTP in the vendor's format, its
/// barrier hears the platform's signed commands on MQTT (a ParkFlow barrier controller), and each
/// read is answered — for Hikvision and Plate Recognizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_plays_hikvision_and_plate_recognizer_cameras() {
    use parkflow_sensors_sim::camera::{self, AnprTransport, AnprVendor, CameraConfig, Sighting};
    use parkflow_sensors_sim::{DeviceEntry, DeviceKind, Stats};
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 20);
    let platform = TestPlatform::start(setup, &world).await;
    let tracker = tokio_util::task::TaskTracker::new();
    let token = tokio_util::sync::CancellationToken::new();
    for (vendor, gate, direction) in [
        (
            AnprVendor::Hikvision,
            "in-sim",
            parkflow_protocol::Direction::Entry,
        ),
        (
            AnprVendor::Platerecognizer,
            "out-sim",
            parkflow_protocol::Direction::Exit,
        ),
    ] {
        let (status, _) = platform
            .call(
                Some(ADMIN_KEY),
                Method::POST,
                &format!("/v1/lots/{}/gates", world.lot),
                Some(&json!({"id": gate, "direction": if direction == parkflow_protocol::Direction::Entry { "entry" } else { "exit" }})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let id = format!("cam-{gate}");
        let (status, registered) = platform
            .call(
                Some(ADMIN_KEY),
                Method::POST,
                &format!("/v1/lots/{}/devices", world.lot),
                Some(&json!({"id": id, "kind": "anpr_http", "gate": gate,
                             "vendor": vendor.as_str(), "control": {"kind": "mqtt"}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{registered}");
        let device = DeviceEntry {
            id: parkflow_protocol::DeviceId::parse(&id).unwrap(),
            kind: DeviceKind::AnprHttp,
            lot: world.lot.clone(),
            gate: Some(parkflow_protocol::GateId::parse(gate).unwrap()),
            bay: None,
            mqtt_username: id.clone(),
            mqtt_password: registered["mqtt_password"].as_str().unwrap().to_owned(),
            secret: registered["secret"].as_str().unwrap().to_owned(),
            simulated: true,
            vendor: Some(vendor.as_str().to_owned()),
        };
        let mut config = CameraConfig::new(
            platform.mqtt.0.clone(),
            platform.mqtt.1,
            parkflow_protocol::DeviceAuth::Signed,
        );
        config.anpr = Some(AnprTransport {
            vendor,
            api: format!("http://{}", platform.http),
        });
        let lane = camera::spawn(
            device,
            config,
            std::sync::Arc::new(Stats::default()),
            &tracker,
            token.clone(),
        );
        let command = tokio::time::timeout(
            Duration::from_secs(20),
            lane.read(Sighting {
                plate: world.enrolled.as_str().to_owned(),
                plate_color: Some(parkflow_protocol::PlateColor::Blue),
                confidence: 0.97,
                direction,
                observed_at: chrono::Utc::now(),
            }),
        )
        .await
        .expect("answered in time")
        .expect("answered");
        assert_eq!(
            command.action,
            parkflow_protocol::GateAction::Open,
            "{vendor:?}: {command:?}"
        );
        assert!(command.event_id.as_str().starts_with(vendor.as_str()));
    }
    token.cancel();
    tracker.close();
    tracker.wait().await;
    platform.stop().await;
}

/// Pictures: dropped on a lot that does not keep them; on one that does, kept only for a read
/// that opened a review case, shown to the lot's staff alone, and deleted with the plate
/// retention period.
async fn review_cases_keep_the_cameras_pictures_only_where_the_lot_says(database: Database) {
    let Some(setup) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let world = World::new(setup, 20);
    let platform = TestPlatform::start(setup, &world).await;
    let (camera_addr, _calls) = fake_camera().await;
    let password = anpr_lane(
        &platform,
        &world,
        "out-hik",
        "exit",
        "cam-hik-out",
        "hikvision",
        format!("http://{camera_addr}/ISAPI/Parking/channels/1/barrierGate"),
    )
    .await;
    let jpeg = b"\xff\xd8\xff\xe0 a car at the exit \xff\xd9".to_vec();
    // As Hikvision sends an event with its pictures: the XML, the plate's close-up, the scene.
    let with_pictures = |plate: &str, id: u32| {
        let (_, xml) = event("hikvision", plate, chrono::Utc::now(), id);
        let mut body = Vec::new();
        body.extend_from_slice(b"--hik\r\nContent-Disposition: form-data; name=\"anpr.xml\"; filename=\"anpr.xml\"\r\nContent-Type: text/xml\r\n\r\n");
        body.extend_from_slice(xml.as_bytes());
        for name in ["licensePlatePicture.jpg", "detectionPicture.jpg"] {
            body.extend_from_slice(format!("\r\n--hik\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: image/pjpeg\r\n\r\n").as_bytes());
            body.extend_from_slice(&jpeg);
        }
        body.extend_from_slice(b"\r\n--hik--\r\n");
        body
    };
    let content_type = "multipart/form-data; boundary=hik";
    let cases = || async {
        platform
            .admin_get(&format!("/v1/review?lot={}", world.lot))
            .await
            .as_array()
            .unwrap()
            .clone()
    };

    // The lot keeps none (the default): an exit nobody entered opens a case, without pictures.
    let (status, answer) = push(
        &platform,
        "cam-hik-out",
        &password,
        content_type,
        with_pictures("浙E00001", 1),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let case = cases().await;
    assert_eq!(case.len(), 1, "{case:?}");
    assert_eq!(case[0]["kind"], "exit_without_entry");
    assert_eq!(case[0]["pictures"], 0);

    // The operator turns it on: the next case keeps both pictures, once however often sent.
    let (status, lot) = platform
        .call(
            Some(ADMIN_KEY),
            Method::PATCH,
            &format!("/v1/lots/{}", world.lot),
            Some(&json!({"review_pictures": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{lot}");
    assert_eq!(lot["review_pictures"], true);
    for _ in 0..2 {
        let (status, answer) = push(
            &platform,
            "cam-hik-out",
            &password,
            content_type,
            with_pictures("浙E00002", 2),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let case = cases().await;
    let kept = case
        .iter()
        .find(|c| c["plate"] == "浙E00002")
        .expect("the second case");
    assert_eq!(kept["pictures"], 2, "{kept}");
    let id = kept["id"].as_str().unwrap().to_owned();
    let picture = |key: String, n: u32| {
        let url = platform.url(&format!("/v1/review/{id}/pictures/{n}"));
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (
                status,
                content_type,
                response.bytes().await.unwrap().to_vec(),
            )
        }
    };
    let (status, picture_type, bytes) = picture(ADMIN_KEY.to_owned(), 0).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(picture_type.as_deref(), Some("image/jpeg"));
    assert_eq!(bytes, jpeg);
    assert_eq!(
        picture(ADMIN_KEY.to_owned(), 2).await.0,
        StatusCode::NOT_FOUND
    );
    // The lot's own staff see it; another operator's do not.
    let own = platform.issue_key("operator_viewer", Some("op-test")).await;
    assert_eq!(picture(own, 1).await.0, StatusCode::OK);
    let (status, answer) = platform
        .call(
            Some(ADMIN_KEY),
            Method::POST,
            "/v1/operators",
            Some(&json!({"id": "op-elsewhere", "name": "Elsewhere"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let stranger = platform
        .issue_key("operator_admin", Some("op-elsewhere"))
        .await;
    assert_eq!(picture(stranger, 1).await.0, StatusCode::NOT_FOUND);

    // An entry that opens no case keeps nothing, even with pictures.
    let entry_password = anpr_lane(
        &platform,
        &world,
        "in-hik",
        "entry",
        "cam-hik-in",
        "hikvision",
        format!("http://{camera_addr}/ISAPI/Parking/channels/1/barrierGate"),
    )
    .await;
    let (status, answer) = push(
        &platform,
        "cam-hik-in",
        &entry_password,
        content_type,
        with_pictures(world.enrolled.as_str(), 3),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let db = parkflow_db::Db::connect(&platform.database_url)
        .await
        .unwrap();
    let (kept,): (i64,) = parkflow_db::query("SELECT COUNT(*) FROM review_pictures")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(kept, 2, "only the case's two pictures");

    // Past the plate retention period, the pictures go with the plates.
    let key = parkflow_gateway::privacy::PlateKey::random();
    parkflow_gateway::privacy::pseudonymise(
        &db,
        &key,
        chrono::Utc::now() + chrono::Duration::days(1),
        100,
    )
    .await
    .unwrap();
    let case = cases().await;
    assert!(case.iter().all(|c| c["pictures"] == 0), "{case:?}");
    assert_eq!(
        picture(ADMIN_KEY.to_owned(), 0).await.0,
        StatusCode::NOT_FOUND
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_pictures_on_sqlite() {
    review_cases_keep_the_cameras_pictures_only_where_the_lot_says(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_pictures_on_postgres() {
    review_cases_keep_the_cameras_pictures_only_where_the_lot_says(Database::Postgres).await;
}

/// An attacker probing for camera ids: an unknown id, a revoked camera, a ParkFlow camera that
/// speaks MQTT and a wrong password all get the same `401`, so the answer says nothing of which
/// ids exist. A camera sending from outside its allowed networks is refused before its
/// credentials are looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_for_camera_ids_learns_nothing() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 20);
    let platform = TestPlatform::start(setup, &world).await;
    let (camera_addr, _calls) = fake_camera().await;
    let password = anpr_lane(
        &platform,
        &world,
        "in-hik",
        "entry",
        "cam-hik-in",
        "hikvision",
        format!("http://{camera_addr}/ISAPI/Parking/channels/1/barrierGate"),
    )
    .await;
    let (content_type, body) = event("hikvision", "浙E11111", chrono::Utc::now(), 1);
    let wrong = push(&platform, "cam-hik-in", "guess", content_type, body.clone()).await;
    let unknown = push(&platform, "cam-nobody", "guess", content_type, body.clone()).await;
    let mqtt_camera = push(
        &platform,
        world.entry_camera.as_str(),
        "guess",
        content_type,
        body.clone(),
    )
    .await;
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown, wrong, "an unknown id answers as a wrong password");
    assert_eq!(
        mqtt_camera, wrong,
        "an MQTT camera answers as a wrong password"
    );

    // Revoked: its own password no longer opens anything, answered the same.
    let (status, answer) = platform
        .call(
            Some(ADMIN_KEY),
            Method::DELETE,
            "/v1/devices/cam-hik-in",
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {answer}");
    let revoked = push(
        &platform,
        "cam-hik-in",
        &password,
        content_type,
        body.clone(),
    )
    .await;
    assert_eq!(
        revoked, wrong,
        "a revoked camera answers as a wrong password"
    );

    // Allowed networks: refused from elsewhere (before credentials), taken from inside.
    for (camera, gate, allow, expected) in [
        ("cam-far", "in-far", "10.0.0.0/8", StatusCode::FORBIDDEN),
        ("cam-near", "in-near", "127.0.0.0/8", StatusCode::OK),
    ] {
        let (status, answer) = platform
            .call(
                Some(ADMIN_KEY),
                Method::POST,
                &format!("/v1/lots/{}/gates", world.lot),
                Some(&json!({"id": gate, "direction": "entry"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let (status, registered) = platform
            .call(
                Some(ADMIN_KEY),
                Method::POST,
                &format!("/v1/lots/{}/devices", world.lot),
                Some(&json!({"id": camera, "kind": "anpr_http", "gate": gate,
                    "vendor": "hikvision", "control": {"kind": "mqtt"}, "allow_from": [allow]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{registered}");
        let password = registered["mqtt_password"].as_str().unwrap();
        let (_, body) = event("hikvision", "浙E22222", chrono::Utc::now(), 2);
        let (status, answer) = push(&platform, camera, password, content_type, body).await;
        assert_eq!(status, expected, "{camera}: {answer}");
    }
    platform.stop().await;
}

/// What a Digest-only camera saw: the calls it accepted (method, path, `nc`) and how many it
/// refused.
#[derive(Default)]
struct DigestCamera {
    accepted: Vec<(String, String, String)>,
    refused: usize,
}

/// A camera's HTTP side that, as Hikvision's ISAPI does, takes only HTTP Digest (MD5, qop auth)
/// for `user` and `password`: it refuses anything else with a challenge, and a nonce count that
/// does not rise.
async fn digest_camera(
    user: &'static str,
    password: &'static str,
) -> (SocketAddr, Arc<Mutex<DigestCamera>>) {
    use md5::{Digest as _, Md5};
    let seen = Arc::new(Mutex::new(DigestCamera::default()));
    let kept = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: HttpMethod, uri: Uri, headers: axum::http::HeaderMap| {
            let kept = kept.clone();
            async move {
                let md5 = |text: String| -> String {
                    Md5::digest(text.as_bytes())
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                };
                let header = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let field = |name: &str| -> Option<String> {
                    header
                        .strip_prefix("Digest ")?
                        .split(", ")
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .map(|v| v.trim_matches('"').to_owned())
                };
                let nonce = "camera-nonce-1";
                let good = (|| {
                    let (nc, cnonce) = (field("nc")?, field("cnonce")?);
                    let ha1 = md5(format!("{user}:ISAPI:{password}"));
                    let ha2 = md5(format!("{method}:{}", uri.path()));
                    let expected = md5(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
                    let rises = kept
                        .lock()
                        .unwrap()
                        .accepted
                        .last()
                        .is_none_or(|(_, _, last)| *last < nc);
                    (field("username")? == user
                        && field("nonce")? == nonce
                        && field("uri")? == uri.path()
                        && field("response")? == expected
                        && rises)
                        .then_some(nc)
                })();
                let mut seen = kept.lock().unwrap();
                match good {
                    Some(nc) => {
                        seen.accepted
                            .push((method.to_string(), uri.path().to_owned(), nc));
                        (
                            axum::http::StatusCode::OK,
                            [("www-authenticate", String::new())],
                            "OK",
                        )
                    }
                    None => {
                        seen.refused += 1;
                        (
                            axum::http::StatusCode::UNAUTHORIZED,
                            [(
                                "www-authenticate",
                                format!("Digest qop=\"auth\", realm=\"ISAPI\", nonce=\"{nonce}\""),
                            )],
                            "Unauthorized",
                        )
                    }
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A Hikvision lane whose camera takes only Digest: the barrier call answers its challenge, the
/// next call answers with the same nonce counted up, without being refused first again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_calls_answer_a_cameras_digest_challenge() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 20);
    let platform = TestPlatform::start(setup, &world).await;
    let (camera_addr, seen) = digest_camera("admin", "lane-pass").await;
    let (status, answer) = platform
        .call(
            Some(ADMIN_KEY),
            Method::POST,
            &format!("/v1/lots/{}/gates", world.lot),
            Some(&json!({"id": "in-hik", "direction": "entry"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, registered) = platform
        .call(
            Some(ADMIN_KEY),
            Method::POST,
            &format!("/v1/lots/{}/devices", world.lot),
            Some(
                &json!({"id": "cam-hik-in", "kind": "anpr_http", "gate": "in-hik",
                "vendor": "hikvision", "control": {"kind": "http",
                "url": format!("http://{camera_addr}/ISAPI/Parking/channels/1/barrierGate"),
                "username": "admin", "password": "lane-pass"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let password = registered["mqtt_password"].as_str().unwrap().to_owned();
    for (n, plate) in [(1, "浙E33331"), (2, "浙E33332")] {
        let (content_type, body) = event("hikvision", plate, chrono::Utc::now(), n);
        let (status, answer) = push(&platform, "cam-hik-in", &password, content_type, body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        eventually(Duration::from_secs(10), "the camera opened", || {
            let seen = seen.clone();
            async move { (seen.lock().unwrap().accepted.len() == n as usize).then_some(()) }
        })
        .await;
    }
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.accepted,
            [
                (
                    "PUT".to_owned(),
                    "/ISAPI/Parking/channels/1/barrierGate".to_owned(),
                    "00000001".to_owned()
                ),
                (
                    "PUT".to_owned(),
                    "/ISAPI/Parking/channels/1/barrierGate".to_owned(),
                    "00000002".to_owned()
                ),
            ]
        );
        assert_eq!(seen.refused, 1, "asked once, then answered directly");
    }
    let lanes = platform
        .admin_get(&format!("/v1/lots/{}/lanes", world.lot))
        .await;
    assert!(lanes.to_string().contains("\"ok\":true"), "{lanes}");
    platform.stop().await;
}

/// An operator admin aiming a camera's barrier calls at what the platform's network position
/// reaches and theirs does not: the cloud's metadata service, link-local addresses. Refused at
/// registration with a clear error (cameras on private networks stay allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_calls_cannot_be_aimed_at_the_platforms_network_services() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 20);
    let platform = TestPlatform::start(setup, &world).await;
    let operator = platform.issue_key("operator_admin", Some("op-test")).await;
    let (status, answer) = platform
        .call(
            Some(&operator),
            Method::POST,
            &format!("/v1/lots/{}/gates", world.lot),
            Some(&json!({"id": "in-ssrf", "direction": "entry"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    for (n, url) in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://100.100.100.200/latest/meta-data/ram/security-credentials/",
        "http://[fe80::1]/",
        "http://0.0.0.0:8080/v1/keys",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, answer) = platform
            .call(
                Some(&operator),
                Method::POST,
                &format!("/v1/lots/{}/devices", world.lot),
                Some(
                    &json!({"id": format!("cam-ssrf-{n}"), "kind": "anpr_http", "gate": "in-ssrf",
                    "vendor": "dahua", "control": {"kind": "http", "url": url}}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_anpr", "{answer}");
    }
    let (status, answer) = platform
        .call(
            Some(&operator),
            Method::POST,
            &format!("/v1/lots/{}/devices", world.lot),
            Some(&json!({"id": "cam-ssrf-ok", "kind": "anpr_http", "gate": "in-ssrf",
                "vendor": "dahua", "control": {"kind": "http",
                "url": "http://192.168.1.108/cgi-bin/trafficSnap.cgi?action=openStrobe&channel=1"}})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a camera on a private network: {answer}"
    );
    platform.stop().await;
}
