//! Operators and API keys. The platform admin creates operators and issues keys of every role; an
//! operator's admin issues and revokes their own operator's admin and viewer keys. A key is shown
//! once, in the answer that issues it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::{Accountable, Admin, Scope, Staff, StaffAdmin};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, free_text};
use crate::store::keys::{self, KeyRole, KeyView, OperatorView};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "op-westlake", "name": "West Lake Parking Co."}))]
pub(crate) struct OperatorRequest {
    /// `[a-z0-9][a-z0-9-]{0,63}`, like every id.
    id: String,
    name: String,
}

/// `POST /v1/operators` (platform admin).
#[utoipa::path(
    post, path = "/v1/operators", tag = "operators",
    security(("api_key" = [])),
    request_body = OperatorRequest,
    responses(
        (status = 201, description = "Created", body = OperatorView),
        (status = 409, description = "Conflicts with what exists", body = ErrorBody),
    ),
)]
pub(crate) async fn create_operator(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<OperatorRequest>,
) -> Result<(StatusCode, Json<OperatorView>), ApiError> {
    // Operator ids follow the same grammar as lot ids (SPEC §2).
    parkflow_protocol::LotId::parse(&request.id)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    let name = free_text("invalid_name", "name", &request.name, 200)?;
    if !keys::create_operator(&state.db, &request.id, &name, Utc::now()).await? {
        return Err(ApiError::conflict(
            "operator_exists",
            "an operator with this id exists",
        ));
    }
    let created = keys::operators(&state.db, Some(&request.id))
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("operator"))?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /v1/operators`: every operator for the platform admin, their own for an operator's staff.
#[utoipa::path(
    get, path = "/v1/operators", tag = "operators",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Operators this key sees", body = [OperatorView]),
    ),
)]
pub(crate) async fn operators(
    Staff(scope): Staff,
    State(state): State<AppState>,
) -> Result<Json<Vec<OperatorView>>, ApiError> {
    Ok(Json(keys::operators(&state.db, scope.operator()).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "operator_viewer", "operator_id": "op-westlake"}))]
pub(crate) struct KeyRequest {
    role: KeyRole,
    /// The operator of an operator admin or viewer key (an operator's admin may leave it out).
    operator_id: Option<String>,
}

/// A key just issued: the only time the key itself is shown (and, holding it, not `Debug`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IssuedKey {
    #[serde(flatten)]
    view: KeyView,
    key: String,
}

/// `POST /v1/keys`.
#[utoipa::path(
    post, path = "/v1/keys", tag = "operators",
    security(("api_key" = [])),
    request_body = KeyRequest,
    responses(
        (status = 201, description = "The key, shown this once", body = IssuedKey),
        (status = 404, description = "No such operator (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn issue(
    who: Accountable,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<KeyRequest>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let operator = match (&who.scope, request.role.is_operators(), request.operator_id) {
        (Scope::Operator(own), true, None) => Some(own.clone()),
        (Scope::Operator(own), true, Some(operator)) if *own == operator => Some(operator),
        (Scope::Operator(_), true, Some(_)) => return Err(ApiError::NotFound("operator")),
        (Scope::Operator(_), false, _) => return Err(ApiError::Forbidden),
        (Scope::All, true, Some(operator)) => {
            if keys::operators(&state.db, Some(&operator))
                .await?
                .is_empty()
            {
                return Err(ApiError::NotFound("operator"));
            }
            Some(operator)
        }
        (Scope::All, true, None) => {
            return Err(ApiError::bad_request(
                "operator_required",
                "operator admin and viewer keys belong to an operator: send operator_id",
            ));
        }
        (Scope::All, false, Some(_)) => {
            return Err(ApiError::bad_request(
                "operator_not_allowed",
                "platform admin and navigation app keys belong to no operator",
            ));
        }
        (Scope::All, false, None) => None,
    };
    let id = Uuid::now_v7();
    let entry = who.entry(
        operator.as_deref(),
        "key_issued",
        format!("keys/{id}"),
        String::new(),
        Some(serde_json::json!({ "role": request.role.as_str() })),
    );
    let (view, key) = keys::issue(&state.db, id, request.role, operator.as_deref(), &entry).await?;
    Ok((StatusCode::CREATED, Json(IssuedKey { view, key })))
}

/// `GET /v1/keys`: staff and app keys (never the keys themselves).
#[utoipa::path(
    get, path = "/v1/keys", tag = "operators",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Keys this key may manage (never their secrets)", body = [KeyView]),
    ),
)]
pub(crate) async fn list(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    Ok(Json(keys::list(&state.db, scope.operator()).await?))
}

/// `DELETE /v1/keys/{id}`: revoked at once.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "operators",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked: the key is refused from now on"),
        (status = 404, description = "No such key (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke(
    who: Accountable,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let key = keys::key(&state.db, id)
        .await?
        .filter(|k| match &who.scope {
            Scope::All => true,
            Scope::Operator(own) => k.operator_id.as_deref() == Some(own.as_str()),
        })
        .ok_or(ApiError::NotFound("key"))?;
    let entry = who.entry(
        key.operator_id.as_deref(),
        "key_revoked",
        format!("keys/{}", key.id),
        String::new(),
        None,
    );
    keys::revoke(&state.db, key.id, &entry).await?;
    Ok(StatusCode::NO_CONTENT)
}
