//! The pay page. A held car's `pay_url` (`GET /v1/sessions/{id}/pay`) opened in a browser shows
//! the car park, the times and the amount due, and a form; the form posts to `/ui/pay/{id}`,
//! which pays exactly as the JSON API does (`http::payments::pay_held_exit`: the same
//! idempotency, the same barrier command) and answers "the barrier is opening" with the receipt.
//! An app asking for JSON gets the same facts as JSON. No script: it works in any browser.

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use parkflow_billing::payments::{ExitDue, ExitPayment, exit_due};
use parkflow_protocol::LotId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::text::{Lang, Text};
use super::{page, respond};
use crate::http::AppState;
use crate::http::payments::{HOLD_RECORDED_WITHIN, pay_held_exit};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct PageQuery {
    /// `en` or `zh` (else the browser's `Accept-Language`).
    lang: Option<String>,
}

/// A held exit's payment: what its page shows, for apps.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ExitDueView {
    session_id: Uuid,
    lot_id: String,
    lot_name: String,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    entered_at: DateTime<Utc>,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    held_at: DateTime<Utc>,
    /// All that is due (earlier unpaid stays of the plate included), or none when unknown.
    amount: Option<String>,
    currency: Option<String>,
    /// `due`, `pending` (asked of the provider) or `paid` (the barrier opens).
    status: &'static str,
}

/// `GET /v1/sessions/{id}/pay`: the pay page (HTML), or what is due (JSON) for an app.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/pay", tag = "drivers",
    params(("id" = uuid::Uuid, Path, description = "Session id (from the hold's pay_url)"), PageQuery),
    responses(
        (status = 200, description = "The pay page for a browser (`Accept: text/html`), else what is due", content(
            (ExitDueView = "application/json"),
            (String = "text/html"),
        )),
        (status = 404, description = "No car held for payment under this link"),
        (status = 503, description = "The gates' records are behind: try again"),
    ),
)]
pub(crate) async fn page_or_due(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = lang(&query, &headers);
    let wants_html =
        header_value(&headers, header::ACCEPT).is_some_and(|a| a.contains("text/html"));
    let due = match Uuid::parse_str(&id) {
        Ok(session) => find(&state, session).await.map(|due| (session, due)),
        Err(_) => Ok((Uuid::nil(), None)),
    };
    let text = Text::of(lang);
    // The page's own address, from the parsed id (never the raw path).
    let path = format!(
        "/v1/sessions/{}/pay",
        due.as_ref().map_or(Uuid::nil(), |(session, _)| *session)
    );
    let mut response = match (due, wants_html) {
        (Ok((session, Some(due))), true) => {
            let body = match due.payment {
                ExitPayment::Due => due_form(&state, session, &due, lang, None),
                ExitPayment::Pending => pending(&path, lang),
                ExitPayment::Paid => paid_body(None, lang),
            };
            let title = match due.payment {
                ExitPayment::Paid => text.paid_title,
                ExitPayment::Pending => text.pending_title,
                ExitPayment::Due => text.pay_title,
            };
            respond(StatusCode::OK, page(lang, title, &path, body))
        }
        (Ok((session, Some(due))), false) => {
            axum::Json(view(&state, session, &due)).into_response()
        }
        (Ok((_, None)), true) => not_found(lang, &path),
        (Err(()), true) => busy(lang, &path),
        (Ok((_, None)), false) => {
            crate::http::error::ApiError::NotFound("held exit").into_response()
        }
        (Err(()), false) => crate::http::error::ApiError::Unavailable.into_response(),
    };
    // What is due changes, and the same address answers HTML or JSON.
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::VARY,
        HeaderValue::from_static("accept, accept-language"),
    );
    response
}

/// The form's fields. Holding a payment account, not `Debug`.
#[derive(Deserialize)]
pub(crate) struct PayForm {
    #[serde(default)]
    payment_account: String,
    /// The page's idempotency key: a second click, or a resubmission, pays nothing more.
    #[serde(default)]
    key: String,
    #[serde(default)]
    lang: Option<String>,
}

/// `POST /ui/pay/{id}`: the pay page's form. Answers a page: paid (with the receipt), waiting for
/// the provider, or the form again with what went wrong.
pub(crate) async fn submit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<PayForm>,
) -> Response {
    let lang = lang(
        &PageQuery {
            lang: form.lang.clone(),
        },
        &headers,
    );
    let text = Text::of(lang);
    let path = format!(
        "/v1/sessions/{}/pay",
        Uuid::parse_str(&id).unwrap_or(Uuid::nil())
    );
    let Ok(session) = Uuid::parse_str(&id) else {
        return not_found(lang, &path);
    };
    let account = form.payment_account.trim();
    let key_ok = !form.key.is_empty() && form.key.len() <= 200;
    let problem = if account.is_empty() || account.len() > 200 || !key_ok {
        Some((StatusCode::UNPROCESSABLE_ENTITY, text.account_missing))
    } else {
        match pay_held_exit(&state, session, form.key.clone(), account.to_owned()).await {
            Ok(paid) => {
                return respond(
                    StatusCode::OK,
                    page(
                        lang,
                        text.paid_title,
                        &path,
                        paid_body(Some(paid.paid.payment_id), lang),
                    ),
                );
            }
            Err(error) => match error.into_response().status() {
                StatusCode::ACCEPTED => {
                    return respond(
                        StatusCode::ACCEPTED,
                        page(lang, text.pending_title, &path, pending(&path, lang)),
                    );
                }
                StatusCode::PAYMENT_REQUIRED => Some((StatusCode::PAYMENT_REQUIRED, text.declined)),
                StatusCode::NOT_FOUND => return not_found(lang, &path),
                StatusCode::CONFLICT => Some((StatusCode::CONFLICT, text.nothing_due_body)),
                status if status.is_server_error() => Some((status, text.try_again)),
                status => Some((status, text.account_missing)),
            },
        }
    };
    let (status, message) = problem.unwrap_or((StatusCode::OK, ""));
    match find(&state, session).await {
        Ok(Some(due)) if due.payment == ExitPayment::Due => respond(
            status,
            page(
                lang,
                text.pay_title,
                &path,
                due_form(&state, session, &due, lang, Some(message)),
            ),
        ),
        Ok(Some(due)) if due.payment == ExitPayment::Paid => respond(
            StatusCode::OK,
            page(lang, text.paid_title, &path, paid_body(None, lang)),
        ),
        Ok(Some(_)) => respond(
            StatusCode::ACCEPTED,
            page(lang, text.pending_title, &path, pending(&path, lang)),
        ),
        Ok(None) => not_found(lang, &path),
        Err(()) => busy(lang, &path),
    }
}

/// No car held for payment under this link.
fn not_found(lang: Lang, path: &str) -> Response {
    let text = Text::of(lang);
    respond(
        StatusCode::NOT_FOUND,
        page(
            lang,
            text.not_found_title,
            path,
            html! { p { (text.not_found_body) } },
        ),
    )
}

/// The gates' records are behind: try again.
fn busy(lang: Lang, path: &str) -> Response {
    let text = Text::of(lang);
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        page(
            lang,
            text.pay_title,
            path,
            html! { p.error { (text.try_again) } },
        ),
    )
}

fn header_value(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn lang(query: &PageQuery, headers: &HeaderMap) -> Lang {
    super::lang_of(query.lang.as_deref(), headers)
}

/// The held exit of `session`; a hold published a moment ago waits for its record (no 404 window).
/// `Err` when the records are behind.
async fn find(state: &AppState, session: Uuid) -> Result<Option<ExitDue>, ()> {
    let look = || async {
        exit_due(&state.db, session).await.map_err(|error| {
            tracing::warn!(%error, "reading a held exit failed");
        })
    };
    match look().await? {
        Some(due) => Ok(Some(due)),
        None if state.gates.durable(HOLD_RECORDED_WITHIN).await => look().await,
        None => Err(()),
    }
}

fn view(state: &AppState, session: Uuid, due: &ExitDue) -> ExitDueView {
    ExitDueView {
        session_id: session,
        lot_id: due.lot_id.clone(),
        lot_name: lot_name(state, &due.lot_id),
        entered_at: due.entered_at,
        held_at: due.held_at,
        amount: due.amount.map(|a| a.to_string()),
        currency: due.amount.map(|a| a.currency().as_str().to_owned()),
        status: match due.payment {
            ExitPayment::Due => "due",
            ExitPayment::Pending => "pending",
            ExitPayment::Paid => "paid",
        },
    }
}

fn lot_name(state: &AppState, lot: &str) -> String {
    LotId::parse(lot)
        .ok()
        .and_then(|id| {
            state
                .registry
                .snapshot()
                .lot_by_id(&id)
                .map(|l| l.name.clone())
        })
        .unwrap_or_else(|| lot.to_owned())
}

/// A time as the lot's clock shows it.
fn local(state: &AppState, lot: &str, at: DateTime<Utc>) -> String {
    let zone = LotId::parse(lot)
        .ok()
        .and_then(|id| {
            state
                .registry
                .snapshot()
                .lot_by_id(&id)
                .and_then(|l| l.time_zone.parse::<chrono_tz::Tz>().ok())
        })
        .unwrap_or(chrono_tz::UTC);
    at.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string()
}

fn due_form(
    state: &AppState,
    session: Uuid,
    due: &ExitDue,
    lang: Lang,
    problem: Option<&str>,
) -> Markup {
    let text = Text::of(lang);
    html! {
        dl {
            dt { (text.lot) } dd { (lot_name(state, &due.lot_id)) }
            dt { (text.entered) } dd { (local(state, &due.lot_id, due.entered_at)) }
            dt { (text.held) } dd { (local(state, &due.lot_id, due.held_at)) }
            dt { (text.due) }
            dd.amount {
                @if let Some(amount) = due.amount { (amount) " " (amount.currency().as_str()) }
                @if due.owed.is_some() { br; span.note { (text.includes_owed) } }
            }
        }
        @if let Some(problem) = problem.filter(|p| !p.is_empty()) { p.error role="alert" { (problem) } }
        form method="post" action={ "/ui/pay/" (session) } {
            input type="hidden" name="key" value=(Uuid::new_v4());
            input type="hidden" name="lang" value=(lang.code());
            label for="payment_account" { (text.account_label) }
            input #payment_account type="text" name="payment_account" required autocomplete="off" maxlength="200";
            span.note { (text.account_hint) }
            button type="submit" { (text.pay_button) }
        }
    }
}

fn pending(path: &str, lang: Lang) -> Markup {
    let text = Text::of(lang);
    html! {
        p { (text.pending_body) }
        a.button href={ (path) "?lang=" (lang.code()) } { (text.refresh) }
    }
}

/// Paid: the barrier opens; the receipt is shown to the payer alone (it proves the plate).
fn paid_body(receipt: Option<Uuid>, lang: Lang) -> Markup {
    let text = Text::of(lang);
    html! {
        p.done #paid role="status" { (text.barrier_opening) }
        @if let Some(receipt) = receipt {
            dl {
                dt { (text.receipt) } dd { code #receipt { (receipt) } }
            }
            p.note { (text.receipt_hint) }
        }
    }
}
