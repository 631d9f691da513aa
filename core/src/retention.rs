//! How long a store keeps events.

use std::time::Duration;

/// How many events, and for how long, a store keeps per topic.
///
/// Events beyond either limit are dropped oldest first. A client whose cursor points before the
/// oldest retained event receives a gap notice (see the hub's documentation).
///
/// ```
/// use std::time::Duration;
/// use tidings_core::Retention;
/// let r = Retention::default().max_events(100).max_age(Duration::from_secs(60));
/// assert_eq!(r.max_events_per_topic(), 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    max_events: usize,
    max_age: Option<Duration>,
}

impl Default for Retention {
    /// 1000 events per topic, no age limit.
    fn default() -> Self {
        Retention { max_events: 1000, max_age: None }
    }
}

impl Retention {
    /// Keeps at most `n` events per topic (default 1000).
    ///
    /// # Panics
    ///
    /// Panics if `n` is 0.
    #[must_use]
    pub fn max_events(mut self, n: usize) -> Self {
        assert!(n > 0, "retention must keep at least one event");
        self.max_events = n;
        self
    }

    /// Drops events older than `age` (default: no age limit).
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The count limit.
    pub fn max_events_per_topic(&self) -> usize {
        self.max_events
    }

    /// The age limit, if any.
    pub fn max_age_per_topic(&self) -> Option<Duration> {
        self.max_age
    }
}
