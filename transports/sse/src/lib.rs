//! The Server-Sent Events transport for tidings.
//!
//! [`Sse`] turns a [`Hub`] into an endpoint that streams `text/event-stream`: each event as an
//! SSE event whose `id:` is the subscription's cursor, so a browser's EventSource resumes
//! exactly where it left off (it sends `Last-Event-ID` by itself). Polyfills that cannot set
//! headers pass the cursor as the `lastEventId` query parameter; the header wins when both are
//! present.
//!
//! ```no_run
//! use tidings_core::{Hub, MemoryStore};
//! use tidings_sse::Sse;
//!
//! # #[tokio::main] async fn main() {
//! let hub = Hub::new(MemoryStore::new());
//! let app = axum::Router::new().route("/events", Sse::new(hub.clone()).method_router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! `GET /events?topic=a&topic=b` then streams both topics. The wire format is documented in
//! `docs/protocol.md`: the `retry:` hint first, then the starting cursor, events, heartbeat
//! comments on idle streams, and gap notices as events named `tidings.gap` whose data is
//! `{"topics": [...]}`.
//!
//! # Event types a client does not listen for
//!
//! An EventSource hands over only the named events it listens for; the others pass unseen, yet
//! their `id:` moves its cursor. A client may say which types it listens for with `listen=TYPE`
//! (repeatable): events of any other type then go out as `event: tidings.skip` with empty data
//! and the event's `id:`, so that the client sees every position (which topic each event it
//! keeps belongs to stays unambiguous on a stream of several topics) without the payloads it
//! would drop. Untyped events always go out whole. Without `listen`, every event goes out whole.
//!
//! # Errors
//!
//! Before any byte of stream: an invalid topic or no topic is a `400`, a refusal by the
//! authorization hook a `401` or `403`, a shut-down hub or unreachable store a `503`, each with
//! a JSON body `{"error": "..."}`. A malformed cursor is not an error: it yields a gap notice.

mod frame;

use std::collections::VecDeque;
use std::pin::Pin;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;

use tidings_core::{Delivery, EventType, Hub, SharedEvent, Subscription, Topic};
use tidings_http::{HttpError, SubscribeParams};
use tokio::time::Instant;
use tower_http::cors::CorsLayer;

pub use frame::{SseFrame, SseFrameWithId};

/// The transport's name, as lifecycle and authorization hooks see it.
pub const TRANSPORT: &str = "sse";

/// An SSE endpoint over a [`Hub`]. By-value builder; every setter states its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct Sse {
    hub: Hub,
    heartbeat: Duration,
    retry: Duration,
    default_topics: Vec<Topic>,
    cors: Option<CorsLayer>,
}

impl Sse {
    /// An endpoint over `hub`.
    pub fn new(hub: Hub) -> Sse {
        Sse {
            hub,
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            default_topics: Vec::new(),
            cors: None,
        }
    }

    /// How long a stream may stay silent before a heartbeat comment is sent (default 15 s).
    ///
    /// # Panics
    ///
    /// Panics if `interval` is zero.
    pub fn heartbeat(mut self, interval: Duration) -> Sse {
        assert!(!interval.is_zero(), "the heartbeat interval must be positive");
        self.heartbeat = interval;
        self
    }

    /// The reconnection delay sent as `retry:` when a stream opens (default 3 s).
    pub fn retry(mut self, delay: Duration) -> Sse {
        self.retry = delay;
        self
    }

    /// The topics streamed when a request names none (default: none, which is a 400).
    pub fn default_topics(mut self, topics: Vec<Topic>) -> Sse {
        self.default_topics = topics;
        self
    }

    /// Answers cross-origin requests with this CORS policy (default: no CORS headers).
    pub fn cors(mut self, cors: CorsLayer) -> Sse {
        self.cors = Some(cors);
        self
    }

    /// A `GET` handler, to mount with [`Router::route`].
    pub fn method_router<S: Clone + Send + Sync + 'static>(self) -> MethodRouter<S> {
        tidings_http::method_router(self)
    }

    /// A router that streams at `/`, for [`Router::nest`], or to serve as a tower `Service`
    /// on its own (a `Router` is one).
    pub fn into_router(self) -> Router {
        tidings_http::router(self)
    }

    /// Answers one request: a stream, or a 4xx/503 before any byte of stream.
    pub async fn handle(&self, request: Request) -> Response {
        let (parts, _body) = request.into_parts();
        let params = match SubscribeParams::from_parts(&parts, "lastEventId") {
            Ok(params) => params,
            Err(err) => return err.into_response(),
        };
        let listen = match listened_types(&params.query) {
            Ok(listen) => listen,
            Err(err) => return err.into_response(),
        };
        match tidings_http::subscribe(&self.hub, &parts, &params, &self.default_topics, TRANSPORT).await {
            Ok(subscription) => self.stream(subscription, listen),
            Err(err) => err.into_response(),
        }
    }

    fn stream(&self, subscription: Subscription, listen: Option<Box<[EventType]>>) -> Response {
        let start = (!subscription.starts_with_gap()).then(|| subscription.cursor());
        let preamble = frame::preamble(self.retry.as_millis(), start.as_ref());
        let state = StreamState::new(subscription, self.heartbeat, preamble, listen);
        let body = Body::from_stream(futures_util::stream::unfold(state, StreamState::step));
        let mut response = (StatusCode::OK, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

impl tidings_http::Endpoint for Sse {
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send {
        Sse::handle(self, request)
    }

    fn cors(&self) -> Option<CorsLayer> {
        self.cors.clone()
    }
}

/// The most `listen` parameters one request may carry.
pub const MAX_LISTEN_TYPES: usize = 64;

/// The event types a request says its EventSource listens for (`listen`, repeatable), or `None`
/// when it names none. A `400` for an invalid type or more than [`MAX_LISTEN_TYPES`].
fn listened_types(query: &[(String, String)]) -> Result<Option<Box<[EventType]>>, HttpError> {
    let mut listen = Vec::new();
    // An empty `listen=` names nothing (as an empty cursor parameter carries none).
    for (_, value) in query.iter().filter(|(k, v)| k == "listen" && !v.is_empty()) {
        let kind = EventType::parse(value)
            .map_err(|e| HttpError::bad_request(format!("invalid listen type {:?}: {e}", value.chars().take(64).collect::<String>())))?;
        if !listen.contains(&kind) {
            listen.push(kind);
        }
        if listen.len() > MAX_LISTEN_TYPES {
            return Err(HttpError::bad_request(format!("more than {MAX_LISTEN_TYPES} listen types")));
        }
    }
    Ok((!listen.is_empty()).then(|| listen.into_boxed_slice()))
}

/// Frames smaller than this are copied into the chunk being gathered; larger ones go out as
/// the shared bytes themselves.
const COALESCE_BELOW: usize = 16 * 1024;
/// A burst of ready deliveries is gathered until it holds this much.
const WRITE_BUFFER: usize = 64 * 1024;
/// Room taken at once for a burst of small frames (grown if the burst needs more).
const GATHER_ROOM: usize = 4 * 1024;

/// One SSE response body. Memory per stream is a few hundred bytes while idle. A delivery that
/// goes out alone is written as the event's shared frame itself (no copy); a burst of small
/// frames is copied, once, straight from the shared events into one chunk (no queue of
/// references per delivery); large frames are queued as the shared bytes. The chunk's room is
/// released whenever the stream goes idle.
struct StreamState {
    subscription: Subscription,
    /// Finished chunks, in order, to send before `lone` or `gathering`.
    queued: VecDeque<Bytes>,
    /// The burst's first small frame while it is alone (never together with `gathering`): the
    /// event itself, which the delivery handed over, and whether its frame carries the `id:`.
    lone: Option<(Arc<SharedEvent>, bool)>,
    /// Small frames of the current burst, copied together.
    gathering: BytesMut,
    /// Total length of `queued`, `lone` and `gathering`.
    queued_bytes: usize,
    /// Fires at most once per interval; what it does depends on `last_write`.
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    interval: Duration,
    last_write: Instant,
    done: bool,
    /// The typed events the client listens for (`listen`), when it said: any other typed event
    /// goes out as a `tidings.skip` frame (its cursor, no data).
    listen: Option<Box<[EventType]>>,
}

impl StreamState {
    fn new(subscription: Subscription, interval: Duration, preamble: Bytes, listen: Option<Box<[EventType]>>) -> StreamState {
        let now = Instant::now();
        StreamState {
            subscription,
            queued_bytes: preamble.len(),
            queued: VecDeque::from([preamble]),
            lone: None,
            gathering: BytesMut::new(),
            heartbeat: Box::pin(tokio::time::sleep_until(now + interval)),
            interval,
            last_write: now,
            done: false,
            listen,
        }
    }

    // Not an `async fn`: that would keep the state twice in the future (the by-value argument
    // and its mutable binding), 424 bytes more per idle stream. The `async move` block keeps
    // the one copy it captured.
    #[allow(clippy::manual_async_fn)]
    fn step(mut self) -> impl std::future::Future<Output = Option<(Result<Bytes, Infallible>, StreamState)>> + Send {
        async move {
            loop {
                if let Some(chunk) = self.next_chunk() {
                    self.last_write = Instant::now();
                    return Some((Ok(chunk), self));
                }
                if self.done {
                    return None;
                }
                // A burst (a replay, a busy topic) is gathered without touching a timer.
                while self.queued_bytes < WRITE_BUFFER && !self.done {
                    match self.subscription.next_ready().await {
                        Some(delivery) => self.push(delivery),
                        None => break,
                    }
                }
                if self.queued_bytes > 0 {
                    continue;
                }
                // Idle: give back what a burst needed, then wait for an event or the heartbeat.
                if self.queued.capacity() > 8 {
                    self.queued = VecDeque::new();
                }
                self.gathering = BytesMut::new();
                tokio::select! {
                    delivery = self.subscription.next() => match delivery {
                        Some(delivery) => self.push(delivery),
                        None => self.done = true,
                    },
                    () = self.heartbeat.as_mut() => {
                        // The timer is reset here only, not on every write: a comment goes out
                        // once the stream has been silent for a whole interval.
                        let due = self.last_write + self.interval;
                        let now = Instant::now();
                        if now >= due {
                            self.heartbeat.as_mut().reset(now + self.interval);
                            self.last_write = now;
                            return Some((Ok(Bytes::from_static(frame::HEARTBEAT)), self));
                        }
                        self.heartbeat.as_mut().reset(due);
                    }
                }
            }
        }
    }

    /// The next chunk to write: a finished one, the lone frame, or the small frames gathered.
    fn next_chunk(&mut self) -> Option<Bytes> {
        let chunk = if let Some(chunk) = self.queued.pop_front() {
            chunk
        } else if let Some((event, with_id)) = self.lone.take() {
            shared_frame(&event, with_id)
        } else if !self.gathering.is_empty() {
            self.gathering.split().freeze()
        } else {
            return None;
        };
        self.queued_bytes -= chunk.len();
        Some(chunk)
    }

    /// Appends to the chunk being gathered what `write` writes (`room`: the length expected),
    /// after the lone frame if there is one.
    fn gather(&mut self, room: usize, write: impl FnOnce(&mut BytesMut)) {
        let lone = self.lone.take();
        let lone_len = lone.as_ref().map_or(0, |(event, with_id)| frame_len(event, *with_id));
        if self.gathering.capacity() - self.gathering.len() < lone_len + room {
            self.gathering.reserve((lone_len + room).max(GATHER_ROOM));
        }
        if let Some((event, with_id)) = lone {
            // Counted in `queued_bytes` already.
            copy_frame(&mut self.gathering, &event, with_id);
        }
        let before = self.gathering.len();
        write(&mut self.gathering);
        self.queued_bytes += self.gathering.len() - before;
    }

    /// Queues `chunk` as it is, after what the burst holds so far.
    fn enqueue(&mut self, chunk: Bytes) {
        if let Some((event, with_id)) = self.lone.take() {
            self.queued.push_back(shared_frame(&event, with_id));
        } else if !self.gathering.is_empty() {
            let gathered = self.gathering.split().freeze();
            self.queued.push_back(gathered);
        }
        self.queued_bytes += chunk.len();
        self.queued.push_back(chunk);
    }

    /// Adds an event's shared frame to the burst: kept as the event while it is alone, copied
    /// if small and not alone, else queued as the shared bytes.
    fn put_frame(&mut self, event: Arc<SharedEvent>, with_id: bool) {
        let len = frame_len(&event, with_id);
        if len >= COALESCE_BELOW {
            self.enqueue(shared_frame(&event, with_id));
        } else if self.lone.is_none() && self.gathering.is_empty() {
            self.queued_bytes += len;
            self.lone = Some((event, with_id));
        } else {
            self.gather(len, |out| copy_frame(out, &event, with_id));
        }
    }

    /// Whether `event` is of a type the client does not listen for.
    fn skips(&self, event: &SharedEvent) -> bool {
        match (&self.listen, &event.event().event_type) {
            (Some(listen), Some(kind)) => !listen.contains(kind),
            _ => false,
        }
    }

    fn push(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Event(event) if self.skips(&event) => {
                if self.subscription.stands_just_after(event.event()) {
                    // One topic: the skip frame is the event's own, encoded once for all.
                    let len = event.with_encoded::<frame::SseSkipFrameWithId, _>(Bytes::len);
                    self.gather(len, |out| {
                        event.with_encoded::<frame::SseSkipFrameWithId, _>(|f| out.extend_from_slice(f));
                    });
                } else {
                    let cursor = self.subscription.cursor();
                    self.gather(frame::SKIP.len() + frame::FRAME_END_ROOM, |out| {
                        out.extend_from_slice(frame::SKIP);
                        frame::put_frame_end(out, &cursor);
                    });
                }
            }
            Delivery::Event(event) => {
                if self.subscription.stands_just_after(event.event()) {
                    // One topic: the id line is the event's own cursor, the same for every
                    // subscriber, encoded once with the frame.
                    self.put_frame(event, true);
                } else {
                    self.put_frame(event, false);
                    let cursor = self.subscription.cursor();
                    self.gather(frame::FRAME_END_ROOM, |out| frame::put_frame_end(out, &cursor));
                }
            }
            Delivery::Gap(gap) => {
                let notice = frame::gap_frame(&gap, &self.subscription.cursor());
                self.gather(notice.len(), |out| out.extend_from_slice(&notice));
            }
            Delivery::Closing(closing) => {
                self.done = true;
                let retry = format!("retry: {}\n\n", closing.reconnect_after.as_millis());
                self.gather(retry.len(), |out| out.extend_from_slice(retry.as_bytes()));
            }
            _ => {}
        }
    }
}

/// The length of `event`'s shared frame, [`SseFrameWithId`] or [`SseFrame`].
fn frame_len(event: &SharedEvent, with_id: bool) -> usize {
    if with_id {
        event.with_encoded::<SseFrameWithId, _>(Bytes::len)
    } else {
        event.with_encoded::<SseFrame, _>(Bytes::len)
    }
}

/// Copies `event`'s shared frame into `out` (without taking a reference to it: thousands of
/// subscribers copying one frame never write to the memory they share).
fn copy_frame(out: &mut BytesMut, event: &SharedEvent, with_id: bool) {
    if with_id {
        event.with_encoded::<SseFrameWithId, _>(|frame| out.extend_from_slice(frame));
    } else {
        event.with_encoded::<SseFrame, _>(|frame| out.extend_from_slice(frame));
    }
}

/// `event`'s shared frame itself.
fn shared_frame(event: &SharedEvent, with_id: bool) -> Bytes {
    if with_id { event.encoded::<SseFrameWithId>() } else { event.encoded::<SseFrame>() }
}
