//! Who may reach what (SPEC §5): every staff and driver endpoint × every role × own or another
//! operator's object, against the running platform; server-owned fields in request bodies are
//! refused; a revoked key stops working at once.

use crate::support::{ADMIN_KEY, Broker, Database, Setup, TestDevice, TestPlatform, World};
use parkflow_gateway::registry::LotKind;
use parkflow_gateway::store::provision::{LotPlan, OperatorPlan};
use parkflow_protocol::{Direction, LotId};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// The callers, in the matrix's column order.
const ROLES: [&str; 8] = [
    "no key",
    "unknown key",
    "platform admin",
    "own operator admin",
    "own operator viewer",
    "other operator admin",
    "driver",
    "navigation app",
];

struct Caller {
    name: &'static str,
    key: Option<String>,
}

async fn send(
    platform: &TestPlatform,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    platform.call(key, method, path, body).await
}

async fn issue(platform: &TestPlatform, role: &str, operator: Option<&str>) -> String {
    platform.issue_key(role, operator).await
}

/// A platform with two operators (the world's `op-test` with its lot, `op-other` with a lot of
/// its own), a key of every role, and one session in the world's lot.
async fn platform() -> (TestPlatform, World, Vec<Caller>, String) {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let mut world = World::new(setup, 100);
    let other_lot = LotId::parse(&format!("{}-other", world.lot)).unwrap();
    world.plan.operators.push(OperatorPlan {
        id: "op-other".into(),
        name: "Another operator".into(),
    });
    let mut lot: LotPlan = world.plan.lots[0].clone();
    lot.id = other_lot;
    lot.operator_id = "op-other".into();
    lot.kind = LotKind::OffStreet;
    lot.gates.clear();
    world.plan.lots.push(lot);
    let platform = TestPlatform::start(setup, &world).await;

    let (status, enrolled) = send(
        &platform,
        None,
        Method::POST,
        "/v1/drivers",
        Some(&json!({
            "name": "Matrix driver",
            "plates": [{"plate": "浙K12345", "registration_document": crate::support::registration_document("浙K12345")}],
            "payment_account": "acct-matrix",
            "auto_debit_consent": true
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let callers = vec![
        Caller {
            name: ROLES[0],
            key: None,
        },
        Caller {
            name: ROLES[1],
            key: Some("pf_not-a-key".into()),
        },
        Caller {
            name: ROLES[2],
            key: Some(ADMIN_KEY.into()),
        },
        Caller {
            name: ROLES[3],
            key: Some(issue(&platform, "operator_admin", Some("op-test")).await),
        },
        Caller {
            name: ROLES[4],
            key: Some(issue(&platform, "operator_viewer", Some("op-test")).await),
        },
        Caller {
            name: ROLES[5],
            key: Some(issue(&platform, "operator_admin", Some("op-other")).await),
        },
        Caller {
            name: ROLES[6],
            key: Some(enrolled["api_key"].as_str().unwrap().to_owned()),
        },
        Caller {
            name: ROLES[7],
            key: Some(issue(&platform, "navigation_app", None).await),
        },
    ];

    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let read = entry.read(world.enrolled.as_str(), Direction::Entry);
    entry.decide(&read).await;
    let sessions = crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the session recorded",
        || async {
            let sessions = platform.sessions(&world.lot).await;
            (!sessions.is_empty()).then_some(sessions)
        },
    )
    .await;
    let session = sessions[0]["id"].as_str().unwrap().to_owned();
    (platform, world, callers, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_each_role_as_the_matrix_says() {
    let (platform, world, callers, session) = platform().await;
    let lot = world.lot.to_string();
    let other_lot = format!("{lot}-other");
    let unknown = uuid::Uuid::new_v4();
    let refund = json!({"amount": "1.00", "reason": "matrix"});
    let new_viewer = json!({"role": "operator_viewer", "operator_id": "op-test"});
    let recount = json!({"occupied": 1});
    let bad_lot = json!({"id": "lot-matrix", "name": "Matrix", "kind": "off_street",
        "location": {"lat": 30.0, "lon": 120.0}, "capacity": 10, "time_zone": "Mars/Olympus"});
    let tariff = json!({"currency": "CNY", "time_zone": "Asia/Shanghai", "grace_minutes": 0, "unit_minutes": 60,
        "bands": [{"from": "00:00", "to": "00:00", "unit_price": "2.00"}], "effective_from": "2030-01-01T00:00:00Z"});
    let pass = json!({"plate": "浙P12345", "valid_from": "2026-01-01T00:00:00Z", "valid_until": "2027-01-01T00:00:00Z"});

    // Expected status per caller, in ROLES order.
    #[rustfmt::skip]
    let rows: Vec<(Method, String, Option<Value>, [u16; 8])> = vec![
        (Method::GET, "/v1/sessions".into(), None, [401, 401, 200, 200, 200, 200, 403, 403]),
        (Method::GET, format!("/v1/sessions/{session}"), None, [401, 401, 200, 200, 200, 404, 403, 403]),
        (Method::GET, "/v1/review".into(), None, [401, 401, 200, 200, 200, 200, 403, 403]),
        (Method::GET, format!("/v1/lots/{lot}/bays"), None, [401, 401, 200, 200, 200, 404, 403, 403]),
        (Method::GET, format!("/v1/lots/{other_lot}/bays"), None, [401, 401, 200, 404, 404, 200, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/recount"), Some(recount.clone()), [401, 401, 200, 200, 403, 404, 403, 403]),
        (Method::GET, "/v1/settlements?from=2026-01-01&to=2026-12-31".into(), None, [401, 401, 200, 200, 200, 200, 403, 403]),
        (Method::POST, "/v1/settlements/run?from=2026-01-01&to=2026-01-02".into(), None, [401, 401, 200, 403, 403, 403, 403, 403]),
        (Method::GET, "/v1/reconciliation".into(), None, [401, 401, 200, 403, 403, 403, 403, 403]),
        (Method::POST, format!("/v1/charges/{unknown}/refunds"), Some(refund), [401, 401, 404, 404, 403, 404, 403, 403]),
        (Method::POST, format!("/v1/invoices/{unknown}/write-off"), None, [401, 401, 404, 403, 403, 403, 403, 403]),
        (Method::GET, format!("/v1/lots/{lot}/devices"), None, [401, 401, 200, 200, 200, 404, 403, 403]),
        (Method::POST, "/v1/devices/cam-unknown/rotate".into(), None, [401, 401, 404, 404, 403, 404, 403, 403]),
        (Method::GET, "/v1/operators".into(), None, [401, 401, 200, 200, 200, 200, 403, 403]),
        (Method::GET, "/v1/audit".into(), None, [401, 401, 200, 200, 200, 200, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/gates/in-1/open"), Some(json!({"reason": "matrix"})), [401, 401, 200, 200, 403, 404, 403, 403]),
        (Method::GET, "/v1/reports/sessions.csv".into(), None, [401, 401, 200, 200, 200, 200, 403, 403]),
        (Method::GET, "/v1/reports/settlements.csv?from=2026-01-01&to=2026-12-31".into(), None, [401, 401, 200, 200, 200, 200, 403, 403]),
        (Method::GET, "/v1/operators/op-test/lots".into(), None, [401, 401, 200, 200, 200, 404, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/blocks"), Some(json!({"plate": "浙H12345", "reason": "matrix"})), [401, 401, 201, 201, 403, 404, 403, 403]),
        (Method::GET, "/v1/keys".into(), None, [401, 401, 200, 200, 403, 200, 403, 403]),
        (Method::POST, "/v1/keys".into(), Some(new_viewer), [401, 401, 201, 201, 403, 404, 403, 403]),
        (Method::GET, "/v1/me".into(), None, [401, 401, 403, 403, 403, 403, 200, 403]),
        (Method::GET, "/v1/me/sessions".into(), None, [401, 401, 403, 403, 403, 403, 200, 403]),
        (Method::GET, "/v1/me/invoices".into(), None, [401, 401, 403, 403, 403, 403, 200, 403]),
        (Method::GET, "/v1/me/keys".into(), None, [401, 401, 403, 403, 403, 403, 200, 403]),
        (Method::DELETE, format!("/v1/me/keys/{unknown}"), None, [401, 401, 403, 403, 403, 403, 404, 403]),
        (Method::GET, format!("/v1/lots/{lot}/availability"), None, [200; 8]),
        (Method::GET, format!("/v1/lots/{lot}/tariff"), None, [200; 8]),
        (Method::GET, format!("/v1/lots/{lot}/quote?entered_at=2026-03-02T08:00:00Z&exited_at=2026-03-02T09:00:00Z"), None, [200; 8]),
        (Method::GET, "/v1/lots?near=30.25,120.15".into(), None, [200; 8]),
        (Method::GET, "/v1/availability/stream".into(), None, [200; 8]),
        (Method::GET, "/v1/feeds/fiware".into(), None, [200; 8]),
        (Method::GET, "/v1/feeds/datex2".into(), None, [200; 8]),
        (Method::GET, "/healthz".into(), None, [200; 8]),
        (Method::GET, "/readyz".into(), None, [200; 8]),
        (Method::GET, "/metrics".into(), None, [401, 401, 200, 403, 403, 403, 403, 403]),
        (Method::GET, "/v1/openapi.json".into(), None, [200; 8]),
        // Brokers' hooks take the broker's key, not an API key; this platform runs without one.
        (Method::POST, "/v1/broker/authenticate".into(), Some(json!({"clientid": "c", "username": "u", "password": "p"})), [401, 404, 404, 404, 404, 404, 404, 404]),
        (Method::POST, "/v1/broker/authorize".into(), Some(json!({"clientid": "c", "username": "u", "topic": "t", "action": "publish"})), [401, 404, 404, 404, 404, 404, 404, 404]),
        (Method::POST, "/v1/operators".into(), Some(json!({"id": "op-matrix", "name": "Matrix"})), [401, 401, 201, 403, 403, 403, 403, 403]),
        (Method::DELETE, format!("/v1/keys/{unknown}"), None, [401, 401, 404, 404, 403, 404, 403, 403]),
        (Method::POST, "/v1/operators/op-test/lots".into(), Some(bad_lot), [401, 401, 422, 422, 403, 404, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/gates"), Some(json!({"id": "in-9", "direction": "entry"})), [401, 401, 201, 201, 403, 404, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/bays"), Some(json!({"bays": ["b-matrix"]})), [401, 401, 201, 201, 403, 404, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/tariffs"), Some(tariff), [401, 401, 201, 409, 403, 404, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/passes"), Some(pass), [401, 401, 201, 201, 403, 404, 403, 403]),
        (Method::DELETE, format!("/v1/lots/{lot}/blocks/浙H12345"), None, [401, 401, 204, 204, 403, 404, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/devices"), Some(json!({"id": "cam-matrix", "kind": "gate_camera"})), [401, 401, 422, 422, 403, 404, 403, 403]),
        (Method::DELETE, "/v1/devices/cam-unknown".into(), None, [401, 401, 404, 404, 403, 404, 403, 403]),
        (Method::PATCH, format!("/v1/lots/{lot}"), Some(json!({"name": "Matrix lot"})), [401, 401, 200, 200, 403, 404, 403, 403]),
        (Method::DELETE, format!("/v1/lots/{lot}/gates/in-9"), None, [401, 401, 204, 404, 403, 404, 403, 403]),
        (Method::GET, format!("/v1/lots/{lot}/passes"), None, [401, 401, 200, 200, 200, 404, 403, 403]),
        (Method::GET, format!("/v1/lots/{lot}/blocks"), None, [401, 401, 200, 200, 200, 404, 403, 403]),
        (Method::GET, format!("/v1/lots/{lot}/tariffs"), None, [401, 401, 200, 200, 200, 404, 403, 403]),
        (Method::POST, format!("/v1/lots/{lot}/passes/{unknown}/revoke"), Some(json!({"reason": "matrix"})), [401, 401, 404, 404, 403, 404, 403, 403]),
        (Method::PATCH, "/v1/me".into(), Some(json!({"name": "Matrix driver"})), [401, 401, 403, 403, 403, 403, 200, 403]),
        (Method::POST, "/v1/me/keys".into(), None, [401, 401, 403, 403, 403, 403, 201, 403]),
        (Method::GET, format!("/v1/review/{unknown}/pictures/0"), None, [401, 401, 404, 404, 404, 404, 403, 403]),
        (Method::POST, format!("/v1/review/{unknown}/resolve"), Some(json!({"action": "accept", "reason": "matrix"})), [401, 401, 404, 404, 403, 404, 403, 403]),
        (Method::POST, "/v1/drivers".into(), Some(json!({"name": "No consent", "plates": [], "payment_account": "acct-x", "auto_debit_consent": false})), [422; 8]),
        (Method::POST, "/v1/me/plates".into(), Some(json!({"plate": "浙K22222", "registration_document": crate::support::registration_document("浙K22222")})), [401, 401, 403, 403, 403, 403, 201, 403]),
        (Method::GET, "/v1/me/claims".into(), None, [401, 401, 403, 403, 403, 403, 200, 403]),
        (Method::POST, format!("/v1/me/claims/{unknown}/proof"), Some(json!({"receipt": unknown})), [401, 401, 403, 403, 403, 403, 404, 403]),
        // Plates are the city's, not one operator's: only the platform admin decides claims.
        (Method::GET, "/v1/claims".into(), None, [401, 401, 200, 403, 403, 403, 403, 403]),
        (Method::POST, format!("/v1/claims/{unknown}/decision"), Some(json!({"decision": "reject", "reason": "matrix"})), [401, 401, 404, 403, 403, 403, 403, 403]),
        (Method::DELETE, "/v1/me/plates/浙K22222".into(), None, [401, 401, 403, 403, 403, 403, 204, 403]),
        (Method::POST, format!("/v1/me/invoices/{unknown}/pay"), Some(json!({})), [401, 401, 403, 403, 403, 403, 404, 403]),
        (Method::POST, format!("/v1/sessions/{unknown}/pay"), Some(json!({"payment_account": "acct-x"})), [404; 8]),
        (Method::GET, format!("/v1/sessions/{unknown}/pay"), None, [404; 8]),
        // ANPR cameras authenticate with HTTP Basic, not API keys: an unknown camera is 404 to all.
        (Method::POST, "/v1/anpr/cam-unknown".into(), Some(json!({})), [401; 8]),
        (Method::GET, format!("/v1/lots/{lot}/lanes"), None, [401, 401, 200, 200, 200, 404, 403, 403]),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &rows {
        for (caller, expected) in callers.iter().zip(expected) {
            let (status, answer) = send(
                &platform,
                caller.key.as_deref(),
                method.clone(),
                path,
                body.as_ref(),
            )
            .await;
            if status.as_u16() != *expected {
                wrong.push(format!(
                    "{method} {path} as {}: {status}, expected {expected} ({answer})",
                    caller.name
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The matrix covers every operation of the OpenAPI document (so every endpoint: the router
    // and the document are built together).
    let (_, document) = send(&platform, None, Method::GET, "/v1/openapi.json", None).await;
    let mut uncovered = Vec::new();
    for (template, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let covered = rows.iter().any(|(m, path, _, _)| {
                m.as_str().eq_ignore_ascii_case(method) && matches_template(template, path)
            });
            if !covered {
                uncovered.push(format!("{method} {template}"));
            }
        }
    }
    assert!(uncovered.is_empty(), "not in the matrix: {uncovered:?}");

    // Listings show each operator only its own.
    let listed = |key: &str| {
        let platform = &platform;
        let key = key.to_owned();
        async move {
            send(platform, Some(&key), Method::GET, "/v1/sessions", None)
                .await
                .1
        }
    };
    let own = listed(callers[3].key.as_ref().unwrap()).await;
    let other = listed(callers[5].key.as_ref().unwrap()).await;
    assert_eq!(own.as_array().unwrap().len(), 1, "{own}");
    assert_eq!(other.as_array().unwrap().len(), 0, "{other}");
    let csv = |key: &str| {
        let url = platform.url("/v1/reports/sessions.csv");
        let key = key.to_owned();
        async move {
            let response = Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.headers()["content-type"],
                "text/csv; charset=utf-8"
            );
            response.text().await.unwrap()
        }
    };
    let own_csv = csv(callers[3].key.as_ref().unwrap()).await;
    let other_csv = csv(callers[5].key.as_ref().unwrap()).await;
    assert!(own_csv.starts_with("id,lot_id,bay_id,plate,"), "{own_csv}");
    assert_eq!(
        own_csv.lines().count(),
        2,
        "a header and the one session: {own_csv}"
    );
    assert_eq!(other_csv.lines().count(), 1, "a header only: {other_csv}");
    let (_, operators) = send(
        &platform,
        callers[5].key.as_deref(),
        Method::GET,
        "/v1/operators",
        None,
    )
    .await;
    assert_eq!(operators, json!([operators[0].clone()]));
    assert_eq!(operators[0]["id"], "op-other");

    // Another operator's device answers exactly as a device that does not exist: its id is
    // not confirmed to exist.
    let camera = world.entry_camera.to_string();
    for (method, theirs, unknown) in [
        (
            Method::POST,
            format!("/v1/devices/{camera}/rotate"),
            "/v1/devices/cam-unknown/rotate".to_owned(),
        ),
        (
            Method::DELETE,
            format!("/v1/devices/{camera}"),
            "/v1/devices/cam-unknown".to_owned(),
        ),
    ] {
        let other_admin = callers[5].key.as_deref();
        let theirs = send(&platform, other_admin, method.clone(), &theirs, None).await;
        let unknown = send(&platform, other_admin, method, &unknown, None).await;
        assert_eq!(theirs, unknown);
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_at_once_and_only_its_operator_may_revoke_it() {
    let (platform, _world, callers, _) = platform().await;
    let own_admin = callers[3].key.clone().unwrap();
    let other_admin = callers[5].key.clone().unwrap();
    let (status, issued) = send(
        &platform,
        Some(&own_admin),
        Method::POST,
        "/v1/keys",
        Some(&json!({"role": "operator_viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        issued["operator_id"], "op-test",
        "an operator admin's key is their operator's"
    );
    let (id, viewer) = (
        issued["id"].as_str().unwrap(),
        issued["key"].as_str().unwrap(),
    );
    // The key is shown once: listings never carry it.
    let (_, keys) = send(&platform, Some(&own_admin), Method::GET, "/v1/keys", None).await;
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none())
    );

    assert_eq!(
        send(&platform, Some(viewer), Method::GET, "/v1/sessions", None)
            .await
            .0,
        200
    );
    let path = format!("/v1/keys/{id}");
    assert_eq!(
        send(&platform, Some(&other_admin), Method::DELETE, &path, None)
            .await
            .0,
        404
    );
    assert_eq!(
        send(&platform, Some(viewer), Method::DELETE, &path, None)
            .await
            .0,
        403
    );
    assert_eq!(
        send(&platform, Some(&own_admin), Method::DELETE, &path, None)
            .await
            .0,
        204
    );
    assert_eq!(
        send(&platform, Some(viewer), Method::GET, "/v1/sessions", None)
            .await
            .0,
        401
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_carrying_server_owned_fields_are_refused() {
    let (platform, world, callers, _) = platform().await;
    let admin = Some(ADMIN_KEY);
    let cases = [
        (
            "/v1/operators".to_owned(),
            json!({"id": "op-mass", "name": "Mass", "created_at": "2020-01-01T00:00:00Z"}),
        ),
        (
            "/v1/keys".to_owned(),
            json!({"role": "operator_viewer", "operator_id": "op-test", "id": uuid::Uuid::new_v4(), "key": "pf_mine"}),
        ),
        (
            "/v1/keys".to_owned(),
            json!({"role": "operator_viewer", "operator_id": "op-test", "revoked_at": null}),
        ),
        (
            "/v1/drivers".to_owned(),
            json!({"name": "Mass", "plates": [{"plate": "浙K54321"}], "payment_account": "acct",
                   "auto_debit_consent": true, "status": "active", "id": uuid::Uuid::new_v4()}),
        ),
        (
            format!("/v1/lots/{}/recount", world.lot),
            json!({"occupied": 1, "total": 5}),
        ),
    ];
    for (path, body) in cases {
        let (status, answer) = send(&platform, admin, Method::POST, &path, Some(&body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "POST {path}: {answer}"
        );
    }
    // A driver changes their name, account or consent; never their status, id or debts.
    let driver = callers[6].key.as_deref();
    for body in [
        json!({"status": "active"}),
        json!({"id": uuid::Uuid::new_v4()}),
        json!({"name": "Mass", "balance": "0.00"}),
    ] {
        let (status, answer) = send(&platform, driver, Method::PATCH, "/v1/me", Some(&body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "PATCH /v1/me {body}: {answer}"
        );
    }
    // An operator admin cannot mint a platform-wide key, nor one for another operator.
    let own_admin = callers[3].key.as_deref();
    for body in [
        json!({"role": "platform_admin"}),
        json!({"role": "navigation_app"}),
    ] {
        assert_eq!(
            send(&platform, own_admin, Method::POST, "/v1/keys", Some(&body))
                .await
                .0,
            403
        );
    }
    let (status, _) = send(
        &platform,
        own_admin,
        Method::POST,
        "/v1/keys",
        Some(&json!({"role": "operator_admin", "operator_id": "op-other"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_navigation_app_key_earns_a_higher_public_rate() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 100);
    let platform = TestPlatform::start_with(setup, &world, |config| {
        config.public_rate_per_second = 2;
    })
    .await;
    let app = issue(&platform, "navigation_app", None).await;
    let path = format!("/v1/lots/{}/availability", world.lot);
    // Ten quick reads: an anonymous client (burst 4) is slowed down, the app (burst 80) is not.
    let mut anonymous = Vec::new();
    let mut with_key = Vec::new();
    for _ in 0..10 {
        anonymous.push(send(&platform, None, Method::GET, &path, None).await.0);
        with_key.push(
            send(&platform, Some(&app), Method::GET, &path, None)
                .await
                .0,
        );
    }
    assert!(
        anonymous.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{anonymous:?}"
    );
    assert!(
        with_key.iter().all(|s| *s == StatusCode::OK),
        "{with_key:?}"
    );
    // Another role's key buys nothing more than no key.
    let admin_statuses: Vec<StatusCode> = {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(
                send(&platform, Some(ADMIN_KEY), Method::GET, &path, None)
                    .await
                    .0,
            );
        }
        statuses
    };
    assert!(
        admin_statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{admin_statuses:?}"
    );
    // Made-up keys spend the address's budget (before any lookup): slowed down like no key.
    let mut made_up = Vec::new();
    for i in 0..10 {
        let key = format!("pf_made-up-{i}");
        made_up.push(
            send(&platform, Some(&key), Method::GET, &path, None)
                .await
                .0,
        );
    }
    assert!(
        made_up.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{made_up:?}"
    );
    platform.stop().await;
}

/// A public read from the client at `address` (behind the test's trusted proxy): its status,
/// content type and body.
async fn read_from(
    platform: &TestPlatform,
    address: &str,
    key: Option<&str>,
    path: &str,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut request = Client::new()
        .get(platform.url(path))
        .header("X-Forwarded-For", address);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_owned());
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

/// The two reads navigation apps poll are answered before routing (`http::public_reads`): each
/// must answer exactly as its routed handler does, and spend the address's budget once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_reads_answer_as_the_routed_handlers_do() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 100);
    let platform = TestPlatform::start_with(setup, &world, |config| {
        config.public_rate_per_second = 1;
        config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let lot = &world.plan.lots[0];
    let path = format!("/v1/lots/{}/availability", lot.id);
    // Once a request: an anonymous client's burst is twice its rate, then it is slowed down.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(read_from(&platform, "198.51.100.1", None, &path).await.0);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // A navigation app's key sends the same request through the router (a key is its business);
    // each case comes from a client address of its own, whose burst covers both requests.
    let app = issue(&platform, "navigation_app", None).await;
    let cases = [
        path.clone(),
        format!(
            "/v1/lots/{}/availability",
            lot.id.as_str().replace('-', "%2D")
        ),
        format!(
            "/v1/lots?near={:.4},{:.4}&radius_m=5000&limit=5",
            lot.lat, lot.lon
        ),
        "/v1/lots/no-such-lot/availability".to_owned(),
        "/v1/lots?near=95,120&radius_m=100".to_owned(),
        "/v1/lots?near=30.1,120.1&limit=0".to_owned(),
        "/v1/lots?near=30.1,120.1&limit=many".to_owned(),
    ];
    let mut answers = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let address = format!("198.51.100.{}", 10 + i);
        let anonymous = read_from(&platform, &address, None, case).await;
        let routed = read_from(&platform, &address, Some(&app), case).await;
        assert_eq!(anonymous, routed, "GET {case}");
        answers.push(anonymous);
    }
    let statuses: Vec<u16> = answers.iter().map(|(status, ..)| status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 404, 422, 422, 422]);
    let near: Value = serde_json::from_slice(&answers[2].2).unwrap();
    assert_eq!(near[0]["lot"], lot.id.as_str(), "{near}");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_endpoints_are_rate_limited_per_client() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 100);
    let platform = TestPlatform::start_with(setup, &world, |config| {
        config.driver_rate_per_second = 2;
    })
    .await;
    // Enrolment needs no key: a client enrolling in a loop is slowed down (bad bodies count too).
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let body = json!({"name": "Spam"});
        statuses.push(
            send(&platform, None, Method::POST, "/v1/drivers", Some(&body))
                .await
                .0,
        );
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::UNPROCESSABLE_ENTITY),
        "{statuses:?}"
    );
    // Staff endpoints have their own budget (none): the admin is not slowed down by it.
    let (status, _) = send(
        &platform,
        Some(ADMIN_KEY),
        Method::GET,
        "/v1/sessions",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    platform.stop().await;
}

/// Whether a concrete path (its query aside) is an instance of an OpenAPI path template.
fn matches_template(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
}
