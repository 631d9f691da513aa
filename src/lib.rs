//! tidings pushes events from an app backend to its clients, over Server-Sent Events,
//! WebSocket, long-polling and Web Push (one core, one contract), with exact replay after a
//! reconnect.
//!
//! This facade re-exports [`tidings_core`] (events, topics, cursors, the hub, stores) and,
//! behind features (all default), the transports: `sse` re-exports `tidings_sse` as `sse`,
//! `websocket` re-exports `tidings_websocket` as `websocket`, `longpoll` re-exports
//! `tidings_longpoll` as `longpoll`, `webpush` re-exports `tidings_webpush` as `webpush`;
//! [`client`] serves the browser client.
//!
//! The smallest working server: one topic, an SSE endpoint, a publish.
//!
//! ```no_run
//! use tidings::{Hub, MemoryStore, NewEvent, Topic, sse::Sse};
//!
//! # #[tokio::main] async fn main() {
//! let hub = Hub::new(MemoryStore::new());
//! let app = axum::Router::new().route("/events", Sse::new(hub.clone()).method_router());
//!
//! // Anywhere in the app:
//! let publisher = hub.clone();
//! tokio::spawn(async move {
//!     publisher.publish(NewEvent::new(Topic::new("news"), "hello")).await.unwrap();
//! });
//!
//! // Serve with every limit on (connections, header size and time, stalled clients), and
//! // on SIGTERM or Ctrl-C tell clients when to come back and stop.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await.unwrap();
//! let shutdown = async move { tidings::http::shutdown_signal().await; hub.shutdown() };
//! tidings::http::Server::new(app).serve(listener, shutdown).await.unwrap();
//! # }
//! ```
//!
//! In a browser: `new EventSource("/events?topic=news")`. The guide is in the repository's
//! `docs/` folder: cursors, gaps, retention and the wire protocol.

pub use tidings_core::*;

/// Every metric tidings records through the [`metrics`](https://docs.rs/metrics) crate, as
/// `(name, kind, help)`. Install a recorder (e.g. `metrics-exporter-prometheus`) at the start of
/// `main` and the metrics flow to it; [`describe_metrics`] adds their help texts.
///
/// Labels: `transport` (`sse`, `longpoll`, `webpush`, or what a third-party transport names),
/// `reason`, `status`, `result`, `op`.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("tidings_subscriptions", "gauge", "Subscriptions open now, by transport."),
    ("tidings_subscriptions_opened_total", "counter", "Subscriptions opened, by transport."),
    ("tidings_subscribe_refused_total", "counter", "Subscriptions refused, by transport and reason (no_topics, too_many_topics, unauthenticated, forbidden, shutting_down, store)."),
    ("tidings_deliveries_total", "counter", "Events delivered to subscribers, by transport (added when a burst ends)."),
    ("tidings_replays_total", "counter", "Subscriptions that opened behind the end of the log (a cursor to replay from, or a gap), by transport."),
    ("tidings_replayed_events_total", "counter", "Events read from the store for replay or catch-up, by transport."),
    ("tidings_gaps_total", "counter", "Gap notices delivered, by transport."),
    ("tidings_lagged_total", "counter", "Times a subscriber fell behind the live ring and caught up from the store, by transport."),
    ("tidings_published_total", "counter", "Events published."),
    ("tidings_publish_errors_total", "counter", "Publishes refused, by reason (too_large, store)."),
    ("tidings_store_seconds", "histogram", "Store latency in seconds, by operation (append, read_after)."),
    ("tidings_http_connections", "gauge", "HTTP connections open now (tidings::http::Server)."),
    ("tidings_http_refused_connections_total", "counter", "Connections refused, by reason (capacity: 503, per_ip: 429, dropped: closed unanswered)."),
    ("tidings_http_errors_total", "counter", "Error answers sent by tidings' HTTP routes, by status."),
    ("tidings_push_subscriptions", "gauge", "Web Push subscriptions served now."),
    ("tidings_push_results_total", "counter", "Web Push send results, by result (delivered, delivered_truncated, gone, too_large, rejected, endpoint_refused, rate_limited, unavailable, expired, skipped_online)."),
    ("tidings_push_send_seconds", "histogram", "Time for one Web Push send, in seconds."),
];

/// Registers the help text of every metric in [`METRICS`] with the installed recorder: call it
/// once, after installing one.
pub fn describe_metrics() {
    for &(name, kind, help) in METRICS {
        match kind {
            "gauge" => metrics::describe_gauge!(name, help),
            "histogram" => metrics::describe_histogram!(name, help),
            _ => metrics::describe_counter!(name, help),
        }
    }
}

/// The Server-Sent Events transport.
#[cfg(feature = "sse")]
pub mod sse {
    pub use tidings_sse::*;
}

/// The long-polling transport.
#[cfg(feature = "longpoll")]
pub mod longpoll {
    pub use tidings_longpoll::*;
}

/// The WebSocket transport (`tidings-websocket`): the same events and cursors over one socket
/// whose topics change while it is open, with a return channel.
#[cfg(feature = "websocket")]
pub mod websocket {
    pub use tidings_websocket::*;
}

/// The durable SQLite store.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use tidings_sqlite::*;
}

/// The Redis Streams store, for several nodes sharing one log.
#[cfg(feature = "redis")]
pub mod redis {
    pub use tidings_redis::*;
}

/// The Web Push transport (feature `webpush`): `tidings_webpush` re-exported.
#[cfg(feature = "webpush")]
pub mod webpush {
    pub use tidings_webpush::*;
}

/// The browser client (`client/tidings.js`), served by the application.
#[cfg(any(feature = "sse", feature = "longpoll", feature = "websocket"))]
pub mod client {
    use axum::http::{HeaderValue, header};
    use axum::response::IntoResponse;
    use axum::routing::{MethodRouter, get};

    /// The client's source: an ES module with no dependency and no build step.
    pub const SCRIPT: &str = include_str!("../client/tidings.js");

    /// The service worker for Web Push (`client/tidings-sw.js`): shows each pushed event as a
    /// notification, once per id, and fetches events too large for a push from the long-poll
    /// endpoint (`?poll=/path` on its URL; default `/poll`).
    pub const SERVICE_WORKER: &str = include_str!("../client/tidings-sw.js");

    /// A `GET` route that serves [`SERVICE_WORKER`]; mount it at `/tidings-sw.js` (a service
    /// worker controls the pages under the path it is served from).
    pub fn service_worker_route<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
        get(|| async { script(SERVICE_WORKER) })
    }

    fn script(source: &'static str) -> axum::response::Response {
        let mut response = source.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    /// A `GET` route that serves [`SCRIPT`] as JavaScript; mount it at `/tidings.js`:
    ///
    /// ```no_run
    /// let app: axum::Router = axum::Router::new().route("/tidings.js", tidings::client::route());
    /// ```
    pub fn route<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
        get(|| async { script(SCRIPT) })
    }
}

/// Shared HTTP glue (request parsing, credentials, error responses), and the server apps run
/// ([`Server`](http::Server), from [`tidings::server`](crate::server)).
#[cfg(any(feature = "sse", feature = "longpoll", feature = "websocket"))]
pub mod http {
    pub use tidings_http::*;
    pub use tidings_server::{Server, ServerStats, ServerStatsHandle, shutdown_signal, stall_timeout};
}

/// The HTTP server tidings apps run (`tidings-server`): a drop-in for `axum::serve` with
/// per-client limits, reverse-proxy awareness and streams written straight to the socket.
#[cfg(any(feature = "sse", feature = "longpoll", feature = "websocket"))]
pub mod server {
    pub use tidings_server::*;
}
