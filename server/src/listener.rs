//! The connection limits as a listener, for apps that keep `axum::serve`: [`LimitedListener`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::Config;
use crate::hand_off::Rewind;
use crate::limits::{Admitted, Counters, Refusing, admit, refuse};
use crate::{ServerStatsHandle, accept_error};

/// A `TcpListener` with [`Server`](crate::Server)'s connection limits, for `axum::serve`:
/// connections bounded in total ([`max_connections`](LimitedListener::max_connections), `503`)
/// and per client address ([`max_connections_per_ip`](LimitedListener::max_connections_per_ip),
/// `429`), each refusal a JSON body with `Retry-After`, and the
/// [`stall_timeout`](crate::stall_timeout) on every connection; the same defaults as `Server`.
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await?;
/// let limited = tidings_server::LimitedListener::new(listener).max_connections_per_ip(256);
/// axum::serve(limited, app).await
/// # }
/// ```
///
/// What a listener cannot give: the header timeout and size limit, the `Host` rule, reverse
/// proxies (a listener sees no request), the direct path's memory per stream, and a shutdown
/// that closes connections after a grace period. For those, serve with `Server`.
#[derive(Debug)]
pub struct LimitedListener {
    listener: TcpListener,
    config: Arc<Config>,
    stats: Arc<Counters>,
}

impl LimitedListener {
    /// `listener` with the default limits (those of [`Server::new`](crate::Server::new)).
    pub fn new(listener: TcpListener) -> LimitedListener {
        LimitedListener { listener, config: Arc::new(Config::default()), stats: Arc::default() }
    }

    /// Connections open at once (default: 90 % of the open-file limit); one more is answered
    /// `503` with `Retry-After` and closed.
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> LimitedListener {
        Arc::make_mut(&mut self.config).max_connections = max;
        self
    }

    /// Connections open at once from one client address (default 1024; IPv6 per /64); one
    /// more is answered `429` with `Retry-After` and closed.
    #[must_use]
    pub fn max_connections_per_ip(mut self, max: usize) -> LimitedListener {
        Arc::make_mut(&mut self.config).max_connections_per_ip = max;
        self
    }

    /// Closes a connection whose written data stays unacknowledged this long (default 30 s;
    /// `None`: the system's default). Linux only.
    #[must_use]
    pub fn stall_timeout(mut self, timeout: Option<Duration>) -> LimitedListener {
        Arc::make_mut(&mut self.config).stall_timeout = timeout;
        self
    }

    /// The `Retry-After` of a refusal (default 5 s).
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> LimitedListener {
        Arc::make_mut(&mut self.config).retry_after = after;
        self
    }

    /// A handle on the counters (open, accepted, refused), to read them while it serves.
    pub fn stats(&self) -> ServerStatsHandle {
        ServerStatsHandle(self.stats.clone())
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        loop {
            let (mut stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_error(err).await;
                    continue;
                }
            };
            match admit(&self.stats, &self.config, Some(peer.ip())) {
                Ok(admitted) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Some(timeout) = self.config.stall_timeout {
                        crate::stall_timeout(timeout)(&mut stream);
                    }
                    return (LimitedStream { stream, _admitted: admitted }, peer);
                }
                Err(status) => {
                    refuse(Rewind::uncounted(Vec::new(), stream), status, &self.stats, &self.config, Refusing::Http);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection a [`LimitedListener`] accepted: a `TcpStream`, counted until it is dropped.
pub struct LimitedStream {
    stream: TcpStream,
    _admitted: Admitted,
}

impl std::fmt::Debug for LimitedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedStream").field("stream", &self.stream).finish_non_exhaustive()
    }
}

impl LimitedStream {
    /// The socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
