//! The HTTP API (SPEC §5), served by axum: one router, one state, one error shape.

pub mod audit;
pub mod auth;
pub mod availability;
pub mod billing;
pub mod devices;
pub mod drivers;
pub mod error;
pub mod extract;
pub mod limit;
pub mod lots;
pub mod operators;
pub mod ops;
pub mod payments;
pub mod registry;
pub mod reports;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::sync::watch;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use parkflow_billing::payments::PaymentsApi;

use crate::availability::AvailabilityHandle;
use crate::gate::GateHandle;
use crate::metrics::Metrics;
use crate::occupancy::OccupancyHandle;
use crate::registry::RegistryHandle;
use crate::store::Db;

/// Request bodies larger than this are refused.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Every request answers within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub registry: RegistryHandle,
    pub metrics: Arc<Metrics>,
    pub gates: GateHandle,
    pub payments: Arc<dyn PaymentsApi>,
    pub mqtt_connected: watch::Receiver<bool>,
    pub admin_key: Option<Arc<str>>,
    pub availability: AvailabilityHandle,
    pub occupancy: OccupancyHandle,
    pub public_limit: limit::PublicLimit,
    /// The driver endpoints' budget, per client address.
    pub driver_limit: limit::PublicLimit,
    /// Cancelled at shutdown: long-lived responses (the availability stream) end with it.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Drivers' endpoints and paying a held exit: rate-limited per client address (enrolment and
/// payment links need no staff key).
fn driver_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/drivers", post(drivers::enrol))
        .route("/v1/me", get(drivers::me))
        .route("/v1/me/plates", post(drivers::add_plate))
        .route(
            "/v1/me/plates/{plate}",
            axum::routing::delete(drivers::remove_plate),
        )
        .route("/v1/me/sessions", get(drivers::my_sessions))
        .route("/v1/me/invoices", get(drivers::my_invoices))
        .route("/v1/me/invoices/{id}/pay", post(drivers::pay_invoice))
        .route("/v1/sessions/{id}/pay", post(payments::pay_exit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::limit_drivers,
        ))
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    // SPEC §5's public reads: no key, rate-limited per client.
    let public = Router::new()
        .route("/v1/lots", get(availability::near))
        .route("/v1/lots/{lot}/availability", get(availability::one))
        .route("/v1/availability/stream", get(availability::stream))
        .route("/v1/feeds/fiware", get(availability::fiware))
        .route("/v1/feeds/datex2", get(availability::datex2))
        .route("/v1/lots/{lot}/tariff", get(lots::tariff))
        .route("/v1/lots/{lot}/quote", get(lots::quote))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::limit_public,
        ));
    Router::new()
        .merge(public)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/lots/{lot}/recount", post(availability::recount))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{id}", get(sessions::get))
        .route("/v1/review", get(sessions::review))
        .route("/v1/settlements", get(billing::list))
        .route("/v1/settlements/run", post(billing::run))
        .route("/v1/reconciliation", get(billing::reconciliation))
        .route("/v1/charges/{id}/refunds", post(billing::refund))
        .route("/v1/invoices/{id}/write-off", post(billing::write_off))
        .route(
            "/v1/operators",
            get(operators::operators).post(operators::create_operator),
        )
        .route("/v1/keys", get(operators::list).post(operators::issue))
        .route(
            "/v1/operators/{operator}/lots",
            get(registry::lots).post(registry::create_lot),
        )
        .route("/v1/lots/{lot}/gates", post(registry::add_gate))
        .route("/v1/lots/{lot}/gates/{gate}/open", post(audit::manual_open))
        .route("/v1/audit", get(audit::entries))
        .route("/v1/review/{id}/resolve", post(audit::resolve))
        .route("/v1/reports/settlements.csv", get(reports::settlements))
        .route("/v1/reports/sessions.csv", get(reports::sessions))
        .route("/v1/lots/{lot}/bays", get(availability::bays).post(registry::add_bays))
        .route("/v1/lots/{lot}/tariffs", post(registry::add_tariff))
        .route("/v1/lots/{lot}/passes", post(registry::add_pass))
        .route("/v1/lots/{lot}/blocks", post(registry::add_block))
        .route(
            "/v1/lots/{lot}/blocks/{plate}",
            axum::routing::delete(registry::remove_block),
        )
        .route(
            "/v1/lots/{lot}/devices",
            get(devices::list).post(devices::register),
        )
        .route("/v1/devices/{id}/rotate", post(devices::rotate))
        .route("/v1/devices/{id}", axum::routing::delete(devices::revoke))
        .route("/v1/keys/{id}", axum::routing::delete(operators::revoke))
        .merge(driver_routes(&state))
        .fallback(|| async { error::ApiError::NotFound("route") })
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            // The path without its query string, and without the plates some paths carry.
            tracing::debug_span!("request", method = %request.method(), path = %loggable_path(request.uri().path()))
        }))
}

/// `path` as a log may show it: the segment after `plates` or `blocks` (a plate) replaced.
fn loggable_path(path: &str) -> String {
    let mut out = Vec::new();
    let mut plate_next = false;
    for segment in path.split('/') {
        out.push(if plate_next { "{plate}" } else { segment });
        plate_next = matches!(segment, "plates" | "blocks");
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    #[test]
    fn paths_in_logs_never_carry_a_plate() {
        assert_eq!(
            loggable_path("/v1/lots/lot-1/blocks/%E6%B5%99A12345"),
            "/v1/lots/lot-1/blocks/{plate}"
        );
        assert_eq!(
            loggable_path("/v1/me/plates/AB123"),
            "/v1/me/plates/{plate}"
        );
        assert_eq!(loggable_path("/v1/me/plates"), "/v1/me/plates");
        assert_eq!(
            loggable_path("/v1/lots/lot-1/availability"),
            "/v1/lots/lot-1/availability"
        );
    }
}
