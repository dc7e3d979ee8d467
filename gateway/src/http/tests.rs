//! The router on its own, request by request (`tower::ServiceExt::oneshot`): what the API
//! answers before any actor is involved (keys, bad input, the document, readiness) needs a
//! database but no broker, no gate and no running platform.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use parkflow_billing::payments::Payments;
use parkflow_billing::provider::{FaultConfig, SimulatedProvider};
use parkflow_db::Db;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::{AppState, limit, loggable_path, router};
use crate::availability::AvailabilityHandle;
use crate::gate::{GateHandle, GateMessage};
use crate::metrics::Metrics;
use crate::occupancy::{OccupancyHandle, OccupancyMessage};
use crate::registry::access::PlatformLogin;
use crate::registry::{DeviceKind, GateDirection, LotKind, RegistryHandle, mqtt_password};
use crate::store::provision::{DevicePlan, LotPlan, OperatorPlan, Plan, provision};
use parkflow_protocol::{BayId, DeviceAuth, DeviceId, GateId, LotId};

const ADMIN_KEY: &str = "router-test-admin-key";
const BROKER_KEY: &str = "router-test-broker-key";

/// The MQTT password of a device of [`small_city`].
fn pw(device: &str) -> String {
    mqtt_password(&format!("secret-{device}"))
}

/// A gated lot with camera `cam-1` at gate `in-1`, and a street with sensor `sensor-1` at bay
/// `b-1` (signing key `secret-{device}`, MQTT password [`pw`]).
fn small_city() -> Plan {
    let lot = |id: &str, kind, gates, bays| LotPlan {
        id: LotId::parse(id).unwrap(),
        operator_id: "op-1".into(),
        name: id.into(),
        kind,
        lat: 30.27,
        lon: 120.15,
        capacity: 10,
        time_zone: "Asia/Shanghai".into(),
        device_auth: DeviceAuth::Signed,
        gates,
        bays,
        max_stay_minutes: None,
        offline_policy: Default::default(),
        tariffs: Vec::new(),
    };
    let device = |id: &str, kind, lot: &str, gate: Option<&str>, bay: Option<&str>| DevicePlan {
        id: DeviceId::parse(id).unwrap(),
        kind,
        lot: Some(LotId::parse(lot).unwrap()),
        gate: gate.map(|g| GateId::parse(g).unwrap()),
        bay: bay.map(|b| BayId::parse(b).unwrap()),
        mqtt_username: id.into(),
        secret: format!("secret-{id}").into(),
    };
    Plan {
        operators: vec![OperatorPlan {
            id: "op-1".into(),
            name: "Operator".into(),
        }],
        lots: vec![
            lot(
                "lot-a",
                LotKind::OffStreet,
                vec![(GateId::parse("in-1").unwrap(), GateDirection::Entry)],
                Vec::new(),
            ),
            lot(
                "street-a",
                LotKind::OnStreet,
                Vec::new(),
                vec![BayId::parse("b-1").unwrap()],
            ),
        ],
        devices: vec![
            device("cam-1", DeviceKind::GateCamera, "lot-a", Some("in-1"), None),
            device(
                "sensor-1",
                DeviceKind::BaySensor,
                "street-a",
                None,
                Some("b-1"),
            ),
        ],
        ..Plan::default()
    }
}

/// A state over a fresh SQLite database. The actors' inboxes are kept, never served: a request
/// that reached an actor would hang, and none of these may.
struct Api {
    state: AppState,
    connected: watch::Sender<bool>,
    _inboxes: (
        mpsc::Receiver<GateMessage>,
        mpsc::Receiver<OccupancyMessage>,
    ),
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new() -> Self {
        Self::with(&Plan::default()).await
    }

    /// A state over a database holding `plan`.
    async fn with(plan: &Plan) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("api.db").display()))
            .await
            .unwrap();
        let (gates, gate_inbox) = GateHandle::channel();
        let (occupancy, occupancy_inbox) = OccupancyHandle::channel();
        let (connected, mqtt_connected) = watch::channel(true);
        let provider = SimulatedProvider::new(FaultConfig::none()).unwrap();
        provision(&db, plan, chrono::Utc::now()).await.unwrap();
        let state = AppState::new(crate::http::AppStateInner {
            registry: RegistryHandle::load(&db).await.unwrap(),
            metrics: Arc::new(Metrics::new()),
            gates,
            payments: Arc::new(Payments::new(db.clone(), provider)),
            kicker: None,
            relay: crate::anpr::barrier::BarrierRelay::new(
                Arc::new(Metrics::new()),
                crate::anpr::barrier::Destinations::default(),
            )
            .0,
            verifiers: parkflow_billing::claims::Verifiers::shipped(
                db.clone(),
                parkflow_billing::claims::SimulatedRegister::new("router tests".into()),
            ),
            mqtt_connected,
            admin_key_hash: Some(crate::registry::password_hash(ADMIN_KEY)),
            availability: AvailabilityHandle::new(Default::default()),
            occupancy,
            public_limit: limit::PublicLimit::per_second(1_000),
            driver_limit: limit::AddressLimit::per_second(1_000),
            shutdown: tokio_util::sync::CancellationToken::new(),
            trusted_proxies: limit::TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]),
            streams: limit::StreamLimit::new(2, 3),
            broker_hook: Some(Arc::new(super::BrokerHook {
                key: BROKER_KEY.into(),
                platform: Some(PlatformLogin {
                    username: "gateway".into(),
                    password: "pw-gateway".into(),
                }),
            })),
            db,
            broker_acl: None,
            node: None,
        });
        Self {
            state,
            connected,
            _inboxes: (gate_inbox, occupancy_inbox),
            _dir: dir,
        }
    }

    /// One request as a client at 192.0.2.1 sends it; the status and the JSON answer (`null`
    /// when the body is not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if body.is_some() {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
        }
        let mut request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40_000))));
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn staff_endpoints_need_the_right_key() {
    let api = Api::new().await;
    for key in [None, Some("not-the-key"), Some("")] {
        let (status, body) = api.call(Method::GET, "/v1/operators", key, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}: {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let (status, body) = api
        .call(Method::GET, "/v1/operators", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([]));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let api = Api::new().await;
    for body in ["{", "[]", r#"{"name": 7}"#] {
        let (status, answer) = api
            .call(Method::POST, "/v1/operators", Some(ADMIN_KEY), Some(body))
            .await;
        assert_eq!(status.as_u16() / 100, 4, "{body}: {status}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}: {answer}"
        );
    }
    let (_, operators) = api
        .call(Method::GET, "/v1/operators", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(operators, json!([]));
    // A driver enrolling with a plate that is not a plate.
    let enrol = json!({
        "name": "A", "payment_account": "acct", "auto_debit_consent": true,
        "plates": [{"plate": "#1", "plate_color": "blue"}],
    });
    let (status, answer) = api
        .call(Method::POST, "/v1/drivers", None, Some(&enrol.to_string()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_plate", "{answer}");
    // A colour that is not one: the answer names the ones there are.
    let enrol = json!({
        "name": "A", "payment_account": "acct", "auto_debit_consent": true,
        "plates": [{"plate": "浙A12345", "plate_color": "red"}],
    });
    let (status, answer) = api
        .call(Method::POST, "/v1/drivers", None, Some(&enrol.to_string()))
        .await;
    assert_eq!(status.as_u16() / 100, 4, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("red") && message.contains("yellow"),
        "{message}"
    );
    let (status, answer) = api
        .call(Method::GET, "/v1/lots/no-such-lot/quote?entered_at=2026-12-01T08:00:00Z&exited_at=2026-12-01T09:00:00Z&plate_color=red", None, None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("red"));
}

#[tokio::test]
async fn unknown_routes_and_ids_are_json_404s() {
    let api = Api::new().await;
    let (status, body) = api.call(Method::GET, "/v1/nothing-here", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let (status, body) = api
        .call(
            Method::GET,
            &format!("/v1/sessions/{}", uuid::Uuid::new_v4()),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn the_document_describes_every_route_it_serves() {
    let api = Api::new().await;
    let (status, document) = api.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/v1/drivers",
        "/v1/operators",
        "/v1/review/{id}/resolve",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the document");
    }
}

#[tokio::test]
async fn not_ready_while_the_broker_link_is_down() {
    let api = Api::new().await;
    assert_eq!(
        api.call(Method::GET, "/readyz", None, None).await.0,
        StatusCode::OK
    );
    api.connected.send(false).unwrap();
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        api.call(Method::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn not_ready_while_database_writes_fail_and_within_a_second_while_it_stalls() {
    let api = Api::new().await;
    api.state.metrics.store_writes_failing.inc();
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["writes"], false, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("writes"),
        "{body}"
    );
    api.state.metrics.store_writes_failing.dec();

    // A database that takes no new work (here: every connection held, as a stalled server
    // holds them) is a 503 within a second, not a probe that hangs.
    let parkflow_db::Pool::Sqlite(pool) = api.state.db.pool() else {
        unreachable!("the API tests run on SQLite")
    };
    let mut held = Vec::new();
    while let Ok(Ok(connection)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), pool.acquire()).await
    {
        held.push(connection);
    }
    let started = std::time::Instant::now();
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["database"], false, "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(held);
    assert_eq!(
        api.call(Method::GET, "/readyz", None, None).await.0,
        StatusCode::OK
    );
}

#[test]
fn paths_in_logs_never_carry_a_plate() {
    assert_eq!(
        loggable_path("/v1/lots/lot-1/blocks/%E6%B5%99A12345"),
        "/v1/lots/lot-1/blocks/{plate}"
    );
    assert_eq!(
        loggable_path("/v1/me/plates/AB123"),
        "/v1/me/plates/{plate}"
    );
    assert_eq!(loggable_path("/v1/me/plates"), "/v1/me/plates");
    assert_eq!(
        loggable_path("/v1/lots/lot-1/availability"),
        "/v1/lots/lot-1/availability"
    );
}

/// A broker's call to a hook: EMQX's (a bearer key) or VerneMQ's (`vernemq-hook`, the key as
/// the password of the endpoint's user info).
async fn hook(
    api: &Api,
    path: &str,
    vernemq: Option<&str>,
    key: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    request = match vernemq {
        Some(name) => {
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("vernemq:{key}"));
            request
                .header("vernemq-hook", name)
                .header(header::AUTHORIZATION, format!("Basic {basic}"))
        }
        None => request.header(header::AUTHORIZATION, format!("Bearer {key}")),
    };
    let request = request.body(Body::from(body.to_string())).unwrap();
    let response = router(api.state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// EMQX's HTTP authentication and authorization, with the request bodies README configures.
#[tokio::test]
async fn emqx_asks_who_may_connect_and_what_each_device_may_do() {
    let api = Api::with(&small_city()).await;
    let authn = |clientid: &str, username: &str, password: &str| json!({"clientid": clientid, "username": username, "password": password});
    let allowed = |answer: (StatusCode, Value)| {
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
        answer.1["result"] == "allow"
    };
    let path = "/v1/broker/authenticate";
    assert!(allowed(
        hook(
            &api,
            path,
            None,
            BROKER_KEY,
            authn("cam-1", "cam-1", &pw("cam-1"))
        )
        .await
    ));
    assert!(allowed(
        hook(
            &api,
            path,
            None,
            BROKER_KEY,
            authn("sensor-1", "sensor-1", &pw("sensor-1"))
        )
        .await
    ));
    assert!(allowed(
        hook(
            &api,
            path,
            None,
            BROKER_KEY,
            authn("parkflow-gateway", "gateway", "pw-gateway")
        )
        .await
    ));
    assert!(!allowed(
        hook(
            &api,
            path,
            None,
            BROKER_KEY,
            authn("cam-1", "cam-1", "wrong")
        )
        .await
    ));
    assert!(!allowed(
        hook(
            &api,
            path,
            None,
            BROKER_KEY,
            authn("sensor-1", "sensor-1", &pw("cam-1"))
        )
        .await
    ));
    // A device's own credentials under the platform's client id: refused.
    assert!(!allowed(
        hook(
            &api,
            path,
            None,
            BROKER_KEY,
            authn("parkflow-gateway", "cam-1", &pw("cam-1"))
        )
        .await
    ));
    // Only the broker may ask: without the key the hook answers nothing useful.
    let (status, _) = hook(
        &api,
        path,
        None,
        "guess",
        authn("cam-1", "cam-1", &pw("cam-1")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let authz = |clientid: &str, username: &str, action: &str, topic: &str, retain: &str| json!({"clientid": clientid, "username": username, "action": action, "topic": topic, "retain": retain});
    let path = "/v1/broker/authorize";
    let gate = "parkflow/v1/lots/lot-a/gates/in-1";
    let cases = [
        (
            authz(
                "cam-1",
                "cam-1",
                "publish",
                &format!("{gate}/plate"),
                "false",
            ),
            true,
        ),
        (
            authz(
                "cam-1",
                "cam-1",
                "subscribe",
                &format!("{gate}/command"),
                "false",
            ),
            true,
        ),
        (
            authz(
                "cam-1",
                "cam-1",
                "publish",
                &format!("{gate}/command"),
                "false",
            ),
            false,
        ),
        (
            authz("cam-1", "cam-1", "subscribe", "parkflow/v1/#", "false"),
            false,
        ),
        (
            authz("sensor-1", "sensor-1", "subscribe", "#", "false"),
            false,
        ),
        (
            authz(
                "sensor-1",
                "sensor-1",
                "subscribe",
                &format!("{gate}/plate"),
                "false",
            ),
            false,
        ),
        (
            authz(
                "sensor-1",
                "sensor-1",
                "publish",
                "parkflow/v1/lots/street-a/bays/b-1/heartbeat",
                "false",
            ),
            true,
        ),
        (
            authz(
                "sensor-1",
                "sensor-1",
                "publish",
                "parkflow/v1/lots/street-a/bays/b-1/heartbeat",
                "true",
            ),
            false,
        ),
        (
            authz(
                "sensor-1",
                "sensor-1",
                "publish",
                "parkflow/v1/devices/sensor-1/status",
                "true",
            ),
            true,
        ),
        (
            authz(
                "sensor-1",
                "sensor-1",
                "publish",
                "parkflow/v1/devices/cam-1/status",
                "true",
            ),
            false,
        ),
        (
            authz(
                "sensor-1",
                "sensor-1",
                "subscribe",
                "parkflow/v1/lots/+/availability",
                "false",
            ),
            true,
        ),
        (
            authz(
                "sensor-1",
                "sensor-1",
                "publish",
                "parkflow/v1/lots/street-a/availability",
                "true",
            ),
            false,
        ),
        (
            authz(
                "sensor-1",
                "sensor-1",
                "subscribe",
                "$CONTROL/dynamic-security/v1/response",
                "false",
            ),
            false,
        ),
        (
            authz(
                "parkflow-gateway",
                "gateway",
                "subscribe",
                "parkflow/v1/#",
                "false",
            ),
            true,
        ),
        (
            authz(
                "stranger",
                "stranger",
                "subscribe",
                "parkflow/v1/lots/+/availability",
                "false",
            ),
            false,
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(
            allowed(hook(&api, path, None, BROKER_KEY, request.clone()).await),
            expected,
            "{request}"
        );
    }
}

/// VerneMQ's webhooks, with the payloads its documentation shows.
#[tokio::test]
async fn vernemq_webhooks_get_verne_shaped_answers() {
    let api = Api::with(&small_city()).await;
    let register = |client_id: &str, password: &str| {
        json!({"peer_addr": "127.0.0.1", "peer_port": 8888, "username": client_id, "password": password,
               "mountpoint": "", "client_id": client_id, "clean_session": false})
    };
    let path = "/v1/broker/authenticate";
    let (status, ok) = hook(
        &api,
        path,
        Some("auth_on_register"),
        BROKER_KEY,
        register("cam-1", &pw("cam-1")),
    )
    .await;
    assert_eq!((status, ok), (StatusCode::OK, json!({"result": "ok"})));
    let (_, refused) = hook(
        &api,
        path,
        Some("auth_on_register"),
        BROKER_KEY,
        register("cam-1", "nope"),
    )
    .await;
    assert_eq!(refused, json!({"result": {"error": "not_allowed"}}));
    let (status, _) = hook(
        &api,
        path,
        Some("auth_on_register"),
        "guess",
        register("cam-1", &pw("cam-1")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let path = "/v1/broker/authorize";
    let publish = |topic: &str| {
        json!({"username": "cam-1", "client_id": "cam-1", "mountpoint": "", "qos": 1,
               "topic": topic, "payload": "eyJ9", "retain": false})
    };
    let (_, ok) = hook(
        &api,
        path,
        Some("auth_on_publish"),
        BROKER_KEY,
        publish("parkflow/v1/lots/lot-a/gates/in-1/plate"),
    )
    .await;
    assert_eq!(ok, json!({"result": "ok"}));
    let (_, refused) = hook(
        &api,
        path,
        Some("auth_on_publish"),
        BROKER_KEY,
        publish("parkflow/v1/lots/lot-a/gates/in-2/plate"),
    )
    .await;
    assert_eq!(refused, json!({"result": {"error": "not_allowed"}}));

    let subscribe = json!({"client_id": "cam-1", "mountpoint": "", "username": "cam-1", "topics": [
        {"topic": "parkflow/v1/lots/lot-a/gates/in-1/command", "qos": 1},
        {"topic": "parkflow/v1/#", "qos": 1}
    ]});
    let (_, answer) = hook(
        &api,
        path,
        Some("auth_on_subscribe"),
        BROKER_KEY,
        subscribe.clone(),
    )
    .await;
    assert_eq!(
        answer,
        json!({"result": "ok", "topics": [
            {"topic": "parkflow/v1/lots/lot-a/gates/in-1/command", "qos": 1},
            {"topic": "parkflow/v1/#", "qos": 128}
        ]})
    );
    let (_, answer) = hook(
        &api,
        path,
        Some("auth_on_subscribe_m5"),
        BROKER_KEY,
        subscribe,
    )
    .await;
    assert_eq!(answer["modifiers"]["topics"][1]["qos"], 135);
}

/// An availability stream opened by the client at `peer` (through a proxy when `forwarded_for`
/// is given); the response is kept, so the stream stays open.
async fn open_stream(
    api: &Api,
    peer: [u8; 4],
    forwarded_for: Option<&str>,
) -> axum::response::Response {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri("/v1/availability/stream");
    if let Some(forwarded) = forwarded_for {
        request = request.header("x-forwarded-for", forwarded);
    }
    let mut request = request.body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((peer, 40_000))));
    router(api.state.clone()).oneshot(request).await.unwrap()
}

/// One address cannot hold every stream: 2 per address and 3 in all here. Behind a trusted
/// proxy (10.0.0.0/8) each forwarded client counts as itself; a header from anyone else is
/// ignored.
#[tokio::test]
async fn availability_streams_are_capped_per_client_and_in_all() {
    let api = Api::new().await;
    let first = open_stream(&api, [192, 0, 2, 1], None).await;
    let second = open_stream(&api, [192, 0, 2, 1], None).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    // A third from the same address, even claiming another one without being a proxy: refused.
    let third = open_stream(&api, [192, 0, 2, 1], Some("198.51.100.9")).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = axum::body::to_bytes(third.into_body(), 1 << 16)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("too_many_streams"));
    // Through the proxy, a client of its own.
    let proxied = open_stream(&api, [10, 0, 0, 5], Some("198.51.100.9")).await;
    assert_eq!(proxied.status(), StatusCode::OK);
    // Three open in all: nobody else gets one until one closes.
    let other = open_stream(&api, [203, 0, 113, 4], None).await;
    assert_eq!(other.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(first);
    let again = open_stream(&api, [203, 0, 113, 4], None).await;
    assert_eq!(again.status(), StatusCode::OK);
    drop((second, proxied, again));
}

/// `/metrics` carries revenue figures: on the API listener only the platform admin reads it.
#[tokio::test]
async fn metrics_need_the_platform_admins_key() {
    let api = Api::new().await;
    let (status, _) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let request = Request::builder()
        .uri("/metrics")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_KEY}"))
        .body(Body::empty())
        .unwrap();
    let response = router(api.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let private = super::metrics_router(api.state.metrics.clone())
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        private.status(),
        StatusCode::OK,
        "the private listener needs no key"
    );
}

/// The attack (issue 13): an operator sets a lot to `device_auth: broker` on a platform whose
/// broker enforces nothing (the embedded one): from then on any device may publish unsigned
/// reads for that lot's gates. `broker` is accepted only when a broker asks the platform what
/// each device may do (`--broker-hook-key`).
#[tokio::test]
async fn broker_auth_needs_a_broker_that_enforces_permissions() {
    let mut api = Api::with(&small_city()).await;
    let hooks = api.state.parts_mut().broker_hook.take();
    let lot = |id: &str| {
        json!({"id": id, "name": id, "kind": "off_street", "location": {"lat": 30.2, "lon": 120.1},
               "capacity": 10, "time_zone": "Asia/Shanghai", "device_auth": "broker"})
        .to_string()
    };
    let broker = json!({"device_auth": "broker"}).to_string();
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/operators/op-1/lots",
            Some(ADMIN_KEY),
            Some(&lot("lot-b")),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!("broker_auth_unenforced")
        ),
        "{body}"
    );
    let (status, body) = api
        .call(
            Method::PATCH,
            "/v1/lots/lot-a",
            Some(ADMIN_KEY),
            Some(&broker),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, lots) = api
        .call(
            Method::GET,
            "/v1/operators/op-1/lots",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert!(
        lots.as_array()
            .unwrap()
            .iter()
            .all(|l| l["device_auth"] == "signed"),
        "{lots}"
    );
    // With a broker that asks the platform, a lot may trust it.
    api.state.parts_mut().broker_hook = hooks;
    let (status, body) = api
        .call(
            Method::PATCH,
            "/v1/lots/lot-a",
            Some(ADMIN_KEY),
            Some(&broker),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_auth"], "broker");
}

/// On a gateway node that does not run a lot, the lot's bays and an operator's recount are
/// answered from the database (the node's actors never see them: their inboxes here are never
/// served, so a request that reached one would hang), and the recount is recorded.
#[tokio::test]
async fn a_node_answers_for_a_lot_another_node_runs_from_the_database() {
    let mut api = Api::with(&small_city()).await;
    let peers = crate::cluster::Peers::new(api.state.db.clone(), "node-x");
    api.state.parts_mut().node = Some((Arc::new(crate::cluster::Ownership::new("node-x")), peers));
    let within = std::time::Duration::from_secs(5);
    let (status, bays) = tokio::time::timeout(
        within,
        api.call(Method::GET, "/v1/lots/street-a/bays", Some(ADMIN_KEY), None),
    )
    .await
    .expect("answered without the occupancy actor");
    assert_eq!(status, StatusCode::OK, "{bays}");
    assert_eq!(bays[0]["bay"], "b-1");
    assert_eq!(bays[0]["state"], "unknown");
    let (status, counts) = tokio::time::timeout(
        within,
        api.call(
            Method::POST,
            "/v1/lots/lot-a/recount",
            Some(ADMIN_KEY),
            Some(r#"{"occupied": 3}"#),
        ),
    )
    .await
    .expect("answered without the occupancy actor");
    assert_eq!(status, StatusCode::OK, "{counts}");
    assert_eq!(
        (counts["occupied"].as_u64(), counts["free"].as_u64()),
        (Some(3), Some(7))
    );
    assert_eq!(
        crate::occupancy::store::recorded_recount(&api.state.db, "lot-a")
            .await
            .unwrap(),
        Some((3, 0))
    );
}
