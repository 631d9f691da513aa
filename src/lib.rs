//! tidings pushes events from an app backend to its clients, over Server-Sent Events today
//! (long-polling and Web Push share the same core), with exact replay after a reconnect.
//!
//! This facade re-exports [`tidings_core`] (events, topics, cursors, the hub, stores) and,
//! behind features (both default), the transports: `sse` re-exports `tidings_sse` as `sse`,
//! `longpoll` re-exports `tidings_longpoll` as `longpoll`; [`client`] serves the browser
//! client.
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
#[cfg(any(feature = "sse", feature = "longpoll"))]
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

/// Shared HTTP glue (request parsing, credentials, error responses).
#[cfg(any(feature = "sse", feature = "longpoll"))]
pub mod http {
    pub use tidings_http::*;
}
