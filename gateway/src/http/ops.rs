//! `/healthz` (the process answers), `/readyz` (database and MQTT are up), `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::error::ApiError;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
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

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
