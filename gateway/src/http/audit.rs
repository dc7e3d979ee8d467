//! Actions that leave an audit trail, and the trail itself: an operator opening a barrier by hand
//! (a signed `open`, reason `manual`) and resolving review cases (accept, void, edit plate, merge,
//! split), each recorded with who, when and why.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use parkflow_protocol::{EventId, GateId, Plate, PlateColor};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::{Accountable, Staff};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery, free_text};
use crate::gate::GateMessage;
use crate::session::SessionStatus;
use crate::store::audit::{self, AuditEntry};
use crate::store::review::{self, Correction, Resolution, ResolveError};

/// The most entries one listing returns.
const MAX_LIMIT: u32 = 1_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "ambulance waiting at the entry"}))]
pub(crate) struct OpenRequest {
    /// Why the barrier is opened by hand (kept in the audit trail).
    reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Opened {
    command_id: Uuid,
    event_id: String,
    audit_id: Uuid,
}

/// `POST /v1/lots/{lot}/gates/{gate}/open`
#[utoipa::path(
    post, path = "/v1/lots/{lot}/gates/{gate}/open", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id"), ("gate" = String, Path, description = "Gate id")),
    request_body = OpenRequest,
    responses(
        (status = 200, description = "The signed open command was published; the audit trail has who, when and why", body = Opened),
        (status = 404, description = "No such lot or gate (or not this caller's)", body = ErrorBody),
        (status = 503, description = "The gate actor did not answer", body = ErrorBody),
    ),
)]
pub(crate) async fn manual_open(
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
    // Recorded before the barrier moves: the trail never misses an opening, and an attempt
    // that fails is followed by an entry saying so.
    let command_id = Uuid::now_v7();
    let event_id = EventId::parse(&format!("manual-{command_id}"))
        .map_err(|e| ApiError::Store(crate::store::StoreError::Corrupt(e.to_string())))?;
    let mut entry = AuditEntry {
        id: Uuid::now_v7(),
        at: Utc::now(),
        actor_role: who.role.to_owned(),
        actor_key: who.key,
        operator_id: Some(operator),
        action: "manual_open".into(),
        object: format!("{lot}/{gate}"),
        reason,
        details: Some(
            serde_json::json!({ "command_id": command_id, "event_id": event_id }).to_string(),
        ),
    };
    audit::record(&state.db, &entry).await?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    state
        .gates
        .send(GateMessage::ManualOpen {
            lot: lot.clone(),
            gate: gate.clone(),
            command_id,
            event_id: event_id.clone(),
            at: entry.at,
            reply,
        })
        .await;
    let sent = answer
        .await
        .unwrap_or_else(|_| Err("the gate actor is gone".into()));
    if let Err(message) = sent {
        entry.id = Uuid::now_v7();
        entry.at = Utc::now();
        entry.action = "manual_open_failed".into();
        entry.details =
            Some(serde_json::json!({ "command_id": command_id, "error": message }).to_string());
        audit::record(&state.db, &entry).await?;
        return Err(ApiError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_sent",
            message,
        });
    }
    let audit_id = entry.id;
    Ok(Json(Opened {
        command_id,
        event_id: event_id.to_string(),
        audit_id,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    limit: Option<u32>,
}

/// `GET /v1/audit`: the newest entries of the caller's operator (every operator's for the
/// platform admin).
#[utoipa::path(
    get, path = "/v1/audit", tag = "sessions",
    security(("api_key" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit entries, newest first", body = [AuditEntry]),
    ),
)]
pub(crate) async fn entries(
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
            ResolveError::NoExit => Self::conflict("session_has_no_exit", error.to_string()),
            ResolveError::NotMergeable => Self::conflict("not_mergeable", error.to_string()),
            ResolveError::OutsideStay => Self::bad_request("outside_stay", error.to_string()),
            ResolveError::Unpriced => Self::conflict("unpriced", error.to_string()),
            ResolveError::Store(e) => Self::Store(e),
        }
    }
}

/// How an operator resolves a review case, and why.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"action": "edit_plate", "plate": "浙A12345", "reason": "plate read from the lane photo"}))]
pub(crate) struct ResolveRequest {
    action: Resolution,
    /// Why (kept in the audit trail).
    reason: String,
    /// `edit_plate`: the stay's plate.
    #[serde(default)]
    plate: Option<String>,
    /// `edit_plate`: its colour, when known.
    #[serde(default)]
    plate_color: Option<PlateColor>,
    /// `merge`: the session whose entry the case's exit ends (open or in review, same lot).
    #[serde(default)]
    with_session: Option<Uuid>,
    /// `split`: where the first stay ends and the second begins.
    #[serde(default)]
    at: Option<DateTime<Utc>>,
}

impl ResolveRequest {
    fn correction(&self) -> Result<Correction, ApiError> {
        let missing = |field: &str| {
            ApiError::bad_request(
                "missing_field",
                format!("{} needs `{field}`", self.action.as_str()),
            )
        };
        let unexpected = self.plate.is_some() as u8
            + self.plate_color.is_some() as u8
            + self.with_session.is_some() as u8
            + self.at.is_some() as u8;
        let correction = match self.action {
            Resolution::Accept => Correction::Accept,
            Resolution::VoidSession => Correction::VoidSession,
            Resolution::EditPlate => Correction::EditPlate {
                plate: Plate::parse(self.plate.as_deref().ok_or_else(|| missing("plate"))?)
                    .map_err(|e| ApiError::bad_request("invalid_plate", e.to_string()))?,
                plate_color: self.plate_color,
            },
            Resolution::Merge => Correction::Merge {
                with_session: self.with_session.ok_or_else(|| missing("with_session"))?,
            },
            Resolution::Split => Correction::Split {
                at: self.at.ok_or_else(|| missing("at"))?,
                second: Uuid::now_v7(),
            },
        };
        let expected = match correction {
            Correction::Accept | Correction::VoidSession => 0,
            Correction::EditPlate { plate_color, .. } => 1 + plate_color.is_some() as u8,
            Correction::Merge { .. } | Correction::Split { .. } => 1,
        };
        if unexpected != expected {
            return Err(ApiError::bad_request(
                "unexpected_field",
                format!(
                    "{} takes only its own fields (edit_plate: plate, plate_color; merge: with_session; split: at)",
                    self.action.as_str()
                ),
            ));
        }
        Ok(correction)
    }
}

/// `POST /v1/review/{id}/resolve`: accept the case, void its session, give its stay the right
/// plate, merge it with the session whose entry it ends, or split it in two (the case's session
/// is in review: never priced nor charged; a stay a correction closes is priced and billed once);
/// recorded in the audit trail.
#[utoipa::path(
    post, path = "/v1/review/{id}/resolve", tag = "sessions",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Review case id")),
    request_body = ResolveRequest,
    responses(
        (status = 200, description = "Resolved; the audit entry written", body = AuditEntry),
        (status = 404, description = "No such review case (or not this caller's)", body = ErrorBody),
        (status = 409, description = "Resolved already, or the sessions are not in a state this correction applies to", body = ErrorBody),
        (status = 503, description = "The gate actor did not answer", body = ErrorBody),
    ),
)]
pub(crate) async fn resolve(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<ResolveRequest>,
) -> Result<Json<AuditEntry>, ApiError> {
    let reason = free_text("invalid_reason", "reason", &request.reason, 500)?;
    let correction = request.correction()?;
    let (lot, session, resolved) = review::case(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("review case"))?;
    let registry = state.registry.snapshot();
    let lot = who
        .scope
        .lot(&registry, &lot)
        .map_err(|_| ApiError::NotFound("review case"))?;
    if resolved {
        return Err(ResolveError::Resolved.into());
    }
    let details = serde_json::json!({
        "session_id": session,
        "with_session": match correction { Correction::Merge { with_session } => Some(with_session), _ => None },
        "new_session": match correction { Correction::Split { second, .. } => Some(second), _ => None },
        "at": match correction { Correction::Split { at, .. } => Some(at), _ => None },
    });
    let entry = AuditEntry {
        id: Uuid::now_v7(),
        at: Utc::now(),
        actor_role: who.role.to_owned(),
        actor_key: who.key,
        operator_id: Some(lot.operator_id.clone()),
        action: format!("review_{}", request.action.as_str()),
        object: format!("review/{id}"),
        reason,
        details: Some(details.to_string()),
    };
    // Merging an exit into a session open at the gates: the gate actor, which owns the open
    // sessions, runs the correction, so that no read ends that session meanwhile.
    if let Correction::Merge { with_session } = correction {
        let entry_session = crate::store::sessions::session(&state.db, with_session).await?;
        // On a gateway node, the lot's owner holds its open sessions: a correction made on
        // another node is made in the database (a read that ends the session meanwhile finds
        // it ended and changes nothing), and the owner forgets the session.
        if let Some((ownership, peers)) = &state.node
            && !ownership.holds(lot.id.as_str())
        {
            review::resolve(&state.db, id, lot, &correction, &entry).await?;
            peers
                .tell(crate::cluster::Notice::SessionEnded {
                    lot: lot.id.to_string(),
                    session: with_session,
                })
                .await;
            return Ok(Json(entry));
        }
        if entry_session
            .is_some_and(|e| e.status == SessionStatus::Open && e.lot_id == lot.id.as_str())
        {
            let (outcome, resolved) = tokio::sync::oneshot::channel();
            let work = {
                let (db, lot, entry) = (state.db.clone(), lot.clone(), entry.clone());
                crate::gate::Correction(Box::pin(async move {
                    let result = review::resolve(&db, id, &lot, &correction, &entry).await;
                    let committed = result.is_ok();
                    let _ = outcome.send(result);
                    committed
                }))
            };
            let (reply, taken) = tokio::sync::oneshot::channel();
            let (settled, gates_settled) = tokio::sync::oneshot::channel();
            state
                .gates
                .send(GateMessage::EndOpen {
                    lot: lot.id.clone(),
                    session: with_session,
                    work,
                    reply,
                    settled,
                })
                .await;
            if !taken.await.map_err(|_| ApiError::Unavailable)? {
                return Err(ApiError::conflict(
                    "session_not_open",
                    "with_session is no longer open at the gates: it ended, or its car is held at an exit for payment",
                ));
            }
            let resolved = resolved.await.map_err(|_| ApiError::Unavailable)?;
            // The gates see the outcome (a session given back is open again) before the answer.
            let _ = gates_settled.await;
            resolved?;
            return Ok(Json(entry));
        }
    }
    review::resolve(&state.db, id, lot, &correction, &entry).await?;
    Ok(Json(entry))
}
