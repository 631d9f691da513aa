//! A Mercure update as the log holds it, and its wire form, encoded once per event.
//!
//! Every update is one event of the hub's single tidings topic ([`LOG_TOPIC`]); its data is the
//! JSON record [`Update`]. The hub never parses a record once per subscriber: [`Decoded`] is a
//! [`WireFormat`], so the record is parsed once per event (on the first subscriber that needs
//! it) into the bytes every subscriber shares: the routing part (private flag and topics),
//! the SSE frame and the update's id.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tidings_core::{Cursor, Epoch, Event, Topic, WireFormat};

/// The tidings topic that holds every update, in the order the hub accepted them: one log,
/// one position per update, so that a `Last-Event-ID` is one position whatever topics and
/// selectors the subscriber has.
pub const LOG_TOPIC: &str = "mercure";

/// The prefix of the ids the hub makes for updates published without one: the rest is the
/// update's cursor token, so that such an id is found without an index.
pub const HUB_ID_PREFIX: &str = "urn:tidings:";

/// The event type of tidings' gap notice on a Mercure stream. Publishers may not use the
/// `tidings.` prefix, so it never collides with an app's types.
pub const GAP_EVENT: &str = "tidings.gap";

/// An update as stored: the fields of a Mercure publish request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The topics: the first is canonical, the others alternates.
    pub topics: Vec<String>,
    /// Whether only subscribers authorized for one of the topics receive it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// The publisher's id (`None`: the hub's, from the update's position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The SSE event type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The SSE `retry:` hint, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
    /// The payload.
    #[serde(default)]
    pub data: String,
}

/// The id the hub gives a position of its log: [`HUB_ID_PREFIX`] and the cursor's token. An
/// update published without an id has the id of its own position; gap notices, long-poll
/// batches and the subscriptions API name positions this way too.
pub fn cursor_id(cursor: &Cursor) -> String {
    let mut id = String::from(HUB_ID_PREFIX);
    cursor.encode_into(&mut id);
    id
}

/// The cursor at position `seq` of the hub's log in `epoch`.
pub fn at(epoch: Epoch, seq: u64) -> Cursor {
    let mut cursor = Cursor::new(epoch);
    cursor.set(&log_topic(), seq);
    cursor
}

/// The id the hub makes for the update stored as `event` when its publisher gave none.
pub fn hub_id(event: &Event) -> String {
    cursor_id(&event.cursor())
}

/// The decoded form of a stored update, shared by every subscriber:
/// `[routing length: u32][routing][id length: u32][id][SSE frame]`, where routing is one byte
/// (`1` private, `0` public) and the topics, each followed by `\n`.
///
/// A record that does not parse (written by something else) decodes to no topics: it reaches
/// nobody.
#[derive(Debug)]
pub struct Decoded;

impl WireFormat for Decoded {
    fn encode(event: &Event) -> Bytes {
        let Ok(update) = serde_json::from_str::<Update>(&event.data) else {
            tracing::warn!(seq = event.seq, "an update in the log does not parse; it reaches nobody");
            let mut out = BytesMut::with_capacity(9);
            out.put_u32(1);
            out.put_u8(b'0');
            out.put_u32(0);
            return out.freeze();
        };
        let id = update.id.clone().unwrap_or_else(|| hub_id(event));
        let routing_len = 1 + update.topics.iter().map(|t| t.len() + 1).sum::<usize>();
        let mut out = BytesMut::with_capacity(8 + routing_len + id.len() * 2 + update.data.len() + 64);
        out.put_u32(u32::try_from(routing_len).unwrap_or(u32::MAX));
        out.put_u8(if update.private { b'1' } else { b'0' });
        for topic in &update.topics {
            out.extend_from_slice(topic.as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u32(u32::try_from(id.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(id.as_bytes());
        write_frame(&mut out, &id, update.kind.as_deref(), update.retry, &update.data);
        out.freeze()
    }
}

/// Writes one SSE event (WHATWG HTML, "Server-sent events"): `id:`, `event:`, `retry:`, one
/// `data:` line per line of the payload (CRLF, CR and LF all end a line), then a blank line.
fn write_frame(out: &mut BytesMut, id: &str, kind: Option<&str>, retry: Option<u64>, data: &str) {
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.put_u8(b'\n');
    if let Some(kind) = kind {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(retry) = retry {
        out.extend_from_slice(format!("retry: {retry}\n").as_bytes());
    }
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.find(['\r', '\n']) {
            Some(end) => {
                out.extend_from_slice(&rest.as_bytes()[..end]);
                out.put_u8(b'\n');
                let skip = if rest[end..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[end + skip..];
            }
            None => {
                out.extend_from_slice(rest.as_bytes());
                out.extend_from_slice(b"\n\n");
                break;
            }
        }
    }
}

/// A view of a [`Decoded`] encoding.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    routing: &'a [u8],
    id: &'a [u8],
    frame: &'a [u8],
}

impl<'a> View<'a> {
    /// Reads `bytes`, a [`Decoded`] encoding.
    pub fn new(bytes: &'a [u8]) -> View<'a> {
        let (routing, rest) = take(bytes);
        let (id, frame) = take(rest);
        View { routing, id, frame }
    }

    /// Whether the update is private.
    pub fn private(&self) -> bool {
        self.routing.first() == Some(&b'1')
    }

    /// The update's topics, canonical first.
    pub fn topics(&self) -> impl Iterator<Item = &'a str> + 'a {
        let topics = self.routing.get(1..).unwrap_or_default();
        topics.split(|&b| b == b'\n').filter(|t| !t.is_empty()).map(|t| std::str::from_utf8(t).unwrap_or_default())
    }

    /// The update's id.
    pub fn id(&self) -> &'a str {
        std::str::from_utf8(self.id).unwrap_or_default()
    }

    /// The SSE frame (empty for a record that did not parse).
    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }
}

fn take(bytes: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else { return (&[], &[]) };
    let len = (u32::from_be_bytes(*len) as usize).min(rest.len());
    rest.split_at(len)
}

/// An update as one item of a long-poll batch, `{"id":…,"type":…,"data":…}`, encoded once per
/// event for every poll that receives it (`poll.rs`). A record that does not parse is `null`
/// (it reaches nobody: [`Decoded`] gives it no topics).
#[derive(Debug)]
pub struct PollItem;

impl WireFormat for PollItem {
    fn encode(event: &Event) -> Bytes {
        #[derive(Serialize)]
        struct Item<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: Option<&'a str>,
            data: &'a str,
        }
        let Ok(update) = serde_json::from_str::<Update>(&event.data) else { return Bytes::from_static(b"null") };
        let id = update.id.clone().unwrap_or_else(|| hub_id(event));
        let item = Item { id: &id, kind: update.kind.as_deref(), data: &update.data };
        serde_json::to_vec(&item).map(Bytes::from).unwrap_or_else(|_| Bytes::from_static(b"null"))
    }
}

/// An update as a Web Push payload, `{"lastEventID":…,"id":…,"type":…,"data":…}`: the
/// [`PollItem`] with the position after the update in front. The log is one topic, so that
/// position is the update's own cursor, the same for every registration: the payload is
/// encoded once per event, not per registration (`push.rs`). A record that does not parse is
/// `null` (it reaches nobody).
#[derive(Debug)]
pub struct PushItem;

impl WireFormat for PushItem {
    fn encode(event: &Event) -> Bytes {
        let item = PollItem::encode(event);
        let Some(fields) = item.strip_prefix(b"{") else { return item };
        let position = serde_json::to_vec(&cursor_id(&event.cursor())).unwrap_or_default();
        let mut out = BytesMut::with_capacity(16 + position.len() + fields.len());
        out.extend_from_slice(b"{\"lastEventID\":");
        out.extend_from_slice(&position);
        out.put_u8(b',');
        out.extend_from_slice(fields);
        out.freeze()
    }
}

/// The hub's log topic.
pub fn log_topic() -> Topic {
    Topic::new(LOG_TOPIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::Epoch;

    fn event(update: &Update) -> Event {
        Event {
            epoch: Epoch::from_raw(7),
            topic: log_topic(),
            seq: 3,
            event_type: None,
            data: serde_json::to_string(update).unwrap().into(),
        }
    }

    #[test]
    fn a_record_decodes_to_its_routing_id_and_frame() {
        let update = Update {
            topics: vec!["https://example.com/books/1".into(), "https://example.com/books".into()],
            private: true,
            id: Some("urn:uuid:1".into()),
            kind: Some("change".into()),
            retry: Some(2500),
            data: "a\r\nb\rc\nd".into(),
        };
        let bytes = Decoded::encode(&event(&update));
        let view = View::new(&bytes);
        assert!(view.private());
        assert_eq!(view.topics().collect::<Vec<_>>(), update.topics);
        assert_eq!(view.id(), "urn:uuid:1");
        assert_eq!(
            std::str::from_utf8(view.frame()).unwrap(),
            "id: urn:uuid:1\nevent: change\nretry: 2500\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn without_a_publisher_id_the_id_is_the_cursor_of_the_update() {
        let update = Update { topics: vec!["t".into()], private: false, id: None, kind: None, retry: None, data: String::new() };
        let event = event(&update);
        let bytes = Decoded::encode(&event);
        let view = View::new(&bytes);
        let id = view.id();
        let token = id.strip_prefix(HUB_ID_PREFIX).unwrap();
        let cursor = tidings_core::Cursor::parse(token).unwrap();
        assert_eq!(cursor.position(&log_topic()), Some(3));
        assert_eq!(std::str::from_utf8(view.frame()).unwrap(), format!("id: {id}\ndata: \n\n"));
        assert!(!view.private());
    }

    #[test]
    fn a_push_item_is_the_poll_item_after_the_position_of_the_update() {
        let update = Update { topics: vec!["t".into()], private: false, id: Some("urn:a".into()), kind: None, retry: None, data: "d\"".into() };
        let event = event(&update);
        let push: serde_json::Value = serde_json::from_slice(&PushItem::encode(&event)).unwrap();
        let poll: serde_json::Value = serde_json::from_slice(&PollItem::encode(&event)).unwrap();
        assert_eq!(push["lastEventID"], cursor_id(&event.cursor()));
        for field in ["id", "type", "data"] {
            assert_eq!(push[field], poll[field], "{field}");
        }
        let mut unreadable = event;
        unreadable.data = "not json".into();
        assert_eq!(&PushItem::encode(&unreadable)[..], b"null");
    }

    #[test]
    fn a_record_that_does_not_parse_reaches_nobody() {
        let mut event = event(&Update { topics: vec![], private: false, id: None, kind: None, retry: None, data: String::new() });
        event.data = "not json".into();
        let bytes = Decoded::encode(&event);
        let view = View::new(&bytes);
        assert_eq!(view.topics().count(), 0);
        assert!(view.frame().is_empty());
    }
}
