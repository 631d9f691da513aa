//! Axum routes for the browser's side of Web Push (feature `axum`, on by default).
//!
//! | route | answer |
//! |---|---|
//! | `GET /push/vapid-public-key` | the VAPID public key, base64url text |
//! | `POST /push/subscriptions` | body (`Content-Type: application/json`, else a 415): `PushSubscription.toJSON()` plus `"topics": [...]` (and optionally `"cursor"`); 201 `{"cursor": …}` (where pushing starts), or a 4xx `{"error": …}` |
//! | `DELETE /push/subscriptions` | body: `{"endpoint": …}`; 204, or 404 |

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tidings_http::{HttpCredentials, HttpError};

use crate::dispatch::{RegisterRequest, WebPush};
use crate::subscription::{KeysJson, PushSubscription};

/// The largest body `POST` and `DELETE /push/subscriptions` accept (16 KiB): a request whose
/// `Content-Length` announces more is answered `413` at once, before any of its body is read
/// (and without `100 Continue`); a chunked body is cut off at the limit with a `413`
/// ([`tidings_http::limit_body`], the one body limit of every tidings route).
pub const MAX_BODY: usize = 16 * 1024;

#[derive(Deserialize)]
struct RegisterBody {
    endpoint: String,
    keys: KeysJson,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct UnregisterBody {
    endpoint: String,
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    HttpError::new(status, message).into_response()
}

impl WebPush {
    /// The routes above, under `/push`; merge them into the application's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/push/vapid-public-key", get(public_key))
            .route(
                "/push/subscriptions",
                axum::routing::post(register.layer(tidings_http::limit_body(MAX_BODY)))
                    .delete(unregister.layer(tidings_http::limit_body(MAX_BODY))),
            )
            .with_state(self.clone())
    }
}

async fn public_key(State(push): State<WebPush>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], push.public_key().to_owned()).into_response()
}

async fn register(
    State(push): State<WebPush>,
    parts: axum::http::request::Parts,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // `limit_body` refused an announced length over the limit already; a chunked body is cut
    // off at it here.
    let body = match body {
        Ok(body) => body,
        Err(e) => return tidings_http::body_rejection(e, MAX_BODY),
    };
    // JSON only: a page of another site could otherwise register with the browser's cookies.
    if let Err(err) = tidings_http::require_json(&parts.headers) {
        return err.into_response();
    }
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (uri, headers): (&Uri, &HeaderMap) = (&parts.uri, &parts.headers);
    let body: RegisterBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return json_error(StatusCode::BAD_REQUEST, format!("push subscription is not valid json: {err}")),
    };
    let subscription = match PushSubscription::new(&body.endpoint, &body.keys.p256dh, &body.keys.auth) {
        Ok(s) => s,
        Err(err) => return json_error(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let credentials = HttpCredentials::new(headers, &query);
    let request = RegisterRequest::new(subscription, body.topics, &credentials)
        // An empty `cursor` carries none (the rule of `tidings_http::choose_cursor`): pushing
        // starts at the end of the log, as without one.
        .cursor(body.cursor.as_deref().and_then(tidings_http::carried_cursor).map(str::to_owned))
        .peer(peer);
    match push.register(request).await {
        Ok(cursor) => (StatusCode::CREATED, axum::Json(serde_json::json!({ "cursor": cursor }))).into_response(),
        Err(err) => {
            let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
            json_error(status, err.to_string())
        }
    }
}

async fn unregister(State(push): State<WebPush>, body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return tidings_http::body_rejection(e, MAX_BODY),
    };
    let body: UnregisterBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return json_error(StatusCode::BAD_REQUEST, format!("expected {{\"endpoint\": …}}: {err}")),
    };
    let endpoint = crate::subscription::normalize_endpoint(&body.endpoint);
    match push.unregister(&endpoint).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => json_error(StatusCode::NOT_FOUND, "no such push subscription"),
        Err(err) => json_error(StatusCode::SERVICE_UNAVAILABLE, format!("registry unavailable: {err}")),
    }
}
