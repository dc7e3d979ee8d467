//! The one error shape of the HTTP API: `{"error":{"code":"snake_case","message":"…"}}`, and the
//! one place where error kinds become statuses. 5xx bodies are opaque; their cause is logged here, once.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "lot not found"}}))]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, snake_case: clients branch on it.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

/// An error answered by the API.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid api key")]
    Unauthorized,
    #[error("this key's role may not do this")]
    Forbidden,
    #[error("service not ready")]
    Unavailable,
    #[error("{message}")]
    Status {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("internal error")]
    Store(#[from] StoreError),
}

impl ApiError {
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Status {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadRequest { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Self::Status { status, code, .. } => (*status, code),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            let cause = std::error::Error::source(&self).map(ToString::to_string);
            tracing::error!(error = %self, cause = ?cause, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<parkflow_billing::payments::PayError> for ApiError {
    fn from(error: parkflow_billing::payments::PayError) -> Self {
        use parkflow_billing::payments::PayError;
        let status = |status, code, error: &PayError| Self::Status {
            status,
            code,
            message: error.to_string(),
        };
        match error {
            PayError::NotFound(what) => Self::NotFound(what),
            PayError::UnknownLot => Self::NotFound("lot"),
            PayError::NothingDue(_) => status(StatusCode::CONFLICT, "nothing_due", &error),
            PayError::InProgress => status(StatusCode::CONFLICT, "payment_in_progress", &error),
            PayError::Declined(_) => {
                status(StatusCode::PAYMENT_REQUIRED, "payment_declined", &error)
            }
            PayError::Pending => status(StatusCode::ACCEPTED, "payment_pending", &error),
            PayError::KeyReused => status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                &error,
            ),
            PayError::Store(e) => Self::Store(e),
        }
    }
}

/// Answers a path or query that does not parse with the API's error shape.
pub(crate) fn rejection(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_request", message.to_string())
}
