//! Where push subscriptions live: the [`PushRegistry`] trait and the in-memory registry.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use tidings_core::Topic;

use crate::subscription::PushSubscription;

/// A push subscription as the registry keeps it: one browser's subscription, the topics it
/// wants, who it belongs to, and how far it has been pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Registration {
    /// The browser's subscription (its endpoint is the key).
    pub subscription: PushSubscription,
    /// The topics pushed to it.
    pub topics: Vec<Topic>,
    /// Whose it is, if the application knows (for presence-aware delivery).
    pub recipient: Option<String>,
    /// The cursor up to which it has been pushed: the hub cursor of its subscription. `None`
    /// until the dispatcher first saves one.
    pub cursor: Option<String>,
    /// What the application's [`PushContent`](crate::PushContent) needs to choose this
    /// subscription's events and payloads (a Mercure hub keeps its selectors here), opaque to
    /// the dispatcher. `None` by default.
    pub filter: Option<String>,
    /// When it lapses (the token that registered it expires, say): the dispatcher stops pushing
    /// to it then and deletes it. `None` (the default): it lasts until it is unregistered or
    /// its push service answers 404 or 410. Kept to the millisecond.
    pub expires: Option<SystemTime>,
}

impl Registration {
    /// A registration for `topics`, with no recipient and no cursor yet.
    pub fn new(subscription: PushSubscription, topics: Vec<Topic>) -> Registration {
        Registration { subscription, topics, recipient: None, cursor: None, filter: None, expires: None }
    }

    /// Sets the application's filter (see [`Registration::filter`]).
    #[must_use]
    pub fn filter(mut self, filter: Option<String>) -> Registration {
        self.filter = filter;
        self
    }

    /// Sets when it lapses (see [`Registration::expires`]).
    #[must_use]
    pub fn expires(mut self, expires: Option<SystemTime>) -> Registration {
        self.expires = expires;
        self
    }

    /// Sets the recipient.
    #[must_use]
    pub fn recipient(mut self, recipient: Option<String>) -> Registration {
        self.recipient = recipient;
        self
    }

    /// Sets the starting cursor (where pushing resumes).
    #[must_use]
    pub fn cursor(mut self, cursor: Option<String>) -> Registration {
        self.cursor = cursor;
        self
    }

    /// The key: the endpoint URL.
    pub fn endpoint(&self) -> &str {
        self.subscription.endpoint().as_str()
    }
}

/// An error from a registry, opaque to the dispatcher.
#[derive(Debug)]
pub struct RegistryError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl RegistryError {
    /// An error with a short lowercase message.
    pub fn new(message: impl Into<String>) -> RegistryError {
        RegistryError { message: message.into(), source: None }
    }

    /// An error caused by `source`.
    pub fn with_source(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> RegistryError {
        RegistryError { message: message.into(), source: Some(Box::new(source)) }
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Keeps push subscriptions and their cursors. Keyed by endpoint URL.
///
/// # Contract
///
/// - `put` inserts or replaces the registration for its endpoint (keys, topics, recipient,
///   cursor, filter and expiry all come from the argument; `all` gives them back as they were,
///   the expiry to the millisecond).
/// - `save_cursor` records how far an endpoint has been pushed; a durable registry makes it
///   durable before returning, since the dispatcher resumes from it after a restart. Saving for
///   an endpoint that is not registered (any more) does nothing.
/// - `remove` deletes it; `Ok(false)` if it was not there.
/// - `all` lists every registration, in any order.
#[async_trait]
pub trait PushRegistry: Send + Sync + fmt::Debug + 'static {
    /// Inserts or replaces a registration.
    async fn put(&self, registration: &Registration) -> Result<(), RegistryError>;

    /// Records the cursor up to which `endpoint` has been pushed.
    async fn save_cursor(&self, endpoint: &str, cursor: &str) -> Result<(), RegistryError>;

    /// Deletes the registration of `endpoint`.
    async fn remove(&self, endpoint: &str) -> Result<bool, RegistryError>;

    /// Every registration.
    async fn all(&self) -> Result<Vec<Registration>, RegistryError>;
}

/// A registry shared with the rest of the application (to list what is registered, say).
#[async_trait]
impl<T: PushRegistry + ?Sized> PushRegistry for std::sync::Arc<T> {
    async fn put(&self, registration: &Registration) -> Result<(), RegistryError> {
        (**self).put(registration).await
    }

    async fn save_cursor(&self, endpoint: &str, cursor: &str) -> Result<(), RegistryError> {
        (**self).save_cursor(endpoint, cursor).await
    }

    async fn remove(&self, endpoint: &str) -> Result<bool, RegistryError> {
        (**self).remove(endpoint).await
    }

    async fn all(&self) -> Result<Vec<Registration>, RegistryError> {
        (**self).all().await
    }
}

/// Registrations in memory: lost when the process ends (the default).
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    map: Mutex<BTreeMap<String, Registration>>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> MemoryRegistry {
        MemoryRegistry::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Registration>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl PushRegistry for MemoryRegistry {
    async fn put(&self, registration: &Registration) -> Result<(), RegistryError> {
        self.map().insert(registration.endpoint().to_owned(), registration.clone());
        Ok(())
    }

    async fn save_cursor(&self, endpoint: &str, cursor: &str) -> Result<(), RegistryError> {
        if let Some(r) = self.map().get_mut(endpoint) {
            r.cursor = Some(cursor.to_owned());
        }
        Ok(())
    }

    async fn remove(&self, endpoint: &str) -> Result<bool, RegistryError> {
        Ok(self.map().remove(endpoint).is_some())
    }

    async fn all(&self) -> Result<Vec<Registration>, RegistryError> {
        Ok(self.map().values().cloned().collect())
    }
}
