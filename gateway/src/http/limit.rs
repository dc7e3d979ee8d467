//! Rate limits on public reads, per client address (GCRA, from `governor`): a client over its
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

use super::error::ApiError;

/// Requests allowed per client per second, and in a burst.
#[derive(Clone)]
pub struct PublicLimit {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl PublicLimit {
    /// `rate` requests a second per client address, with bursts of up to twice that.
    pub fn per_second(rate: u32) -> Self {
        let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
        }
    }

    /// Forgets clients that have been quiet long enough to be back at a full burst.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

/// The middleware: checks the client's budget before the handler runs.
pub async fn limit_public(
    State(limit): State<PublicLimit>,
    request: Request,
    next: Next,
) -> Response {
    // Behind a proxy every client shares the proxy's address; deployments put the limit there.
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    match limit.limiter.check_key(&client) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
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
    }
}
