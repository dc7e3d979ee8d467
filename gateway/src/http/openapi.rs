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
    tags(
        (name = "public", description = "Availability, feeds, tariffs and quotes: no key, rate-limited per client"),
        (name = "drivers", description = "A driver's own plates, sessions and invoices (driver key); enrolment and exit payments need none"),
        (name = "operators", description = "Operators, keys, lots, gates, bays, devices, tariffs, passes and blocks"),
        (name = "sessions", description = "Sessions, the review queue and the audit trail"),
        (name = "billing", description = "Settlements, refunds, reconciliation and reports"),
        (name = "ops", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

/// The security scheme every keyed endpoint names.
pub const API_KEY: &str = "api_key";

struct ApiKeys;

impl Modify for ApiKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3 document of this API", body = serde_json::Value)),
)]
pub async fn document(Extension(document): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.0)
}

/// The document rendered once, when the router is built.
#[derive(Clone)]
pub struct Document(pub bytes::Bytes);
