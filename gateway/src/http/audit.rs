//! Actions that leave an audit trail, and the trail itself: an operator opening a barrier by hand
//! (a signed `open`, reason `manual`), recorded with who, when and why.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use parkflow_protocol::GateId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::{Accountable, Staff};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, free_text};
use crate::gate::GateMessage;
use crate::store::audit::{self, AuditEntry};

/// The most entries one listing returns.
const MAX_LIMIT: u32 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// Why the barrier is opened by hand (kept in the audit trail).
    reason: String,
}

#[derive(Debug, Serialize)]
pub struct Opened {
    command_id: Uuid,
    event_id: String,
    audit_id: Uuid,
}

/// `POST /v1/lots/{lot}/gates/{gate}/open`
pub async fn manual_open(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath((lot, gate)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<OpenRequest>,
) -> Result<Json<Opened>, ApiError> {
    let reason = free_text("invalid_reason", "reason", &request.reason, 500)?;
    let gate = GateId::parse(&gate).map_err(|_| ApiError::NotFound("gate"))?;
    let (lot, operator) = {
        let registry = state.registry.snapshot();
        let found = who.scope.lot(&registry, &lot)?;
        registry
            .gate(found.idx, &gate)
            .ok_or(ApiError::NotFound("gate"))?;
        (found.id.clone(), found.operator_id.clone())
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let at = Utc::now();
    state
        .gates
        .send(GateMessage::ManualOpen {
            lot: lot.clone(),
            gate: gate.clone(),
            at,
            reply,
        })
        .await;
    let command = answer
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(|message| ApiError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_sent",
            message,
        })?;
    let entry = AuditEntry {
        id: Uuid::now_v7(),
        at,
        actor_role: who.role.to_owned(),
        actor_key: who.key,
        operator_id: Some(operator),
        action: "manual_open".into(),
        object: format!("{lot}/{gate}"),
        reason,
        details: Some(
            serde_json::json!({ "command_id": command.command_id, "event_id": command.event_id })
                .to_string(),
        ),
    };
    audit::record(&state.db, &entry).await?;
    Ok(Json(Opened {
        command_id: command.command_id,
        event_id: command.event_id.to_string(),
        audit_id: entry.id,
    }))
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<u32>,
}

/// `GET /v1/audit`: the newest entries of the caller's operator (every operator's for the
/// platform admin).
pub async fn entries(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = query.limit.unwrap_or(100).min(MAX_LIMIT);
    Ok(Json(
        audit::entries(&state.db, scope.operator(), limit).await?,
    ))
}

impl From<crate::store::review::ResolveError> for ApiError {
    fn from(error: crate::store::review::ResolveError) -> Self {
        use crate::store::review::ResolveError;
        match error {
            ResolveError::Resolved => Self::conflict("already_resolved", error.to_string()),
            ResolveError::SessionNotInReview => {
                Self::conflict("session_not_in_review", error.to_string())
            }
            ResolveError::Store(e) => Self::Store(e),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    action: crate::store::review::Resolution,
    reason: String,
}

/// `POST /v1/review/{id}/resolve`: accept the case, or void its session (in review: never priced
/// nor charged); recorded in the audit trail.
pub async fn resolve(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<ResolveRequest>,
) -> Result<Json<AuditEntry>, ApiError> {
    use crate::store::review;
    let reason = free_text("invalid_reason", "reason", &request.reason, 500)?;
    let (lot, session, _) = review::case(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("review case"))?;
    let operator = who
        .scope
        .lot(&state.registry.snapshot(), &lot)
        .map_err(|_| ApiError::NotFound("review case"))?
        .operator_id
        .clone();
    let at = Utc::now();
    review::resolve(&state.db, id, request.action, at).await?;
    let entry = AuditEntry {
        id: Uuid::now_v7(),
        at,
        actor_role: who.role.to_owned(),
        actor_key: who.key,
        operator_id: Some(operator),
        action: format!("review_{}", request.action.as_str()),
        object: format!("review/{id}"),
        reason,
        details: session.map(|s| serde_json::json!({ "session_id": s }).to_string()),
    };
    audit::record(&state.db, &entry).await?;
    Ok(Json(entry))
}
