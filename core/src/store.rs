//! The [`Store`] trait: the one plug-in point for where events live.

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use tokio_stream::Stream;

use crate::cursor::Epoch;
use crate::event::{Event, NewEvent};
use crate::hub::LocalTail;
use crate::topic::Topic;

/// Where a topic's retained log begins and ends, in one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The epoch of the log.
    pub epoch: Epoch,
    /// The sequence number of the oldest retained event; `last + 1` when none is retained.
    pub first: u64,
    /// The sequence number of the newest event ever appended in this epoch; 0 when none was.
    pub last: u64,
}

/// The answer to [`Store::read_after`]: up to `limit` events, and the bounds at read time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The bounds of the topic when the page was read.
    pub bounds: Bounds,
    /// Events with `seq > after`, in order, consecutive, starting at `max(after + 1, first)`.
    pub events: Vec<Event>,
}

/// What a live tail yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TailItem {
    /// An event just appended (by this process or, for a shared store, by another node).
    Event(Event),
    /// The tail may have missed events (it fell behind, or its connection was cut and restored).
    /// Subscribers re-read the store from their own positions; nothing is lost.
    Resync,
}

/// The stream of events appended to a store, in log order per topic.
pub type LiveTail = Pin<Box<dyn Stream<Item = TailItem> + Send>>;

/// An error from a store, opaque to the hub. Its [`source`](std::error::Error::source) is the
/// store's own error.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with a short lowercase message.
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError { message: message.into(), source: None }
    }

    /// An error caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError { message: message.into(), source: Some(Box::new(source)) }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Where events live: append (the store assigns positions), read after a position, live tail.
///
/// # Contract
///
/// - **Positions.** `append` numbers the events of each topic 1, 2, 3, … within an epoch, with
///   no holes and no reuse, and returns only once the event is as durable as the store promises
///   (committed, for a durable store).
/// - **Reads.** `read_after(topic, after, limit)` returns the retained events with
///   `seq > after`, in order, at most `limit` of them, and the topic's [`Bounds`]. Events older
///   than `bounds.first` are gone (retention); a reader that needed them reports a gap.
/// - **Epoch.** When a store loses its history (a fresh in-memory store, a flushed Redis) it
///   changes epoch; every `Bounds` and `Event` carries the epoch it belongs to.
/// - **Live tail.** `live_tail` yields every event appended after it was opened, per topic in
///   log order (it may also yield some appended shortly before, which the hub skips); when it cannot promise that (it fell behind, a connection dropped), it yields
///   [`TailItem::Resync`]. The hub opens one tail per hub and shares it with all subscribers.
/// - **Local tail** (optional). A store through which every append to its log passes (nothing
///   else writes it) may accept a [`LocalTail`] in [`attach_local_tail`](Store::attach_local_tail)
///   and announce each event to it itself, in log order, before `append` returns: the hub then
///   reads no live tail, and an event reaches subscribers without a hop through another task.
///
/// The `tidings-conformance` crate checks all of this for any implementation.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Appends `event` to its topic and returns it with its epoch and position.
    async fn append(&self, event: NewEvent) -> Result<Event, StoreError>;

    /// The current bounds of `topic`.
    async fn bounds(&self, topic: &Topic) -> Result<Bounds, StoreError>;

    /// Up to `limit` retained events of `topic` with `seq > after`, oldest first.
    async fn read_after(&self, topic: &Topic, after: u64, limit: usize)
    -> Result<Page, StoreError>;

    /// Opens a live tail of everything appended from now on.
    async fn live_tail(&self) -> Result<LiveTail, StoreError>;

    /// Offers a hub a direct way in for the events appended through this store (see
    /// [`LocalTail`]). Return `true` to take it: from then on, [`LocalTail::announce`] every
    /// appended event, in log order, before `append` returns, until `announce` returns `false`.
    /// Several hubs may share one store; each attaches its own.
    ///
    /// The default, `false`, suits a store that other processes append to (a shared Redis): the
    /// hub then reads [`live_tail`](Store::live_tail).
    fn attach_local_tail(&self, tail: LocalTail) -> bool {
        let _ = tail;
        false
    }
}
