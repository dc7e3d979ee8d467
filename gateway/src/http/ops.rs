//! `/healthz` (the process answers), `/readyz` (database and MQTT are up), `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
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

#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Database and MQTT are up", body = serde_json::Value, example = json!({"status": "ready", "database": true, "mqtt": true})),
        (status = 503, description = "Not ready: the body says which part is down", body = serde_json::Value),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mqtt = *state.mqtt_connected.borrow();
    let database = state.db.ping().await.is_ok();
    if mqtt && database {
        Ok(Json(
            json!({ "status": "ready", "database": true, "mqtt": true }),
        ))
    } else {
        tracing::debug!(mqtt, database, "not ready");
        Err(ApiError::Unavailable)
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
