//! Rate limits on public reads (GCRA, from `governor`): per client address, or per key for a
//! navigation app presenting its key, which gets [`APP_FACTOR`] times the rate. A client over its
//! rate gets `429 rate_limited` with `Retry-After`, and nobody else notices.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::auth::{Caller, bearer, caller};
use super::error::ApiError;

/// A navigation app's rate, as a multiple of an anonymous client's.
pub const APP_FACTOR: u32 = 20;

/// Requests allowed per client per second, and in a burst.
#[derive(Clone)]
pub struct PublicLimit {
    by_address: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Navigation apps, by their key's hash.
    by_app: Arc<DefaultKeyedRateLimiter<String>>,
}

fn quota(rate: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    Quota::per_second(rate).allow_burst(burst)
}

impl PublicLimit {
    /// `rate` requests a second per client address (and [`APP_FACTOR`] times that per
    /// navigation app), with bursts of up to twice that.
    pub fn per_second(rate: u32) -> Self {
        Self {
            by_address: Arc::new(RateLimiter::keyed(quota(rate))),
            by_app: Arc::new(RateLimiter::keyed(quota(rate.saturating_mul(APP_FACTOR)))),
        }
    }

    /// Forgets clients that have been quiet long enough to be back at a full burst.
    pub fn forget_idle(&self) {
        self.by_address.retain_recent();
        self.by_app.retain_recent();
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
pub async fn limit_public(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // A navigation app's key earns its own, larger budget; any other key (or a bad one) counts
    // as no key: public reads need none.
    let app = match caller(&parts, &state).await {
        Ok(Some(Caller::NavigationApp)) => bearer(&parts).map(crate::registry::password_hash),
        _ => None,
    };
    let request = Request::from_parts(parts, body);
    let limit = &state.public_limit;
    let checked = match app {
        Some(app) => limit.by_app.check_key(&app),
        None => limit.by_address.check_key(&address(&request)),
    };
    match checked {
        Ok(()) => next.run(request).await,
        Err(not_until) => too_many(&not_until),
    }
}

/// The middleware of the driver endpoints (enrolment is anonymous): per client address.
pub async fn limit_drivers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match state.driver_limit.by_address.check_key(&address(&request)) {
        Ok(()) => next.run(request).await,
        Err(not_until) => too_many(&not_until),
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
