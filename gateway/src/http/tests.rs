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
use crate::registry::RegistryHandle;

const ADMIN_KEY: &str = "router-test-admin-key";

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
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("api.db").display()))
            .await
            .unwrap();
        let (gates, gate_inbox) = GateHandle::channel();
        let (occupancy, occupancy_inbox) = OccupancyHandle::channel();
        let (connected, mqtt_connected) = watch::channel(true);
        let provider = SimulatedProvider::new(FaultConfig::none()).unwrap();
        let state = AppState {
            registry: RegistryHandle::load(&db).await.unwrap(),
            metrics: Arc::new(Metrics::new()),
            gates,
            payments: Arc::new(Payments::new(db.clone(), provider)),
            mqtt_connected,
            admin_key: Some(Arc::new(ADMIN_KEY.into())),
            availability: AvailabilityHandle::new(Default::default()),
            occupancy,
            public_limit: limit::PublicLimit::per_second(1_000),
            driver_limit: limit::AddressLimit::per_second(1_000),
            shutdown: tokio_util::sync::CancellationToken::new(),
            db,
        };
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
