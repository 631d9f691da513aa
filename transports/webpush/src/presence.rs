//! Who has a live connection right now, for presence-aware delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings_core::{Connection, Disconnect, Lifecycle};

use crate::dispatch::TRANSPORT;

/// Counts the live SSE and long-poll connections of each recipient (the
/// [`Connection::recipient`] named by the hub's authorization hook). Give it to the hub as
/// (part of) its lifecycle hooks and to [`WebPushBuilder::presence`](crate::WebPushBuilder::presence).
///
/// A recipient counts as online while it has a connection, and for a grace period after its
/// last one closed (default 5 s), so that a long-poll client between two polls, or an
/// EventSource reconnecting, is not taken for offline.
///
/// ```
/// use tidings_core::{Hub, MemoryStore, NoLifecycle};
/// use tidings_webpush::Presence;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let presence = Presence::new();
/// let hub = Hub::builder(MemoryStore::new()).lifecycle((NoLifecycle, presence.clone())).build();
/// assert!(!presence.is_online("alice"));
/// # let _ = hub; }
/// ```
#[derive(Debug, Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    grace: Duration,
    map: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    open: usize,
    left: Instant,
}

impl Default for Presence {
    fn default() -> Self {
        Presence::new()
    }
}

impl Presence {
    /// A tracker with the default grace period (5 s).
    pub fn new() -> Presence {
        Presence::with_grace(Duration::from_secs(5))
    }

    /// A tracker that keeps a recipient online for `grace` after its last connection closed.
    pub fn with_grace(grace: Duration) -> Presence {
        Presence { inner: Arc::new(Inner { grace, map: Mutex::new(HashMap::new()) }) }
    }

    /// Whether `recipient` has a live connection (or had one within the grace period).
    pub fn is_online(&self, recipient: &str) -> bool {
        let map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(recipient).is_some_and(|e| e.open > 0 || e.left.elapsed() < self.inner.grace)
    }

    /// The number of live connections of `recipient`.
    pub fn connections(&self, recipient: &str) -> usize {
        let map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(recipient).map_or(0, |e| e.open)
    }
}

impl Lifecycle for Presence {
    fn on_connect(&self, connection: &Connection) {
        let (Some(who), false) = (&connection.recipient, connection.transport == TRANSPORT) else { return };
        let mut map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(who.clone()).or_insert(Entry { open: 0, left: Instant::now() }).open += 1;
    }

    fn on_disconnect(&self, connection: &Connection, _: &Disconnect) {
        let (Some(who), false) = (&connection.recipient, connection.transport == TRANSPORT) else { return };
        let mut map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(who) {
            entry.open = entry.open.saturating_sub(1);
            entry.left = Instant::now();
        }
        // Forget recipients long gone, so the map stays as small as the online population.
        let grace = self.inner.grace;
        if map.len() > 1024 {
            map.retain(|_, e| e.open > 0 || e.left.elapsed() < grace);
        }
    }
}
