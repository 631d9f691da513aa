//! One subscriber's view of the log: replay, gap detection, live tail, catch-up after a lag.
//!
//! # State
//!
//! `topics[i].pos` is the last sequence number of topic `i` that this subscription has handed
//! out (or stepped over in a gap notice it handed out). It only grows within an epoch. Events
//! are delivered when `seq == pos + 1`; live events with `seq <= pos` were already delivered
//! from the store and are skipped; a live event with `seq > pos + 1` means the ring skipped
//! something, and the subscription re-reads the store.
//!
//! `next` is cancel-safe: state changes only after each await has completed, so a transport
//! may race it against a heartbeat timer.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Hub, HubInner, RingItem, SubscribeError};
use crate::access::{AccessRequest, Credentials, NoCredentials};
use crate::cursor::{Cursor, Epoch};
use crate::event::SharedEvent;
use crate::lifecycle::{Connection, Disconnect};
use crate::store::{Page, StoreError};
use crate::topic::Topic;

/// How long a subscription waits for the hub to open the store's live tail (only ever at the
/// very start of a hub's life, or while its store is unreachable then).
const TAIL_WAIT: Duration = Duration::from_secs(10);

/// Deliveries are added to the metric when a burst ends, and at least every this many.
const REPORT_EVERY: u64 = 64;

/// What to subscribe to, and who asks.
#[must_use]
pub struct SubscribeRequest<'a> {
    topics: Vec<Topic>,
    cursor: Option<&'a str>,
    /// A position the transport holds already (its own subscription's), in place of `cursor`.
    position: Option<Cursor>,
    pub(super) transport: &'static str,
    peer: Option<SocketAddr>,
    credentials: &'a dyn Credentials,
    /// `Some(recipient)`: access was checked by the caller; skip the authorization hook.
    preauthorized: Option<Option<String>>,
}

impl fmt::Debug for SubscribeRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeRequest")
            .field("topics", &self.topics)
            .field("cursor", &self.cursor)
            .field("position", &self.position)
            .field("transport", &self.transport)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<'a> SubscribeRequest<'a> {
    /// A request for `topics` (duplicates are ignored), without a cursor.
    pub fn new(topics: Vec<Topic>) -> Self {
        SubscribeRequest {
            topics,
            cursor: None,
            position: None,
            transport: "local",
            peer: None,
            credentials: &NoCredentials,
            preauthorized: None,
        }
    }

    /// The cursor token the client sent back, untrusted (default: none, start at the end).
    pub fn cursor(mut self, token: Option<&'a str>) -> Self {
        self.cursor = token;
        self
    }

    /// Starts from `position`, a cursor the transport holds already, rather than from a token
    /// the client sent (default: none; when both are given, this one counts). For a transport
    /// that moves a live connection to another set of topics: it opens the new subscription
    /// from the old one's [`Subscription::cursor`], with the positions of added topics set from
    /// the client's cursor ([`Cursor::set`]; a position past the end of a topic's log, such as
    /// `u64::MAX`, is unknown and yields a gap notice for that topic alone). Unlike a token, it
    /// is not parsed again, so it is not bound by the token's length limit. The lifecycle hooks
    /// see it as the connection's cursor, as a token.
    pub fn position(mut self, position: Cursor) -> Self {
        self.position = Some(position);
        self
    }

    /// The transport's name, for hooks (default `"local"`).
    pub fn transport(mut self, name: &'static str) -> Self {
        self.transport = name;
        self
    }

    /// The peer's address, for hooks (default: unknown).
    pub fn peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }

    /// The request's credentials, for the authorization hook (default: none).
    pub fn credentials(mut self, credentials: &'a dyn Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Marks the request as already authorized, for `recipient`: the hub does not run its
    /// [`Authorize`](crate::Authorize) hook again (default: it does).
    ///
    /// For server-side subscribers whose access was checked when they registered, with
    /// [`Hub::check_access`]: a Web Push subscription is authorized once, when the browser
    /// registers it, and then read by the server with no request behind it. Never use it for
    /// a request that comes from the network.
    pub fn preauthorized(mut self, recipient: Option<String>) -> Self {
        self.preauthorized = Some(recipient);
        self
    }
}

/// What a subscription yields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Delivery {
    /// The next event of one of the subscribed topics.
    Event(Arc<SharedEvent>),
    /// Events of these topics were lost to this subscriber; what follows is what remains.
    Gap(Gap),
    /// The hub is shutting down; the client should reconnect after the given delay. The
    /// subscription ends after this.
    Closing(Closing),
}

/// A gap notice: the events after the client's cursor are not all retained any more, for these
/// topics (see the hub's documentation for when this happens).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Gap {
    /// The affected topics, in subscription order.
    pub topics: Vec<Topic>,
}

impl Gap {
    /// A gap notice for `topics` (for transports' and stores' tests).
    pub fn new(topics: Vec<Topic>) -> Gap {
        Gap { topics }
    }
}

/// The hub is going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Closing {
    /// When the client should come back (jittered per subscription).
    pub reconnect_after: Duration,
}

#[derive(Debug)]
struct TopicState {
    topic: Topic,
    pos: u64,
}

/// What one step of [`Subscription::advance`] came to.
enum Step {
    /// A delivery, to hand out now.
    Deliver(Delivery),
    /// State changed (a page read, an item skipped): look again.
    Progress,
    /// Nothing is ready and the caller does not want to wait.
    Idle,
}

#[derive(Debug)]
enum Pending {
    Event { index: usize, event: Arc<SharedEvent> },
    /// A gap, with the positions it moves its topics to.
    Gap(Vec<(usize, u64)>),
}

/// A stream of [`Delivery`]s for a set of topics. Dropping it ends the subscription (and calls
/// the lifecycle's `on_disconnect`).
pub struct Subscription {
    hub: Arc<HubInner>,
    ring: broadcast::Receiver<RingItem>,
    epoch: Epoch,
    topics: Vec<TopicState>,
    pending: VecDeque<Pending>,
    /// `Some(i)`: reading the store, topic `i` next; `None`: following the ring.
    catch_up: Option<usize>,
    finished: bool,
    connection: Connection,
    opened: Instant,
    delivered: u64,
    /// Deliveries not yet added to the `tidings_deliveries_total` metric.
    unreported: u64,
    /// The `tidings_deliveries_total` counter of this transport, looked up once.
    deliveries: metrics::Counter,
    /// Replaced by its continuation ([`Subscription::change`]): ends without `on_disconnect`.
    quiet: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("connection", &self.connection.id)
            .field("epoch", &self.epoch)
            .field("topics", &self.topics)
            .field("catch_up", &self.catch_up)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Opens a subscription; with `continues`, as the continuation of that connection when the
    /// authorization hook names the same recipient (its id kept, no `on_connect`:
    /// [`Subscription::change`] calls `on_change`), else as a new connection.
    pub(super) async fn open(
        hub: Arc<HubInner>,
        request: SubscribeRequest<'_>,
        continues: Option<&Connection>,
    ) -> Result<Subscription, SubscribeError> {
        let mut topics: Vec<Topic> = Vec::with_capacity(request.topics.len());
        for topic in request.topics {
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        if topics.is_empty() {
            return Err(SubscribeError::NoTopics);
        }
        if topics.len() > hub.config.max_topics {
            return Err(SubscribeError::TooManyTopics { limit: hub.config.max_topics });
        }
        if hub.is_closing() {
            return Err(SubscribeError::ShuttingDown);
        }
        let recipient = match request.preauthorized {
            Some(recipient) => recipient,
            None => {
                let access = AccessRequest::new(request.transport, &topics, request.peer, request.credentials);
                hub.check_access(&access).await.map_err(SubscribeError::Refused)?
            }
        };

        // Join the live ring before reading anything, so nothing falls between history and live.
        let mut ready = hub.tail_ready.clone();
        let mut shutdown = hub.shutdown.subscribe();
        tokio::select! {
            _ = ready.wait_for(|&r| r) => {}
            _ = shutdown.wait_for(|&s| s) => return Err(SubscribeError::ShuttingDown),
            _ = tokio::time::sleep(TAIL_WAIT) => {
                return Err(SubscribeError::Store(StoreError::new("the store's live tail did not open")));
            }
        }
        let ring = hub.ring.subscribe();

        let cursor = match &request.position {
            Some(position) => Some(Ok(position.clone())),
            None => request.cursor.map(Cursor::parse),
        };
        let mut states = Vec::with_capacity(topics.len());
        let mut gap = Vec::new();
        let mut epoch = None;
        let mut behind = false;
        for (index, topic) in topics.iter().enumerate() {
            let bounds = hub.store.bounds(topic).await.map_err(SubscribeError::Store)?;
            let epoch = *epoch.get_or_insert(bounds.epoch);
            let claimed = match &cursor {
                None => None,
                Some(Ok(c)) if c.epoch() == epoch => match c.position(topic) {
                    // A topic the client did not have before: start at the end, no gap.
                    None => Some(Ok(bounds.last)),
                    Some(p) if p <= bounds.last && p.saturating_add(1) >= bounds.first => {
                        Some(Ok(p))
                    }
                    Some(_) => Some(Err(())),
                },
                // Another epoch, or a token that does not parse: position unknown.
                Some(_) => Some(Err(())),
            };
            let pos = match claimed {
                None => bounds.last,
                Some(Ok(p)) => p,
                Some(Err(())) => {
                    let before_first = bounds.first.saturating_sub(1);
                    gap.push((index, before_first));
                    before_first
                }
            };
            behind |= pos < bounds.last;
            states.push(TopicState { topic: topic.clone(), pos });
        }
        let mut pending = VecDeque::new();
        if !gap.is_empty() {
            pending.push_back(Pending::Gap(gap));
        }
        let continued = continues.filter(|c| c.recipient == recipient).map(|c| c.id);
        let connection = Connection {
            id: continued.unwrap_or_else(|| Hub::next_connection_id(&hub)),
            transport: request.transport,
            topics,
            cursor: match &request.position {
                Some(position) => Some(position.to_string()),
                None => request.cursor.map(|c| c.chars().take(crate::cursor::MAX_CURSOR_LEN).collect()),
            },
            peer: request.peer,
            recipient,
        };
        hub.open.fetch_add(1, Ordering::Relaxed);
        if continued.is_none() {
            metrics::counter!("tidings_subscriptions_opened_total", "transport" => connection.transport).increment(1);
        }
        metrics::gauge!("tidings_subscriptions", "transport" => connection.transport).increment(1.0);
        if behind || !pending.is_empty() {
            metrics::counter!("tidings_replays_total", "transport" => connection.transport).increment(1);
        }
        tracing::debug!(connection = connection.id, transport = connection.transport, topics = connection.topics.len(), behind, "subscription opened");
        if continued.is_none() {
            hub.lifecycle.on_connect(&connection);
        }
        Ok(Subscription {
            epoch: epoch.unwrap_or(Epoch::from_raw(0)),
            ring,
            topics: states,
            pending,
            // Nothing to replay: follow the ring at once (it keeps the order across topics).
            catch_up: behind.then_some(0),
            finished: false,
            connection,
            opened: Instant::now(),
            delivered: 0,
            unreported: 0,
            deliveries: metrics::counter!("tidings_deliveries_total", "transport" => request.transport),
            quiet: false,
            hub,
        })
    }

    /// Moves this subscription to what `request` asks for (other topics, typically from
    /// [`SubscribeRequest::position`] built on [`Subscription::cursor`]), as one connection: the
    /// request is authorized like any, and on success this subscription continues from the
    /// request's positions with the same [`Connection::id`]. The lifecycle sees
    /// [`Lifecycle::on_change`](crate::Lifecycle::on_change), not an `on_disconnect` and an
    /// `on_connect`, so that a client changing its topics is not counted as leaving and coming
    /// back (presence), and a client changing them in a loop does not run the app's hooks for
    /// each change. On error (a refusal, a shutdown, the store), this subscription is left as it
    /// was.
    ///
    /// If the authorization hook names another recipient for the new topics
    /// ([`Authorize::identify`](crate::Authorize::identify) sees them), the connection is no
    /// longer the same one's: the hooks see an `on_connect` of the new part (a new id) and an
    /// `on_disconnect` of the old, as for two subscriptions.
    ///
    /// A gap notice this subscription has not yielded yet ([`Subscription::starts_with_gap`])
    /// is dropped with it: yield it first, as its cursor already stands past it.
    ///
    /// # Errors
    ///
    /// The errors of [`Hub::subscribe`].
    pub async fn change(&mut self, request: SubscribeRequest<'_>) -> Result<(), SubscribeError> {
        let transport = request.transport;
        let next = match Subscription::open(self.hub.clone(), request, Some(&self.connection)).await {
            Ok(next) => next,
            Err(err) => {
                super::count_refusal(transport, &err);
                return Err(err);
            }
        };
        let continued = next.connection.id == self.connection.id;
        let mut before = std::mem::replace(self, next);
        if continued {
            // The connection goes on: its figures too, and the old part ends without a word.
            self.delivered += before.delivered;
            self.opened = before.opened;
            before.quiet = true;
            self.hub.lifecycle.on_change(&before.connection, &self.connection);
        }
        // Otherwise someone else's now: the new part was connected, the old one disconnects.
        Ok(())
    }

    /// The cursor that stands after everything this subscription has yielded so far. Valid
    /// from the moment the subscription opens; hand it to the client with each delivery.
    pub fn cursor(&self) -> Cursor {
        let mut cursor = Cursor::new(self.epoch);
        for state in &self.topics {
            cursor.set(&state.topic, state.pos);
        }
        cursor
    }

    /// Whether this subscription's cursor is exactly `event`'s own cursor
    /// ([`Event::cursor`](crate::Event::cursor)): one topic, standing right after that event.
    /// True for a single-topic subscriber right after it received `event`; then the cursor
    /// token is the same for every such subscriber, and a transport can encode it once per
    /// event instead of once per subscriber.
    pub fn stands_just_after(&self, event: &crate::Event) -> bool {
        matches!(&self.topics[..], [only] if only.pos == event.seq && only.topic == event.topic)
            && self.epoch == event.epoch
    }

    /// Whether the next delivery is a gap notice that is already decided (the cursor the client
    /// brought could not be honoured). Until it is yielded, [`Subscription::cursor`] already
    /// stands past the gap, so a transport should not hand the cursor out before the notice.
    pub fn starts_with_gap(&self) -> bool {
        matches!(self.pending.front(), Some(Pending::Gap(_)))
    }

    /// The subscribed topics, without duplicates, in request order.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.iter().map(|s| &s.topic)
    }

    /// The connection as the lifecycle hooks see it.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The next delivery; `None` once the subscription has ended (after [`Delivery::Closing`]).
    ///
    /// Store errors are retried with backoff, not returned: a subscription resumes where it was
    /// once the store is back. This method is cancel-safe.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.advance(true).await
    }

    /// The next delivery if one is ready without waiting for a new event: what is pending, the
    /// rest of a replay (which may read the store), or what the live ring already holds.
    /// `None` when nothing is ready (or the subscription has ended). Long-polling uses it to
    /// fill a batch after the first delivery. Cancel-safe.
    pub async fn next_ready(&mut self) -> Option<Delivery> {
        self.advance(false).await
    }

    async fn advance(&mut self, wait: bool) -> Option<Delivery> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.finished {
                return None;
            }
            if self.hub.is_closing() {
                self.finished = true;
                return Some(Delivery::Closing(Closing { reconnect_after: self.jitter() }));
            }
            if let Some(pending) = self.pending.pop_front() {
                return Some(self.deliver(pending));
            }
            let step = match self.catch_up {
                // Boxed: a replay step holds a store read; a subscription waiting for live
                // events (nearly always) should not carry room for it.
                Some(index) => Box::pin(self.catch_up_step(index)).await.map(|()| Step::Progress),
                None => self.live_step(wait).await,
            };
            match step {
                Ok(Step::Deliver(delivery)) => return Some(delivery),
                Ok(Step::Progress) => backoff = Duration::from_millis(50),
                Ok(Step::Idle) => {
                    // Nothing ready: the transport is about to write and wait. Report now,
                    // once per burst rather than once per event; give back the room a replay's
                    // page took (up to `page_size` entries), which a waiting subscription would
                    // otherwise keep.
                    self.report();
                    if self.pending.capacity() > 8 {
                        self.pending = VecDeque::new();
                    }
                    return None;
                }
                Err(err) => {
                    tracing::warn!(%err, connection = self.connection.id, "store read failed; retrying");
                    if !wait {
                        return None;
                    }
                    // Boxed, as the replay step: a waiting subscription carries no room for it.
                    let mut shutdown = self.hub.shutdown.subscribe();
                    Box::pin(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.wait_for(|&s| s) => {}
                        }
                    })
                    .await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn deliver(&mut self, pending: Pending) -> Delivery {
        match pending {
            Pending::Event { index, event } => {
                self.topics[index].pos = event.event().seq;
                self.delivered += 1;
                self.unreported += 1;
                if self.unreported >= REPORT_EVERY {
                    self.report();
                }
                Delivery::Event(event)
            }
            Pending::Gap(moves) => {
                self.hub.gaps.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tidings_gaps_total", "transport" => self.connection.transport).increment(1);
                let mut topics = Vec::with_capacity(moves.len());
                for (index, pos) in moves {
                    self.topics[index].pos = pos;
                    topics.push(self.topics[index].topic.clone());
                }
                Delivery::Gap(Gap { topics })
            }
        }
    }

    /// Reads one page of topic `index` from the store into `pending`.
    async fn catch_up_step(&mut self, index: usize) -> Result<(), StoreError> {
        let Some(state) = self.topics.get(index) else {
            self.catch_up = None;
            return Ok(());
        };
        let page_size = self.hub.config.page_size;
        let started = Instant::now();
        let read = self.hub.store.read_after(&state.topic, state.pos, page_size).await;
        metrics::histogram!("tidings_store_seconds", "op" => "read_after").record(started.elapsed().as_secs_f64());
        let Page { bounds, events } = read?;
        metrics::counter!("tidings_replayed_events_total", "transport" => self.connection.transport)
            .increment(events.len() as u64);
        if bounds.epoch != self.epoch {
            return self.change_epoch(bounds.epoch).await;
        }
        let state = &self.topics[index];
        if bounds.first > state.pos.saturating_add(1) {
            // Retention overtook this subscriber.
            self.pending.push_back(Pending::Gap(vec![(index, bounds.first.saturating_sub(1))]));
        }
        let full = events.len() >= page_size;
        for event in events {
            self.pending.push_back(Pending::Event { index, event: Arc::new(SharedEvent::new(event)) });
        }
        if !full {
            self.catch_up = (index + 1 < self.topics.len()).then_some(index + 1);
        }
        Ok(())
    }

    /// The log changed epoch under this subscription: everything it knew is void.
    async fn change_epoch(&mut self, epoch: Epoch) -> Result<(), StoreError> {
        let mut moves = Vec::with_capacity(self.topics.len());
        for (index, state) in self.topics.iter().enumerate() {
            let bounds = self.hub.store.bounds(&state.topic).await?;
            if bounds.epoch != epoch {
                // Changed again while we looked; start over.
                return Ok(());
            }
            moves.push((index, bounds.first.saturating_sub(1)));
        }
        self.epoch = epoch;
        self.pending.clear();
        self.pending.push_back(Pending::Gap(moves));
        self.catch_up = Some(0);
        Ok(())
    }

    /// Takes the ring's next item (waiting for one if `wait`) and acts on it: the next event in
    /// order is delivered at once, without a stop in `pending` (only ever called with nothing
    /// pending). `Step::Idle`: the ring is empty and `wait` is false.
    async fn live_step(&mut self, wait: bool) -> Result<Step, StoreError> {
        let item = if wait {
            // A shutdown comes through the ring too (`RingItem::Shutdown`).
            self.ring.recv().await
        } else {
            match self.ring.try_recv() {
                Ok(item) => Ok(item),
                Err(broadcast::error::TryRecvError::Empty) => return Ok(Step::Idle),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => Err(broadcast::error::RecvError::Closed),
            }
        };
        match item {
            Ok(RingItem::Event(shared)) => {
                let event = shared.event();
                let Some(index) = self.topics.iter().position(|s| s.topic == event.topic) else {
                    return Ok(Step::Progress);
                };
                if !self.topics[index].topic.same_name_object(&event.topic) {
                    // Take the store's copy of the name: later events compare by address.
                    self.topics[index].topic = event.topic.clone();
                }
                let pos = self.topics[index].pos;
                if event.epoch != self.epoch || event.seq > pos.saturating_add(1) {
                    self.catch_up = Some(0);
                } else if event.seq == pos.saturating_add(1) {
                    return Ok(Step::Deliver(self.deliver(Pending::Event { index, event: shared })));
                }
            }
            Ok(RingItem::Resync) => self.catch_up = Some(0),
            // `advance` sees the flag.
            Ok(RingItem::Shutdown) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.hub.lagged.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tidings_lagged_total", "transport" => self.connection.transport).increment(1);
                self.catch_up = Some(0);
            }
            Err(broadcast::error::RecvError::Closed) => {
                // The hub is gone; treat it as a shutdown.
                self.hub.close();
            }
        }
        Ok(Step::Progress)
    }

    /// Adds the deliveries made since the last report to the metric.
    fn report(&mut self) {
        if self.unreported > 0 {
            self.deliveries.increment(std::mem::take(&mut self.unreported));
        }
    }

    fn jitter(&self) -> Duration {
        reconnect_delay(&self.hub)
    }
}

/// A reconnection delay drawn uniformly from the hub's jitter range.
pub(super) fn reconnect_delay(hub: &HubInner) -> Duration {
    {
        let range = &hub.config.reconnect_jitter;
        let (lo, hi) = (range.start().as_millis() as u64, range.end().as_millis() as u64);
        let spread = hi.saturating_sub(lo);
        let r = Epoch::random().raw();
        Duration::from_millis(lo + if spread == 0 { 0 } else { r % (spread + 1) })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.open.fetch_sub(1, Ordering::Relaxed);
        self.report();
        metrics::gauge!("tidings_subscriptions", "transport" => self.connection.transport).decrement(1.0);
        if self.quiet {
            return;
        }
        let disconnect = Disconnect { delivered: self.delivered, duration: self.opened.elapsed() };
        tracing::debug!(connection = self.connection.id, delivered = self.delivered, "subscription closed");
        self.hub.lifecycle.on_disconnect(&self.connection, &disconnect);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hub, MemoryStore, NewEvent, Retention};

    /// Records the lifecycle calls, as `kind id topics`.
    #[derive(Default)]
    struct Calls(std::sync::Mutex<Vec<String>>);

    impl crate::Lifecycle for Calls {
        fn on_connect(&self, c: &crate::Connection) {
            self.0.lock().unwrap().push(format!("connect {} {}", c.id, c.topics.len()));
        }
        fn on_disconnect(&self, c: &crate::Connection, _: &crate::Disconnect) {
            self.0.lock().unwrap().push(format!("disconnect {} {}", c.id, c.topics.len()));
        }
        fn on_change(&self, before: &crate::Connection, after: &crate::Connection) {
            self.0.lock().unwrap().push(format!("change {}->{} {}", before.id, after.id, after.topics.len()));
        }
    }

    #[tokio::test]
    async fn a_change_is_one_connection_unless_it_is_someone_elses() {
        let calls = std::sync::Arc::new(Calls::default());
        // `mine/*` topics are the recipient "me"'s; `forbidden` is refused.
        let hub = Hub::builder(MemoryStore::new())
            .lifecycle(calls.clone())
            .authorize(
                crate::authorize_fn(|r| {
                    if r.topics.iter().any(|t| t.as_str() == "forbidden") {
                        Err(crate::Refusal::forbidden("no"))
                    } else {
                        Ok(())
                    }
                })
                .identify_with(|r| r.topics.iter().any(|t| t.as_str().starts_with("mine/")).then(|| "me".to_owned())),
            )
            .build();
        let (a, b) = (Topic::new("a"), Topic::new("b"));
        let mut sub = hub.subscribe(SubscribeRequest::new(vec![a.clone()])).await.unwrap();
        let first = hub.publish(NewEvent::new(a.clone(), "1")).await.unwrap();
        assert!(matches!(sub.next().await, Some(Delivery::Event(_))));
        let position = sub.cursor();
        sub.change(SubscribeRequest::new(vec![a.clone(), b.clone()]).position(position)).await.unwrap();
        assert_eq!(hub.subscriber_count(), 1);
        // Exact: what follows the position, once.
        hub.publish(NewEvent::new(a.clone(), "2")).await.unwrap();
        match sub.next().await {
            Some(Delivery::Event(e)) => assert_eq!((&*e.event().data, e.event().seq), ("2", first.seq + 1)),
            other => panic!("{other:?}"),
        }
        // Refused: nothing changes.
        let refused = sub.change(SubscribeRequest::new(vec![Topic::new("forbidden")]).position(sub.cursor())).await;
        assert!(matches!(refused, Err(SubscribeError::Refused(_))));
        assert_eq!(sub.topics().count(), 2);
        // Someone else's topics: two connections.
        sub.change(SubscribeRequest::new(vec![Topic::new("mine/x")]).position(sub.cursor())).await.unwrap();
        assert_eq!(sub.connection().recipient.as_deref(), Some("me"));
        drop(sub);
        assert_eq!(*calls.0.lock().unwrap(), ["connect 1 1", "change 1->1 2", "connect 2 1", "disconnect 1 2", "disconnect 2 1"]);
    }

    #[tokio::test]
    async fn a_subscription_gives_back_a_replays_room_once_caught_up() {
        let hub = Hub::new(MemoryStore::with_retention(Retention::default().max_events(1000)));
        let topic = Topic::new("t");
        let first = hub.publish(NewEvent::new(topic.clone(), "0")).await.unwrap();
        for i in 1..600 {
            hub.publish(NewEvent::new(topic.clone(), i.to_string())).await.unwrap();
        }
        let token = first.cursor().to_string();
        let mut sub = hub
            .subscribe(SubscribeRequest::new(vec![topic]).cursor(Some(&token)))
            .await
            .unwrap();
        let mut seen = 0;
        let mut largest = 0;
        while let Some(delivery) = sub.next_ready().await {
            assert!(matches!(delivery, Delivery::Event(_)), "{delivery:?}");
            largest = largest.max(sub.pending.capacity());
            seen += 1;
        }
        assert_eq!(seen, 599);
        assert!(largest >= hub.inner.config.page_size, "a page was read at once ({largest})");
        assert!(sub.pending.capacity() <= 8, "kept room for {} deliveries", sub.pending.capacity());
    }
}
