//! The driver API: enrol (payment account, auto-debit consent, a claim on each plate), claim and
//! prove plates, see one's sessions and invoices, pay an invoice (idempotent). A driver sees only
//! their own; a plate is theirs only once their claim on it is proven (`parkflow_billing::claims`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use parkflow_protocol::{Plate, PlateColor};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::{DriverKey, DriverWithKey};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, free_text};
use super::payments::idempotency_key;
use crate::gate::GateMessage;
use crate::gate::decide::Standing;
use crate::store::audit::AuditEntry;
use crate::store::drivers::{self, Claimed, DriverView, InvoiceView, PlateClaim};
use crate::store::keys::{self, DriverKeyView};
use crate::store::sessions::{self, SessionView};
use parkflow_billing::claims::{self, Claim, ClaimStatus, Proof};
use parkflow_billing::drivers::{Change, DriverStatus};

/// How long removing a plate waits for the gates' writes to be durable.
const GATES_DURABLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Plates one driver may enrol.
const MAX_PLATES: usize = 10;

/// A plate a driver claims. Holding a registration document number, it is not `Debug`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plate": "浙AD12345", "plate_color": "green", "registration_document": "3F9A01C2B7E4"}))]
pub(crate) struct PlateRequest {
    plate: String,
    plate_color: Option<PlateColor>,
    /// Proof: the number on the vehicle's registration document (the register checks it).
    #[serde(default)]
    registration_document: Option<String>,
    /// Proof: the id of a payment made at this plate's held exit, from its receipt.
    #[serde(default)]
    receipt: Option<Uuid>,
}

impl PlateRequest {
    fn parse(self) -> Result<PlateClaim, ApiError> {
        let plate = Plate::parse(&self.plate)
            .map_err(|e| ApiError::bad_request("invalid_plate", e.to_string()))?;
        let proof = proof(self.registration_document, self.receipt)?;
        Ok(PlateClaim {
            plate,
            color: self.plate_color,
            proof,
        })
    }
}

/// The proof given, if any: one kind at most.
fn proof(document: Option<String>, receipt: Option<Uuid>) -> Result<Option<Proof>, ApiError> {
    match (document, receipt) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_proof",
            "give either registration_document or receipt, not both",
        )),
        (Some(document), None) => {
            free_text(
                "invalid_proof",
                "registration_document",
                &document,
                MAX_DOCUMENT_LEN,
            )?;
            Ok(Some(Proof::Registration(document.into())))
        }
        (None, Some(receipt)) => Ok(Some(Proof::Receipt(receipt))),
        (None, None) => Ok(None),
    }
}

/// Longest registration document number taken.
const MAX_DOCUMENT_LEN: usize = 64;

/// A claim as its driver sees it, with what became of the proof just shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ClaimView {
    #[serde(flatten)]
    claim: Claim,
    /// Whether the proof given with this request held (absent when none was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    proof_accepted: Option<bool>,
}

impl From<Claimed> for ClaimView {
    fn from(claimed: Claimed) -> Self {
        Self {
            claim: claimed.claim,
            proof_accepted: claimed.proof_accepted,
        }
    }
}

/// Enrolment. The server owns the id, the status and the key; a body naming them is refused.
/// Holding a payment account, it is not `Debug`: it is never printed.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Lin Wei", "payment_account": "acct-6222020200112233", "auto_debit_consent": true, "plates": [{"plate": "浙A12345", "plate_color": "blue"}]}))]
pub(crate) struct EnrolRequest {
    name: String,
    payment_account: String,
    /// Consent to password-free auto-debit: leave-first, pay-later needs it.
    auto_debit_consent: bool,
    plates: Vec<PlateRequest>,
}

/// Holding the driver's key, it is not `Debug`: it is never printed.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Enrolled {
    driver: DriverView,
    /// A claim per plate: `granted` when proven and free, `pending` until proven (an unproven
    /// claim says nothing of whether anyone else holds the plate), `disputed` when proven but
    /// held by another driver (an operator decides).
    claims: Vec<ClaimView>,
    /// Shown once; the platform keeps only its hash.
    pub api_key: String,
}

/// `POST /v1/drivers`
#[utoipa::path(
    post, path = "/v1/drivers", tag = "drivers",
    request_body = EnrolRequest,
    responses(
        (status = 201, description = "Enrolled, a claim per plate: the driver's API key is shown this once", body = Enrolled),
    ),
)]
pub(crate) async fn enrol(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrolRequest>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    if !request.auto_debit_consent {
        return Err(ApiError::bad_request(
            "consent_required",
            "leave first, pay later needs consent to auto-debit",
        ));
    }
    free_text("invalid_name", "name", &request.name, 200)?;
    free_text(
        "invalid_payment_account",
        "payment_account",
        &request.payment_account,
        200,
    )?;
    if request.payment_account.is_empty() || request.payment_account.len() > 200 {
        return Err(ApiError::bad_request(
            "invalid_payment_account",
            "payment_account must have 1 to 200 characters",
        ));
    }
    if request.plates.is_empty() || request.plates.len() > MAX_PLATES {
        return Err(ApiError::bad_request(
            "invalid_plates",
            format!("enrol 1 to {MAX_PLATES} plates"),
        ));
    }
    let plates = request
        .plates
        .into_iter()
        .map(PlateRequest::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let (driver, claims, api_key) = drivers::enrol(
        &state.db,
        &state.verifiers,
        request.name.trim(),
        &request.payment_account,
        &plates,
        Utc::now(),
    )
    .await?;
    // The key is the driver's now: a provider that cannot be asked leaves the mandate to the
    // next check rather than losing the enrolment.
    if let Err(error) = state
        .payments
        .set_up_mandate(driver.id, request.payment_account.clone())
        .await
    {
        tracing::warn!(%error, "asking for a mandate at enrolment failed");
    }
    let driver = drivers::driver(&state.db, driver.id)
        .await?
        .ok_or(ApiError::NotFound("driver"))?;
    tell_gates(&state, &claims, standing_of(&driver)).await;
    let claims = claims.into_iter().map(ClaimView::from).collect();
    Ok((
        StatusCode::CREATED,
        Json(Enrolled {
            driver,
            claims,
            api_key,
        }),
    ))
}

/// A driver's change of name, payment account or auto-debit consent: the fields given change.
/// Holding a payment account, it is not `Debug`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"payment_account": "acct-new-card", "auto_debit_consent": true}))]
pub(crate) struct DriverUpdate {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    payment_account: Option<String>,
    /// Withdrawn, the driver's cars pay at the exit (the barrier holds them) until it is given again.
    #[serde(default)]
    auto_debit_consent: Option<bool>,
}

/// `PATCH /v1/me`
#[utoipa::path(
    patch, path = "/v1/me", tag = "drivers",
    security(("api_key" = [])),
    request_body = DriverUpdate,
    responses(
        (status = 200, description = "The driver as they are now", body = DriverView),
        (status = 409, description = "Auto-debit cannot be withdrawn while the driver owes (`debt_outstanding`)", body = ErrorBody),
    ),
)]
pub(crate) async fn update_me(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DriverUpdate>,
) -> Result<Json<DriverView>, ApiError> {
    let name = request
        .name
        .as_deref()
        .map(|name| free_text("invalid_name", "name", name, 200))
        .transpose()?;
    let account = request
        .payment_account
        .as_deref()
        .map(|account| free_text("invalid_payment_account", "payment_account", account, 200))
        .transpose()?;
    let withdrawn = request.auto_debit_consent == Some(false);
    let before = drivers::driver(&state.db, driver)
        .await?
        .ok_or(ApiError::NotFound("driver"))?;
    let account_before = drivers::payment_account(&state.db, driver).await?;
    let new_account = account.is_some() && account != account_before;
    let change = drivers::update(
        &state.db,
        driver,
        name.as_deref(),
        account.as_deref(),
        withdrawn.then_some(false),
    )
    .await?;
    refuse_while_owing(change, "driver")?;
    // Consent given (and no mandate active on this account), or a new account while
    // consenting: the provider is asked for a mandate, and auto-debit is on once it confirms.
    let active = before.mandate == Some(parkflow_billing::mandates::MandateState::Active);
    let consenting = (request.auto_debit_consent == Some(true) && (!active || new_account))
        || (!withdrawn && new_account && before.mandate.is_some());
    if consenting {
        let account = match account {
            Some(account) => account,
            None => drivers::payment_account(&state.db, driver)
                .await?
                .ok_or_else(|| {
                    ApiError::bad_request("payment_account_required", "no payment account on file")
                })?,
        };
        state.payments.set_up_mandate(driver, account).await?;
    }
    let me = drivers::driver(&state.db, driver)
        .await?
        .ok_or(ApiError::NotFound("driver"))?;
    let standing = standing_of(&me);
    let plates = me
        .plates
        .iter()
        .filter_map(|p| Plate::parse(&p.plate).ok())
        .collect();
    state
        .gates
        .send(GateMessage::Standing { plates, standing })
        .await;
    Ok(Json(me))
}

/// A change a debt stands in the way of: `409 debt_outstanding` while the driver owes.
fn refuse_while_owing(change: Change, what: &'static str) -> Result<(), ApiError> {
    match change {
        Change::Done => Ok(()),
        Change::NotFound => Err(ApiError::NotFound(what)),
        Change::Owing => Err(ApiError::conflict(
            "debt_outstanding",
            "settle your unpaid invoices first: a plate cannot leave an account, nor auto-debit \
             be withdrawn, while its driver owes",
        )),
        Change::Parked => Err(ApiError::conflict(
            "car_parked",
            "a car under this plate is parked: remove the plate once it has left",
        )),
    }
}

/// How the gate treats a driver's cars at the exit.
pub(crate) fn standing_of(driver: &DriverView) -> Standing {
    Standing::of(driver.auto_debit, driver.status == DriverStatus::Suspended)
}

/// `GET /v1/me`
#[utoipa::path(
    get, path = "/v1/me", tag = "drivers",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The driver, their plates and standing", body = DriverView),
    ),
)]
pub(crate) async fn me(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
) -> Result<Json<DriverView>, ApiError> {
    drivers::driver(&state.db, driver)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("driver"))
}

/// Tells the gates the plates of `claims` granted are billed to a driver of `standing`.
async fn tell_gates(state: &AppState, claims: &[Claimed], standing: Standing) {
    let plates: Vec<Plate> = claims
        .iter()
        .filter(|c| c.claim.status == ClaimStatus::Granted)
        .filter_map(|c| Plate::parse(&c.claim.plate).ok())
        .collect();
    if !plates.is_empty() {
        state
            .gates
            .send(GateMessage::Standing { plates, standing })
            .await;
    }
}

/// `POST /v1/me/plates`: a claim on another plate, proven at once when a proof comes with it.
#[utoipa::path(
    post, path = "/v1/me/plates", tag = "drivers",
    security(("api_key" = [])),
    request_body = PlateRequest,
    responses(
        (status = 201, description = "Claimed: `granted`, `pending` (not proven) or `disputed` (an operator decides)", body = ClaimView),
        (status = 422, description = "Too many plates and claims (`too_many_plates`), or a bad plate or proof", body = ErrorBody),
    ),
)]
pub(crate) async fn add_plate(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PlateRequest>,
) -> Result<(StatusCode, Json<ClaimView>), ApiError> {
    let me = drivers::driver(&state.db, driver)
        .await?
        .ok_or(ApiError::NotFound("driver"))?;
    let claimed = drivers::claim_plate(
        &state.db,
        &state.verifiers,
        driver,
        request.parse()?,
        MAX_PLATES,
        Utc::now(),
    )
    .await?
    .ok_or_else(|| {
        ApiError::bad_request(
            "too_many_plates",
            format!("a driver holds and claims at most {MAX_PLATES} plates"),
        )
    })?;
    tell_gates(&state, std::slice::from_ref(&claimed), standing_of(&me)).await;
    Ok((StatusCode::CREATED, Json(claimed.into())))
}

/// `GET /v1/me/claims`
#[utoipa::path(
    get, path = "/v1/me/claims", tag = "drivers",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The driver's plate claims, newest first", body = [Claim]),
    ),
)]
pub(crate) async fn my_claims(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
) -> Result<Json<Vec<Claim>>, ApiError> {
    Ok(Json(claims::of_driver(&state.db, driver).await?))
}

/// A proof for a claim made earlier. Holding a document number, it is not `Debug`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"receipt": "01938f2e-7b1c-7cc0-9a3e-5d1f0e2a4b6c"}))]
pub(crate) struct ProofRequest {
    #[serde(default)]
    registration_document: Option<String>,
    #[serde(default)]
    receipt: Option<Uuid>,
}

/// `POST /v1/me/claims/{id}/proof`
#[utoipa::path(
    post, path = "/v1/me/claims/{id}/proof", tag = "drivers",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "One of the driver's claims")),
    request_body = ProofRequest,
    responses(
        (status = 200, description = "The proof held: the claim is `granted`, or `disputed` when another driver holds the plate", body = ClaimView),
        (status = 404, description = "No such claim of this driver", body = ErrorBody),
        (status = 422, description = "The proof did not hold (`proof_not_accepted`) or none was given", body = ErrorBody),
    ),
)]
pub(crate) async fn prove_claim(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<ProofRequest>,
) -> Result<Json<ClaimView>, ApiError> {
    let proof = proof(request.registration_document, request.receipt)?.ok_or_else(|| {
        ApiError::bad_request("invalid_proof", "give registration_document or receipt")
    })?;
    let claimed = drivers::prove(&state.db, &state.verifiers, driver, id, proof, Utc::now())
        .await?
        .ok_or(ApiError::NotFound("claim"))?;
    if claimed.proof_accepted != Some(true) {
        return Err(ApiError::bad_request(
            "proof_not_accepted",
            "the proof does not show this plate is yours",
        ));
    }
    let me = drivers::driver(&state.db, driver)
        .await?
        .ok_or(ApiError::NotFound("driver"))?;
    tell_gates(&state, std::slice::from_ref(&claimed), standing_of(&me)).await;
    Ok(Json(claimed.into()))
}

/// `DELETE /v1/me/plates/{plate}`
#[utoipa::path(
    delete, path = "/v1/me/plates/{plate}", tag = "drivers",
    security(("api_key" = [])),
    params(("plate" = String, Path, description = "One of the driver's plates")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such plate (or not this caller's)", body = ErrorBody),
        (status = 409, description = "The driver owes (`debt_outstanding`) or the car is parked (`car_parked`): the plate stays", body = ErrorBody),
        (status = 503, description = "The gates' latest decisions are not on record yet: retry", body = ErrorBody),
    ),
)]
pub(crate) async fn remove_plate(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
    ApiPath(plate): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let plate = Plate::parse(&plate).map_err(|_| ApiError::NotFound("plate"))?;
    // A car the gates let in a moment ago may not be on record yet: wait until what they decided
    // is durable, so that "parked" sees it.
    if !state.gates.durable(GATES_DURABLE_WITHIN).await {
        return Err(ApiError::Unavailable);
    }
    refuse_while_owing(drivers::remove(&state.db, driver, &plate).await?, "plate")?;
    state
        .gates
        .send(GateMessage::Standing {
            plates: vec![plate],
            standing: Standing::NotEnrolled,
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/me/sessions`
#[utoipa::path(
    get, path = "/v1/me/sessions", tag = "drivers",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The driver's sessions, newest first", body = [SessionView]),
    ),
)]
pub(crate) async fn my_sessions(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    Ok(Json(
        sessions::sessions_of_driver(&state.db, driver, 100).await?,
    ))
}

/// `GET /v1/me/invoices`
#[utoipa::path(
    get, path = "/v1/me/invoices", tag = "drivers",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The driver's invoices", body = [InvoiceView]),
    ),
)]
pub(crate) async fn my_invoices(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
) -> Result<Json<Vec<InvoiceView>>, ApiError> {
    Ok(Json(drivers::invoices(&state.db, driver).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"payment_account": "acct-6222020200112233"}))]
pub(crate) struct PayInvoiceRequest {
    /// Another account to pay from (the enrolled one when absent).
    payment_account: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InvoicePaid {
    payment_id: Uuid,
    amount: String,
    currency: String,
    /// Whether paying lifted a suspension.
    reinstated: bool,
}

/// `POST /v1/me/invoices/{id}/pay`: clears the debt at once; a reinstated driver's car waiting at
/// an exit is let out.
#[utoipa::path(
    post, path = "/v1/me/invoices/{id}/pay", tag = "drivers",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Invoice id"), ("Idempotency-Key" = String, Header, description = "Client-chosen key: a retry with the same key never pays twice")),
    request_body = PayInvoiceRequest,
    responses(
        (status = 200, description = "Paid (the same key again pays nothing more)", body = InvoicePaid),
        (status = 404, description = "No such invoice (or not this caller's)", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists", body = ErrorBody),
        (status = 202, description = "The provider has not answered yet: retry with the same Idempotency-Key", body = ErrorBody),
        (status = 402, description = "The payment was declined", body = ErrorBody),
    ),
)]
pub(crate) async fn pay_invoice(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
    ApiPath(invoice): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<PayInvoiceRequest>,
) -> Result<Json<InvoicePaid>, ApiError> {
    let key = idempotency_key(&headers)?;
    let account = match request.payment_account {
        Some(account) => account,
        None => drivers::payment_account(&state.db, driver)
            .await?
            .ok_or_else(|| {
                ApiError::bad_request("payment_account_required", "no payment account on file")
            })?,
    };
    let paid = state
        .payments
        .pay_invoice(driver, invoice, key, account)
        .await?;
    let reinstated = paid.reinstated.is_some();
    if let Some(change) = paid.reinstated {
        state.gates.send(GateMessage::standing(&change)).await;
    }
    Ok(Json(InvoicePaid {
        payment_id: paid.payment_id,
        amount: paid.amount.to_string(),
        currency: paid.amount.currency().as_str().to_owned(),
        reinstated,
    }))
}

/// A driver's audit entry about one of their keys.
fn key_entry(who: &DriverWithKey, action: &str, key: Uuid) -> AuditEntry {
    AuditEntry {
        id: Uuid::now_v7(),
        at: Utc::now(),
        actor_role: "driver".into(),
        actor_key: Some(who.key),
        operator_id: None,
        action: action.into(),
        object: format!("keys/{key}"),
        reason: String::new(),
        details: None,
    }
}

/// `GET /v1/me/keys`: the driver's keys, live and revoked (never the keys themselves).
#[utoipa::path(
    get, path = "/v1/me/keys", tag = "drivers",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The driver's keys, newest first", body = [DriverKeyView]),
    ),
)]
pub(crate) async fn my_keys(
    DriverKey(driver): DriverKey,
    State(state): State<AppState>,
) -> Result<Json<Vec<DriverKeyView>>, ApiError> {
    Ok(Json(keys::driver_keys(&state.db, driver).await?))
}

/// A driver's key just issued: the only time it is shown (and, holding it, not `Debug`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IssuedDriverKey {
    #[serde(flatten)]
    view: DriverKeyView,
    pub api_key: String,
}

/// `POST /v1/me/keys`: another key for the driver, issued by the key in use (to rotate: issue,
/// switch, then revoke the old one). Audited.
#[utoipa::path(
    post, path = "/v1/me/keys", tag = "drivers",
    security(("api_key" = [])),
    responses(
        (status = 201, description = "The new key, shown this once", body = IssuedDriverKey),
        (status = 409, description = "Too many live keys (`too_many_keys`): revoke one first", body = ErrorBody),
    ),
)]
pub(crate) async fn issue_key(
    who: DriverWithKey,
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<IssuedDriverKey>), ApiError> {
    let id = Uuid::now_v7();
    let entry = key_entry(&who, "key_issued", id);
    let (view, api_key) = keys::issue_driver_key(&state.db, id, who.driver, &entry)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "too_many_keys",
                format!(
                    "a driver holds at most {} live keys: revoke one first",
                    keys::MAX_DRIVER_KEYS
                ),
            )
        })?;
    Ok((StatusCode::CREATED, Json(IssuedDriverKey { view, api_key })))
}

/// `DELETE /v1/me/keys/{id}`: revokes one of the driver's keys at once (the one in use too).
/// Audited.
#[utoipa::path(
    delete, path = "/v1/me/keys/{id}", tag = "drivers",
    security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "One of the driver's keys")),
    responses(
        (status = 204, description = "Revoked: the key is refused from now on"),
        (status = 404, description = "No such live key of this driver", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke_key(
    who: DriverWithKey,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let entry = key_entry(&who, "key_revoked", id);
    if !keys::revoke_driver_key(&state.db, who.driver, id, &entry).await? {
        return Err(ApiError::NotFound("key"));
    }
    Ok(StatusCode::NO_CONTENT)
}
