//! Who parks free and who may not enter: a lot's passes (added, listed, revoked with an audit
//! entry) and its blocked plates. Each change reloads the gate and occupancy actors' facts.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use parkflow_protocol::Plate;
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::auth::{Accountable, Staff};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, free_text};
use super::registry::{apply, own_lot};
use crate::store::audit::AuditEntry;
use crate::store::passes::{self, BlockView, PassView};
use crate::store::provision::{BlockPlan, Plan};

/// The most passes or blocks one listing returns.
const MAX_LIST: u32 = 1_000;

/// The gate and occupancy actors read passes and blocks again.
async fn reload_facts(state: &AppState) {
    state.gates.reload(&state.db).await;
    state.occupancy.reload_passes(&state.db).await;
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plate": "浙A12345", "valid_from": "2026-12-01T00:00:00Z", "valid_until": "2027-01-01T00:00:00Z"}))]
pub(crate) struct PassRequest {
    plate: String,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
}

/// `POST /v1/lots/{lot}/passes`: the plate parks free in the lot between the two times.
#[utoipa::path(
    post, path = "/v1/lots/{lot}/passes", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    request_body = PassRequest,
    responses(
        (status = 201, description = "The pass (its id revokes it)", body = PassView),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn add_pass(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiJson(request): ApiJson<PassRequest>,
) -> Result<(StatusCode, Json<PassView>), ApiError> {
    let lot = own_lot(&state, &who.scope, &lot)?;
    let plate = Plate::parse(&request.plate)
        .map_err(|e| ApiError::bad_request("invalid_plate", e.to_string()))?;
    if request.valid_until <= request.valid_from {
        return Err(ApiError::bad_request(
            "invalid_range",
            "valid_until must be after valid_from",
        ));
    }
    let id = Uuid::now_v7();
    let entry = who.entry(
        Some(&lot.operator_id),
        "pass_added",
        format!("{}/passes/{id}", lot.id),
        String::new(),
        Some(serde_json::json!({
            "plate": plate.as_str(),
            "valid_from": request.valid_from,
            "valid_until": request.valid_until,
        })),
    );
    let pass = passes::add(
        &state.db,
        &lot.id,
        &plate,
        (id, request.valid_from, request.valid_until),
        &entry,
    )
    .await?;
    reload_facts(&state).await;
    Ok((StatusCode::CREATED, Json(pass)))
}

/// `GET /v1/lots/{lot}/passes`
#[utoipa::path(
    get, path = "/v1/lots/{lot}/passes", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    responses(
        (status = 200, description = "The lot's passes, the latest to start first", body = [PassView]),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn list_passes(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
) -> Result<Json<Vec<PassView>>, ApiError> {
    let lot = own_lot(&state, &scope, &lot)?;
    Ok(Json(passes::of_lot(&state.db, &lot.id, MAX_LIST).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "monthly contract ended"}))]
pub(crate) struct RevokeRequest {
    /// Why (kept in the audit trail).
    reason: String,
}

/// `POST /v1/lots/{lot}/passes/{id}/revoke`: the pass ends now (one not yet begun is removed);
/// audited.
#[utoipa::path(
    post, path = "/v1/lots/{lot}/passes/{id}/revoke", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id"), ("id" = uuid::Uuid, Path, description = "Pass id")),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "Revoked; the audit entry written", body = AuditEntry),
        (status = 404, description = "No such lot or pass still to revoke (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke_pass(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath((lot, id)): ApiPath<(String, Uuid)>,
    ApiJson(request): ApiJson<RevokeRequest>,
) -> Result<Json<AuditEntry>, ApiError> {
    let reason = free_text("invalid_reason", "reason", &request.reason, 500)?;
    let lot = own_lot(&state, &who.scope, &lot)?;
    let entry = who.entry(
        Some(&lot.operator_id),
        "pass_revoked",
        format!("{}/passes/{id}", lot.id),
        reason,
        None,
    );
    if !passes::revoke(&state.db, &lot.id, id, &entry).await? {
        return Err(ApiError::NotFound("pass"));
    }
    reload_facts(&state).await;
    Ok(Json(entry))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plate": "浙A12345", "reason": "stolen vehicle report 2026-118"}))]
pub(crate) struct BlockRequest {
    plate: String,
    reason: String,
}

/// `GET /v1/lots/{lot}/blocks`
#[utoipa::path(
    get, path = "/v1/lots/{lot}/blocks", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    responses(
        (status = 200, description = "The lot's blocked plates, the latest first", body = [BlockView]),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn list_blocks(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
) -> Result<Json<Vec<BlockView>>, ApiError> {
    let lot = own_lot(&state, &scope, &lot)?;
    Ok(Json(
        passes::blocks_of_lot(&state.db, &lot.id, MAX_LIST).await?,
    ))
}

/// `POST /v1/lots/{lot}/blocks`: the plate is held at the lot's entries.
#[utoipa::path(
    post, path = "/v1/lots/{lot}/blocks", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    request_body = BlockRequest,
    responses(
        (status = 201, description = "The plate is held at the lot's entries"),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn add_block(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiJson(request): ApiJson<BlockRequest>,
) -> Result<StatusCode, ApiError> {
    let lot = own_lot(&state, &who.scope, &lot)?;
    let plate = Plate::parse(&request.plate)
        .map_err(|e| ApiError::bad_request("invalid_plate", e.to_string()))?;
    let reason = free_text("invalid_reason", "reason", &request.reason, 500)?;
    // Recorded before it is taken (the block is written by provisioning): an entry for a block
    // that then failed is better than a block without one.
    let entry = who.entry(
        Some(&lot.operator_id),
        "plate_blocked",
        format!("{}/blocks/{}", lot.id, plate.as_str()),
        reason.clone(),
        None,
    );
    crate::store::audit::record(&state.db, &entry).await?;
    let plan = Plan {
        blocks: vec![BlockPlan {
            lot: lot.id,
            plate,
            reason,
        }],
        ..Plan::default()
    };
    apply(&state, &plan).await?;
    Ok(StatusCode::CREATED)
}

/// `DELETE /v1/lots/{lot}/blocks/{plate}` (idempotent).
#[utoipa::path(
    delete, path = "/v1/lots/{lot}/blocks/{plate}", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id"), ("plate" = String, Path, description = "The blocked plate")),
    responses(
        (status = 204, description = "Unblocked (also when it was not blocked)"),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn remove_block(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath((lot, plate)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let lot = own_lot(&state, &who.scope, &lot)?;
    let plate =
        Plate::parse(&plate).map_err(|e| ApiError::bad_request("invalid_plate", e.to_string()))?;
    let entry = who.entry(
        Some(&lot.operator_id),
        "plate_unblocked",
        format!("{}/blocks/{}", lot.id, plate.as_str()),
        String::new(),
        None,
    );
    crate::store::passes::unblock(&state.db, &lot.id, &plate, &entry).await?;
    reload_facts(&state).await;
    Ok(StatusCode::NO_CONTENT)
}
