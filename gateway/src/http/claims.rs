//! Plate claims waiting for the platform's operators: disputes (a proven claim on a plate another
//! driver holds) and claims nobody could prove, with the papers checked by hand. Plates are
//! city-wide, not one lot's, so only the platform admin decides; every decision is audited.

use axum::Json;
use axum::extract::{Query, State};
use chrono::Utc;
use parkflow_billing::claims::{self, Claim, ClaimStatus, Decided, Decision};
use parkflow_protocol::Plate;
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::auth::{Accountable, Admin, Scope};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, free_text};
use crate::gate::GateMessage;
use crate::gate::decide::Standing;
use crate::store::drivers;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueQuery {
    /// `disputed` (default) or `pending`.
    status: Option<String>,
}

/// `GET /v1/claims`: claims waiting, oldest first.
#[utoipa::path(
    get, path = "/v1/claims", tag = "drivers",
    security(("api_key" = [])),
    params(QueueQuery),
    responses(
        (status = 200, description = "Claims waiting for a decision, oldest first", body = [Claim]),
        (status = 422, description = "Not a live status", body = ErrorBody),
    ),
)]
pub(crate) async fn queue(
    _: Admin,
    State(state): State<AppState>,
    Query(query): Query<QueueQuery>,
) -> Result<Json<Vec<Claim>>, ApiError> {
    let status = match query.status.as_deref() {
        None => ClaimStatus::Disputed,
        Some(raw) => ClaimStatus::parse(raw)
            .filter(|status| status.is_live())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_status", "status is disputed or pending")
            })?,
    };
    Ok(Json(claims::queue(&state.db, status, 500).await?))
}

/// An operator's decision on a claim.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"decision": "approve", "reason": "registration certificate seen at the counter"}))]
pub(crate) struct DecisionRequest {
    decision: Decision,
    /// Why: kept in the audit trail.
    reason: String,
}

/// `POST /v1/claims/{id}/decision`: approve (the plate becomes the claimant's, taken from whoever
/// held it) or reject. Audited.
#[utoipa::path(
    post, path = "/v1/claims/{id}/decision", tag = "drivers",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "A live claim")),
    request_body = DecisionRequest,
    responses(
        (status = 200, description = "Decided", body = Claim),
        (status = 404, description = "No such claim", body = ErrorBody),
        (status = 409, description = "Decided already (`claim_decided`), the plate's driver owes (`debt_outstanding`) or a car under it is parked (`car_parked`)", body = ErrorBody),
    ),
)]
pub(crate) async fn decide(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<DecisionRequest>,
) -> Result<Json<Claim>, ApiError> {
    if who.scope != Scope::All {
        return Err(ApiError::Forbidden);
    }
    let reason = free_text("invalid_reason", "reason", &request.reason, 500)?;
    if reason.is_empty() {
        return Err(ApiError::bad_request("invalid_reason", "give a reason"));
    }
    let action = match request.decision {
        Decision::Approve => "claim_approved",
        Decision::Reject => "claim_rejected",
    };
    let entry = who.entry(None, action, format!("claims/{id}"), reason, None);
    let claim = match drivers::decide(&state.db, id, request.decision, &entry, Utc::now()).await? {
        Decided::Done(claim) => claim,
        Decided::NotFound => return Err(ApiError::NotFound("claim")),
        Decided::Settled(_) => {
            return Err(ApiError::conflict(
                "claim_decided",
                "this claim was granted or rejected already",
            ));
        }
        Decided::Owing => {
            return Err(ApiError::conflict(
                "debt_outstanding",
                "the plate's driver owes: it changes hands once the debt is paid or written off",
            ));
        }
        Decided::Parked => {
            return Err(ApiError::conflict(
                "car_parked",
                "a car under this plate is parked: decide once it has left",
            ));
        }
    };
    if claim.status == ClaimStatus::Granted {
        let standing = drivers::driver(&state.db, claim.driver_id)
            .await?
            .map_or(Standing::NotEnrolled, |driver| {
                super::drivers::standing_of(&driver)
            });
        if let Ok(plate) = Plate::parse(&claim.plate) {
            state
                .gates
                .send(GateMessage::Standing {
                    plates: vec![plate],
                    standing,
                })
                .await;
        }
    }
    Ok(Json(claim))
}
