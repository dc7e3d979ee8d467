//! Reports as CSV for an operator's spreadsheets: settlements per lot and day, and sessions. The
//! same rows and scoping as the JSON endpoints; money as decimal strings in the currency's digits.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use parkflow_protocol::LotId;
use serde::Deserialize;

use super::AppState;
use super::auth::Staff;
use super::error::ApiError;
use super::extract::ApiQuery;
use crate::store::StoreError;
use crate::store::sessions::{self, SessionFilter};

/// The most sessions one report carries.
const MAX_SESSIONS: u32 = 100_000;

fn csv_response(name: &str, body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

fn write_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::Store(StoreError::Corrupt(format!("csv: {error}")))
}

/// An amount in minor units as a decimal string with the currency's digits.
pub(crate) fn money(minor: i64, currency: &str) -> String {
    parkflow_billing::Currency::new(currency).map_or_else(
        |_| minor.to_string(),
        |c| parkflow_billing::Money::from_minor(minor, c).to_string(),
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettlementReport {
    from: NaiveDate,
    to: NaiveDate,
    lot: Option<String>,
}

/// `GET /v1/reports/settlements.csv?from=…&to=…&lot=…`
#[utoipa::path(
    get, path = "/v1/reports/settlements.csv", tag = "billing",
    security(("api_key" = [])),
    params(SettlementReport),
    responses(
        (status = 200, description = "Settlements as CSV", content_type = "text/csv", body = String),
    ),
)]
pub(crate) async fn settlements(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SettlementReport>,
) -> Result<Response, ApiError> {
    if query.to < query.from {
        return Err(ApiError::bad_request(
            "invalid_range",
            "to must not be before from",
        ));
    }
    let rows =
        parkflow_billing::settlement::stored(&state.db, query.lot.as_deref(), query.from, query.to)
            .await?;
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record([
        "operator_id",
        "lot_id",
        "day",
        "currency",
        "sessions",
        "gross",
        "collected",
        "outstanding",
        "refunded",
    ])
    .map_err(write_error)?;
    for s in rows.iter().filter(|s| scope.sees(&s.operator_id)) {
        out.write_record([
            s.operator_id.clone(),
            s.lot_id.clone(),
            s.day.clone(),
            s.currency.clone(),
            s.sessions.to_string(),
            money(s.gross_minor, &s.currency),
            money(s.collected_minor, &s.currency),
            money(s.outstanding_minor, &s.currency),
            money(s.refunded_minor, &s.currency),
        ])
        .map_err(write_error)?;
    }
    let body = out.into_inner().map_err(write_error)?;
    Ok(csv_response("settlements.csv", body))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionReport {
    lot: Option<String>,
    entered_from: Option<chrono::DateTime<chrono::Utc>>,
    entered_to: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<u32>,
}

/// `GET /v1/reports/sessions.csv?lot=…&entered_from=…&entered_to=…&limit=…`, newest first.
#[utoipa::path(
    get, path = "/v1/reports/sessions.csv", tag = "billing",
    security(("api_key" = [])),
    params(SessionReport),
    responses(
        (status = 200, description = "Sessions as CSV, newest first", content_type = "text/csv", body = String),
    ),
)]
pub(crate) async fn sessions(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SessionReport>,
) -> Result<Response, ApiError> {
    let filter = SessionFilter {
        operator: scope.operator().map(str::to_owned),
        lot: query
            .lot
            .as_deref()
            .map(LotId::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request("invalid_lot", e.to_string()))?,
        plate: None,
        status: None,
        entered_from: query.entered_from,
        entered_to: query.entered_to,
        limit: query.limit.unwrap_or(10_000).min(MAX_SESSIONS),
    };
    let rows = sessions::sessions(&state.db, &filter).await?;
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record([
        "id",
        "lot_id",
        "bay_id",
        "plate",
        "plate_color",
        "status",
        "entered_at",
        "exited_at",
        "fee",
        "currency",
    ])
    .map_err(write_error)?;
    for s in &rows {
        out.write_record([
            s.id.to_string(),
            s.lot_id.clone(),
            s.bay_id.clone().unwrap_or_default(),
            s.plate.clone(),
            s.plate_color.clone().unwrap_or_default(),
            s.status.as_str().to_owned(),
            parkflow_protocol::time::format(&s.entered_at),
            s.exited_at
                .as_ref()
                .map(parkflow_protocol::time::format)
                .unwrap_or_default(),
            s.fee.clone().unwrap_or_default(),
            s.currency.clone().unwrap_or_default(),
        ])
        .map_err(write_error)?;
    }
    let body = out.into_inner().map_err(write_error)?;
    Ok(csv_response("sessions.csv", body))
}
