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

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

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

    /// The `429` answer when the client at `address` is over its rate.
    fn refusal(&self, address: IpAddr) -> Option<Response> {
        self.0
            .check_key(&address)
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

    /// The `429` answer when an anonymous client at `address` is over its rate (a request
    /// presenting a key goes through [`limit_public`]).
    pub(crate) fn refuse_anonymous(&self, address: IpAddr) -> Option<Response> {
        self.by_address.refusal(address)
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

/// The proxies whose `X-Forwarded-For` is believed (`--trusted-proxy CIDR`): TLS usually ends
/// at a reverse proxy, and behind it every client would otherwise share the proxy's address.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        Self(nets.into())
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the last
    /// address in `X-Forwarded-For` that is not one of ours (addresses to its left are the
    /// client's to claim, so they are not believed).
    pub(crate) fn client(&self, parts: &Parts) -> IpAddr {
        self.client_of(&parts.extensions, &parts.headers)
    }

    /// [`Self::client`], from a request's extensions and headers.
    pub(crate) fn client_of(&self, extensions: &Extensions, headers: &HeaderMap) -> IpAddr {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(address) if self.trusts(address) => client = address,
                Ok(address) => return address,
                // A hop we cannot read: believe nothing further left.
                Err(_) => return client,
            }
        }
        client
    }
}

/// The client's address, as the rate limits see it.
pub(crate) struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(state.trusted_proxies.client(parts)))
    }
}

/// Open availability streams, per client address and in all (`--max-streams…`): each holds a
/// connection and a task, so one address cannot take them all.
#[derive(Clone)]
pub(crate) struct StreamLimit {
    per_address: u32,
    total: u32,
    open: Arc<std::sync::Mutex<(std::collections::HashMap<IpAddr, u32>, u32)>>,
}

/// One open stream; dropping it frees its place.
pub(crate) struct StreamSlot {
    limit: StreamLimit,
    address: IpAddr,
}

impl StreamLimit {
    pub(crate) fn new(per_address: u32, total: u32) -> Self {
        Self {
            per_address,
            total,
            open: Arc::default(),
        }
    }

    /// A place for a stream of the client at `address`, if it and the platform have one left.
    pub(crate) fn admit(&self, address: IpAddr) -> Option<StreamSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (by_address, total) = &mut *open;
        let mine = by_address.entry(address).or_insert(0);
        if *mine >= self.per_address || *total >= self.total {
            if *mine == 0 {
                by_address.remove(&address);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(StreamSlot {
            limit: self.clone(),
            address,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (by_address, total) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(mine) = by_address.get_mut(&self.address) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                by_address.remove(&self.address);
            }
        }
    }
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
    let address = state.trusted_proxies.client(&parts);
    let request = Request::from_parts(parts, body);
    if let Some(app) = key.as_deref().filter(|hash| limit.known_app(hash)) {
        return match limit.by_app.check_key(&app.to_owned()) {
            Ok(()) => next.run(request).await,
            Err(not_until) => too_many(&not_until),
        };
    }
    // Anonymous, or a key not known yet: the address pays, then the key is looked up.
    if let Some(refusal) = limit.by_address.refusal(address) {
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
    let address = state
        .trusted_proxies
        .client_of(request.extensions(), request.headers());
    match state.driver_limit.refusal(address) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: [u8; 4], forwarded: Option<&str>) -> Parts {
        let mut request = axum::http::Request::builder();
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from((peer, 1_000))));
        parts
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// A client cannot pick its own address: only a trusted proxy's header is read, and only
    /// the hop the proxy itself saw.
    #[test]
    fn the_client_address_is_believed_from_trusted_proxies_only() {
        let proxies = TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert_eq!(
            proxies.client(&parts([192, 0, 2, 1], None)),
            ip("192.0.2.1")
        );
        assert_eq!(
            proxies.client(&parts([192, 0, 2, 1], Some("198.51.100.9"))),
            ip("192.0.2.1"),
            "not a proxy: its header is ignored"
        );
        assert_eq!(
            proxies.client(&parts([10, 0, 0, 5], Some("198.51.100.9"))),
            ip("198.51.100.9")
        );
        assert_eq!(
            proxies.client(&parts(
                [10, 0, 0, 5],
                Some("203.0.113.66, 198.51.100.9, 10.1.1.1")
            )),
            ip("198.51.100.9"),
            "the client's own claim (leftmost) is not believed"
        );
        assert_eq!(
            proxies.client(&parts([10, 0, 0, 5], Some("garbage"))),
            ip("10.0.0.5")
        );
        assert_eq!(
            TrustedProxies::default().client(&parts([10, 0, 0, 5], Some("198.51.100.9"))),
            ip("10.0.0.5"),
            "no proxy trusted by default"
        );
    }

    #[test]
    fn a_stream_slot_is_freed_when_its_stream_ends() {
        let limit = StreamLimit::new(1, 2);
        let a = ip("192.0.2.1");
        let slot = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
        drop(slot);
        assert!(limit.admit(a).is_some());
    }
}
