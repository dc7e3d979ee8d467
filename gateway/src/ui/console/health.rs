//! The platform's health, for the platform admin: the barrier decision's p50 and p99 (from the
//! decision histogram), messages refused by reason, the MQTT link, the database, and what the
//! workers have yet to do. Read from the same metrics Prometheus scrapes.

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::Reader;
use crate::http::AppState;
use crate::http::auth::{Admin, Scope};
use crate::http::error::ApiError;
use crate::ui::login::LoggedIn;

/// `GET /ui/console/health`
pub(crate) async fn page(
    State(state): State<AppState>,
    login: LoggedIn,
    admin: Result<Admin, ApiError>,
) -> Response {
    let lang = login.lang;
    if let Err(error) = admin {
        return crate::ui::api_error_page(lang, error);
    }
    let reader = Reader {
        login,
        scope: Scope::All,
    };
    let t = reader.text();
    let exposition = state.metrics.encode();
    let buckets = histogram(&exposition, "parkflow_decision_seconds");
    let decisions = buckets.last().map_or(0.0, |(_, n)| *n);
    let p50 = quantile(&buckets, 0.5);
    let p99 = quantile(&buckets, 0.99);
    let rejected = labelled(&exposition, "parkflow_events_rejected_total", "reason");
    let mqtt = *state.mqtt_connected.borrow();
    let database = tokio::time::timeout(std::time::Duration::from_millis(500), state.db.ping())
        .await
        .is_ok_and(|ping| ping.is_ok());
    let writes_failing = state.metrics.store_writes_failing.get() != 0;
    let backlog = crate::store::sessions::backlog(&state.db).await.ok();
    let ms = |s: Option<f64>| s.map_or_else(|| "—".to_owned(), |s| format!("{:.2} ms", s * 1000.0));
    let up = |ok: bool| if ok { t.ok } else { t.down };
    reader.page(
        t.health_title,
        "/ui/console/health",
        html! {
            div.totals {
                div { span.figure #p50 { (ms(p50)) } span.label { (t.decision_p50) } }
                div { span.figure #p99 { (ms(p99)) } span.label { (t.decision_p99) } }
                div { span.figure { (decisions) } span.label { (t.decisions) } }
            }
            h2 { (t.links) }
            dl {
                dt { "MQTT" } dd class=(if mqtt { "" } else { "error" }) { (up(mqtt)) }
                dt { (t.database) } dd class=(if database { "" } else { "error" }) { (up(database)) }
                dt { (t.writes) } dd class=(if writes_failing { "error" } else { "" }) { (up(!writes_failing)) }
            }
            h2 { (t.backlog) }
            @if let Some(backlog) = backlog {
                dl {
                    dt { (t.to_charge) } dd { (backlog.to_charge) }
                    dt { (t.dead_letters) } dd { (backlog.dead_letters) }
                    dt { (t.open_reviews) } dd { (backlog.open_reviews) }
                }
            } @else { p.error { (t.down) } }
            h2 { (t.rejected) }
            @if rejected.is_empty() { p.note { (t.none) } } @else {
                table {
                    thead { tr { th { (t.reason) } th.num { (t.count) } } }
                    tbody { @for (reason, n) in &rejected { tr { td { (reason) } td.num { (n) } } } }
                }
            }
        },
    )
}

/// A histogram's cumulative buckets, `(upper bound, count)`, in order (`+Inf` last).
fn histogram(exposition: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = exposition
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = line.rsplit(' ').next()?.parse().ok()?;
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile from cumulative buckets, linear within its bucket (as Prometheus'
/// `histogram_quantile`); `None` without observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let within = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, count);
    }
    None
}

/// A counter family's values by one label, largest first.
fn labelled(exposition: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{");
    let key = format!("{label}=\"");
    let mut values: Vec<(String, f64)> = exposition
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| {
            let value = line.split(&key).nth(1)?.split('"').next()?.to_owned();
            let count = line.rsplit(' ').next()?.parse().ok()?;
            Some((value, count))
        })
        .collect();
    values.sort_by(|a, b| b.1.total_cmp(&a.1));
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets_as_prometheus_computes_them() {
        let text = "parkflow_decision_seconds_bucket{le=\"0.001\"} 50\n\
                    parkflow_decision_seconds_bucket{le=\"0.002\"} 90\n\
                    parkflow_decision_seconds_bucket{le=\"0.004\"} 100\n\
                    parkflow_decision_seconds_bucket{le=\"+Inf\"} 100\n";
        let buckets = histogram(text, "parkflow_decision_seconds");
        assert_eq!(buckets.len(), 4);
        assert!((quantile(&buckets, 0.5).unwrap() - 0.001).abs() < 1e-12);
        assert!((quantile(&buckets, 0.99).unwrap() - 0.0038).abs() < 1e-9);
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
        let rejected = labelled(
            "parkflow_events_rejected_total{reason=\"bad_signature\"} 3\nparkflow_events_rejected_total{reason=\"unknown_device\"} 7\n",
            "parkflow_events_rejected_total",
            "reason",
        );
        assert_eq!(rejected[0], ("unknown_device".to_owned(), 7.0));
    }
}
