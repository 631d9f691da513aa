//! Where a `Last-Event-ID` stands in the log.
//!
//! An id the hub made is the update's cursor ([`HUB_ID_PREFIX`]):
//! read, not looked up. A publisher's id is looked up in an index from id to position, built
//! from the log itself: an id it does not hold sends it reading the log from where it stopped
//! to the end (the updates other hubs on the same Redis appended, or those before a restart),
//! then it looks again. So the index is exact across restarts and nodes without a table of its
//! own. It holds at most its capacity of ids, the oldest going first: give it at least the log's
//! retention, so that an id leaves the index when its update leaves the log (an id the index
//! dropped while the log kept it would, if it came again later, name the later update). When an
//! id appears twice, the first update that carried it is the one found.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tidings_core::{Cursor, Epoch, Store, StoreError, Topic};

use crate::update::HUB_ID_PREFIX;

/// The id field of a stored record.
#[derive(serde::Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

/// Where a `Last-Event-ID` puts a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Just after the update with this id.
    After(Cursor),
    /// The id is not in the retained log (unknown, or trimmed): from the oldest retained update,
    /// after a gap notice.
    Unknown,
}

/// The id index of one hub (see the [module documentation](self)).
#[derive(Debug)]
pub struct Ids {
    store: Arc<dyn Store>,
    topic: Topic,
    /// Ids kept at most.
    capacity: usize,
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    epoch: Option<Epoch>,
    by_id: HashMap<Arc<str>, u64>,
    /// Every indexed id with its position, oldest first.
    order: VecDeque<(u64, Arc<str>)>,
    /// The log has been read up to this position.
    indexed: u64,
}

/// Updates read per page while catching up.
const PAGE: usize = 1000;

impl Ids {
    /// An index of the hub's log in `store`, keeping at most `capacity` ids.
    pub fn new(store: Arc<dyn Store>, capacity: usize) -> Ids {
        Ids { store, topic: crate::update::log_topic(), capacity: capacity.max(1), state: tokio::sync::Mutex::new(State::default()) }
    }

    /// Where `id` puts a subscriber.
    ///
    /// # Errors
    ///
    /// The store could not be read.
    pub async fn position(&self, id: &str) -> Result<Position, StoreError> {
        if let Some(token) = id.strip_prefix(HUB_ID_PREFIX) {
            return Ok(match Cursor::parse(token) {
                Ok(cursor) if cursor.position(&self.topic).is_some() => Position::After(cursor),
                _ => Position::Unknown,
            });
        }
        let mut state = self.state.lock().await;
        if let Some(found) = state.find(id) {
            return Ok(Position::After(found));
        }
        self.catch_up(&mut state).await?;
        Ok(state.find(id).map_or(Position::Unknown, Position::After))
    }

    /// Records the id of an update this hub just appended (as position `seq` of `epoch`), so
    /// that a subscriber resuming from it needs no read. When the index is behind (other hubs
    /// appended, or this one just started), it first reads what it missed: an id stays known
    /// for as long as the log keeps its update, and one the log dropped is told apart from
    /// one it never held.
    ///
    /// # Errors
    ///
    /// The store could not be read (the index catches up on the next lookup).
    pub async fn appended(&self, id: &str, epoch: Epoch, seq: u64) -> Result<(), StoreError> {
        // Another caller is catching up (and will read this update too): the publish does not
        // wait for it.
        let Ok(mut state) = self.state.try_lock() else { return Ok(()) };
        if state.epoch == Some(epoch) && seq == state.indexed + 1 {
            if !id.starts_with(HUB_ID_PREFIX) {
                state.insert(id, seq, self.capacity);
            }
            state.indexed = seq;
            return Ok(());
        }
        if state.epoch != Some(epoch) || seq > state.indexed {
            self.catch_up(&mut state).await?;
        }
        Ok(())
    }

    /// Reads the log from where the index stopped to its end.
    async fn catch_up(&self, state: &mut State) -> Result<(), StoreError> {
        loop {
            let page = self.store.read_after(&self.topic, state.indexed, PAGE).await?;
            if state.epoch != Some(page.bounds.epoch) {
                // A new log (a fresh store, a flushed Redis): nothing indexed holds.
                *state = State { epoch: Some(page.bounds.epoch), ..State::default() };
                continue;
            }
            let Some(last) = page.events.last() else { return Ok(()) };
            let last = last.seq;
            for event in &page.events {
                // The id alone: no frame is built for it.
                if let Ok(IdOnly { id: Some(id) }) = serde_json::from_str::<IdOnly>(&event.data)
                    && !id.starts_with(HUB_ID_PREFIX)
                    && !id.is_empty()
                {
                    state.insert(&id, event.seq, self.capacity);
                }
            }
            state.indexed = last;
            if page.events.len() < PAGE {
                return Ok(());
            }
        }
    }
}

impl State {
    fn find(&self, id: &str) -> Option<Cursor> {
        let seq = *self.by_id.get(id)?;
        Some(crate::update::at(self.epoch?, seq))
    }

    fn insert(&mut self, id: &str, seq: u64, capacity: usize) {
        let id: Arc<str> = id.into();
        if self.by_id.contains_key(&id) {
            // The first update with an id is the one it names.
            return;
        }
        self.by_id.insert(id.clone(), seq);
        self.order.push_back((seq, id));
        while self.order.len() > capacity {
            if let Some((seq, id)) = self.order.pop_front()
                && self.by_id.get(&id) == Some(&seq)
            {
                self.by_id.remove(&id);
            }
        }
    }
}
