//! The two reads navigation apps poll, answered before routing: `GET /v1/lots/{lot}/availability`
//! and `GET /v1/lots?near=…` from an anonymous client. They are answered from memory (the board's
//! rendered bodies), so routing through some hundred routes, per-route middleware and a timeout
//! meant for database waits cost several times what the answer itself does (BENCHMARKS, "api").
//!
//! The answer is the routed handler's own: the same body functions ([`availability::lot_body`],
//! [`availability::near_body`]), the same per-address rate limit, the same error shape. Whatever
//! this does not recognise exactly (another method or path, a key presented, a body, a query the
//! router's extractor would refuse, a percent-encoded lot) goes to the router, which documents the
//! routes and does the rest. A layer added to `public_routes` does not reach these two answers:
//! add it here too.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{Query, Request};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use futures::future::Either;
use tower::Service;

use super::AppState;
use super::availability::{self, NearQuery};
use super::error::ApiError;

/// The router, with the public reads answered in front of it.
#[derive(Clone)]
pub(crate) struct PublicReads {
    state: AppState,
    router: Router,
}

impl PublicReads {
    pub(crate) fn new(state: AppState, router: Router) -> Self {
        Self { state, router }
    }
}

/// What a request asks that can be answered here.
enum Read<'r> {
    Lot(&'r str),
    Near(NearQuery),
}

/// The read `request` asks for, if it is one answered here.
fn read_of(request: &Request) -> Option<Read<'_>> {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length != "0");
    if request.method() != Method::GET || headers.contains_key(header::AUTHORIZATION) || has_body {
        return None;
    }
    let path = request.uri().path();
    if path == "/v1/lots" {
        return Query::<NearQuery>::try_from_uri(request.uri())
            .ok()
            .map(|Query(query)| Read::Near(query));
    }
    let lot = path
        .strip_prefix("/v1/lots/")?
        .strip_suffix("/availability")?;
    (!lot.is_empty() && !lot.contains(['/', '%'])).then_some(Read::Lot(lot))
}

fn answer(state: &AppState, request: &Request, read: Read<'_>) -> Response {
    let address = state
        .trusted_proxies
        .client_of(request.extensions(), request.headers());
    if let Some(refusal) = state.public_limit.refuse_anonymous(address) {
        return refusal;
    }
    let board = state.availability.board();
    let body: Result<Bytes, ApiError> = match read {
        Read::Lot(lot) => availability::lot_body(&board, lot),
        Read::Near(query) => availability::near_body(&board, &query),
    };
    body.map_or_else(IntoResponse::into_response, availability::json)
}

impl Service<Request> for PublicReads {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match read_of(&request) {
            Some(read) => Either::Left(ready(Ok(answer(&self.state, &request, read)))),
            None => Either::Right(self.router.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn taken(method: Method, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read_of(&request.body(Body::empty()).unwrap()).map(|read| match read {
            Read::Lot(lot) => format!("lot {lot}"),
            Read::Near(_) => "near".to_owned(),
        })
    }

    #[test]
    fn only_the_two_anonymous_reads_are_taken_in_front_of_the_router() {
        let get = Method::GET;
        assert_eq!(
            taken(get.clone(), "/v1/lots/lot-1/availability", &[]).as_deref(),
            Some("lot lot-1")
        );
        assert_eq!(
            taken(get.clone(), "/v1/lots/lot-1/availability?x=1", &[]).as_deref(),
            Some("lot lot-1")
        );
        assert_eq!(
            taken(get.clone(), "/v1/lots?near=30.1,120.1&limit=5", &[]).as_deref(),
            Some("near")
        );
        for (method, uri, headers) in [
            (Method::HEAD, "/v1/lots/lot-1/availability", &[][..]),
            (Method::POST, "/v1/lots/lot-1/availability", &[]),
            (
                get.clone(),
                "/v1/lots/lot-1/availability",
                &[("authorization", "Bearer pf_x")],
            ),
            (
                get.clone(),
                "/v1/lots/lot-1/availability",
                &[("content-length", "5")],
            ),
            (
                get.clone(),
                "/v1/lots/lot-1/availability",
                &[("transfer-encoding", "chunked")],
            ),
            (get.clone(), "/v1/lots/lot%2D1/availability", &[]),
            (get.clone(), "/v1/lots//availability", &[]),
            (get.clone(), "/v1/lots/a/b/availability", &[]),
            (get.clone(), "/v1/lots/lot-1/availability/", &[]),
            (get.clone(), "/v1/lots", &[]),
            (get.clone(), "/v1/lots?near=30.1,120.1&limit=many", &[]),
            (get.clone(), "/v1/lots/lot-1", &[]),
        ] {
            assert_eq!(
                taken(method.clone(), uri, headers),
                None,
                "{method} {uri} {headers:?}"
            );
        }
    }
}
