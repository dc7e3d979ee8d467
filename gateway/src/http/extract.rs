//! Extractors whose rejections answer in the API's error shape.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ApiError, rejection};

/// `Query` with the API's error shape.
pub struct ApiQuery<T>(pub T);

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
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(|e| rejection(e.body_text()))
    }
}

/// A request made with the platform admin key (`Authorization: Bearer …`).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (presented, state.admin_key.as_deref()) {
            (Some(presented), Some(expected))
                if constant_time_eq(presented.as_bytes(), expected.as_bytes()) =>
            {
                Ok(Admin)
            }
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Json` with the API's error shape (and unknown fields refused by the body types).
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(request, state)
            .await
            .map(|axum::Json(v)| Self(v))
            .map_err(|e| rejection(e.body_text()))
    }
}

/// A request made with a driver's API key (`Authorization: Bearer pf_…`): the driver's id.
pub struct DriverKey(pub uuid::Uuid);

impl FromRequestParts<AppState> for DriverKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        match crate::store::drivers::principal(&state.db, presented).await? {
            Some(principal) if principal.role == "driver" => {
                principal.driver_id.map(Self).ok_or(ApiError::Unauthorized)
            }
            _ => Err(ApiError::Unauthorized),
        }
    }
}
