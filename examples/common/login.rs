//! Log-in for the examples, standing in for an application's own (there is no password here):
//! `POST /login` with `{"user": "alice"}` answers `{"token": …}`, a JWT valid for an hour that
//! lets alice read `private/alice`, and sets it as the cookie `tidingsAuthorization` (HttpOnly,
//! SameSite=Strict), which the browser's `EventSource` then sends by itself.
//!
//! The signing secret comes from `--jwt-secret` or `TIDINGS_JWT_SECRET` (at least 32 bytes),
//! else 32 random bytes drawn at start (tokens then end with the process).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use tidings::Topic;
use tidings::http::HttpError;
use tidings::http::jwt::{COOKIE, JwtAuthorizer, sign_hs256};

/// How long a token from `/login` is valid.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The signing secret: `given` (the examples' `--jwt-secret`, or `TIDINGS_JWT_SECRET`), else 32
/// fresh random bytes.
pub(crate) fn secret(given: Option<&str>) -> Arc<[u8]> {
    if let Some(secret) = given {
        return secret.as_bytes().into();
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom gives a secret (or set TIDINGS_JWT_SECRET)");
    bytes.to_vec().into()
}

/// Checks a `--jwt-secret` on the command line: at least 32 bytes (HS256 wants a key as long
/// as its hash).
pub(crate) fn parse_secret(secret: &str) -> Result<String, String> {
    if secret.len() < 32 {
        return Err(format!("the secret is {} bytes long; it must be at least 32", secret.len()));
    }
    Ok(secret.to_owned())
}

/// The authorization hook: `private/…` topics need a token listing them, others are open.
pub(crate) fn authorizer(secret: &[u8]) -> JwtAuthorizer {
    JwtAuthorizer::hs256(secret).protect(|topic| topic.as_str().starts_with("private/"))
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
}

/// `POST /login`.
pub(crate) fn route<S: Clone + Send + Sync + 'static>(secret: Arc<[u8]>) -> MethodRouter<S> {
    let handler = move |body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>| {
        let secret = secret.clone();
        async move {
            match body {
                Ok(body) => login(&secret, &body),
                Err(e) => tidings::http::body_rejection(e, 1024),
            }
        }
    };
    post(axum::handler::Handler::layer(handler, tidings::http::limit_body(1024)))
}

fn login(secret: &[u8], body: &[u8]) -> Response {
    let Ok(Login { user }) = serde_json::from_slice::<Login>(body) else {
        return HttpError::bad_request("expected {\"user\": \"name\"}").into_response();
    };
    let topic = format!("private/{user}");
    if user.is_empty() || user.contains('*') || Topic::parse(&topic).is_err() {
        return HttpError::bad_request("the user name must make a valid topic").into_response();
    }
    let token = sign_hs256(secret, Some(&user), &[&topic], TOKEN_TTL);
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", TOKEN_TTL.as_secs());
    let mut response = (StatusCode::OK, axum::Json(serde_json::json!({ "token": token, "topic": topic }))).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
