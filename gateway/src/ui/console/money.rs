//! Money: today's sessions, fees, collected and outstanding per lot (as they stand, before the
//! day is settled), the arrears (overdue invoices, suspended drivers), and the settled days with
//! their CSV, which is the API's own report.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, NaiveDate, Utc};
use maud::html;
use parkflow_billing::settlement::Settlement;
use serde::Deserialize;

use super::Reader;
use crate::http::AppState;
use crate::http::auth::Staff;
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::reports::money;

/// Settled days shown (the CSV takes any range).
const DAYS_SHOWN: i64 = 30;

/// `GET /ui/console/money`
pub(crate) async fn page(State(state): State<AppState>, reader: Reader) -> Response {
    let lang = reader.login.lang;
    let t = reader.text();
    let now = Utc::now();
    let today = now.date_naive();
    let registry = state.registry.snapshot();
    // Each lot's own today, in its time zone.
    let local_today = |lot: &str| {
        parkflow_protocol::LotId::parse(lot)
            .ok()
            .and_then(|id| registry.lot_by_id(&id).map(|l| l.time_zone.clone()))
            .and_then(|zone| zone.parse::<chrono_tz::Tz>().ok())
            .map_or(today, |zone| now.with_timezone(&zone).date_naive())
            .to_string()
    };
    let figures = async {
        let live = parkflow_billing::settlement::live(
            &state.db,
            today - Duration::days(1),
            today + Duration::days(1),
        )
        .await?;
        let arrears = parkflow_billing::arrears::by_lot(&state.db, now).await?;
        let settled = parkflow_billing::settlement::stored(
            &state.db,
            None,
            today - Duration::days(DAYS_SHOWN),
            today,
        )
        .await?;
        Ok::<_, parkflow_db::StoreError>((live, arrears, settled))
    };
    let (live, arrears, settled) = match figures.await {
        Ok(figures) => figures,
        Err(error) => return crate::ui::api_error_page(lang, error.into()),
    };
    let sees = |operator: &str| reader.scope.sees(operator);
    let today_rows: Vec<&Settlement> = live
        .iter()
        .filter(|s| sees(&s.operator_id) && s.day == local_today(&s.lot_id))
        .collect();
    let arrears: Vec<_> = arrears.iter().filter(|a| sees(&a.operator_id)).collect();
    let settled: Vec<&Settlement> = settled.iter().filter(|s| sees(&s.operator_id)).collect();
    let csv = format!(
        "/ui/console/money/settlements.csv?from={}&to={today}",
        today - Duration::days(DAYS_SHOWN)
    );
    reader.page(
        t.money_title,
        "/ui/console/money",
        html! {
            h2 { (t.today) }
            (settlement_table(t, &today_rows))
            h2 { (t.arrears) }
            @if arrears.is_empty() { p.note { (t.none) } } @else {
                table.arrears {
                    thead { tr { th { (t.lot) } th.num { (t.overdue_invoices) } th.num { (t.amount) } th.num { (t.suspended_drivers) } } }
                    tbody {
                        @for a in &arrears {
                            tr {
                                td { code { (a.lot_id) } }
                                td.num { (a.invoices) }
                                td.num { (money(a.amount_minor, &a.currency)) " " (a.currency) }
                                td.num { (a.suspended_drivers) }
                            }
                        }
                    }
                }
            }
            h2 { (t.settled_days) }
            p { a.button href=(csv) download { (t.download_csv) } }
            (settlement_table(t, &settled))
        },
    )
}

fn settlement_table(t: &crate::ui::text::Text, rows: &[&Settlement]) -> maud::Markup {
    html! {
        @if rows.is_empty() { p.note { (t.none) } } @else {
            table.settlements {
                thead { tr {
                    th { (t.lot) } th { (t.day) } th.num { (t.sessions) } th.num { (t.fees) }
                    th.num { (t.collected) } th.num { (t.outstanding) } th.num { (t.refunded) }
                } }
                tbody {
                    @for s in rows {
                        tr data-lot=(s.lot_id) {
                            td { code { (s.lot_id) } }
                            td { (s.day) }
                            td.num { (s.sessions) }
                            td.num { (money(s.gross_minor, &s.currency)) " " (s.currency) }
                            td.num { (money(s.collected_minor, &s.currency)) }
                            td.num { (money(s.outstanding_minor, &s.currency)) }
                            td.num { (money(s.refunded_minor, &s.currency)) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Range {
    from: NaiveDate,
    to: NaiveDate,
}

/// `GET /ui/console/money/settlements.csv`: the API's report, for the logged-in page.
pub(crate) async fn settlements_csv(
    State(state): State<AppState>,
    staff: Result<Staff, ApiError>,
    Query(range): Query<Range>,
) -> Response {
    let staff = match staff {
        Ok(staff) => staff,
        Err(error) => return error.into_response(),
    };
    let query: crate::http::reports::SettlementReport =
        match serde_json::from_value(serde_json::json!({ "from": range.from, "to": range.to })) {
            Ok(query) => query,
            Err(error) => return crate::http::error::rejection(error).into_response(),
        };
    crate::http::reports::settlements(staff, State(state), ApiQuery(query))
        .await
        .into_response()
}
