//! One subscriber's `text/event-stream`: the updates its selectors and token let through, as
//! the shared frames encoded once per update, with heartbeats, gap notices, and an end when the
//! token expires or the hub shuts down.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tidings_core::{Cursor, Delivery, SharedEvent, Subscription};
use tokio::time::Instant;

use crate::selector::Selectors;
use crate::update::{Decoded, GAP_EVENT, View, cursor_id};

/// Who may receive what: a subscriber's topic selectors and, for private updates, the selectors
/// of its token's `mercure.subscribe` claim.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The `topic` selectors of the request.
    pub topics: Selectors,
    /// The token's `mercure.subscribe` selectors (`None`: no token, no private update).
    pub private: Option<Selectors>,
}

impl Filter {
    /// Whether an update reaches this subscriber (draft-07, "Subscription"): one of its topics
    /// matches one of the request's selectors, and, if it is private, one of its topics matches
    /// one of the token's.
    pub fn lets_through(&self, view: &View<'_>) -> bool {
        if !view.topics().any(|t| self.topics.matches(t)) {
            return false;
        }
        !view.private() || self.private.as_ref().is_some_and(|p| view.topics().any(|t| p.matches(t)))
    }
}

/// A burst is gathered into one chunk up to this size.
const WRITE_BUFFER: usize = 64 * 1024;

/// An SSE comment, sent when the stream has been silent for a heartbeat interval.
const HEARTBEAT: &[u8] = b":\n\n";

/// The state of one stream.
pub struct StreamState {
    subscription: Subscription,
    filter: Filter,
    out: BytesMut,
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    interval: Duration,
    last_write: Instant,
    /// When the subscriber's token expires (far off without one): its deadline is checked
    /// before each write, so that a stream that never goes idle ends too.
    expires: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    /// Held for as long as the stream lives (the subscription's registration).
    _guard: Option<Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamState").field("filter", &self.filter).finish_non_exhaustive()
    }
}

impl StreamState {
    /// A stream that starts with `preamble`.
    pub fn new(
        subscription: Subscription,
        filter: Filter,
        preamble: &[u8],
        interval: Duration,
        expires: Option<Instant>,
        guard: Option<Arc<dyn Send + Sync>>,
    ) -> StreamState {
        let now = Instant::now();
        // Far enough to never fire: a token without `exp`.
        let never = now + Duration::from_secs(100 * 365 * 24 * 3600);
        StreamState {
            subscription,
            filter,
            out: BytesMut::from(preamble),
            heartbeat: Box::pin(tokio::time::sleep_until(now + interval)),
            interval,
            last_write: now,
            expires: Box::pin(tokio::time::sleep_until(expires.unwrap_or(never))),
            done: false,
            _guard: guard,
        }
    }

    /// The next chunk of the body, or the end.
    #[allow(clippy::manual_async_fn)]
    pub fn step(mut self) -> impl std::future::Future<Output = Option<(Result<Bytes, Infallible>, StreamState)>> + Send {
        async move {
            loop {
                if Instant::now() >= self.expires.deadline() && !self.done {
                    // The token is no longer valid: nothing more goes out, queued or not.
                    self.out.clear();
                    self.done = true;
                }
                if !self.out.is_empty() {
                    self.last_write = Instant::now();
                    let chunk = self.out.split().freeze();
                    return Some((Ok(chunk), self));
                }
                if self.done {
                    return None;
                }
                while self.out.len() < WRITE_BUFFER && !self.done {
                    match self.subscription.next_ready().await {
                        Some(delivery) => self.push(delivery),
                        None => break,
                    }
                    // A replay through updates this subscriber does not see can be long, and a
                    // store in memory never makes it wait: let other tasks run.
                    tokio::task::consume_budget().await;
                }
                if !self.out.is_empty() {
                    continue;
                }
                // Idle: give back what a burst took.
                self.out = BytesMut::new();
                tokio::select! {
                    delivery = self.subscription.next() => match delivery {
                        Some(delivery) => self.push(delivery),
                        None => self.done = true,
                    },
                    // The token is no longer valid: the check above ends the stream.
                    () = self.expires.as_mut() => {}
                    () = self.heartbeat.as_mut() => {
                        let due = self.last_write + self.interval;
                        let now = Instant::now();
                        if now >= due {
                            self.heartbeat.as_mut().reset(now + self.interval);
                            self.out.extend_from_slice(HEARTBEAT);
                        } else {
                            self.heartbeat.as_mut().reset(due);
                        }
                    }
                }
            }
        }
    }

    fn push(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Event(event) => self.put_update(&event),
            Delivery::Gap(_) => {
                // The core says updates after the subscriber's position are gone from the log.
                self.out.extend_from_slice(gap_frame("trimmed", &self.subscription.cursor()).as_bytes());
            }
            Delivery::Closing(closing) => {
                self.done = true;
                self.out.extend_from_slice(format!("retry: {}\n\n", closing.reconnect_after.as_millis()).as_bytes());
            }
            _ => {}
        }
    }

    fn put_update(&mut self, event: &SharedEvent) {
        let filter = &self.filter;
        let out = &mut self.out;
        event.with_encoded::<Decoded, _>(|bytes| {
            let view = View::new(bytes);
            if filter.lets_through(&view) {
                out.extend_from_slice(view.frame());
            }
        });
    }
}

/// tidings' gap notice on a Mercure stream: an event of type [`GAP_EVENT`] (clients that do
/// not listen for it never see it) whose data says why: `trimmed` (the log no longer holds
/// every update after the subscriber's id) or `unknown-id` (the hub does not know the id). Its
/// `id:` is the position the stream goes on from (`at`), so that a client reconnecting before
/// the next update resumes there rather than from the id that was lost.
pub fn gap_frame(reason: &str, at: &Cursor) -> String {
    let id = cursor_id(at);
    format!("id: {id}\nevent: {GAP_EVENT}\ndata: {{\"reason\":\"{reason}\"}}\n\n")
}
