//! A lot's page: its lanes (camera, last read and decision, how long the decision took, the
//! barrier's last report, an off-the-shelf camera's last barrier call) with a manual open, its
//! occupancy over the day as a chart, its open sessions and its overstays.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, TimeZone, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Reader, csrf, done_banner, time};
use crate::http::AppState;
use crate::http::audit::{OpenRequest, manual_open};
use crate::http::auth::Accountable;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::registry::{Lot, LotKind};
use crate::store::sessions::{self, SessionFilter};
use crate::ui::login::{CsrfForm, LoggedIn};
use crate::ui::text::Text;

/// Open sessions and overstays listed at most.
const LISTED: u32 = 50;

#[derive(Debug, Deserialize)]
pub(crate) struct Done {
    done: Option<String>,
}

/// `GET /ui/console/lots/{lot}`
pub(crate) async fn page(
    State(state): State<AppState>,
    reader: Reader,
    Path(lot): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    let lang = reader.login.lang;
    let lot = {
        let registry = state.registry.snapshot();
        match reader.scope.lot(&registry, &lot) {
            Ok(lot) => lot.clone(),
            Err(error) => return crate::ui::api_error_page(lang, error),
        }
    };
    match render(&state, &reader, &lot, done.done.as_deref()).await {
        Ok(body) => reader.page(&lot.name, &format!("/ui/console/lots/{}", lot.id), body),
        Err(error) => crate::ui::api_error_page(lang, error),
    }
}

async fn render(
    state: &AppState,
    reader: &Reader,
    lot: &Lot,
    done: Option<&str>,
) -> Result<Markup, ApiError> {
    let t = reader.text();
    let counts = state
        .availability
        .board()
        .lots
        .get(lot.idx as usize)
        .map(|a| a.counts)
        .unwrap_or_default();
    let open = sessions::sessions(
        &state.db,
        &SessionFilter {
            operator: reader.scope.operator().map(str::to_owned),
            lot: Some(lot.id.clone()),
            status: Some(crate::session::SessionStatus::Open),
            limit: LISTED,
            ..SessionFilter::default()
        },
    )
    .await?;
    let overstays = sessions::overstays(&state.db, &lot.id, LISTED).await?;
    let chart = day_chart(state, lot, t).await?;
    Ok(html! {
        (done_banner(reader.login.lang, done))
        p { code { (lot.id) } " · " (reader.login.lang.say(lot.kind.as_str())) " · " (lot.capacity) " " (t.spaces) }
        div.totals {
            div { span.figure data-count="free" { (counts.free) } span.label { (t.free) } }
            div { span.figure data-count="occupied" { (counts.occupied) } span.label { (t.occupied) } }
            div { span.figure data-count="unknown" { (counts.unknown) } span.label { (t.unknown) } }
        }
        h2 { (t.lanes) }
        (lanes(state, reader, lot).await?)
        h2 { (t.occupancy_today) }
        (chart)
        h2 { (t.open_sessions) " (" (open.len()) ")" }
        table {
            thead { tr { th { (t.plate) } th { (t.entered) } th { (t.gate) } } }
            tbody {
                @for session in &open {
                    tr {
                        td { a href={ "/ui/console/review?lot=" (lot.id) } { (session.plate) } }
                        td { (time(session.entered_at)) }
                        td { (session.entry_gate.as_deref().or(session.bay_id.as_deref()).unwrap_or("—")) }
                    }
                }
            }
        }
        h2 { (t.overstays) " (" (overstays.len()) ")" }
        @if overstays.is_empty() {
            p.note { (t.none) }
        } @else {
            table {
                thead { tr { th { (t.bay) } th { (t.plate) } th { (t.entered) } th { (t.overstay_since) } } }
                tbody {
                    @for stay in &overstays {
                        tr {
                            td { (stay.bay_id) }
                            td { (stay.plate.as_deref().unwrap_or("—")) }
                            td { (time(stay.started_at)) }
                            td { (time(stay.overstay_at)) }
                        }
                    }
                }
            }
        }
    })
}

/// The lanes' table, each with its manual open for a reader who may open barriers.
async fn lanes(state: &AppState, reader: &Reader, lot: &Lot) -> Result<Markup, ApiError> {
    let t = reader.text();
    let lang = reader.login.lang;
    let registry = state.registry.snapshot();
    let reads = sessions::last_reads(&state.db, &lot.id).await?;
    let calls = state.relay.outcomes_of(&lot.id);
    let facts = state.gates.lanes().of_lot(&lot.id);
    let mut gates: Vec<_> = registry.gates().filter(|g| g.lot == lot.idx).collect();
    gates.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    Ok(html! {
        @if gates.is_empty() { p.note { (t.none) } }
        div.lanes { @for gate in gates {
            @let read = reads.iter().find(|r| r.gate_id == gate.id.as_str());
            @let call = calls.iter().find(|(g, _)| g == &gate.id).map(|(_, c)| c);
            @let facts = facts.iter().find(|(g, _)| g == &gate.id).map(|(_, f)| f);
            @let barrier = facts.and_then(|f| f.barrier.as_ref());
            @let decision = facts.and_then(|f| f.decision);
            section.lane data-gate=(gate.id) {
                h3 { (gate.id) " · " (direction(gate.direction, t)) }
                dl {
                    dt { (t.camera) }
                    dd { (gate.camera.as_ref().map_or("—", |c| c.as_str())) }
                    dt { (t.last_read) }
                    dd {
                        @if let Some(read) = read {
                            (read.plate) " · " (lang.say(&read.direction)) " · " (time(read.received_at))
                        } @else { "—" }
                    }
                    dt { (t.last_command) }
                    dd.command {
                        @if let Some(read) = read { (lang.say(&format!("action_{}", read.action))) " · " (lang.say(&read.reason)) } @else { "—" }
                    }
                    dt { (t.decision_time) }
                    dd.decision {
                        @if let Some(took) = decision {
                            (format!("{:.2} ms", took.as_secs_f64() * 1000.0))
                        } @else { "—" }
                    }
                    dt { (t.barrier_reported) }
                    dd {
                        @if let Some(barrier) = barrier {
                            (lang.say(&format!("barrier_{:?}", barrier.state).to_lowercase())) " · " (time(barrier.observed_at))
                        } @else { "—" }
                    }
                    @if let Some(call) = call {
                        dt { (t.barrier_call) }
                        dd class=(if call.ok { "" } else { "error" }) {
                            (if call.ok { t.call_ok } else { t.call_failed }) " · " (time(call.at))
                            @if let Some(error) = &call.error { " · " (error) }
                        }
                    }
                }
                @if reader.writes() {
                    form.inline method="post" action={ "/ui/console/lots/" (lot.id) "/gates/" (gate.id) "/open" } {
                        (csrf(&reader.login))
                        label { (t.open_reason) " " input type="text" name="reason" required maxlength="500"; }
                        button type="submit" { (t.open_button) }
                    }
                }
            }
        } }
    })
}

fn direction(direction: crate::registry::GateDirection, t: &Text) -> &'static str {
    use crate::registry::GateDirection;
    match direction {
        GateDirection::Entry => t.entry,
        GateDirection::Exit => t.exit,
        GateDirection::Both => t.both_ways,
    }
}

/// Points on the day's chart: one every quarter hour.
const STEP_MINUTES: i64 = 15;

/// The lot's occupancy since midnight (its time zone), from its stays: how many were open at
/// each quarter hour. An SVG drawn here, so the page needs no script.
async fn day_chart(state: &AppState, lot: &Lot, t: &Text) -> Result<Markup, ApiError> {
    let now = Utc::now();
    let zone: chrono_tz::Tz = lot.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let midnight = zone
        .from_local_datetime(
            &now.with_timezone(&zone)
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .unwrap_or_default(),
        )
        .earliest()
        .map_or(now - Duration::hours(24), |m| m.with_timezone(&Utc));
    let stays = sessions::stays_between(
        &state.db,
        &lot.id,
        lot.kind == LotKind::OnStreet,
        midnight,
        now,
    )
    .await?;
    let points = occupancy_points(&stays, midnight, now);
    Ok(chart(&points, lot.capacity, midnight, zone, t))
}

/// `(when, stays open then)` every quarter hour from `from` to `to`.
fn occupancy_points(
    stays: &[(DateTime<Utc>, Option<DateTime<Utc>>)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, usize)> {
    let mut points = Vec::new();
    let mut at = from;
    while at <= to {
        let open = stays
            .iter()
            .filter(|(entered, exited)| *entered <= at && exited.is_none_or(|e| e > at))
            .count();
        points.push((at, open));
        at += Duration::minutes(STEP_MINUTES);
    }
    points
}

fn chart(
    points: &[(DateTime<Utc>, usize)],
    capacity: u32,
    midnight: DateTime<Utc>,
    zone: chrono_tz::Tz,
    t: &Text,
) -> Markup {
    const W: f64 = 960.0;
    const H: f64 = 200.0;
    let top = points
        .iter()
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0)
        .max(capacity as usize)
        .max(1) as f64;
    let x = |at: DateTime<Utc>| (at - midnight).num_seconds() as f64 / 86_400.0 * W;
    let y = |n: usize| H - n as f64 / top * H;
    let line: String = points
        .iter()
        .map(|(at, n)| format!("{:.1},{:.1}", x(*at), y(*n)))
        .collect::<Vec<_>>()
        .join(" ");
    let last = points.last().map_or(0, |(_, n)| *n);
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (W) " " (H + 20.0) } role="img" aria-label=(t.occupancy_today) {
                line x1="0" x2=(W) y1=(y(capacity as usize)) y2=(y(capacity as usize)) class="capacity" {}
                @for hour in (0..=24).step_by(3) {
                    @let hx = f64::from(hour) / 24.0 * W;
                    line x1=(hx) x2=(hx) y1="0" y2=(H) class="grid" {}
                    text x=(hx) y=(H + 15.0) { (format!("{hour:02}:00")) }
                }
                polyline points=(line) class="occupancy" {}
            }
            figcaption { (t.chart_caption) " " (zone.name()) " · " (t.now) ": " (last) " / " (capacity) }
        }
    }
}

/// `POST /ui/console/lots/{lot}/gates/{gate}/open`: the API's manual open (audited, signed).
pub(crate) async fn open(
    State(state): State<AppState>,
    login: LoggedIn,
    who: Result<Accountable, ApiError>,
    Path((lot, gate)): Path<(String, String)>,
    CsrfForm(request): CsrfForm<OpenRequest>,
) -> Response {
    let who = match who {
        Ok(who) => who,
        Err(error) => return crate::ui::api_error_page(login.lang, error),
    };
    match manual_open(
        who,
        State(state),
        ApiPath((lot.clone(), gate)),
        ApiJson(request),
    )
    .await
    {
        Ok(_) => Redirect::to(&format!("/ui/console/lots/{lot}?done=opened")).into_response(),
        Err(error) => crate::ui::api_error_page(login.lang, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stay_counts_from_its_entry_until_its_exit() {
        let t0 = Utc::now();
        let at = |m: i64| t0 + Duration::minutes(m);
        let stays = [
            (at(10), Some(at(40))),
            (at(20), None),
            (at(-60), Some(at(5))),
        ];
        let points = occupancy_points(&stays, t0, at(45));
        let counts: Vec<usize> = points.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, vec![1, 1, 2, 1]);
    }
}
