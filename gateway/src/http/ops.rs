//! `/healthz` (the process answers), `/readyz` (database and MQTT are up), `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::auth::Admin;
use crate::metrics::Metrics;

#[utoipa::path(
    get, path = "/healthz", tag = "ops",
    responses(
        (status = 200, description = "The process answers", body = serde_json::Value, example = json!({"status": "ok"})),
    ),
)]
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// How long `/readyz` waits for the database: a stalled database is a 503 within a second, never
/// a hung probe.
const READY_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Database and MQTT are up, and writes go through", body = serde_json::Value, example = json!({"status": "ready", "database": true, "mqtt": true, "writes": true})),
        (status = 503, description = "Not ready, within a second: the body says which part is down", body = serde_json::Value, example = json!({"status": "not_ready", "database": false, "mqtt": true, "writes": false, "reason": "database does not answer within 500 ms"})),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mqtt = *state.mqtt_connected.borrow();
    let ping = tokio::time::timeout(READY_PING_TIMEOUT, state.db.ping()).await;
    let writes = state.metrics.store_writes_failing.get() == 0;
    let (database, reason) = match ping {
        Ok(Ok(())) => (true, None),
        Ok(Err(error)) => (false, Some(format!("database: {error}"))),
        Err(_) => (
            false,
            Some(format!(
                "database does not answer within {} ms",
                READY_PING_TIMEOUT.as_millis()
            )),
        ),
    };
    let reason = reason
        .or_else(|| (!writes).then(|| "database writes are failing and being retried".to_owned()))
        .or_else(|| (!mqtt).then(|| "not connected to the MQTT broker".to_owned()));
    match reason {
        None => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": true, "mqtt": true, "writes": true })),
        ),
        Some(reason) => {
            tracing::debug!(mqtt, database, writes, reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "not_ready", "database": database, "mqtt": mqtt, "writes": writes, "reason": reason }),
                ),
            )
        }
    }
}

/// `/metrics` carries revenue figures: on the API listener only the platform admin reads it;
/// Prometheus scrapes `--metrics-listen`, a private address, without a key.
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Prometheus / OpenMetrics text (the platform admin's key; or without a key on `--metrics-listen`)", content_type = "application/openmetrics-text", body = String),
    ),
)]
pub(crate) async fn metrics(_: Admin, State(state): State<AppState>) -> impl IntoResponse {
    metrics_text(&state.metrics)
}

pub(crate) fn metrics_text(metrics: &Metrics) -> impl IntoResponse + use<> {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
