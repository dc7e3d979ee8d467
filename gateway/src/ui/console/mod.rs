//! The operator console (`/ui/console`): an operator's lots, lanes, review queue, devices and
//! money, and the platform's health for the platform admin. A person logs in with their API key
//! ([`super::login`]); every page and form goes through the API's own extractors and handlers,
//! so what a key may see and do here is exactly what it may through the API. A viewer sees no
//! forms, and a form posted by one anyway is refused as the API refuses it.

mod devices;
mod health;
mod lot;
mod money;
mod review;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::login::LoggedIn;
use super::text::{Lang, Text};
use crate::http::AppState;
use crate::http::auth::{Caller, Scope, Staff};

pub(crate) use devices::{page as devices, revoke as revoke_device, rotate as rotate_device};
pub(crate) use health::page as health;
pub(crate) use lot::{open as open_gate, page as lot};
pub(crate) use money::{page as money, settlements_csv};
pub(crate) use review::{page as review, picture as review_picture, resolve};

/// A console page's reader: their login and the scope the API gives their key. A driver is sent
/// to their portal.
pub(crate) struct Reader {
    pub login: LoggedIn,
    pub scope: Scope,
}

impl axum::extract::FromRequestParts<AppState> for Reader {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Response> {
        let login = LoggedIn::from_request_parts(parts, state).await?;
        match (Staff::from_request_parts(parts, state).await, &login.caller) {
            (Ok(Staff(scope)), _) => Ok(Self { login, scope }),
            (Err(_), Caller::Driver(_)) => Err(Redirect::to("/ui/driver").into_response()),
            (Err(error), _) => Err(super::api_error_page(login.lang, error)),
        }
    }
}

impl Reader {
    pub(crate) fn text(&self) -> &'static Text {
        Text::of(self.login.lang)
    }

    /// Whether the key may change things (forms are shown; the API decides).
    pub(crate) fn writes(&self) -> bool {
        matches!(
            self.login.caller,
            Caller::PlatformAdmin | Caller::OperatorAdmin(_)
        )
    }

    /// The lots this reader sees, by id.
    pub(crate) fn lots(&self, state: &AppState) -> Vec<crate::registry::Lot> {
        let registry = state.registry.snapshot();
        let mut lots: Vec<_> = registry
            .lots()
            .iter()
            .filter(|lot| self.scope.sees(&lot.operator_id))
            .cloned()
            .collect();
        lots.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        lots
    }

    /// A console page: the navigation, then `body`.
    pub(crate) fn page(&self, title: &str, path: &str, body: Markup) -> Response {
        let t = self.text();
        let nav = html! {
            div.consolenav {
                a href="/ui/console" { (t.nav_lots) }
                a href="/ui/console/review" { (t.nav_review) }
                a href="/ui/console/devices" { (t.nav_devices) }
                a href="/ui/console/money" { (t.nav_money) }
                @if self.login.caller == Caller::PlatformAdmin {
                    a href="/ui/console/health" { (t.nav_health) }
                }
                form.inline method="post" action="/ui/logout" {
                    (csrf(&self.login))
                    button.link type="submit" { (t.logout) }
                }
            }
        };
        super::respond(
            StatusCode::OK,
            super::wide_page(self.login.lang, title, path, &[], html! { (nav) (body) }),
        )
    }
}

/// The hidden field every form of a session carries.
pub(crate) fn csrf(login: &LoggedIn) -> Markup {
    html! { input type="hidden" name="csrf" value=(login.csrf); }
}

/// A time as people read it (UTC, to the second).
pub(crate) fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A result shown above a page's content after a form (`?done=`).
pub(crate) fn done_banner(lang: Lang, done: Option<&str>) -> Markup {
    let t = Text::of(lang);
    let message = match done {
        Some("opened") => Some(t.done_opened),
        Some("resolved") => Some(t.done_resolved),
        Some("revoked") => Some(t.done_revoked),
        _ => None,
    };
    html! { @if let Some(message) = message { p.done role="status" { (message) } } }
}

#[derive(Debug, Deserialize)]
pub(crate) struct HomeQuery {
    /// Part of a lot's id or name.
    q: Option<String>,
}

/// Lots listed on the home page at most (search narrows them).
const LISTED: usize = 200;

/// `GET /ui/console`: the reader's lots with their counts.
pub(crate) async fn home(
    State(state): State<AppState>,
    reader: Reader,
    Query(query): Query<HomeQuery>,
) -> Response {
    let t = reader.text();
    let board = state.availability.board();
    let wanted = query.q.as_deref().map(str::to_lowercase);
    let lots: Vec<_> = reader
        .lots(&state)
        .into_iter()
        .filter(|lot| {
            wanted.as_deref().is_none_or(|q| {
                lot.id.as_str().to_lowercase().contains(q) || lot.name.to_lowercase().contains(q)
            })
        })
        .collect();
    let shown = lots.len().min(LISTED);
    reader.page(
        t.console_title,
        "/ui/console",
        html! {
            form.search method="get" action="/ui/console" {
                input type="search" name="q" value=[query.q.as_deref()] placeholder=(t.search_lots) aria-label=(t.search_lots);
                button type="submit" { (t.search) }
            }
            p.note { (shown) " / " (lots.len()) " " (t.places) }
            table {
                thead { tr { th { (t.lot) } th { (t.kind) } th.num { (t.free) } th.num { (t.occupied) } th.num { (t.unknown) } } }
                tbody {
                    @for lot in lots.iter().take(LISTED) {
                        @let counts = board.lots.get(lot.idx as usize).map(|a| a.counts);
                        tr {
                            td { a href={ "/ui/console/lots/" (lot.id) } { (lot.name) } " " code { (lot.id) } }
                            td { (reader.login.lang.say(lot.kind.as_str())) }
                            td.num { (counts.map_or(0, |c| c.free)) }
                            td.num { (counts.map_or(0, |c| c.occupied)) }
                            td.num { (counts.map_or(0, |c| c.unknown)) }
                        }
                    }
                }
            }
        },
    )
}
