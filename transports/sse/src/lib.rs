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
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use tidings_core::{Delivery, Hub, Subscription, Topic};
use tidings_http::SubscribeParams;
use tower_http::cors::CorsLayer;

pub use frame::SseFrame;

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

/// Frames smaller than this are copied into one write buffer with their neighbours; larger
/// ones go out as the shared bytes themselves.
const COALESCE_BELOW: usize = 16 * 1024;
/// A write buffer is sent once it holds this much.
const WRITE_BUFFER: usize = 64 * 1024;

struct StreamState {
    subscription: Subscription,
    heartbeat: Duration,
    /// Chunks ready to send, in order.
    queued: VecDeque<Bytes>,
    /// Small frames being gathered into one chunk.
    gathered: BytesMut,
    done: bool,
}

impl StreamState {
    fn new(subscription: Subscription, heartbeat: Duration, preamble: Bytes) -> StreamState {
        let mut gathered = BytesMut::with_capacity(WRITE_BUFFER);
        gathered.extend_from_slice(&preamble);
        StreamState { subscription, heartbeat, queued: VecDeque::new(), gathered, done: false }
    }

    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, StreamState)> {
        loop {
            if let Some(chunk) = self.queued.pop_front() {
                return Some((Ok(chunk), self));
            }
            if !self.gathered.is_empty() {
                let chunk = self.gathered.split().freeze();
                return Some((Ok(chunk), self));
            }
            if self.done {
                return None;
            }
            // A burst (a replay, a busy topic) is gathered without arming a timer per event.
            let mut ready = false;
            while self.gathered.len() < WRITE_BUFFER && self.queued.is_empty() && !self.done {
                match self.subscription.next_ready().await {
                    Some(delivery) => {
                        ready = true;
                        self.push(delivery);
                    }
                    None => break,
                }
            }
            if ready {
                continue;
            }
            // Nothing ready: wait, and send a heartbeat after each idle interval.
            match tokio::time::timeout(self.heartbeat, self.subscription.next()).await {
                Err(_idle) => return Some((Ok(Bytes::from_static(frame::HEARTBEAT)), self)),
                Ok(None) => self.done = true,
                Ok(Some(delivery)) => self.push(delivery),
            }
        }
    }

    fn push(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Event(event) => {
                // The shared frame as is; only the id line is this subscriber's own.
                let frame = event.encoded::<SseFrame>();
                if frame.len() < COALESCE_BELOW {
                    self.gathered.extend_from_slice(&frame);
                } else {
                    self.flush_into_queue();
                    self.queued.push_back(frame);
                }
                // What is gathered always goes out after what is queued.
                self.gathered.extend_from_slice(&frame::frame_end(&self.subscription.cursor()));
            }
            Delivery::Gap(gap) => {
                self.flush_into_queue();
                self.queued.push_back(frame::gap_frame(&gap, &self.subscription.cursor()));
            }
            Delivery::Closing(closing) => {
                self.done = true;
                self.flush_into_queue();
                self.queued.push_back(Bytes::from(format!(
                    "retry: {}\n\n",
                    closing.reconnect_after.as_millis()
                )));
            }
            _ => {}
        }
    }

    fn flush_into_queue(&mut self) {
        if !self.gathered.is_empty() {
            self.queued.push_back(self.gathered.split().freeze());
        }
    }
}
