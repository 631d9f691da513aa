//! The dispatcher: one hub subscription per push subscription, pushing what it yields.
//!
//! # How a push subscription is served
//!
//! Each registered push subscription is one more subscriber of the hub, opened from the cursor
//! its registry keeps (`preauthorized`: access was checked when it registered). A task reads
//! it in order; for each event it sends one push, waits for the push service's answer, and
//! then saves the subscription's cursor. So:
//!
//! - **Order.** Per push subscription, one message is in flight at a time: the push service
//!   receives events in log order per topic.
//! - **Restart.** After a restart the dispatcher resumes every subscription from its saved
//!   cursor: events published while the server was down, or while the push service answered
//!   5xx, are still pushed (from a durable store). A crash between the push service's 201 and
//!   the saved cursor repeats at most the one message in flight per subscription; the payload
//!   carries the event's id, so the service worker drops an id it has already shown.
//! - **Gap.** When retention passed the saved cursor, the subscription gets one push saying so
//!   (`{"id":…,"gap":{"topics":[…]}}`), then what remains.
//! - **Content.** What is pushed, and whether an event is pushed at all, is the
//!   [`PushContent`]'s choice (by default every event, as [`message`](crate::message) says).
//!   An event it skips moves the cursor all the same; that cursor is saved within a second
//!   (not once per skipped event), so a restart may look at a second's worth again.
//! - **Lapse.** A registration with an [`expires`](Registration::expires) time is deleted
//!   when it comes, and nothing more is pushed to it.
//! - **Isolation.** Sends are bounded ([`WebPushBuilder::max_in_flight`], default 64) and each
//!   subscription waits only for its own push service: a slow or dead push service never
//!   blocks publishing, other subscriptions, or the SSE and long-poll clients (a subscription
//!   that falls behind the hub's ring catches up from the store, like any subscriber).
//!
//! # What each answer does
//!
//! | push service answers | the dispatcher |
//! |---|---|
//! | 201, 202 | saves the cursor, goes on |
//! | 404, 410 | deletes the subscription |
//! | 413 | sends the truncated form (no `data`) instead, once |
//! | 429 | waits `Retry-After` (or the backoff), retries while the TTL lasts |
//! | 5xx, network error | retries with jittered exponential backoff while the TTL lasts |
//! | 400, 401, 403, other | logs the service's message, does not retry, goes on |

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tidings_core::{
    AccessRequest, Credentials, Cursor, Delivery, Event, Hub, Refusal, SharedEvent, SubscribeError, SubscribeRequest,
    Topic,
};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::content::{EventContent, PushContent, PushMessages};
use crate::endpoint::{EndpointError, EndpointPolicy};
use crate::keys::VapidKeys;
use crate::message::Payload;
use crate::options::PushOptions;
use crate::presence::Presence;
use crate::registry::{PushRegistry, Registration, RegistryError};
use crate::sender::{PushSender, SendOutcome, SenderError};
use crate::subscription::{PushSubscription, SubscriptionError};
use crate::vapid::{Contact, ContactError};

/// The transport name push subscriptions have in lifecycle hooks and authorization requests.
pub const TRANSPORT: &str = "webpush";

/// Whom a topic's events are pushed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeliveryPolicy {
    /// Every push subscription of the topic (the default).
    #[default]
    Always,
    /// Only subscriptions whose recipient has no live SSE or long-poll connection at that
    /// moment (see [`Presence`]); subscriptions without a recipient always get the push.
    WhenOffline,
}

type OptionsFn = dyn Fn(&Event, &PushOptions) -> PushOptions + Send + Sync;

struct Config {
    defaults: PushOptions,
    options_for: Option<Arc<OptionsFn>>,
    topic_options: HashMap<Topic, PushOptions>,
    policies: HashMap<Topic, DeliveryPolicy>,
    default_policy: DeliveryPolicy,
    retry_initial: Duration,
    retry_max: Duration,
    max_per_recipient: usize,
    max_per_topic: usize,
}

/// Counters of a [`WebPush`], from [`WebPush::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PushStats {
    /// Push subscriptions being served now.
    pub subscriptions: usize,
    /// Messages the push services accepted (201/202).
    pub delivered: u64,
    /// Of those, messages sent in the truncated form.
    pub truncated: u64,
    /// Gap notices accepted.
    pub gaps: u64,
    /// Subscriptions deleted because the push service answered 404 or 410.
    pub gone: u64,
    /// Messages refused for good (400, 401, 403, …, or an endpoint the policy refuses).
    pub rejected: u64,
    /// Messages given up because their TTL ran out while retrying.
    pub expired: u64,
    /// Retries after 429, 5xx or a network error.
    pub retries: u64,
    /// Events not pushed because their recipient was online ([`DeliveryPolicy::WhenOffline`]).
    pub skipped_online: u64,
    /// Events not pushed because the [`PushContent`] chose not to (a Mercure hub's selectors).
    pub filtered: u64,
    /// Subscriptions deleted because their [`expires`](Registration::expires) time came.
    pub lapsed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    truncated: AtomicU64,
    gaps: AtomicU64,
    gone: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    retries: AtomicU64,
    skipped_online: AtomicU64,
    filtered: AtomicU64,
    lapsed: AtomicU64,
}

struct Worker {
    generation: u64,
    cancel: watch::Sender<bool>,
    recipient: Option<String>,
    topics: Vec<Topic>,
}

/// The subscriptions being served, with their numbers per recipient and per topic (the limits).
#[derive(Default)]
struct Workers {
    by_endpoint: HashMap<String, Worker>,
    per_recipient: HashMap<String, usize>,
    per_topic: HashMap<Topic, usize>,
}

impl Workers {
    fn insert(&mut self, endpoint: String, worker: Worker) -> Option<Worker> {
        if let Some(recipient) = &worker.recipient {
            *self.per_recipient.entry(recipient.clone()).or_insert(0) += 1;
        }
        for topic in &worker.topics {
            *self.per_topic.entry(topic.clone()).or_insert(0) += 1;
        }
        let old = self.by_endpoint.insert(endpoint, worker);
        if let Some(old) = &old {
            self.uncount(old);
        }
        metrics::gauge!("tidings_push_subscriptions").set(self.by_endpoint.len() as f64);
        old
    }

    fn remove(&mut self, endpoint: &str) -> Option<Worker> {
        let worker = self.by_endpoint.remove(endpoint)?;
        self.uncount(&worker);
        metrics::gauge!("tidings_push_subscriptions").set(self.by_endpoint.len() as f64);
        Some(worker)
    }

    fn uncount(&mut self, worker: &Worker) {
        fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        if let Some(recipient) = &worker.recipient {
            decrement(&mut self.per_recipient, recipient);
        }
        for topic in &worker.topics {
            decrement(&mut self.per_topic, topic);
        }
    }

    /// Whether `endpoint` may be (re-)registered for `recipient` and `topics` within `config`'s
    /// limits; its own current registration does not count against it.
    fn check(&self, endpoint: &str, recipient: Option<&str>, topics: &[Topic], config: &Config) -> Result<(), RegisterError> {
        let old = self.by_endpoint.get(endpoint);
        if let Some(recipient) = recipient {
            let mut n = self.per_recipient.get(recipient).copied().unwrap_or(0);
            if old.is_some_and(|w| w.recipient.as_deref() == Some(recipient)) {
                n -= 1;
            }
            if n >= config.max_per_recipient {
                return Err(RegisterError::TooManyForRecipient { limit: config.max_per_recipient });
            }
        }
        for topic in topics {
            let mut n = self.per_topic.get(topic).copied().unwrap_or(0);
            if old.is_some_and(|w| w.topics.contains(topic)) {
                n -= 1;
            }
            if n >= config.max_per_topic {
                return Err(RegisterError::TopicFull { topic: topic.clone(), limit: config.max_per_topic });
            }
        }
        Ok(())
    }
}

struct Inner {
    hub: Hub,
    registry: Arc<dyn PushRegistry>,
    sender: PushSender,
    content: Arc<dyn PushContent>,
    config: Config,
    presence: Option<Presence>,
    in_flight: Semaphore,
    workers: Mutex<Workers>,
    generation: AtomicU64,
    /// One of these, chosen by the endpoint, is held across every write to the registry (put,
    /// save, remove) with the check that the writer is still the endpoint's current worker: a
    /// worker being replaced, lapsing or gone never writes over (or deletes) its successor's
    /// row. Striped, so that one endpoint's writes wait only for those of the few endpoints
    /// that share its lock.
    writes: Box<[tokio::sync::Mutex<()>]>,
    counters: Counters,
}

/// The Web Push transport: registers browsers' push subscriptions and pushes them the hub's
/// events. Cheap to clone. See the [module documentation](self) for the delivery contract.
#[derive(Clone)]
pub struct WebPush {
    inner: Arc<Inner>,
}

impl fmt::Debug for WebPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebPush").field("sender", &self.inner.sender).field("stats", &self.stats()).finish()
    }
}

/// Builds a [`WebPush`]. Every setter states its default.
#[must_use]
pub struct WebPushBuilder {
    hub: Hub,
    registry: Arc<dyn PushRegistry>,
    keys: VapidKeys,
    contact: Contact,
    policy: EndpointPolicy,
    roots: Vec<String>,
    config: Config,
    content: Arc<dyn PushContent>,
    presence: Option<Presence>,
    max_in_flight: usize,
}

impl fmt::Debug for WebPushBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebPushBuilder").field("keys", &self.keys).field("policy", &self.policy).finish_non_exhaustive()
    }
}

/// Why [`WebPushBuilder::start`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The HTTP client could not be built.
    Sender(SenderError),
    /// The registry could not be read.
    Registry(RegistryError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Sender(e) => write!(f, "web push: {e}"),
            StartError::Registry(e) => write!(f, "web push registry: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl WebPushBuilder {
    /// The endpoint policy (default: public `https` endpoints only).
    pub fn endpoint_policy(mut self, policy: EndpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Trusts this root certificate (PEM) besides the system's, for a private or test push
    /// service (default: the system's only). [`read_root_certificate`] reads one from a file.
    pub fn add_root_certificate(mut self, pem: impl Into<String>) -> Self {
        self.roots.push(pem.into());
        self
    }

    /// The default options of every message (default: TTL 1 day, normal urgency, no topic).
    pub fn default_options(mut self, options: PushOptions) -> Self {
        self.config.defaults = options;
        self
    }

    /// The options of one topic's messages (default: [`WebPushBuilder::default_options`]).
    pub fn topic_options(mut self, topic: Topic, options: PushOptions) -> Self {
        self.config.topic_options.insert(topic, options);
        self
    }

    /// Decides the options of each event, given the topic's options (default: the topic's
    /// options as they are). For a TTL, urgency or push topic per event.
    pub fn options_for(mut self, f: impl Fn(&Event, &PushOptions) -> PushOptions + Send + Sync + 'static) -> Self {
        self.config.options_for = Some(Arc::new(f));
        self
    }

    /// Whom one topic's events are pushed to (default: [`WebPushBuilder::default_policy`]).
    pub fn topic_policy(mut self, topic: Topic, policy: DeliveryPolicy) -> Self {
        self.config.policies.insert(topic, policy);
        self
    }

    /// Whom events are pushed to when their topic has no policy of its own (default
    /// [`DeliveryPolicy::Always`]).
    pub fn default_policy(mut self, policy: DeliveryPolicy) -> Self {
        self.config.default_policy = policy;
        self
    }

    /// The presence tracker that [`DeliveryPolicy::WhenOffline`] asks (default: none, so
    /// every recipient counts as offline). Give the same tracker to the hub's lifecycle.
    pub fn presence(mut self, presence: Presence) -> Self {
        self.presence = Some(presence);
        self
    }

    /// What each subscription is sent (default [`EventContent`]: every event of its topics, as
    /// [`message`](crate::message) says). See [`content`](crate::content).
    pub fn content(mut self, content: impl PushContent) -> Self {
        self.content = Arc::new(content);
        self
    }

    /// Sends in flight at once, across all subscriptions (default 64).
    ///
    /// # Panics
    ///
    /// Panics if `max` is 0.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        assert!(max > 0, "at least one send must be allowed");
        self.max_in_flight = max;
        self
    }

    /// The first retry delay after a 5xx or network error, doubled (with jitter) up to `max`
    /// (default 1 s up to 5 min).
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.retry_initial = initial;
        self.config.retry_max = max.max(initial);
        self
    }

    /// Push subscriptions one recipient (the user the authorization hook names) may hold at
    /// once (default 32: browsers and devices); one more is refused with a 429. Registering an
    /// endpoint again replaces it and does not count twice. Subscriptions without a recipient
    /// are bounded by the per-topic limit only.
    pub fn max_subscriptions_per_recipient(mut self, max: usize) -> Self {
        self.config.max_per_recipient = max;
        self
    }

    /// Push subscriptions one topic may have at once (default 100 000; each costs a task and
    /// a subscription to the hub); one more is refused with a 503.
    pub fn max_subscriptions_per_topic(mut self, max: usize) -> Self {
        self.config.max_per_topic = max;
        self
    }

    /// Builds the transport, reads the registry and resumes every subscription in it from its
    /// saved cursor.
    pub async fn start(self) -> Result<WebPush, StartError> {
        let sender =
            PushSender::new(self.keys, self.contact, self.policy, &self.roots).map_err(StartError::Sender)?;
        let registrations = self.registry.all().await.map_err(StartError::Registry)?;
        let push = WebPush {
            inner: Arc::new(Inner {
                hub: self.hub,
                registry: self.registry,
                sender,
                content: self.content,
                config: self.config,
                presence: self.presence,
                in_flight: Semaphore::new(self.max_in_flight),
                workers: Mutex::new(Workers::default()),
                generation: AtomicU64::new(0),
                writes: (0..WRITE_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
                counters: Counters::default(),
            }),
        };
        for registration in registrations {
            push.spawn(registration);
        }
        Ok(push)
    }
}

/// Why a registration was refused. Each maps to a status: see [`RegisterError::status`].
#[derive(Debug)]
#[non_exhaustive]
pub enum RegisterError {
    /// The subscription JSON or its keys are invalid (400).
    Subscription(SubscriptionError),
    /// The endpoint is not allowed (400).
    Endpoint(EndpointError),
    /// No topic, too many, or an invalid name (400).
    Topics(String),
    /// The authorization hook refused (401 or 403).
    Refused(Refusal),
    /// The registry failed (503).
    Registry(RegistryError),
    /// The recipient holds [`WebPushBuilder::max_subscriptions_per_recipient`] already (429).
    TooManyForRecipient {
        /// The limit.
        limit: usize,
    },
    /// The topic has [`WebPushBuilder::max_subscriptions_per_topic`] already (503).
    TopicFull {
        /// The topic.
        topic: Topic,
        /// The limit.
        limit: usize,
    },
}

impl RegisterError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::Refused(Refusal::Unauthenticated(_)) => 401,
            RegisterError::Refused(_) => 403,
            RegisterError::Registry(_) | RegisterError::TopicFull { .. } => 503,
            RegisterError::TooManyForRecipient { .. } => 429,
            _ => 400,
        }
    }
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::Subscription(e) => fmt::Display::fmt(e, f),
            RegisterError::Endpoint(e) => fmt::Display::fmt(e, f),
            RegisterError::Topics(e) => f.write_str(e),
            RegisterError::Refused(e) => fmt::Display::fmt(e, f),
            RegisterError::Registry(e) => write!(f, "registry unavailable: {e}"),
            RegisterError::TooManyForRecipient { limit } => {
                write!(f, "too many push subscriptions for this recipient, the limit is {limit}")
            }
            RegisterError::TopicFull { topic, limit } => {
                write!(f, "topic {:?} has {limit} push subscriptions, its limit", topic.as_str())
            }
        }
    }
}

impl std::error::Error for RegisterError {}

/// What a browser asks for when it registers.
#[non_exhaustive]
pub struct RegisterRequest<'a> {
    /// Its subscription.
    pub subscription: PushSubscription,
    /// The topic names it wants, untrusted.
    pub topics: Vec<String>,
    /// Where to start: a cursor it received over SSE or long-polling (untrusted; a bad one is
    /// a gap notice), or none to start at the end of the log.
    pub cursor: Option<String>,
    /// The peer's address, for the authorization hook.
    pub peer: Option<SocketAddr>,
    /// The request's credentials, for the authorization hook.
    pub credentials: &'a dyn Credentials,
    /// Kept with the registration for the [`PushContent`] (see [`Registration::filter`]).
    pub filter: Option<String>,
    /// When the registration lapses (see [`Registration::expires`]): none by default. A time
    /// already past is accepted, and the registration is deleted at once, with nothing pushed.
    pub expires: Option<SystemTime>,
    /// Whose it is when the authorization hook names nobody (for
    /// [`WebPushBuilder::max_subscriptions_per_recipient`] and presence): a Mercure hub, which
    /// has no hook, names the token's subject or the client's address. None by default.
    pub recipient: Option<String>,
}

impl fmt::Debug for RegisterRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("subscription", &self.subscription)
            .field("topics", &self.topics)
            .field("cursor", &self.cursor)
            .field("peer", &self.peer)
            .field("filter", &self.filter)
            .field("expires", &self.expires)
            .field("recipient", &self.recipient)
            .finish_non_exhaustive()
    }
}

impl<'a> RegisterRequest<'a> {
    /// A request for `topics`.
    pub fn new(subscription: PushSubscription, topics: Vec<String>, credentials: &'a dyn Credentials) -> Self {
        RegisterRequest {
            subscription,
            topics,
            cursor: None,
            peer: None,
            credentials,
            filter: None,
            expires: None,
            recipient: None,
        }
    }

    /// Sets the application's filter, kept with the registration.
    #[must_use]
    pub fn filter(mut self, filter: Option<String>) -> Self {
        self.filter = filter;
        self
    }

    /// Sets when the registration lapses.
    #[must_use]
    pub fn expires(mut self, expires: Option<SystemTime>) -> Self {
        self.expires = expires;
        self
    }

    /// Sets whose it is when the authorization hook names nobody.
    #[must_use]
    pub fn recipient(mut self, recipient: Option<String>) -> Self {
        self.recipient = recipient;
        self
    }

    /// Sets the starting cursor.
    #[must_use]
    pub fn cursor(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }

    /// Sets the peer's address.
    #[must_use]
    pub fn peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }
}

enum Step {
    /// Settled (pushed, or given up): the cursor is saved.
    Done,
    /// Nothing to push: the cursor is saved within [`SAVE_SKIPPED`].
    Skipped,
    Gone,
    Cancelled,
    /// Its expiry came while retrying.
    Lapsed,
}

/// A push subscription's task: its endpoint and generation (which registration of it).
#[derive(Clone, Copy)]
struct Me<'a> {
    endpoint: &'a str,
    generation: u64,
}

/// What a push subscription's task woke up for.
enum Woke {
    Lapsed,
    SaveSkipped,
    Delivery(Option<Delivery>),
}

/// The write locks of the registry ([`Inner::writes`]).
const WRITE_LOCKS: usize = 64;

/// How long a cursor moved by skipped events may go unsaved.
const SAVE_SKIPPED: Duration = Duration::from_secs(1);

/// Where the smaller form of an event's payload comes from, after a 413.
struct Smaller<'a> {
    messages: &'a dyn PushMessages,
    event: &'a SharedEvent,
    cursor: &'a Cursor,
}

impl WebPush {
    /// A builder for the Web Push transport over `hub`, keeping subscriptions in `registry`,
    /// signing with `keys` for `contact` (a `mailto:` or `https:` URL the push services can
    /// reach the operator at: there is no default).
    pub fn builder(
        hub: Hub,
        registry: impl PushRegistry,
        keys: VapidKeys,
        contact: &str,
    ) -> Result<WebPushBuilder, ContactError> {
        Ok(WebPushBuilder {
            hub,
            registry: Arc::new(registry),
            keys,
            contact: Contact::parse(contact)?,
            policy: EndpointPolicy::default(),
            roots: Vec::new(),
            content: Arc::new(EventContent),
            config: Config {
                defaults: PushOptions::default(),
                options_for: None,
                topic_options: HashMap::new(),
                policies: HashMap::new(),
                default_policy: DeliveryPolicy::Always,
                retry_initial: Duration::from_secs(1),
                retry_max: Duration::from_secs(300),
                max_per_recipient: 32,
                max_per_topic: 100_000,
            },
            presence: None,
            max_in_flight: 64,
        })
    }

    /// The VAPID public key, for the browser's `pushManager.subscribe`.
    pub fn public_key(&self) -> &str {
        self.inner.sender.keys().public_key_base64()
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Validates and authorizes a browser's registration, stores it, and starts pushing to it.
    /// Registering an endpoint again replaces its topics and starting point.
    ///
    /// Returns the cursor pushing starts from (saved with the registration): the request's,
    /// or the end of the log now.
    pub async fn register(&self, request: RegisterRequest<'_>) -> Result<String, RegisterError> {
        let mut topics: Vec<Topic> = Vec::with_capacity(request.topics.len());
        for name in &request.topics {
            let topic = Topic::parse(name).map_err(|e| RegisterError::Topics(format!("invalid topic: {e}")))?;
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        if topics.is_empty() {
            return Err(RegisterError::Topics("no topic given".into()));
        }
        let limit = self.inner.hub.max_topics();
        if topics.len() > limit {
            return Err(RegisterError::Topics(format!("too many topics, the limit is {limit}")));
        }
        self.inner.sender.policy().check(request.subscription.endpoint()).await.map_err(RegisterError::Endpoint)?;
        let access = AccessRequest::new(TRANSPORT, &topics, request.peer, request.credentials);
        let recipient =
            self.inner.hub.check_access(&access).await.map_err(RegisterError::Refused)?.or(request.recipient);
        let cursor = match request.cursor {
            // Kept as a token that never parses: the subscription starts with a gap notice,
            // as it would over SSE, without storing what the client sent.
            Some(cursor) if cursor.len() > tidings_core::cursor::MAX_CURSOR_LEN => "~oversized".to_owned(),
            Some(cursor) => cursor,
            // Start at the end of the log, saved with the registration: everything published
            // after the 201 is pushed, even across a crash right after it.
            None => self.end_of_log(&topics).await?,
        };
        let registration = Registration::new(request.subscription, topics)
            .recipient(recipient)
            .cursor(Some(cursor))
            .filter(request.filter)
            .expires(request.expires);
        // Counted before it is stored, so that concurrent registrations cannot pass the limits
        // together; released if storing fails.
        // The endpoint's previous worker (if any) keeps pushing until the new one is stored.
        let writes = self.writes(registration.endpoint()).lock().await;
        let (generation, cancelled, previous) = self.reserve(&registration, true)?;
        if let Err(err) = self.inner.registry.put(&registration).await {
            let mut workers = self.workers();
            if workers.by_endpoint.get(registration.endpoint()).is_some_and(|w| w.generation == generation) {
                workers.remove(registration.endpoint());
                if let Some(previous) = previous {
                    workers.insert(registration.endpoint().to_owned(), previous);
                }
            }
            return Err(RegisterError::Registry(err));
        }
        drop(writes);
        if let Some(previous) = previous {
            previous.cancel.send_replace(true);
        }
        let cursor = registration.cursor.clone().unwrap_or_default();
        self.run(registration, generation, cancelled);
        Ok(cursor)
    }

    async fn end_of_log(&self, topics: &[Topic]) -> Result<String, RegisterError> {
        let store = self.inner.hub.store();
        let mut cursor: Option<tidings_core::Cursor> = None;
        for topic in topics {
            let bounds = store
                .bounds(topic)
                .await
                .map_err(|e| RegisterError::Registry(RegistryError::with_source("store unavailable", e)))?;
            cursor.get_or_insert_with(|| tidings_core::Cursor::new(bounds.epoch)).set(topic, bounds.last);
        }
        Ok(cursor.map(|c| c.to_string()).unwrap_or_default())
    }

    /// Stops pushing to `endpoint` and deletes it; `Ok(false)` if it was not registered.
    pub async fn unregister(&self, endpoint: &str) -> Result<bool, RegistryError> {
        let _writes = self.writes(endpoint).lock().await;
        if let Some(worker) = self.workers().remove(endpoint) {
            worker.cancel.send_replace(true);
        }
        self.inner.registry.remove(endpoint).await
    }

    /// Stops every push task (what is in flight is not waited for; its cursor is not saved, so
    /// a restart sends it again).
    pub fn shutdown(&self) {
        let mut workers = self.workers();
        for (_, worker) in workers.by_endpoint.drain() {
            worker.cancel.send_replace(true);
        }
        workers.per_recipient.clear();
        workers.per_topic.clear();
        metrics::gauge!("tidings_push_subscriptions").set(0.0);
    }

    /// Counters since the transport started.
    pub fn stats(&self) -> PushStats {
        let c = &self.inner.counters;
        PushStats {
            subscriptions: self.workers().by_endpoint.len(),
            delivered: c.delivered.load(Ordering::Relaxed),
            truncated: c.truncated.load(Ordering::Relaxed),
            gaps: c.gaps.load(Ordering::Relaxed),
            gone: c.gone.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            skipped_online: c.skipped_online.load(Ordering::Relaxed),
            filtered: c.filtered.load(Ordering::Relaxed),
            lapsed: c.lapsed.load(Ordering::Relaxed),
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, Workers> {
        self.inner.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves a registration read from the registry at start (whatever the limits say now).
    fn spawn(&self, registration: Registration) {
        if let Ok((generation, cancelled, previous)) = self.reserve(&registration, false) {
            if let Some(previous) = previous {
                previous.cancel.send_replace(true);
            }
            self.run(registration, generation, cancelled);
        }
    }

    /// Counts `registration` among the workers (checking the limits first if `check`) in place
    /// of the endpoint's previous worker, which is returned (still running) for the caller to
    /// cancel or put back.
    #[allow(clippy::type_complexity)]
    fn reserve(
        &self,
        registration: &Registration,
        check: bool,
    ) -> Result<(u64, watch::Receiver<bool>, Option<Worker>), RegisterError> {
        let mut workers = self.workers();
        if check {
            workers.check(registration.endpoint(), registration.recipient.as_deref(), &registration.topics, &self.inner.config)?;
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let (cancel, cancelled) = watch::channel(false);
        let worker = Worker {
            generation,
            cancel,
            recipient: registration.recipient.clone(),
            topics: registration.topics.clone(),
        };
        let previous = workers.insert(registration.endpoint().to_owned(), worker);
        Ok((generation, cancelled, previous))
    }

    fn run(&self, registration: Registration, generation: u64, cancelled: watch::Receiver<bool>) {
        let push = self.clone();
        tokio::spawn(async move {
            let endpoint = registration.endpoint().to_owned();
            push.serve(registration, generation, cancelled).await;
            let mut workers = push.workers();
            if workers.by_endpoint.get(&endpoint).is_some_and(|w| w.generation == generation) {
                workers.remove(&endpoint);
            }
        });
    }

    /// Serves one push subscription until it is cancelled, gone, lapsed, or the hub closes.
    async fn serve(&self, registration: Registration, generation: u64, mut cancelled: watch::Receiver<bool>) {
        let inner = &self.inner;
        let endpoint = registration.endpoint().to_owned();
        let me = Me { endpoint: &endpoint, generation };
        let messages = match inner.content.messages(&registration) {
            Ok(messages) => messages,
            Err(err) => {
                tracing::error!(%err, "push subscription cannot be served; deleting it");
                self.forget(me).await;
                return;
            }
        };
        // When it lapses, as a Tokio instant (a time already past: now; too far to count: never).
        let lapses = registration.expires.and_then(|at| {
            Instant::now().checked_add(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
        });
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let lapse = tokio::time::sleep_until(lapses.unwrap_or(far));
        tokio::pin!(lapse);
        let mut retry = Duration::from_millis(200);
        let mut sub = loop {
            let request = SubscribeRequest::new(registration.topics.clone())
                .cursor(registration.cursor.as_deref())
                .transport(TRANSPORT)
                .preauthorized(registration.recipient.clone());
            let opened = tokio::select! {
                biased;
                _ = cancelled.wait_for(|&c| c) => return,
                () = &mut lapse, if lapses.is_some() => None,
                opened = inner.hub.subscribe(request) => Some(opened),
            };
            let Some(opened) = opened else { return self.lapse(me).await };
            match opened {
                Ok(sub) => break sub,
                Err(SubscribeError::ShuttingDown) => return,
                Err(err @ (SubscribeError::NoTopics | SubscribeError::TooManyTopics { .. } | SubscribeError::Refused(_))) => {
                    // Registered under other rules than the hub's now: it can never open.
                    tracing::error!(%err, "push subscription cannot open; not retrying");
                    return;
                }
                Err(err) => {
                    tracing::warn!(%err, "push subscription cannot open; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = cancelled.wait_for(|&c| c) => return,
                    }
                    retry = (retry * 2).min(Duration::from_secs(10));
                }
            }
        };
        if registration.cursor.is_none() {
            // Where it starts is where a restart resumes.
            self.save_cursor(me, &sub.cursor().to_string()).await;
        }
        // Whether the cursor moved past events the content skipped without being saved: it is
        // saved with the next push, or after `SAVE_SKIPPED` (one write a second at most, not
        // one per skipped event). Between deliveries, `sub.cursor()` is that cursor.
        let mut unsaved = false;
        let mut last_save = Instant::now();
        loop {
            let woke = tokio::select! {
                biased;
                _ = cancelled.wait_for(|&c| c) => return,
                () = &mut lapse, if lapses.is_some() => Woke::Lapsed,
                () = tokio::time::sleep_until(last_save + SAVE_SKIPPED), if unsaved => Woke::SaveSkipped,
                delivery = sub.next() => Woke::Delivery(delivery),
            };
            let delivery = match woke {
                Woke::Lapsed => return self.lapse(me).await,
                Woke::SaveSkipped => {
                    self.save_cursor(me, &sub.cursor().to_string()).await;
                    unsaved = false;
                    last_save = Instant::now();
                    continue;
                }
                Woke::Delivery(delivery) => delivery,
            };
            // Where this subscription stands after the delivery: in the payload, then saved.
            let cursor = sub.cursor();
            let step = match delivery {
                None | Some(Delivery::Closing(_)) => return,
                Some(Delivery::Event(shared)) => {
                    let event = shared.event();
                    if self.recipient_is_online(event, registration.recipient.as_deref()) {
                        inner.counters.skipped_online.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("tidings_push_results_total", "result" => "skipped_online").increment(1);
                        Step::Done
                    } else if let Some(payload) = messages.event(&shared, &cursor) {
                        let options = self.options(event);
                        let smaller = Smaller { messages: &*messages, event: &shared, cursor: &cursor };
                        self.push(&registration.subscription, payload, Some(smaller), &options, lapses, &mut cancelled)
                            .await
                    } else {
                        inner.counters.filtered.fetch_add(1, Ordering::Relaxed);
                        Step::Skipped
                    }
                }
                Some(Delivery::Gap(gap)) => {
                    let payload = messages.gap(&gap, &cursor);
                    let step = self
                        .push(&registration.subscription, payload, None, &inner.config.defaults, lapses, &mut cancelled)
                        .await;
                    if matches!(step, Step::Done) {
                        inner.counters.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    step
                }
                Some(_) => continue,
            };
            match step {
                Step::Skipped if last_save.elapsed() < SAVE_SKIPPED => unsaved = true,
                Step::Done | Step::Skipped => {
                    self.save_cursor(me, &cursor.to_string()).await;
                    unsaved = false;
                    last_save = Instant::now();
                }
                Step::Cancelled => return,
                Step::Lapsed => return self.lapse(me).await,
                Step::Gone => {
                    inner.counters.gone.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("push subscription is gone; deleting it");
                    self.forget(me).await;
                    return;
                }
            }
        }
    }

    /// Deletes a registration whose expiry came.
    async fn lapse(&self, me: Me<'_>) {
        self.inner.counters.lapsed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tidings_push_results_total", "result" => "lapsed").increment(1);
        tracing::info!("push subscription lapsed; deleting it");
        self.forget(me).await;
    }

    /// The write lock of `endpoint`.
    fn writes(&self, endpoint: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(endpoint);
        &self.inner.writes[(hash % WRITE_LOCKS as u64) as usize]
    }

    /// Whether `me` is still its endpoint's current worker (not replaced by a new registration,
    /// unregistered, or shut down).
    fn is_current(&self, me: Me<'_>) -> bool {
        self.workers().by_endpoint.get(me.endpoint).is_some_and(|w| w.generation == me.generation)
    }

    /// Deletes `me`'s registration, unless a newer registration of its endpoint replaced it.
    async fn forget(&self, me: Me<'_>) {
        let _writes = self.writes(me.endpoint).lock().await;
        if self.is_current(me) {
            if let Err(err) = self.inner.registry.remove(me.endpoint).await {
                tracing::warn!(%err, "cannot delete a push subscription");
            }
        }
    }

    /// Saves `me`'s cursor, unless a newer registration of its endpoint replaced it.
    async fn save_cursor(&self, me: Me<'_>, cursor: &str) {
        let _writes = self.writes(me.endpoint).lock().await;
        if !self.is_current(me) {
            return;
        }
        if let Err(err) = self.inner.registry.save_cursor(me.endpoint, cursor).await {
            // The next save will carry it; a restart before then repeats what was sent since.
            tracing::warn!(%err, "cannot save a push subscription's cursor");
        }
    }

    fn recipient_is_online(&self, event: &Event, recipient: Option<&str>) -> bool {
        let config = &self.inner.config;
        let policy = config.policies.get(&event.topic).copied().unwrap_or(config.default_policy);
        match (policy, recipient, &self.inner.presence) {
            (DeliveryPolicy::WhenOffline, Some(who), Some(presence)) => presence.is_online(who),
            _ => false,
        }
    }

    fn options(&self, event: &Event) -> PushOptions {
        let config = &self.inner.config;
        let base = config.topic_options.get(&event.topic).unwrap_or(&config.defaults);
        match &config.options_for {
            Some(f) => f(event, base),
            None => base.clone(),
        }
    }

    /// Sends one payload, retrying as the answer says, until it is settled or cancelled.
    async fn push(
        &self,
        subscription: &PushSubscription,
        mut payload: Payload,
        smaller: Option<Smaller<'_>>,
        options: &PushOptions,
        lapses: Option<Instant>,
        cancelled: &mut watch::Receiver<bool>,
    ) -> Step {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let lapse = tokio::time::sleep_until(lapses.unwrap_or(far));
        tokio::pin!(lapse);
        let inner = &self.inner;
        let counters = &inner.counters;
        let deadline = Instant::now() + options.ttl;
        let mut backoff = inner.config.retry_initial;
        loop {
            let outcome = {
                let permit = tokio::select! {
                    biased;
                    _ = cancelled.wait_for(|&c| c) => return Step::Cancelled,
                    () = &mut lapse, if lapses.is_some() => return Step::Lapsed,
                    permit = inner.in_flight.acquire() => permit,
                };
                let Ok(_permit) = permit else { return Step::Cancelled };
                let started = Instant::now();
                let outcome = tokio::select! {
                    biased;
                    _ = cancelled.wait_for(|&c| c) => return Step::Cancelled,
                    () = &mut lapse, if lapses.is_some() => return Step::Lapsed,
                    outcome = inner.sender.send(subscription, &payload.json, options) => outcome,
                };
                metrics::histogram!("tidings_push_send_seconds").record(started.elapsed().as_secs_f64());
                let result = match &outcome {
                    SendOutcome::Delivered if payload.truncated => "delivered_truncated",
                    SendOutcome::Delivered => "delivered",
                    SendOutcome::Gone(_) => "gone",
                    SendOutcome::TooLarge => "too_large",
                    SendOutcome::Rejected(..) => "rejected",
                    SendOutcome::Refused(_) => "endpoint_refused",
                    SendOutcome::RateLimited(_) => "rate_limited",
                    SendOutcome::Unavailable(_) => "unavailable",
                };
                metrics::counter!("tidings_push_results_total", "result" => result).increment(1);
                outcome
            };
            let wait = match outcome {
                SendOutcome::Delivered => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if payload.truncated {
                        counters.truncated.fetch_add(1, Ordering::Relaxed);
                    }
                    return Step::Done;
                }
                SendOutcome::Gone(_) => return Step::Gone,
                SendOutcome::TooLarge => match &smaller {
                    Some(smaller) if !payload.truncated => {
                        payload = smaller.messages.truncated(smaller.event, smaller.cursor);
                        // Sent once: a second 413 is final.
                        payload.truncated = true;
                        continue;
                    }
                    _ => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("push service refused even the truncated message as too large (413)");
                        return Step::Done;
                    }
                },
                SendOutcome::Rejected(status, text) => {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(status, message = %text, "push service refused the message; not retrying");
                    return Step::Done;
                }
                SendOutcome::Refused(err) => {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, "push endpoint refused by the endpoint policy");
                    return Step::Done;
                }
                SendOutcome::RateLimited(after) => after.unwrap_or(backoff),
                SendOutcome::Unavailable(err) => {
                    tracing::debug!(%err, "push service unavailable; retrying");
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(inner.config.retry_max);
                    wait
                }
            };
            if Instant::now() + wait >= deadline {
                counters.expired.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tidings_push_results_total", "result" => "expired").increment(1);
                tracing::warn!("push message expired (its TTL ran out while retrying)");
                return Step::Done;
            }
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancelled.wait_for(|&c| c) => return Step::Cancelled,
                () = &mut lapse, if lapses.is_some() => return Step::Lapsed,
            }
        }
    }
}

/// Reads the PEM file at `path` for [`WebPushBuilder::add_root_certificate`] (a command line's
/// `--push-ca-file`, say).
///
/// # Errors
///
/// The file cannot be read, or holds no PEM certificate: the reason, naming the path.
pub fn read_root_certificate(path: &str) -> Result<String, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(pem)
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn jitter(d: Duration) -> Duration {
    let r = tidings_core::Epoch::random().raw() % 1000;
    d.mul_f64(0.5 + r as f64 / 1000.0)
}
