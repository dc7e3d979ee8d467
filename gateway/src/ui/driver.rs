//! The driver portal (`/ui/driver`): enrol (the key is shown once, and the browser is logged
//! in), then one page with the driver's standing and mandate, plates and claims, sessions and
//! invoices, and forms to claim a plate, set up the mandate and pay an invoice. Each form calls
//! the API's own handler with the driver's login, so the rules are the API's.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::console::{csrf, time};
use super::login::{CsrfForm, LoggedIn};
use super::text::Text;
use super::{api_error_page, page, respond};
use crate::http::AppState;
use crate::http::auth::DriverKey;
use crate::http::drivers;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};

/// A form's fields as the API's request `T` (the same checks, the same refusals).
fn request<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(crate::http::error::rejection)
}

/// `GET /ui/driver/enrol`
pub(crate) async fn enrol_form(request: axum::extract::Request) -> Response {
    let lang = super::login::lang_of(&request.into_parts().0);
    let t = Text::of(lang);
    respond(
        StatusCode::OK,
        page(
            lang,
            t.enrol_title,
            "/ui/driver/enrol",
            html! {
                form method="post" action="/ui/driver/enrol" {
                    label for="name" { (t.name) }
                    input #name type="text" name="name" required maxlength="200";
                    label for="plate" { (t.plate) }
                    input #plate type="text" name="plate" required maxlength="16";
                    label for="registration_document" { (t.registration_document) }
                    input #registration_document type="text" name="registration_document" maxlength="64";
                    p.note { (t.registration_hint) }
                    label for="payment_account" { (t.account_label) }
                    input #payment_account type="text" name="payment_account" required maxlength="200";
                    label { input type="checkbox" name="auto_debit_consent" value="true" required; " " (t.consent) }
                    button type="submit" { (t.enrol_button) }
                }
            },
        ),
    )
}

#[derive(Deserialize)]
pub(crate) struct EnrolForm {
    name: String,
    plate: String,
    registration_document: Option<String>,
    payment_account: String,
    auto_debit_consent: Option<String>,
}

/// `POST /ui/driver/enrol`: the API's enrolment; the key is shown this once, and the browser
/// is logged in with it.
pub(crate) async fn enrol(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<EnrolForm>,
) -> Response {
    let lang = super::lang_of(None, &headers);
    let t = Text::of(lang);
    let document = form.registration_document.filter(|d| !d.trim().is_empty());
    let enrolment = match request(json!({
        "name": form.name,
        "payment_account": form.payment_account,
        "auto_debit_consent": form.auto_debit_consent.as_deref() == Some("true"),
        "plates": [{ "plate": form.plate.trim(), "registration_document": document }],
    })) {
        Ok(enrolment) => enrolment,
        Err(error) => return api_error_page(lang, error),
    };
    let enrolled = match drivers::enrol(State(state.clone()), ApiJson(enrolment)).await {
        Ok((_, enrolled)) => enrolled.0,
        Err(error) => return api_error_page(lang, error),
    };
    let token = match crate::store::web_sessions::open(
        &state.db,
        &enrolled.api_key,
        None,
        chrono::Utc::now(),
    )
    .await
    {
        Ok(token) => token,
        Err(error) => return api_error_page(lang, error.into()),
    };
    let mut response = respond(
        StatusCode::CREATED,
        page(
            lang,
            t.enrolled_title,
            "/ui/driver/enrol",
            html! {
                p.done role="status" { (t.enrolled_body) }
                dl { dt { (t.your_key) } dd { code.secret #api-key { (enrolled.api_key) } } }
                p.note { (t.key_once) }
                p { a.button href="/ui/driver" { (t.to_portal) } }
            },
        ),
    );
    if let Some(cookie) = super::login::logged_in("/ui/driver", &token)
        .headers()
        .get(axum::http::header::SET_COOKIE)
    {
        response
            .headers_mut()
            .insert(axum::http::header::SET_COOKIE, cookie.clone());
    }
    response
}

/// `GET /ui/driver`: the driver's page.
pub(crate) async fn home(
    State(state): State<AppState>,
    login: LoggedIn,
    driver: Result<DriverKey, ApiError>,
) -> Response {
    let lang = login.lang;
    let t = Text::of(lang);
    let driver = match driver {
        Ok(driver) => driver.0,
        Err(_) => return Redirect::to("/ui/console").into_response(),
    };
    let facts = async {
        let me = crate::store::drivers::driver(&state.db, driver)
            .await?
            .ok_or(ApiError::NotFound("driver"))?;
        let claims = parkflow_billing::claims::of_driver(&state.db, driver).await?;
        let sessions = crate::store::sessions::sessions_of_driver(&state.db, driver, 50).await?;
        let invoices = crate::store::drivers::invoices(&state.db, driver).await?;
        Ok::<_, ApiError>((me, claims, sessions, invoices))
    };
    let (me, claims, sessions, invoices) = match facts.await {
        Ok(facts) => facts,
        Err(error) => return api_error_page(lang, error),
    };
    let mandate = me.mandate.map_or("—", |m| m.as_str());
    let body = html! {
        div.consolenav {
            form.inline method="post" action="/ui/logout" {
                (csrf(&login))
                button.link type="submit" { (t.logout) }
            }
        }
        dl {
            dt { (t.name) } dd { (me.name) }
            dt { (t.standing) } dd #standing { (lang.say(me.status.as_str())) }
            dt { (t.auto_debit) } dd #auto-debit { (if me.auto_debit { t.yes } else { t.no }) }
            dt { (t.mandate) } dd #mandate { (lang.say(mandate)) }
        }
        h2 { (t.invoices) }
        @if invoices.is_empty() { p.note { (t.none) } }
        table.invoices {
            tbody {
                @for invoice in &invoices {
                    tr data-invoice=(invoice.id) {
                        td { (invoice.amount) " " (invoice.currency) }
                        td.status { (lang.say(&invoice.status)) }
                        td { (t.due_by) " " (time(invoice.due_at)) }
                        td {
                            @if invoice.status == parkflow_billing::arrears::InvoiceStatus::Open.as_str() {
                                form.inline method="post" action={ "/ui/driver/invoices/" (invoice.id) "/pay" } {
                                    (csrf(&login))
                                    input type="hidden" name="idempotency_key" value=(Uuid::new_v4());
                                    input type="text" name="payment_account" maxlength="200" placeholder=(t.other_account) aria-label=(t.other_account);
                                    button type="submit" { (t.pay_invoice) }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { (t.plates) }
        ul.plates { @for plate in &me.plates { li.plate { (plate.plate) } } }
        @for claim in claims.iter().filter(|c| c.status != parkflow_billing::claims::ClaimStatus::Granted) {
            p.note { (claim.plate) " · " (lang.say(claim.status.as_str())) }
        }
        form method="post" action="/ui/driver/plates" {
            (csrf(&login))
            label { (t.plate) " " input type="text" name="plate" required maxlength="16"; }
            label { (t.registration_document) " " input type="text" name="registration_document" maxlength="64"; }
            button type="submit" { (t.claim_button) }
        }
        h2 { (t.mandate) }
        form method="post" action="/ui/driver/mandate" {
            (csrf(&login))
            label { (t.account_label) " " input type="text" name="payment_account" required maxlength="200"; }
            label { input type="checkbox" name="auto_debit_consent" value="true" checked[me.auto_debit]; " " (t.consent) }
            button type="submit" { (t.save) }
        }
        h2 { (t.sessions) }
        @if sessions.is_empty() { p.note { (t.none) } }
        table.sessions {
            tbody {
                @for session in &sessions {
                    tr {
                        td { (session.plate) }
                        td { (session.lot_id) }
                        td { (time(session.entered_at)) }
                        td { (session.exited_at.map_or_else(|| "—".to_owned(), time)) }
                        td { (session.fee.as_deref().unwrap_or("—")) " " (session.currency.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        page(lang, t.driver_title, "/ui/driver", body),
    )
}

/// Where a form's result goes: back to the page, or a page saying what was refused.
fn back(lang: super::text::Lang, result: Result<(), ApiError>) -> Response {
    match result {
        Ok(()) => Redirect::to("/ui/driver").into_response(),
        Err(error) => api_error_page(lang, error),
    }
}

#[derive(Deserialize)]
pub(crate) struct PlateForm {
    plate: String,
    registration_document: Option<String>,
}

/// `POST /ui/driver/plates`: the API's claim on a plate.
pub(crate) async fn claim(
    State(state): State<AppState>,
    login: LoggedIn,
    driver: Result<DriverKey, ApiError>,
    CsrfForm(form): CsrfForm<PlateForm>,
) -> Response {
    let result = async {
        let claim = request(
            json!({ "plate": form.plate.trim(), "registration_document": form.registration_document }),
        )?;
        let _ = drivers::add_plate(driver?, State(state), ApiJson(claim)).await?;
        Ok(())
    };
    back(login.lang, result.await)
}

#[derive(Deserialize)]
pub(crate) struct MandateForm {
    payment_account: String,
    auto_debit_consent: Option<String>,
}

/// `POST /ui/driver/mandate`: the API's change of account and consent (a mandate is asked for).
pub(crate) async fn mandate(
    State(state): State<AppState>,
    login: LoggedIn,
    driver: Result<DriverKey, ApiError>,
    CsrfForm(form): CsrfForm<MandateForm>,
) -> Response {
    let result = async {
        let update = request(json!({
            "payment_account": form.payment_account,
            "auto_debit_consent": form.auto_debit_consent.as_deref() == Some("true"),
        }))?;
        let _ = drivers::update_me(driver?, State(state), ApiJson(update)).await?;
        Ok(())
    };
    back(login.lang, result.await)
}

#[derive(Deserialize)]
pub(crate) struct PayForm {
    /// Chosen when the page was drawn: the same form sent twice pays once.
    idempotency_key: String,
    /// Another account than the one on file.
    payment_account: Option<String>,
}

/// `POST /ui/driver/invoices/{id}/pay`: the API's payment, from the account on file.
pub(crate) async fn pay(
    State(state): State<AppState>,
    login: LoggedIn,
    driver: Result<DriverKey, ApiError>,
    Path(invoice): Path<Uuid>,
    CsrfForm(form): CsrfForm<PayForm>,
) -> Response {
    let result = async {
        let mut headers = HeaderMap::new();
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&form.idempotency_key).map_err(crate::http::error::rejection)?,
        );
        let _ = drivers::pay_invoice(
            driver?,
            State(state),
            ApiPath(invoice),
            headers,
            ApiJson(request(json!({ "payment_account": form.payment_account }))?),
        )
        .await?;
        Ok(())
    };
    back(login.lang, result.await)
}
