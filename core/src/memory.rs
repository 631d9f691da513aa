//! [`MemoryStore`]: the default, in-process store.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::cursor::Epoch;
use crate::event::{Event, NewEvent};
use crate::retention::Retention;
use crate::hub::{LocalTail, LocalTails};
use crate::store::{Bounds, LiveTail, Page, Store, StoreError, TailItem};
use crate::topic::Topic;

/// Capacity of the store's internal tail channel; the hub drains it continuously.
const TAIL_CAPACITY: usize = 4096;

/// An in-memory log, bounded per topic by a [`Retention`]. Each `MemoryStore` is a fresh
/// [`Epoch`]: after a restart, clients holding older cursors receive a gap notice.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tidings_core::{MemoryStore, NewEvent, Retention, Store, Topic};
/// let store = MemoryStore::with_retention(Retention::default().max_events(2));
/// let topic = Topic::new("t");
/// for data in ["a", "b", "c"] {
///     store.append(NewEvent::new(topic.clone(), data)).await.unwrap();
/// }
/// let page = store.read_after(&topic, 0, 10).await.unwrap();
/// assert_eq!((page.bounds.first, page.bounds.last), (2, 3));
/// assert_eq!(page.events.iter().map(|e| &*e.data).collect::<Vec<_>>(), ["b", "c"]);
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    epoch: Epoch,
    retention: Retention,
    topics: Mutex<HashMap<Topic, TopicLog>>,
    tail: broadcast::Sender<Event>,
    /// The hubs over this store.
    hubs: LocalTails,
}

#[derive(Debug, Default)]
struct TopicLog {
    events: VecDeque<(Instant, Event)>,
    last: u64,
}

impl TopicLog {
    fn trim(&mut self, retention: &Retention, now: Instant) {
        while self.events.len() > retention.max_events_per_topic() {
            self.events.pop_front();
        }
        if let Some(age) = retention.max_age_per_topic() {
            while self.events.front().is_some_and(|(at, _)| now.duration_since(*at) > age) {
                self.events.pop_front();
            }
        }
    }

    fn bounds(&self, epoch: Epoch) -> Bounds {
        let first = self.events.front().map_or(self.last + 1, |(_, e)| e.seq);
        Bounds { epoch, first, last: self.last }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_retention(Retention::default())
    }
}

impl MemoryStore {
    /// A store with the default retention (1000 events per topic, no age limit).
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store with the given retention.
    pub fn with_retention(retention: Retention) -> MemoryStore {
        MemoryStore {
            epoch: Epoch::random(),
            retention,
            topics: Mutex::new(HashMap::new()),
            tail: broadcast::channel(TAIL_CAPACITY).0,
            hubs: LocalTails::new(),
        }
    }

    /// This store's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, TopicLog>> {
        // A panic while holding the lock cannot leave a log half-updated (every update is a
        // push or pop), so a poisoned lock is still consistent.
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(&self, new: NewEvent) -> Result<Event, StoreError> {
        let now = Instant::now();
        let mut topics = self.lock();
        // Every event of a topic carries the log's own copy of its name (compared by address
        // on the live path).
        let topic = topics.get_key_value(&new.topic).map_or(new.topic, |(name, _)| name.clone());
        let log = topics.entry(topic.clone()).or_default();
        log.last += 1;
        let event = Event {
            epoch: self.epoch,
            topic,
            seq: log.last,
            event_type: new.event_type,
            data: new.data,
        };
        log.events.push_back((now, event.clone()));
        log.trim(&self.retention, now);
        // Queued and sent under the lock, so hubs and tails see each topic in log order.
        self.hubs.queue(event.clone());
        if self.tail.receiver_count() > 0 {
            let _ = self.tail.send(event.clone());
        }
        drop(topics);
        self.hubs.flush();
        Ok(event)
    }

    async fn bounds(&self, topic: &Topic) -> Result<Bounds, StoreError> {
        let mut topics = self.lock();
        Ok(match topics.get_mut(topic) {
            Some(log) => {
                log.trim(&self.retention, Instant::now());
                log.bounds(self.epoch)
            }
            None => Bounds { epoch: self.epoch, first: 1, last: 0 },
        })
    }

    async fn read_after(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut topics = self.lock();
        let Some(log) = topics.get_mut(topic) else {
            return Ok(Page { bounds: Bounds { epoch: self.epoch, first: 1, last: 0 }, events: vec![] });
        };
        log.trim(&self.retention, Instant::now());
        let bounds = log.bounds(self.epoch);
        let skip = after.saturating_add(1).saturating_sub(bounds.first);
        let events = usize::try_from(skip)
            .ok()
            .filter(|&skip| skip < log.events.len())
            .map(|skip| log.events.iter().skip(skip).take(limit).map(|(_, e)| e.clone()).collect())
            .unwrap_or_default();
        Ok(Page { bounds, events })
    }

    async fn live_tail(&self) -> Result<LiveTail, StoreError> {
        let stream = BroadcastStream::new(self.tail.subscribe()).map(|item| match item {
            Ok(event) => TailItem::Event(event),
            Err(_lagged) => TailItem::Resync,
        });
        Ok(Box::pin(stream))
    }

    fn attach_local_tail(&self, tail: LocalTail) -> bool {
        self.hubs.attach(tail);
        true
    }
}
