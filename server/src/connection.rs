//! One connection: reads each request head and sends the request down the direct path or hands
//! the connection to hyper.

use std::future::Future;
use std::sync::Arc;

use crate::Config;
use crate::direct::{Answered, answer_settled, stream_to_socket, write_answer};
use crate::hand_off::{Rewind, UpgradedSlot, is_http2_preface, serve_with_hyper};
use crate::head::{bodiless_get, read_head};
use crate::limits::{Admitted, ClientSlot, Counters, Origin, Refusing, claim, refuse};
use crate::proxy::read_proxy_header;
use axum::Router;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What every connection of a server shares: one `Arc` per connection.
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) config: Config,
    pub(crate) stats: Arc<Counters>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Shared {
    /// What a connection refused before anything was read from it starts with (or, once its
    /// PROXY header is read, `proxy_header_read`).
    pub(crate) fn refusing(&self, proxy_header_read: bool) -> Refusing {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return Refusing::Tls;
        }
        if self.config.proxy_protocol && !proxy_header_read { Refusing::AfterProxyHeader } else { Refusing::Http }
    }
}

// Not an `async fn`: that would keep each argument twice in the task (as argument and as
// local); the `async move` block keeps the one copy it captured.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve_connection(
    mut stream: TcpStream,
    mut origin: Origin,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    mut admitted: Admitted,
) -> impl Future<Output = ()> + Send {
    async move {
        let config = &shared.config;
        if let Some(timeout) = config.stall_timeout {
            crate::stall_timeout(timeout)(&mut stream);
        }
        // What this loop writes is already whole (a burst of events, an answer): Nagle's
        // algorithm would only hold it back until the previous write is acknowledged (up to the
        // peer's delayed-ACK 40 ms).
        let _ = stream.set_nodelay(true);
        let mut read = Vec::new();
        if config.proxy_protocol {
            // The proxy's header first (within the header timeout): the connection is the
            // client's it names, and counted under that address.
            let header = Box::pin(async {
                tokio::select! {
                    header = tokio::time::timeout(config.header_timeout, read_proxy_header(&mut stream)) => Some(header),
                    _ = stopped.wait_for(|stop| *stop) => None,
                }
            })
            .await;
            let Some(Ok(Ok((source, rest)))) = header else {
                tracing::debug!(peer = %origin.peer, "no valid PROXY protocol header: closed");
                return;
            };
            if let Some(source) = source {
                origin.peer = source;
            }
            match claim(&shared.stats, config, origin.peer.ip()) {
                Ok(slot) => admitted.slot = Some(slot),
                Err(status) => {
                    drop(admitted);
                    refuse(Rewind::uncounted(rest, stream), status, &shared.stats, config, shared.refusing(true));
                    return;
                }
            }
            read = rest;
        }
        #[cfg(feature = "tls")]
        if let Some(acceptor) = shared.tls.clone() {
            // Boxed: a TLS session is several KiB, and plain connections should not carry room
            // for one.
            // The count goes with the socket (an upgraded connection counts until it closes).
            let upgraded = UpgradedSlot::default();
            let io = Rewind { prefix: read, stream, _admitted: Some(admitted), _upgraded: Some(upgraded.clone()) };
            Box::pin(serve_tls(acceptor, io, origin, shared, stopped, upgraded)).await;
            return;
        }
        // Request heads are read here. A `GET` without a body is answered here too: a stream
        // (SSE) is written straight to the socket; any other answer is written whole (with its
        // `Content-Length`, or chunked if its length is not known once its first chunk is), after
        // which the connection waits for its next request, all without the HTTP machinery's
        // per-connection buffers. Anything else goes to hyper, which reads the same bytes again,
        // and keeps the connection from then on.
        // Every await below that holds much state is boxed: a task is as large as its largest
        // state, and an idle stream or a waiting poll should not carry room for the others.
        let mut answered = false;
        let head = loop {
            let read = Box::pin(async {
                let read = std::mem::take(&mut read);
                tokio::select! {
                    read = tokio::time::timeout(config.header_timeout, read_head(&mut stream, config, read)) => Some(read),
                    _ = stopped.wait_for(|stop| *stop) => None, // idle between requests: close
                }
            })
            .await;
            let head: Vec<u8> = match read {
                Some(Ok(Ok(head))) => head,
                // Shutting down, closed, failed, or too slow (slow-loris): cut off.
                None | Some(Ok(Err(_)) | Err(_)) => return,
            };
            match Box::pin(one_request(&stream, head, &shared, origin, &stopped)).await {
                Outcome::Answered => answered = true,
                Outcome::Close => return,
                Outcome::Stream(response, slot) => {
                    // The connection ends with the stream: its count can hold the client's.
                    if slot.is_some() {
                        admitted.slot = slot;
                    }
                    Box::pin(stream_to_socket(stream, response)).await;
                    drop(admitted);
                    return;
                }
                Outcome::Hyper(head) => break head,
            }
        };
        // HTTP/2's preface counts only as a connection's first bytes (RFC 9113 §3.4).
        let http2 = !answered && is_http2_preface(&head);
        // The count goes with the socket: an upgraded connection (WebSocket) counts toward the
        // limits until it closes, as every other connection does.
        let upgraded = UpgradedSlot::default();
        let io = Rewind { prefix: head, stream, _admitted: Some(admitted), _upgraded: Some(upgraded.clone()) };
        Box::pin(serve_with_hyper(io, http2, origin, shared, stopped, upgraded)).await;
    }
}

/// Completes the TLS handshake (within the header timeout) and serves the connection with
/// hyper, in the protocol ALPN chose.
#[cfg(feature = "tls")]
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    io: Rewind,
    origin: Origin,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    upgraded: UpgradedSlot,
) {
    let handshake = tokio::select! {
        tls = tokio::time::timeout(shared.config.header_timeout, acceptor.accept(io)) => tls,
        _ = stopped.wait_for(|stop| *stop) => return,
    };
    let Ok(Ok(tls)) = handshake else { return };
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_with_hyper(tls, http2, origin, shared, stopped, upgraded).await;
}

/// What became of one request read by [`serve_connection`].
pub(crate) enum Outcome {
    /// Answered whole; the connection waits for the next request.
    Answered,
    /// Closed (the client went away, a write failed, or the answer said so).
    Close,
    /// A stream, to write until it ends, and the client's count for as long (a request a
    /// trusted proxy forwarded).
    Stream(axum::response::Response, Option<ClientSlot>),
    /// For hyper: the bytes read so far (a request that is not a bodiless `GET`).
    Hyper(Vec<u8>),
}

/// Answers the request in `head` if it is a bodiless `GET` (see [`serve_connection`]).
// Not an `async fn` (arguments kept twice), and the answer is moved into its writer inside a
// block: a local moved from stays in a future's layout until its scope ends. A pipelined
// request that came meanwhile is read by the next turn of the loop.
#[allow(clippy::manual_async_fn)]
pub(crate) fn one_request<'a>(
    stream: &'a TcpStream,
    head: Vec<u8>,
    shared: &'a Shared,
    origin: Origin,
    stopped: &'a watch::Receiver<bool>,
) -> impl Future<Output = Outcome> + Send + 'a {
    // Parsed and handed to the router's (boxed) future before this future starts: it keeps
    // neither the request nor its head.
    let start = match bodiless_get(&head, shared.config.max_header_bytes) {
        None => Err(head),
        Some((request, keep_alive)) => Ok((Box::pin(answer_settled(shared, origin, request, stream)), keep_alive)),
    };
    async move {
        let (answering, keep_alive) = match start {
            Ok(answering) => answering,
            Err(head) => return Outcome::Hyper(head),
        };
        let (writing, keep_alive) = {
            let answer = match answering.await {
                Some(Answered::Whole(answer)) => answer,
                Some(Answered::Stream(response, slot)) => return Outcome::Stream(response, slot),
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
