//! The one place HTTP errors become the JSON envelope `{trace_id, code, message, details}`, and
//! every response gets its `X-Trace-Id`.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const TRACE_HEADER: &str = "x-trace-id";

/// An error a handler returns: an HTTP status, a stable machine-readable code, a message for
/// people, and optional structured details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: Value::Null }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A failure on campo's side: logged in full, reported without internals.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log for this trace id")
    }
}

impl From<campo_lake::LakeError> for ApiError {
    fn from(e: campo_lake::LakeError) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    /// The envelope is completed by [`trace`], which knows the request's trace id.
    fn into_response(self) -> Response {
        let mut resp = self.status.into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp.extensions_mut().insert(self);
        resp
    }
}

/// The request's trace id, in the request extensions for handlers that log it.
#[derive(Debug, Clone)]
pub struct TraceId(pub String);

/// Middleware: takes the caller's `X-Trace-Id` when it is a sane token, else makes one; echoes
/// it on the response; turns every error response (a handler's [`ApiError`], or axum's own 404,
/// 405 and extractor rejections) into the envelope.
pub async fn trace(mut req: Request, next: Next) -> Response {
    let trace_id = req
        .headers()
        .get(TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(TraceId(trace_id.clone()));
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |m| m.as_str()).to_string();
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let status = resp.status();
    metrics::histogram!("campo_api_request_seconds", "route" => route.clone()).record(started.elapsed().as_secs_f64());
    metrics::counter!("campo_api_requests_total", "route" => route, "status" => status.as_u16().to_string()).increment(1);
    let err = match resp.extensions_mut().remove::<ApiError>() {
        Some(e) => Some(e),
        None if status.is_client_error() || status.is_server_error() => {
            let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if is_json {
                None
            } else {
                let body = axum::body::to_bytes(std::mem::take(resp.body_mut()), 16 * 1024).await.unwrap_or_default();
                let text = String::from_utf8_lossy(&body).trim().to_string();
                Some(from_status(status, text))
            }
        }
        None => None,
    };
    if let Some(e) = err {
        let body = json!({"trace_id": trace_id, "code": e.code, "message": e.message, "details": e.details});
        let headers = std::mem::take(resp.headers_mut());
        resp = (status, axum::Json(body)).into_response();
        for (k, v) in headers.iter() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                resp.headers_mut().insert(k.clone(), v.clone());
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        resp.headers_mut().insert(TRACE_HEADER, v);
    }
    resp
}

/// An error response that did not come from a handler: name it by its status.
fn from_status(status: StatusCode, text: String) -> ApiError {
    let (code, fallback) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed on this route"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
        StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "rate limit reached"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "expected Content-Type: application/json"),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_body", "the request body does not match the schema"),
        s if s.is_client_error() => ("bad_request", "bad request"),
        _ => ("internal", "internal error"),
    };
    let message = if text.is_empty() || status.is_server_error() { fallback.to_string() } else { text };
    ApiError::new(status, code, message)
}
