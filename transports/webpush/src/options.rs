//! Per-message delivery options: `TTL`, `Urgency` and `Topic` headers (RFC 8030 §5).

use std::fmt;
use std::time::Duration;

/// How urgent a message is (RFC 8030 §5.3): push services may hold back low-urgency messages
/// to save the device's battery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Urgency {
    /// Only when the device is on power and Wi-Fi.
    VeryLow,
    /// On power or Wi-Fi.
    Low,
    /// Unless the battery is low (the default).
    #[default]
    Normal,
    /// Even on low battery.
    High,
}

impl Urgency {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// A push message topic (RFC 8030 §5.4): a newer message with the same topic replaces an
/// older one the push service has not delivered yet. At most 32 characters of the URL-safe
/// base64 alphabet.
///
/// ```
/// use tidings_webpush::PushTopic;
/// assert!(PushTopic::parse("scores-game-42").is_ok());
/// assert!(PushTopic::parse("has space").is_err());
/// assert!(PushTopic::parse(&"a".repeat(33)).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PushTopic(String);

/// Why a push topic was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTopicError(String);

impl fmt::Display for PushTopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "push topic {:?} must be 1 to 32 characters of A-Z a-z 0-9 - _", self.0)
    }
}

impl std::error::Error for PushTopicError {}

impl PushTopic {
    /// Validates a push topic.
    pub fn parse(topic: &str) -> Result<PushTopic, PushTopicError> {
        let ok = (1..=32).contains(&topic.len())
            && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok { Ok(PushTopic(topic.to_owned())) } else { Err(PushTopicError(topic.chars().take(40).collect())) }
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The options of one push message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushOptions {
    /// How long the push service keeps the message for an offline device (`TTL`, always sent;
    /// default 1 day). Retries after 5xx and 429 stop when it runs out.
    pub ttl: Duration,
    /// `Urgency` (default [`Urgency::Normal`], which is sent too).
    pub urgency: Urgency,
    /// `Topic`, if any (default none).
    pub topic: Option<PushTopic>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions { ttl: Duration::from_secs(24 * 3600), urgency: Urgency::Normal, topic: None }
    }
}

impl PushOptions {
    /// Sets the TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the urgency.
    #[must_use]
    pub fn urgency(mut self, urgency: Urgency) -> Self {
        self.urgency = urgency;
        self
    }

    /// Sets the push topic.
    #[must_use]
    pub fn topic(mut self, topic: Option<PushTopic>) -> Self {
        self.topic = topic;
        self
    }
}
