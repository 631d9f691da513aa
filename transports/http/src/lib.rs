//! HTTP glue shared by the tidings transports (SSE, long-polling): reading topics and cursors
//! from a request, exposing it to the authorization hook, and turning refusals into 4xx
//! responses with a JSON body `{"error": "..."}`.
//!
//! Applications do not need this crate; transport authors may use it.
//!
//! ```
//! use tidings_http::SubscribeParams;
//! let req = http::Request::get("/events?topic=a&topic=b&lastEventId=xyz").body(()).unwrap();
//! let (parts, ()) = req.into_parts();
//! let params = SubscribeParams::from_parts(&parts, "lastEventId").unwrap();
//! assert_eq!(params.topics.len(), 2);
//! assert_eq!(params.cursor.as_deref(), Some("xyz"));
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use std::future::Future;

use axum::Json;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use http::header::HeaderMap;
use http::request::Parts;
use http::{HeaderName, StatusCode};
use tidings_core::{
    Credentials, EventType, Hub, NewEvent, PublishError, Refusal, SubscribeError, SubscribeRequest, Subscription,
    Topic,
};
use tower_http::cors::CorsLayer;

#[cfg(feature = "jwt")]
pub mod jwt;


/// Bounds a route's request bodies to `max` bytes: a request whose `Content-Length` announces
/// more is answered `413` with a JSON message at once, before any of its body is read (the
/// connection is then closed); a body without a length (chunked) is cut off at `max` bytes by
/// axum's body extractors, which this also configures (it is axum's `DefaultBodyLimit`).
///
/// Every tidings route that reads a body is bounded this way, and only this way (a test walks
/// them: `tests/body_limits.rs`). Put it on the handler that reads the body, so that another
/// method on the same path stays a `405`:
///
/// ```
/// use axum::handler::Handler;
/// let read = |body: axum::body::Bytes| async move { body.len().to_string() };
/// let route = axum::routing::post(read.layer(tidings_http::limit_body(64 * 1024)));
/// # let _: axum::routing::MethodRouter = route;
/// ```
pub fn limit_body(max: usize) -> BodyLimit {
    BodyLimit { max }
}

/// The layer [`limit_body`] returns.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    max: usize,
}

impl<S> tower::Layer<S> for BodyLimit {
    type Service = BodyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimitService { max: self.max, inner: tower::Layer::layer(&axum::extract::DefaultBodyLimit::max(self.max), inner) }
    }
}

/// The service [`BodyLimit`] wraps around a route.
#[derive(Debug, Clone)]
pub struct BodyLimitService<S> {
    max: usize,
    inner: <axum::extract::DefaultBodyLimit as tower::Layer<S>>::Service,
}

impl<S> tower::Service<Request> for BodyLimitService<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let announced = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(len) = announced.filter(|&len| len > self.max as u64) {
            let max = self.max;
            return Box::pin(async move {
                let mut response = HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is {len} bytes, the limit is {max}"),
                )
                .into_response();
                // The body stays unread: the connection cannot carry another request.
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                Ok(response)
            });
        }
        Box::pin(self.inner.call(request))
    }
}

/// Refuses (415, with a reason) a request whose `Content-Type` is not `application/json`
/// (parameters such as `charset` allowed). For routes that change state with a JSON body: a
/// page of another site can make the browser send a form or text, with its cookies, without a
/// CORS preflight, but not JSON; so a route whose authorization may come from a cookie is safe
/// from cross-site request forgery once it takes JSON only.
///
/// # Errors
///
/// The `Content-Type` is missing or another type: the 415.
pub fn require_json(headers: &http::HeaderMap) -> Result<(), HttpError> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(HttpError::new(http::StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be JSON (Content-Type: application/json)"))
    }
}

/// The answer to a body an extractor could not read within `max` bytes (a chunked body cut off
/// at the limit, see [`limit_body`]): a JSON `413` naming the limit, with `Connection: close`
/// (the rest of the body is left unread); any other rejection as a JSON error with its status.
pub fn body_rejection(rejection: axum::extract::rejection::BytesRejection, max: usize) -> Response {
    if rejection.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return HttpError::new(rejection.status(), rejection.body_text()).into_response();
    }
    let mut response =
        HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is over the limit of {max} bytes")).into_response();
    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

/// The largest publish body [`publish_route`] reads: an event's data may be 1 MiB, and JSON
/// escaping can make that up to six times larger.
pub const MAX_PUBLISH_BODY: usize = 8 << 20;

/// Reads a publish request's JSON body, `{"topic": "...", "event": "optional-type", "data":
/// "..."}` (no other field), into an event. Every way it can be wrong is a 400 naming what.
///
/// ```
/// let event = tidings_http::parse_publish(br#"{"topic":"news","data":"hi"}"#).unwrap();
/// assert_eq!(event.topic.as_str(), "news");
/// assert_eq!(tidings_http::parse_publish(br#"{"topic":"a\nb","data":"x"}"#).unwrap_err().status, 400);
/// // Found by the fuzzer: the same fields as an array are not a publish request.
/// assert_eq!(tidings_http::parse_publish(br#"["news",null,"hi"]"#).unwrap_err().status, 400);
/// ```
pub fn parse_publish(body: &[u8]) -> Result<NewEvent, HttpError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PublishBody {
        topic: String,
        event: Option<String>,
        data: String,
    }
    // An object only: serde would also read a struct from an array (`["topic", null, "data"]`).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(HttpError::bad_request("invalid JSON: expected an object {\"topic\": …, \"data\": …}"));
    }
    let body: PublishBody =
        serde_json::from_slice(body).map_err(|e| HttpError::bad_request(format!("invalid JSON: {e}")))?;
    let topic = Topic::parse(&body.topic).map_err(|e| HttpError::bad_request(format!("invalid topic: {e}")))?;
    let mut event = NewEvent::new(topic, body.data);
    if let Some(name) = body.event {
        let kind = EventType::parse(&name).map_err(|e| HttpError::bad_request(format!("invalid event type: {e}")))?;
        event = event.with_type(kind);
    }
    Ok(event)
}

/// A `POST` route that publishes to `hub`: the body as [`parse_publish`] reads it (at most
/// [`MAX_PUBLISH_BODY`], else a 413 before it is read), answered `201 {"id": "<cursor>"}`, or a
/// 4xx/5xx with `{"error": ...}`. Put it behind the application's own authentication: whoever
/// reaches it may publish to any topic.
pub fn publish_route<S: Clone + Send + Sync + 'static>(hub: Hub) -> MethodRouter<S> {
    let handler = move |body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>| {
        let hub = hub.clone();
        async move { publish(&hub, body).await }
    };
    // On the handler, not the method router: another method is a 405, whatever its length.
    axum::routing::post(axum::handler::Handler::layer(handler, limit_body(MAX_PUBLISH_BODY)))
}

async fn publish(hub: &Hub, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return body_rejection(e, MAX_PUBLISH_BODY),
    };
    let event = match parse_publish(&body) {
        Ok(event) => event,
        Err(e) => return e.into_response(),
    };
    match hub.publish(event).await {
        Ok(event) => (StatusCode::CREATED, Json(serde_json::json!({ "id": event.cursor().to_string() }))).into_response(),
        Err(e) => HttpError::from(e).into_response(),
    }
}

/// The header a browser's EventSource sends on reconnection.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The subscription a request asks for: repeated `topic` query parameters and a cursor.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeParams {
    /// The topics named by `topic=` parameters, in order (possibly none).
    pub topics: Vec<Topic>,
    /// The cursor, chosen by [`choose_cursor`] from the `Last-Event-ID` header and the
    /// transport's query parameter. `None`: the request carries no cursor. A place that carries
    /// something unusable (bytes that are not text, two different values) yields
    /// [`UNKNOWN_CURSOR`], which the hub reads as "position unknown": a gap, never a loss.
    pub cursor: Option<String>,
    /// Every query parameter, decoded, for [`Credentials::query`].
    pub query: Vec<(String, String)>,
    /// The peer address, when the server was started with connect info.
    pub peer: Option<SocketAddr>,
}

impl SubscribeParams {
    /// Reads the request. The cursor is chosen by [`choose_cursor`] from the `Last-Event-ID`
    /// header and the query parameter `cursor_param` (`lastEventId` for SSE, `cursor` for
    /// long-polling). An invalid topic is an error (a 400).
    pub fn from_parts(parts: &Parts, cursor_param: &str) -> Result<SubscribeParams, HttpError> {
        let query = parse_query(parts.uri.query().unwrap_or(""))?;
        let mut topics = Vec::new();
        for (key, value) in &query {
            if key == "topic" {
                let topic = Topic::parse(value).map_err(|err| {
                    HttpError::bad_request(format!("invalid topic {:?}: {err}", truncate(value)))
                })?;
                topics.push(topic);
            }
        }
        let cursor = choose_cursor(&parts.headers, &query, cursor_param);
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        Ok(SubscribeParams { topics, cursor, query, peer })
    }
}

/// What [`SubscribeParams::cursor`] holds when a request's cursor cannot be read: bytes that are
/// not text, or one place giving two different cursors. No cursor token parses as this, so the
/// subscription starts with a gap notice for every topic (the position is unknown), as for any
/// malformed cursor.
pub const UNKNOWN_CURSOR: &str = "~unknown";

/// The query parameters that carry a cursor: `lastEventId` (SSE's, as EventSource polyfills
/// send it) and `cursor` (long-polling's).
pub const CURSOR_PARAMS: [&str; 2] = ["lastEventId", "cursor"];

/// The one rule for a request's cursor, for every transport (`docs/protocol.md`, "Choosing the
/// cursor"):
///
/// 1. The places are, in this order: the `Last-Event-ID` header, then the query parameter
///    `param` (the transport's own: `lastEventId` for SSE, `cursor` for long-polling), then the
///    other one of [`CURSOR_PARAMS`] (a client that names the other transport's parameter is
///    understood, rather than started at the end of the log in silence).
/// 2. A place that carries no cursor counts as absent: not there, or empty once spaces and tabs
///    around it are removed (an EventSource sends an empty `Last-Event-ID` when the last `id:`
///    it saw was empty; a form may send `lastEventId=`).
/// 3. The first place that carries a cursor wins. The header comes first because it is the
///    newer position: an EventSource sets it from the last `id:` it received each time it
///    reconnects, while its URL, query included, stays as it was when it was created
///    (Mercure's draft gives the header precedence for the same reason).
/// 4. A place given more than once (two header lines, a parameter repeated) counts once if
///    every value that carries a cursor is the same; if they differ, nothing says which is the
///    client's, and the cursor is [`UNKNOWN_CURSOR`] (a gap notice, then the retained events).
///    So is a header whose bytes are not text.
///
/// Returns the chosen token, trimmed, or `None` when no place carries one (the subscription
/// starts at the end of the log).
///
/// ```
/// use tidings_http::{choose_cursor, UNKNOWN_CURSOR};
/// let mut headers = http::HeaderMap::new();
/// let query = vec![("lastEventId".to_owned(), "C1".to_owned())];
/// headers.insert("last-event-id", http::HeaderValue::from_static(""));
/// // An empty header carries no cursor: the query's counts.
/// assert_eq!(choose_cursor(&headers, &query, "lastEventId").as_deref(), Some("C1"));
/// headers.insert("last-event-id", http::HeaderValue::from_static("C3"));
/// assert_eq!(choose_cursor(&headers, &query, "lastEventId").as_deref(), Some("C3"));
/// headers.append("last-event-id", http::HeaderValue::from_static("C2"));
/// assert_eq!(choose_cursor(&headers, &query, "lastEventId").as_deref(), Some(UNKNOWN_CURSOR));
/// ```
pub fn choose_cursor(headers: &HeaderMap, query: &[(String, String)], param: &str) -> Option<String> {
    let in_query = |name: &str| one_place(query.iter().filter(|(k, _)| k == name).map(|(_, v)| Some(v.as_str())));
    one_place(headers.get_all(LAST_EVENT_ID).iter().map(|v| v.to_str().ok()))
        .or_else(|| in_query(param))
        .or_else(|| CURSOR_PARAMS.iter().filter(|&&other| other != param).find_map(|other| in_query(other)))
}

/// The cursor a place's value carries, by rule 2 of [`choose_cursor`]: the value without the
/// spaces and tabs around it, or `None` when nothing is left. For places outside a request's
/// head too, such as the `cursor` of a Web Push registration.
///
/// ```
/// assert_eq!(tidings_http::carried_cursor(" \tC1 "), Some("C1"));
/// assert_eq!(tidings_http::carried_cursor("  "), None);
/// ```
pub fn carried_cursor(value: &str) -> Option<&str> {
    Some(value.trim_matches([' ', '\t'])).filter(|v| !v.is_empty())
}

/// The cursor one place carries (see [`choose_cursor`]): each value is `None` when unreadable.
fn one_place<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Option<String> {
    let mut chosen: Option<&str> = None;
    for value in values {
        let Some(value) = value else { return Some(UNKNOWN_CURSOR.to_owned()) };
        let Some(value) = carried_cursor(value) else { continue };
        match chosen {
            Some(seen) if seen != value => return Some(UNKNOWN_CURSOR.to_owned()),
            _ => chosen = Some(value),
        }
    }
    chosen.map(str::to_owned)
}

/// Opens the subscription a request asks for: its topics (or `default_topics` when it names
/// none), its cursor, its peer, and its headers and query as credentials for the hook.
pub async fn subscribe(
    hub: &Hub,
    parts: &Parts,
    params: &SubscribeParams,
    default_topics: &[Topic],
    transport: &'static str,
) -> Result<Subscription, HttpError> {
    let topics = if params.topics.is_empty() { default_topics.to_vec() } else { params.topics.clone() };
    let credentials = HttpCredentials::new(&parts.headers, &params.query);
    let request = SubscribeRequest::new(topics)
        .cursor(params.cursor.as_deref())
        .transport(transport)
        .peer(params.peer)
        .credentials(&credentials);
    hub.subscribe(request).await.map_err(|err| HttpError::refused(err, hub))
}

/// An HTTP endpoint of a transport, as its builder describes it: what every transport's
/// `method_router` and `into_router` share (SSE's `Sse`, long-polling's `LongPoll`,
/// WebSocket's `WebSocket` implement it; see `docs/transports.md`).
///
/// ```
/// use axum::extract::Request;
/// use axum::response::{IntoResponse, Response};
/// #[derive(Clone)]
/// struct Hello;
/// impl tidings_http::Endpoint for Hello {
///     async fn handle(&self, _request: Request) -> Response {
///         "hello".into_response()
///     }
/// }
/// let app: axum::Router = axum::Router::new().route("/hello", tidings_http::method_router(Hello));
/// ```
pub trait Endpoint: Clone + Send + Sync + 'static {
    /// Answers one request (a `GET`: [`method_router`] answers other methods with a 405).
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;

    /// The CORS policy of its answers (default: none, so no CORS headers).
    fn cors(&self) -> Option<CorsLayer> {
        None
    }
}

/// A `GET` route that `endpoint` answers, behind its CORS policy: to mount with
/// `Router::route`.
pub fn method_router<E: Endpoint, S: Clone + Send + Sync + 'static>(endpoint: E) -> MethodRouter<S> {
    let cors = endpoint.cors();
    get_route(cors, move |request: Request| {
        let endpoint = endpoint.clone();
        async move { endpoint.handle(request).await }
    })
}

/// A router that `endpoint` answers at `/`, for `Router::nest`, or to serve as a tower
/// `Service` on its own.
pub fn router<E: Endpoint>(endpoint: E) -> axum::Router {
    axum::Router::new().route("/", method_router(endpoint))
}

/// A `GET` route answered by `handle`, behind `cors` when one is given.
pub fn get_route<S, F, Fut>(cors: Option<CorsLayer>, handle: F) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let route = get(move |request: Request| handle(request));
    match cors {
        Some(cors) => route.layer(cors),
        None => route,
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs, refusing (rather than mangling) any that
/// is not valid UTF-8 once decoded.
/// A cursor parameter's value that is not UTF-8 is kept as [`UNKNOWN_CURSOR`]: a cursor is never
/// an error, whichever place carries it.
fn parse_query(raw: &str) -> Result<Vec<(String, String)>, HttpError> {
    let decode = |part: &str| {
        let spaced = part.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced).decode_utf8().map(|s| s.into_owned()).map_err(|_| {
            HttpError::bad_request(format!("query parameter {:?} is not valid UTF-8", truncate(part)))
        })
    };
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            let value = match decode(value) {
                Err(_) if CURSOR_PARAMS.contains(&key.as_str()) => UNKNOWN_CURSOR.to_owned(),
                value => value?,
            };
            Ok((key, value))
        })
        .collect()
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A request's headers and query, as [`Credentials`] for the authorization hook.
#[derive(Debug)]
pub struct HttpCredentials<'a> {
    headers: &'a HeaderMap,
    query: &'a [(String, String)],
}

impl<'a> HttpCredentials<'a> {
    /// Credentials over a request's headers and decoded query.
    pub fn new(headers: &'a HeaderMap, query: &'a [(String, String)]) -> Self {
        HttpCredentials { headers, query }
    }
}

impl Credentials for HttpCredentials<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An error answer: a status and a short message, sent as JSON `{"error": message}`; with a
/// `retry_after`, also a `Retry-After` header (whole seconds, rounded up) and `"retry_ms"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The status code.
    pub status: StatusCode,
    /// The message.
    pub message: String,
    /// When the client should try again (set while the hub shuts down).
    pub retry_after: Option<Duration>,
}

impl HttpError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into(), retry_after: None }
    }

    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The answer to a refused subscription; while `hub` shuts down, a 503 with a jittered
    /// `Retry-After`.
    pub fn refused(err: SubscribeError, hub: &Hub) -> HttpError {
        let shutting_down = matches!(err, SubscribeError::ShuttingDown);
        let mut error = HttpError::from(err);
        if shutting_down {
            error.retry_after = Some(hub.reconnect_delay());
        }
        error
    }
}

impl From<SubscribeError> for HttpError {
    fn from(err: SubscribeError) -> HttpError {
        let status = match &err {
            SubscribeError::NoTopics | SubscribeError::TooManyTopics { .. } => {
                StatusCode::BAD_REQUEST
            }
            SubscribeError::Refused(Refusal::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
            SubscribeError::Refused(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        HttpError::new(status, err.to_string())
    }
}

impl From<PublishError> for HttpError {
    fn from(err: PublishError) -> HttpError {
        let status = match &err {
            PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        HttpError::new(status, err.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        metrics::counter!("tidings_http_errors_total", "status" => self.status.as_u16().to_string()).increment(1);
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(retry) = self.retry_after {
            body["retry_ms"] = serde_json::json!(retry.as_millis() as u64);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(retry) = self.retry_after {
            let secs = retry.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = http::HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(http::header::RETRY_AFTER, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, last_event_id: Option<&[u8]>) -> Parts {
        let mut req = http::Request::get(uri);
        if let Some(v) = last_event_id {
            req = req.header(LAST_EVENT_ID, http::HeaderValue::from_bytes(v).unwrap());
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn header_wins_over_query() {
        let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=q", Some(b"h")), "lastEventId").unwrap();
        assert_eq!(p.cursor.as_deref(), Some("h"));
        let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=q", None), "lastEventId").unwrap();
        assert_eq!(p.cursor.as_deref(), Some("q"));
    }

    #[test]
    fn unreadable_header_is_a_garbage_cursor_not_an_error() {
        let p = SubscribeParams::from_parts(&parts("/?topic=a", Some(b"\xff\xfe")), "lastEventId").unwrap();
        assert!(tidings_core::Cursor::parse(p.cursor.as_deref().unwrap()).is_err());
        // Unreadable is not absent: the query's cursor does not stand in for it.
        let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=q", Some(b"\xff")), "lastEventId").unwrap();
        assert_eq!(p.cursor.as_deref(), Some(UNKNOWN_CURSOR));
        assert!(tidings_core::Cursor::parse(UNKNOWN_CURSOR).is_err());
    }

    #[test]
    fn a_place_without_a_cursor_counts_as_absent() {
        for empty in [&b""[..], b" ", b"\t \t"] {
            let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=q", Some(empty)), "lastEventId").unwrap();
            assert_eq!(p.cursor.as_deref(), Some("q"), "header {empty:?}");
            let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=", Some(empty)), "lastEventId").unwrap();
            assert_eq!(p.cursor, None, "header {empty:?}, empty query");
        }
        let p = SubscribeParams::from_parts(&parts("/?topic=a&cursor=+%20+", None), "cursor").unwrap();
        assert_eq!(p.cursor, None);
        let p = SubscribeParams::from_parts(&parts("/?topic=a&cursor=%20q%09", None), "cursor").unwrap();
        assert_eq!(p.cursor.as_deref(), Some("q"));
        // The other transport's parameter is a place too, after the transport's own.
        let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=q", None), "cursor").unwrap();
        assert_eq!(p.cursor.as_deref(), Some("q"));
        let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=q&cursor=c", None), "cursor").unwrap();
        assert_eq!(p.cursor.as_deref(), Some("c"));
        let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=q&cursor=c", None), "lastEventId").unwrap();
        assert_eq!(p.cursor.as_deref(), Some("q"));
        // Not UTF-8 in a cursor parameter: unknown (a gap), not a 400; elsewhere still a 400.
        let p = SubscribeParams::from_parts(&parts("/?topic=a&cursor=%FF", None), "cursor").unwrap();
        assert_eq!(p.cursor.as_deref(), Some(UNKNOWN_CURSOR));
        let p = SubscribeParams::from_parts(&parts("/?topic=a&lastEventId=%FF&cursor=c", None), "lastEventId").unwrap();
        assert_eq!(p.cursor.as_deref(), Some(UNKNOWN_CURSOR));
        assert!(SubscribeParams::from_parts(&parts("/?topic=a&x=%FF", None), "cursor").is_err());
    }

    #[test]
    fn a_place_given_twice_counts_once_or_is_unknown() {
        let p = SubscribeParams::from_parts(&parts("/?topic=a&cursor=q&cursor=&cursor=q", None), "cursor").unwrap();
        assert_eq!(p.cursor.as_deref(), Some("q"));
        let p = SubscribeParams::from_parts(&parts("/?topic=a&cursor=q&cursor=r", None), "cursor").unwrap();
        assert_eq!(p.cursor.as_deref(), Some(UNKNOWN_CURSOR));
        let mut two = parts("/?topic=a&cursor=q", Some(b"h1"));
        two.headers.append(LAST_EVENT_ID, http::HeaderValue::from_static("h2"));
        let p = SubscribeParams::from_parts(&two, "cursor").unwrap();
        assert_eq!(p.cursor.as_deref(), Some(UNKNOWN_CURSOR));
        let mut same = parts("/?topic=a&cursor=q", Some(b"h1"));
        same.headers.append(LAST_EVENT_ID, http::HeaderValue::from_static(""));
        same.headers.append(LAST_EVENT_ID, http::HeaderValue::from_static("h1"));
        let p = SubscribeParams::from_parts(&same, "cursor").unwrap();
        assert_eq!(p.cursor.as_deref(), Some("h1"));
    }

    #[test]
    fn query_is_decoded_strictly() {
        let p = SubscribeParams::from_parts(&parts("/?topic=a+b&topic=%F0%9F%A6%80&x", None), "c").unwrap();
        assert_eq!(p.topics, [Topic::new("a b"), Topic::new("🦀")]);
        let err = SubscribeParams::from_parts(&parts("/?topic=%FF", None), "c").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn invalid_topic_is_a_400_naming_it() {
        let err = SubscribeParams::from_parts(&parts("/?topic=a%0Ab", None), "c").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("invalid topic"), "{}", err.message);
    }

    #[test]
    fn refusals_map_to_401_and_403() {
        let e: HttpError = SubscribeError::Refused(Refusal::unauthenticated("x")).into();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e: HttpError = SubscribeError::Refused(Refusal::forbidden("x")).into();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
    }
}
