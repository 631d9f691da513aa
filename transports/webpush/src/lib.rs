//! The Web Push transport for [tidings](https://docs.rs/tidings): the same events, delivered
//! through the platform's push service (RFC 8030) when the client is offline, encrypted with
//! `aes128gcm` (RFC 8291) and signed with VAPID (RFC 8292).
//!
//! A push subscription is one more subscriber of the [`Hub`](tidings_core::Hub), with its own
//! cursor kept in a [`PushRegistry`]: events are pushed in log order per topic, a restart
//! resumes where pushing stopped, and a gap (retention passed) becomes one push that says so.
//! See [`dispatch`] for the delivery contract and what each push-service answer does,
//! [`message`] for the payload, and [`endpoint`] for the rules that keep a client-supplied
//! endpoint from making the server call private addresses.
//!
//! The smallest working set-up:
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use tidings_core::{Hub, MemoryStore};
//! use tidings_webpush::{MemoryRegistry, VapidKeys, WebPush};
//!
//! let hub = Hub::new(MemoryStore::new());
//! let keys = VapidKeys::load_or_generate("./tidings-data/vapid.key").unwrap();
//! let push = WebPush::builder(hub.clone(), MemoryRegistry::new(), keys, "mailto:ops@example.com")
//!     .unwrap()
//!     .start()
//!     .await
//!     .unwrap();
//! // GET /push/vapid-public-key, POST and DELETE /push/subscriptions:
//! let app: axum::Router = push.router();
//! # let _ = app; }
//! ```
//!
//! The browser side is `client/tidings-sw.js` (a service worker that shows each pushed event
//! once, and fetches the ones too large for a push) and `pushManager.subscribe` with
//! [`WebPush::public_key`] as `applicationServerKey`.
//!
//! Crate features: `axum` (default; [`WebPush::router`]), `sqlite` ([`SqlitePushRegistry`]),
//! `test-push-service` (`testing::LocalPushService`, a real push service on 127.0.0.1 that
//! verifies VAPID and decrypts, for tests and benchmarks).

pub mod content;
pub mod dispatch;
mod encrypt;
pub mod endpoint;
#[cfg(feature = "axum")]
pub mod http;
pub mod keys;
pub mod message;
pub mod options;
pub mod presence;
pub mod registry;
pub mod sender;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod subscription;
#[cfg(feature = "test-push-service")]
pub mod testing;
pub mod vapid;

pub use content::{EventContent, PushContent, PushMessages};
pub use dispatch::{
    DeliveryPolicy, PushStats, RegisterError, RegisterRequest, StartError, TRANSPORT, WebPush, WebPushBuilder,
    read_root_certificate,
};
pub use endpoint::{EndpointError, EndpointPolicy};
pub use keys::{KeyError, VapidKeys};
pub use options::{PushOptions, PushTopic, PushTopicError, Urgency};
pub use presence::Presence;
pub use registry::{MemoryRegistry, PushRegistry, Registration, RegistryError};
pub use sender::{PushSender, SendOutcome, SenderError};
#[cfg(feature = "sqlite")]
pub use sqlite::SqlitePushRegistry;
pub use subscription::{PushSubscription, SubscriptionError};
pub use vapid::{Contact, ContactError};
