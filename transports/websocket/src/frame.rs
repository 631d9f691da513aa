//! The WebSocket framing of RFC 6455, section 5, server side: reading a client's masked
//! frames into messages, and writing the server's unmasked frames.
//!
//! Kept to what a server of one subprotocol needs: no extensions (a frame with an RSV bit set
//! is a protocol error, as section 5.2 requires when none was negotiated), text messages only
//! for data (a binary message is answered with 1003), control frames of at most 125 bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Opcode of a continuation frame.
const CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub(crate) const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
const BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub(crate) const CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub(crate) const PING: u8 = 0x9;
/// Opcode of a pong frame.
pub(crate) const PONG: u8 = 0xA;

/// A server's ping with no payload, whole.
pub(crate) const EMPTY_PING: &[u8] = &[0x80 | PING, 0];

/// The longest server frame header: two bytes and a 64-bit length.
pub(crate) const MAX_HEADER: usize = 10;

/// Close status codes (RFC 6455, section 7.4.1, and the IANA registry).
pub mod close {
    /// The socket is closed as the client asked, or for no particular reason.
    pub const NORMAL: u16 = 1000;
    /// The client broke the WebSocket protocol (an unmasked frame, an unknown opcode, a
    /// fragmented control frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client sent a binary message; `tidings.v1` is made of text messages.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message larger than the endpoint's limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// An error in the server (the store failed at a point where nothing else could be said).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is shutting down or restarting: come back after the `closing` message's
    /// `retry_ms`.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The store is unavailable: come back later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The subscription the URL asked for is malformed (tidings' code: 4000 + HTTP 400).
    pub const BAD_REQUEST: u16 = 4400;
    /// The authorization hook found no credentials it accepts (4000 + HTTP 401).
    pub const UNAUTHORIZED: u16 = 4401;
    /// The authorization hook refused a topic (4000 + HTTP 403).
    pub const FORBIDDEN: u16 = 4403;
    /// The client stopped answering pings (4000 + HTTP 408).
    pub const TIMEOUT: u16 = 4408;
}

/// A complete message, or a control frame, read from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A text message, checked to be UTF-8.
    Text(Bytes),
    /// A ping, whose payload the pong must carry.
    Ping(Bytes),
    /// A pong (answers one of our pings, or a client's heartbeat).
    Pong,
    /// A close frame: its code, when it has one, and its reason.
    Close(Option<u16>, String),
}

/// Why the client's input cannot be read: the socket is closed with `code` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

impl Violation {
    fn new(code: u16, reason: impl Into<String>) -> Violation {
        Violation { code, reason: reason.into() }
    }
}

/// Reads frames from the bytes a client sent. Holds only a fragmented message's first parts
/// between frames; the caller owns the input buffer.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    /// The parts of a fragmented text message so far (`None` when no message is open).
    fragments: Option<BytesMut>,
    /// The largest message accepted, in bytes.
    max_message: usize,
}

impl Reader {
    /// A reader that refuses messages larger than `max_message` bytes with 1009.
    pub(crate) fn new(max_message: usize) -> Reader {
        Reader { fragments: None, max_message }
    }

    /// Takes the next message or control frame out of `input`: `Ok(None)` when `input` does
    /// not hold a whole frame yet (nothing is consumed then). A frame that continues a
    /// fragmented message is consumed and the search goes on.
    pub(crate) fn next(&mut self, input: &mut BytesMut) -> Result<Option<Incoming>, Violation> {
        loop {
            let Some(Header { fin, opcode, header_len, len, mask }) = self.header(input)? else { return Ok(None) };
            if input.len() < header_len + len {
                // Room for the whole frame at once, rather than growing by doubling.
                input.reserve(header_len + len - input.len());
                return Ok(None);
            }
            input.advance(header_len);
            let mut payload = input.split_to(len);
            unmask(&mut payload, mask);
            match opcode {
                PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                PONG => return Ok(Some(Incoming::Pong)),
                CLOSE => return close_frame(&payload).map(Some),
                TEXT | CONTINUATION => {
                    let message = match (self.fragments.take(), opcode) {
                        (None, TEXT) => payload,
                        (Some(mut parts), CONTINUATION) => {
                            parts.extend_from_slice(&payload);
                            parts
                        }
                        (Some(_), _) => {
                            return Err(Violation::new(close::PROTOCOL_ERROR, "a new message began before the last one ended"));
                        }
                        (None, _) => return Err(Violation::new(close::PROTOCOL_ERROR, "a continuation frame with no message to continue")),
                    };
                    if !fin {
                        self.fragments = Some(message);
                        continue;
                    }
                    if std::str::from_utf8(&message).is_err() {
                        return Err(Violation::new(close::INVALID_PAYLOAD, "a text message that is not UTF-8"));
                    }
                    return Ok(Some(Incoming::Text(message.freeze())));
                }
                _ => unreachable!("header() admits known opcodes only"),
            }
        }
    }

    /// Parses the frame header at the start of `input` and checks it; `None` when the header
    /// is not whole yet.
    fn header(&self, input: &BytesMut) -> Result<Option<Header>, Violation> {
        let [b0, b1, ..] = input[..] else { return Ok(None) };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(Violation::new(close::PROTOCOL_ERROR, "a reserved bit is set and no extension was negotiated"));
        }
        if b1 & 0x80 == 0 {
            return Err(Violation::new(close::PROTOCOL_ERROR, "a client frame that is not masked"));
        }
        let (len, at) = match b1 & 0x7F {
            126 => match input.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match input.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let Some(mask) = input.get(at..at + 4) else { return Ok(None) };
        let mask: [u8; 4] = mask.try_into().expect("4 bytes");
        match opcode {
            CLOSE | PING | PONG => {
                if !fin || len > 125 {
                    return Err(Violation::new(close::PROTOCOL_ERROR, "a control frame that is fragmented or over 125 bytes"));
                }
            }
            TEXT | CONTINUATION => {
                let so_far = self.fragments.as_ref().map_or(0, BytesMut::len) as u64;
                if so_far.saturating_add(len) > self.max_message as u64 {
                    return Err(Violation::new(
                        close::MESSAGE_TOO_BIG,
                        format!("a message over the limit of {} bytes", self.max_message),
                    ));
                }
            }
            BINARY => {
                return Err(Violation::new(close::UNSUPPORTED_DATA, "binary messages are not part of tidings.v1; send JSON text"));
            }
            other => return Err(Violation::new(close::PROTOCOL_ERROR, format!("unknown opcode {other:#x}"))),
        }
        // Below `max_message` (data) or 125 (control): fits a usize.
        Ok(Some(Header { fin, opcode, header_len: at + 4, len: len as usize, mask }))
    }
}

/// A client frame's header, checked.
struct Header {
    fin: bool,
    opcode: u8,
    /// The header's own length, the mask included.
    header_len: usize,
    /// The payload's length.
    len: usize,
    mask: [u8; 4],
}

/// The client's mask, undone in place (RFC 6455, section 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Reads a close frame's payload: empty, or a code and a UTF-8 reason (section 5.5.1).
fn close_frame(payload: &[u8]) -> Result<Incoming, Violation> {
    match payload {
        [] => Ok(Incoming::Close(None, String::new())),
        [_] => Err(Violation::new(close::PROTOCOL_ERROR, "a close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // Codes a peer may send (section 7.4): 1000-1003, 1007-1011 (1012-1014 as the
            // registry added them), and 3000-4999.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(Violation::new(close::PROTOCOL_ERROR, format!("close code {code} may not be sent")));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| Violation::new(close::INVALID_PAYLOAD, "a close reason that is not UTF-8"))?;
            Ok(Incoming::Close(Some(code), reason.to_owned()))
        }
    }
}

/// Writes the header of an unmasked, final server frame of `opcode` carrying `len` bytes.
pub(crate) fn put_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// The length of the header [`put_header`] writes for `len` bytes.
pub(crate) fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// A whole server frame: header and payload.
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with `code` and `reason` (cut at a character boundary to fit 123 bytes).
pub(crate) fn close_frame_bytes(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as RFC 6455 requires of clients.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn read_all(reader: &mut Reader, bytes: &[u8]) -> Result<Vec<Incoming>, Violation> {
        let mut input = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(message) = reader.next(&mut input)? {
            out.push(message);
        }
        Ok(out)
    }

    #[test]
    fn reads_text_of_every_length_form_byte_by_byte() {
        for len in [0, 125, 126, 65535, 65536] {
            let text = "é".repeat(len / 2) + &"a".repeat(len % 2);
            let bytes = client_frame(true, TEXT, text.as_bytes());
            let mut reader = Reader::new(1 << 20);
            let mut input = BytesMut::new();
            let mut got = None;
            for (i, b) in bytes.iter().enumerate() {
                input.put_u8(*b);
                if let Some(message) = reader.next(&mut input).unwrap() {
                    assert_eq!(i, bytes.len() - 1, "a message before its last byte");
                    got = Some(message);
                }
            }
            assert_eq!(got, Some(Incoming::Text(Bytes::from(text))), "length {len}");
            assert!(input.is_empty());
        }
    }

    #[test]
    fn joins_fragments_and_answers_control_frames_between_them() {
        let mut bytes = client_frame(false, TEXT, "hé".as_bytes());
        bytes.extend(client_frame(true, PING, b"p"));
        // A character split across two frames is whole once joined.
        bytes.extend(client_frame(false, CONTINUATION, &"llo é".as_bytes()[..5]));
        bytes.extend(client_frame(true, CONTINUATION, &"llo é".as_bytes()[5..]));
        let got = read_all(&mut Reader::new(100), &bytes).unwrap();
        assert_eq!(got, [Incoming::Ping(Bytes::from_static(b"p")), Incoming::Text(Bytes::from("héllo é"))]);
    }

    #[test]
    fn every_violation_closes_with_its_code() {
        let unmasked = {
            let mut f = client_frame(true, TEXT, b"x");
            f[1] &= 0x7F;
            f.truncate(2);
            f.push(b'x');
            f
        };
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, close::PROTOCOL_ERROR),
            (client_frame(true, 0x40 | TEXT, b"x"), close::PROTOCOL_ERROR),
            (client_frame(true, 0x3, b"x"), close::PROTOCOL_ERROR),
            (client_frame(false, PING, b"x"), close::PROTOCOL_ERROR),
            (client_frame(true, PING, &[0; 126]), close::PROTOCOL_ERROR),
            (client_frame(true, CONTINUATION, b"x"), close::PROTOCOL_ERROR),
            ([client_frame(false, TEXT, b"x"), client_frame(true, TEXT, b"y")].concat(), close::PROTOCOL_ERROR),
            (client_frame(true, BINARY, b"x"), close::UNSUPPORTED_DATA),
            (client_frame(true, TEXT, &[0xFF]), close::INVALID_PAYLOAD),
            (client_frame(true, TEXT, &[b'a'; 101]), close::MESSAGE_TOO_BIG),
            ([client_frame(false, TEXT, &[b'a'; 60]), client_frame(true, CONTINUATION, &[b'a'; 41])].concat(), close::MESSAGE_TOO_BIG),
            (client_frame(true, CLOSE, &[3]), close::PROTOCOL_ERROR),
            (client_frame(true, CLOSE, &1005u16.to_be_bytes()), close::PROTOCOL_ERROR),
            (client_frame(true, CLOSE, &[0x03, 0xE8, 0xFF]), close::INVALID_PAYLOAD),
        ];
        for (bytes, code) in cases {
            let err = read_all(&mut Reader::new(100), &bytes).unwrap_err();
            assert_eq!(err.code, code, "{bytes:02x?}: {}", err.reason);
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn a_huge_announced_length_is_refused_before_any_of_it_is_read() {
        let mut bytes = vec![0x81, 0xFF];
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let err = read_all(&mut Reader::new(1 << 16), &bytes).unwrap_err();
        assert_eq!(err.code, close::MESSAGE_TOO_BIG);
    }

    #[test]
    fn close_frames_are_read() {
        let got = read_all(&mut Reader::new(10), &client_frame(true, CLOSE, &[0x03, 0xE8, b'o', b'k'])).unwrap();
        assert_eq!(got, [Incoming::Close(Some(1000), "ok".into())]);
        let got = read_all(&mut Reader::new(10), &client_frame(true, CLOSE, &[])).unwrap();
        assert_eq!(got, [Incoming::Close(None, String::new())]);
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = frame(TEXT, &vec![b'a'; len]);
            assert_eq!(header_len(len), header);
            assert_eq!(f.len(), header + len);
            assert_eq!(f[0], 0x81);
        }
        assert_eq!(&frame(PING, b"")[..], EMPTY_PING);
        let c = close_frame_bytes(1012, &"é".repeat(100));
        assert_eq!(c[1] as usize, c.len() - 2);
        assert!(c.len() - 2 <= 125);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }
}
