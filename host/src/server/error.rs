//! The API's errors: every refusal is a status and a JSON body
//! `{error, detail}` that names the thing involved and what to do. A
//! client's mistake is a 4xx, never a 500.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code, such as `unknown_agent`.
    pub error: String,
    /// What is wrong and what to do, for a person.
    pub detail: String,
    /// For an import: every row that cannot be imported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<crate::coord::import::RowError>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// For a 503: when to try again, in seconds.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody { error: error.into(), detail: detail.into(), rows: vec![] },
            retry_after: None,
        }
    }

    pub fn bad_request(error: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }

    pub fn unprocessable(error: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, error, detail)
    }

    pub fn not_found(error: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, detail)
    }

    pub fn conflict(error: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, error, detail)
    }

    pub fn unavailable(error: &str, detail: impl Into<String>, retry_after: u64) -> Self {
        ApiError { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, error, detail) }
    }

    /// A fault of the host (the store failed): the only 500s.
    pub fn host(detail: impl std::fmt::Display) -> Self {
        tracing::error!("host fault answering a request: {detail}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "host_fault", detail.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (error, hint) = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("body_too_large", "; send less, or raise `max_body_bytes` under [server] in concord.toml")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("not_json", "; send `Content-Type: application/json`"),
            _ => ("invalid_json", ""),
        };
        Self::new(r.status(), error, format!("{}{hint}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path", r.body_text())
    }
}

impl From<crate::kb::StoreError> for ApiError {
    fn from(e: crate::kb::StoreError) -> Self {
        match e {
            crate::kb::StoreError::Rejected(why) => Self::conflict("rejected", why),
            crate::kb::StoreError::Unavailable(why) => Self::unavailable("store_unavailable", why, 1),
            other => Self::host(other),
        }
    }
}

impl From<crate::gate::HostFault> for ApiError {
    fn from(e: crate::gate::HostFault) -> Self {
        match e {
            crate::gate::HostFault::Store(e) => e.into(),
            other => Self::host(other),
        }
    }
}

/// `axum::Json`, with its rejections answered as [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query`, with its rejections answered as [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, with its rejections answered as [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);
