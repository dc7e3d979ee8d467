//! Paying through the API: the `pay_url` of a held exit (anyone holding it may pay: it names one
//! session), idempotent by the `Idempotency-Key` header. The barrier opens as soon as it succeeds.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use crate::gate::GateMessage;
use parkflow_billing::payments::{ExitPaid, PayError};

/// How long a payment (or a pay page) for a hold not yet on record waits for the gates' writes.
pub(crate) const HOLD_RECORDED_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest idempotency key accepted.
const MAX_KEY_LEN: usize = 200;

/// The client's `Idempotency-Key`: required, so a retried request never pays twice.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
        .ok_or_else(|| {
            ApiError::bad_request(
                "idempotency_key_required",
                "send an Idempotency-Key header (1 to 200 characters)",
            )
        })?;
    Ok(key.to_owned())
}

/// Pays a held exit and opens its barrier: the JSON API's and the pay page's one way to pay.
pub(crate) async fn pay_held_exit(
    state: &AppState,
    session: Uuid,
    key: String,
    account: String,
) -> Result<ExitPaid, ApiError> {
    let pay = || {
        state
            .payments
            .pay_exit(session, key.clone(), account.clone())
    };
    let paid = match pay().await {
        // The hold is published before its record is written: a driver quick enough to pay in
        // between waits for the record rather than being told there is nothing to pay. When the
        // gates' records cannot be made durable meanwhile (the database stalls, its disk is
        // full), nobody knows yet: 503, retry — never a 404 the driver would give up on.
        Err(PayError::NotFound(_)) => {
            if !state.gates.durable(HOLD_RECORDED_WITHIN).await {
                return Err(ApiError::Unavailable);
            }
            pay().await?
        }
        paid => paid?,
    };
    let open = GateMessage::exit_paid(&paid).ok_or_else(|| {
        ApiError::Store(crate::store::StoreError::Corrupt("held exit ids".into()))
    })?;
    state.gates.send(open).await;
    Ok(paid)
}

/// Holding a payment account, it is not `Debug`: it is never printed.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"payment_account": "acct-6222020200112233"}))]
pub(crate) struct PayRequest {
    /// The payment account (provider token) to debit.
    payment_account: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PayResponse {
    payment_id: Uuid,
    session_id: Uuid,
    amount: String,
    currency: String,
}

/// `POST /v1/sessions/{id}/pay`
#[utoipa::path(
    post, path = "/v1/sessions/{id}/pay", tag = "drivers",
    params(("id" = uuid::Uuid, Path, description = "Session id (from the hold's pay_url)"), ("Idempotency-Key" = String, Header, description = "Client-chosen key: a retry with the same key never pays twice")),
    request_body = PayRequest,
    responses(
        (status = 200, description = "Paid: the waiting barrier opens", body = PayResponse),
        (status = 404, description = "No such session (or not this caller's)", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists", body = ErrorBody),
        (status = 202, description = "The provider has not answered yet: retry with the same Idempotency-Key", body = ErrorBody),
        (status = 402, description = "The payment was declined", body = ErrorBody),
        (status = 503, description = "The gates' records are behind (the database stalls): retry with the same Idempotency-Key", body = ErrorBody),
    ),
)]
pub(crate) async fn pay_exit(
    State(state): State<AppState>,
    ApiPath(session): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<PayRequest>,
) -> Result<Json<PayResponse>, ApiError> {
    let key = idempotency_key(&headers)?;
    let paid = pay_held_exit(&state, session, key, request.payment_account).await?;
    Ok(Json(PayResponse {
        payment_id: paid.paid.payment_id,
        session_id: session,
        amount: paid.paid.amount.to_string(),
        currency: paid.paid.amount.currency().as_str().to_owned(),
    }))
}
