//! The OpenAPI 3 document, `GET /v1/openapi.json`: generated from the handlers' own
//! `#[utoipa::path]` annotations and the request and response types' schemas. The router is
//! built through `utoipa_axum`, so a route without an annotation cannot join it unseen.

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's fixed parts; the router adds every path.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ParkFlow API",
        description = "Leave first, pay later: live availability, drivers, operators and billing.\n\n\
            Errors answer `{\"error\":{\"code\":\"snake_case\",\"message\":\"…\"}}`. \
            Keys are sent as `Authorization: Bearer <key>`; another operator's objects answer 404.",
        license(name = "Apache-2.0")
    ),
    modifiers(&ApiKeys),
    // Served beside the router (its own body limit): see `http::router`.
    paths(crate::anpr::intake::intake),
    tags(
        (name = "public", description = "Availability, feeds, tariffs and quotes: no key, rate-limited per client"),
        (name = "drivers", description = "A driver's own plates, sessions and invoices (driver key); enrolment and exit payments need none"),
        (name = "operators", description = "Operators, keys, lots, gates, bays, devices, tariffs, passes and blocks"),
        (name = "sessions", description = "Sessions, the review queue and the audit trail"),
        (name = "billing", description = "Settlements, refunds, reconciliation and reports"),
        (name = "ops", description = "Health, readiness and metrics"),
        (name = "devices", description = "Off-the-shelf ANPR cameras push their vendor's plate events (HTTP Basic: the device id and its password)"),
        (name = "broker", description = "For MQTT brokers (EMQX, VerneMQ) that ask the platform who may connect and what each client may publish or subscribe to (`--broker-hook-key`)"),
    )
)]
pub(crate) struct ApiDoc;

/// The security scheme every keyed endpoint names.
pub(crate) const API_KEY: &str = "api_key";

struct ApiKeys;

impl Modify for ApiKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "broker_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3 document of this API", body = serde_json::Value)),
)]
pub(crate) async fn document(Extension(document): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.0)
}

/// The document rendered once, when the router is built.
#[derive(Clone)]
pub(crate) struct Document(pub bytes::Bytes);

/// Completes the document the router collected with the answers many operations share, each in
/// the one error shape: 401 and 403 for every keyed operation, 429 for the rate-limited public
/// and driver operations, 422 for every operation that takes a parameter or a body (its
/// extractor refuses what does not parse).
pub(crate) fn complete(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    let shared = [
        ("401", "Missing or invalid API key"),
        ("403", "This key's role may not do this"),
        ("422", "Invalid request: the code says which field"),
        (
            "429",
            "Rate limited: retry after the Retry-After header's seconds",
        ),
    ];
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            let keyed = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let takes_input = operation.request_body.is_some()
                || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let limited = operation
                .tags
                .as_ref()
                .is_some_and(|tags| tags.iter().any(|t| t == "public" || t == "drivers"));
            for (status, description) in shared {
                let applies = match status {
                    "401" | "403" => keyed,
                    "422" => takes_input,
                    _ => limited,
                };
                if applies {
                    operation
                        .responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| error(description));
                }
            }
        }
    }
    document
}
