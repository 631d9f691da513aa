//! Web Push, tidings' extension to the hub: the updates an SSE stream would carry, pushed
//! through the browser's push service (RFC 8030, encrypted per RFC 8291, signed per RFC 8292)
//! when no page is open. Not part of the Mercure protocol.
//!
//! | route | answer |
//! |---|---|
//! | `GET /.well-known/mercure/push/vapid-public-key` | the VAPID public key, base64url text (the `applicationServerKey` of `pushManager.subscribe`) |
//! | `POST /.well-known/mercure/push` | body: `PushSubscription.toJSON()` plus `"topic": [selectors]` and optionally `"lastEventID"`; 201 `{"lastEventID": …}` (where pushing starts), or a 4xx `{"error": …}` |
//! | `DELETE /.well-known/mercure/push` | body: `{"endpoint": …}`; 204, or 404 |
//!
//! A registration is a subscription that outlives the page: it takes the same `topic`
//! selectors (exact, URI templates, `*`), the same token (header, `authorization` query
//! parameter or `mercureAuthorization` cookie; none with `--anonymous`), and the same
//! `lastEventID` (an update's id, `earliest`, or none for "from now on"). Private updates are
//! pushed only when one of their topics matches the token's `mercure.subscribe`, and pushing
//! stops, and the registration is deleted, when the token expires. The selectors are checked
//! when it registers and kept with it; a restart resumes pushing after the last update pushed.
//!
//! Each push carries one update, as JSON, with where the subscriber stands after it:
//!
//! ```json
//! {"lastEventID": "urn:tidings:…", "id": "https://example.com/books/1/v2", "type": null, "data": "…"}
//! ```
//!
//! `id`, `type` and `data` are the update's, as over SSE. `lastEventID` is a valid
//! `Last-Event-ID` for the page's `EventSource` (or its next registration): the position after
//! this update in the hub's log. An update whose push would not fit one encrypted record
//! (`data` of about 3.9 KB) is pushed without its data, never cut:
//!
//! ```json
//! {"lastEventID": "urn:tidings:…", "id": "…", "type": null, "truncated": true, "after": "urn:tidings:…"}
//! ```
//!
//! and the worker fetches it with `GET /.well-known/mercure/poll?topic=…&lastEventID=<after>&timeout=0`,
//! whose first update it is. When the log no longer holds what followed the registration's
//! position, one push says so, as the stream's `tidings.gap` event:
//! `{"lastEventID": "urn:tidings:…", "id": "urn:tidings:…", "type": "tidings.gap", "data": "{\"reason\":\"trimmed\"}"}`
//! (`"unknown-id"` when the `lastEventID` it registered with names no update).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use tidings_core::{Cursor, Gap, SharedEvent};
use tidings_http::{HttpCredentials, HttpError};
use tidings_webpush::message::{MAX_PLAINTEXT, Payload};
use tidings_webpush::{PushContent, PushMessages, PushSubscription, RegisterError, RegisterRequest, Registration};

use crate::selector::{Selectors, TemplateCache};
use crate::stream::Filter;
use crate::update::{Decoded, GAP_EVENT, PushItem, Update, View, cursor_id};
use crate::{MercureHub, auth, query_pairs, subscriber_claims};

/// The path of the registrations (`POST`, `DELETE`).
pub const PATH: &str = "/.well-known/mercure/push";

/// The path of the VAPID public key.
pub const KEY_PATH: &str = "/.well-known/mercure/push/vapid-public-key";

/// The largest body `POST` and `DELETE` accept (16 KiB): a longer one is a 413.
pub const MAX_BODY: usize = tidings_webpush::http::MAX_BODY;

/// What a registration keeps for its pushes: its selectors and its token's.
#[derive(Debug, Serialize, Deserialize)]
struct StoredFilter {
    /// The registration's `topic` selectors.
    topics: Vec<String>,
    /// The token's `mercure.subscribe` selectors (`None`: no token, no private update).
    private: Option<Vec<String>>,
    /// The fingerprint of the subscriber key that checked its token (`None`: no token).
    #[serde(default)]
    key: Option<String>,
}

/// The hub's [`PushContent`]: a registration's pushes are the updates its selectors and its
/// token let through, in the payloads the [module documentation](self) shows.
/// [`MercureHub::start_push`] gives it to the dispatcher.
#[derive(Debug, Clone)]
pub(crate) struct HubContent {
    templates: Arc<TemplateCache>,
    /// The fingerprint of the subscriber key now (`None`: none).
    subscriber_key: Option<String>,
}

impl HubContent {
    pub(crate) fn new(templates: Arc<TemplateCache>, subscriber_key: Option<String>) -> HubContent {
        HubContent { templates, subscriber_key }
    }
}

impl PushContent for HubContent {
    fn messages(&self, registration: &Registration) -> Result<Box<dyn PushMessages>, String> {
        let stored: StoredFilter = serde_json::from_str(registration.filter.as_deref().unwrap_or(""))
            .map_err(|e| format!("not a hub registration: {e}"))?;
        // Made with a token that another key than today's checked: keys change to revoke
        // tokens, so the registration is revoked too.
        if stored.key.is_some() && stored.key != self.subscriber_key {
            return Err("its token was checked by a subscriber key the hub no longer has".to_owned());
        }
        let topics = Selectors::parse(&stored.topics, &self.templates)?;
        let private = stored.private.map(|p| Selectors::parse(&p, &self.templates)).transpose()?;
        // A start that is no cursor: the update the subscriber named was not in the log.
        let unknown_id = registration.cursor.as_deref().is_some_and(|c| Cursor::parse(c).is_err());
        Ok(Box::new(HubMessages { filter: Filter { topics, private }, unknown_id: AtomicBool::new(unknown_id) }))
    }
}

struct HubMessages {
    filter: Filter,
    /// Whether the next gap is the one of an unknown `lastEventID` (else a trimmed log).
    unknown_id: AtomicBool,
}

impl PushMessages for HubMessages {
    fn event(&self, event: &SharedEvent, cursor: &Cursor) -> Option<Payload> {
        if !event.with_encoded::<Decoded, _>(|bytes| self.filter.lets_through(&View::new(bytes))) {
            return None;
        }
        // The position after the update is the update's own (one topic): the payload is the
        // event's shared encoding. Over MAX_PLAINTEXT, the dispatcher sends `truncated` instead.
        debug_assert_eq!(*cursor, event.event().cursor());
        Some(Payload { json: event.encoded::<PushItem>().to_vec(), truncated: false })
    }

    fn truncated(&self, event: &SharedEvent, cursor: &Cursor) -> Payload {
        #[derive(Serialize)]
        struct Truncated<'a> {
            #[serde(rename = "lastEventID")]
            last_event_id: String,
            id: Option<String>,
            #[serde(rename = "type")]
            kind: Option<&'a str>,
            truncated: bool,
            after: String,
        }
        let event = event.event();
        let update: Option<Update> = serde_json::from_str(&event.data).ok();
        let before = crate::update::at(event.epoch, event.seq.saturating_sub(1));
        let mut truncated = Truncated {
            last_event_id: cursor_id(cursor),
            id: Some(update.as_ref().and_then(|u| u.id.clone()).unwrap_or_else(|| crate::update::hub_id(event))),
            kind: update.as_ref().and_then(|u| u.kind.as_deref()),
            truncated: true,
            after: cursor_id(&before),
        };
        let mut json = serde_json::to_vec(&truncated).unwrap_or_default();
        if json.len() > MAX_PLAINTEXT {
            // An id or a type of kilobytes: left out too (`null`); the long poll gives them.
            (truncated.id, truncated.kind) = (None, None);
            json = serde_json::to_vec(&truncated).unwrap_or_default();
        }
        Payload { json, truncated: true }
    }

    fn gap(&self, _gap: &Gap, cursor: &Cursor) -> Payload {
        let reason = if self.unknown_id.swap(false, Ordering::Relaxed) { "unknown-id" } else { "trimmed" };
        let position = cursor_id(cursor);
        let json = serde_json::json!({
            "lastEventID": position,
            "id": position,
            "type": GAP_EVENT,
            "data": format!("{{\"reason\":\"{reason}\"}}"),
        });
        Payload { json: json.to_string().into_bytes(), truncated: false }
    }
}

/// A registration's fields besides the push subscription (`PushSubscription.toJSON()`, read
/// from the same body by [`PushSubscription::from_json`]).
#[derive(Deserialize)]
struct RegisterBody {
    #[serde(default)]
    topic: Topics,
    #[serde(default, rename = "lastEventID")]
    last_event_id: Option<String>,
}

/// `"topic"`: one selector or a list.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Topics {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct UnregisterBody {
    endpoint: String,
}

fn not_enabled() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "Web Push is not enabled on this hub (tidings-hub --push)")
}

/// `GET /.well-known/mercure/push/vapid-public-key`: the key as text, or 404.
pub(crate) async fn public_key(State(mercure): State<MercureHub>) -> Response {
    match mercure.inner.push.get() {
        Some(push) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], push.public_key().to_owned()).into_response(),
        None => not_enabled().into_response(),
    }
}

/// `POST /.well-known/mercure/push`: 201 with where pushing starts, or the refusal.
pub(crate) async fn register(
    State(mercure): State<MercureHub>,
    parts: http::request::Parts,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return tidings_http::body_rejection(rejection, MAX_BODY),
    };
    match accept_registration(&mercure, &parts, &body).await {
        Ok(position) => (StatusCode::CREATED, axum::Json(serde_json::json!({ "lastEventID": position }))).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn accept_registration(mercure: &MercureHub, parts: &http::request::Parts, body: &[u8]) -> Result<String, HttpError> {
    let inner = &mercure.inner;
    let Some(push) = inner.push.get() else { return Err(not_enabled()) };
    // JSON only: a page of another site can send a form or text without a CORS preflight.
    tidings_http::require_json(&parts.headers)?;
    // Authorization first, as for a subscription.
    let query = query_pairs(parts)?;
    let claims = subscriber_claims(inner, &parts.headers, &query)?;
    // A cookie goes with every request the browser makes, whichever site asks: a registration
    // it authorizes (which sends private updates where the request says) must come from the
    // hub's own origin or one of `--cors-origins`.
    if let Ok(Some((_, auth::Source::Cookie))) = auth::token(&parts.headers, &query) {
        allowed_origin(&parts.headers, parts.uri.authority().map(|a| a.as_str()), &inner.settings.cors_origins)?;
    }
    let text = std::str::from_utf8(body).map_err(|_| HttpError::bad_request("the body is not UTF-8"))?;
    let subscription = PushSubscription::from_json(text).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let body: RegisterBody = serde_json::from_str(text)
        .map_err(|e| HttpError::bad_request(format!("\"topic\" (selectors) and \"lastEventID\": {e}")))?;
    let topics = match body.topic {
        Topics::None => Vec::new(),
        Topics::One(topic) => vec![topic],
        Topics::Many(topics) => topics,
    };
    // Checked as a subscription's are; kept as given, and read again when pushing starts.
    crate::subscriber_filter(inner, &topics, claims.as_ref())?;
    let private = claims.as_ref().and_then(|c| c.mercure.subscribe.clone());
    // Where pushing starts, as for a subscription. An id no update has starts at the oldest
    // retained update with a gap notice: a start that is no cursor (see `HubContent`).
    let last_event_id = body.last_event_id.as_deref().and_then(tidings_http::carried_cursor);
    let (start, unknown) = crate::start_after(inner, last_event_id).await?;
    // The answer is where pushing starts: `earliest` when a gap comes first (an unknown id, or
    // a position retention passed), as a stream's `Last-Event-ID` says.
    let gap_first = match &start {
        _ if unknown => true,
        None => false,
        Some(start) => {
            let oldest = crate::earliest(inner).await?;
            let log = crate::update::log_topic();
            start.epoch() != oldest.epoch() || start.position(&log) < oldest.position(&log)
        }
    };
    let start = if unknown { Some("~unknown-id".to_owned()) } else { start.map(|c| c.to_string()) };
    let key = claims.as_ref().and(inner.settings.subscriber.as_ref()).map(|v| v.fingerprint().to_owned());
    let filter = serde_json::to_string(&StoredFilter { topics, private, key })
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    // The client as `tidings::http::Server` believes it (a trusted proxy's `X-Forwarded-For`),
    // else the peer.
    let client = parts.extensions.get::<tidings_server::ClientIp>().map(|c| c.0).or(peer.map(|p| p.ip()));
    let credentials = HttpCredentials::new(&parts.headers, &query);
    let request = RegisterRequest::new(subscription, vec![crate::update::LOG_TOPIC.to_owned()], &credentials)
        .cursor(start)
        .filter(Some(filter))
        .expires(crate::expiry_time(claims.as_ref()))
        .recipient(recipient(claims.as_ref(), client))
        .peer(peer);
    let started = push.register(request).await.map_err(|err| {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
        match err {
            RegisterError::TopicFull { limit, .. } => {
                HttpError::new(status, format!("this hub holds {limit} Web Push registrations, its limit (--push-max)"))
            }
            RegisterError::TooManyForRecipient { limit } => HttpError::new(
                status,
                format!("this client holds {limit} Web Push registrations, its limit (--push-max-per-client)"),
            ),
            err => HttpError::new(status, err.to_string()),
        }
    })?;
    Ok(match Cursor::parse(&started) {
        Ok(cursor) if !gap_first => cursor_id(&cursor),
        _ => "earliest".to_owned(),
    })
}

/// Whose a registration is, for the limit per client: the token's subject, else the client's
/// address (an IPv6 /64, as the server counts connections per address).
fn recipient(claims: Option<&auth::Claims>, client: Option<IpAddr>) -> Option<String> {
    if let Some(sub) = claims.and_then(|c| c.sub.as_deref()) {
        return Some(format!("sub:{sub}"));
    }
    client.map(|ip| format!("addr:{}", tidings_server::client_key(ip)))
}

/// Refuses a request whose `Origin` (else `Referer`) is neither the hub's own nor one of
/// `cors_origins` named (`*` does not count). The hub's own origin is told by the request's
/// `Host` (HTTP/1.1) or `:authority` (HTTP/2, `authority`), with default ports aside; its
/// scheme is not compared, since a TLS proxy in front may speak another one to the hub (and
/// one port serves one scheme).
fn allowed_origin(headers: &http::HeaderMap, authority: Option<&str>, cors_origins: &[String]) -> Result<(), HttpError> {
    let Some(origin) = auth::origin(headers) else {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "a registration authorized by a cookie needs an Origin or Referer header",
        ));
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or(authority);
    let same = host.zip(origin.split_once("://")).is_some_and(|(host, (scheme, origin_authority))| {
        let default = if scheme.eq_ignore_ascii_case("https") { ":443" } else { ":80" };
        let origin_authority = origin_authority.strip_suffix(default).unwrap_or(origin_authority);
        let host = host.strip_suffix(":443").or_else(|| host.strip_suffix(":80")).unwrap_or(host);
        origin_authority.eq_ignore_ascii_case(host)
    });
    // Listed by name: `*` lets any site read streams while its page is open, but not leave a
    // registration that pushes a user's private updates to it for good.
    let listed = cors_origins.iter().any(|o| o != "*" && *o == origin);
    if same || listed {
        return Ok(());
    }
    Err(HttpError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{} may not register with a cookie (neither the hub's origin nor one of --cors-origins)",
            origin.chars().take(64).collect::<String>()
        ),
    ))
}

/// `DELETE /.well-known/mercure/push`: 204, or 404. No token is asked: whoever knows an
/// endpoint (a secret URL that only its browser and its push service hold) may stop pushes to
/// it, as with tidings' own Web Push routes.
pub(crate) async fn unregister(
    State(mercure): State<MercureHub>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Some(push) = mercure.inner.push.get() else { return not_enabled().into_response() };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return tidings_http::body_rejection(rejection, MAX_BODY),
    };
    let body: UnregisterBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return HttpError::bad_request(format!("expected {{\"endpoint\": …}}: {err}")).into_response(),
    };
    // The endpoint as registrations are keyed: one spelling per endpoint.
    let endpoint = tidings_webpush::subscription::normalize_endpoint(&body.endpoint);
    match push.unregister(&endpoint).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => HttpError::new(StatusCode::NOT_FOUND, "no such push subscription").into_response(),
        Err(err) => HttpError::new(StatusCode::SERVICE_UNAVAILABLE, format!("registry unavailable: {err}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn the_hubs_own_origin_is_told_by_host_or_the_http2_authority() {
        let none: [String; 0] = [];
        let own = headers(&[("host", "hub.example:8443"), ("origin", "https://hub.example:8443")]);
        assert!(allowed_origin(&own, None, &none).is_ok());
        // HTTP/2 has no Host: its `:authority` is the URI's.
        let h2 = headers(&[("origin", "https://hub.example:8443")]);
        assert!(allowed_origin(&h2, Some("hub.example:8443"), &none).is_ok());
        assert!(allowed_origin(&h2, Some("other.example:8443"), &none).is_err());
        assert!(allowed_origin(&h2, None, &none).is_err());
        // Default ports, written or not, on either side.
        for (host, origin) in [
            ("hub.example", "https://hub.example:443"),
            ("hub.example:443", "https://hub.example"),
            ("hub.example:80", "http://hub.example"),
            ("HUB.example", "http://hub.EXAMPLE:80"),
        ] {
            assert!(allowed_origin(&headers(&[("host", host), ("origin", origin)]), None, &none).is_ok(), "{host} {origin}");
        }
        // A default port of another scheme is another port.
        assert!(allowed_origin(&headers(&[("host", "hub.example"), ("origin", "http://hub.example:443")]), None, &none).is_err());
        // Named origins only; `*` and `null` do not count.
        let listed = ["https://app.example".to_owned(), "*".to_owned()];
        assert!(allowed_origin(&headers(&[("host", "hub.example"), ("origin", "https://app.example")]), None, &listed).is_ok());
        for origin in ["https://evil.example", "null", "https://app.example:444"] {
            assert!(allowed_origin(&headers(&[("host", "hub.example"), ("origin", origin)]), None, &listed).is_err(), "{origin}");
        }
        let referer = headers(&[("host", "hub.example"), ("referer", "https://evil.example/page")]);
        assert!(allowed_origin(&referer, None, &listed).is_err());
    }

    #[test]
    fn a_client_counts_by_subject_else_by_address() {
        let claims = auth::Claims { sub: Some("ann".into()), ..auth::Claims::default() };
        assert_eq!(recipient(Some(&claims), Some("10.0.0.1".parse().unwrap())).as_deref(), Some("sub:ann"));
        assert_eq!(recipient(None, Some("10.0.0.1".parse().unwrap())).as_deref(), Some("addr:10.0.0.1"));
        assert_eq!(recipient(None, Some("::ffff:10.0.0.1".parse().unwrap())).as_deref(), Some("addr:10.0.0.1"));
        let a = recipient(None, Some("2001:db8:1:2:aaaa::1".parse().unwrap()));
        let b = recipient(None, Some("2001:db8:1:2:bbbb::9".parse().unwrap()));
        assert_eq!(a, b, "one IPv6 /64 is one client");
        assert_eq!(a.as_deref(), Some("addr:2001:db8:1:2::"));
        assert_ne!(a, recipient(None, Some("2001:db8:1:3::1".parse().unwrap())));
        assert_eq!(recipient(None, None), None);
    }
}
