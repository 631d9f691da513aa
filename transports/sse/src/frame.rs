//! The `text/event-stream` wire format, as the WHATWG HTML standard defines it.

use bytes::{BufMut, Bytes, BytesMut};
use tidings_core::{Cursor, Event, Gap, WireFormat};

/// The SSE frame of an event, without its `id:` line and the blank line that ends it: those
/// depend on the subscriber and are written per subscriber (`id: CURSOR` and a blank line).
///
/// `event: TYPE` (when the event has a type), then one `data: ` line per line of the payload.
/// The payload is split at LF, CR and CRLF, which an EventSource joins with LF: a payload's
/// line endings arrive normalised to LF, everything else byte for byte.
#[derive(Debug)]
pub struct SseFrame;

impl WireFormat for SseFrame {
    fn encode(event: &Event) -> Bytes {
        frame_with_room(event, 0).freeze()
    }
}

/// The frame of `event` without its end, in a buffer with `room` bytes to spare after it.
fn frame_with_room(event: &Event, room: usize) -> BytesMut {
    let data = event.data.as_bytes();
    let type_len = event.event_type.as_ref().map_or(0, |t| t.as_str().len() + 8);
    let mut out = BytesMut::with_capacity(type_len + data.len() + 7 * (1 + data.len() / 64) + room);
    if let Some(event_type) = &event.event_type {
        out.put_slice(b"event: ");
        out.put_slice(event_type.as_str().as_bytes());
        out.put_u8(b'\n');
    }
    put_data_lines(&mut out, data);
    out
}

/// Room for `id: CURSOR` and the blank line of a one-topic cursor (its token is 36 characters).
pub(crate) const FRAME_END_ROOM: usize = 64;

/// [`SseFrame`] followed by `id: CURSOR` and the blank line, where the cursor is the event's own
/// ([`Event::cursor`]): the whole frame of a single-topic subscriber, the same bytes for every
/// subscriber of that topic.
#[derive(Debug)]
pub struct SseFrameWithId;

impl WireFormat for SseFrameWithId {
    fn encode(event: &Event) -> Bytes {
        // One buffer, sized for the end too (a replay encodes every event it sends).
        let mut out = frame_with_room(event, FRAME_END_ROOM);
        put_frame_end(&mut out, &event.cursor());
        out.freeze()
    }
}

/// Writes `data` as `data: ` lines, splitting at CRLF, CR and LF.
pub(crate) fn put_data_lines(out: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => {
                out.put_slice(b"data: ");
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                out.put_slice(b"data: ");
                out.put_slice(rest);
                out.put_u8(b'\n');
                return;
            }
        }
    }
}

/// Appends `id: CURSOR` and the blank line that dispatches the event.
pub(crate) fn put_frame_end(out: &mut BytesMut, cursor: &Cursor) {
    out.put_slice(b"id: ");
    // Writes the token straight into `out` (`BytesMut` is a `fmt::Write`).
    let _ = cursor.write_token(out);
    out.put_slice(b"\n\n");
}

/// The gap notice: `event: tidings.gap`, JSON data naming the topics, and the cursor after it.
pub(crate) fn gap_frame(gap: &Gap, cursor: &Cursor) -> Bytes {
    let json = serde_json::json!({ "topics": gap.topics });
    let mut out = BytesMut::new();
    out.put_slice(b"event: tidings.gap\ndata: ");
    out.put_slice(json.to_string().as_bytes());
    out.put_u8(b'\n');
    put_frame_end(&mut out, cursor);
    out.freeze()
}

/// The first bytes of every stream: the `retry:` hint and, unless a gap notice comes first,
/// an event named `tidings.open` (empty data) whose `id:` is the starting cursor. The browser
/// keeps that id for its own reconnections; a page can listen for `tidings.open` to store it.
pub(crate) fn preamble(retry_ms: u128, cursor: Option<&Cursor>) -> Bytes {
    let mut out = format!("retry: {retry_ms}\n");
    if let Some(cursor) = cursor {
        out.push_str("event: tidings.open\ndata: \nid: ");
        cursor.encode_into(&mut out);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The head of the frame that stands for an event of a type the client does not listen for:
/// `event: tidings.skip`, no data, then the event's `id:` (see `listen` in `docs/protocol.md`).
pub(crate) const SKIP: &[u8] = b"event: tidings.skip\ndata: \n";

/// The whole `tidings.skip` frame of an event for a single-topic subscriber (whose cursor is
/// the event's own, as for [`SseFrameWithId`]): the same bytes for every such subscriber,
/// encoded once per event.
#[derive(Debug)]
pub(crate) struct SseSkipFrameWithId;

impl WireFormat for SseSkipFrameWithId {
    fn encode(event: &Event) -> Bytes {
        let mut out = BytesMut::with_capacity(SKIP.len() + FRAME_END_ROOM);
        out.put_slice(SKIP);
        put_frame_end(&mut out, &event.cursor());
        out.freeze()
    }
}

/// A comment that keeps proxies from closing an idle stream.
pub(crate) const HEARTBEAT: &[u8] = b":\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::{Epoch, EventType, Topic};

    fn event(event_type: Option<&str>, data: &str) -> Event {
        Event {
            epoch: Epoch::from_raw(1),
            topic: Topic::new("t"),
            seq: 1,
            event_type: event_type.map(EventType::new),
            data: data.into(),
        }
    }

    fn frame(event_type: Option<&str>, data: &str) -> String {
        String::from_utf8(SseFrame::encode(&event(event_type, data)).to_vec()).unwrap()
    }

    #[test]
    fn splits_every_kind_of_line_ending() {
        assert_eq!(frame(None, "a\nb\r\nc\rd"), "data: a\ndata: b\ndata: c\ndata: d\n");
        assert_eq!(frame(None, "\r\r\n\n"), "data: \ndata: \ndata: \ndata: \n");
    }

    #[test]
    fn empty_and_trailing_newline_payloads() {
        assert_eq!(frame(None, ""), "data: \n");
        assert_eq!(frame(None, "x\n"), "data: x\ndata: \n");
    }

    #[test]
    fn keeps_leading_spaces_and_colons() {
        // The parser strips exactly one space after "data:", so a payload's own spaces survive.
        assert_eq!(frame(None, " x: y"), "data:  x: y\n");
    }

    #[test]
    fn writes_the_event_type_first() {
        assert_eq!(frame(Some("my-custom-event"), "hi"), "event: my-custom-event\ndata: hi\n");
    }

    #[test]
    fn gap_frame_is_json() {
        let mut cursor = Cursor::new(Epoch::from_raw(1));
        cursor.set(&Topic::new("a"), 3);
        let gap = Gap::new(vec![Topic::new("a"), Topic::new("b\"c")]);
        let text = String::from_utf8(gap_frame(&gap, &cursor).to_vec()).unwrap();
        assert_eq!(
            text,
            format!("event: tidings.gap\ndata: {{\"topics\":[\"a\",\"b\\\"c\"]}}\nid: {cursor}\n\n")
        );
    }

    #[test]
    fn preamble_sets_retry_and_cursor() {
        let cursor = Cursor::new(Epoch::from_raw(1));
        assert_eq!(preamble(3000, None), "retry: 3000\n\n");
        assert_eq!(
            preamble(10, Some(&cursor)),
            format!("retry: 10\nevent: tidings.open\ndata: \nid: {cursor}\n\n")
        );
    }
}
