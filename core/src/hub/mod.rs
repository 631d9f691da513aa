//! The [`Hub`]: publishes into a [`Store`] and fans events out to subscriptions.
//!
//! # Replay
//!
//! A subscription that brings a cursor receives every retained event after it, topic by topic
//! in log order, then live events. There is no loss and no repeat at the seam: the subscription
//! joins the live ring *before* it reads history, and skips live events it already received
//! from the store (positions are per topic and only grow).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tidings_core::{Delivery, Hub, MemoryStore, NewEvent, SubscribeRequest, Topic};
//! let hub = Hub::new(MemoryStore::new());
//! let topic = Topic::new("news");
//! let first = hub.publish(NewEvent::new(topic.clone(), "one")).await.unwrap();
//! hub.publish(NewEvent::new(topic.clone(), "two")).await.unwrap();
//!
//! // A client that saw "one" comes back with its cursor.
//! let token = first.cursor().to_string();
//! let mut sub = hub
//!     .subscribe(SubscribeRequest::new(vec![topic.clone()]).cursor(Some(&token)))
//!     .await
//!     .unwrap();
//! hub.publish(NewEvent::new(topic, "three")).await.unwrap();
//! for expected in ["two", "three"] {
//!     match sub.next().await {
//!         Some(Delivery::Event(e)) => assert_eq!(&*e.event().data, expected),
//!         other => panic!("{other:?}"),
//!     }
//! }
//! # }
//! ```
//!
//! A subscription without a cursor starts at the current end of the log: it receives only
//! events published after it opened. Its [`Subscription::cursor`] is valid from the start, so
//! a client that receives nothing and reconnects still loses nothing.
//!
//! # Gap
//!
//! When the events after a cursor are no longer there, the subscription first yields a
//! [`Delivery::Gap`] naming the affected topics, then everything still retained for them:
//!
//! - **retention**: the cursor points before the oldest retained event of a topic;
//! - **epoch**: the cursor belongs to another incarnation of the log (a restarted memory
//!   store, a flushed Redis) — all topics are named;
//! - **unknown**: the token is malformed, truncated, forged, oversized, or points past the end
//!   of the log — all topics are named. This is never an error to the client.
//!
//! A topic that the cursor does not mention (the client added a topic) starts at the current
//! end, without a gap. The application decides how to resync after a gap.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tidings_core::{Delivery, Hub, MemoryStore, SubscribeRequest, Topic};
//! let hub = Hub::new(MemoryStore::new());
//! let topics = vec![Topic::new("a"), Topic::new("b")];
//! let mut sub = hub
//!     .subscribe(SubscribeRequest::new(topics.clone()).cursor(Some("not-a-cursor")))
//!     .await
//!     .unwrap();
//! match sub.next().await {
//!     Some(Delivery::Gap(gap)) => assert_eq!(gap.topics, topics),
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```
//!
//! # Ordering
//!
//! Per topic, every subscription sees events in log order, each at most once. Across topics
//! there is no order: a replay delivers one topic's backlog after another's.
//!
//! # Backpressure
//!
//! Live events go through one shared ring of [`HubBuilder::ring_capacity`] slots (default
//! 1024) holding `Arc<SharedEvent>`s: each event is stored once and encoded once per wire
//! format, whatever the number of subscribers; there is no queue per subscriber. A subscription
//! that falls more than the ring's capacity behind is told so by the ring, reads the store from
//! its own positions in pages of [`HubBuilder::page_size`] events (default 256), then rejoins the
//! ring. Its memory stays bounded by one page, whatever it does; retention that overtakes a very
//! slow subscription turns into a gap notice, never silent loss.
//!
//! # The live path
//!
//! A store whose appends all happen in this process ([`MemoryStore`](crate::MemoryStore), the
//! SQLite store) takes a [`LocalTail`] from the hub ([`Store::attach_local_tail`]) and puts each
//! event into the ring itself, in the publisher's task, in log order ([`LocalTails`] does so
//! outside the lock that orders the appends, so readers of the store do not wait while the
//! subscriptions are woken). Other stores (Redis, where other nodes append too) are read through their
//! [`Store::live_tail`] by one task per hub, the pump.
//!
//! # Closing
//!
//! [`Hub::shutdown`] makes every subscription yield one [`Delivery::Closing`] with a
//! reconnection delay drawn uniformly from [`HubBuilder::reconnect_jitter`] (default 1 s to
//! 5 s), so that clients do not all return at once, and then end. New subscriptions are refused
//! with [`SubscribeError::ShuttingDown`].

mod subscription;

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_stream::StreamExt;

pub use subscription::{Closing, Delivery, Gap, SubscribeRequest, Subscription};

use crate::access::{AccessRequest, AllowAll, Authorize, Refusal};
use crate::event::{Event, NewEvent, SharedEvent};
use crate::lifecycle::{Lifecycle, NoLifecycle};
use crate::store::{Store, StoreError, TailItem};

/// What travels through the live ring.
#[derive(Debug, Clone)]
pub(crate) enum RingItem {
    Event(Arc<SharedEvent>),
    /// The store's tail may have missed events: every subscription re-reads the store.
    Resync,
    /// The hub is shutting down ([`HubInner::closing`] is set): wakes waiting subscriptions.
    Shutdown,
}

/// A hub's way in for the events a store appends in this process: handed to
/// [`Store::attach_local_tail`], which a store accepts when every append to its log goes through
/// it (nothing else writes the log).
///
/// The store calls [`announce`](LocalTail::announce) for each event it appends, after the event
/// is readable and before `append` returns, **in log order** ([`LocalTails`] keeps that order
/// for several publishers at once). Each announcement puts the event into the hub's live ring
/// and wakes the subscriptions waiting for it, so it costs a little time per waiting
/// subscription.
#[derive(Clone)]
pub struct LocalTail {
    ring: broadcast::WeakSender<RingItem>,
}

impl LocalTail {
    /// Hands one appended event to the hub. Returns `false` once the hub is gone: the store
    /// then drops this `LocalTail`.
    pub fn announce(&self, event: &Event) -> bool {
        match self.ring.upgrade() {
            Some(ring) => {
                // No receiver is not an error: nobody is listening.
                let _ = ring.send(RingItem::Event(Arc::new(SharedEvent::new(event.clone()))));
                true
            }
            None => false,
        }
    }
}

impl fmt::Debug for LocalTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTail").field("hub_alive", &(self.ring.strong_count() > 0)).finish()
    }
}

/// The hubs attached to a store ([`Store::attach_local_tail`]), for a store to announce its
/// appends to them **outside** the lock that orders its appends, yet in log order: under that
/// lock, [`queue`](LocalTails::queue) the event; after releasing it, and before `append`
/// returns, [`flush`](LocalTails::flush).
///
/// Waking the subscriptions that wait for an event takes a while when there are many; done
/// under the store's lock, it would hold up every reader of the store (a client opening a
/// subscription reads it) as long. `flush` announces every queued event in order, under a lock
/// of its own; a publisher whose event an earlier `flush` already announced returns at once.
///
/// ```
/// # use std::sync::Mutex;
/// # use tidings_core::{Event, LocalTail, LocalTails};
/// struct MyLog { events: Mutex<Vec<Event>>, hubs: LocalTails }
/// impl MyLog {
///     fn append(&self, event: Event) {
///         {
///             let mut events = self.events.lock().unwrap();
///             events.push(event.clone());
///             self.hubs.queue(event); // under the lock: in log order
///         }
///         self.hubs.flush(); // outside it, before returning
///     }
///     fn attach_local_tail(&self, tail: LocalTail) -> bool {
///         self.hubs.attach(tail);
///         true
///     }
/// }
/// ```
#[derive(Debug, Default)]
pub struct LocalTails {
    attached: AtomicBool,
    queued: std::sync::Mutex<Vec<Event>>,
    /// The hubs; held while announcing, which keeps announcements in queue order.
    hubs: std::sync::Mutex<Vec<LocalTail>>,
}

impl LocalTails {
    /// No hub yet.
    pub fn new() -> LocalTails {
        LocalTails::default()
    }

    /// Adds a hub.
    pub fn attach(&self, tail: LocalTail) {
        lock(&self.hubs).push(tail);
        self.attached.store(true, Ordering::Release);
    }

    /// Queues `event` for the hubs (nothing, if no hub is attached). Call it under the lock
    /// that orders the store's appends.
    pub fn queue(&self, event: Event) {
        if self.attached.load(Ordering::Acquire) {
            lock(&self.queued).push(event);
        }
    }

    /// Announces every queued event to every hub, in order. Call it after releasing the
    /// store's lock and before `append` returns. Drops the hubs that are gone.
    pub fn flush(&self) {
        if !self.attached.load(Ordering::Acquire) {
            return;
        }
        let mut hubs = lock(&self.hubs);
        let events = std::mem::take(&mut *lock(&self.queued));
        for event in &events {
            hubs.retain(|hub| hub.announce(event));
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is a push, a take or a filter: a panic cannot leave them half done.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes events and opens subscriptions. Cheap to clone; all clones share one hub.
///
/// See the [module documentation](self) for the delivery contract.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

pub(crate) struct HubInner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ring: broadcast::Sender<RingItem>,
    pub(crate) config: Config,
    pub(crate) authorize: Arc<dyn Authorize>,
    pub(crate) lifecycle: Arc<dyn Lifecycle>,
    pub(crate) next_connection: AtomicU64,
    pub(crate) lagged: AtomicU64,
    /// Subscriptions open now (decremented before `on_disconnect` runs).
    pub(crate) open: AtomicU64,
    pub(crate) gaps: AtomicU64,
    /// `true` once the hub shuts down; read by subscriptions on every step (an atomic load: a
    /// watch's read lock would be a write to memory shared by thousands of subscriptions).
    pub(crate) closing: AtomicBool,
    /// `true` once the hub shuts down, for tasks that wait for it (the pump, opening).
    pub(crate) shutdown: watch::Sender<bool>,
    /// `true` once the pump has opened the store's live tail.
    pub(crate) tail_ready: watch::Receiver<bool>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) ring_capacity: usize,
    pub(crate) page_size: usize,
    pub(crate) max_topics: usize,
    pub(crate) max_data_len: usize,
    pub(crate) reconnect_jitter: RangeInclusive<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ring_capacity: 1024,
            page_size: 256,
            max_topics: 64,
            max_data_len: 1 << 20,
            reconnect_jitter: Duration::from_secs(1)..=Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .field("subscribers", &self.inner.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counters of a hub, from [`Hub::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HubStats {
    /// Subscriptions open now.
    pub subscribers: usize,
    /// Subscriptions ever opened.
    pub connections: u64,
    /// Times a subscription fell behind the live ring and caught up from the store.
    pub lagged: u64,
    /// Gap notices delivered.
    pub gaps: u64,
}

/// Builds a [`Hub`]. Every setter states its default.
#[must_use]
pub struct HubBuilder {
    store: Arc<dyn Store>,
    config: Config,
    authorize: Arc<dyn Authorize>,
    lifecycle: Arc<dyn Lifecycle>,
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl HubBuilder {
    /// Slots in the shared live ring (default 1024). A subscription further behind than this
    /// catches up from the store.
    ///
    /// # Panics
    ///
    /// Panics if `capacity` is 0.
    pub fn ring_capacity(mut self, capacity: usize) -> Self {
        assert!(capacity > 0, "the ring needs at least one slot");
        self.config.ring_capacity = capacity;
        self
    }

    /// Events read from the store at a time during replay and catch-up (default 256). Bounds
    /// the memory a subscription holds.
    ///
    /// # Panics
    ///
    /// Panics if `size` is 0.
    pub fn page_size(mut self, size: usize) -> Self {
        assert!(size > 0, "pages hold at least one event");
        self.config.page_size = size;
        self
    }

    /// The most topics one subscription may name (default 64).
    ///
    /// # Panics
    ///
    /// Panics if `max` is larger than [`MAX_CURSOR_POSITIONS`](crate::cursor::MAX_CURSOR_POSITIONS)
    /// (one cursor must hold every topic of a subscription).
    pub fn max_topics(mut self, max: usize) -> Self {
        assert!(
            max <= crate::cursor::MAX_CURSOR_POSITIONS,
            "a cursor holds at most {} topics",
            crate::cursor::MAX_CURSOR_POSITIONS
        );
        self.config.max_topics = max;
        self
    }

    /// The largest event payload accepted by [`Hub::publish`], in bytes (default 1 MiB).
    pub fn max_data_len(mut self, bytes: usize) -> Self {
        self.config.max_data_len = bytes;
        self
    }

    /// The range from which each subscription draws its reconnection delay when the hub shuts
    /// down (default 1 s to 5 s).
    pub fn reconnect_jitter(mut self, range: RangeInclusive<Duration>) -> Self {
        self.config.reconnect_jitter = range;
        self
    }

    /// The authorization hook (default: [`AllowAll`]).
    pub fn authorize(mut self, hook: impl Authorize) -> Self {
        self.authorize = Arc::new(hook);
        self
    }

    /// The lifecycle hooks (default: none).
    pub fn lifecycle(mut self, hooks: impl Lifecycle) -> Self {
        self.lifecycle = Arc::new(hooks);
        self
    }

    /// Builds the hub: the store takes a [`LocalTail`] if it can
    /// ([`Store::attach_local_tail`]); otherwise the hub starts its pump (the task that moves the
    /// store's live tail into the ring).
    ///
    /// # Panics
    ///
    /// Panics if called outside a Tokio runtime.
    pub fn build(self) -> Hub {
        let (ring, _) = broadcast::channel(self.config.ring_capacity);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let local = self.store.attach_local_tail(LocalTail { ring: ring.downgrade() });
        // With a local tail the ring is live at once (a watch keeps its last value after its
        // sender is gone).
        let (ready_tx, tail_ready) = watch::channel(local);
        if !local {
            tokio::spawn(pump(self.store.clone(), ring.clone(), shutdown_rx, ready_tx));
        }
        Hub {
            inner: Arc::new(HubInner {
                store: self.store,
                ring,
                config: self.config,
                authorize: self.authorize,
                lifecycle: self.lifecycle,
                next_connection: AtomicU64::new(1),
                lagged: AtomicU64::new(0),
                open: AtomicU64::new(0),
                gaps: AtomicU64::new(0),
                closing: AtomicBool::new(false),
                shutdown,
                tail_ready,
            }),
        }
    }
}

impl HubInner {
    /// The authorization hook's answer, and the recipient it names.
    pub(crate) async fn check_access(&self, request: &AccessRequest<'_>) -> Result<Option<String>, Refusal> {
        self.authorize.authorize(request).await?;
        Ok(self.authorize.identify(request))
    }

    /// Starts the shutdown: the flag first, then the ring's wake-up, so a subscription woken
    /// by it sees the flag.
    pub(crate) fn close(&self) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            self.shutdown.send_replace(true);
            let _ = self.ring.send(RingItem::Shutdown);
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

impl Drop for HubInner {
    fn drop(&mut self) {
        // Stops the pump.
        self.shutdown.send_replace(true);
    }
}

/// Moves the store's live tail into the ring, wrapping each event once.
async fn pump(
    store: Arc<dyn Store>,
    ring: broadcast::Sender<RingItem>,
    mut shutdown: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut reopened = false;
    loop {
        let tail = tokio::select! {
            tail = store.live_tail() => tail,
            _ = shutdown.wait_for(|&s| s) => return,
        };
        let mut tail = match tail {
            Ok(tail) => tail,
            Err(err) => {
                tracing::warn!(%err, "cannot open the store's live tail; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|&s| s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        ready.send_replace(true);
        if reopened {
            let _ = ring.send(RingItem::Resync);
        }
        reopened = true;
        loop {
            let item = tokio::select! {
                item = tail.next() => item,
                _ = shutdown.wait_for(|&s| s) => return,
            };
            let item = match item {
                Some(TailItem::Event(event)) => RingItem::Event(Arc::new(SharedEvent::new(event))),
                Some(TailItem::Resync) => RingItem::Resync,
                None => break,
            };
            // No receiver is not an error: nobody is listening.
            let _ = ring.send(item);
        }
    }
}

/// Why [`Hub::publish`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The payload is larger than [`HubBuilder::max_data_len`].
    TooLarge {
        /// The payload's length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The store failed (it may be unreachable); nothing was published.
    Store(StoreError),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::TooLarge { len, limit } => {
                write!(f, "event data is {len} bytes, the limit is {limit}")
            }
            PublishError::Store(err) => write!(f, "store unavailable: {err}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Store(err) => Some(err),
            PublishError::TooLarge { .. } => None,
        }
    }
}

/// Adds a refused subscription (or change of one) to `tidings_subscribe_refused_total`.
pub(crate) fn count_refusal(transport: &'static str, err: &SubscribeError) {
    let reason = match err {
        SubscribeError::NoTopics => "no_topics",
        SubscribeError::TooManyTopics { .. } => "too_many_topics",
        SubscribeError::Refused(Refusal::Unauthenticated(_)) => "unauthenticated",
        SubscribeError::Refused(_) => "forbidden",
        SubscribeError::ShuttingDown => "shutting_down",
        _ => "store",
    };
    metrics::counter!("tidings_subscribe_refused_total", "transport" => transport, "reason" => reason).increment(1);
}

/// Why [`Hub::subscribe`] refused a subscription. Transports map each to a 4xx or 503.
#[derive(Debug)]
#[non_exhaustive]
pub enum SubscribeError {
    /// No topic was named (400).
    NoTopics,
    /// More topics than [`HubBuilder::max_topics`] (400).
    TooManyTopics {
        /// The limit.
        limit: usize,
    },
    /// The [`Authorize`] hook refused (401 or 403).
    Refused(Refusal),
    /// The hub is shutting down (503).
    ShuttingDown,
    /// The store failed (503).
    Store(StoreError),
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::NoTopics => f.write_str("no topic given"),
            SubscribeError::TooManyTopics { limit } => {
                write!(f, "too many topics, the limit is {limit}")
            }
            SubscribeError::Refused(r) => fmt::Display::fmt(r, f),
            SubscribeError::ShuttingDown => f.write_str("server is shutting down"),
            SubscribeError::Store(err) => write!(f, "store unavailable: {err}"),
        }
    }
}

impl std::error::Error for SubscribeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SubscribeError::Store(err) => Some(err),
            SubscribeError::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl Hub {
    /// A hub over `store` with default settings.
    ///
    /// # Panics
    ///
    /// Panics if called outside a Tokio runtime.
    pub fn new(store: impl Store) -> Hub {
        Hub::builder(store).build()
    }

    /// A builder for a hub over `store`.
    pub fn builder(store: impl Store) -> HubBuilder {
        Hub::builder_shared(Arc::new(store))
    }

    /// A builder for a hub over a store that is shared with other code.
    pub fn builder_shared(store: Arc<dyn Store>) -> HubBuilder {
        HubBuilder {
            store,
            config: Config::default(),
            authorize: Arc::new(AllowAll),
            lifecycle: Arc::new(NoLifecycle),
        }
    }

    /// The store behind this hub.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Appends an event to the log; the store assigns its position. Returns once the store has
    /// it; subscriptions receive it shortly after.
    pub async fn publish(&self, event: NewEvent) -> Result<Event, PublishError> {
        let limit = self.inner.config.max_data_len;
        if event.data.len() > limit {
            metrics::counter!("tidings_publish_errors_total", "reason" => "too_large").increment(1);
            return Err(PublishError::TooLarge { len: event.data.len(), limit });
        }
        let started = std::time::Instant::now();
        let span = tracing::debug_span!("publish", topic = %event.topic.as_str());
        let result = tracing::Instrument::instrument(self.inner.store.append(event), span).await;
        metrics::histogram!("tidings_store_seconds", "op" => "append").record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => metrics::counter!("tidings_published_total").increment(1),
            Err(_) => metrics::counter!("tidings_publish_errors_total", "reason" => "store").increment(1),
        }
        result.map_err(PublishError::Store)
    }

    /// Opens a subscription (authorization first, then the lifecycle's `on_connect`).
    pub async fn subscribe(
        &self,
        request: SubscribeRequest<'_>,
    ) -> Result<Subscription, SubscribeError> {
        let transport = request.transport;
        let result = Subscription::open(self.inner.clone(), request, None).await;
        if let Err(err) = &result {
            count_refusal(transport, err);
        }
        result
    }

    /// Runs the authorization hook for `request` without opening anything, and names its
    /// recipient ([`Authorize::identify`]). For transports that register a subscriber now and
    /// read for it later (Web Push); see [`SubscribeRequest::preauthorized`].
    pub async fn check_access(&self, request: &AccessRequest<'_>) -> Result<Option<String>, Refusal> {
        self.inner.check_access(request).await
    }

    /// The most topics one subscription may name ([`HubBuilder::max_topics`]).
    pub fn max_topics(&self) -> usize {
        self.inner.config.max_topics
    }

    /// The number of open subscriptions (already one less when `on_disconnect` runs).
    pub fn subscriber_count(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed) as usize
    }

    /// Asks every subscription to close (each yields [`Delivery::Closing`] with a jittered
    /// reconnection delay) and refuses new ones.
    pub fn shutdown(&self) {
        self.inner.close();
    }

    /// A reconnection delay drawn from [`HubBuilder::reconnect_jitter`], for transports that
    /// refuse a request while shutting down (as `Retry-After`).
    pub fn reconnect_delay(&self) -> Duration {
        subscription::reconnect_delay(&self.inner)
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.is_closing()
    }

    /// Resolves once [`Hub::shutdown`] has been called (at once if it already was).
    /// Cancel-safe. For transports that keep a connection open while it follows no topic (a
    /// WebSocket between an `unsubscribe` and the next `subscribe`): a subscription learns of
    /// the shutdown through [`Delivery::Closing`], such a connection through this.
    pub async fn closed(&self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        // An error means the hub is gone, which is a shutdown too.
        let _ = shutdown.wait_for(|&s| s).await;
    }

    /// Counters since the hub was built.
    pub fn stats(&self) -> HubStats {
        HubStats {
            subscribers: self.inner.open.load(Ordering::Relaxed) as usize,
            connections: self.inner.next_connection.load(Ordering::Relaxed) - 1,
            lagged: self.inner.lagged.load(Ordering::Relaxed),
            gaps: self.inner.gaps.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn next_connection_id(inner: &HubInner) -> u64 {
        inner.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
