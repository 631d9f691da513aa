//! The WebSocket transport for tidings: the same events, cursors, replay and gap notices as
//! SSE, over one socket whose topics change while it is open, with a return channel from the
//! client to the application.
//!
//! It is written against the public API of `tidings-core` and `tidings-http` only, as a
//! transport from outside the project would be; `docs/transports.md` walks through it.
//!
//! ```no_run
//! use tidings_core::{Hub, MemoryStore};
//! use tidings_websocket::WebSocket;
//!
//! # #[tokio::main] async fn main() {
//! let hub = Hub::new(MemoryStore::new());
//! let app = axum::Router::new().route("/ws", WebSocket::new(hub.clone()).method_router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! tidings_server::Server::new(app).serve(listener, std::future::pending()).await.unwrap();
//! # }
//! ```
//!
//! A browser then opens `new WebSocket("/ws?topic=news", "tidings.v1")` and receives JSON text
//! messages: `{"type":"subscribed",...}`, then `{"type":"event","id":"<cursor>","topic":...,
//! "event":...,"data":...}` for each event. It may send `subscribe`, `unsubscribe`, `publish`
//! and `message` messages. The protocol, `tidings.v1`, is documented in `docs/protocol.md`.
//!
//! # Handshake
//!
//! RFC 6455, section 4, over HTTP/1.1 (the request needs hyper's upgrade extension, which
//! `tidings_server::Server` and `axum::serve` both give). The client must offer the subprotocol
//! [`SUBPROTOCOL`] in `Sec-WebSocket-Protocol`; without it, without the headers of an upgrade,
//! or with an invalid `topic` in the URL, the answer is a `426 Upgrade Required` or a `400`
//! with a JSON body naming what is wrong. The subscription the URL names (`topic` parameters, a
//! cursor in `cursor` or `lastEventId`) is opened after the upgrade, so that a refusal reaches
//! a browser's script: a close code `4000 + HTTP status` (4400, 4401, 4403) with the reason,
//! after an `error` message. A URL without topics opens a socket with none, to be named by
//! `subscribe`.
//!
//! # Limits
//!
//! A client message is at most [`WebSocket::max_message`] bytes (default 64 KiB; larger is a
//! close with 1009). Events go out as one frame each, whatever their size (the hub bounds it).
//! An idle socket holds about 2 KiB (see `docs/benchmarks.md`).

mod frame;
mod protocol;
mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::value::RawValue;
use sha1::Digest;
use tidings_core::{Connection, Credentials, Hub, NewEvent, Topic};
use tidings_http::{HttpError, SubscribeParams};

pub use frame::close;
pub use protocol::{EventFrameWithId, MAX_REF_LEN, SUBPROTOCOL};

/// The transport's name, as lifecycle and authorization hooks see it.
pub const TRANSPORT: &str = "websocket";

/// The GUID that RFC 6455 (section 1.3) appends to the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A client of the return channel, as the application's hooks see it.
#[non_exhaustive]
pub struct Client<'a> {
    /// The peer's address, when the server gives connect info.
    pub peer: Option<SocketAddr>,
    /// The topics the socket follows now (possibly none).
    pub topics: &'a [Topic],
    /// The subscription as the lifecycle hooks see it (`None` while the socket follows no
    /// topic); its `recipient` is whom the authorization hook named.
    pub connection: Option<&'a Connection>,
    /// The upgrade request's headers and query (the handshake's own headers excepted).
    pub credentials: &'a (dyn Credentials + Sync),
    /// The hub the socket reads.
    pub hub: &'a Hub,
}

impl std::fmt::Debug for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer)
            .field("topics", &self.topics)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// The application's handler of `message` messages: what a client's message means is the
/// application's to decide (a command, an acknowledgement, a publish to a topic it allows).
///
/// The reply, if any, goes back as `{"type":"reply","ref":…,"data":…}`; an error as
/// `{"type":"error","ref":…,"code":…,"message":…}` with the error's status as `code`. The
/// socket stays open either way. Messages are handled one at a time, in order, on the
/// socket's task: while one is handled, that socket delivers nothing.
///
/// ```
/// use tidings_websocket::{Client, OnMessage};
/// use tidings_http::HttpError;
/// struct Echo;
/// #[async_trait::async_trait]
/// impl OnMessage for Echo {
///     async fn on_message(&self, _client: &Client<'_>, data: &serde_json::value::RawValue)
///         -> Result<Option<serde_json::Value>, HttpError> {
///         Ok(Some(serde_json::json!({ "echo": serde_json::from_str::<serde_json::Value>(data.get()).ok() })))
///     }
/// }
/// ```
#[async_trait]
pub trait OnMessage: Send + Sync + 'static {
    /// Handles one message's `data` (any JSON value, at most [`WebSocket::max_message`] bytes).
    async fn on_message(&self, client: &Client<'_>, data: &RawValue) -> Result<Option<serde_json::Value>, HttpError>;
}

/// Who may publish through the socket (`publish` messages). The default endpoint allows
/// nobody ([`NoPublish`]); see [`SubscribedTopics`] and [`AnyTopic`], or write a closure
/// `Fn(&Client, &NewEvent) -> Result<(), HttpError>`.
pub trait PublishPolicy: Send + Sync + 'static {
    /// `Ok` to publish `event` for `client`; an error (403, say) is sent back as an `error`
    /// message.
    fn allows(&self, client: &Client<'_>, event: &NewEvent) -> Result<(), HttpError>;
}

impl<F> PublishPolicy for F
where
    F: Fn(&Client<'_>, &NewEvent) -> Result<(), HttpError> + Send + Sync + 'static,
{
    fn allows(&self, client: &Client<'_>, event: &NewEvent) -> Result<(), HttpError> {
        self(client, event)
    }
}

/// Nobody publishes through the socket: every `publish` is answered with a 403 error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPublish;

impl PublishPolicy for NoPublish {
    fn allows(&self, _: &Client<'_>, _: &NewEvent) -> Result<(), HttpError> {
        Err(HttpError::new(StatusCode::FORBIDDEN, "this endpoint does not let clients publish"))
    }
}

/// A client may publish to the topics its socket follows (the authorization hook allowed it
/// to read them), and to no other.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscribedTopics;

impl PublishPolicy for SubscribedTopics {
    fn allows(&self, client: &Client<'_>, event: &NewEvent) -> Result<(), HttpError> {
        if client.topics.contains(&event.topic) {
            Ok(())
        } else {
            Err(HttpError::new(StatusCode::FORBIDDEN, format!("publishing to {:?} needs a subscription to it", event.topic.as_str())))
        }
    }
}

/// A client may publish to any topic: for endpoints behind the application's own
/// authentication only.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyTopic;

impl PublishPolicy for AnyTopic {
    fn allows(&self, _: &Client<'_>, _: &NewEvent) -> Result<(), HttpError> {
        Ok(())
    }
}

/// A WebSocket endpoint over a [`Hub`]. By-value builder; every setter states its default.
#[derive(Clone)]
#[must_use]
pub struct WebSocket {
    config: Arc<Config>,
}

/// What every socket of an endpoint shares (one pointer per socket).
pub(crate) struct Config {
    pub(crate) hub: Hub,
    pub(crate) heartbeat: Duration,
    pub(crate) client_timeout: Duration,
    pub(crate) max_message: usize,
    pub(crate) default_topics: Vec<Topic>,
    pub(crate) on_message: Option<Arc<dyn OnMessage>>,
    pub(crate) publish: Arc<dyn PublishPolicy>,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("heartbeat", &self.config.heartbeat)
            .field("max_message", &self.config.max_message)
            .field("default_topics", &self.config.default_topics)
            .field("on_message", &self.config.on_message.is_some())
            .finish_non_exhaustive()
    }
}

/// The largest client message [`WebSocket::max_message`] accepts as a limit.
pub const MAX_MESSAGE_LIMIT: usize = 16 << 20;

impl WebSocket {
    /// An endpoint over `hub`.
    pub fn new(hub: Hub) -> WebSocket {
        WebSocket {
            config: Arc::new(Config {
                hub,
                heartbeat: Duration::from_secs(15),
                client_timeout: Duration::from_secs(45),
                max_message: 64 * 1024,
                default_topics: Vec::new(),
                on_message: None,
                publish: Arc::new(NoPublish),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> WebSocket {
        change(Arc::get_mut(&mut self.config).expect("a builder is not shared before it is mounted"));
        self
    }

    /// How often the server pings the client (default 15 s): the heartbeat that keeps proxies
    /// from closing an idle socket, and that a client which went away without a word fails to
    /// answer (see [`WebSocket::client_timeout`], checked at each heartbeat).
    ///
    /// # Panics
    ///
    /// Panics if `interval` is zero.
    pub fn heartbeat(self, interval: Duration) -> WebSocket {
        assert!(!interval.is_zero(), "the heartbeat interval must be positive");
        self.with(|c| c.heartbeat = interval)
    }

    /// How long a client may send nothing at all, not even the pong every WebSocket client
    /// answers a ping with, before the socket is closed with [`close::TIMEOUT`] (default 45 s,
    /// three heartbeats). Checked at each heartbeat, so a silent client goes within this plus
    /// one heartbeat interval. A browser answers pings by itself, in a background tab too.
    ///
    /// # Panics
    ///
    /// Panics if `timeout` is zero.
    pub fn client_timeout(self, timeout: Duration) -> WebSocket {
        assert!(!timeout.is_zero(), "the client timeout must be positive");
        self.with(|c| c.client_timeout = timeout)
    }

    /// The largest message a client may send, in bytes (default 64 KiB); a larger one closes
    /// the socket with [`close::MESSAGE_TOO_BIG`].
    ///
    /// # Panics
    ///
    /// Panics if `bytes` is below 1024 or above [`MAX_MESSAGE_LIMIT`].
    pub fn max_message(self, bytes: usize) -> WebSocket {
        assert!((1024..=MAX_MESSAGE_LIMIT).contains(&bytes), "max_message must be from 1 KiB to 16 MiB");
        self.with(|c| c.max_message = bytes)
    }

    /// The topics a socket follows when its URL names none (default: none; the socket opens
    /// with no topic and waits for a `subscribe`).
    pub fn default_topics(self, topics: Vec<Topic>) -> WebSocket {
        self.with(|c| c.default_topics = topics)
    }

    /// Hands `message` messages to `handler` (default: none; they are answered with a 501
    /// error).
    pub fn on_message(self, handler: impl OnMessage) -> WebSocket {
        self.with(|c| c.on_message = Some(Arc::new(handler)))
    }

    /// Who may publish through the socket (default [`NoPublish`]).
    pub fn publish(self, policy: impl PublishPolicy) -> WebSocket {
        self.with(|c| c.publish = Arc::new(policy))
    }

    /// A `GET` handler, to mount with [`Router::route`].
    pub fn method_router<S: Clone + Send + Sync + 'static>(self) -> MethodRouter<S> {
        tidings_http::method_router(self)
    }

    /// A router that answers at `/`, for [`Router::nest`].
    pub fn into_router(self) -> Router {
        tidings_http::router(self)
    }

    /// Answers one request: `101 Switching Protocols` and a socket served on a task of its
    /// own, or a 4xx naming what the handshake lacks.
    pub async fn handle(&self, request: Request) -> Response {
        // The URL first: a plain `GET` of it (as the browser client sends to learn why a socket
        // did not open) then gets the same 400 for an invalid topic as the upgrade would.
        let (mut parts, body) = request.into_parts();
        let params = match SubscribeParams::from_parts(&parts, "cursor") {
            Ok(params) => params,
            Err(err) => return err.into_response(),
        };
        let key = match check_handshake(&parts.headers) {
            Ok(key) => key,
            Err((status, message)) => return refuse(status, message),
        };
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded (WebSocket runs over HTTP/1.1)",
            );
        };
        drop(body);
        let opening = socket::Opening::new(parts.headers, params);
        let config = self.config.clone();
        let task = async move {
            match on_upgrade.await {
                Ok(upgraded) => socket::serve(config, hyper_util::rt::TokioIo::new(upgraded), opening).await,
                Err(err) => tracing::debug!(%err, "the WebSocket upgrade did not complete"),
            }
        };
        tokio::spawn(task);
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()));
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
        response
    }
}

/// No CORS: a browser does not apply it to WebSocket. A page of any origin can open a socket
/// to the endpoint (with the cookies of the endpoint's site): an authorization hook that relies
/// on cookies should check the `Origin` header, which the hook sees among the credentials.
impl tidings_http::Endpoint for WebSocket {
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send {
        WebSocket::handle(self, request)
    }
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455, section 4.2.2).
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    HeaderValue::from_str(&encoded).expect("base64 is a valid header value")
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = HttpError::new(status, message).into_response();
    if status == StatusCode::UPGRADE_REQUIRED {
        response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    response
}

/// Whether a comma-separated header lists `token` (case-insensitive), on any of its lines.
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks an opening handshake (RFC 6455, section 4.2.1) and returns the client's key.
fn check_handshake(headers: &HeaderMap) -> Result<String, (StatusCode, &'static str)> {
    if !lists(headers, header::UPGRADE, "websocket") || !lists(headers, header::CONNECTION, "upgrade") {
        return Err((StatusCode::UPGRADE_REQUIRED, "this endpoint speaks WebSocket: send an upgrade request"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err((StatusCode::UPGRADE_REQUIRED, "Sec-WebSocket-Version must be 13"));
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !matches!(decoded, Ok(ref bytes) if bytes.len() == 16) {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    // Subprotocol names are compared exactly (a client that offered `TIDINGS.V1` would fail the
    // connection on an answer of `tidings.v1`).
    let offered = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok());
    if !offered.flat_map(|v| v.split(',')).any(|t| t.trim() == SUBPROTOCOL) {
        return Err((
            StatusCode::BAD_REQUEST,
            "offer the subprotocol tidings.v1 in Sec-WebSocket-Protocol (new WebSocket(url, \"tidings.v1\"))",
        ));
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_the_rfc_example() {
        // RFC 6455, section 1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn handshakes_missing_a_part_are_refused_naming_it() {
        let good = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "other, tidings.v1"),
        ];
        let map = |skip: Option<&str>, replace: Option<(&str, &'static str)>| {
            let mut h = HeaderMap::new();
            for (k, v) in good {
                if Some(k) == skip {
                    continue;
                }
                let v = replace.filter(|(rk, _)| *rk == k).map_or(v, |(_, rv)| rv);
                h.insert(header::HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            h
        };
        assert!(check_handshake(&map(None, None)).is_ok());
        for (skip, replace, status) in [
            (Some("upgrade"), None, 426),
            (Some("connection"), None, 426),
            (None, Some(("sec-websocket-version", "8")), 426),
            (Some("sec-websocket-key"), None, 400),
            (None, Some(("sec-websocket-key", "c2hvcnQ=")), 400),
            (Some("sec-websocket-protocol"), None, 400),
            (None, Some(("sec-websocket-protocol", "tidings.v2")), 400),
            (None, Some(("sec-websocket-protocol", "TIDINGS.V1")), 400),
        ] {
            let (got, message) = check_handshake(&map(skip, replace)).unwrap_err();
            assert_eq!(got.as_u16(), status, "{skip:?} {replace:?}");
            assert!(!message.is_empty());
        }
    }
}

/// For the fuzz targets in `fuzz/` only: not part of the API, may change at any time.
#[doc(hidden)]
pub mod fuzzing {
    /// Reads `bytes`, as a client sent them in pieces cut at `cuts`, into messages and control
    /// frames, and reads each text message as a `tidings.v1` message, as a socket does. Returns
    /// what each came to (`"text ok"`, `"text malformed: ..."`, `"ping"`, `"close 1000"`, a
    /// violation's code), or panics if an invariant breaks: a text message that is not UTF-8
    /// or over `max_message`, a violation without a reason, a code a server may not send.
    pub fn read_client_bytes(bytes: &[u8], cuts: &[usize], max_message: usize) -> Vec<String> {
        let mut reader = crate::frame::Reader::new(max_message);
        let mut input = bytes::BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        ends.sort_unstable();
        ends.push(bytes.len());
        for end in ends {
            if end < at {
                continue;
            }
            input.extend_from_slice(&bytes[at..end]);
            at = end;
            loop {
                match reader.next(&mut input) {
                    Ok(Some(crate::frame::Incoming::Text(text))) => {
                        assert!(text.len() <= max_message, "a message over the limit was read");
                        assert!(std::str::from_utf8(&text).is_ok(), "a text message that is not UTF-8");
                        match crate::protocol::parse(&text) {
                            Ok(_) => out.push("text ok".to_owned()),
                            Err(e) => {
                                assert!(!e.message.is_empty());
                                out.push(format!("text malformed: {}", e.message));
                            }
                        }
                    }
                    Ok(Some(crate::frame::Incoming::Ping(payload))) => {
                        assert!(payload.len() <= 125);
                        out.push("ping".to_owned());
                    }
                    Ok(Some(crate::frame::Incoming::Pong)) => out.push("pong".to_owned()),
                    Ok(Some(crate::frame::Incoming::Close(code, _))) => out.push(format!("close {code:?}")),
                    Ok(None) => break,
                    Err(violation) => {
                        assert!(!violation.reason.is_empty());
                        assert!(matches!(violation.code, 1002 | 1003 | 1007 | 1009), "{}", violation.code);
                        let frame = crate::frame::close_frame_bytes(violation.code, &violation.reason);
                        assert!(frame.len() <= 127, "a close frame's payload is at most 125 bytes");
                        out.push(format!("violation {}", violation.code));
                        return out;
                    }
                }
            }
        }
        out
    }
}
