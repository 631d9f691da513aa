//! The HTTP server tidings apps run: [`Server`], a drop-in for `axum::serve` that bounds what
//! each client can hold and answers streams with a few KiB per connection.
//!
//! ```no_run
//! # async fn run(hub: tidings_core::Hub, app: axum::Router) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await?;
//! tidings_server::Server::new(app)
//!     .serve(listener, async move {
//!         tidings_server::shutdown_signal().await;
//!         hub.shutdown(); // SSE streams get a jittered `retry:` and end; long-polls answer
//!     })
//!     .await
//! # }
//! ```
//!
//! # The contract of the direct path
//!
//! The server reads every request head itself (`head`). It answers one kind of request on
//! its own, the **direct path** (`direct`): a `GET` over HTTP/1.1 whose head arrived whole and
//! alone (no byte after its blank line), within the header limit, that obeys the `Host` rule and
//! carries none of `Content-Length`, `Transfer-Encoding`, `Upgrade` or `Expect`. Such a request
//! has no body, so it ends exactly where its head does: the parser that found the blank line
//! (`httparse`, the one hyper uses) is the only judge of where the request ends, and no byte of
//! a following request can have been read as part of it. For it the server calls the router
//! and writes the answer itself: a `200 text/event-stream` as a close-delimited stream, chunk
//! by chunk; any other answer with its `Content-Length` when known, chunked otherwise, keeping
//! the connection for the next request unless either side said `Connection: close`. Every
//! other request (a body, another method, HTTP/1.0, HTTP/2, an upgrade, an expectation, several
//! requests in one read, anything `httparse` refuses) is handed with every byte read so far to
//! hyper (`hand_off`), which keeps the connection from then on: the two never read the same
//! connection at the same time, so they can never disagree on where a request ends.
//!
//! The rest: `limits` admits connections (per server, per client address) and refuses the
//! rest with `503`/`429`; `proxy` finds the client's address behind a reverse proxy (the
//! PROXY protocol, `X-Forwarded-For` from trusted proxies); `connection` runs one connection;
//! `shutdown` ends them all.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::Router;
pub use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

mod connection;
mod direct;
mod error;
mod hand_off;
mod head;
mod host;
mod limits;
mod listener;
mod proxy;
mod repoll;
mod shutdown;
#[cfg(feature = "tls")]
mod tls;

pub use limits::{ServerStats, ServerStatsHandle, client_key};
pub use listener::{LimitedListener, LimitedStream};
pub use proxy::{ClientIp, DEFAULT_TRUSTED_PROXIES};
pub use shutdown::shutdown_signal;
#[cfg(feature = "tls")]
pub use tls::{ALPN_PROTOCOLS, TlsError, tls_config_from_pem};

use connection::{Shared, serve_connection};
use hand_off::Rewind;
use limits::{Counters, Origin, admit, default_max_connections, refuse};
use shutdown::all_closed;

/// A hardened server for a tidings [`Router`], in place of `axum::serve`: HTTP/1.1 and HTTP/2
/// (with prior knowledge, or by ALPN over TLS with `Server::tls`, feature `tls`), every
/// connection a client can open bounded, every refusal a clear status with a JSON body, and the
/// real client found behind a reverse proxy. See `docs/deployment.md`.
///
/// `axum::serve` keeps connections without limit, lets a client take forever to send its
/// request headers (slow-loris) and accepts headers of hundreds of kilobytes. [`Server`] is the
/// same accept loop with those doors shut:
///
/// | limit | default | answer |
/// |---|---|---|
/// | [`max_connections`](Server::max_connections) | 90 % of the process's open-file limit (10 000 where unknown) | `503` + `Retry-After`, then close |
/// | [`max_connections_per_ip`](Server::max_connections_per_ip) (IPv6: per /64) | 1024 | `429` + `Retry-After`, then close |
/// | [`header_timeout`](Server::header_timeout): time to send the request head | 10 s | connection closed |
/// | [`max_header_bytes`](Server::max_header_bytes): request line and headers | 16 KiB | `431`; over 4x the limit, the parser stops reading with a bare `431` |
/// | [`stall_timeout`](Server::stall_timeout): written data left unacknowledged (Linux) | 30 s | connection closed |
/// | [`grace_period`](Server::grace_period) after shutdown is asked | 10 s | connections still open are dropped |
/// | [`max_streams_per_connection`](Server::max_streams_per_connection) (HTTP/2) | 100 | the client waits for a stream to end (RFC 9113 §5.1.2) |
///
/// Behind a reverse proxy, the per-client limit counts the client the proxy names:
/// [`trusted_proxies`](Server::trusted_proxies) (default: loopback and the private ranges)
/// have their `X-Forwarded-For` believed, and [`proxy_protocol`](Server::proxy_protocol) reads
/// the PROXY protocol header (v1 or v2) that starts each connection. Every request carries the
/// client's address as a [`ClientIp`] extension.
///
/// Request bodies are bounded per route: see `tidings_http::limit_body`.
///
/// Every request is held to the `Host` rule of RFC 9112 §3.2, whichever path below answers it:
/// an HTTP/1.1 request without `Host`, or any request with two `Host` lines or an invalid one,
/// is answered `400` (JSON) and its connection closed; HTTP/1.0 requests may lack `Host`, and
/// an absolute-form target makes `Host` ignored, as the RFC says. `axum::serve` checks none of
/// this.
///
/// ```no_run
/// # async fn run(hub: tidings_core::Hub, app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await?;
/// tidings_server::Server::new(app)
///     .max_connections_per_ip(256)
///     .serve(listener, async move {
///         tidings_server::shutdown_signal().await;
///         hub.shutdown(); // SSE streams get a jittered `retry:` and end; long-polls answer
///     })
///     .await
/// # }
/// ```
///
/// Handlers see the peer's address as axum's `ConnectInfo<SocketAddr>`, as with
/// `into_make_service_with_connect_info`. As under `axum::serve`, upgrades work (a WebSocket
/// route answers `101` and gets the connection), a handler's `Connection: close` ends the
/// connection after its answer, and a body made over time (NDJSON) goes out as it is made: what
/// is ready together is written together, and nothing ready waits for more.
/// `tests/server_differential.rs` serves the same router under both and compares what a client
/// sees.
///
/// # Streams and polls skip the HTTP machinery
///
/// Request heads are read by the server itself. When a request is a `GET` without a body and
/// the router answers it with a stream (`200`, `text/event-stream`), the server writes the head
/// with `Connection: close` and then each chunk of the body straight to the socket, the body
/// ending where the connection does (a close-delimited HTTP/1.1 response, which every
/// `EventSource` reads). Any other answer is written by the server too, and the connection
/// waits for its next request: with its `Content-Length` when its length is known (a page), or
/// once its first chunk is (a long-poll batch, whose body waits for events: the server waits
/// for that chunk holding nothing but the socket, and ends the wait if the client hangs up),
/// chunked otherwise. An idle SSE connection or a waiting poll then holds a few KiB (its task,
/// its subscription) instead of the HTTP/1 connection's two 8 KiB buffers; see
/// `docs/benchmarks.md`. Any other request (a body, another method, HTTP/1.0, HTTP/2, an
/// upgrade, several requests read at once) is served by hyper as usual, from the same bytes,
/// for the rest of that connection; over TLS, every request is.
#[derive(Debug, Clone)]
#[must_use]
pub struct Server {
    router: Router,
    config: Config,
    stats: Arc<Counters>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Debug, Clone)]
struct Config {
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) proxy_protocol: bool,
    pub(crate) max_streams_per_connection: u32,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) stall_timeout: Option<Duration>,
    pub(crate) retry_after: Duration,
    pub(crate) grace_period: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            trusted_proxies: proxy::default_trusted(),
            proxy_protocol: false,
            max_streams_per_connection: 100,
            max_connections: default_max_connections(),
            max_connections_per_ip: 1024,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            stall_timeout: Some(Duration::from_secs(30)),
            retry_after: Duration::from_secs(5),
            grace_period: Duration::from_secs(10),
        }
    }
}

impl Server {
    /// A server for `router`, with the default limits.
    pub fn new(router: Router) -> Server {
        Server {
            router,
            config: Config::default(),
            stats: Arc::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The addresses whose `X-Forwarded-For` is believed (default:
    /// [`DEFAULT_TRUSTED_PROXIES`], loopback and the private ranges; an empty list believes
    /// none). A connection from one of them is not counted as one client: each of its requests
    /// is counted, while it is answered, under the client that `X-Forwarded-For` names (the
    /// right-most address that is not itself trusted), and handlers find that address as
    /// [`ClientIp`]. See `docs/deployment.md`.
    ///
    /// A client whose connections arrive from a trusted range without passing a proxy that
    /// appends its address can name any address in its own `X-Forwarded-For`, and so escape
    /// the per-client limit or use up another address's: this includes traffic NATed from
    /// private addresses (Kubernetes' default external traffic policy, Docker's userland proxy,
    /// a VPN). Trust only the ranges your proxies are in.
    pub fn trusted_proxies(mut self, ranges: impl IntoIterator<Item = IpNet>) -> Server {
        self.config.trusted_proxies = ranges.into_iter().collect();
        self
    }

    /// Requires a PROXY protocol header (v1 or v2, HAProxy's specification) at the start of
    /// every connection, and believes it (default: off). The connection is then the client's it
    /// names: counted under that address for [`max_connections_per_ip`](Server::max_connections_per_ip),
    /// and shown to handlers as `ConnectInfo` and [`ClientIp`]. A `LOCAL` header (a proxy's
    /// health check) keeps the peer's address. A connection without a valid header within the
    /// [`header_timeout`](Server::header_timeout) is closed without an answer, as the
    /// specification says: turn this on only for a listener that nothing but the proxy reaches.
    pub fn proxy_protocol(mut self, on: bool) -> Server {
        self.config.proxy_protocol = on;
        self
    }

    /// The streams one HTTP/2 connection may have open at once (default 100, the floor RFC 9113
    /// §6.5.2 recommends; browsers stay under it). The per-client limit counts the connection
    /// (or, from a trusted proxy, each request), not its streams.
    pub fn max_streams_per_connection(mut self, max: u32) -> Server {
        self.config.max_streams_per_connection = max;
        self
    }

    /// Connections open at once (default: 90 % of the open-file limit, `RLIMIT_NOFILE`, read
    /// from `/proc/self/limits`; 10 000 where it cannot be read). One more is answered `503`
    /// with `Retry-After` and closed, rather than failing to accept with `EMFILE`.
    pub fn max_connections(mut self, max: usize) -> Server {
        self.config.max_connections = max;
        self
    }

    /// Connections open at once from one client address (default 1024; IPv6 addresses count
    /// per /64 network, the block one client usually holds). One more is answered `429` with
    /// `Retry-After` and closed.
    pub fn max_connections_per_ip(mut self, max: usize) -> Server {
        self.config.max_connections_per_ip = max;
        self
    }

    /// How long a client may take to send a request's line and headers (default 10 s): the
    /// slow-loris defence. A connection that takes longer is closed. It also bounds how long an
    /// idle keep-alive connection is kept between requests.
    pub fn header_timeout(mut self, timeout: Duration) -> Server {
        self.config.header_timeout = timeout;
        self
    }

    /// The largest request line plus headers (default 16 KiB; at least 1 KiB). A larger head
    /// is answered `431` with a JSON message. The parser itself stops reading at 4x this size
    /// (at least 64 KiB) and answers a bare `431`, so no client can make it buffer more.
    pub fn max_header_bytes(mut self, max: usize) -> Server {
        self.config.max_header_bytes = max.max(1024);
        self
    }

    /// Closes a connection whose written data stays unacknowledged for `timeout` (default
    /// 30 s; `None` leaves the system's default of many minutes). See
    /// [`stall_timeout`]. Linux only; elsewhere it does nothing.
    pub fn stall_timeout(mut self, timeout: Option<Duration>) -> Server {
        self.config.stall_timeout = timeout;
        self
    }

    /// The `Retry-After` of a `503` or `429` refusal (default 5 s).
    pub fn retry_after(mut self, after: Duration) -> Server {
        self.config.retry_after = after;
        self
    }

    /// How long [`serve`](Server::serve) waits, once shutdown is asked, for open connections
    /// to finish (default 10 s); it then closes those still open (their tasks aborted, their
    /// sockets dropped) and returns: nothing is written on them afterwards. A connection a
    /// handler took over with an upgrade belongs to the handler.
    pub fn grace_period(mut self, period: Duration) -> Server {
        self.config.grace_period = period;
        self
    }

    /// A handle on the counters, to read them while the server runs.
    pub fn stats(&self) -> ServerStatsHandle {
        ServerStatsHandle(self.stats.clone())
    }

    /// Accepts connections on `listener` until `shutdown` resolves; then stops accepting, lets
    /// each connection finish its response in progress (ask the hub to shut down inside
    /// `shutdown`, so that SSE streams and long-polls end), and returns once every connection is
    /// closed or the grace period is over.
    ///
    /// A connection upgraded by a `101 Switching Protocols` (WebSocket) counts toward the
    /// limits, and is waited for, until its socket closes; its task is the handler's, which the
    /// server cannot drop at the end of the grace period: shut the hub down in `shutdown`, and
    /// tidings' WebSocket sockets close (a `closing` message, then 1012).
    ///
    /// # Errors
    ///
    /// None today: accept errors (`EMFILE`, …) are logged and retried after a second, as
    /// `axum::serve` does. The `Result` leaves room for errors a future version may report.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        #[cfg(feature = "tls")]
        let Server { router, config, stats, tls } = self;
        #[cfg(not(feature = "tls"))]
        let Server { router, config, stats } = self;
        let shared = Arc::new(Shared {
            router,
            config,
            stats: stats.clone(),
            #[cfg(feature = "tls")]
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
        });
        let config = &shared.config;
        let (stop, stopped) = watch::channel(false);
        let mut shutdown = pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        accept_error(err).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Counted under its address now, unless the address is only known later (the PROXY
            // protocol) or is a trusted proxy's (each request is counted instead).
            let forwarded = !config.proxy_protocol && proxy::is_trusted(&config.trusted_proxies, peer.ip());
            let client = (!config.proxy_protocol && !forwarded).then_some(peer.ip());
            match admit(&stats, config, client) {
                Ok(guard) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let id = guard.id;
                    let span = tracing::debug_span!("connection", %peer);
                    let origin = Origin { peer, forwarded };
                    let connection = serve_connection(stream, origin, shared.clone(), stopped.clone(), guard);
                    // Entering a span on every poll is not free: only when it is recorded.
                    let task = if span.is_disabled() {
                        tokio::spawn(connection)
                    } else {
                        tokio::spawn(connection.instrument(span))
                    };
                    // Unless the connection is over already (its entry gone with it).
                    if let Some(slot) = stats.tasks.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&id) {
                        *slot = Some(task.abort_handle());
                    }
                }
                Err(status) => refuse(Rewind::uncounted(Vec::new(), stream), status, &stats, config, shared.refusing(false)),
            }
        }
        drop(listener);
        stop.send_replace(true);
        if tokio::time::timeout(config.grace_period, all_closed(&stats)).await.is_err() {
            tracing::warn!(open = stats.open.load(Ordering::Relaxed), "grace period over: dropping open connections");
            // Every connection still open is dropped, its socket closed, before `serve`
            // returns: nothing is written on it afterwards.
            for task in stats.tasks.lock().unwrap_or_else(PoisonError::into_inner).values().flatten() {
                task.abort();
            }
            // An aborted task is dropped when the runtime next gets to it: at once, unless a
            // handler blocks its thread.
            let _ = tokio::time::timeout(Duration::from_secs(5), all_closed(&stats)).await;
        }
        Ok(())
    }
}

pub(crate) async fn accept_error(err: io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    // Most likely out of file descriptors: wait for some to close rather than spin.
    tracing::error!(%err, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Disconnects a client whose socket stops draining: data the server wrote that stays
/// unacknowledged (or unsent, because the client's window is full) for `timeout` closes the
/// connection (`TCP_USER_TIMEOUT`, Linux). The client reconnects and replays from its cursor.
///
/// Without it, a stalled client costs bounded memory (see the hub's Backpressure section) but
/// keeps its connection until the operating system gives up, which can take many minutes.
/// [`Server`] applies it to every connection (30 s by default); with `axum::serve`, apply it
/// with axum's `tap_io`:
///
/// ```no_run
/// use axum::serve::ListenerExt;
/// # async fn run(app: axum::Router) {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await.unwrap()
///     .tap_io(tidings_server::stall_timeout(std::time::Duration::from_secs(30)));
/// axum::serve(listener, app).await.unwrap();
/// # }
/// ```
///
/// On other systems than Linux it does nothing.
pub fn stall_timeout(timeout: Duration) -> impl FnMut(&mut tokio::net::TcpStream) + Send + 'static {
    move |stream| {
        #[cfg(target_os = "linux")]
        if let Err(err) = socket2::SockRef::from(&*stream).set_tcp_user_timeout(Some(timeout)) {
            let _ = err; // The connection simply keeps the system's default.
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (stream, timeout);
    }
}

/// Entry points for the fuzz targets in `fuzz/`, over what the server parses from the network
/// itself (the rest is hyper's, fuzzed upstream). Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::IpAddr;

    /// A PROXY protocol header at the start of `bytes`: `Ok(None)` while more bytes are needed,
    /// else the client's address and the header's length.
    ///
    /// # Errors
    ///
    /// `bytes` does not start with a PROXY header.
    pub fn proxy_header(bytes: &[u8]) -> std::io::Result<Option<(Option<std::net::SocketAddr>, usize)>> {
        crate::proxy::parse_proxy_header(bytes)
    }

    /// The client that `X-Forwarded-For` lines name, from `peer`, with the default trusted
    /// ranges.
    pub fn forwarded_client(lines: &[&[u8]], peer: IpAddr) -> IpAddr {
        let mut headers = http::HeaderMap::new();
        for line in lines {
            if let Ok(value) = http::HeaderValue::from_bytes(line) {
                headers.append("x-forwarded-for", value);
            }
        }
        crate::proxy::forwarded_client(&headers, peer, &crate::proxy::default_trusted())
    }

    /// Whether the direct path takes the request head in `bytes` (a bodiless `GET` within 16 KiB
    /// that obeys the `Host` rule), and whether its connection stays open after it.
    pub fn direct_path(bytes: &[u8]) -> Option<bool> {
        crate::head::bodiless_get(bytes, 16 * 1024).map(|(_, keep_alive)| keep_alive)
    }
}
