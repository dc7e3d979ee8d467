//! Sessions and the review queue, for the platform admin and operators' staff (their own lots).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use parkflow_protocol::{LotId, Plate};
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::auth::Staff;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};
use crate::session::SessionStatus;
use crate::store::sessions::{self, ReviewView, SessionFilter, SessionView};

/// The most rows one listing returns.
const MAX_LIMIT: u32 = 1_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionQuery {
    lot: Option<String>,
    plate: Option<String>,
    status: Option<String>,
    /// RFC 3339: sessions entered at or after this.
    entered_from: Option<String>,
    /// RFC 3339: sessions entered before this.
    entered_to: Option<String>,
    limit: Option<u32>,
}

/// An optional RFC 3339 query parameter; `code` names it in the error.
fn instant(code: &'static str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::bad_request(code, format!("{e} (RFC 3339 expected)")))
        })
        .transpose()
}

/// `GET /v1/sessions?lot=…&plate=…&status=…&entered_from=…&entered_to=…&limit=…`, newest first.
#[utoipa::path(
    get, path = "/v1/sessions", tag = "sessions",
    security(("api_key" = [])),
    params(SessionQuery),
    responses(
        (status = 200, description = "Sessions, newest first", body = [SessionView]),
    ),
)]
pub(crate) async fn list(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SessionQuery>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let filter = SessionFilter {
        operator: scope.operator().map(str::to_owned),
        lot: query
            .lot
            .as_deref()
            .map(LotId::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request("invalid_lot", e.to_string()))?,
        plate: query
            .plate
            .as_deref()
            .map(Plate::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request("invalid_plate", e.to_string()))?,
        status: query
            .status
            .as_deref()
            .map(|s| {
                SessionStatus::parse(s).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_status",
                        "status must be open, closed, review or void",
                    )
                })
            })
            .transpose()?,
        entered_from: instant("invalid_entered_from", query.entered_from.as_deref())?,
        entered_to: instant("invalid_entered_to", query.entered_to.as_deref())?,
        limit: query.limit.unwrap_or(100).min(MAX_LIMIT),
    };
    Ok(Json(sessions::sessions(&state.db, &filter).await?))
}

/// `GET /v1/sessions/{id}`
#[utoipa::path(
    get, path = "/v1/sessions/{id}", tag = "sessions",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 404, description = "No such session (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn get(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<SessionView>, ApiError> {
    let registry = state.registry.snapshot();
    sessions::session(&state.db, id)
        .await?
        .filter(|s| {
            LotId::parse(&s.lot_id)
                .ok()
                .and_then(|lot| registry.lot_by_id(&lot).map(|l| scope.sees(&l.operator_id)))
                .unwrap_or(false)
        })
        .map(Json)
        .ok_or(ApiError::NotFound("session"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReviewQuery {
    lot: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/review?lot=…`: unresolved cases, oldest first.
#[utoipa::path(
    get, path = "/v1/review", tag = "sessions",
    security(("api_key" = [])),
    params(ReviewQuery),
    responses(
        (status = 200, description = "Unresolved review cases, oldest first", body = [ReviewView]),
    ),
)]
pub(crate) async fn review(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ReviewQuery>,
) -> Result<Json<Vec<ReviewView>>, ApiError> {
    let lot = query
        .lot
        .as_deref()
        .map(LotId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_lot", e.to_string()))?;
    let limit = query.limit.unwrap_or(100).min(MAX_LIMIT);
    Ok(Json(
        sessions::open_reviews(&state.db, scope.operator(), lot.as_ref(), limit).await?,
    ))
}

/// `GET /v1/review/{id}/pictures/{n}`: a picture the ANPR camera sent with the case's read
/// (kept only on lots with `review_pictures`, until the plate retention period ends).
#[utoipa::path(
    get, path = "/v1/review/{id}/pictures/{n}", tag = "sessions",
    security(("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Review case id"),
        ("n" = u32, Path, description = "Which picture, from 0 (the case's `pictures` counts them)"),
    ),
    responses(
        (status = 200, description = "The picture, as the camera sent it", content_type = "image/jpeg"),
        (status = 404, description = "No such case or picture (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn review_picture(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath((id, n)): ApiPath<(Uuid, u32)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::header;
    use axum::response::IntoResponse as _;
    let not_found = || ApiError::NotFound("review picture");
    let (lot, _, _) = crate::store::review::case(&state.db, id)
        .await?
        .ok_or_else(not_found)?;
    scope
        .lot(&state.registry.snapshot(), &lot)
        .map_err(|_| not_found())?;
    let (content_type, picture) = crate::store::pictures::picture(&state.db, id, n)
        .await?
        .ok_or_else(not_found)?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::CACHE_CONTROL, "private, no-store".to_owned()),
        ],
        picture,
    )
        .into_response())
}
