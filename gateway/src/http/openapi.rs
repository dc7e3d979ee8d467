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

/// Completes the document the router collected: every operation that takes a path or query
/// parameter or a body may answer 422 (its extractor refuses what does not parse), in the one
/// error shape.
pub fn complete(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let invalid = ResponseBuilder::new()
        .description("Invalid request: the code says which field")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            let takes_input = operation.request_body.is_some()
                || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
            if takes_input {
                operation
                    .responses
                    .responses
                    .entry("422".into())
                    .or_insert_with(|| RefOr::T(invalid.clone()));
            }
        }
    }
    document
}
