//! Authorization: which topics a request may read, decided before its stream opens.

use std::fmt;
use std::net::SocketAddr;

use async_trait::async_trait;

use crate::topic::Topic;

/// What a transport knows of the request behind a subscription, for an [`Authorize`] hook.
///
/// Transports implement it over their own request type (the SSE and long-poll transports over
/// the HTTP request), so the core stays free of HTTP.
pub trait Credentials: Send + Sync {
    /// A request header, by case-insensitive name, if present and valid UTF-8.
    fn header(&self, name: &str) -> Option<&str>;

    /// A query-string parameter (its first occurrence), decoded.
    fn query(&self, name: &str) -> Option<&str>;

    /// A cookie by name, read from the `Cookie` header.
    fn cookie(&self, name: &str) -> Option<&str> {
        self.header("cookie")?.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    }
}

/// Credentials of a request that carries none (used by tests and in-process subscribers).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCredentials;

impl Credentials for NoCredentials {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
    fn query(&self, _: &str) -> Option<&str> {
        None
    }
}

/// The question put to an [`Authorize`] hook.
#[non_exhaustive]
pub struct AccessRequest<'a> {
    /// The transport's name (`"sse"`, `"longpoll"`, …).
    pub transport: &'static str,
    /// The topics the request wants to read.
    pub topics: &'a [Topic],
    /// The peer's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// The request's headers, query and cookies.
    pub credentials: &'a dyn Credentials,
}

impl fmt::Debug for AccessRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessRequest")
            .field("transport", &self.transport)
            .field("topics", &self.topics)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Why a subscription was refused. Transports answer `401` for
/// [`Refusal::Unauthenticated`] and `403` for [`Refusal::Forbidden`], before any byte of stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The request did not say who it is, or the credentials are invalid.
    Unauthenticated(String),
    /// The requester may not read (some of) these topics.
    Forbidden(String),
}

impl Refusal {
    /// A `401`-style refusal with a short message.
    pub fn unauthenticated(reason: impl Into<String>) -> Refusal {
        Refusal::Unauthenticated(reason.into())
    }

    /// A `403`-style refusal with a short message.
    pub fn forbidden(reason: impl Into<String>) -> Refusal {
        Refusal::Forbidden(reason.into())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unauthenticated(r) => write!(f, "unauthenticated: {r}"),
            Refusal::Forbidden(r) => write!(f, "forbidden: {r}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Decides whether a request may read the topics it asks for. Runs once per subscription,
/// before anything is read or streamed; replay after a cursor only ever covers the topics that
/// were allowed here.
#[async_trait]
pub trait Authorize: Send + Sync + 'static {
    /// `Ok(())` lets the subscription open; a [`Refusal`] closes it with a 401 or 403.
    async fn authorize(&self, request: &AccessRequest<'_>) -> Result<(), Refusal>;
}

/// Lets every request read every topic (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authorize for AllowAll {
    async fn authorize(&self, _: &AccessRequest<'_>) -> Result<(), Refusal> {
        Ok(())
    }
}

/// An [`Authorize`] hook made of a synchronous closure; see [`authorize_fn`].
pub struct AuthorizeFn<F>(F);

impl<F> fmt::Debug for AuthorizeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizeFn")
    }
}

/// Wraps a synchronous closure as an [`Authorize`] hook.
///
/// ```
/// use tidings_core::{authorize_fn, Refusal};
/// let hook = authorize_fn(|req| {
///     if req.topics.iter().any(|t| t.as_str().starts_with("private/")) {
///         match req.credentials.header("authorization") {
///             Some("Bearer letmein") => Ok(()),
///             Some(_) => Err(Refusal::forbidden("private topics need the right token")),
///             None => Err(Refusal::unauthenticated("send a bearer token")),
///         }
///     } else {
///         Ok(())
///     }
/// });
/// # let _ = hook;
/// ```
pub fn authorize_fn<F>(f: F) -> AuthorizeFn<F>
where
    F: Fn(&AccessRequest<'_>) -> Result<(), Refusal> + Send + Sync + 'static,
{
    AuthorizeFn(f)
}

#[async_trait]
impl<F> Authorize for AuthorizeFn<F>
where
    F: Fn(&AccessRequest<'_>) -> Result<(), Refusal> + Send + Sync + 'static,
{
    async fn authorize(&self, request: &AccessRequest<'_>) -> Result<(), Refusal> {
        (self.0)(request)
    }
}
