//! The hand-off to hyper: a connection whose request the direct path does not own is served
//! by hyper from the bytes read so far: HTTP/1.1 with upgrades, and HTTP/2.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Config;
use crate::connection::Shared;
use crate::error::refusal;
use crate::head::{hard_header_cap, head_len, request_host};
use crate::limits::{Origin, call_router_held};
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

/// hyper's HTTP/2 connection builder, configured from `config`.
fn http2_builder<E>(config: &Config, executor: E) -> http2::Builder<E> {
    let mut builder = http2::Builder::new(executor);
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_header_cap(config)).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_streams_per_connection);
    builder
}

/// A builder for a connection whose protocol is not known yet (one being refused): HTTP/1.1,
/// or HTTP/2 if it starts with its preface.
pub(crate) fn any_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).max_buf_size(hard_header_cap(config) + 8192);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_header_cap(config)).unwrap_or(u32::MAX));
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
/// connection is gone, whichever is first: a stream never outlives its connection, so the grace
/// period's end or a client's `GOAWAY` ends them all.
#[derive(Clone)]
pub(crate) struct ConnectionExecutor {
    gone: watch::Receiver<()>,
}

impl ConnectionExecutor {
    /// An executor, and the guard whose drop (with the connection) ends its tasks.
    pub(crate) fn new() -> (ConnectionExecutor, watch::Sender<()>) {
        let (alive, gone) = watch::channel(());
        (ConnectionExecutor { gone }, alive)
    }
}

impl<F> hyper::rt::Executor<F> for ConnectionExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        let mut gone = self.gone.clone();
        tokio::spawn(async move {
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
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_header_bytes = shared.config.max_header_bytes;
    let config = shared.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let too_large = head_len(&request) > max_header_bytes;
        let host = request_host(&request);
        let shared = shared.clone();
        async move {
            if too_large {
                shared.stats.header_too_large.fetch_add(1, Ordering::Relaxed);
                let message = format!("request headers are over {max_header_bytes} bytes");
                return Ok::<_, Infallible>(refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &message, None));
            }
            if let Err(err) = host {
                // Its body (if any) is not read: the connection cannot carry another request.
                let mut response = refusal(StatusCode::BAD_REQUEST, &err.to_string(), None);
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                return Ok(response);
            }
            Ok(call_router_held(&shared.router, request, origin, &shared.stats, &shared.config).await)
        }
    });
    let io = TokioIo::new(io);
    // hyper wakes its own task each time it hands a request body to the handler: `Repoll`
    // polls it again at once rather than letting that wake-up send the task to the back of the
    // runtime's queue (behind every subscriber a publish just woke: 100-200 ms under fan-out).
    if http2 {
        let (executor, _alive) = ConnectionExecutor::new();
        let connection = http2_builder(&config.config, executor).serve_connection(io, service);
        drive(pin!(Repoll::new(connection)), stopped).await;
    } else {
        // With upgrades, as `axum::serve`: a `101 Switching Protocols` hands the connection to
        // the handler (WebSocket).
        let connection = http1_builder(&config.config).serve_connection(io, service).with_upgrades();
        drive(pin!(Repoll::new(connection)), stopped).await;
    }
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

/// Runs `connection` until it ends; once `stopped`, asks it to finish and close.
async fn drive<C, T, E>(mut connection: Pin<&mut Repoll<C>>, mut stopped: watch::Receiver<bool>)
where
    C: Graceful<Output = Result<T, E>>,
    E: std::fmt::Display,
{
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

/// A socket whose first bytes were already read: hyper reads them again, then the socket.
pub(crate) struct Rewind {
    pub(crate) prefix: Vec<u8>,
    pub(crate) stream: TcpStream,
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
