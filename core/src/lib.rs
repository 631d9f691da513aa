//! Push-event semantics for [tidings](https://docs.rs/tidings): events, topics, cursors with
//! epochs, replay, gap notices, ordering, backpressure, lifecycle and authorization hooks, and
//! the pluggable [`Store`].
//!
//! This crate has no HTTP inside. Depend on it to write a store or a transport; applications
//! depend on the `tidings` facade crate, which re-exports it beside the transports.
//!
//! The smallest working example: publish, subscribe, receive.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tidings_core::{Delivery, Hub, MemoryStore, NewEvent, SubscribeRequest, Topic};
//!
//! let hub = Hub::new(MemoryStore::new());
//! let topic = Topic::parse("greetings").unwrap();
//! let mut sub = hub.subscribe(SubscribeRequest::new(vec![topic.clone()])).await.unwrap();
//!
//! hub.publish(NewEvent::new(topic, "hello")).await.unwrap();
//!
//! let Some(Delivery::Event(event)) = sub.next().await else { panic!() };
//! assert_eq!(&*event.event().data, "hello");
//! // `sub.cursor()` now stands after "hello": a client that comes back with it misses nothing.
//! # }
//! ```
//!
//! The delivery contract (replay, gap, ordering, backpressure, closing) is documented on the
//! [`hub`] module.

pub mod access;
pub mod cursor;
pub mod event;
pub mod hub;
pub mod lifecycle;
pub mod memory;
pub mod retention;
pub mod store;
pub mod topic;

pub use access::{
    AccessRequest, AllowAll, Authorize, AuthorizeFn, Credentials, IdentifyingAuthorize,
    NoCredentials, Refusal, authorize_fn,
};
pub use cursor::{Cursor, CursorError, Epoch};
pub use event::{Event, EventType, EventTypeError, JsonEvent, NewEvent, SharedEvent, WireFormat};
pub use hub::{
    Closing, Delivery, Gap, Hub, HubBuilder, HubStats, LocalTail, LocalTails, PublishError, SubscribeError, SubscribeRequest,
    Subscription,
};
pub use lifecycle::{Connection, Disconnect, Lifecycle, NoLifecycle};
pub use memory::MemoryStore;
pub use retention::Retention;
pub use store::{Bounds, LiveTail, Page, Store, StoreError, TailItem};
pub use topic::{Topic, TopicError};
