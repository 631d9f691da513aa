//! The hardened server loop: see [`Server`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::HttpError;
use crate::host::{HostError, check_host};

/// A hardened HTTP/1.1 server loop for a tidings [`Router`]: every connection a client can
/// open is bounded, and every refusal is a clear status with a JSON body.
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
///
/// Request bodies are bounded per route: see [`limit_body`](crate::limit_body).
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
/// tidings_http::Server::new(app)
///     .max_connections_per_ip(256)
///     .serve(listener, async move {
///         tidings_http::shutdown_signal().await;
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
/// `docs/benchmarks.md`. Any other request (a body, another method, HTTP/1.0, several requests
/// read at once) is served by hyper as usual, from the same bytes, for the rest of that
/// connection.
#[derive(Debug, Clone)]
#[must_use]
pub struct Server {
    router: Router,
    config: Config,
    stats: Arc<Counters>,
}

#[derive(Debug, Clone)]
struct Config {
    max_connections: usize,
    max_connections_per_ip: usize,
    header_timeout: Duration,
    max_header_bytes: usize,
    stall_timeout: Option<Duration>,
    retry_after: Duration,
    grace_period: Duration,
}

/// Connections turned away beyond this many at once are closed without an answer: answering
/// costs a task and a timer, and a flood must not turn that into unbounded work.
const MAX_REFUSING: usize = 1024;

/// The counters of a [`Server`], read through [`ServerStatsHandle::get`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections open now.
    pub open: usize,
    /// Connections accepted and served since the start.
    pub accepted: u64,
    /// Connections refused with 503 because `max_connections` were open.
    pub refused_capacity: u64,
    /// Connections refused with 429 because their address had `max_connections_per_ip` open.
    pub refused_per_ip: u64,
    /// Connections closed unanswered because too many refusals were in progress.
    pub dropped: u64,
    /// Requests answered 431 because their head was over `max_header_bytes`.
    pub header_too_large: u64,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    refusing: AtomicUsize,
    accepted: AtomicU64,
    refused_capacity: AtomicU64,
    refused_per_ip: AtomicU64,
    dropped: AtomicU64,
    header_too_large: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    closed: Notify,
    /// Every open connection's task, to abort when the grace period is over (`None` until its
    /// task is spawned); an entry goes with its connection.
    tasks: Mutex<HashMap<u64, Option<tokio::task::AbortHandle>>>,
    next_id: AtomicU64,
}

/// Reads a [`Server`]'s counters while it runs (for metrics). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerStatsHandle(Arc<Counters>);

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

impl Server {
    /// A server for `router`, with the default limits.
    pub fn new(router: Router) -> Server {
        Server {
            router,
            config: Config {
                max_connections: default_max_connections(),
                max_connections_per_ip: 1024,
                header_timeout: Duration::from_secs(10),
                max_header_bytes: 16 * 1024,
                stall_timeout: Some(Duration::from_secs(30)),
                retry_after: Duration::from_secs(5),
                grace_period: Duration::from_secs(10),
            },
            stats: Arc::default(),
        }
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
    /// [`stall_timeout`](crate::stall_timeout). Linux only; elsewhere it does nothing.
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
    /// # Errors
    ///
    /// None today: accept errors (`EMFILE`, …) are logged and retried after a second, as
    /// `axum::serve` does. The `Result` leaves room for errors a future version may report.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let Server { router, config, stats } = self;
        let config = Arc::new(config);
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
            let ip = client_key(peer.ip());
            match admit(&stats, &config, ip) {
                Ok(guard) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let id = guard.id;
                    let span = tracing::debug_span!("connection", %peer);
                    let connection =
                        serve_connection(stream, peer, router.clone(), config.clone(), stopped.clone(), guard);
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
                Err(status) => refuse(stream, status, &stats, &config),
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

/// Resolves once no admitted connection is open.
async fn all_closed(stats: &Counters) {
    loop {
        let mut closed = pin!(stats.closed.notified());
        closed.as_mut().enable();
        if stats.open.load(Ordering::Acquire) == 0 {
            return;
        }
        closed.await;
    }
}

/// Whether `Connection` header values hold the `close` option (RFC 9110 §7.6.1).
fn says_close<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    values.into_iter().any(|v| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")))
}

/// One admitted connection: counted until dropped.
struct Admitted {
    stats: Arc<Counters>,
    ip: IpAddr,
    /// Its entry in [`Counters::tasks`].
    id: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self.stats.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.stats.tasks.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        metrics::gauge!("tidings_http_connections").decrement(1.0);
        if self.stats.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stats.closed.notify_waiters();
        }
    }
}

fn admit(stats: &Arc<Counters>, config: &Config, ip: IpAddr) -> Result<Admitted, StatusCode> {
    let mut per_ip = stats.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
    if stats.open.load(Ordering::Acquire) >= config.max_connections {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let n = per_ip.entry(ip).or_insert(0);
    if *n >= config.max_connections_per_ip {
        if *n == 0 {
            per_ip.remove(&ip);
        }
        return Err(StatusCode::TOO_MANY_REQUESTS);
    }
    *n += 1;
    stats.open.fetch_add(1, Ordering::AcqRel);
    drop(per_ip);
    let id = stats.next_id.fetch_add(1, Ordering::Relaxed);
    stats.tasks.lock().unwrap_or_else(PoisonError::into_inner).insert(id, None);
    metrics::gauge!("tidings_http_connections").increment(1.0);
    Ok(Admitted { stats: stats.clone(), ip, id })
}

/// The address connections are counted under: IPv4 (also when mapped into IPv6) as it is,
/// IPv6 by its /64 network.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    let hard_cap = hard_header_cap(config);
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(hard_cap)
        .max_buf_size(hard_cap.max(417_792) + 8192);
    builder
}

// Not an `async fn`: that would keep each argument twice in the task (as argument and as
// local); the `async move` block keeps the one copy it captured.
#[allow(clippy::manual_async_fn)]
fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    config: Arc<Config>,
    mut stopped: watch::Receiver<bool>,
    admitted: Admitted,
) -> impl Future<Output = ()> + Send {
    async move {
        if let Some(timeout) = config.stall_timeout {
            crate::stall_timeout(timeout)(&mut stream);
        }
        // What this loop writes is already whole (a burst of events, an answer): Nagle's
        // algorithm would only hold it back until the previous write is acknowledged (up to the
        // peer's delayed-ACK 40 ms).
        let _ = stream.set_nodelay(true);
        // Request heads are read here. A `GET` without a body is answered here too: a stream
        // (SSE) is written straight to the socket; any other answer is written whole (with its
        // `Content-Length`, or chunked if its length is not known once its first chunk is), after
        // which the connection waits for its next request, all without the HTTP machinery's
        // per-connection buffers. Anything else goes to hyper, which reads the same bytes again,
        // and keeps the connection from then on.
        // Every await below that holds much state is boxed: a task is as large as its largest
        // state, and an idle stream or a waiting poll should not carry room for the others.
        let head = loop {
            let read = Box::pin(async {
                tokio::select! {
                    read = tokio::time::timeout(config.header_timeout, read_head(&mut stream, &config)) => Some(read),
                    _ = stopped.wait_for(|stop| *stop) => None, // idle between requests: close
                }
            })
            .await;
            let head: Vec<u8> = match read {
                Some(Ok(Ok(head))) => head,
                // Shutting down, closed, failed, or too slow (slow-loris): cut off.
                None | Some(Ok(Err(_)) | Err(_)) => return,
            };
            match Box::pin(one_request(&stream, head, peer, &router, &config, &stopped)).await {
                Outcome::Answered => {}
                Outcome::Close => return,
                Outcome::Stream(response) => {
                    Box::pin(stream_to_socket(stream, response)).await;
                    drop(admitted);
                    return;
                }
                Outcome::Hyper(head) => break head,
            }
        };
        let stats = admitted.stats.clone();
        let io = Rewind { prefix: head, stream };
        Box::pin(serve_with_hyper(io, peer, router, config, stopped, stats)).await;
        drop(admitted);
    }
}

/// What became of one request read by [`serve_connection`].
enum Outcome {
    /// Answered whole; the connection waits for the next request.
    Answered,
    /// Closed (the client went away, a write failed, or the answer said so).
    Close,
    /// A stream, to write until it ends.
    Stream(axum::response::Response),
    /// For hyper: the bytes read so far (a request that is not a bodiless `GET`).
    Hyper(Vec<u8>),
}

/// Answers the request in `head` if it is a bodiless `GET` (see [`serve_connection`]).
// Not an `async fn` (arguments kept twice), and the answer is moved into its writer inside a
// block: a local moved from stays in a future's layout until its scope ends. A pipelined
// request that came meanwhile is read by the next turn of the loop.
#[allow(clippy::manual_async_fn)]
fn one_request<'a>(
    stream: &'a TcpStream,
    head: Vec<u8>,
    peer: SocketAddr,
    router: &'a Router,
    config: &'a Config,
    stopped: &'a watch::Receiver<bool>,
) -> impl Future<Output = Outcome> + Send + 'a {
    // Parsed and handed to the router's (boxed) future before this future starts: it keeps
    // neither the request nor its head.
    let start = match bodiless_get(&head, peer, config.max_header_bytes) {
        None => Err(head),
        Some((request, keep_alive)) => Ok((Box::pin(answer_settled(router, request, stream)), keep_alive)),
    };
    async move {
        let (answering, keep_alive) = match start {
            Ok(answering) => answering,
            Err(head) => return Outcome::Hyper(head),
        };
        let (writing, keep_alive) = {
            let answer = match answering.await {
                Some(Answered::Whole(answer)) => answer,
                Some(Answered::Stream(response)) => return Outcome::Stream(response),
                None => return Outcome::Close, // the client hung up while its request was answered
            };
            // As hyper does: the answer's `Connection: close` ends the connection after it.
            let keep_alive = keep_alive && !answer.close && !*stopped.borrow();
            (Box::pin(write_answer(stream, answer, keep_alive)), keep_alive)
        };
        if writing.await.is_err() || !keep_alive {
            return Outcome::Close;
        }
        Outcome::Answered
    }
}

/// Writes all of `bytes` to a socket shared with readers (`&TcpStream` is not `AsyncWrite`).
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Calls the router for `request`, watching the socket meanwhile: a long-poll may wait a
/// while, and a client that hangs up ends it at once (`None`). Also says whether more bytes
/// came meanwhile (a pipelined request, read once this one is answered).
async fn answer(
    router: &Router,
    request: Request<axum::body::Body>,
    stream: &TcpStream,
) -> Option<(axum::response::Response, bool)> {
    let mut router = router.clone();
    let mut call = pin!(tower::Service::call(&mut router, request));
    let mut peeked = false;
    loop {
        let mut byte = [0u8; 1];
        tokio::select! {
            Ok(response) = call.as_mut() => return Some((response, peeked)),
            seen = stream.peek(&mut byte), if !peeked => match seen {
                Ok(0) | Err(_) => return None,
                Ok(_) => peeked = true,
            },
        }
    }
}

/// [`answer`], then, for a body that is still being made (a poll waiting for events), its first
/// chunk ([`settle`]): so that the answer can be written with its length if that is known then.
/// While the body is made, only the socket is watched; nothing else is held.
fn answer_settled<'a>(
    router: &'a Router,
    request: Request<axum::body::Body>,
    stream: &'a TcpStream,
) -> impl Future<Output = Option<Answered>> + Send + 'a {
    use http_body::Body as _;
    // Boxed here, so that neither the request nor the router's future is kept in this future
    // while the body is made.
    let answering = Box::pin(answer(router, request, stream));
    async move {
        let settling = {
            let (response, peeked) = answering.await?;
            if is_event_stream(&response) {
                return Some(Answered::Stream(response));
            }
            let (parts, body) = response.into_parts();
            let answer = Rendered::new(&parts, body);
            if !has_body_status(answer.status) || answer.body.size_hint().exact().is_some() {
                return Some(Answered::Whole(answer));
            }
            settle(stream, answer, peeked)
        };
        settling.await.map(Answered::Whole)
    }
}

/// What the router answered to a bodiless `GET`.
enum Answered {
    /// A stream (`200 text/event-stream`).
    Stream(axum::response::Response),
    /// Anything else, to write whole.
    Whole(Rendered),
}

/// An answer whose status line and headers are already rendered (a header map is several
/// times their size, and a poll may keep its answer a while before the body is ready).
struct Rendered {
    status: StatusCode,
    /// The handler's answer carries `Connection: close`: the connection ends after it.
    close: bool,
    /// The status line and the handler's headers, without those that frame the message.
    head: Vec<u8>,
    body: axum::body::Body,
}

impl Rendered {
    fn new(parts: &http::response::Parts, body: axum::body::Body) -> Rendered {
        let mut head = Vec::with_capacity(128);
        put_status_and_headers(&mut head, parts);
        head.shrink_to_fit();
        let close = says_close(parts.headers.get_all(http::header::CONNECTION).iter().map(http::HeaderValue::as_bytes));
        Rendered { status: parts.status, close, head, body }
    }
}

/// Serves the rest of a connection with hyper (the bytes already read, then the socket).
async fn serve_with_hyper(
    io: Rewind,
    peer: SocketAddr,
    router: Router,
    config: Arc<Config>,
    mut stopped: watch::Receiver<bool>,
    stats: Arc<Counters>,
) {
    let max_header_bytes = config.max_header_bytes;
    let service = service_fn(move |mut request: Request<Incoming>| {
        let too_large = head_len(&request) > max_header_bytes;
        let host = request_host(&request);
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        let stats = stats.clone();
        async move {
            if too_large {
                stats.header_too_large.fetch_add(1, Ordering::Relaxed);
                let message = format!("request headers are over {max_header_bytes} bytes");
                return Ok::<_, Infallible>(
                    HttpError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message).into_response(),
                );
            }
            if let Err(err) = host {
                // Its body (if any) is not read: the connection cannot carry another request.
                let mut response = HttpError::bad_request(err.to_string()).into_response();
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                return Ok(response);
            }
            tower::Service::call(&mut router, request).await
        }
    });
    let io = TokioIo::new(io);
    // hyper wakes its own task each time it hands a request body to the handler: `Repoll`
    // polls it again at once rather than letting that wake-up send the task to the back of the
    // runtime's queue (behind every subscriber a publish just woke: 100-200 ms under fan-out).
    // With upgrades, as `axum::serve`: a `101 Switching Protocols` hands the connection to the
    // handler (WebSocket).
    let mut connection = pin!(Repoll::new(builder(&config).serve_connection(io, service).with_upgrades()));
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%err, "connection ended with an error");
                }
                break;
            }
            _ = stopped.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                connection.as_mut().inner().graceful_shutdown();
            }
        }
    }
}

/// Reads until the first request's head is complete, unparseable, or as long as the parser's
/// own limit: what was read, for [`bodiless_get`] and, failing that, for hyper to read again.
async fn read_head(stream: &mut TcpStream, config: &Config) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let cap = hard_header_cap(config);
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        match httparse::Request::new(&mut headers).parse(&buf) {
            Ok(httparse::Status::Partial) if buf.len() < cap => continue,
            // Complete, an error (hyper answers it), or too large (hyper answers 431).
            _ => return Ok(buf),
        }
    }
}

/// The request `head` holds, if it is a `GET` over HTTP/1.1 without a body, upgrade or
/// expectation, within the header limit: the requests a stream may answer.
fn bodiless_get(head: &[u8], peer: SocketAddr, max_header_bytes: usize) -> Option<(Request<axum::body::Body>, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(head).ok()? else { return None };
    if len > max_header_bytes || parsed.method? != "GET" || parsed.version? != 1 || len != head.len() {
        return None; // too large (hyper answers 431), another method, HTTP/1.0, or pipelined
    }
    let mut request = Request::get(parsed.path?);
    let mut keep_alive = true;
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "upgrade" | "expect") {
            return None;
        }
        if name == "connection" && says_close([header.value]) {
            keep_alive = false;
        }
        request = request.header(header.name, http::HeaderValue::from_bytes(header.value).ok()?);
    }
    let mut request = request.body(axum::body::Body::empty()).ok()?;
    // A request that breaks the Host rule goes to hyper's path, which answers it 400.
    request_host(&request).ok()?;
    request.extensions_mut().insert(ConnectInfo(peer));
    Some((request, keep_alive))
}

/// The Host rule (see [`host`](crate::host)) for a request as either path reads it.
fn request_host<B>(request: &Request<B>) -> Result<(), HostError> {
    check_host(
        request.version() == http::Version::HTTP_11,
        request.uri().scheme().is_some(),
        request.headers().get_all(http::header::HOST).iter().map(http::HeaderValue::as_bytes),
    )
}

fn has_body_status(status: StatusCode) -> bool {
    !status.is_informational() && status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED
}

/// Waits for the first frame of `response`'s body, watching the socket meanwhile as [`answer`]
/// does (unless bytes came already, `peeked`): `None` if the client hangs up first. Returns the
/// answer with that frame put back in front of the rest of its body (whose length may be known
/// by then).
fn settle(stream: &TcpStream, answer: Rendered, mut peeked: bool) -> impl Future<Output = Option<Rendered>> + Send + '_ {
    use http_body::Body as _;
    let Rendered { status, close, head, mut body } = answer;
    async move {
        let first = std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return std::task::Poll::Ready(Some(frame));
            }
            if !peeked {
                let mut byte = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut byte);
                match stream.poll_peek(cx, &mut buf) {
                    std::task::Poll::Ready(Ok(0) | Err(_)) => return std::task::Poll::Ready(None),
                    std::task::Poll::Ready(Ok(_)) => peeked = true,
                    std::task::Poll::Pending => {}
                }
            }
            std::task::Poll::Pending
        })
        .await?;
        Some(Rendered { status, close, head, body: axum::body::Body::new(Prefixed { first, rest: body }) })
    }
}

/// A body whose first frame was already taken (`None`: the body had ended).
struct Prefixed {
    first: Option<Result<http_body::Frame<axum::body::Bytes>, axum::Error>>,
    rest: axum::body::Body,
}

impl http_body::Body for Prefixed {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.first.take() {
            Some(frame) => std::task::Poll::Ready(Some(frame)),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let first = match &self.first {
            Some(Ok(frame)) => frame.data_ref().map_or(0, |data| data.len() as u64),
            _ => 0,
        };
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(first));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(first));
        }
        hint
    }
}

/// How a response's body is delimited on the wire.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Nothing: no body (`204`, `304`), or one that ends with the connection (a stream).
    None,
}

/// Puts a response head into `out`: [`put_status_and_headers`], then [`put_framing`].
fn put_head(out: &mut Vec<u8>, parts: &http::response::Parts, framing: Framing, keep_alive: bool) {
    put_status_and_headers(out, parts);
    put_framing(out, framing, keep_alive);
}

/// Puts the status line and the handler's headers but those that frame the message (this
/// server decides them) into `out`.
fn put_status_and_headers(out: &mut Vec<u8>, parts: &http::response::Parts) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection" | "date") {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Ends a response head in `out`: the `framing`, `date`, `connection: close` unless
/// `keep_alive`, and the blank line.
fn put_framing(out: &mut Vec<u8>, framing: Framing, keep_alive: bool) {
    match framing {
        Framing::Length(length) => out.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
    out.extend_from_slice(format!("date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now())).as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes an answer (not a stream), keeping the connection open if `keep_alive`: with its
/// `Content-Length` when its body's length is known, chunked otherwise, without a body for the
/// statuses that have none. The frames that are ready together are gathered into writes of up
/// to 16 KiB; whatever is gathered goes out as soon as the body has nothing more ready, so a
/// body made over time (NDJSON, a download as it is produced) reaches the client frame by frame.
async fn write_answer(stream: &TcpStream, answer: Rendered, keep_alive: bool) -> io::Result<()> {
    use http_body::Body as _;
    const GATHER: usize = 16 * 1024;
    let Rendered { status, head, mut body, .. } = answer;
    if status.is_informational() {
        return Err(io::Error::other("a handler answered with an informational status"));
    }
    let framing = if !has_body_status(status) {
        Framing::None
    } else {
        body.size_hint().exact().map_or(Framing::Chunked, Framing::Length)
    };
    let hint = match framing {
        Framing::Length(length) => usize::try_from(length).unwrap_or(usize::MAX).min(GATHER),
        _ => 0,
    };
    let mut out = Vec::with_capacity(head.len() + 128 + hint);
    out.extend_from_slice(&head);
    drop(head);
    put_framing(&mut out, framing, keep_alive);
    if matches!(framing, Framing::None) {
        return write_all(stream, &out).await;
    }
    let mut written = 0u64;
    loop {
        // A frame that is ready now joins what is gathered; before waiting for one that is
        // not, what is gathered is written.
        let frame = match std::future::poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            std::task::Poll::Ready(frame) => frame,
            std::task::Poll::Pending => {
                if !out.is_empty() {
                    write_all(stream, &out).await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|_| io::Error::other("the body failed"))?;
        let Ok(data) = frame.into_data() else { continue }; // trailers are not sent
        if data.is_empty() {
            continue; // an empty chunk would end a chunked body
        }
        written += data.len() as u64;
        if matches!(framing, Framing::Chunked) {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() <= GATHER {
            out.extend_from_slice(&data);
        } else {
            write_all(stream, &out).await?;
            out.clear();
            write_all(stream, &data).await?;
        }
        if matches!(framing, Framing::Chunked) {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Length(length) if written != length => {
            return Err(io::Error::other("the body's length was not the one it announced"));
        }
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    write_all(stream, &out).await
}

fn is_event_stream(response: &axum::response::Response) -> bool {
    response.status() == StatusCode::OK
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Writes a stream to the socket itself: `head` (with `Connection: close`), then each chunk of
/// `body` as it comes, the body ending where the connection does (HTTP/1.1 close-delimited).
/// Returns when the body ends, the client goes away, or a write fails. Only the socket, the
/// body and the chunk being written are kept across its waits (an idle stream's size matters).
fn stream_to_socket(stream: TcpStream, response: axum::response::Response) -> impl Future<Output = ()> + Send {
    let (parts, body) = response.into_parts();
    let mut head = Vec::with_capacity(256);
    put_head(&mut head, &parts, Framing::None, false);
    write_stream(stream, head, body)
}

/// What the stream's next wake-up brought.
enum StreamStep {
    Write(axum::body::Bytes),
    Skip,
    End,
    Gone,
}

// Not an `async fn`: that would keep each argument twice in the future (as argument and as
// local); the `async move` block keeps the one copy it captured.
fn write_stream(mut stream: TcpStream, head: Vec<u8>, mut body: axum::body::Body) -> impl Future<Output = ()> + Send {
    use http_body::Body as _;
    use tokio::io::AsyncWriteExt;
    async move {
        if stream.write_all(&head).await.is_err() {
            return;
        }
        drop(head);
        loop {
            // The body first; then the socket's read readiness through its single reader
            // slot (no waiter to register and remove on every wake-up, as `readable()` would).
            let step = std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                    return std::task::Poll::Ready(match frame {
                        Some(Ok(frame)) => frame.into_data().map_or(StreamStep::Skip, StreamStep::Write),
                        Some(Err(_)) | None => StreamStep::End,
                    });
                }
                stream.poll_read_ready(cx).map(|ready| match ready {
                    Err(_) => StreamStep::Gone,
                    Ok(()) => {
                        // The client may only close (or send something we ignore): a read of 0
                        // bytes ends the stream at once, rather than at the next write.
                        let mut scratch = [0u8; 64];
                        match stream.try_read(&mut scratch) {
                            Ok(0) => StreamStep::Gone,
                            Ok(_) => StreamStep::Skip,
                            Err(err) if err.kind() == io::ErrorKind::WouldBlock => StreamStep::Skip,
                            Err(_) => StreamStep::Gone,
                        }
                    }
                })
            })
            .await;
            match step {
                StreamStep::Write(data) => {
                    if stream.write_all(&data).await.is_err() {
                        return;
                    }
                }
                StreamStep::Skip => {}
                StreamStep::End => {
                    let _ = stream.shutdown().await;
                    return;
                }
                StreamStep::Gone => return,
            }
        }
    }
}

/// A socket whose first bytes were already read: hyper reads them again, then the socket.
struct Rewind {
    prefix: Vec<u8>,
    stream: TcpStream,
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            if self.prefix.is_empty() {
                self.prefix = Vec::new();
            }
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn hard_header_cap(config: &Config) -> usize {
    (config.max_header_bytes.saturating_mul(4)).max(64 * 1024)
}

/// Answers every request on `stream` with the refusal `status`, then closes it.
fn refuse(stream: TcpStream, status: StatusCode, stats: &Arc<Counters>, config: &Config) {
    let counter = if status == StatusCode::TOO_MANY_REQUESTS { &stats.refused_per_ip } else { &stats.refused_capacity };
    counter.fetch_add(1, Ordering::Relaxed);
    let reason = if status == StatusCode::TOO_MANY_REQUESTS { "per_ip" } else { "capacity" };
    metrics::counter!("tidings_http_refused_connections_total", "reason" => reason).increment(1);
    if stats.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        stats.refusing.fetch_sub(1, Ordering::AcqRel);
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tidings_http_refused_connections_total", "reason" => "dropped").increment(1);
        return; // `stream` is dropped: closed unanswered.
    }
    let message = if status == StatusCode::TOO_MANY_REQUESTS {
        format!("too many connections from your address (the limit is {})", config.max_connections_per_ip)
    } else {
        format!("the server is at its connection limit ({}); try again later", config.max_connections)
    };
    let retry_after = config.retry_after;
    let mut builder = builder(config);
    builder.keep_alive(false).header_read_timeout(config.header_timeout.min(Duration::from_secs(5)));
    let stats = stats.clone();
    tokio::spawn(async move {
        let service = service_fn(move |_request: Request<Incoming>| {
            let mut error = HttpError::new(status, message.clone());
            error.retry_after = Some(retry_after);
            async move { Ok::<_, Infallible>(error.into_response()) }
        });
        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        stats.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// The size of a request's head as it came on the wire, near enough: request line and headers.
fn head_len<B>(request: &Request<B>) -> usize {
    let line = request.method().as_str().len()
        + request.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + request.uri().authority().map_or(0, |a| a.as_str().len() + 8)
        + 11;
    request.headers().iter().fold(line, |n, (name, value)| n + name.as_str().len() + value.len() + 4)
}

async fn accept_error(err: io::Error) {
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

fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .map_or(10_000, |files| files - files / 10)
}

pin_project_lite::pin_project! {
    /// Polls `F` again at once when it wakes itself while being polled, at most
    /// [`Repoll::AGAIN`] times in a row, instead of passing the wake-up on.
    ///
    /// A task that is woken while it runs is put at the back of tokio's run queue once its poll
    /// returns, and a wake-up that comes while it waits there changes nothing. hyper's HTTP/1
    /// connection wakes its own task whenever it hands a request body to the handler (its body
    /// channel), so after each `POST` the publisher's connection waited behind every task queued
    /// then, and its next request with it: under a fan-out, every subscriber the publish had just
    /// woken (0.1-0.2 s at 10 000 subscribers, a few times per 300 publishes). Wake-ups from
    /// elsewhere (the socket, a timer, another task) are passed on as they come.
    struct Repoll<F> {
        #[pin]
        inner: F,
        shared: Arc<RepollWaker>,
        waker: std::task::Waker,
    }
}

/// The waker [`Repoll`] gives its future: notes a wake-up while the future is polled, else
/// passes it on to the task's own waker.
struct RepollWaker {
    state: std::sync::atomic::AtomicU8,
    task: Mutex<Option<std::task::Waker>>,
}

const REPOLL_IDLE: u8 = 0;
const REPOLL_POLLING: u8 = 1;
const REPOLL_WOKEN: u8 = 2;

impl std::task::Wake for RepollWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let noted = self.state.compare_exchange(REPOLL_POLLING, REPOLL_WOKEN, Ordering::AcqRel, Ordering::Acquire);
        match noted {
            // Being polled: the poll loop polls again.
            Ok(_) | Err(REPOLL_WOKEN) => {}
            Err(_) => {
                if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                    task.wake_by_ref();
                }
            }
        }
    }
}

impl<F: Future> Repoll<F> {
    /// Polls in a row at most: a future that keeps waking itself (hyper yields on purpose after
    /// serving many pipelined requests in one poll) does get its wake-up passed on.
    const AGAIN: usize = 2;

    fn new(inner: F) -> Repoll<F> {
        let shared = Arc::new(RepollWaker { state: std::sync::atomic::AtomicU8::new(REPOLL_IDLE), task: Mutex::new(None) });
        let waker = std::task::Waker::from(shared.clone());
        Repoll { inner, shared, waker }
    }

    fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let mut this = self.project();
        {
            let mut task = this.shared.task.lock().unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner_cx = std::task::Context::from_waker(this.waker);
        for _ in 0..Self::AGAIN {
            this.shared.state.store(REPOLL_POLLING, Ordering::Release);
            if let std::task::Poll::Ready(output) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(REPOLL_IDLE, Ordering::Release);
                return std::task::Poll::Ready(output);
            }
            let idle = this.shared.state.compare_exchange(REPOLL_POLLING, REPOLL_IDLE, Ordering::AcqRel, Ordering::Acquire);
            if idle.is_ok() {
                return std::task::Poll::Pending; // not woken meanwhile
            }
        }
        this.shared.state.store(REPOLL_IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
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

    #[test]
    fn head_len_counts_line_and_headers() {
        let request = Request::get("/events?topic=a").header("x-big", "v".repeat(100)).body(()).unwrap();
        assert!(head_len(&request) >= 100 + 5 + 15);
        assert!(head_len(&request) < 200);
    }

    /// A future that is pending for `polls` polls, waking itself during the first `self_wakes`
    /// of them, and keeps its last waker.
    struct Nagging {
        polls: usize,
        self_wakes: usize,
        seen: Arc<AtomicUsize>,
        last: LastWaker,
    }

    impl Future for Nagging {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            let n = self.seen.fetch_add(1, Ordering::SeqCst);
            *self.last.lock().unwrap() = Some(cx.waker().clone());
            if n >= self.polls {
                return std::task::Poll::Ready(());
            }
            if self.self_wakes > 0 {
                self.self_wakes -= 1;
                cx.waker().wake_by_ref();
            }
            std::task::Poll::Pending
        }
    }

    struct CountingWaker(AtomicUsize);
    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The last waker a future was polled with.
    type LastWaker = Arc<Mutex<Option<std::task::Waker>>>;

    fn nagging(polls: usize, self_wakes: usize) -> (Pin<Box<Repoll<Nagging>>>, Arc<AtomicUsize>, LastWaker) {
        let seen = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let future = Nagging { polls, self_wakes, seen: seen.clone(), last: last.clone() };
        (Box::pin(Repoll::new(future)), seen, last)
    }

    #[test]
    fn a_wake_up_during_its_own_poll_polls_again_instead_of_waking_the_task() {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(task.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let (mut future, seen, last) = nagging(10, 1);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(seen.load(Ordering::SeqCst), 2, "polled again at once");
        assert_eq!(task.0.load(Ordering::SeqCst), 0, "the task was not woken");
        // A wake-up from elsewhere, once the poll is over, reaches the task.
        last.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_yields() {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(task.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let (mut future, seen, _last) = nagging(100, 100);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(seen.load(Ordering::SeqCst), Repoll::<Nagging>::AGAIN);
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the wake-up is passed on after a few polls");
        // And it completes like the future it wraps.
        let (mut future, _, _) = nagging(2, 1);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(future.as_mut().poll(&mut cx).is_ready());
    }
}
