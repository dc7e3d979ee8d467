//! An operator runs a lot through the API alone (issue: operators, drivers and security): creates
//! it, adds its lanes, a tariff version, cameras with their credentials, a block and a pass — and
//! the lot works at once: cars enter and leave, the blocked plate is held, the pass holder parks
//! free. Another operator sees none of it.

use crate::support::{Broker, Database, Setup, TestDevice, TestPlatform, World};
use parkflow_gateway::store::provision::OperatorPlan;
use parkflow_protocol::{DeviceId, Direction, EventId, GateAction, GateId, GateReason, LotId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn operator_admin(platform: &TestPlatform, operator: &str) -> String {
    platform.issue_key("operator_admin", Some(operator)).await
}

const TARIFF: &str = r#"{"currency": "CNY", "time_zone": "Asia/Shanghai", "grace_minutes": 0, "unit_minutes": 15,
    "bands": [{"from": "07:00", "to": "21:00", "unit_price": "3.00", "first_unit_price": "5.00"},
              {"from": "21:00", "to": "07:00", "unit_price": "1.00", "cap": "5.00"}],
    "effective_from": "2026-01-01T00:00:00Z"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_builds_a_lot_through_the_api_and_it_works_at_once() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let mut world = World::new(setup, 100);
    world.plan.operators.push(OperatorPlan {
        id: "op-other".into(),
        name: "Another operator".into(),
    });
    let platform = TestPlatform::start(setup, &world).await;
    let (own, other) = (
        operator_admin(&platform, "op-test").await,
        operator_admin(&platform, "op-other").await,
    );
    let lot = LotId::parse(&format!("{}-new", world.lot)).unwrap();
    let create = json!({"id": lot.as_str(), "name": "New lot", "kind": "off_street",
        "location": {"lat": 30.26, "lon": 120.16}, "capacity": 10, "time_zone": "Asia/Shanghai"});

    let lots = "/v1/operators/op-test/lots";
    assert_eq!(
        platform
            .call_as(&other, Method::POST, lots, Some(create.clone()))
            .await
            .0,
        404
    );
    let (status, created) = platform
        .call_as(&own, Method::POST, lots, Some(create.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["device_auth"], "signed");
    assert_eq!(
        platform
            .call_as(&own, Method::POST, lots, Some(create))
            .await
            .0,
        409
    );
    let bad = json!({"id": "lot-bad", "name": "Bad", "kind": "off_street",
        "location": {"lat": 95.0, "lon": 0.0}, "capacity": 10, "time_zone": "Asia/Shanghai"});
    assert_eq!(
        platform
            .call_as(&own, Method::POST, lots, Some(bad))
            .await
            .0,
        422
    );
    let zero_stay = json!({"id": "lot-zero", "name": "Zero", "kind": "on_street",
        "location": {"lat": 30.0, "lon": 120.0}, "capacity": 10, "time_zone": "Asia/Shanghai",
        "max_stay_minutes": 0});
    assert_eq!(
        platform
            .call_as(&own, Method::POST, lots, Some(zero_stay))
            .await
            .0,
        422
    );
    let nul = json!({"id": "lot-nul", "name": "Bad\u{0}name", "kind": "on_street",
        "location": {"lat": 30.0, "lon": 120.0}, "capacity": 10, "time_zone": "Asia/Shanghai"});
    assert_eq!(
        platform
            .call_as(&own, Method::POST, lots, Some(nul))
            .await
            .0,
        422
    );
    let (_, listed) = platform.call_as(&own, Method::GET, lots, None).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == lot.as_str())
    );
    assert_eq!(
        platform.call_as(&other, Method::GET, lots, None).await.0,
        404
    );

    // Lanes, a tariff version (the same one twice is a conflict), cameras.
    for (gate, direction) in [("in-1", "entry"), ("out-1", "exit")] {
        let (status, _) = platform
            .call_as(
                &own,
                Method::POST,
                &format!("/v1/lots/{lot}/gates"),
                Some(json!({"id": gate, "direction": direction})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let tariffs = format!("/v1/lots/{lot}/tariffs");
    let tariff: Value = serde_json::from_str(TARIFF).unwrap();
    assert_eq!(
        platform
            .call_as(&other, Method::POST, &tariffs, Some(tariff.clone()))
            .await
            .0,
        404
    );
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &tariffs, Some(tariff.clone()))
            .await
            .0,
        201
    );
    // Later versions take effect from now on (a past start would reprice billed stays), once.
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &tariffs, Some(tariff.clone()))
            .await
            .0,
        422,
        "backdated"
    );
    let mut next = tariff.clone();
    next["effective_from"] = json!("2099-01-01T00:00:00Z");
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &tariffs, Some(next.clone()))
            .await
            .0,
        201
    );
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &tariffs, Some(next))
            .await
            .0,
        409
    );
    let mut overlapping = tariff.clone();
    overlapping["bands"][0]["to"] = json!("22:00");
    overlapping["effective_from"] = json!("2099-02-01T00:00:00Z");
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &tariffs, Some(overlapping))
            .await
            .0,
        422
    );
    let (status, served) = platform
        .call_as(&own, Method::GET, &format!("/v1/lots/{lot}/tariff"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served["unit_minutes"], 15);

    let mut lot_world = world.clone();
    lot_world.lot = lot.clone();
    lot_world.secrets.clear();
    for (gate, camera) in [("in-1", "cam-new-in"), ("out-1", "cam-new-out")] {
        let id = DeviceId::parse(&format!("{camera}-{lot}")).unwrap();
        let (status, device) = platform
            .call_as(
                &own,
                Method::POST,
                &format!("/v1/lots/{lot}/devices"),
                Some(json!({"id": id.as_str(), "kind": "gate_camera", "gate": gate})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{device}");
        lot_world.secrets.push((
            id.clone(),
            device["mqtt_password"].as_str().unwrap().to_owned(),
            device["secret"].as_str().unwrap().to_owned(),
        ));
        if gate == "in-1" {
            lot_world.entry_camera = id;
        } else {
            lot_world.exit_camera = id;
        }
    }
    let (entry_gate, exit_gate) = (
        GateId::parse("in-1").unwrap(),
        GateId::parse("out-1").unwrap(),
    );
    let mut entry =
        TestDevice::connect(&platform, &lot_world, &lot_world.entry_camera, &entry_gate).await;
    let mut exit =
        TestDevice::connect(&platform, &lot_world, &lot_world.exit_camera, &exit_gate).await;

    // A block and a pass, set through the API, decide the next reads.
    let blocks = format!("/v1/lots/{lot}/blocks");
    let block = json!({"plate": world.unenrolled.as_str(), "reason": "stolen"});
    assert_eq!(
        platform
            .call_as(&other, Method::POST, &blocks, Some(block.clone()))
            .await
            .0,
        404
    );
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &blocks, Some(block))
            .await
            .0,
        201
    );
    let pass = json!({"plate": world.suspended.as_str(),
        "valid_from": "2026-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z"});
    assert_eq!(
        platform
            .call_as(
                &own,
                Method::POST,
                &format!("/v1/lots/{lot}/passes"),
                Some(pass)
            )
            .await
            .0,
        201
    );

    let read = entry.read(world.unenrolled.as_str(), Direction::Entry);
    let held = entry.decide(&read).await;
    assert_eq!(
        (held.action, held.reason),
        (GateAction::Hold, GateReason::Blocked)
    );
    let read = entry.read(world.suspended.as_str(), Direction::Entry);
    let passed = entry.decide(&read).await;
    assert_eq!(
        (passed.action, passed.reason),
        (GateAction::Open, GateReason::PassHolder)
    );
    let read = entry.read(world.enrolled.as_str(), Direction::Entry);
    assert_eq!(entry.decide(&read).await.reason, GateReason::Entered);
    let read = exit.read(world.enrolled.as_str(), Direction::Exit);
    assert_eq!(exit.decide(&read).await.reason, GateReason::BillLater);

    // A block lifted before the plate comes: it enters.
    let later = "浙F88888";
    let block = json!({"plate": later, "reason": "dispute"});
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &blocks, Some(block))
            .await
            .0,
        201
    );
    let unblock = format!("/v1/lots/{lot}/blocks/{later}");
    assert_eq!(
        platform
            .call_as(&other, Method::DELETE, &unblock, None)
            .await
            .0,
        404
    );
    assert_eq!(
        platform
            .call_as(&own, Method::DELETE, &unblock, None)
            .await
            .0,
        204
    );
    let read = entry.read(later, Direction::Entry);
    assert_eq!(entry.decide(&read).await.reason, GateReason::Entered);

    // A pass revoked (with a reason, audited) no longer lets its plate park free.
    let passes = format!("/v1/lots/{lot}/passes");
    let pass = json!({"plate": "浙G12121",
        "valid_from": "2026-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z"});
    let (status, added) = platform
        .call_as(&own, Method::POST, &passes, Some(pass))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let (_, blocked) = platform.call_as(&own, Method::GET, &blocks, None).await;
    assert!(
        blocked
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["plate"] == world.unenrolled.as_str() && b["reason"] == "stolen"),
        "{blocked}"
    );
    let (_, versions) = platform.call_as(&own, Method::GET, &tariffs, None).await;
    assert!(versions.as_array().unwrap().len() >= 2, "{versions}");
    let (_, listed) = platform.call_as(&own, Method::GET, &passes, None).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == added["id"]),
        "{listed}"
    );
    assert_eq!(
        platform.call_as(&other, Method::GET, &passes, None).await.0,
        404
    );
    let revoke = format!("{passes}/{}/revoke", added["id"].as_str().unwrap());
    let why = json!({"reason": "contract ended"});
    assert_eq!(
        platform
            .call_as(&other, Method::POST, &revoke, Some(why.clone()))
            .await
            .0,
        404
    );
    let (status, audited) = platform
        .call_as(&own, Method::POST, &revoke, Some(why.clone()))
        .await;
    assert_eq!(
        (status, &audited["action"]),
        (StatusCode::OK, &json!("pass_revoked"))
    );
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &revoke, Some(why))
            .await
            .0,
        404
    );
    let read = entry.read("浙G12121", Direction::Entry);
    assert_eq!(entry.decide(&read).await.reason, GateReason::Entered);
    // Every pass and block set or lifted is in the operator's audit trail, with who did it.
    let (status, trail) = platform.call_as(&own, Method::GET, "/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let actions: Vec<(&str, &str)> = trail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["object"].as_str().unwrap()))
        .collect();
    for (action, object) in [
        (
            "plate_blocked",
            format!("{lot}/blocks/{}", world.unenrolled.as_str()),
        ),
        ("plate_blocked", format!("{lot}/blocks/{later}")),
        ("plate_unblocked", format!("{lot}/blocks/{later}")),
        (
            "pass_added",
            format!("{lot}/passes/{}", added["id"].as_str().unwrap()),
        ),
        (
            "pass_revoked",
            format!("{lot}/passes/{}", added["id"].as_str().unwrap()),
        ),
    ] {
        assert!(
            actions.contains(&(action, object.as_str())),
            "{action} {object} missing from {actions:?}"
        );
    }
    assert!(
        trail
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["object"].as_str().unwrap().starts_with(lot.as_str()))
            .all(|e| e["actor_role"] == "operator_admin" && e["actor_key"].is_string()),
        "{trail}"
    );

    // The lot changed (name, capacity); id, operator, kind and time zone are not the client's.
    let path = format!("/v1/lots/{lot}");
    assert_eq!(
        platform
            .call_as(&other, Method::PATCH, &path, Some(json!({"capacity": 7})))
            .await
            .0,
        404
    );
    for refused in [
        json!({"capacity": 2_000_000}),
        json!({"time_zone": "UTC"}),
        json!({"operator_id": "op-other"}),
    ] {
        assert_eq!(
            platform
                .call_as(&own, Method::PATCH, &path, Some(refused))
                .await
                .0,
            422
        );
    }
    let (status, changed) = platform
        .call_as(
            &own,
            Method::PATCH,
            &path,
            Some(json!({"name": "Renamed lot", "capacity": 7})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        (&changed["name"], &changed["capacity"]),
        (&json!("Renamed lot"), &json!(7))
    );
    assert_eq!(changed["time_zone"], "Asia/Shanghai");
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the new capacity published",
        || async {
            let (_, board) = platform
                .call_as(
                    &own,
                    Method::GET,
                    &format!("/v1/lots/{lot}/availability"),
                    None,
                )
                .await;
            (board["total"] == 7 && board["name"] == "Renamed lot").then_some(())
        },
    )
    .await;

    // A lane out of service: not while its camera is registered; a spare lane goes at once.
    let gates = format!("/v1/lots/{lot}/gates");
    let (status, body) = platform
        .call_as(&own, Method::DELETE, &format!("{gates}/out-1"), None)
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("gate_has_device"))
    );
    let spare = json!({"id": "in-2", "direction": "entry"});
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &gates, Some(spare))
            .await
            .0,
        201
    );
    assert_eq!(
        platform
            .call_as(&other, Method::DELETE, &format!("{gates}/in-2"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        platform
            .call_as(&own, Method::DELETE, &format!("{gates}/in-2"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        platform
            .call_as(&own, Method::DELETE, &format!("{gates}/in-2"), None)
            .await
            .0,
        404
    );

    // The barrier opened by hand: a signed `open` the camera verifies, and an audit entry that
    // says who, when and why. Another operator can neither open it nor see the entry.
    let open = format!("/v1/lots/{lot}/gates/in-1/open");
    let why = json!({"reason": "ambulance waiting"});
    assert_eq!(
        platform
            .call_as(&other, Method::POST, &open, Some(why.clone()))
            .await
            .0,
        404
    );
    let (status, opened) = platform.call_as(&own, Method::POST, &open, Some(why)).await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    let event_id = EventId::parse(opened["event_id"].as_str().unwrap()).unwrap();
    let command = entry.command_for(&event_id).await;
    assert_eq!(
        (command.action, command.reason),
        (GateAction::Open, GateReason::Manual)
    );
    let (_, trail) = platform.call_as(&own, Method::GET, "/v1/audit", None).await;
    let audited = &trail[0];
    assert_eq!(audited["action"], "manual_open");
    assert_eq!(audited["reason"], "ambulance waiting");
    assert_eq!(audited["actor_role"], "operator_admin");
    assert!(audited["actor_key"].is_string() && audited["at"].is_string());
    assert_eq!(audited["object"], format!("{lot}/in-1"));
    let (_, others) = platform
        .call_as(&other, Method::GET, "/v1/audit", None)
        .await;
    // The other operator sees only its own entries (the issuing of its own key).
    assert!(
        others
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["operator_id"] == "op-other"),
        "{others}"
    );

    // The review queue, worked through the API: a car read entering twice (its first stay ends
    // in review, a missed exit) and an exit without an entry.
    let twice = "浙K77777";
    let read = entry.read(twice, Direction::Entry);
    entry.decide(&read).await;
    let earlier = entry.read_at(
        twice,
        Direction::Entry,
        chrono::Utc::now() - chrono::Duration::hours(1),
    );
    entry.decide(&earlier).await;
    let read = exit.read("浙J99999", Direction::Exit);
    assert_eq!(exit.decide(&read).await.reason, GateReason::ReviewLater);
    let queue = crate::support::eventually(
        std::time::Duration::from_secs(10),
        "two review cases",
        || {
            let path = format!("/v1/review?lot={lot}");
            let (platform, own) = (&platform, own.clone());
            async move {
                let (_, queue) = platform.call_as(&own, Method::GET, &path, None).await;
                (queue.as_array()?.len() == 2).then_some(queue)
            }
        },
    )
    .await;
    let case = |kind: &str| {
        queue
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == kind)
            .unwrap()
            .clone()
    };
    let (missed, stray) = (case("missed_exit"), case("exit_without_entry"));
    let resolve = |id: &Value| format!("/v1/review/{}/resolve", id.as_str().unwrap());
    let void = json!({"action": "void_session", "reason": "a test car"});
    let accept = json!({"action": "accept", "reason": "the car left"});
    assert_eq!(
        platform
            .call_as(
                &other,
                Method::POST,
                &resolve(&stray["id"]),
                Some(accept.clone())
            )
            .await
            .0,
        404
    );
    assert_eq!(
        platform
            .call_as(
                &own,
                Method::POST,
                &resolve(&stray["id"]),
                Some(void.clone())
            )
            .await
            .0,
        409
    );
    let (status, audited) = platform
        .call_as(
            &own,
            Method::POST,
            &resolve(&stray["id"]),
            Some(accept.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{audited}");
    assert_eq!(audited["action"], "review_accepted");
    assert_eq!(
        platform
            .call_as(&own, Method::POST, &resolve(&stray["id"]), Some(accept))
            .await
            .0,
        409
    );
    let (status, _) = platform
        .call_as(&own, Method::POST, &resolve(&missed["id"]), Some(void))
        .await;
    assert_eq!(status, StatusCode::OK);
    let session = missed["session_id"].as_str().unwrap();
    let (_, voided) = platform
        .call_as(&own, Method::GET, &format!("/v1/sessions/{session}"), None)
        .await;
    assert_eq!(voided["status"], "void");
    let (_, queue) = platform
        .call_as(&own, Method::GET, &format!("/v1/review?lot={lot}"), None)
        .await;
    assert_eq!(queue, json!([]));
    platform.stop().await;
}

/// Tariff versions sent at once are each numbered after the last, and a repeated
/// `effective_from` is a conflict, never a server error (PostgreSQL once numbered two alike).
async fn concurrent_tariff_versions(setup: Setup) {
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let own = operator_admin(&platform, "op-test").await;
    let path = format!("/v1/lots/{}/tariffs", world.lot);
    let requests = (0..32).map(|i| {
        let mut tariff: Value = serde_json::from_str(TARIFF).unwrap();
        // Two requests per instant: one of each pair is the conflict.
        tariff["effective_from"] = json!(format!("2031-01-{:02}T00:00:00Z", i / 2 + 1));
        let (platform, own, path) = (&platform, own.clone(), path.clone());
        async move {
            platform
                .call_as(&own, Method::POST, &path, Some(tariff))
                .await
                .0
        }
    });
    let mut statuses: Vec<u16> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|s| s.as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [[201; 16], [409; 16]].concat());
    platform.stop().await;
}

/// A lot changes field by field: a maximum stay can be removed again, and adding a lane (which
/// provisions the lot's plan) never undoes an operator's change.
async fn lot_changes_stand(setup: Setup) {
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let own = operator_admin(&platform, "op-test").await;
    let path = format!("/v1/lots/{}", world.lot);
    let (status, lot) = platform
        .call_as(
            &own,
            Method::PATCH,
            &path,
            Some(json!({"max_stay_minutes": 90})),
        )
        .await;
    assert_eq!(
        (status, &lot["max_stay_minutes"]),
        (StatusCode::OK, &json!(90)),
        "{lot}"
    );
    let (status, lot) = platform.call_as(&own,
        Method::PATCH,
        &path,
        Some(json!({"max_stay_minutes": null, "capacity": 50, "location": {"lat": 30.3, "lon": 120.2}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{lot}");
    assert_eq!(
        (&lot["max_stay_minutes"], &lot["capacity"]),
        (&Value::Null, &json!(50))
    );
    assert_eq!(lot["location"], json!({"lat": 30.3, "lon": 120.2}));
    assert_eq!(lot["name"], "Test lot", "fields not given stay");
    let gates = format!("/v1/lots/{}/gates", world.lot);
    let (status, _) = platform
        .call_as(
            &own,
            Method::POST,
            &gates,
            Some(json!({"id": "in-3", "direction": "entry"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, lots) = platform
        .call_as(&own, Method::GET, "/v1/operators/op-test/lots", None)
        .await;
    let listed = lots
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == world.lot.as_str())
        .unwrap();
    assert_eq!(
        (&listed["capacity"], &listed["max_stay_minutes"]),
        (&json!(50), &Value::Null)
    );
    platform.stop().await;
}

/// Removing a gate and registering a camera to it at the same moment: either the camera is
/// registered and the gate stays (409), or the gate is gone and the camera refused — never a
/// camera on a removed gate.
async fn gate_removal_races_camera_registration(setup: Setup) {
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let own = operator_admin(&platform, "op-test").await;
    let gates = format!("/v1/lots/{}/gates", world.lot);
    let devices = format!("/v1/lots/{}/devices", world.lot);
    for i in 0..16 {
        let gate = json!({"id": format!("race-{i}"), "direction": "entry"});
        let status = platform
            .call_as(&own, Method::POST, &gates, Some(gate))
            .await
            .0;
        assert_eq!(status, StatusCode::CREATED);
    }
    let races = (0..16).map(|i| {
        let (platform, own, gates, devices) = (&platform, own.clone(), &gates, &devices);
        async move {
            let camera = json!({"id": format!("race-cam-{i}"), "kind": "gate_camera", "gate": format!("race-{i}")});
            let removal = format!("{gates}/race-{i}");
            let (registered, removed) = tokio::join!(
                platform.call_as(&own, Method::POST, devices, Some(camera)),
                platform.call_as(&own, Method::DELETE, &removal, None),
            );
            (registered.0.as_u16(), removed.0.as_u16())
        }
    });
    for (i, outcome) in futures::future::join_all(races)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(
            matches!(outcome, (201, 409) | (422, 204)),
            "gate race-{i}: registration and removal answered {outcome:?}"
        );
    }
    platform.stop().await;
}

on_each_database!(concurrent_tariff_versions);

on_each_database!(gate_removal_races_camera_registration);

on_each_database!(lot_changes_stand);
