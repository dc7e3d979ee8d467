//! Rate limits (GCRA, from `governor`). Public reads: per client address, or per key for a
//! navigation app presenting its key, which gets [`APP_FACTOR`] times the rate. Driver endpoints:
//! per client address. A client over its rate gets `429 rate_limited` with `Retry-After`, and
//! nobody else notices.
//!
//! A key on a public read is looked up only after its request has spent the address's budget,
//! so made-up keys cannot buy database lookups; a key found to be a navigation app's is
//! remembered for [`APP_RECHECK`] and spends its own budget from then on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::auth::{Caller, bearer, caller};
use super::error::ApiError;

/// A navigation app's rate, as a multiple of an anonymous client's.
pub(crate) const APP_FACTOR: u32 = 20;
/// How long a key stays known as a navigation app's before it is looked up again (a revoked
/// key keeps the app's larger budget at most this long; public reads need no key anyway).
pub(crate) const APP_RECHECK: Duration = Duration::from_secs(60);

fn quota(rate: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    Quota::per_second(rate).allow_burst(burst)
}

/// Requests allowed per client address per second, and in a burst.
#[derive(Clone)]
pub(crate) struct AddressLimit(Arc<DefaultKeyedRateLimiter<IpAddr>>);

impl AddressLimit {
    /// `rate` requests a second per client address, with bursts of up to twice that.
    pub(crate) fn per_second(rate: u32) -> Self {
        Self(Arc::new(RateLimiter::keyed(quota(rate))))
    }

    /// The `429` answer when the request's address is over its rate.
    fn refusal(&self, request: &Request) -> Option<Response> {
        self.0
            .check_key(&address(request))
            .err()
            .map(|not_until| too_many(&not_until))
    }

    /// Forgets clients that have been quiet long enough to be back at a full burst.
    pub(crate) fn forget_idle(&self) {
        self.0.retain_recent();
    }
}

/// The public reads' limits: per address, and per navigation app.
#[derive(Clone)]
pub(crate) struct PublicLimit {
    by_address: AddressLimit,
    /// Navigation apps, by their key's hash.
    by_app: Arc<DefaultKeyedRateLimiter<String>>,
    /// Keys known to be navigation apps', by hash, with when they were looked up.
    apps: Arc<DashMap<String, Instant>>,
}

impl PublicLimit {
    /// `rate` requests a second per client address and [`APP_FACTOR`] times that per
    /// navigation app, with bursts of up to twice that.
    pub(crate) fn per_second(rate: u32) -> Self {
        Self {
            by_address: AddressLimit::per_second(rate),
            by_app: Arc::new(RateLimiter::keyed(quota(rate.saturating_mul(APP_FACTOR)))),
            apps: Arc::new(DashMap::new()),
        }
    }

    fn known_app(&self, hash: &str) -> bool {
        self.apps
            .get(hash)
            .is_some_and(|seen| seen.elapsed() < APP_RECHECK)
    }

    /// Forgets clients that have been quiet long enough to be back at a full burst, and apps'
    /// keys due to be looked up again.
    pub(crate) fn forget_idle(&self) {
        self.by_address.forget_idle();
        self.by_app.retain_recent();
        self.apps.retain(|_, seen| seen.elapsed() < APP_RECHECK);
    }
}

/// The client's address (behind a proxy every client shares the proxy's address; deployments
/// put the limit there).
fn address(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

/// The middleware of public reads: checks the client's budget before the handler runs.
pub(crate) async fn limit_public(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = &state.public_limit;
    let (parts, body) = request.into_parts();
    let key = bearer(&parts).map(crate::registry::password_hash);
    let request = Request::from_parts(parts, body);
    if let Some(app) = key.as_deref().filter(|hash| limit.known_app(hash)) {
        return match limit.by_app.check_key(&app.to_owned()) {
            Ok(()) => next.run(request).await,
            Err(not_until) => too_many(&not_until),
        };
    }
    // Anonymous, or a key not known yet: the address pays, then the key is looked up.
    if let Some(refusal) = limit.by_address.refusal(&request) {
        return refusal;
    }
    if let Some(hash) = key {
        let (parts, body) = request.into_parts();
        // Any other key (or a bad one) counts as no key: public reads need none.
        if let Ok(Some(Caller::NavigationApp)) = caller(&parts, &state).await {
            limit.apps.insert(hash, Instant::now());
        }
        return next.run(Request::from_parts(parts, body)).await;
    }
    next.run(request).await
}

/// The middleware of the driver endpoints (enrolment is anonymous): per client address.
pub(crate) async fn limit_drivers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match state.driver_limit.refusal(&request) {
        None => next.run(request).await,
        Some(refusal) => refusal,
    }
}

/// `429 rate_limited` with `Retry-After`.
fn too_many(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Response {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    let mut response = ApiError::Status {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "rate_limited",
        message: "too many requests from this client; slow down".to_owned(),
    }
    .into_response();
    let seconds = (wait.as_secs_f64().ceil() as u64).max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
