//! Public lot information: the tariff in force and price quotes (SPEC §4, §5).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use parkflow_billing::{Money, Tariff, TariffDefinition};
use parkflow_protocol::{LotId, PlateColor};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};

fn lot_id(raw: &str) -> Result<LotId, ApiError> {
    LotId::parse(raw).map_err(|_| ApiError::NotFound("lot"))
}

/// `GET /v1/lots/{lot}/tariff`: the tariff in force now.
#[utoipa::path(
    get, path = "/v1/lots/{lot}/tariff", tag = "public",
    params(("lot" = String, Path, description = "Lot id")),
    responses(
        (status = 200, description = "The tariff version in force now (SPEC §4)", body = TariffDefinition),
        (status = 404, description = "No such lot or tariff (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn tariff(
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
) -> Result<Json<Tariff>, ApiError> {
    let registry = state.registry.snapshot();
    let lot = registry
        .lot_by_id(&lot_id(&lot)?)
        .ok_or(ApiError::NotFound("lot"))?;
    let tariff = lot
        .tariffs
        .in_force_at(Utc::now())
        .ok_or(ApiError::NotFound("tariff"))?;
    Ok(Json(tariff.clone()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct QuoteQuery {
    entered_at: DateTime<Utc>,
    exited_at: DateTime<Utc>,
    plate_color: Option<PlateColor>,
}

/// The longest stay a quote prices: walking its units is work an anonymous client can ask for.
pub(crate) const MAX_QUOTED_STAY_DAYS: i64 = 31;

/// `GET /v1/lots/{lot}/quote?entered_at=…&exited_at=…&plate_color=…`
#[utoipa::path(
    get, path = "/v1/lots/{lot}/quote", tag = "public",
    params(("lot" = String, Path, description = "Lot id"), QuoteQuery),
    responses(
        (status = 200, description = "The fee of the stay under the tariff in force at entry", body = Money),
        (status = 404, description = "No such lot or tariff (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn quote(
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiQuery(query): ApiQuery<QuoteQuery>,
) -> Result<Json<Money>, ApiError> {
    let registry = state.registry.snapshot();
    let lot = registry
        .lot_by_id(&lot_id(&lot)?)
        .ok_or(ApiError::NotFound("lot"))?;
    let plate_color = query.plate_color;
    let tariff = lot
        .tariffs
        .in_force_at(query.entered_at)
        .ok_or(ApiError::NotFound("tariff"))?;
    if query.exited_at - query.entered_at > chrono::Duration::days(MAX_QUOTED_STAY_DAYS) {
        return Err(ApiError::bad_request(
            "stay_too_long",
            format!("quotes cover stays of up to {MAX_QUOTED_STAY_DAYS} days"),
        ));
    }
    let fee = tariff
        .quote(query.entered_at, query.exited_at, plate_color)
        .map_err(|e| ApiError::bad_request("invalid_stay", e.to_string()))?;
    // `{"amount": "12.50", "currency": "CNY"}`: Money's JSON has the currency's minor digits.
    Ok(Json(fee))
}
