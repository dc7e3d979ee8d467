//! Extractors whose rejections answer in the API's error shape.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ApiError, rejection};

/// `Query` with the API's error shape.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e| rejection(e.body_text()))
    }
}

/// `Path` with the API's error shape.
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(|e| rejection(e.body_text()))
    }
}

/// `Json` with the API's error shape: a JSON object (serde would also read a struct from an
/// array), its unknown fields refused by the body types.
pub(crate) struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|t| t.to_str().ok())
            .map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|t| {
                t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
            });
        if !json {
            return Err(rejection(
                "expected a request with `Content-Type: application/json`",
            ));
        }
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| rejection(e.body_text()))?;
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(rejection("the body must be a JSON object"));
        }
        axum::Json::<T>::from_bytes(&body)
            .map(|axum::Json(v)| Self(v))
            .map_err(|e| rejection(e.body_text()))
    }
}

/// Free text from a client (a name, a reason): trimmed, 1 to `max` characters, no control
/// characters (PostgreSQL refuses NUL; logs and CSV want none). `field` names it in the error,
/// whose code is `invalid_{field}`.
pub(crate) fn free_text(
    code: &'static str,
    field: &str,
    value: &str,
    max: usize,
) -> Result<String, ApiError> {
    let text = value.trim();
    let length = text.chars().count();
    if length == 0 || length > max || text.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            code,
            format!("{field} must be 1 to {max} characters, none of them control characters"),
        ));
    }
    Ok(text.to_owned())
}
