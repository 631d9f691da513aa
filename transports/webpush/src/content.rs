//! What each push subscription is sent: which of its topics' events, and with what payload.
//!
//! By default ([`EventContent`]) every event of a subscription's topics is pushed as the
//! [`message`] module describes. An application that routes events above the
//! core, as a Mercure hub does with its selectors and private updates, gives the builder its own
//! [`PushContent`] ([`WebPushBuilder::content`](crate::WebPushBuilder::content)): it reads each
//! registration's [`filter`](crate::Registration::filter) once, when the dispatcher starts
//! serving it, and then chooses per event.
//!
//! ```
//! use tidings_core::{Cursor, Gap, SharedEvent};
//! use tidings_webpush::content::{PushContent, PushMessages};
//! use tidings_webpush::message::{self, Payload};
//! use tidings_webpush::Registration;
//!
//! /// Pushes only the events whose data starts with the registration's filter.
//! #[derive(Debug)]
//! struct Prefix;
//!
//! struct PrefixMessages(String);
//!
//! impl PushContent for Prefix {
//!     fn messages(&self, registration: &Registration) -> Result<Box<dyn PushMessages>, String> {
//!         Ok(Box::new(PrefixMessages(registration.filter.clone().unwrap_or_default())))
//!     }
//! }
//!
//! impl PushMessages for PrefixMessages {
//!     fn event(&self, event: &SharedEvent, cursor: &Cursor) -> Option<Payload> {
//!         event.event().data.starts_with(self.0.as_str()).then(|| message::event_payload(event, &cursor.to_string()))
//!     }
//!     fn truncated(&self, event: &SharedEvent, cursor: &Cursor) -> Payload {
//!         message::truncated_payload(event.event(), &cursor.to_string())
//!     }
//!     fn gap(&self, gap: &Gap, cursor: &Cursor) -> Payload {
//!         message::gap_payload(&gap.topics, cursor)
//!     }
//! }
//! ```

use std::fmt;

use tidings_core::{Cursor, Gap, SharedEvent};

use crate::message::{self, Payload};
use crate::registry::Registration;

/// Chooses what each push subscription is sent (see the [module documentation](self)).
pub trait PushContent: Send + Sync + fmt::Debug + 'static {
    /// The messages of `registration`, built once when the dispatcher starts serving it (at
    /// start-up, or when it registers). An `Err` says it can never be served (a filter that no
    /// longer reads, a token signed with a key the application no longer trusts): it is logged
    /// with its text and deleted from the registry.
    fn messages(&self, registration: &Registration) -> Result<Box<dyn PushMessages>, String>;
}

/// What one push subscription is sent, from [`PushContent::messages`]. Each method gets the
/// subscription's cursor after the event or gap (all its topics), which a payload may carry so
/// that the page resumes its feed from it.
pub trait PushMessages: Send + Sync {
    /// The payload of `event`, or `None` to push nothing for it: the subscription's cursor
    /// moves past it all the same (saved within a second, so a restart may look at what it
    /// skipped then again, and skip it again). A payload over [`message::MAX_PLAINTEXT`] bytes
    /// is not sent: [`PushMessages::truncated`] is, as after a push service's 413.
    fn event(&self, event: &SharedEvent, cursor: &Cursor) -> Option<Payload>;

    /// The smaller payload sent once after the push service refused `event`'s as too large
    /// (413), or when it was over [`message::MAX_PLAINTEXT`] bytes: one without the data, that
    /// tells the page where to fetch it. If this one is too large too, the event is not pushed
    /// (logged, and counted in [`PushStats::rejected`](crate::PushStats::rejected)).
    fn truncated(&self, event: &SharedEvent, cursor: &Cursor) -> Payload;

    /// The payload that says the log no longer held what followed the subscription's cursor.
    fn gap(&self, gap: &Gap, cursor: &Cursor) -> Payload;
}

/// The default content: every event of the subscription's topics, as the
/// [`message`] module describes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventContent;

impl PushContent for EventContent {
    fn messages(&self, _registration: &Registration) -> Result<Box<dyn PushMessages>, String> {
        Ok(Box::new(EventContent))
    }
}

impl PushMessages for EventContent {
    fn event(&self, event: &SharedEvent, cursor: &Cursor) -> Option<Payload> {
        Some(message::event_payload(event, &cursor.to_string()))
    }

    fn truncated(&self, event: &SharedEvent, cursor: &Cursor) -> Payload {
        message::truncated_payload(event.event(), &cursor.to_string())
    }

    fn gap(&self, gap: &Gap, cursor: &Cursor) -> Payload {
        message::gap_payload(&gap.topics, cursor)
    }
}
