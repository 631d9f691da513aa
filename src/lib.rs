//! tidings pushes events from an app backend to its clients, over Server-Sent Events today
//! (long-polling and Web Push share the same core), with exact replay after a reconnect.
//!
//! This facade re-exports [`tidings_core`] (events, topics, cursors, the hub, stores) and,
//! behind features, the transports: `sse` (default) re-exports [`tidings_sse`] as [`sse`].
//!
//! The smallest working server: one topic, an SSE endpoint, a publish.
//!
//! ```no_run
//! use tidings::{Hub, MemoryStore, NewEvent, Topic, sse::Sse};
//!
//! # #[tokio::main] async fn main() {
//! let hub = Hub::new(MemoryStore::new());
//! let app = axum::Router::new().route("/events", Sse::new(hub.clone()).method_router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await.unwrap();
//! tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
//!
//! // Anywhere in the app:
//! hub.publish(NewEvent::new(Topic::new("news"), "hello")).await.unwrap();
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

/// Shared HTTP glue (request parsing, credentials, error responses).
#[cfg(feature = "sse")]
pub mod http {
    pub use tidings_http::*;
}
