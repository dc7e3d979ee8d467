//! The HTTP API (SPEC §5), served by axum: one router, one state, one error shape.

pub(crate) mod audit;
pub(crate) mod auth;
mod broker;

pub(crate) use broker::BrokerHook;
pub(crate) mod availability;
pub(crate) mod billing;
pub(crate) mod claims;
pub(crate) mod devices;
pub(crate) mod drivers;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod limit;
pub(crate) mod lots;
pub(crate) mod openapi;
pub(crate) mod operators;
pub(crate) mod ops;
pub(crate) mod passes;
pub(crate) mod payments;
mod public_reads;
pub(crate) mod registry;
pub(crate) mod reports;
pub(crate) mod sessions;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::{Extension, Router};
use tokio::sync::watch;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use parkflow_billing::payments::PaymentsApi;

use crate::availability::AvailabilityHandle;
use crate::gate::GateHandle;
use crate::metrics::Metrics;
use crate::occupancy::OccupancyHandle;
use crate::registry::RegistryHandle;
use crate::store::Db;

/// Request bodies larger than this are refused.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Every request answers within this.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler may use: shared, so that the clones every request makes (one per
/// `State` extractor and state-taking middleware) are one reference count each, not one per
/// handle it holds.
#[derive(Clone)]
pub(crate) struct AppState(Arc<AppStateInner>);

impl AppState {
    pub(crate) fn new(inner: AppStateInner) -> Self {
        Self(Arc::new(inner))
    }
}

#[cfg(test)]
impl AppState {
    /// The handles, to change between requests (no request holds a clone then).
    pub(crate) fn parts_mut(&mut self) -> &mut AppStateInner {
        Arc::get_mut(&mut self.0).expect("no request holds the state while a test changes it")
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// The handles in [`AppState`].
pub(crate) struct AppStateInner {
    pub db: Db,
    pub registry: RegistryHandle,
    pub metrics: Arc<Metrics>,
    pub gates: GateHandle,
    pub payments: Arc<dyn PaymentsApi>,
    /// Barrier calls to off-the-shelf cameras, and each lane's last one.
    pub relay: crate::anpr::barrier::BarrierRelay,
    /// Disconnects a revoked or rotated device from a broker that checks logins only at CONNECT.
    pub kicker: Option<Arc<crate::mqtt::kick::Kicker>>,
    /// Who checks a driver's proof that a plate is theirs.
    pub verifiers: parkflow_billing::claims::Verifiers,
    pub mqtt_connected: watch::Receiver<bool>,
    /// The hash of the platform admin's key (`registry::password_hash`), made once at start
    /// and compared with the hash of the key each request presents.
    pub admin_key_hash: Option<String>,
    pub availability: AvailabilityHandle,
    pub occupancy: OccupancyHandle,
    pub public_limit: limit::PublicLimit,
    /// The driver endpoints' budget, per client address.
    pub driver_limit: limit::AddressLimit,
    /// Cancelled at shutdown: long-lived responses (the availability stream) end with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The broker hooks' key and the platform's broker login; without it they are not served.
    pub broker_hook: Option<Arc<broker::BrokerHook>>,
    /// Whose `X-Forwarded-For` gives the client's address.
    pub trusted_proxies: limit::TrustedProxies,
    /// Open availability streams.
    pub streams: limit::StreamLimit,
    /// The broker's permission lists, which registration, rotation and revocation change at once.
    pub broker_acl: Option<Arc<crate::mqtt::dynsec::Dynsec>>,
    /// On a gateway node: the lots it runs, and the other nodes.
    pub node: Option<(Arc<crate::cluster::Ownership>, crate::cluster::Peers)>,
}

impl AppStateInner {
    /// Whether another gateway node runs `lot` (this one holds only its memory of it).
    pub(crate) fn runs_elsewhere(&self, lot: &crate::registry::Lot) -> bool {
        self.node
            .as_ref()
            .is_some_and(|(ownership, _)| !ownership.holds(lot.id.as_str()))
    }
}

/// Drivers' endpoints and paying a held exit: rate-limited per client address (enrolment and
/// payment links need no staff key).
fn driver_routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(drivers::enrol))
        .routes(routes!(drivers::me, drivers::update_me))
        .routes(routes!(drivers::add_plate))
        .routes(routes!(drivers::remove_plate))
        .routes(routes!(drivers::my_claims))
        .routes(routes!(drivers::prove_claim))
        .routes(routes!(drivers::my_sessions))
        .routes(routes!(drivers::my_invoices))
        .routes(routes!(drivers::my_keys, drivers::issue_key))
        .routes(routes!(drivers::revoke_key))
        .routes(routes!(drivers::pay_invoice))
        .routes(routes!(payments::pay_exit, crate::ui::pay::page_or_due))
        .route("/ui/pay/{id}", axum::routing::post(crate::ui::pay::submit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::limit_drivers,
        ))
}

/// SPEC §5's public reads: no key, rate-limited per client. A lot's availability and `near` from
/// an anonymous client are answered before routing (`public_reads`), without these layers.
fn public_routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(availability::near))
        .routes(routes!(availability::one))
        .routes(routes!(availability::stream))
        .routes(routes!(availability::fiware))
        .routes(routes!(availability::datex2))
        .routes(routes!(lots::tariff))
        .routes(routes!(lots::quote))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::limit_public,
        ))
}

/// The city view (public counts, as the availability API shows them) and the pages' assets:
/// compressed (the city's map is a few hundred kilobytes of SVG before gzip), rate-limited like
/// the public API. (Not the streams: a gzip encoder would hold their events back.)
fn ui_routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/ui/", axum::routing::get(crate::ui::city::page))
        .route(
            "/ui",
            axum::routing::get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
        .route(
            "/ui/assets/{file}",
            axum::routing::get(crate::ui::assets::serve),
        )
        .layer(tower_http::compression::CompressionLayer::new())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::limit_public,
        ))
}

/// The pages people log in to: the operator console and the driver portal. Each request's
/// cookie is resolved to the key that logged in (`ui::login::web_login`); logging in and
/// enrolling are rate-limited per client address, as the drivers' endpoints are.
fn web_routes(state: &AppState) -> OpenApiRouter<AppState> {
    use crate::ui::{console, driver, login};
    use axum::routing::{get, post};
    let open = OpenApiRouter::new()
        .route("/ui/login", get(login::form).post(login::submit))
        .route(
            "/ui/driver/enrol",
            get(driver::enrol_form).post(driver::enrol),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::limit_drivers,
        ));
    OpenApiRouter::new()
        .route("/ui/logout", post(login::logout))
        .route("/ui/console", get(console::home))
        .route("/ui/console/lots/{lot}", get(console::lot))
        .route(
            "/ui/console/lots/{lot}/gates/{gate}/open",
            post(console::open_gate),
        )
        .route("/ui/console/review", get(console::review))
        .route("/ui/console/review/{id}", post(console::resolve))
        .route(
            "/ui/console/review/{id}/pictures/{n}",
            get(console::review_picture),
        )
        .route("/ui/console/devices", get(console::devices))
        .route(
            "/ui/console/devices/{id}/rotate",
            post(console::rotate_device),
        )
        .route(
            "/ui/console/devices/{id}/revoke",
            post(console::revoke_device),
        )
        .route("/ui/console/money", get(console::money))
        .route(
            "/ui/console/money/settlements.csv",
            get(console::settlements_csv),
        )
        .route("/ui/console/health", get(console::health))
        .route("/ui/driver", get(driver::home))
        .route("/ui/driver/plates", post(driver::claim))
        .route("/ui/driver/mandate", post(driver::mandate))
        .route("/ui/driver/invoices/{id}/pay", post(driver::pay))
        .merge(open)
        .layer(tower_http::compression::CompressionLayer::new())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::ui::login::web_login,
        ))
}

/// Every route, each with its OpenAPI path: a handler joins the router and the document together.
fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(public_routes(state))
        .merge(ui_routes(state))
        .merge(web_routes(state))
        .merge(driver_routes(state))
        .routes(routes!(openapi::document))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        // Operators and their lots.
        .routes(routes!(operators::operators, operators::create_operator))
        .routes(routes!(operators::list, operators::issue))
        .routes(routes!(operators::revoke))
        .routes(routes!(registry::lots, registry::create_lot))
        .routes(routes!(registry::update_lot))
        .routes(routes!(registry::add_gate))
        .routes(routes!(registry::remove_gate))
        .routes(routes!(availability::bays, registry::add_bays))
        .routes(routes!(registry::tariffs, registry::add_tariff))
        .routes(routes!(passes::list_passes, passes::add_pass))
        .routes(routes!(passes::revoke_pass))
        .routes(routes!(passes::list_blocks, passes::add_block))
        .routes(routes!(passes::remove_block))
        .routes(routes!(availability::recount))
        .routes(routes!(devices::list, devices::register))
        .routes(routes!(devices::rotate))
        .routes(routes!(devices::revoke))
        .routes(routes!(devices::lanes))
        .routes(routes!(audit::manual_open))
        // Sessions, review and audit.
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::get))
        .routes(routes!(sessions::review))
        .routes(routes!(sessions::review_picture))
        .routes(routes!(audit::resolve))
        .routes(routes!(audit::entries))
        .routes(routes!(claims::queue))
        .routes(routes!(claims::decide))
        // Money.
        .routes(routes!(billing::list))
        .routes(routes!(billing::run))
        .routes(routes!(billing::reconciliation))
        .routes(routes!(billing::refund))
        .routes(routes!(billing::write_off))
        .routes(routes!(reports::settlements))
        .routes(routes!(reports::sessions))
        // Brokers asking who may connect and what they may do.
        .routes(routes!(broker::authenticate))
        .routes(routes!(broker::authorize))
}

/// `/metrics` alone, without a key: for `--metrics-listen`, a private address Prometheus scrapes.
pub(crate) fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ops::metrics_text(&metrics) }
        }),
    )
}

/// The whole API.
pub(crate) fn router(state: AppState) -> Router {
    let (routes, document) = routes(&state).split_for_parts();
    let document = openapi::Document(match openapi::complete(document).to_json() {
        Ok(json) => json.into(),
        // Serializing a document of plain strings and maps cannot fail; answer 500s if it did.
        Err(error) => {
            tracing::error!(%error, "openapi document not rendered");
            bytes::Bytes::new()
        }
    });
    // ANPR cameras' events carry pictures: their own route, with its own body limit.
    let anpr = Router::new()
        .route(
            "/v1/anpr/{device}",
            axum::routing::post(crate::anpr::intake::intake),
        )
        .with_state(state.clone())
        // The handler sees a body over the limit (and counts it), rather than a layer refusing it.
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::anpr::intake::MAX_EVENT_BYTES,
        ))
        // Events are read whole before they are authenticated: at most this many at once.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            crate::anpr::intake::MAX_EVENTS_AT_ONCE,
        ));
    let routed = routes
        .fallback(|| async { error::ApiError::NotFound("route") })
        .with_state(state.clone())
        .layer(Extension(document))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .merge(anpr)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ));
    Router::new()
        .fallback_service(public_reads::PublicReads::new(state, routed))
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
mod tests;
