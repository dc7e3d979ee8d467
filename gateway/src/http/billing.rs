//! Billing for the platform admin: settlements (run and read), reconciliation with the payment
//! provider, refunds.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{NaiveDate, Utc};
use parkflow_billing::refunds::RefundError;
use parkflow_billing::settlement::{self, Mismatch, Settlement};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::{Admin, Staff, StaffAdmin};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery, free_text};
use super::payments::idempotency_key;

impl From<RefundError> for ApiError {
    fn from(error: RefundError) -> Self {
        match error {
            RefundError::NotFound => Self::NotFound("charge"),
            RefundError::NotPositive => Self::bad_request("invalid_amount", error.to_string()),
            RefundError::ExceedsCollected { .. } => Self::Status {
                status: StatusCode::CONFLICT,
                code: "refund_exceeds_collected",
                message: error.to_string(),
            },
            RefundError::Refused(_) => Self::Status {
                status: StatusCode::CONFLICT,
                code: "refund_refused",
                message: error.to_string(),
            },
            RefundError::Pending => Self::Status {
                status: StatusCode::ACCEPTED,
                code: "refund_pending",
                message: error.to_string(),
            },
            RefundError::KeyReused => Self::Status {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "idempotency_key_reused",
                message: error.to_string(),
            },
            RefundError::Store(e) => Self::Store(e),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct Days {
    from: NaiveDate,
    to: NaiveDate,
    lot: Option<String>,
}

impl Days {
    fn range(&self) -> Result<(NaiveDate, NaiveDate), ApiError> {
        if self.to < self.from {
            return Err(ApiError::bad_request(
                "invalid_range",
                "to must not be before from",
            ));
        }
        Ok((self.from, self.to))
    }
}

/// `POST /v1/settlements/run?from=YYYY-MM-DD&to=YYYY-MM-DD`: recomputes and stores those days
/// (re-running gives the same figures).
#[utoipa::path(
    post, path = "/v1/settlements/run", tag = "billing",
    security(("api_key" = [])),
    params(Days),
    responses(
        (status = 200, description = "The days settled again (same data, same figures)", body = [Settlement]),
    ),
)]
pub(crate) async fn run(
    _: Admin,
    State(state): State<AppState>,
    ApiQuery(days): ApiQuery<Days>,
) -> Result<Json<Vec<Settlement>>, ApiError> {
    let (from, to) = days.range()?;
    Ok(Json(
        settlement::settle(&state.db, from, to, Utc::now()).await?,
    ))
}

/// `GET /v1/settlements?from=…&to=…&lot=…`: stored settlements.
#[utoipa::path(
    get, path = "/v1/settlements", tag = "billing",
    security(("api_key" = [])),
    params(Days),
    responses(
        (status = 200, description = "Stored settlements per operator, lot and local day", body = [Settlement]),
    ),
)]
pub(crate) async fn list(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiQuery(days): ApiQuery<Days>,
) -> Result<Json<Vec<Settlement>>, ApiError> {
    let (from, to) = days.range()?;
    let mut settlements = settlement::stored(&state.db, days.lot.as_deref(), from, to).await?;
    settlements.retain(|s| scope.sees(&s.operator_id));
    Ok(Json(settlements))
}

/// `GET /v1/reconciliation`: every difference between the platform's records and the provider's.
#[utoipa::path(
    get, path = "/v1/reconciliation", tag = "billing",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Every difference between the platform's and the provider's records", body = [Mismatch]),
    ),
)]
pub(crate) async fn reconciliation(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Vec<Mismatch>>, ApiError> {
    Ok(Json(state.payments.reconcile().await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount": "5.00", "reason": "barrier fault, driver waited"}))]
pub(crate) struct RefundRequest {
    /// A decimal string in the charge's currency (`"5.00"`).
    amount: String,
    reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RefundResponse {
    refund_id: Uuid,
    amount: String,
    currency: String,
}

/// `POST /v1/charges/{id}/refunds` (Idempotency-Key): never more than was collected.
#[utoipa::path(
    post, path = "/v1/charges/{id}/refunds", tag = "billing",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Charge id"), ("Idempotency-Key" = String, Header, description = "Client-chosen key: a retry with the same key never pays twice")),
    request_body = RefundRequest,
    responses(
        (status = 201, description = "Refunded (the same key again answers the same refund)", body = RefundResponse),
        (status = 404, description = "No such charge (or not this caller's)", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists", body = ErrorBody),
        (status = 202, description = "The provider has not answered yet: retry with the same key", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another amount or reason", body = ErrorBody),
    ),
)]
pub(crate) async fn refund(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(charge): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RefundRequest>,
) -> Result<(StatusCode, Json<RefundResponse>), ApiError> {
    let key = idempotency_key(&headers)?;
    let reason = free_text("invalid_reason", "reason", &request.reason, 500)?;
    let amount: Decimal = request
        .amount
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_amount", "amount must be a decimal string"))?;
    // The amount must fit the charge's currency exactly (Money refuses extra minor digits).
    let (currency, operator) = charge_currency(&state, charge).await?;
    if !scope.sees(&operator) {
        return Err(ApiError::NotFound("charge"));
    }
    let money = parkflow_billing::Money::new(amount, currency)
        .map_err(|e| ApiError::bad_request("invalid_amount", e.to_string()))?;
    let minor = money
        .to_minor()
        .map_err(|e| ApiError::bad_request("invalid_amount", e.to_string()))?;
    let refunded = state.payments.refund(charge, minor, reason, key).await?;
    let amount = parkflow_billing::Money::from_minor(refunded.amount_minor, currency);
    Ok((
        StatusCode::CREATED,
        Json(RefundResponse {
            refund_id: refunded.refund_id,
            amount: amount.to_string(),
            currency: refunded.currency,
        }),
    ))
}

/// A charge's currency and operator.
async fn charge_currency(
    state: &AppState,
    charge: Uuid,
) -> Result<(parkflow_billing::Currency, String), ApiError> {
    let row: Option<(String, String)> =
        parkflow_db::query("SELECT currency, operator_id FROM charges WHERE id = $1")
            .bind(charge)
            .fetch_optional(&state.db)
            .await?;
    let (currency, operator) = row.ok_or(ApiError::NotFound("charge"))?;
    let currency = parkflow_billing::Currency::new(&currency).map_err(|_| {
        ApiError::Store(crate::store::StoreError::Corrupt("charge currency".into()))
    })?;
    Ok((currency, operator))
}

impl From<parkflow_billing::arrears::WriteOffError> for ApiError {
    fn from(error: parkflow_billing::arrears::WriteOffError) -> Self {
        match error {
            parkflow_billing::arrears::WriteOffError::NotOpen => Self::NotFound("open invoice"),
            parkflow_billing::arrears::WriteOffError::Store(e) => Self::Store(e),
        }
    }
}

/// `POST /v1/invoices/{id}/write-off`: gives up an open invoice (bad debt); a driver owing nothing
/// overdue any more is reinstated.
#[utoipa::path(
    post, path = "/v1/invoices/{id}/write-off", tag = "billing",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Invoice id")),
    responses(
        (status = 204, description = "The debt moved to bad debt"),
        (status = 404, description = "No such invoice (or not this caller's)", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists", body = ErrorBody),
    ),
)]
pub(crate) async fn write_off(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(invoice): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let change = parkflow_billing::arrears::write_off(&state.db, invoice, Utc::now()).await?;
    if let Some(change) = change {
        state
            .gates
            .send(crate::gate::GateMessage::standing(&change))
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}
