//! Events: what a publisher sends ([`NewEvent`]), what the store keeps ([`Event`]), and the
//! shared, encode-once form that fans out to subscribers ([`SharedEvent`]).

use std::any::TypeId;
use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::cursor::{Cursor, Epoch};
use crate::topic::Topic;

/// The longest event type accepted, in bytes of UTF-8.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// The prefix reserved for events that tidings itself emits (such as `tidings.gap`).
pub const RESERVED_EVENT_PREFIX: &str = "tidings.";

/// The event types an `EventSource` dispatches itself, about its connection: `open` when it
/// connects, `error` when it fails (WHATWG HTML, "Server-sent events"). They share one namespace
/// with the events a server sends: an event named `error` reaches every `onerror` handler, and
/// a page cannot tell it from a failed connection. So no event may be published under them.
pub const EVENTSOURCE_EVENT_TYPES: [&str; 2] = ["open", "error"];

/// A validated event type (the SSE `event:` field): 1 to [`MAX_EVENT_TYPE_LEN`] bytes of UTF-8,
/// no control characters, not starting with [`RESERVED_EVENT_PREFIX`], and not one of
/// [`EVENTSOURCE_EVENT_TYPES`] (`open`, `error`). `message`, the type of an event without one,
/// is allowed and arrives as such.
///
/// ```
/// use tidings_core::EventType;
/// assert!(EventType::parse("my-custom-event").is_ok());
/// assert!(EventType::parse("tidings.gap").is_err());
/// assert!(EventType::parse("error").is_err()); // EventSource's own
/// assert!(EventType::parse("Error").is_ok()); // names are case-sensitive
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventType(Arc<str>);

/// Why an event type was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventTypeError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_EVENT_TYPE_LEN`] bytes.
    TooLong {
        /// The length that was given, in bytes.
        len: usize,
    },
    /// The name contains a control character (such as CR or LF, which would break SSE framing).
    ControlCharacter,
    /// The name starts with [`RESERVED_EVENT_PREFIX`].
    Reserved,
    /// The name is one that `EventSource` dispatches itself ([`EVENTSOURCE_EVENT_TYPES`]).
    EventSourceName,
}

impl fmt::Display for EventTypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventTypeError::Empty => f.write_str("event type is empty"),
            EventTypeError::TooLong { len } => {
                write!(f, "event type is {len} bytes long, the limit is {MAX_EVENT_TYPE_LEN}")
            }
            EventTypeError::ControlCharacter => {
                f.write_str("event type contains a control character")
            }
            EventTypeError::Reserved => {
                write!(f, "event types starting with {RESERVED_EVENT_PREFIX:?} are reserved")
            }
            EventTypeError::EventSourceName => {
                f.write_str("event types \"open\" and \"error\" are dispatched by EventSource itself; use another name")
            }
        }
    }
}

impl std::error::Error for EventTypeError {}

impl EventType {
    /// Validates `name` as an event type.
    pub fn parse(name: &str) -> Result<EventType, EventTypeError> {
        if name.is_empty() {
            return Err(EventTypeError::Empty);
        }
        if name.len() > MAX_EVENT_TYPE_LEN {
            return Err(EventTypeError::TooLong { len: name.len() });
        }
        if name.chars().any(char::is_control) {
            return Err(EventTypeError::ControlCharacter);
        }
        if name.starts_with(RESERVED_EVENT_PREFIX) {
            return Err(EventTypeError::Reserved);
        }
        if EVENTSOURCE_EVENT_TYPES.contains(&name) {
            return Err(EventTypeError::EventSourceName);
        }
        Ok(EventType(Arc::from(name)))
    }

    /// Builds an event type the program itself chose.
    ///
    /// # Panics
    ///
    /// Panics if `name` is not valid; use [`EventType::parse`] for untrusted input.
    #[track_caller]
    pub fn new(name: &str) -> EventType {
        match EventType::parse(name) {
            Ok(t) => t,
            Err(err) => panic!("invalid event type {name:?}: {err}"),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        EventType::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// An event on its way into the log: the store gives it a position when it appends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Where the event goes.
    pub topic: Topic,
    /// The optional event type (SSE `event:`); `None` means the default (`message`).
    pub event_type: Option<EventType>,
    /// The payload: any UTF-8 text, newlines included.
    pub data: Arc<str>,
}

impl NewEvent {
    /// An event of the default type.
    pub fn new(topic: Topic, data: impl Into<Arc<str>>) -> NewEvent {
        NewEvent { topic, event_type: None, data: data.into() }
    }

    /// Sets the event type (default: none, which clients see as `message`).
    #[must_use]
    pub fn with_type(mut self, event_type: EventType) -> NewEvent {
        self.event_type = Some(event_type);
        self
    }
}

/// An event as the log holds it: a [`NewEvent`] plus the position the store assigned.
///
/// Positions are per topic: the store numbers the events of each topic 1, 2, 3, … with no
/// holes, within one [`Epoch`] of the log. Cloning is cheap (the data is shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The incarnation of the log this event belongs to.
    pub epoch: Epoch,
    /// The topic.
    pub topic: Topic,
    /// The position of the event within its topic: 1 for the first event of an epoch.
    pub seq: u64,
    /// The optional event type.
    pub event_type: Option<EventType>,
    /// The payload.
    pub data: Arc<str>,
}

impl Event {
    /// The cursor that stands just after this event, for a subscription to its topic alone.
    ///
    /// This is what a publisher may hand to a client as "the id of this event".
    pub fn cursor(&self) -> Cursor {
        let mut cursor = Cursor::new(self.epoch);
        cursor.set(&self.topic, self.seq);
        cursor
    }
}

/// A wire encoding of an event, computed at most once per [`SharedEvent`].
///
/// Each transport defines one (the SSE frame, a JSON object, …). The bytes it returns must not
/// depend on the subscriber: per-subscriber parts (such as a cursor) are written separately.
pub trait WireFormat: 'static {
    /// Encodes `event`.
    fn encode(event: &Event) -> Bytes;
}

/// The JSON of an event without its per-subscriber parts: `"topic":…,"event":…,"data":…}`
/// (the opening brace and whatever belongs to one subscriber, such as its cursor, are written
/// before it). Encoded once per event and shared by the JSON transports: long-poll batches and
/// Web Push payloads.
///
/// ```
/// use tidings_core::{Epoch, Event, JsonEvent, Topic, WireFormat};
/// let event = Event { epoch: Epoch::from_raw(1), topic: Topic::new("t"), seq: 1, event_type: None, data: "a\nb".into() };
/// assert_eq!(&JsonEvent::encode(&event)[..], br#""topic":"t","event":null,"data":"a\nb"}"#);
/// ```
#[derive(Debug)]
pub struct JsonEvent;

impl WireFormat for JsonEvent {
    fn encode(event: &Event) -> Bytes {
        // Strings cannot fail to serialise.
        let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let kind = event.event_type.as_ref().map_or_else(|| "null".to_owned(), |t| json(t.as_str()));
        let mut out = String::with_capacity(event.data.len() + event.topic.as_str().len() + 40);
        out.push_str("\"topic\":");
        out.push_str(&json(event.topic.as_str()));
        out.push_str(",\"event\":");
        out.push_str(&kind);
        out.push_str(",\"data\":");
        out.push_str(&json(&event.data));
        out.push('}');
        Bytes::from(out)
    }
}

/// An event shared by every subscriber that receives it, with a cache of its wire encodings.
///
/// The hub wraps each live event once; every subscriber gets the same `Arc<SharedEvent>`, and
/// [`SharedEvent::encoded`] runs each [`WireFormat`] at most once, however many subscribers ask.
pub struct SharedEvent {
    event: Event,
    /// One slot per wire format, filled in order. A filled slot is read with one atomic load:
    /// thousands of subscribers reading the same event's encoding never write to shared memory
    /// (an `RwLock` would: every reader increments its count).
    encodings: [OnceLock<(TypeId, Bytes)>; ENCODING_SLOTS],
}

/// Wire formats cached per event; a program using more encodes the extra ones per call.
const ENCODING_SLOTS: usize = 4;

impl SharedEvent {
    /// Wraps an event.
    pub fn new(event: Event) -> SharedEvent {
        SharedEvent { event, encodings: std::array::from_fn(|_| OnceLock::new()) }
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The event in wire format `F`, encoded on first use and shared afterwards.
    pub fn encoded<F: WireFormat>(&self) -> Bytes {
        self.with_encoded::<F, _>(Bytes::clone)
    }

    /// Calls `f` with the event in wire format `F` (encoded on first use, as
    /// [`encoded`](SharedEvent::encoded)), lending the shared bytes rather than taking a
    /// reference to them: for a transport that copies them anyway, thousands of subscribers
    /// then never write to the memory they share.
    pub fn with_encoded<F: WireFormat, R>(&self, f: impl FnOnce(&Bytes) -> R) -> R {
        let id = TypeId::of::<F>();
        // Slots fill in order, so a format already cached sits before the first empty slot.
        for slot in &self.encodings {
            let (format, bytes) = slot.get_or_init(|| (id, F::encode(&self.event)));
            if *format == id {
                return f(bytes);
            }
        }
        f(&F::encode(&self.event))
    }
}

impl fmt::Debug for SharedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedEvent").field("event", &self.event).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CALLS: AtomicUsize = AtomicUsize::new(0);
    struct Counting;
    impl WireFormat for Counting {
        fn encode(event: &Event) -> Bytes {
            CALLS.fetch_add(1, Ordering::SeqCst);
            Bytes::copy_from_slice(event.data.as_bytes())
        }
    }

    #[test]
    fn encodes_once_per_format() {
        let shared = SharedEvent::new(Event {
            epoch: Epoch::from_raw(1),
            topic: Topic::new("t"),
            seq: 1,
            event_type: None,
            data: "hello".into(),
        });
        let a = shared.encoded::<Counting>();
        let b = shared.encoded::<Counting>();
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the bytes are shared, not copied");
    }

    #[test]
    fn json_event_escapes_everything() {
        let event = Event {
            epoch: Epoch::from_raw(1),
            topic: Topic::new("a\"b"),
            seq: 1,
            event_type: Some(EventType::new("t")),
            data: "line\r\n\"q\"\0🦀".into(),
        };
        let json = format!("{{\"id\":\"x\",{}", String::from_utf8(JsonEvent::encode(&event).to_vec()).unwrap());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["topic"], "a\"b");
        assert_eq!(v["event"], "t");
        assert_eq!(v["data"], "line\r\n\"q\"\0🦀");
    }

    #[test]
    fn event_types_are_validated() {
        assert!(EventType::parse("ok.type-1").is_ok());
        assert_eq!(EventType::parse(""), Err(EventTypeError::Empty));
        assert_eq!(EventType::parse("a\nb"), Err(EventTypeError::ControlCharacter));
        assert_eq!(EventType::parse("tidings.x"), Err(EventTypeError::Reserved));
        assert_eq!(EventType::parse("open"), Err(EventTypeError::EventSourceName));
        assert_eq!(EventType::parse("error"), Err(EventTypeError::EventSourceName));
        assert!(EventType::parse("message").is_ok());
        assert!(EventType::parse("errors").is_ok());
        assert!(matches!(
            EventType::parse(&"e".repeat(MAX_EVENT_TYPE_LEN + 1)),
            Err(EventTypeError::TooLong { .. })
        ));
    }
}
