//! `tidings-hub`: a standalone hub that speaks the Mercure protocol (draft-dunglas-mercure-07),
//! so that a backend in any language publishes with a form-encoded `POST` and browsers
//! subscribe with `EventSource`, with tidings' exact replay underneath.
//!
//! The binary (`cargo run --release -p tidings-hub`) is the usual way to run it; `docs/hub.md`
//! lists its settings. This library is what the binary serves, for tests and for programs that
//! embed a hub in their own router:
//!
//! ```no_run
//! use tidings_hub::{MercureHub, Settings, Verifier};
//! # #[tokio::main] async fn main() {
//! let store = std::sync::Arc::new(tidings_core::MemoryStore::new());
//! let settings = Settings {
//!     publisher: Some(Verifier::new("HS256", b"!ChangeThisMercureHubJWTSecretKey!").unwrap()),
//!     anonymous: true,
//!     ..Settings::default()
//! };
//! let app = MercureHub::new(store, settings).router();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! # How updates are kept
//!
//! Every update is one event of a single tidings topic ([`update::LOG_TOPIC`]) whose data is the
//! update's record (topics, `private`, `id`, `type`, `retry`, `data`). A subscriber is one
//! tidings subscription to that topic, filtered by its selectors above the core. So a
//! `Last-Event-ID` is one position in one log: the replay after it is exact for every selector,
//! URI templates included, and for topics that did not exist when the subscriber left; an
//! update with alternate topics is one entry, delivered once. `docs/architecture.md` has the
//! measurements behind this choice.

pub mod auth;
pub mod ids;
pub mod poll;
pub mod push;
pub mod selector;
pub mod stream;
pub mod subscriptions;
pub mod update;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::handler::Handler;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, Method, StatusCode, header};
use tidings_core::{Cursor, Hub, NewEvent, Store, SubscribeRequest};
use tidings_http::HttpError;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use auth::Verifier;
use ids::{Ids, Position};
use selector::Selectors;
use stream::{Filter, StreamState};
use subscriptions::Registry;
use update::{HUB_ID_PREFIX, Update};

/// The path of the hub (draft-07, "Discovery").
pub const PATH: &str = "/.well-known/mercure";

/// The transport name the hub's subscriptions carry (lifecycle hooks and metrics).
pub const TRANSPORT: &str = "mercure";

/// The hub's settings; every field states its default.
#[derive(Debug)]
pub struct Settings {
    /// Checks publishers' tokens (`MERCURE_PUBLISHER_JWT_KEY`). `None`: every publish is a 401.
    pub publisher: Option<Verifier>,
    /// Checks subscribers' tokens (`MERCURE_SUBSCRIBER_JWT_KEY`). `None`: no subscriber can
    /// present a token, so none receives private updates.
    pub subscriber: Option<Verifier>,
    /// Whether subscribers without a token are served (public updates only). Default: no.
    pub anonymous: bool,
    /// Whether the hub publishes subscription events and serves the subscriptions API.
    /// Default: no.
    pub subscriptions: bool,
    /// Origins allowed to call the hub from a browser (CORS, with credentials). Empty: no CORS
    /// headers (same-origin pages only). `*`: any origin.
    pub cors_origins: Vec<String>,
    /// Origins whose pages may publish with the `mercureAuthorization` cookie (`*`: any). A
    /// publish whose token comes from the cookie and whose `Origin` (else `Referer`) is not
    /// listed is a 403: a cookie goes along with requests any site makes. Default: none.
    pub publish_origins: Vec<String>,
    /// An SSE comment goes out after this much silence. Default: 40 s (Mercure's).
    pub heartbeat: Duration,
    /// The most `topic` selectors one subscription may give. Default: 64.
    pub max_selectors: usize,
    /// The most bytes a publish request's body may hold. Default: 1 MiB.
    pub max_body: usize,
    /// Ids the index of publishers' ids keeps: at least the store's retention (an id the index
    /// dropped while the log kept its update would, published again later, name the later
    /// one). Default: 100 000, `tidings-hub`'s `--retain`.
    pub max_indexed_ids: usize,
    /// Whether `/` serves the hub's small page (subscribe, publish, watch updates arrive).
    /// Default: yes.
    pub page: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            publisher: None,
            subscriber: None,
            anonymous: false,
            subscriptions: false,
            cors_origins: Vec::new(),
            publish_origins: Vec::new(),
            heartbeat: Duration::from_secs(40),
            max_selectors: 64,
            max_body: 1024 * 1024,
            max_indexed_ids: 100_000,
            page: true,
        }
    }
}

/// Why [`MercureHub::start_push`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PushError {
    /// Web Push could not start.
    Start(tidings_webpush::StartError),
    /// It runs already on this hub.
    AlreadyStarted,
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Start(e) => std::fmt::Display::fmt(e, f),
            PushError::AlreadyStarted => f.write_str("Web Push runs on this hub already"),
        }
    }
}

impl std::error::Error for PushError {}

/// A Mercure hub over a tidings [`Store`].
#[derive(Debug, Clone)]
pub struct MercureHub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: Hub,
    settings: Settings,
    ids: Ids,
    registry: Registry,
    templates: Arc<selector::TemplateCache>,
    /// Web Push, once [`MercureHub::start_push`] started it.
    push: OnceLock<tidings_webpush::WebPush>,
}

impl MercureHub {
    /// A hub over `store`, with a tidings [`Hub`] of default settings.
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> MercureHub {
        // The record holds the form's fields as JSON: escaping may make it up to six times the
        // body (a control character is `\u0001`).
        let hub = Hub::builder_shared(store).max_data_len(settings.max_body.saturating_mul(6).saturating_add(4096)).build();
        MercureHub::with_hub(hub, settings)
    }

    /// A hub over an existing tidings [`Hub`] (its store holds the log).
    pub fn with_hub(hub: Hub, mut settings: Settings) -> MercureHub {
        // A zero interval would write heartbeats in a loop; a huge one would overflow a clock.
        settings.heartbeat = settings.heartbeat.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600));
        let ids = Ids::new(hub.store().clone(), settings.max_indexed_ids);
        MercureHub {
            inner: Arc::new(Inner {
                hub,
                settings,
                ids,
                registry: Registry::default(),
                templates: Arc::default(),
                push: OnceLock::new(),
            }),
        }
    }

    /// A Web Push builder over this hub's log: registrations kept in `registry`, pushes signed
    /// with `keys` for `contact` (a `mailto:` or `https:` URL push services can reach the
    /// operator at). Set its limits and endpoint policy, then give it to
    /// [`MercureHub::start_push`].
    ///
    /// # Errors
    ///
    /// `contact` is not a `mailto:` or `https:` URL.
    pub fn push_builder(
        &self,
        registry: impl tidings_webpush::PushRegistry,
        keys: tidings_webpush::VapidKeys,
        contact: &str,
    ) -> Result<tidings_webpush::WebPushBuilder, tidings_webpush::ContactError> {
        tidings_webpush::WebPush::builder(self.inner.hub.clone(), registry, keys, contact)
    }

    /// Starts Web Push from `builder` (from [`MercureHub::push_builder`]) and serves its
    /// registrations ([`push`]): what each registration is pushed is the hub's choice (its
    /// selectors and token), whatever content the builder had. Until then those routes
    /// answer 404.
    ///
    /// # Errors
    ///
    /// The registry cannot be read or the HTTP client cannot be built, or Web Push was started
    /// already.
    pub async fn start_push(&self, builder: tidings_webpush::WebPushBuilder) -> Result<tidings_webpush::WebPush, PushError> {
        if self.inner.push.get().is_some() {
            return Err(PushError::AlreadyStarted);
        }
        let subscriber_key = self.inner.settings.subscriber.as_ref().map(|v| v.fingerprint().to_owned());
        let content = push::HubContent::new(self.inner.templates.clone(), subscriber_key);
        let push = builder.content(content).start().await.map_err(PushError::Start)?;
        if let Err(push) = self.inner.push.set(push.clone()) {
            push.shutdown();
            return Err(PushError::AlreadyStarted);
        }
        Ok(push)
    }

    /// The tidings hub underneath (to shut it down, or to read its stats).
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The routes: `GET` and `POST` on [`PATH`], the subscriptions API when enabled, and the
    /// page at `/` when enabled.
    pub fn router(&self) -> Router {
        let limit = tidings_http::limit_body(self.inner.settings.max_body);
        let mut router = Router::new()
            .route(PATH, get(subscribe).post(publish.layer(limit)).options(|| async { StatusCode::NO_CONTENT }))
            .route(poll::PATH, get(poll::poll))
            .route(push::KEY_PATH, get(push::public_key))
            .route(
                push::PATH,
                axum::routing::post(push::register.layer(tidings_http::limit_body(push::MAX_BODY)))
                    .delete(push::unregister.layer(tidings_http::limit_body(push::MAX_BODY))),
            );
        if self.inner.settings.subscriptions {
            router = router
                .route(subscriptions::PATH, get(subscriptions::list))
                .route(&format!("{}/{{topic}}", subscriptions::PATH), get(subscriptions::list))
                .route(&format!("{}/{{topic}}/{{subscriber}}", subscriptions::PATH), get(subscriptions::one));
        }
        if self.inner.settings.page {
            router = router.route("/", get(page));
        }
        let router = router.with_state(self.clone()).layer(axum::middleware::map_response(discovery));
        match cors(&self.inner.settings.cors_origins) {
            Some(cors) => router.layer(cors),
            None => router,
        }
    }
}

/// The CORS layer for `origins` (with credentials: cookies carry subscribers' tokens).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CACHE_CONTROL, header::CONTENT_TYPE, tidings_http::LAST_EVENT_ID])
            .expose_headers([tidings_http::LAST_EVENT_ID, header::LINK]),
    )
}

/// Adds the discovery link (draft-07, "Discovery") to every answer of the hub.
async fn discovery(mut response: Response) -> Response {
    response
        .headers_mut()
        .append(header::LINK, HeaderValue::from_static("</.well-known/mercure>; rel=\"mercure\""));
    response
}

fn query_pairs(request: &http::request::Parts) -> Result<Vec<(String, String)>, HttpError> {
    serde_urlencoded::from_str(request.uri.query().unwrap_or(""))
        .map_err(|e| HttpError::bad_request(format!("the query string does not parse: {e}")))
}

/// The subscriber's token claims: `Ok(None)` for an anonymous subscriber.
fn subscriber_claims(
    hub: &Inner,
    headers: &http::HeaderMap,
    query: &[(String, String)],
) -> Result<Option<auth::Claims>, HttpError> {
    match auth::token(headers, query).map_err(|e| HttpError::new(StatusCode::UNAUTHORIZED, e))? {
        Some((token, _)) => {
            let Some(verifier) = &hub.settings.subscriber else {
                return Err(HttpError::new(StatusCode::UNAUTHORIZED, "this hub accepts no subscriber tokens"));
            };
            verifier.verify(token).map(Some).map_err(|e| HttpError::new(StatusCode::UNAUTHORIZED, e))
        }
        None if hub.settings.anonymous => Ok(None),
        None => Err(HttpError::new(StatusCode::UNAUTHORIZED, "a subscriber token is needed (anonymous subscribers are not allowed)")),
    }
}

/// When a token's `exp` falls, with the leeway a token is accepted within (`None`: no `exp`,
/// or too far to count).
fn expiry_time(claims: Option<&auth::Claims>) -> Option<SystemTime> {
    let exp = claims?.exp? + auth::LEEWAY;
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(exp.max(0.0)).ok()?)
}

/// [`expiry_time`] as a Tokio instant.
fn expiry(claims: Option<&auth::Claims>) -> Option<tokio::time::Instant> {
    let left = expiry_time(claims)?.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
    tokio::time::Instant::now().checked_add(left)
}

/// Where a subscriber who gave `last_event_id` starts, and whether the id was unknown: after
/// the update with that id; at the oldest retained one for `earliest` or an unknown id (the
/// subscriber then gets a gap notice); at the end of the log without an id (`None`).
async fn start_after(inner: &Inner, last_event_id: Option<&str>) -> Result<(Option<Cursor>, bool), HttpError> {
    Ok(match last_event_id {
        None => (None, false),
        Some("earliest") => (Some(earliest(inner).await?), false),
        Some(id) => match inner.ids.position(id).await.map_err(store_error)? {
            Position::After(cursor) => (Some(cursor), false),
            Position::Unknown => (Some(earliest(inner).await?), true),
        },
    })
}

/// `GET /.well-known/mercure`: a subscription (draft-07, "Subscription").
async fn subscribe(State(mercure): State<MercureHub>, request: Request) -> Response {
    match open_stream(&mercure, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// What [`last_event_id`] gives for an id that cannot be read: no update has it (a publish
/// refuses ids with line breaks), so the subscriber gets a gap notice and every retained update.
const UNREADABLE_ID: &str = "\n";

/// The `Last-Event-ID` a subscriber gives: the header, else the `lastEventID` query parameter
/// (draft-07: the header wins). Ids may be IRIs, so the header is read as UTF-8 (as browsers
/// send it); spaces and tabs around it are not part of it, and an empty one is none. A header
/// that is not UTF-8, or given twice with different values, is [`UNREADABLE_ID`].
fn last_event_id(headers: &http::HeaderMap, query: &[(String, String)]) -> Option<String> {
    let carried = |value: &str| Some(value.trim_matches([' ', '\t']).to_owned()).filter(|v| !v.is_empty());
    let mut chosen: Option<String> = None;
    for value in headers.get_all(tidings_http::LAST_EVENT_ID) {
        let Ok(value) = std::str::from_utf8(value.as_bytes()) else { return Some(UNREADABLE_ID.to_owned()) };
        match (carried(value), &chosen) {
            (Some(value), Some(seen)) if value != *seen => return Some(UNREADABLE_ID.to_owned()),
            (Some(value), _) => chosen = Some(value),
            (None, _) => {}
        }
    }
    chosen.or_else(|| query.iter().filter(|(k, _)| k == "lastEventID").find_map(|(_, v)| carried(v)))
}

/// A subscriber's request, read and opened: what the SSE stream and a long poll share.
struct Opened {
    subscription: tidings_core::Subscription,
    filter: Filter,
    claims: Option<auth::Claims>,
    /// The request's `topic` selectors, as given.
    selectors: Vec<String>,
    /// The `Last-Event-ID` to answer, when the request gave one.
    answered_id: Option<String>,
    /// The gap notice to send first, when the request's id is unknown.
    unknown_id: Option<Cursor>,
}

/// Reads a subscriber's request (token, selectors, `Last-Event-ID`) and opens its subscription
/// to the log.
async fn open_subscription(inner: &Inner, parts: &http::request::Parts) -> Result<Opened, HttpError> {
    let query = query_pairs(parts)?;
    let claims = subscriber_claims(inner, &parts.headers, &query)?;
    let given: Vec<&str> = query.iter().filter(|(k, _)| k == "topic").map(|(_, v)| v.as_str()).collect();
    let filter = subscriber_filter(inner, &given, claims.as_ref())?;

    // Where to start: after the given id, else at the end of the log.
    let last_event_id = last_event_id(&parts.headers, &query);
    let (start, unknown) = start_after(inner, last_event_id.as_deref()).await?;
    let unknown_id = start.clone().filter(|_| unknown);
    let mut request = SubscribeRequest::new(vec![update::log_topic()])
        .transport(TRANSPORT)
        .peer(parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0))
        .preauthorized(None);
    if let Some(cursor) = start {
        request = request.position(cursor);
    }
    let subscription = inner.hub.subscribe(request).await.map_err(|e| HttpError::refused(e, &inner.hub))?;

    // `Last-Event-ID`, when the request gave one: the id of the update before the first one
    // sent, or `earliest` (also when the log no longer holds what follows the id: a gap).
    let answered_id = match last_event_id {
        Some(id) if id == "earliest" || unknown_id.is_some() || subscription.starts_with_gap() => Some("earliest".to_owned()),
        other => other,
    };
    let selectors = given.iter().map(|s| (*s).to_owned()).collect();
    Ok(Opened { subscription, filter, claims, selectors, answered_id, unknown_id })
}

/// Who may receive what, from a subscriber's `topic` selectors and its token (a subscription
/// or a Web Push registration): at least one selector and at most `max_selectors`, each valid
/// (a 400 saying why); the token's `mercure.subscribe` (a 401 when it does not read).
fn subscriber_filter<S: AsRef<str>>(inner: &Inner, given: &[S], claims: Option<&auth::Claims>) -> Result<Filter, HttpError> {
    if given.is_empty() {
        return Err(HttpError::bad_request("at least one topic selector is needed (`topic`)"));
    }
    if given.len() > inner.settings.max_selectors {
        return Err(HttpError::bad_request(format!("more than {} topic selectors", inner.settings.max_selectors)));
    }
    let topics = Selectors::parse(given, &inner.templates).map_err(HttpError::bad_request)?;
    let private = match claims.and_then(|c| c.mercure.subscribe.as_ref()) {
        Some(list) => Some(
            Selectors::parse(list, &inner.templates)
                .map_err(|e| HttpError::new(StatusCode::UNAUTHORIZED, format!("the token's mercure.subscribe: {e}")))?,
        ),
        None => None,
    };
    Ok(Filter { topics, private })
}

async fn open_stream(mercure: &MercureHub, request: Request) -> Result<Response, HttpError> {
    let inner = &mercure.inner;
    let (parts, _body) = request.into_parts();
    let opened = open_subscription(inner, &parts).await?;
    // A `HEAD` request opens no stream: no subscriber comes or goes.
    let guard = if inner.settings.subscriptions && parts.method != Method::HEAD {
        let payload = opened.claims.as_ref().and_then(|c| c.mercure.payload.clone());
        Some(subscriptions::Active::open(mercure.clone(), &opened.selectors, payload).await)
    } else {
        None
    };

    // A comment first, so that proxies and clients see the stream open at once.
    let mut preamble = String::from(":\n\n");
    if let Some(at) = &opened.unknown_id {
        preamble.push_str(&stream::gap_frame("unknown-id", at));
    }
    let expires = expiry(opened.claims.as_ref());
    let state = StreamState::new(opened.subscription, opened.filter, preamble.as_bytes(), inner.settings.heartbeat, expires, guard);
    let body = Body::from_stream(futures_util::stream::unfold(state, StreamState::step));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(value) = opened.answered_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(tidings_http::LAST_EVENT_ID, value);
    }
    Ok(response)
}

fn store_error(err: tidings_core::StoreError) -> HttpError {
    tracing::warn!("store: {err}");
    HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "the log cannot be read now")
}

/// The cursor just before the oldest retained update.
async fn earliest(inner: &Inner) -> Result<Cursor, HttpError> {
    let topic = update::log_topic();
    let bounds = inner.hub.store().bounds(&topic).await.map_err(store_error)?;
    Ok(update::at(bounds.epoch, bounds.first.saturating_sub(1)))
}

/// The position of the newest update in the log, as an id (`urn:tidings:…`: it says nothing
/// of the update, which may be private), or `None` when the log holds none.
async fn newest_id(inner: &Inner) -> Result<Option<String>, HttpError> {
    let topic = update::log_topic();
    let bounds = inner.hub.store().bounds(&topic).await.map_err(store_error)?;
    Ok((bounds.last > 0).then(|| update::cursor_id(&update::at(bounds.epoch, bounds.last))))
}

/// `POST /.well-known/mercure`: a publish (draft-07, "Publication"). The body is bounded by
/// [`tidings_http::limit_body`] on the route.
async fn publish(
    State(mercure): State<MercureHub>,
    parts: http::request::Parts,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return tidings_http::body_rejection(rejection, mercure.inner.settings.max_body),
    };
    match accept_publish(&mercure, &parts, &body).await {
        Ok(id) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], id).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn accept_publish(mercure: &MercureHub, parts: &http::request::Parts, body: &Bytes) -> Result<String, HttpError> {
    let inner = &mercure.inner;
    // Authorization first: an unauthenticated client learns nothing about its request.
    let query = query_pairs(parts).unwrap_or_default();
    let found = auth::token(&parts.headers, &query).map_err(|e| HttpError::new(StatusCode::UNAUTHORIZED, e))?;
    let Some((token, source)) = found else {
        return Err(HttpError::new(StatusCode::UNAUTHORIZED, "a publisher token is needed"));
    };
    // A cookie goes with every request the browser makes, whichever site asks: a publish it
    // authorizes must come from an origin allowed to publish (as the reference hub checks).
    if source == auth::Source::Cookie {
        let allowed = &inner.settings.publish_origins;
        match auth::origin(&parts.headers) {
            Some(origin) if allowed.iter().any(|o| o == "*" || *o == origin) => {}
            Some(origin) => {
                return Err(HttpError::new(StatusCode::FORBIDDEN, format!("{} may not publish with a cookie (--publish-origins)", truncate(&origin))));
            }
            None => return Err(HttpError::new(StatusCode::FORBIDDEN, "a publish authorized by a cookie needs an Origin or Referer header")),
        }
    }
    let Some(verifier) = &inner.settings.publisher else {
        return Err(HttpError::new(StatusCode::UNAUTHORIZED, "this hub has no publisher key (MERCURE_PUBLISHER_JWT_KEY)"));
    };
    let claims = verifier.verify(token).map_err(|e| HttpError::new(StatusCode::UNAUTHORIZED, e))?;
    let Some(allowed) = claims.mercure.publish.as_ref() else {
        return Err(HttpError::new(StatusCode::FORBIDDEN, "the token has no mercure.publish claim"));
    };
    let allowed = Selectors::parse(allowed, &inner.templates).map_err(|e| HttpError::new(StatusCode::FORBIDDEN, format!("the token's mercure.publish: {e}")))?;

    let update = parse_form(body)?;
    if let Some(topic) = update.topics.iter().find(|t| !allowed.matches(t)) {
        return Err(HttpError::new(StatusCode::FORBIDDEN, format!("the token does not allow publishing to {}", truncate(topic))));
    }
    publish_update(mercure, update).await
}

/// Appends `update` to the log; its id.
async fn publish_update(mercure: &MercureHub, update: Update) -> Result<String, HttpError> {
    let inner = &mercure.inner;
    let record = serde_json::to_string(&update).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let event = inner.hub.publish(NewEvent::new(update::log_topic(), record)).await.map_err(HttpError::from)?;
    let id = update.id.unwrap_or_else(|| update::hub_id(&event));
    if let Err(err) = inner.ids.appended(&id, event.epoch, event.seq).await {
        // The update is in the log: the index reads it on the next lookup.
        tracing::warn!("the id index could not catch up: {err}");
    }
    Ok(id)
}

/// Reads a publish form (`application/x-www-form-urlencoded`): `topic` (repeated), `data`,
/// `private`, `id`, `type`, `retry`.
fn parse_form(body: &[u8]) -> Result<Update, HttpError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| HttpError::bad_request(format!("the form does not parse: {e}")))?;
    let mut update = Update { topics: Vec::new(), private: false, id: None, kind: None, retry: None, data: String::new() };
    for (key, value) in pairs {
        match key.as_str() {
            "topic" => {
                if value.is_empty() || value.chars().any(char::is_control) {
                    return Err(HttpError::bad_request(format!("invalid topic {:?}: empty, or with a control character", truncate(&value))));
                }
                update.topics.push(value);
            }
            "data" => update.data = value,
            // The reference hub counts the field as set whatever its value.
            "private" => update.private = true,
            "id" => {
                if value.is_empty()
                    || value.chars().any(char::is_control)
                    || value.starts_with([' ', '\t'])
                    || value.ends_with([' ', '\t'])
                    || value.starts_with(HUB_ID_PREFIX)
                    || value == "earliest"
                {
                    return Err(HttpError::bad_request(format!(
                        "invalid id {:?}: empty, with a control character, spaces around it (a Last-Event-ID cannot carry them), `earliest`, or starting with {HUB_ID_PREFIX} (the hub's own)",
                        truncate(&value)
                    )));
                }
                update.id = Some(value);
            }
            "type" => {
                if value.contains(['\r', '\n', '\0']) || value.starts_with("tidings.") {
                    return Err(HttpError::bad_request(format!(
                        "invalid type {:?}: with a line break or NUL, or starting with `tidings.` (tidings' own events)",
                        truncate(&value)
                    )));
                }
                update.kind = Some(value).filter(|v| !v.is_empty());
            }
            "retry" => {
                update.retry = Some(value.parse().map_err(|_| HttpError::bad_request(format!("invalid retry {:?}: not a whole number of milliseconds", truncate(&value))))?);
            }
            _ => {}
        }
    }
    if update.topics.is_empty() {
        return Err(HttpError::bad_request("at least one topic is needed (`topic=`)"));
    }
    Ok(update)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Entry points for the fuzz target `hub_input` (`fuzz/`): what a request's bytes reach, with
/// the invariants checked.
#[doc(hidden)]
pub mod fuzzing {
    use tidings_core::{Epoch, Event, WireFormat};

    use crate::selector::{Selector, TemplateCache};
    use crate::update::{Decoded, View};

    /// Reads `selector` as a subscriber's selector and matches `topic` against it; reads `form`
    /// as a publish, stores it as the hub does, and decodes it as a subscriber's stream does.
    /// Panics if an invariant breaks: a plain selector that does not select itself, a publish
    /// whose decoded topics, id or data differ from the form's, a frame that is not SSE.
    pub fn selector_and_form(selector: &str, topic: &str, form: &[u8]) {
        let cache = TemplateCache::default();
        if let Ok(parsed) = Selector::parse(selector, &cache) {
            let _ = parsed.matches(topic);
            if let Selector::Exact(_) | Selector::Any = parsed {
                assert!(parsed.matches(selector), "a plain selector selects itself");
            }
        }
        let Ok(update) = crate::parse_form(form) else { return };
        let record = serde_json::to_string(&update).expect("a record serializes");
        let event = Event { epoch: Epoch::from_raw(1), topic: crate::update::log_topic(), seq: 1, event_type: None, data: record.into() };
        let bytes = Decoded::encode(&event);
        let view = View::new(&bytes);
        assert_eq!(view.topics().collect::<Vec<_>>(), update.topics, "topics survive the record");
        assert_eq!(view.private(), update.private);
        if let Some(id) = &update.id {
            assert_eq!(view.id(), id);
        }
        let frame = std::str::from_utf8(view.frame()).expect("a frame is UTF-8");
        assert!(frame.ends_with("\n\n"), "a frame ends with a blank line");
        let mut data = Vec::new();
        for line in frame.trim_end_matches('\n').split('\n') {
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            assert!(matches!(field, "id" | "event" | "retry" | "data"), "an SSE field: {line:?}");
            if field == "data" {
                data.push(value);
            }
        }
        let expected = update.data.replace("\r\n", "\n").replace('\r', "\n");
        assert_eq!(data.join("\n"), expected, "the data survives the frame");
    }

    /// Reads arbitrary bytes as a stored record's decoded form: never a panic.
    pub fn view(bytes: &[u8]) {
        let view = View::new(bytes);
        let _ = (view.private(), view.topics().count(), view.id(), view.frame().len());
    }
}

/// `GET /`: the hub's page.
async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("page.html")).into_response()
}
