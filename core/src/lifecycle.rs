//! Lifecycle hooks: who connects, with what, and when they leave.

use std::net::SocketAddr;
use std::time::Duration;

use crate::topic::Topic;

/// A subscription as the lifecycle hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connection {
    /// A number unique within the hub, counting from 1.
    pub id: u64,
    /// The transport's name (`"sse"`, `"longpoll"`, …).
    pub transport: &'static str,
    /// The topics subscribed to.
    pub topics: Vec<Topic>,
    /// The cursor token the client brought, as it sent it (untrusted; may be garbage).
    pub cursor: Option<String>,
    /// The peer's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// Who the connection speaks for, as [`Authorize::identify`](crate::Authorize::identify)
    /// named it (or the server-side subscriber that opened it), if anyone.
    pub recipient: Option<String>,
}

/// How a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnect {
    /// Events delivered to it (gap notices not counted).
    pub delivered: u64,
    /// How long it was open.
    pub duration: Duration,
}

/// Hooks called when a subscription opens (after authorization) and when it ends. Both run
/// synchronously on the connection's task: keep them short (log, count, send to a channel).
///
/// ```
/// use tidings_core::{Connection, Disconnect, Lifecycle};
/// #[derive(Debug)]
/// struct Log;
/// impl Lifecycle for Log {
///     fn on_connect(&self, c: &Connection) {
///         println!("client {} connected over {} to {:?}", c.id, c.transport, c.topics);
///     }
///     fn on_disconnect(&self, c: &Connection, d: &Disconnect) {
///         println!("client {} left after {} events", c.id, d.delivered);
///     }
/// }
/// ```
pub trait Lifecycle: Send + Sync + 'static {
    /// A subscription opened.
    fn on_connect(&self, connection: &Connection) {
        let _ = connection;
    }

    /// A subscription ended (the client went away, or the hub shut down).
    fn on_disconnect(&self, connection: &Connection, disconnect: &Disconnect) {
        let _ = (connection, disconnect);
    }

    /// A connection changed what it follows without going away
    /// ([`Subscription::change`](crate::Subscription::change): a WebSocket client's
    /// `subscribe` or `unsubscribe`): `before` and `after` have the same `id`, transport, peer
    /// and recipient (a change to which the authorization hook gives another recipient is an
    /// `on_connect` and an `on_disconnect` instead). No `on_disconnect` or `on_connect` is
    /// called for it.
    fn on_change(&self, before: &Connection, after: &Connection) {
        let _ = (before, after);
    }
}

/// Lifecycle hooks that do nothing (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLifecycle;

impl Lifecycle for NoLifecycle {}

/// Hooks shared with the rest of the application (to read counters they keep, say).
impl<T: Lifecycle + ?Sized> Lifecycle for std::sync::Arc<T> {
    fn on_connect(&self, connection: &Connection) {
        (**self).on_connect(connection);
    }

    fn on_disconnect(&self, connection: &Connection, disconnect: &Disconnect) {
        (**self).on_disconnect(connection, disconnect);
    }

    fn on_change(&self, before: &Connection, after: &Connection) {
        (**self).on_change(before, after);
    }
}

/// Two sets of hooks, called in order (to add presence tracking beside an app's own logging).
impl<A: Lifecycle, B: Lifecycle> Lifecycle for (A, B) {
    fn on_connect(&self, connection: &Connection) {
        self.0.on_connect(connection);
        self.1.on_connect(connection);
    }

    fn on_disconnect(&self, connection: &Connection, disconnect: &Disconnect) {
        self.0.on_disconnect(connection, disconnect);
        self.1.on_disconnect(connection, disconnect);
    }

    fn on_change(&self, before: &Connection, after: &Connection) {
        self.0.on_change(before, after);
        self.1.on_change(before, after);
    }
}
