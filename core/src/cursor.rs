//! Cursors: where a client stands in the log, as one opaque, versioned token.
//!
//! # Wire format (version 1)
//!
//! A cursor token is the unpadded base64url encoding (RFC 4648 §5) of:
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | version, `1` |
//! | 8 | epoch, little-endian |
//! | varint | number of positions, at most [`MAX_CURSOR_POSITIONS`] |
//! | 8 + varint, per position | topic key ([`Topic::key`], little-endian), then its sequence number |
//! | 2 | check: the low 16 bits of FNV-1a over everything before it, little-endian |
//!
//! Varints are LEB128 (7 bits a byte, low bits first). Positions are sorted by topic key. A
//! one-topic cursor is 28 characters long. The token contains only `A–Z a–z 0–9 - _`, so it is
//! safe in an SSE `id:` field, a header and a query string without escaping.
//!
//! Clients must treat the token as opaque and only echo it back. A token that does not parse
//! ([`Cursor::parse`] fails) is not an error for the client: the hub treats it as "position
//! unknown" and answers with a gap notice.

use std::fmt;

use crate::topic::{Topic, fnv1a};

/// The longest cursor token accepted, in bytes. Longer tokens are refused unparsed.
pub const MAX_CURSOR_LEN: usize = 4096;

/// The most positions (topics) one cursor may hold.
pub const MAX_CURSOR_POSITIONS: usize = 256;

const VERSION: u8 = 1;

/// One incarnation of a log. A store that loses its history (a restarted in-memory store, a
/// flushed Redis) starts a new epoch, so that old cursors are recognised as foreign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u64);

impl Epoch {
    /// An epoch from its raw value (as a store persisted it).
    pub const fn from_raw(raw: u64) -> Epoch {
        Epoch(raw)
    }

    /// The raw value, for a store to persist.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// A fresh epoch, different (with overwhelming probability) from every other one.
    pub fn random() -> Epoch {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(elapsed.as_nanos());
        }
        hasher.write_u32(std::process::id());
        Epoch(hasher.finish())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A position in the log for each of a subscription's topics, within one epoch.
///
/// ```
/// use tidings_core::{Cursor, Epoch, Topic};
/// let (a, b) = (Topic::new("a"), Topic::new("b"));
/// let mut cursor = Cursor::new(Epoch::from_raw(7));
/// cursor.set(&a, 41);
/// cursor.set(&b, 2);
/// let token = cursor.to_string();
/// let back = Cursor::parse(&token).unwrap();
/// assert_eq!(back, cursor);
/// assert_eq!(back.position(&a), Some(41));
/// assert!(Cursor::parse("garbage").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    epoch: Epoch,
    /// Sorted by key, keys unique.
    positions: Vec<(u64, u64)>,
}

/// Why a cursor token did not parse. The hub answers all of them the same way (a gap); the
/// variants exist for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CursorError {
    /// Longer than [`MAX_CURSOR_LEN`].
    TooLong,
    /// Not unpadded base64url.
    NotBase64,
    /// A version this library does not know.
    UnknownVersion(u8),
    /// Truncated, extended, or its check does not match.
    Corrupt,
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorError::TooLong => write!(f, "cursor is longer than {MAX_CURSOR_LEN} bytes"),
            CursorError::NotBase64 => f.write_str("cursor is not base64url"),
            CursorError::UnknownVersion(v) => write!(f, "cursor version {v} is unknown"),
            CursorError::Corrupt => f.write_str("cursor is corrupt"),
        }
    }
}

impl std::error::Error for CursorError {}

impl Cursor {
    /// An empty cursor in `epoch`.
    pub fn new(epoch: Epoch) -> Cursor {
        Cursor { epoch, positions: Vec::new() }
    }

    /// The epoch the positions refer to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The last sequence number seen on `topic`, if the cursor knows the topic.
    pub fn position(&self, topic: &Topic) -> Option<u64> {
        let key = topic.key();
        self.positions
            .binary_search_by_key(&key, |&(k, _)| k)
            .ok()
            .map(|i| self.positions[i].1)
    }

    /// Records that everything up to `seq` on `topic` was seen.
    ///
    /// # Panics
    ///
    /// Panics if the cursor already holds [`MAX_CURSOR_POSITIONS`] other topics.
    pub fn set(&mut self, topic: &Topic, seq: u64) {
        let key = topic.key();
        match self.positions.binary_search_by_key(&key, |&(k, _)| k) {
            Ok(i) => self.positions[i].1 = seq,
            Err(i) => {
                assert!(
                    self.positions.len() < MAX_CURSOR_POSITIONS,
                    "a cursor holds at most {MAX_CURSOR_POSITIONS} topics"
                );
                self.positions.insert(i, (key, seq));
            }
        }
    }

    /// Parses a token received from a client. Never panics, whatever the input.
    pub fn parse(token: &str) -> Result<Cursor, CursorError> {
        if token.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        let bytes = base64url_decode(token.as_bytes()).ok_or(CursorError::NotBase64)?;
        let (&version, rest) = bytes.split_first().ok_or(CursorError::Corrupt)?;
        if version != VERSION {
            return Err(CursorError::UnknownVersion(version));
        }
        if bytes.len() < 1 + 8 + 1 + 2 {
            return Err(CursorError::Corrupt);
        }
        let (body, check) = bytes.split_at(bytes.len() - 2);
        if u16::from_le_bytes([check[0], check[1]]) != fnv1a(body) as u16 {
            return Err(CursorError::Corrupt);
        }
        let mut reader = Reader { bytes: &rest[..rest.len() - 2] };
        let epoch = Epoch(reader.u64_le()?);
        let count = reader.varint()?;
        if count > MAX_CURSOR_POSITIONS as u64 {
            return Err(CursorError::Corrupt);
        }
        let mut positions = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let key = reader.u64_le()?;
            let seq = reader.varint()?;
            if positions.last().is_some_and(|&(k, _)| k >= key) {
                return Err(CursorError::Corrupt);
            }
            positions.push((key, seq));
        }
        if !reader.bytes.is_empty() {
            return Err(CursorError::Corrupt);
        }
        Ok(Cursor { epoch, positions })
    }

    /// Writes the token into `out` (what `to_string` returns, without allocating a new string).
    pub fn encode_into(&self, out: &mut String) {
        // Writing to a `String` cannot fail.
        let _ = self.write_token(out);
    }

    /// Writes the token to `out`, without allocating for cursors of up to four topics.
    pub fn write_token(&self, out: &mut impl fmt::Write) -> fmt::Result {
        // version, epoch, count, (key, seq) per topic (a varint is at most 10 bytes), check
        let len = 1 + 8 + 10 + self.positions.len() * 18 + 2;
        let mut stack = [0u8; 96];
        let mut heap = Vec::new();
        let buf: &mut [u8] = if len <= stack.len() {
            &mut stack
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&[VERSION]);
        put(&self.epoch.0.to_le_bytes());
        put(varint(self.positions.len() as u64).as_slice());
        for &(key, seq) in &self.positions {
            put(&key.to_le_bytes());
            put(varint(seq).as_slice());
        }
        let check = fnv1a(&buf[..at]) as u16;
        buf[at..at + 2].copy_from_slice(&check.to_le_bytes());
        at += 2;
        base64url_write(&buf[..at], out)
    }
}

/// A varint's bytes (LEB128, at most 10).
struct Varint {
    bytes: [u8; 10],
    len: usize,
}

impl Varint {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn varint(mut value: u64) -> Varint {
    let mut out = Varint { bytes: [0; 10], len: 0 };
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.bytes[out.len] = b;
            out.len += 1;
            return out;
        }
        out.bytes[out.len] = b | 0x80;
        out.len += 1;
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_token(f)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u64_le(&mut self) -> Result<u64, CursorError> {
        let (head, tail) = self.bytes.split_at_checked(8).ok_or(CursorError::Corrupt)?;
        self.bytes = tail;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(head);
        Ok(u64::from_le_bytes(buf))
    }

    fn varint(&mut self) -> Result<u64, CursorError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&b, tail) = self.bytes.split_first().ok_or(CursorError::Corrupt)?;
            self.bytes = tail;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(CursorError::Corrupt);
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CursorError::Corrupt)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_write(bytes: &[u8], out: &mut impl fmt::Write) -> fmt::Result {
    let mut chars = [0u8; 4];
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let count = chunk.len() + 1;
        for (i, c) in chars.iter_mut().enumerate().take(count) {
            *c = ALPHABET[((n >> (18 - 6 * i)) & 63) as usize];
        }
        // The alphabet is ASCII.
        out.write_str(std::str::from_utf8(&chars[..count]).map_err(|_| fmt::Error)?)?;
    }
    Ok(())
}

fn base64url_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let produced = chunk.len() - 1;
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
        // Canonical encoding only: the unused low bits of a short chunk must be zero.
        if produced < 3 && n & ((1u32 << (24 - 8 * produced as u32)) - 1) != 0 {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Cursor {
        let mut c = Cursor::new(Epoch::from_raw(0xdead_beef_0123_4567));
        c.set(&Topic::new("demo"), 12345);
        c.set(&Topic::new("other"), 0);
        c.set(&Topic::new("max"), u64::MAX);
        c
    }

    #[test]
    fn round_trips() {
        let c = sample();
        let token = c.to_string();
        assert!(token.bytes().all(|b| ALPHABET.contains(&b)));
        assert_eq!(Cursor::parse(&token), Ok(c));
    }

    #[test]
    fn round_trips_with_more_topics_than_the_stack_buffer_holds() {
        let mut c = Cursor::new(Epoch::random());
        for i in 0..64u64 {
            c.set(&Topic::new(&format!("topic-{i}")), u64::MAX - i);
        }
        let mut token = String::new();
        c.encode_into(&mut token);
        assert_eq!(token, c.to_string());
        assert_eq!(Cursor::parse(&token), Ok(c));
    }

    #[test]
    fn one_topic_cursor_is_compact() {
        let mut c = Cursor::new(Epoch::random());
        c.set(&Topic::new("demo"), 1);
        assert_eq!(c.to_string().len(), 28);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let token = sample().to_string();
        for len in 0..token.len() {
            assert!(Cursor::parse(&token[..len]).is_err(), "truncated to {len}");
        }
        let bytes = base64url_decode(token.as_bytes()).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let mut t = String::new();
                base64url_write(&flipped, &mut t).unwrap();
                assert!(Cursor::parse(&t).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let long = "A".repeat(MAX_CURSOR_LEN + 1);
        for bad in ["", "=", "💥", "AAAA", "AQ", "not a cursor", "%00", long.as_str()] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
        // Every short string over a small alphabet: no panic.
        for a in b"AQ_-8z" {
            for b in b"AQ_-8z" {
                for c in b"AQ_-8z" {
                    let s = String::from_utf8(vec![*a, *b, *c]).unwrap();
                    let _ = Cursor::parse(&s);
                }
            }
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg")] {
            let mut s = String::new();
            base64url_write(raw.as_bytes(), &mut s).unwrap();
            assert_eq!(s, enc);
            assert_eq!(base64url_decode(enc.as_bytes()).unwrap(), raw.as_bytes());
        }
        assert!(base64url_decode(b"Zh").is_none(), "non-canonical trailing bits");
    }
}
