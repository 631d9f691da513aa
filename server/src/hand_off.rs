//! The hand-off to hyper: a connection whose request the direct path does not own is served
//! by hyper from the bytes read so far (HTTP/1.1 with upgrades).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Config;
use crate::error::refusal;
use crate::head::{hard_header_cap, head_len, request_host};
use crate::limits::Counters;
use crate::repoll::Repoll;
use axum::Router;
use axum::extract::ConnectInfo;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub(crate) fn builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    let hard_cap = hard_header_cap(config);
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(hard_cap)
        .max_buf_size(hard_cap.max(417_792) + 8192);
    builder
}

/// Serves the rest of a connection with hyper (the bytes already read, then the socket).
pub(crate) async fn serve_with_hyper(
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
                return Ok::<_, Infallible>(refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &message, None));
            }
            if let Err(err) = host {
                // Its body (if any) is not read: the connection cannot carry another request.
                let mut response = refusal(StatusCode::BAD_REQUEST, &err.to_string(), None);
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
