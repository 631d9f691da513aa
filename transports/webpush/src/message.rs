//! What a push carries: the event as compact JSON, or a truncated form, or a gap notice.
//!
//! ```text
//! {"id":"<event id>","cursor":"<subscription cursor>","topic":"news","event":null,"data":"…"}
//! {"id":"<event id>","cursor":"…","topic":"news","event":null,"truncated":true,"after":"<cursor before it>"}
//! {"id":"<cursor after the gap>","cursor":"<the same>","gap":{"topics":["news"]}}
//! ```
//!
//! `id` is the event's own cursor ([`Event::cursor`]): the same however often the event is
//! sent, so a service worker can drop an id it has already shown. `cursor` is the push
//! subscription's cursor after this event (all its topics): a page can resume its SSE or
//! long-poll feed from it, or register a new push subscription with it. An event whose JSON does not
//! fit in one encrypted record of 4096 bytes ([`MAX_PLAINTEXT`] bytes of JSON) is never
//! truncated mid-way: its push carries no `data`, and the worker fetches the event from the
//! long-poll endpoint with `after` (for example `GET /poll?topic=news&cursor=<after>&timeout=0`,
//! whose first event has this `id`).

use serde::Serialize;
use tidings_core::{Cursor, Event, EventType, JsonEvent, SharedEvent, Topic};

/// The largest encrypted body a push may have (RFC 8291 §4: one record of 4096 bytes).
pub const MAX_RECORD: usize = 4096;

/// The largest plaintext that fits: 4096 less the header (86 bytes: salt, record size, key id
/// length, 65-byte key), the padding delimiter (1) and the AEAD tag (16).
pub const MAX_PLAINTEXT: usize = MAX_RECORD - 86 - 1 - 16;

#[derive(Serialize)]
struct Truncated<'a> {
    id: &'a str,
    cursor: &'a str,
    topic: &'a Topic,
    event: Option<&'a EventType>,
    truncated: bool,
    after: &'a str,
}

#[derive(Serialize)]
struct GapNotice<'a> {
    id: &'a str,
    cursor: &'a str,
    gap: GapTopics<'a>,
}

#[derive(Serialize)]
struct GapTopics<'a> {
    topics: &'a [Topic],
}

/// A push payload and whether it carries the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The JSON, at most [`MAX_PLAINTEXT`] bytes.
    pub json: Vec<u8>,
    /// `true` when the data was left out because it did not fit.
    pub truncated: bool,
}

/// The payload for `event`, pushed to a subscription whose cursor after it is `cursor`: the
/// whole event if it fits, else the truncated form. The event's JSON is the shared
/// [`JsonEvent`] encoding, made once per event whatever the number of subscriptions (and
/// shared with long-polling); only `id` and `cursor` are written per subscription. Cursor
/// tokens are base64url, so they need no escaping.
pub fn event_payload(event: &SharedEvent, cursor: &str) -> Payload {
    let id = event.event().cursor().to_string();
    let body = event.encoded::<JsonEvent>();
    let mut json = Vec::with_capacity(21 + id.len() + cursor.len() + body.len());
    json.extend_from_slice(b"{\"id\":\"");
    json.extend_from_slice(id.as_bytes());
    json.extend_from_slice(b"\",\"cursor\":\"");
    json.extend_from_slice(cursor.as_bytes());
    json.extend_from_slice(b"\",");
    json.extend_from_slice(&body);
    if json.len() <= MAX_PLAINTEXT {
        return Payload { json, truncated: false };
    }
    truncated_payload(event.event(), cursor)
}

/// The truncated form of `event`'s payload (no data).
pub fn truncated_payload(event: &Event, cursor: &str) -> Payload {
    let id = event.cursor().to_string();
    let mut before = Cursor::new(event.epoch);
    before.set(&event.topic, event.seq.saturating_sub(1));
    let after = before.to_string();
    let json = serde_json::to_vec(&Truncated {
        id: &id,
        cursor,
        topic: &event.topic,
        event: event.event_type.as_ref(),
        truncated: true,
        after: &after,
    })
    .unwrap_or_default();
    Payload { json, truncated: true }
}

/// The payload of a gap notice for `topics`, with the cursor after the gap as its id.
pub fn gap_payload(topics: &[Topic], cursor: &Cursor) -> Payload {
    let id = cursor.to_string();
    let json = serde_json::to_vec(&GapNotice { id: &id, cursor: &id, gap: GapTopics { topics } }).unwrap_or_default();
    Payload { json, truncated: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::Epoch;

    fn event(data: &str) -> SharedEvent {
        SharedEvent::new(Event {
            epoch: Epoch::from_raw(9),
            topic: Topic::new("news"),
            seq: 7,
            event_type: None,
            data: data.into(),
        })
    }

    #[test]
    fn small_events_carry_their_data() {
        let p = event_payload(&event("a\nb ✓"), "C");
        assert!(!p.truncated);
        let v: serde_json::Value = serde_json::from_slice(&p.json).unwrap();
        assert_eq!(v["data"], "a\nb ✓");
        assert_eq!(v["topic"], "news");
        assert_eq!(v["id"], event("").event().cursor().to_string());
        assert_eq!(v["cursor"], "C");
        assert!(v["event"].is_null());
    }

    #[test]
    fn the_largest_event_that_fits_is_whole_and_one_byte_more_is_truncated() {
        let overhead = event_payload(&event(""), "C").json.len();
        let fits = "x".repeat(MAX_PLAINTEXT - overhead);
        let p = event_payload(&event(&fits), "C");
        assert_eq!(p.json.len(), MAX_PLAINTEXT);
        assert!(!p.truncated);
        let p = event_payload(&event(&format!("{fits}x")), "C");
        assert!(p.truncated);
        let v: serde_json::Value = serde_json::from_slice(&p.json).unwrap();
        assert_eq!(v["truncated"], true);
        assert!(v.get("data").is_none());
        let after = Cursor::parse(v["after"].as_str().unwrap()).unwrap();
        assert_eq!(after.position(&Topic::new("news")), Some(6));
    }

    #[test]
    fn gap_notices_name_their_topics() {
        let cursor = Cursor::new(Epoch::from_raw(1));
        let p = gap_payload(&[Topic::new("a")], &cursor);
        let v: serde_json::Value = serde_json::from_slice(&p.json).unwrap();
        assert_eq!(v["gap"]["topics"][0], "a");
        assert_eq!(v["id"], cursor.to_string());
    }
}
