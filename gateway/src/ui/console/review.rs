//! The review queue: each open case with what the platform knows of it (its pictures, on lots
//! that keep them) and the corrections as one form: accept, void, edit the plate, merge with
//! another session, split at a time. The form posts to the API's own resolve.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use parkflow_protocol::LotId;
use serde::Deserialize;
use uuid::Uuid;

use super::{Reader, csrf, done_banner, time};
use crate::http::AppState;
use crate::http::audit::ResolveRequest;
use crate::http::auth::{Accountable, Staff};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::store::sessions;
use crate::ui::login::{CsrfForm, LoggedIn};

/// Cases listed at most (oldest first).
const LISTED: u32 = 100;
/// Open sessions a merge offers, per lot (newest first).
const MERGE_CHOICES: u32 = 200;

#[derive(Debug, Deserialize)]
pub(crate) struct ReviewQuery {
    lot: Option<String>,
    done: Option<String>,
}

/// `GET /ui/console/review`
pub(crate) async fn page(
    State(state): State<AppState>,
    reader: Reader,
    Query(query): Query<ReviewQuery>,
) -> Response {
    let lang = reader.login.lang;
    let t = reader.text();
    let lot = match query.lot.as_deref().map(LotId::parse).transpose() {
        Ok(lot) => lot,
        Err(error) => {
            return crate::ui::api_error_page(
                lang,
                ApiError::bad_request("invalid_lot", error.to_string()),
            );
        }
    };
    let cases = match sessions::open_reviews(
        &state.db,
        reader.scope.operator(),
        lot.as_ref(),
        LISTED,
    )
    .await
    {
        Ok(cases) => cases,
        Err(error) => return crate::ui::api_error_page(lang, error.into()),
    };
    // A merge joins the case's exit to a stay open in the same lot: offered by plate.
    let mut open: std::collections::HashMap<String, Vec<crate::store::sessions::SessionView>> =
        std::collections::HashMap::new();
    for case in &cases {
        if open.contains_key(&case.lot_id) {
            continue;
        }
        let Ok(lot) = LotId::parse(&case.lot_id) else {
            continue;
        };
        let filter = sessions::SessionFilter {
            operator: reader.scope.operator().map(str::to_owned),
            lot: Some(lot),
            status: Some(crate::session::SessionStatus::Open),
            limit: MERGE_CHOICES,
            ..sessions::SessionFilter::default()
        };
        match sessions::sessions(&state.db, &filter).await {
            Ok(found) => open.insert(case.lot_id.clone(), found),
            Err(error) => return crate::ui::api_error_page(lang, error.into()),
        };
    }
    reader.page(
        t.review_title,
        "/ui/console/review",
        html! {
            (done_banner(lang, query.done.as_deref()))
            @if cases.is_empty() { p.note { (t.review_empty) } }
            @for case in &cases {
                section.case data-case=(case.id) {
                    h3 { (lang.say(case.kind.as_str())) " · " (case.lot_id) }
                    dl {
                        dt { (t.plate) } dd.plate { (case.plate.as_deref().unwrap_or("—")) }
                        @if let Some(score) = case.score { dt { (t.score) } dd { (format!("{score:.2}")) } }
                        dt { (t.gate) } dd { (case.gate_id.as_deref().or(case.bay_id.as_deref()).unwrap_or("—")) }
                        dt { (t.opened) } dd { (time(case.created_at)) }
                        @if let Some(session) = case.session_id { dt { (t.session) } dd { code { (session) } } }
                    }
                    @for n in 0..case.pictures {
                        img.picture src={ "/ui/console/review/" (case.id) "/pictures/" (n) } alt=(t.picture) loading="lazy";
                    }
                    @if reader.writes() {
                        form.correction method="post" action={ "/ui/console/review/" (case.id) } {
                            (csrf(&reader.login))
                            label { (t.correction) " "
                                select name="action" {
                                    option value="accept" { (t.action_accept) }
                                    option value="void_session" { (t.action_void) }
                                    option value="edit_plate" { (t.action_edit_plate) }
                                    option value="merge" { (t.action_merge) }
                                    option value="split" { (t.action_split) }
                                }
                            }
                            label { (t.new_plate) " " input type="text" name="plate" maxlength="16"; }
                            label { (t.merge_with) " "
                                select name="with_session" {
                                    option value="" { "—" }
                                    @for session in open.get(&case.lot_id).into_iter().flatten() {
                                        option value=(session.id) { (session.plate) " · " (time(session.entered_at)) }
                                    }
                                }
                            }
                            label { (t.split_at) " " input type="text" name="at" placeholder="2026-12-04T08:30:00Z"; }
                            label { (t.reason) " " input type="text" name="reason" required maxlength="500"; }
                            button type="submit" { (t.resolve_button) }
                        }
                    }
                }
            }
        },
    )
}

/// `POST /ui/console/review/{id}`: the API's resolve (audited).
pub(crate) async fn resolve(
    State(state): State<AppState>,
    login: LoggedIn,
    who: Result<Accountable, ApiError>,
    Path(id): Path<Uuid>,
    CsrfForm(request): CsrfForm<ResolveRequest>,
) -> Response {
    let who = match who {
        Ok(who) => who,
        Err(error) => return crate::ui::api_error_page(login.lang, error),
    };
    match crate::http::audit::resolve(who, State(state), ApiPath(id), ApiJson(request)).await {
        Ok(_) => Redirect::to("/ui/console/review?done=resolved").into_response(),
        Err(error) => crate::ui::api_error_page(login.lang, error),
    }
}

/// `GET /ui/console/review/{id}/pictures/{n}`: the API's picture, for the logged-in page.
pub(crate) async fn picture(
    State(state): State<AppState>,
    staff: Result<Staff, ApiError>,
    Path((id, n)): Path<(Uuid, u32)>,
) -> Response {
    match staff {
        Ok(staff) => crate::http::sessions::review_picture(staff, State(state), ApiPath((id, n)))
            .await
            .into_response(),
        Err(error) => error.into_response(),
    }
}
