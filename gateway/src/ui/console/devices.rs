//! A lot's devices: those that need someone first (a bay gone silent or offline, a low battery,
//! a camera whose clock is off, a revoked one), then the rest; rotate and revoke as forms, the
//! API's own calls. New credentials are shown once, on the answer to the rotation.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{Reader, csrf, done_banner, time};
use crate::http::AppState;
use crate::http::auth::{Staff, StaffAdmin};
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::ui::login::{CsrfForm, LoggedIn, Nothing};

/// Devices listed at most (those needing someone first).
const LISTED: usize = 500;

#[derive(Debug, Deserialize)]
pub(crate) struct DevicesQuery {
    lot: Option<String>,
    done: Option<String>,
}

/// `GET /ui/console/devices?lot=…`
pub(crate) async fn page(
    State(state): State<AppState>,
    reader: Reader,
    Query(query): Query<DevicesQuery>,
) -> Response {
    let lang = reader.login.lang;
    let t = reader.text();
    let lots = reader.lots(&state);
    let picker = html! {
        form.search method="get" action="/ui/console/devices" {
            label { (t.lot) " "
                select name="lot" {
                    @for lot in lots.iter().take(super::LISTED) {
                        option value=(lot.id) selected[query.lot.as_deref() == Some(lot.id.as_str())] { (lot.name) " (" (lot.id) ")" }
                    }
                }
            }
            button type="submit" { (t.show) }
        }
    };
    let Some(lot) = query.lot else {
        return reader.page(t.devices_title, "/ui/console/devices", picker);
    };
    let scope = || Staff(reader.scope.clone());
    let devices =
        match crate::http::devices::list(scope(), State(state.clone()), ApiPath(lot.clone())).await
        {
            Ok(devices) => devices.0,
            Err(error) => return crate::ui::api_error_page(lang, error),
        };
    let bays =
        match crate::http::availability::bays(scope(), State(state.clone()), ApiPath(lot.clone()))
            .await
        {
            Ok(bays) => bays.0,
            Err(error) => return crate::ui::api_error_page(lang, error),
        };
    let by_bay: std::collections::HashMap<&str, &crate::occupancy::BayView> =
        bays.iter().map(|b| (b.bay.as_str(), b)).collect();
    let bay_of = |id: &Option<String>| id.as_deref().and_then(|b| by_bay.get(b).copied());
    let mut rows: Vec<_> = devices
        .iter()
        .map(|device| {
            let bay = bay_of(&device.bay_id);
            let mut troubles = Vec::new();
            if device.revoked_at.is_some() {
                troubles.push(t.revoked);
            }
            if bay.is_some_and(|b| b.state == "unknown") {
                troubles.push(t.silent);
            }
            if bay.is_some_and(|b| b.battery_low) {
                troubles.push(t.battery_low);
            }
            if device.clock_fault_at.is_some() {
                troubles.push(t.clock_fault);
            }
            (device, bay, troubles)
        })
        .collect();
    // Those needing someone first; revoked ones last among them (nothing to do).
    rows.sort_by_key(|(device, _, troubles)| {
        (
            troubles.is_empty(),
            device.revoked_at.is_some(),
            device.id.clone(),
        )
    });
    let needing = rows.iter().filter(|(_, _, tr)| !tr.is_empty()).count();
    reader.page(
        t.devices_title,
        "/ui/console/devices",
        html! {
            (done_banner(lang, query.done.as_deref()))
            (picker)
            p { (needing) " " (t.need_attention) " · " (rows.len()) " " (t.devices_count) }
            table {
                thead { tr { th { (t.device) } th { (t.kind) } th { (t.where_) } th { (t.state) } th { (t.last_heard) } th {} } }
                tbody {
                    @for (device, bay, troubles) in rows.iter().take(LISTED) {
                        tr.trouble[!troubles.is_empty()] data-device=(device.id) {
                            td { code { (device.id) } }
                            td { (lang.say(&device.kind)) }
                            td { (device.gate_id.as_deref().or(device.bay_id.as_deref()).unwrap_or("—")) }
                            td { @if troubles.is_empty() { (t.ok) } @else { (troubles.join(", ")) } }
                            td { (bay.and_then(|b| b.heard_at).map_or_else(|| "—".to_owned(), time)) }
                            td {
                                @if reader.writes() && device.revoked_at.is_none() {
                                    form.inline method="post" action={ "/ui/console/devices/" (device.id) "/rotate" } {
                                        (csrf(&reader.login))
                                        button type="submit" { (t.rotate) }
                                    }
                                    form.inline method="post" action={ "/ui/console/devices/" (device.id) "/revoke?lot=" (lot) } {
                                        (csrf(&reader.login))
                                        button.danger type="submit" { (t.revoke) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `POST /ui/console/devices/{id}/rotate`: new credentials, shown on this answer only.
pub(crate) async fn rotate(
    State(state): State<AppState>,
    login: LoggedIn,
    who: Result<StaffAdmin, ApiError>,
    Path(id): Path<String>,
    CsrfForm(Nothing {}): CsrfForm<Nothing>,
) -> Response {
    let lang = login.lang;
    let who = match who {
        Ok(who) => who,
        Err(error) => return crate::ui::api_error_page(lang, error),
    };
    let credentials =
        match crate::http::devices::rotate(who, State(state.clone()), ApiPath(id)).await {
            Ok(credentials) => credentials.0,
            Err(error) => return crate::ui::api_error_page(lang, error),
        };
    // The scope is the key's, as the rotation above checked; the page shows only its answer.
    let reader = Reader {
        login,
        scope: crate::http::auth::Scope::All,
    };
    let t = reader.text();
    let mut response = reader.page(
        t.rotated_title,
        "/ui/console/devices",
        html! {
            p.done role="status" { (t.rotated_body) }
            dl.secret {
                dt { (t.device) } dd { code { (credentials.device.id) } }
                dt { (t.mqtt_username) } dd { code { (credentials.device.mqtt_username) } }
                dt { (t.mqtt_password) } dd { code.secret { (credentials.mqtt_password) } }
                dt { (t.signing_secret) } dd { code.secret { (credentials.secret) } }
            }
            @if let Some(lot) = &credentials.device.lot_id {
                p { a href={ "/ui/console/devices?lot=" (lot) } { (t.back) } }
            }
        },
    );
    // Shown once: not kept by the browser's history cache either.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

#[derive(Debug, Deserialize)]
pub(crate) struct Back {
    lot: Option<String>,
}

/// `POST /ui/console/devices/{id}/revoke`: revoked at once (the broker disconnects it).
pub(crate) async fn revoke(
    State(state): State<AppState>,
    login: LoggedIn,
    who: Result<StaffAdmin, ApiError>,
    Path(id): Path<String>,
    Query(back): Query<Back>,
    CsrfForm(Nothing {}): CsrfForm<Nothing>,
) -> Response {
    let who = match who {
        Ok(who) => who,
        Err(error) => return crate::ui::api_error_page(login.lang, error),
    };
    match crate::http::devices::revoke(who, State(state), ApiPath(id)).await {
        Ok(_) => {
            let lot = back
                .lot
                .as_deref()
                .and_then(|l| parkflow_protocol::LotId::parse(l).ok());
            let to = lot.map_or_else(
                || "/ui/console/devices?done=revoked".to_owned(),
                |lot| format!("/ui/console/devices?lot={lot}&done=revoked"),
            );
            Redirect::to(&to).into_response()
        }
        Err(error) => crate::ui::api_error_page(login.lang, error),
    }
}
