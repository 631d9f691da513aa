//! Admission and limits: how many connections the server and each client address may hold,
//! the refusals (`503`, `429`) of the rest, and the socket options every connection gets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::Config;
use crate::error::refusal;
use crate::hand_off::{Rewind, any_builder};
use crate::proxy::{ClientIp, canonical, forwarded_client, read_proxy_header};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// Connections turned away beyond this many at once are closed without an answer: answering
/// costs a task and a timer, and a flood must not turn that into unbounded work.
pub(crate) const MAX_REFUSING: usize = 1024;

/// The counters of a [`Server`](crate::Server), read through [`ServerStatsHandle::get`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections open now.
    pub open: usize,
    /// Connections accepted and served since the start.
    pub accepted: u64,
    /// Connections refused with 503 because `max_connections` were open.
    pub refused_capacity: u64,
    /// Connections refused with 429 because their address had `max_connections_per_ip` open
    /// (from a trusted proxy: requests refused because their client had).
    pub refused_per_ip: u64,
    /// Connections closed unanswered because too many refusals were in progress.
    pub dropped: u64,
    /// Requests answered 431 because their head was over `max_header_bytes`.
    pub header_too_large: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) open: AtomicUsize,
    pub(crate) refusing: AtomicUsize,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_capacity: AtomicU64,
    pub(crate) refused_per_ip: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) header_too_large: AtomicU64,
    pub(crate) per_ip: Mutex<HashMap<IpAddr, usize>>,
    pub(crate) closed: Notify,
    /// HTTP/2 streams' tasks still running (they end with their connection).
    pub(crate) streams: AtomicUsize,
    /// Every open connection's task, to abort when the grace period is over (`None` until its
    /// task is spawned); an entry goes with its connection.
    pub(crate) tasks: Mutex<HashMap<u64, Option<tokio::task::AbortHandle>>>,
    pub(crate) next_id: AtomicU64,
}

/// Reads a [`Server`](crate::Server)'s counters while it runs (for metrics). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerStatsHandle(pub(crate) Arc<Counters>);

impl ServerStatsHandle {
    /// The counters now.
    pub fn get(&self) -> ServerStats {
        let c = &self.0;
        ServerStats {
            open: c.open.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused_capacity: c.refused_capacity.load(Ordering::Relaxed),
            refused_per_ip: c.refused_per_ip.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            header_too_large: c.header_too_large.load(Ordering::Relaxed),
        }
    }
}
/// One admitted connection: counted until dropped.
pub(crate) struct Admitted {
    pub(crate) stats: Arc<Counters>,
    /// Its client's count (`None` while the client is not known yet, or for a trusted proxy,
    /// whose requests are counted one by one).
    pub(crate) slot: Option<ClientSlot>,
    /// Its entry in [`Counters::tasks`].
    pub(crate) id: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        drop(self.slot.take());
        self.stats.tasks.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        metrics::gauge!("tidings_http_connections").decrement(1.0);
        if self.stats.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stats.closed.notify_waiters();
        }
    }
}

/// One of a client address's `max_connections_per_ip`: a connection, or a request a trusted
/// proxy forwarded, while it lasts.
pub(crate) struct ClientSlot {
    stats: Arc<Counters>,
    key: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut per_ip = self.stats.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.key);
            }
        }
    }
}

/// Admits a connection if the server has room, and counts it under `client` if given.
pub(crate) fn admit(stats: &Arc<Counters>, config: &Config, client: Option<IpAddr>) -> Result<Admitted, StatusCode> {
    let mut per_ip = stats.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
    if stats.open.load(Ordering::Acquire) >= config.max_connections {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let slot = match client {
        Some(ip) => Some(take_slot(&mut per_ip, stats, config, ip)?),
        None => None,
    };
    stats.open.fetch_add(1, Ordering::AcqRel);
    drop(per_ip);
    let id = stats.next_id.fetch_add(1, Ordering::Relaxed);
    stats.tasks.lock().unwrap_or_else(PoisonError::into_inner).insert(id, None);
    metrics::gauge!("tidings_http_connections").increment(1.0);
    Ok(Admitted { stats: stats.clone(), slot, id })
}

/// Counts one more connection or request under `client`, if it has fewer than
/// `max_connections_per_ip`; else `429`.
pub(crate) fn claim(stats: &Arc<Counters>, config: &Config, client: IpAddr) -> Result<ClientSlot, StatusCode> {
    let mut per_ip = stats.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
    take_slot(&mut per_ip, stats, config, client)
}

fn take_slot(
    per_ip: &mut HashMap<IpAddr, usize>,
    stats: &Arc<Counters>,
    config: &Config,
    client: IpAddr,
) -> Result<ClientSlot, StatusCode> {
    let key = client_key(client);
    let n = per_ip.entry(key).or_insert(0);
    if *n >= config.max_connections_per_ip {
        if *n == 0 {
            per_ip.remove(&key);
        }
        return Err(StatusCode::TOO_MANY_REQUESTS);
    }
    *n += 1;
    Ok(ClientSlot { stats: stats.clone(), key })
}

/// Counts a refusal (`429` or `503`) in the stats and the metrics.
pub(crate) fn count_refusal(stats: &Counters, status: StatusCode) {
    let per_ip = status == StatusCode::TOO_MANY_REQUESTS;
    let counter = if per_ip { &stats.refused_per_ip } else { &stats.refused_capacity };
    counter.fetch_add(1, Ordering::Relaxed);
    let reason = if per_ip { "per_ip" } else { "capacity" };
    metrics::counter!("tidings_http_refused_connections_total", "reason" => reason).increment(1);
}

/// The message of a refusal with `status`.
pub(crate) fn refusal_message(status: StatusCode, config: &Config) -> String {
    if status == StatusCode::TOO_MANY_REQUESTS {
        format!("too many connections from your address (the limit is {})", config.max_connections_per_ip)
    } else {
        format!("the server is at its connection limit ({}); try again later", config.max_connections)
    }
}

/// Where a connection's requests come from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// The client as handlers see it (`ConnectInfo`): the peer, or the PROXY protocol's source.
    pub(crate) peer: SocketAddr,
    /// The peer is a trusted proxy: each request is counted under the client its
    /// `X-Forwarded-For` names, rather than the connection under the peer.
    pub(crate) forwarded: bool,
}

/// `response`, its body keeping `guard` until it is dropped.
pub(crate) fn hold<G: Send + Unpin + 'static>(response: Response, guard: G) -> Response {
    response.map(|body| axum::body::Body::new(Held { body, _guard: guard }))
}

/// Calls the router for a request of a connection from `origin`: with its `ConnectInfo` and
/// [`ClientIp`], and, from a trusted proxy, counted under its client (a `429` instead if that
/// client has `max_connections_per_ip` already). The count lasts as long as the slot returned
/// with the answer: keep it until the answer is written (a stream: until it ends).
pub(crate) async fn call_router<B>(
    router: &Router,
    mut request: Request<B>,
    origin: Origin,
    stats: &Arc<Counters>,
    config: &Config,
) -> (Response, Option<ClientSlot>)
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let client = if origin.forwarded {
        forwarded_client(request.headers(), origin.peer.ip(), &config.trusted_proxies)
    } else {
        canonical(origin.peer.ip())
    };
    let extensions = request.extensions_mut();
    extensions.insert(ConnectInfo(origin.peer));
    extensions.insert(ClientIp(client));
    let slot = if origin.forwarded {
        match claim(stats, config, client) {
            Ok(slot) => Some(slot),
            Err(status) => {
                count_refusal(stats, status);
                return (refusal(status, &refusal_message(status, config), Some(config.retry_after)), None);
            }
        }
    } else {
        None
    };
    let Ok(response) = tower::Service::call(&mut router.clone(), request).await;
    (response, slot)
}

/// An answer's body with a guard (the client's slot, an HTTP/2 request in progress), given back
/// when the body is dropped (a stream: when it ends).
struct Held<G> {
    body: axum::body::Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Held<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The address a client is counted under ([`Server::max_connections_per_ip`](crate::Server::max_connections_per_ip)):
/// IPv4 (also when mapped into IPv6) as it is, IPv6 by its /64 network (the block one client
/// usually holds), written with the rest zero (`2001:db8:1:2::`). For other per-client limits
/// to count the same way.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}
/// Answers every request on `io` with the refusal `status`, then closes it (HTTP/1.1 or, with
/// prior knowledge, HTTP/2; within 5 s at most).
///
/// `how` says what the connection starts with: over TLS (a refusal in plain HTTP would be
/// garbage to a TLS client, and a handshake per refusal is what a flood would want) it is closed
/// unanswered; with a PROXY protocol header still to read, that header is read first.
pub(crate) fn refuse(io: Rewind, status: StatusCode, stats: &Arc<Counters>, config: &Config, how: Refusing) {
    count_refusal(stats, status);
    if how == Refusing::Tls {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tidings_http_refused_connections_total", "reason" => "dropped").increment(1);
        return; // `io` is dropped: closed unanswered.
    }
    if stats.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        stats.refusing.fetch_sub(1, Ordering::AcqRel);
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tidings_http_refused_connections_total", "reason" => "dropped").increment(1);
        return; // `io` is dropped: closed unanswered.
    }
    let message = refusal_message(status, config);
    let retry_after = config.retry_after;
    let mut builder = any_builder(config);
    builder.http1().keep_alive(false).header_read_timeout(config.header_timeout.min(REFUSING_FOR));
    let stats = stats.clone();
    tokio::spawn(async move {
        let answering = async move {
            let mut io = io;
            if how == Refusing::AfterProxyHeader {
                let Ok((_, rest)) = read_proxy_header(&mut io.stream).await else { return };
                io.prefix = rest;
            }
            let service = service_fn(move |_request: Request<Incoming>| {
                let answer = refusal(status, &message, Some(retry_after));
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = builder.serve_connection(TokioIo::new(io), service).await;
        };
        let _ = tokio::time::timeout(REFUSING_FOR, answering).await;
        stats.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// What a refused connection starts with (see [`refuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusing {
    /// An HTTP request (HTTP/1.1, or HTTP/2's preface).
    Http,
    /// A PROXY protocol header, then HTTP.
    AfterProxyHeader,
    /// A TLS handshake.
    Tls,
}

/// How long a refused connection may take to send its request and read the refusal.
const REFUSING_FOR: Duration = Duration::from_secs(5);

pub(crate) fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .map_or(10_000, |files| files - files / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
    }
}
