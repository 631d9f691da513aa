//! The hand-off to hyper: a connection whose request the direct path does not own is served
//! by hyper from the bytes read so far: HTTP/1.1 with upgrades, and HTTP/2.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::response::Response;
use tokio::sync::Notify;

use crate::Config;
use crate::limits::Admitted;
use crate::connection::Shared;
use crate::error::refusal;
use crate::head::{hard_header_cap, head_len, request_host};
use crate::host::HostError;
use crate::limits::{ClientSlot, Counters, Origin, call_router, hold};
use crate::repoll::Repoll;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// hyper's HTTP/1.1 connection builder, configured from `config`.
pub(crate) fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    let hard_cap = hard_header_cap(config);
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(hard_cap)
        .max_buf_size(hard_cap.max(417_792) + 8192);
    builder
}

/// hyper's HTTP/2 connection builder, configured from `config`: as `axum::serve`'s (extended
/// CONNECT, RFC 8441, for WebSockets over HTTP/2), with a `PING` every 20 s that the client
/// must answer within the header timeout (a peer gone without a word is found).
fn http2_builder<E>(config: &Config, executor: E) -> http2::Builder<E> {
    let mut builder = http2::Builder::new(executor);
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_header_cap(config)).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_streams_per_connection)
        .enable_connect_protocol()
        // What one stream may have queued for a client that does not read (400 KiB by default).
        .max_send_buf_size(HTTP2_SEND_BUFFER)
        .keep_alive_interval(HTTP2_PING_EVERY)
        .keep_alive_timeout(config.header_timeout);
    builder
}

/// The most one HTTP/2 stream queues for its client, in bytes.
const HTTP2_SEND_BUFFER: usize = 64 * 1024;

/// How often an HTTP/2 connection is pinged.
const HTTP2_PING_EVERY: Duration = Duration::from_secs(20);

/// The requests in progress on one HTTP/2 connection: a connection without any for the header
/// timeout is closed (`GOAWAY`), as an idle HTTP/1.1 keep-alive connection is.
#[derive(Default)]
struct Activity {
    active: AtomicUsize,
    changed: Notify,
}

/// One request in progress on an HTTP/2 connection, until its answer's body is dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.active.fetch_add(1, Ordering::AcqRel);
        activity.changed.notify_waiters();
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// Resolves once `activity` has had no request in progress for `timeout`.
async fn idle_for(activity: &Activity, timeout: Duration) {
    loop {
        let mut changed = pin!(activity.changed.notified());
        changed.as_mut().enable();
        if activity.active.load(Ordering::Acquire) == 0 {
            tokio::select! {
                () = tokio::time::sleep(timeout) => return,
                () = changed => {}
            }
        } else {
            changed.await;
        }
    }
}

/// A builder for a connection whose protocol is not known yet (one being refused): HTTP/1.1,
/// or HTTP/2 if it starts with its preface.
pub(crate) fn any_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).max_buf_size(hard_header_cap(config) + 8192);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_header_cap(config)).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_streams_per_connection)
        .enable_connect_protocol();
    builder
}

/// Whether a connection's first bytes are HTTP/2's preface (RFC 9113 §3.4), as far as they go.
pub(crate) fn is_http2_preface(read: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    !read.is_empty()
        && read.len().min(PREFACE.len()) >= 12
        && PREFACE.starts_with(&read[..read.len().min(PREFACE.len())])
}

/// Runs what hyper spawns for one connection (each HTTP/2 stream's task) until it is done or the
/// connection is gone, whichever is first: a stream never outlives its connection, so when the
/// grace period's end drops the connection, its streams end too; [`Counters::streams`] counts
/// them, so that `serve` returns only once they have.
#[derive(Clone)]
pub(crate) struct ConnectionExecutor {
    gone: watch::Receiver<()>,
    stats: Arc<Counters>,
}

impl ConnectionExecutor {
    /// An executor, and the guard whose drop (with the connection) ends its tasks.
    pub(crate) fn new(stats: Arc<Counters>) -> (ConnectionExecutor, watch::Sender<()>) {
        let (alive, gone) = watch::channel(());
        (ConnectionExecutor { gone, stats }, alive)
    }
}

/// One running stream task, counted in [`Counters::streams`].
struct StreamTask(Arc<Counters>);

impl Drop for StreamTask {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl<F> hyper::rt::Executor<F> for ConnectionExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        let mut gone = self.gone.clone();
        self.stats.streams.fetch_add(1, Ordering::AcqRel);
        let counted = StreamTask(self.stats.clone());
        tokio::spawn(async move {
            let _counted = counted;
            tokio::select! {
                _ = task => {}
                // Resolves with an error once the sender is dropped; nothing is ever sent.
                _ = gone.changed() => {}
            }
        });
    }
}

/// Serves the rest of a connection with hyper, in HTTP/2 if `http2`: `io` is the socket (with the
/// bytes read so far in front, [`Rewind`]), or a TLS session over it.
pub(crate) async fn serve_with_hyper<I>(
    io: I,
    http2: bool,
    origin: Origin,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
    upgraded: UpgradedSlot,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_header_bytes = shared.config.max_header_bytes;
    let config = shared.clone();
    let activity = http2.then(Arc::<Activity>::default);
    let service_activity = activity.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let too_large = head_len(&request) > max_header_bytes;
        let host = request_host(&request);
        let shared = shared.clone();
        let busy = service_activity.as_ref().map(Busy::new);
        let upgraded = upgraded.clone();
        // Only an HTTP/1.1 request that asks for an upgrade can hand its socket on.
        let upgrading = !http2 && request.headers().contains_key(http::header::UPGRADE);
        async move {
            let (response, slot) = answer(request, too_large, host, &shared, origin, max_header_bytes).await;
            let response = match slot {
                // The socket goes on after the answer: the client's count goes with it.
                Some(slot) if upgrading && response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    *upgraded.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(slot);
                    response
                }
                Some(slot) => hold(response, slot),
                None => response,
            };
            Ok::<_, Infallible>(match busy {
                Some(busy) => hold(response, busy),
                None => response,
            })
        }
    });
    let io = TokioIo::new(io);
    // hyper wakes its own task each time it hands a request body to the handler: `Repoll`
    // polls it again at once rather than letting that wake-up send the task to the back of the
    // runtime's queue (behind every subscriber a publish just woke: 100-200 ms under fan-out).
    if let Some(activity) = activity {
        let (executor, _alive) = ConnectionExecutor::new(config.stats.clone());
        let connection = http2_builder(&config.config, executor).serve_connection(io, service);
        let idle = idle_for(&activity, config.config.header_timeout);
        drive(pin!(Repoll::new(connection)), stopped, idle, config.config.header_timeout).await;
    } else {
        // With upgrades, as `axum::serve`: a `101 Switching Protocols` hands the connection to
        // the handler (WebSocket). An idle connection is closed by hyper's header timeout.
        let connection = http1_builder(&config.config).serve_connection(io, service).with_upgrades();
        drive(pin!(Repoll::new(connection)), stopped, std::future::pending(), Duration::ZERO).await;
    }
}

/// The answer to one request hyper read: a `431` or a `400` for a head over the limit or one
/// that breaks the `Host` rule, else the router's, with the client's slot to keep while it is
/// written (from a trusted proxy).
async fn answer(
    request: Request<Incoming>,
    too_large: bool,
    host: Result<(), HostError>,
    shared: &Shared,
    origin: Origin,
    max_header_bytes: usize,
) -> (Response, Option<ClientSlot>) {
    if too_large {
        shared.stats.header_too_large.fetch_add(1, Ordering::Relaxed);
        let message = format!("request headers are over {max_header_bytes} bytes");
        return (refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &message, None), None);
    }
    if let Err(err) = host {
        // Its body (if any) is not read: the connection cannot carry another request.
        let mut response = refusal(StatusCode::BAD_REQUEST, &err.to_string(), None);
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        return (response, None);
    }
    call_router(&shared.router, request, origin, &shared.stats, &shared.config).await
}

/// A hyper connection that can be asked to finish what it is doing and close.
trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> Graceful for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Runs `connection` until it ends; once `stopped`, or once `idle` resolves, asks it to finish
/// and close. A connection asked to close for being idle that is still open `linger` later
/// (a client that never finished HTTP/2's preface, or does not answer the `GOAWAY`'s `PING`)
/// is dropped.
async fn drive<C, T, E>(
    mut connection: Pin<&mut Repoll<C>>,
    mut stopped: watch::Receiver<bool>,
    idle: impl Future<Output = ()>,
    linger: Duration,
) where
    C: Graceful<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut idle = pin!(idle);
    let mut stopping = false;
    let mut dropping = pin!(tokio::time::sleep(Duration::MAX));
    let mut idle_closed = false;
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
            () = idle.as_mut(), if !stopping => {
                stopping = true;
                idle_closed = true;
                connection.as_mut().inner().graceful_shutdown();
                dropping.as_mut().reset(tokio::time::Instant::now() + linger);
            }
            () = dropping.as_mut(), if idle_closed => {
                tracing::debug!("an idle connection did not close: dropped");
                break;
            }
        }
    }
}

/// A socket whose first bytes were already read: hyper reads them again, then the socket.
pub(crate) struct Rewind {
    pub(crate) prefix: Vec<u8>,
    pub(crate) stream: TcpStream,
    /// The connection's count, when the socket carries it: then it counts for as long as the
    /// socket is open, after a `101 Switching Protocols` too (hyper hands the socket, this
    /// with it, to the handler).
    pub(crate) _admitted: Option<Admitted>,
    /// The per-client slot of a request answered `101` from a trusted proxy (counted per
    /// request, as `X-Forwarded-For` names its client): kept with the socket, which the
    /// request's handler keeps from then on.
    pub(crate) _upgraded: Option<UpgradedSlot>,
}

impl Rewind {
    /// `stream` with `prefix` read from it already, counted by nothing (a connection refused).
    pub(crate) fn uncounted(prefix: Vec<u8>, stream: TcpStream) -> Rewind {
        Rewind { prefix, stream, _admitted: None, _upgraded: None }
    }
}

/// Where the answer to an upgrade leaves its client's slot, for as long as the socket lives.
pub(crate) type UpgradedSlot = Arc<std::sync::Mutex<Option<ClientSlot>>>;

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
