//! The `tidings.v1` messages: JSON text, one object per WebSocket message, each with a
//! `"type"`. `docs/protocol.md` ("WebSocket") is their reference.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;
use tidings_core::{Event, JsonEvent, Topic, WireFormat};

use crate::frame;

/// The subprotocol this crate speaks, as `Sec-WebSocket-Protocol` names it.
pub const SUBPROTOCOL: &str = "tidings.v1";

/// The longest `ref` a client may attach to a message, in bytes of JSON.
pub const MAX_REF_LEN: usize = 256;

/// A message from the client, as `tidings.v1` defines them.
#[derive(Debug)]
pub(crate) enum ClientMessage {
    /// Adds topics, positioned by `cursor` where it names them.
    Subscribe { topics: Vec<Topic>, cursor: Option<String> },
    /// Removes topics.
    Unsubscribe { topics: Vec<Topic> },
    /// Publishes an event through the hub, if the endpoint allows it.
    Publish { topic: Topic, event_type: Option<tidings_core::EventType>, data: String },
    /// A message for the application's handler.
    Message { data: Box<RawValue> },
    /// Asks for a `pong` (a heartbeat a browser's script can see).
    Ping,
}

/// A client message and the `ref` it carries (echoed, as raw JSON, in the answer).
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) message: ClientMessage,
    pub(crate) reference: Option<Box<RawValue>>,
}

/// Why a client message cannot be read: answered with an `error` message (code 400), the
/// socket stays open.
#[derive(Debug)]
pub(crate) struct Malformed {
    pub(crate) reference: Option<Box<RawValue>>,
    pub(crate) message: String,
}

/// The fields of a `tidings.v1` message a client may send, for any type.
const FIELDS: [&str; 7] = ["type", "ref", "topics", "cursor", "topic", "event", "data"];

/// Reads one client message. Every way it can be wrong is a [`Malformed`] naming what: a field
/// present is a field given, `null` included (a field of another type than the message's is an
/// error, not ignored).
pub(crate) fn parse(text: &[u8]) -> Result<Request, Malformed> {
    let malformed = |reference: Option<Box<RawValue>>, message: String| Malformed { reference, message };
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(malformed(None, "a message is a JSON object with a \"type\"".into()));
    }
    // Each field as the raw JSON it is: present or not is then exact, and `ref` goes back as
    // the client wrote it.
    let fields: std::collections::BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(text).map_err(|e| malformed(None, format!("invalid JSON: {e}")))?;
    let reference = match fields.get("ref") {
        Some(r) if r.get().len() > MAX_REF_LEN => {
            return Err(malformed(None, format!("\"ref\" is over {MAX_REF_LEN} bytes")));
        }
        r => r.cloned(),
    };
    let fail = |message: String| Err(Malformed { reference: reference.clone(), message });
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return fail(format!("unknown field {:?}", unknown.chars().take(64).collect::<String>()));
    }
    let kind = match fields.get("type").map(|t| serde_json::from_str::<String>(t.get())) {
        Some(Ok(kind)) => kind,
        Some(Err(_)) => return fail("\"type\" is a string".into()),
        None => return fail("\"type\" is missing".into()),
    };
    let allowed: &[&str] = match kind.as_str() {
        "subscribe" => &["topics", "cursor"],
        "unsubscribe" => &["topics"],
        "publish" => &["topic", "event", "data"],
        "message" => &["data"],
        "ping" => &[],
        other => return fail(format!("unknown message type {:?}", other.chars().take(64).collect::<String>())),
    };
    if let Some(extra) = fields.keys().find(|k| !matches!(k.as_str(), "type" | "ref") && !allowed.contains(&k.as_str())) {
        return fail(format!("a {kind:?} message has no {extra:?}"));
    }
    // A field read as `T`, or a message naming what it should be.
    fn field<T: serde::de::DeserializeOwned>(
        fields: &std::collections::BTreeMap<String, Box<RawValue>>,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, String> {
        match fields.get(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|_| format!("{name:?} is {what}")),
        }
    }
    let topics = |fields: &std::collections::BTreeMap<String, Box<RawValue>>| -> Result<Vec<Topic>, String> {
        let list: Vec<String> = field(fields, "topics", "a list of topic names")?.ok_or("\"topics\" is missing")?;
        list.iter()
            .map(|t| Topic::parse(t).map_err(|e| format!("invalid topic {:?}: {e}", t.chars().take(64).collect::<String>())))
            .collect()
    };
    let message = match kind.as_str() {
        "subscribe" => {
            let topics = match topics(&fields) {
                Ok(topics) => topics,
                Err(e) => return fail(e),
            };
            let cursor: Option<String> = match field(&fields, "cursor", "a string") {
                Ok(cursor) => cursor,
                Err(e) => return fail(e),
            };
            // As for every transport: a cursor that is empty once trimmed is no cursor.
            let cursor = cursor.as_deref().and_then(tidings_http::carried_cursor).map(str::to_owned);
            ClientMessage::Subscribe { topics, cursor }
        }
        "unsubscribe" => match topics(&fields) {
            Ok(topics) => ClientMessage::Unsubscribe { topics },
            Err(e) => return fail(e),
        },
        "publish" => {
            let topic: String = match field(&fields, "topic", "a string") {
                Ok(Some(topic)) => topic,
                Ok(None) => return fail("\"topic\" is missing".into()),
                Err(e) => return fail(e),
            };
            let topic = match Topic::parse(&topic) {
                Ok(topic) => topic,
                Err(e) => return fail(format!("invalid topic: {e}")),
            };
            let event_type = match field::<String>(&fields, "event", "a string") {
                Ok(None) => None,
                Ok(Some(name)) => match tidings_core::EventType::parse(&name) {
                    Ok(kind) => Some(kind),
                    Err(e) => return fail(format!("invalid event type: {e}")),
                },
                Err(e) => return fail(e),
            };
            let data = match field::<String>(&fields, "data", "a string") {
                Ok(Some(data)) => data,
                Ok(None) => return fail("\"data\" is missing".into()),
                Err(_) => return fail("\"data\" of a publish is a string".into()),
            };
            ClientMessage::Publish { topic, event_type, data }
        }
        "message" => match fields.get("data") {
            Some(data) => ClientMessage::Message { data: data.clone() },
            None => return fail("\"data\" is missing".into()),
        },
        _ => ClientMessage::Ping,
    };
    Ok(Request { message, reference })
}

/// `{"type":"event","id":"` — what precedes the cursor in an event message.
const EVENT_START: &[u8] = br#"{"type":"event","id":""#;

/// A whole text frame of an event whose `id` is the event's own cursor ([`Event::cursor`]):
/// the frame every one-topic subscriber receives, the same bytes for all, encoded once.
#[derive(Debug)]
pub struct EventFrameWithId;

impl WireFormat for EventFrameWithId {
    fn encode(event: &Event) -> Bytes {
        let body = JsonEvent::encode(event);
        let cursor = event.cursor().to_string();
        let len = EVENT_START.len() + cursor.len() + 2 + body.len();
        let mut out = BytesMut::with_capacity(frame::header_len(len) + len);
        frame::put_header(&mut out, frame::TEXT, len);
        out.put_slice(EVENT_START);
        out.put_slice(cursor.as_bytes());
        out.put_slice(b"\",");
        out.put_slice(&body);
        out.freeze()
    }
}

/// The most [`put_event_head`] writes besides the token.
pub(crate) const EVENT_HEAD_ROOM: usize = frame::MAX_HEADER + EVENT_START.len() + 2;

/// Writes the header and the start of an event message whose `id` is `token` (a subscriber's
/// own cursor), up to where the event's shared [`JsonEvent`] bytes (`body_len` of them) follow.
pub(crate) fn put_event_head(out: &mut BytesMut, token: &str, body_len: usize) {
    let len = EVENT_START.len() + token.len() + 2 + body_len;
    frame::put_header(out, frame::TEXT, len);
    out.put_slice(EVENT_START);
    out.put_slice(token.as_bytes());
    out.put_slice(b"\",");
}

/// A whole text frame holding `fields` (a JSON object) and, first, the client's `ref` as the
/// client wrote it (its bytes, not re-encoded: `1E2` goes back as `1E2`).
pub(crate) fn answer_frame(fields: &serde_json::Value, reference: Option<&RawValue>) -> Bytes {
    let json = fields.to_string();
    match reference {
        None => frame::frame(frame::TEXT, json.as_bytes()),
        Some(reference) => {
            let rest = json.strip_prefix('{').unwrap_or(&json);
            let separator = if rest == "}" { "" } else { "," };
            let text = format!("{{\"ref\":{}{separator}{rest}", reference.get());
            frame::frame(frame::TEXT, text.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::{Cursor, SharedEvent};

    #[test]
    fn reads_each_message_type() {
        let r = parse(br#"{"type":"subscribe","topics":["a","b"],"cursor":"C","ref":7}"#).unwrap();
        assert!(matches!(&r.message, ClientMessage::Subscribe { topics, cursor: Some(c) } if topics.len() == 2 && c == "C"));
        assert_eq!(r.reference.unwrap().get(), "7");
        let r = parse(br#"{"type":"publish","topic":"a","event":"note","data":"x\ny"}"#).unwrap();
        assert!(matches!(&r.message, ClientMessage::Publish { data, event_type: Some(_), .. } if data == "x\ny"));
        let r = parse(br#"{"type":"message","data":{"any":["json"]}}"#).unwrap();
        assert!(matches!(&r.message, ClientMessage::Message { data } if data.get() == r#"{"any":["json"]}"#));
        assert!(matches!(parse(br#" {"type":"ping"}"#).unwrap().message, ClientMessage::Ping));
        // `data` of a message is any JSON, `null` too.
        let r = parse(br#"{"type":"message","data":null}"#).unwrap();
        assert!(matches!(&r.message, ClientMessage::Message { data } if data.get() == "null"));
        // A cursor that is empty once trimmed is no cursor, as in a URL.
        let r = parse(br#"{"type":"subscribe","topics":["a"],"cursor":" "}"#).unwrap();
        assert!(matches!(&r.message, ClientMessage::Subscribe { cursor: None, .. }));
        assert!(matches!(parse(br#"{"type":"unsubscribe","topics":[]}"#).unwrap().message, ClientMessage::Unsubscribe { .. }));
    }

    #[test]
    fn every_malformed_message_names_its_fault_and_keeps_the_ref() {
        for (text, says) in [
            (&br#"[1,2]"#[..], "JSON object"),
            (br#"{"type":"subscribe""#, "invalid JSON"),
            (br#"{"type":"jump","ref":"r"}"#, "unknown message type"),
            (br#"{"type":"subscribe","ref":"r"}"#, "\"topics\" is missing"),
            (br#"{"type":"subscribe","topics":["a\nb"],"ref":"r"}"#, "invalid topic"),
            (br#"{"type":"unsubscribe","topics":["a"],"cursor":"c","ref":"r"}"#, "has no \"cursor\""),
            (br#"{"type":"publish","topic":"a","data":5,"ref":"r"}"#, "is a string"),
            (br#"{"type":"publish","topic":"a","event":"tidings.x","data":"","ref":"r"}"#, "invalid event type"),
            (br#"{"type":"publish","data":"","ref":"r"}"#, "\"topic\" is missing"),
            (br#"{"type":"message","ref":"r"}"#, "\"data\" is missing"),
            (br#"{"type":"ping","extra":1}"#, "unknown field"),
            (br#"{"type":"publish","topic":"a","data":"x","topics":null,"ref":"r"}"#, "has no \"topics\""),
            (br#"{"ref":"r"}"#, "\"type\" is missing"),
            (br#"{"type":7,"ref":"r"}"#, "\"type\" is a string"),
            (br#"{"type":"subscribe","topics":"a","ref":"r"}"#, "a list of topic names"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.message.contains(says), "{}: {}", String::from_utf8_lossy(text), err.message);
            if err.message.contains("\"r\"") || text.ends_with(br#""ref":"r"}"#) {
                assert_eq!(err.reference.as_deref().map(RawValue::get), Some("\"r\""), "{}", err.message);
            }
        }
        let long = format!(r#"{{"type":"ping","ref":"{}"}}"#, "x".repeat(MAX_REF_LEN));
        assert!(parse(long.as_bytes()).unwrap_err().message.contains("\"ref\" is over"));
    }

    #[test]
    fn an_event_frame_is_a_text_frame_of_json() {
        let event = Event {
            epoch: tidings_core::Epoch::from_raw(3),
            topic: Topic::new("t\"q"),
            seq: 9,
            event_type: None,
            data: "a\nb".into(),
        };
        let f = EventFrameWithId::encode(&event);
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1] as usize, f.len() - 2);
        let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["id"], event.cursor().to_string());
        assert_eq!(v["topic"], "t\"q");
        assert_eq!(v["data"], "a\nb");
        let shared = SharedEvent::new(event);
        let mut other = Cursor::new(tidings_core::Epoch::from_raw(3));
        other.set(&Topic::new("x"), 4);
        let body = shared.encoded::<JsonEvent>();
        let mut whole = BytesMut::new();
        put_event_head(&mut whole, &other.to_string(), body.len());
        assert!(whole.len() <= EVENT_HEAD_ROOM + other.to_string().len());
        whole.extend_from_slice(&body);
        assert_eq!(whole[1] as usize, whole.len() - 2);
        let v: serde_json::Value = serde_json::from_slice(&whole[2..]).unwrap();
        assert_eq!(v["id"], other.to_string());
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    #[test]
    fn the_ref_goes_back_byte_for_byte() {
        for raw in ["1E2", "12345678901234567890123", "-0", r#"{"b":1,"a":2}"#, r#""x""#] {
            let reference = RawValue::from_string(raw.to_owned()).unwrap();
            let frame = answer_frame(&serde_json::json!({ "type": "pong" }), Some(&reference));
            let text = std::str::from_utf8(&frame[2..]).unwrap();
            assert_eq!(text, format!(r#"{{"ref":{raw},"type":"pong"}}"#));
            assert!(serde_json::from_str::<serde_json::Value>(text).is_ok());
        }
        let frame = answer_frame(&serde_json::json!({}), Some(&RawValue::from_string("1".into()).unwrap()));
        assert_eq!(&frame[2..], br#"{"ref":1}"#);
        let frame = answer_frame(&serde_json::json!({ "type": "pong" }), None);
        assert_eq!(&frame[2..], br#"{"type":"pong"}"#);
    }
}
