//! The server's own refusals: a status with a JSON body `{"error": "..."}`, as tidings' routes
//! answer theirs.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// A refusal: `status`, a JSON body with `message`, and `Retry-After` (whole seconds, rounded
/// up) and `"retry_ms"` if `retry_after` is given: the shape of `tidings_http::HttpError`.
pub(crate) fn refusal(status: StatusCode, message: &str, retry_after: Option<Duration>) -> Response {
    let mut body = serde_json::json!({ "error": message });
    if let Some(after) = retry_after {
        body["retry_ms"] = serde_json::json!(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
    }
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(after) = retry_after {
        let secs = u64::try_from(after.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    metrics::counter!("tidings_http_errors_total", "status" => status.as_str().to_owned()).increment(1);
    response
}
