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

use tidings_core::{Delivery, Hub, SharedEvent, Subscription, Topic};
use tidings_http::SubscribeParams;
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
        let cors = self.cors.clone();
        tidings_http::get_route(cors, move |request: Request| {
            let endpoint = self.clone();
            async move { endpoint.handle(request).await }
        })
    }

    /// A router that streams at `/`, for [`Router::nest`], or to serve as a tower `Service`
    /// on its own (a `Router` is one).
    pub fn into_router(self) -> Router {
        Router::new().route("/", self.method_router())
    }

    /// Answers one request: a stream, or a 4xx/503 before any byte of stream.
    pub async fn handle(&self, request: Request) -> Response {
        let (parts, _body) = request.into_parts();
        let params = match SubscribeParams::from_parts(&parts, "lastEventId") {
            Ok(params) => params,
            Err(err) => return err.into_response(),
        };
        match tidings_http::subscribe(&self.hub, &parts, &params, &self.default_topics, TRANSPORT).await {
            Ok(subscription) => self.stream(subscription),
            Err(err) => err.into_response(),
        }
    }

    fn stream(&self, subscription: Subscription) -> Response {
        let start = (!subscription.starts_with_gap()).then(|| subscription.cursor());
        let preamble = frame::preamble(self.retry.as_millis(), start.as_ref());
        let state = StreamState::new(subscription, self.heartbeat, preamble);
        let body = Body::from_stream(futures_util::stream::unfold(state, StreamState::step));
        let mut response = (StatusCode::OK, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

/// Frames smaller than this are copied into one chunk with their neighbours; larger ones go
/// out as the shared bytes themselves.
const COALESCE_BELOW: usize = 16 * 1024;
/// A burst of ready deliveries is gathered until it holds this much.
const WRITE_BUFFER: usize = 64 * 1024;

/// One SSE response body. Memory per stream is a few hundred bytes while idle: frames are
/// queued as shared `Bytes` (reference counts, not copies) and only a burst of several small
/// frames is copied, once, into a chunk of exactly their size; the scratch space for cursor
/// tokens and the queue are released whenever the stream goes idle.
struct StreamState {
    subscription: Subscription,
    /// Chunks ready to send, in order, and their total length.
    queued: VecDeque<Queued>,
    queued_bytes: usize,
    /// `id:` lines of multi-topic subscribers, split off one allocation per burst.
    ids: BytesMut,
    /// Fires at most once per interval; what it does depends on `last_write`.
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    interval: Duration,
    last_write: Instant,
    done: bool,
}

impl StreamState {
    fn new(subscription: Subscription, interval: Duration, preamble: Bytes) -> StreamState {
        let now = Instant::now();
        StreamState {
            subscription,
            queued_bytes: preamble.len(),
            queued: VecDeque::from([Queued::Bytes(preamble)]),
            ids: BytesMut::new(),
            heartbeat: Box::pin(tokio::time::sleep_until(now + interval)),
            interval,
            last_write: now,
            done: false,
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
                if !self.queued.is_empty() {
                    continue;
                }
                // Idle: give back what a burst needed, then wait for an event or the heartbeat.
                if self.queued.capacity() > 8 {
                    self.queued = VecDeque::new();
                }
                self.ids = BytesMut::new();
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

    /// The next chunk to write: one queued frame as it is, or a run of small frames copied
    /// into one chunk of exactly their size.
    fn next_chunk(&mut self) -> Option<Bytes> {
        let first = self.queued.pop_front()?;
        let small = |q: &Queued| q.len() < COALESCE_BELOW;
        let mut total = first.len();
        let mut run = 0;
        if small(&first) {
            for q in &self.queued {
                if !small(q) || total + q.len() > WRITE_BUFFER {
                    break;
                }
                total += q.len();
                run += 1;
            }
        }
        let chunk = if run == 0 {
            first.into_bytes()
        } else {
            let mut out = BytesMut::with_capacity(total);
            first.copy_into(&mut out);
            for q in self.queued.drain(..run) {
                q.copy_into(&mut out);
            }
            out.freeze()
        };
        self.queued_bytes -= chunk.len();
        Some(chunk)
    }

    fn enqueue(&mut self, chunk: Queued) {
        self.queued_bytes += chunk.len();
        self.queued.push_back(chunk);
    }

    fn push(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Event(event) => {
                if self.subscription.stands_just_after(event.event()) {
                    // One topic: the id line is the event's own cursor, the same for every
                    // subscriber, encoded once with the frame.
                    self.enqueue(Queued::frame(event, true));
                } else {
                    self.enqueue(Queued::frame(event, false));
                    let mut token = std::mem::take(&mut self.ids);
                    if token.capacity() < 64 {
                        token.reserve(2048);
                    }
                    frame::put_frame_end(&mut token, &self.subscription.cursor());
                    self.enqueue(Queued::Bytes(token.split().freeze()));
                    self.ids = token;
                }
            }
            Delivery::Gap(gap) => {
                self.enqueue(Queued::Bytes(frame::gap_frame(&gap, &self.subscription.cursor())));
            }
            Delivery::Closing(closing) => {
                self.done = true;
                self.enqueue(Queued::Bytes(Bytes::from(format!("retry: {}\n\n", closing.reconnect_after.as_millis()))));
            }
            _ => {}
        }
    }
}

/// A chunk waiting to be written: bytes of this stream's own, or an event's shared frame, kept
/// as the event itself (which the delivery handed over) so that copying its frame into a burst
/// touches no reference count shared with other subscribers.
enum Queued {
    Bytes(Bytes),
    Frame {
        event: Arc<SharedEvent>,
        /// [`SseFrameWithId`] rather than [`SseFrame`].
        with_id: bool,
        len: usize,
    },
}

impl Queued {
    fn frame(event: Arc<SharedEvent>, with_id: bool) -> Queued {
        let len = if with_id {
            event.with_encoded::<SseFrameWithId, _>(Bytes::len)
        } else {
            event.with_encoded::<SseFrame, _>(Bytes::len)
        };
        Queued::Frame { event, with_id, len }
    }

    fn len(&self) -> usize {
        match self {
            Queued::Bytes(bytes) => bytes.len(),
            Queued::Frame { len, .. } => *len,
        }
    }

    fn copy_into(&self, out: &mut BytesMut) {
        match self {
            Queued::Bytes(bytes) => out.extend_from_slice(bytes),
            Queued::Frame { event, with_id: true, .. } => {
                event.with_encoded::<SseFrameWithId, _>(|bytes| out.extend_from_slice(bytes));
            }
            Queued::Frame { event, with_id: false, .. } => {
                event.with_encoded::<SseFrame, _>(|bytes| out.extend_from_slice(bytes));
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Queued::Bytes(bytes) => bytes,
            Queued::Frame { event, with_id: true, .. } => event.encoded::<SseFrameWithId>(),
            Queued::Frame { event, with_id: false, .. } => event.encoded::<SseFrame>(),
        }
    }
}
