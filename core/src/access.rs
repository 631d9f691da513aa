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

impl<'a> AccessRequest<'a> {
    /// The question for `topics` asked over `transport` (for transports that call
    /// [`Hub::check_access`](crate::Hub::check_access) themselves).
    pub fn new(
        transport: &'static str,
        topics: &'a [Topic],
        peer: Option<SocketAddr>,
        credentials: &'a dyn Credentials,
    ) -> AccessRequest<'a> {
        AccessRequest { transport, topics, peer, credentials }
    }
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

    /// Who the (authorized) request speaks for, if the application knows: a user or device
    /// id. It becomes [`Connection::recipient`](crate::Connection::recipient), which lets
    /// presence-aware delivery (Web Push only to recipients with no live connection) tell
    /// who is online. Default: nobody in particular (`None`).
    fn identify(&self, request: &AccessRequest<'_>) -> Option<String> {
        let _ = request;
        None
    }
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

/// An [`Authorize`] hook that also names the recipient of each request; see
/// [`AuthorizeFn::identify_with`].
pub struct IdentifyingAuthorize<A, I> {
    authorize: A,
    identify: I,
}

impl<A, I> fmt::Debug for IdentifyingAuthorize<A, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentifyingAuthorize")
    }
}

impl<F> AuthorizeFn<F> {
    /// Adds an [`Authorize::identify`] closure, such as one that reads a user id from a
    /// verified cookie.
    ///
    /// ```
    /// use tidings_core::authorize_fn;
    /// let hook = authorize_fn(|_| Ok(()))
    ///     .identify_with(|req| req.credentials.cookie("uid").map(str::to_owned));
    /// # let _ = hook;
    /// ```
    pub fn identify_with<I>(self, identify: I) -> IdentifyingAuthorize<AuthorizeFn<F>, I>
    where
        I: Fn(&AccessRequest<'_>) -> Option<String> + Send + Sync + 'static,
    {
        IdentifyingAuthorize { authorize: self, identify }
    }
}

#[async_trait]
impl<A, I> Authorize for IdentifyingAuthorize<A, I>
where
    A: Authorize,
    I: Fn(&AccessRequest<'_>) -> Option<String> + Send + Sync + 'static,
{
    async fn authorize(&self, request: &AccessRequest<'_>) -> Result<(), Refusal> {
        self.authorize.authorize(request).await
    }

    fn identify(&self, request: &AccessRequest<'_>) -> Option<String> {
        (self.identify)(request)
    }
}

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
