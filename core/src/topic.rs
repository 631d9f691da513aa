//! Validated topic names.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The longest topic name accepted, in bytes of UTF-8.
pub const MAX_TOPIC_LEN: usize = 256;

/// A validated topic name: 1 to [`MAX_TOPIC_LEN`] bytes of UTF-8 without control characters.
///
/// Topics arrive from the network (query strings, publish bodies), so they are built with the
/// fallible [`Topic::parse`]. Cloning a `Topic` is cheap (it shares one allocation).
///
/// ```
/// use tidings_core::Topic;
/// let topic = Topic::parse("chat/room-1").unwrap();
/// assert_eq!(topic.as_str(), "chat/room-1");
/// assert!(Topic::parse("").is_err());
/// assert!(Topic::parse("bad\nname").is_err());
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl std::hash::Hash for Topic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Topic {
    /// Equal names. Two clones of one topic compare by address first: the hub's live path
    /// compares each event's topic with each subscription's, and a store hands out its own
    /// copy of each name with every event.
    fn eq(&self, other: &Topic) -> bool {
        self.same_name_object(other) || self.0 == other.0
    }
}

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_TOPIC_LEN`] bytes.
    TooLong {
        /// The length that was given, in bytes.
        len: usize,
    },
    /// The name contains a control character (U+0000–U+001F, U+007F–U+009F).
    ControlCharacter,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => f.write_str("topic is empty"),
            TopicError::TooLong { len } => {
                write!(f, "topic is {len} bytes long, the limit is {MAX_TOPIC_LEN}")
            }
            TopicError::ControlCharacter => f.write_str("topic contains a control character"),
        }
    }
}

impl std::error::Error for TopicError {}

impl Topic {
    /// Whether both are clones of one name (not only equal names).
    pub(crate) fn same_name_object(&self, other: &Topic) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Validates `name` as a topic.
    pub fn parse(name: &str) -> Result<Topic, TopicError> {
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        if name.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong { len: name.len() });
        }
        if name.chars().any(char::is_control) {
            return Err(TopicError::ControlCharacter);
        }
        Ok(Topic(Arc::from(name)))
    }

    /// Builds a topic from a name the program itself chose.
    ///
    /// # Panics
    ///
    /// Panics if `name` is not a valid topic; use [`Topic::parse`] for untrusted input.
    #[track_caller]
    pub fn new(name: &str) -> Topic {
        match Topic::parse(name) {
            Ok(topic) => topic,
            Err(err) => panic!("invalid topic {name:?}: {err}"),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stable 64-bit key that stands for this topic inside a cursor (FNV-1a of the name).
    ///
    /// It is the same on every node and in every process, so a cursor made by one node can be
    /// read by another.
    pub fn key(&self) -> u64 {
        fnv1a(self.0.as_bytes())
    }
}

/// FNV-1a, 64 bits: small, stable across processes and platforms.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::parse(s)
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Topic::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unicode_and_punctuation() {
        assert!(Topic::parse("news/🦀/room:1 with spaces").is_ok());
        assert!(Topic::parse(&"x".repeat(MAX_TOPIC_LEN)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_control() {
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        assert_eq!(
            Topic::parse(&"x".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong { len: MAX_TOPIC_LEN + 1 })
        );
        for bad in ["a\nb", "a\rb", "\0", "tab\t", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(Topic::parse(bad), Err(TopicError::ControlCharacter), "{bad:?}");
        }
    }

    #[test]
    fn key_is_stable() {
        // FNV-1a test vector: the empty string and "a".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Topic::new("demo").key(), Topic::new("demo").key());
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<Topic>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<Topic>("\"\"").is_err());
    }
}
