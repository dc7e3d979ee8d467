//! Corrections through the review queue (SPEC §3): a misread exit merged with the entry it ends,
//! one recorded stay split in two, a stay given its right plate, a doubtful stay accepted as
//! recorded; a car held at an exit is never merged away. Each stay a correction closes is
//! priced like any other (fee = the quote) and billed exactly once; the billing audit is clean
//! afterwards; every correction is in the audit trail; wrong corrections are refused and change
//! nothing.

use std::time::Duration;

use crate::support::{ADMIN_KEY, Setup, TestDevice, TestPlatform, World};
use chrono::{DateTime, Utc};
use parkflow_db::query;
use parkflow_protocol::{Direction, GateReason};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call(
    platform: &TestPlatform,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    platform
        .call(Some(ADMIN_KEY), method, path, body.as_ref())
        .await
}

/// The unresolved case of `kind` whose plate or session matches, once it is recorded.
async fn case(platform: &TestPlatform, world: &World, kind: &str, plate: &str) -> Value {
    let path = format!("/v1/review?lot={}", world.lot);
    crate::support::eventually(Duration::from_secs(10), kind, || async {
        let (_, queue) = call(platform, Method::GET, &path, None).await;
        queue
            .as_array()?
            .iter()
            .find(|c| c["kind"] == kind && c["plate"] == plate)
            .cloned()
    })
    .await
}

async fn session(platform: &TestPlatform, id: &str) -> Value {
    call(platform, Method::GET, &format!("/v1/sessions/{id}"), None)
        .await
        .1
}

/// The session `plate` has open, once it is recorded.
async fn open_session(platform: &TestPlatform, world: &World, plate: &str) -> Value {
    crate::support::eventually(Duration::from_secs(10), "the open session", || async {
        platform
            .sessions(&world.lot)
            .await
            .into_iter()
            .find(|s| s["plate"] == plate && s["status"] == "open")
    })
    .await
}

/// What the public quote says the stay costs.
async fn quote(platform: &TestPlatform, world: &World, stay: &Value) -> String {
    let at = |field: &str| {
        let t: DateTime<Utc> = stay[field].as_str().unwrap().parse().unwrap();
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let url = format!(
        "/v1/lots/{}/quote?entered_at={}&exited_at={}&plate_color=blue",
        world.lot,
        at("entered_at"),
        at("exited_at"),
    );
    let (status, quote) = call(platform, Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::OK, "{quote}");
    quote["amount"].as_str().unwrap().to_owned()
}

fn resolve(id: &Value) -> String {
    format!("/v1/review/{}/resolve", id.as_str().unwrap())
}

async fn corrections_price_each_stay_and_bill_it_once(setup: Setup) {
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let now = Utc::now();

    // Merge: a car entered as 浙J88888 and its exit was read as 浙Q55555 — an exit without entry.
    let read = entry.read_at(
        "浙J88888",
        Direction::Entry,
        now - chrono::Duration::minutes(50),
    );
    entry.decide(&read).await;
    let entered = open_session(&platform, &world, "浙J88888").await;
    let read = exit.read("浙Q55555", Direction::Exit);
    assert_eq!(exit.decide(&read).await.reason, GateReason::ReviewLater);
    let stray = case(&platform, &world, "exit_without_entry", "浙Q55555").await;
    // Wrong merges first: a session that does not exist, fields of another action.
    let (status, body) = call(
        &platform,
        Method::POST,
        &resolve(&stray["id"]),
        Some(json!({"action": "merge", "with_session": uuid::Uuid::now_v7(), "reason": "misread"})),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("not_mergeable"))
    );
    let (status, body) = call(
        &platform,
        Method::POST,
        &resolve(&stray["id"]),
        Some(json!({"action": "merge", "with_session": entered["id"], "at": now, "reason": "misread"})),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("unexpected_field"))
    );
    let (status, audited) = call(
        &platform,
        Method::POST,
        &resolve(&stray["id"]),
        Some(json!({"action": "merge", "with_session": entered["id"], "reason": "exit misread"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{audited}");
    assert_eq!(audited["action"], "review_merged");
    let merged = session(&platform, entered["id"].as_str().unwrap()).await;
    assert_eq!(merged["status"], "closed", "{merged}");
    assert_eq!(merged["exit_event_id"], read.event_id.as_str());
    assert_eq!(
        merged["fee"].as_str().unwrap(),
        quote(&platform, &world, &merged).await
    );
    // The merged session left the gate's open sessions: the car's next entry opens a fresh one,
    // with no missed exit to review.
    let again = entry.read("浙J88888", Direction::Entry);
    assert_eq!(entry.decide(&again).await.reason, GateReason::Entered);
    open_session(&platform, &world, "浙J88888").await;

    // Split: 浙K77777 was recorded as one stay of two hours (its exit missed); it was two.
    let read = entry.read_at(
        "浙K77777",
        Direction::Entry,
        now - chrono::Duration::hours(2),
    );
    entry.decide(&read).await;
    open_session(&platform, &world, "浙K77777").await;
    entry
        .decide(&entry.read("浙K77777", Direction::Entry))
        .await;
    let missed = case(&platform, &world, "missed_exit", "浙K77777").await;
    let long = session(&platform, missed["session_id"].as_str().unwrap()).await;
    let outside =
        json!({"action": "split", "at": now - chrono::Duration::hours(3), "reason": "two visits"});
    let (status, body) = call(
        &platform,
        Method::POST,
        &resolve(&missed["id"]),
        Some(outside),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("outside_stay"))
    );
    let cut = now - chrono::Duration::minutes(61);
    let (status, audited) = call(
        &platform,
        Method::POST,
        &resolve(&missed["id"]),
        Some(json!({"action": "split", "at": cut, "reason": "two visits"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{audited}");
    let details: Value = serde_json::from_str(audited["details"].as_str().unwrap()).unwrap();
    let first = session(&platform, long["id"].as_str().unwrap()).await;
    let second = session(&platform, details["new_session"].as_str().unwrap()).await;
    assert_eq!(
        (&first["status"], &second["status"]),
        (&json!("closed"), &json!("closed"))
    );
    assert_eq!(first["entered_at"], long["entered_at"]);
    assert_eq!(first["exited_at"], second["entered_at"]);
    assert_eq!(second["exited_at"], long["exited_at"]);
    assert_eq!(
        first["fee"].as_str().unwrap(),
        quote(&platform, &world, &first).await
    );
    assert_eq!(
        second["fee"].as_str().unwrap(),
        quote(&platform, &world, &second).await
    );
    // Resolved once: the same case again is a conflict and changes nothing.
    let (status, _) = call(
        &platform,
        Method::POST,
        &resolve(&missed["id"]),
        Some(json!({"action": "split", "at": cut, "reason": "again"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Edit plate: 浙H33333's stay was really the enrolled driver's car.
    let read = entry.read_at(
        "浙H33333",
        Direction::Entry,
        now - chrono::Duration::minutes(30),
    );
    entry.decide(&read).await;
    open_session(&platform, &world, "浙H33333").await;
    entry
        .decide(&entry.read("浙H33333", Direction::Entry))
        .await;
    let misread = case(&platform, &world, "missed_exit", "浙H33333").await;
    let (status, body) = call(
        &platform,
        Method::POST,
        &resolve(&misread["id"]),
        Some(json!({"action": "edit_plate", "reason": "photo"})),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("missing_field"))
    );
    let (status, audited) = call(
        &platform,
        Method::POST,
        &resolve(&misread["id"]),
        Some(json!({"action": "edit_plate", "plate": world.enrolled.as_str(), "plate_color": "blue", "reason": "plate read from the lane photo"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{audited}");
    assert!(
        !audited.to_string().contains(world.enrolled.as_str()),
        "no plate in the audit trail: {audited}"
    );
    let edited = session(&platform, misread["session_id"].as_str().unwrap()).await;
    assert_eq!(
        (&edited["status"], &edited["plate"]),
        (&json!("closed"), &json!(world.enrolled.as_str()))
    );
    assert_eq!(
        edited["fee"].as_str().unwrap(),
        quote(&platform, &world, &edited).await
    );

    // Accepting a doubtful stay as recorded prices it as recorded.
    let read = entry.read_at(
        "浙M24680",
        Direction::Entry,
        now - chrono::Duration::minutes(20),
    );
    entry.decide(&read).await;
    open_session(&platform, &world, "浙M24680").await;
    entry
        .decide(&entry.read("浙M24680", Direction::Entry))
        .await;
    let doubtful = case(&platform, &world, "missed_exit", "浙M24680").await;
    let (status, _) = call(
        &platform,
        Method::POST,
        &resolve(&doubtful["id"]),
        Some(json!({"action": "accept", "reason": "the car stayed until its next entry"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let accepted = session(&platform, doubtful["session_id"].as_str().unwrap()).await;
    assert_eq!(accepted["status"], "closed");
    assert_eq!(
        accepted["fee"].as_str().unwrap(),
        quote(&platform, &world, &accepted).await
    );

    // A car held at an exit for payment leaves through its own session: no merge takes it.
    let read = entry.read_at(
        world.unenrolled.as_str(),
        Direction::Entry,
        now - chrono::Duration::minutes(40),
    );
    entry.decide(&read).await;
    let held_session = open_session(&platform, &world, world.unenrolled.as_str()).await;
    let held = exit
        .decide(&exit.read(world.unenrolled.as_str(), Direction::Exit))
        .await;
    assert_eq!(held.reason, GateReason::PaymentRequired);
    let read = exit.read("浙Q66666", Direction::Exit);
    assert_eq!(exit.decide(&read).await.reason, GateReason::ReviewLater);
    let stray = case(&platform, &world, "exit_without_entry", "浙Q66666").await;
    let (status, body) = call(
        &platform,
        Method::POST,
        &resolve(&stray["id"]),
        Some(json!({"action": "merge", "with_session": held_session["id"], "reason": "misread"})),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("session_not_open"))
    );
    let still = session(&platform, held_session["id"].as_str().unwrap()).await;
    assert_eq!(still["status"], "open");
    let (_, queue) = call(
        &platform,
        Method::GET,
        &format!("/v1/review?lot={}", world.lot),
        None,
    )
    .await;
    assert!(
        queue
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == stray["id"]),
        "the case stays open: {queue}"
    );

    // Every correction is in the trail; every stay it closed is charged once; the books balance.
    let (_, trail) = call(&platform, Method::GET, "/v1/audit", None).await;
    let actions: Vec<&str> = trail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["review_merged", "review_split", "review_plate_edited"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let db = parkflow_gateway::store::Db::connect(&platform.database_url)
        .await
        .unwrap();
    let closed = [&merged, &first, &second, &edited, &accepted]
        .map(|s| uuid::Uuid::parse_str(s["id"].as_str().unwrap()).unwrap());
    crate::support::eventually(
        Duration::from_secs(20),
        "the corrected stays charged",
        || async {
            let mut charged = 0;
            for id in closed {
                let (count,): (i64,) = query("SELECT COUNT(*) FROM charges WHERE session_id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
                assert!(count <= 1, "a session charged twice");
                charged += count;
            }
            (charged == 5).then_some(())
        },
    )
    .await;
    let report = parkflow_billing::audit::audit(&db).await.unwrap();
    assert_eq!(report.violations, Vec::new());
    platform.stop().await;
}

on_each_database!(corrections_price_each_stay_and_bill_it_once);

/// A merge that fails after taking the open session from the gates gives it back: the car's exit
/// still ends its own session (and is not an exit without entry).
async fn a_failed_merge_gives_the_session_back(setup: Setup) {
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let now = Utc::now();
    // A stray exit an hour ago, then the car's entry 50 minutes ago: that exit cannot end a stay
    // that began after it.
    let stray_read = exit.read_at(
        "浙Q55555",
        Direction::Exit,
        now - chrono::Duration::hours(1),
    );
    assert_eq!(
        exit.decide(&stray_read).await.reason,
        GateReason::ReviewLater
    );
    let stray = case(&platform, &world, "exit_without_entry", "浙Q55555").await;
    let plate = world.enrolled.as_str();
    let read = entry.read_at(plate, Direction::Entry, now - chrono::Duration::minutes(50));
    assert_eq!(entry.decide(&read).await.reason, GateReason::Entered);
    let entered = open_session(&platform, &world, plate).await;
    let (status, body) = call(
        &platform,
        Method::POST,
        &resolve(&stray["id"]),
        Some(json!({"action": "merge", "with_session": entered["id"], "reason": "misread"})),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("not_mergeable"))
    );
    let read = exit.read(plate, Direction::Exit);
    assert_eq!(exit.decide(&read).await.reason, GateReason::BillLater);
    let id = entered["id"].as_str().unwrap();
    let ended =
        crate::support::eventually(Duration::from_secs(10), "the session ended", || async {
            Some(session(&platform, id).await).filter(|s| s["status"] != "open")
        })
        .await;
    assert_eq!(ended["exit_event_id"], read.event_id.as_str(), "{ended}");
    platform.stop().await;
}

on_each_database!(a_failed_merge_gives_the_session_back);
