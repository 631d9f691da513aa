//! The long-polling transport for tidings: the same events, replay and gaps as SSE, for
//! clients and proxies where a stream does not work.
//!
//! `GET /poll?topic=a&topic=b&cursor=C&timeout=25` answers as soon as events after the cursor
//! exist, or after `timeout` seconds (default 25, at most 60), with a JSON batch:
//!
//! ```json
//! {"events": [{"id": "<cursor after this event>", "topic": "a", "event": null, "data": "..."}],
//!  "cursor": "<cursor after the batch>",
//!  "gap": null}
//! ```
//!
//! The client sends `cursor` back on its next poll. A poll without a cursor answers at once,
//! with no events and the cursor of the current end of the log. `gap` is
//! `{"topics": [...], "id": "<cursor after the gap>"}` when the events after the cursor are not
//! all retained; the batch's events are what remains. Batches are bounded in count and bytes;
//! what does not fit comes with the next poll. Every poll is independent: any node holding the
//! same store can answer it, so no sticky sessions are needed. See `docs/protocol.md`.
//!
//! ```no_run
//! use tidings_core::{Hub, MemoryStore};
//! use tidings_longpoll::LongPoll;
//!
//! # #[tokio::main] async fn main() {
//! let hub = Hub::new(MemoryStore::new());
//! let app = axum::Router::new().route("/poll", LongPoll::new(hub).method_router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! # Errors
//!
//! A 400 for an invalid topic, no topic, too many topics, or a `timeout` that is not a number of
//! seconds from 0 to the maximum; 401/403 from the authorization hook; 503 (with `Retry-After`)
//! while the hub shuts down. A malformed cursor is not an error: it yields a gap.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use tidings_core::{Delivery, Hub, Subscription, Topic};
use tidings_http::{HttpError, SubscribeParams};
use tower_http::cors::CorsLayer;

/// The transport's name, as lifecycle and authorization hooks see it.
pub const TRANSPORT: &str = "longpoll";

/// A long-polling endpoint over a [`Hub`]. By-value builder; every setter states its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct LongPoll {
    hub: Hub,
    default_timeout: Duration,
    max_timeout: Duration,
    max_events: usize,
    max_bytes: usize,
    default_topics: Vec<Topic>,
    cors: Option<CorsLayer>,
}

impl tidings_http::Endpoint for LongPoll {
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send {
        LongPoll::handle(self, request)
    }

    fn cors(&self) -> Option<CorsLayer> {
        self.cors.clone()
    }
}

/// The JSON of an event without its per-subscriber `id`, shared with the other JSON
/// transports (it lives in the core, so each event is encoded once for all of them).
pub use tidings_core::JsonEvent;

impl LongPoll {
    /// An endpoint over `hub`.
    pub fn new(hub: Hub) -> LongPoll {
        LongPoll {
            hub,
            default_timeout: Duration::from_secs(25),
            max_timeout: Duration::from_secs(60),
            max_events: 100,
            max_bytes: 1 << 20,
            default_topics: Vec::new(),
            cors: None,
        }
    }

    /// How long a poll waits for events when it names no `timeout` (default 25 s).
    pub fn default_timeout(mut self, timeout: Duration) -> LongPoll {
        self.default_timeout = timeout;
        self
    }

    /// The longest `timeout` a poll may ask for (default 60 s); longer is a 400.
    pub fn max_timeout(mut self, timeout: Duration) -> LongPoll {
        self.max_timeout = timeout;
        self
    }

    /// The most events in one batch (default 100).
    ///
    /// # Panics
    ///
    /// Panics if `n` is 0.
    pub fn max_batch_events(mut self, n: usize) -> LongPoll {
        assert!(n > 0, "a batch holds at least one event");
        self.max_events = n;
        self
    }

    /// The payload bytes after which a batch closes (default 1 MiB; a batch always holds at
    /// least one event, however large).
    pub fn max_batch_bytes(mut self, bytes: usize) -> LongPoll {
        self.max_bytes = bytes;
        self
    }

    /// The topics polled when a request names none (default: none, which is a 400).
    pub fn default_topics(mut self, topics: Vec<Topic>) -> LongPoll {
        self.default_topics = topics;
        self
    }

    /// Answers cross-origin requests with this CORS policy (default: no CORS headers).
    pub fn cors(mut self, cors: CorsLayer) -> LongPoll {
        self.cors = Some(cors);
        self
    }

    /// A `GET` handler, to mount with [`Router::route`].
    pub fn method_router<S: Clone + Send + Sync + 'static>(self) -> MethodRouter<S> {
        tidings_http::method_router(self)
    }

    /// A router that answers polls at `/` (a tower `Service`).
    pub fn into_router(self) -> Router {
        tidings_http::router(self)
    }

    /// Answers one poll.
    pub async fn handle(&self, request: Request) -> Response {
        let (parts, _body) = request.into_parts();
        let params = match SubscribeParams::from_parts(&parts, "cursor") {
            Ok(params) => params,
            Err(err) => return err.into_response(),
        };
        let timeout = match self.timeout(&params.query) {
            Ok(t) => t,
            Err(err) => return err.into_response(),
        };
        let subscription =
            match tidings_http::subscribe(&self.hub, &parts, &params, &self.default_topics, TRANSPORT).await {
                Ok(s) => s,
                Err(err) => return err.into_response(),
            };
        // Nothing of the request is needed while the poll waits: free it now.
        let has_cursor = params.cursor.is_some();
        drop((parts, params));
        if !has_cursor {
            return json_response(Batch::empty(&subscription).into_body());
        }
        // The answer goes back at once; its body waits for the batch. Only the subscription
        // and its timer are held while the poll waits, not this handler, the router's futures
        // or the request: a server that writes the body itself (`tidings::http::Server`) waits
        // for it before writing anything and sends it with its `Content-Length` then.
        let waiting = collect(subscription, timeout, self.max_events, self.max_bytes);
        json_response(Body::new(PendingBatch::Waiting { waiting }))
    }

    fn timeout(&self, query: &[(String, String)]) -> Result<Duration, HttpError> {
        let Some((_, raw)) = query.iter().find(|(k, _)| k == "timeout") else {
            return Ok(self.default_timeout);
        };
        let max = self.max_timeout.as_secs_f64();
        match raw.parse::<f64>() {
            Ok(secs) if secs.is_finite() && (0.0..=max).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
            _ => Err(HttpError::bad_request(format!(
                "timeout must be a number of seconds from 0 to {max}, got {:?}",
                raw.chars().take(32).collect::<String>()
            ))),
        }
    }
}

/// Takes what is ready (or waits up to `timeout` for the first delivery), within bounds, and
/// returns the batch's body.
// Not an `async fn`: that would keep the subscription twice in the future (argument and
// local), and the future is what a waiting poll holds.
#[allow(clippy::manual_async_fn)]
fn collect(
    mut sub: Subscription,
    timeout: Duration,
    max_events: usize,
    max_bytes: usize,
) -> impl Future<Output = Chunks> + Send + 'static {
    async move {
        // What is already there (a replay from the store, however slow the store) does not count
        // against the timeout; only waiting for new events does.
        let first = match sub.next_ready().await {
            Some(delivery) => Some(delivery),
            None => match tokio::time::timeout(timeout, sub.next()).await {
                Err(_) => return Batch::empty(&sub).into_body(),
                Ok(delivery) => delivery,
            },
        };
        // Boxed: a waiting poll carries no room for the batch being made.
        Box::pin(fill(&mut sub, first, max_events, max_bytes)).await
    }
}

/// Makes the batch from `first` and what else is ready, within bounds.
async fn fill(sub: &mut Subscription, first: Option<Delivery>, max_events: usize, max_bytes: usize) -> Chunks {
    let mut batch = Batch::empty(sub);
    let mut next = first;
    loop {
        match next {
            None => break,
            Some(Delivery::Event(event)) => {
                let cursor = sub.cursor().to_string();
                batch.bytes += event.event().data.len();
                batch.events.push((cursor.clone(), event.encoded::<JsonEvent>()));
                batch.cursor = cursor;
            }
            Some(Delivery::Gap(gap)) => {
                if !batch.events.is_empty() || batch.gap.is_some() {
                    // Not consumed for the client: its cursor stays before the gap, so the
                    // next poll reports it first.
                    break;
                }
                let cursor = sub.cursor().to_string();
                batch.gap = Some((gap.topics, cursor.clone()));
                batch.cursor = cursor;
            }
            Some(Delivery::Closing(closing)) => {
                batch.retry = Some(closing.reconnect_after);
                break;
            }
            Some(_) => break,
        }
        if batch.events.len() >= max_events || batch.bytes >= max_bytes {
            break;
        }
        next = sub.next_ready().await;
    }
    batch.into_body()
}

/// A `200` JSON answer with `body`.
fn json_response(body: impl Into<Body>) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pin_project_lite::pin_project! {
    /// The body of a poll that waits: nothing until its batch is ready, then the batch, whose
    /// length is known from then on. Dropping it (the client went away) ends the subscription.
    /// The waiting future lives inside the body (one allocation for both).
    #[project = PendingProj]
    enum PendingBatch<F> {
        Waiting { #[pin] waiting: F },
        Ready { chunks: Chunks },
    }
}

impl<F: Future<Output = Chunks>> http_body::Body for PendingBatch<F> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        loop {
            match self.as_mut().project() {
                PendingProj::Waiting { waiting } => {
                    let chunks = std::task::ready!(waiting.poll(cx));
                    // The subscription ends here, as soon as the batch is made.
                    self.set(PendingBatch::Ready { chunks });
                }
                PendingProj::Ready { chunks } => return std::pin::Pin::new(chunks).poll_frame(cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PendingBatch::Waiting { .. } => false,
            PendingBatch::Ready { chunks } => chunks.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            PendingBatch::Waiting { .. } => http_body::SizeHint::default(),
            PendingBatch::Ready { chunks } => chunks.size_hint(),
        }
    }
}

/// A body of shared chunks whose total length is known (so that it goes out with a
/// `Content-Length`, and a server may write it whole).
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl From<Chunks> for Body {
    fn from(chunks: Chunks) -> Body {
        Body::new(chunks)
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let chunk = self.chunks.pop_front();
        if let Some(chunk) = &chunk {
            self.remaining -= chunk.len() as u64;
        }
        std::task::Poll::Ready(chunk.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

struct Batch {
    events: Vec<(String, Bytes)>,
    bytes: usize,
    cursor: String,
    gap: Option<(Vec<Topic>, String)>,
    retry: Option<Duration>,
}

impl Batch {
    fn empty(sub: &Subscription) -> Batch {
        Batch { events: Vec::new(), bytes: 0, cursor: sub.cursor().to_string(), gap: None, retry: None }
    }

    /// The JSON body as a list of chunks: shared event encodings are not copied.
    fn into_body(self) -> Chunks {
        let mut chunks: Vec<Bytes> = Vec::with_capacity(self.events.len() * 2 + 2);
        let mut head = BytesMut::from(&b"{\"events\":["[..]);
        for (i, (id, json)) in self.events.into_iter().enumerate() {
            if i > 0 {
                head.put_u8(b',');
            }
            head.put_slice(b"{\"id\":\"");
            head.put_slice(id.as_bytes());
            head.put_slice(b"\",");
            chunks.push(head.split().freeze());
            chunks.push(json);
        }
        let gap = match self.gap {
            None => serde_json::Value::Null,
            Some((topics, id)) => serde_json::json!({ "topics": topics, "id": id }),
        };
        head.put_slice(b"],\"cursor\":\"");
        head.put_slice(self.cursor.as_bytes());
        head.put_slice(b"\",\"gap\":");
        head.put_slice(gap.to_string().as_bytes());
        if let Some(retry) = self.retry {
            head.put_slice(format!(",\"retry_ms\":{}", retry.as_millis()).as_bytes());
        }
        head.put_u8(b'}');
        chunks.push(head.freeze());
        Chunks { remaining: chunks.iter().map(|c| c.len() as u64).sum(), chunks: chunks.into() }
    }
}
