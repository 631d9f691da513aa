//! The direct path: the answers the server writes itself to a bodiless `GET` (a stream, or
//! an answer with its length or chunked), without hyper's per-connection buffers.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};

use crate::connection::Shared;
use crate::head::says_close;
use crate::limits::{ClientSlot, Origin, call_router};
use http::{Request, StatusCode};
use tokio::net::TcpStream;

/// Writes all of `bytes` to a socket shared with readers (`&TcpStream` is not `AsyncWrite`).
pub(crate) async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
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
pub(crate) async fn answer(
    shared: &Shared,
    origin: Origin,
    request: Request<axum::body::Body>,
    stream: &TcpStream,
) -> Option<(axum::response::Response, Option<ClientSlot>, bool)> {
    let mut call = pin!(call_router(&shared.router, request, origin, &shared.stats, &shared.config));
    let mut peeked = false;
    loop {
        let mut byte = [0u8; 1];
        tokio::select! {
            (response, slot) = call.as_mut() => return Some((response, slot, peeked)),
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
pub(crate) fn answer_settled<'a>(
    shared: &'a Shared,
    origin: Origin,
    request: Request<axum::body::Body>,
    stream: &'a TcpStream,
) -> impl Future<Output = Option<Answered>> + Send + 'a {
    use http_body::Body as _;
    // Boxed here, so that neither the request nor the router's future is kept in this future
    // while the body is made.
    let answering = Box::pin(answer(shared, origin, request, stream));
    async move {
        let settling = {
            let (response, slot, peeked) = answering.await?;
            if is_event_stream(&response) {
                return Some(Answered::Stream(response, slot));
            }
            let (parts, body) = response.into_parts();
            let answer = Rendered::new(&parts, body, slot);
            if !has_body_status(answer.status) || answer.body.size_hint().exact().is_some() {
                return Some(Answered::Whole(answer));
            }
            settle(stream, answer, peeked)
        };
        settling.await.map(Answered::Whole)
    }
}

/// What the router answered to a bodiless `GET`.
pub(crate) enum Answered {
    /// A stream (`200 text/event-stream`), and the client's count for as long as it lasts.
    Stream(axum::response::Response, Option<ClientSlot>),
    /// Anything else, to write whole.
    Whole(Rendered),
}

/// An answer whose status line and headers are already rendered (a header map is several
/// times their size, and a poll may keep its answer a while before the body is ready).
pub(crate) struct Rendered {
    /// The client's count, for a request a trusted proxy forwarded: kept until it is written.
    pub(crate) slot: Option<ClientSlot>,
    pub(crate) status: StatusCode,
    /// The handler's answer carries `Connection: close`: the connection ends after it.
    pub(crate) close: bool,
    /// The status line and the handler's headers, without those that frame the message.
    pub(crate) head: Vec<u8>,
    pub(crate) body: axum::body::Body,
}

impl Rendered {
    fn new(parts: &http::response::Parts, body: axum::body::Body, slot: Option<ClientSlot>) -> Rendered {
        let mut head = Vec::with_capacity(128);
        put_status_and_headers(&mut head, parts);
        head.shrink_to_fit();
        let close = says_close(parts.headers.get_all(http::header::CONNECTION).iter().map(http::HeaderValue::as_bytes));
        Rendered { slot, status: parts.status, close, head, body }
    }
}

pub(crate) fn has_body_status(status: StatusCode) -> bool {
    !status.is_informational() && status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED
}

/// Waits for the first frame of `response`'s body, watching the socket meanwhile as [`answer`]
/// does (unless bytes came already, `peeked`): `None` if the client hangs up first. Returns the
/// answer with that frame put back in front of the rest of its body (whose length may be known
/// by then).
pub(crate) fn settle(
    stream: &TcpStream,
    answer: Rendered,
    mut peeked: bool,
) -> impl Future<Output = Option<Rendered>> + Send + '_ {
    use http_body::Body as _;
    let Rendered { slot, status, close, head, mut body } = answer;
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
        Some(Rendered { slot, status, close, head, body: axum::body::Body::new(Prefixed { first, rest: body }) })
    }
}

/// A body whose first frame was already taken (`None`: the body had ended).
pub(crate) struct Prefixed {
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
pub(crate) enum Framing {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Nothing: no body (`204`, `304`), or one that ends with the connection (a stream).
    None,
}

/// Puts a response head into `out`: [`put_status_and_headers`], then [`put_framing`].
pub(crate) fn put_head(out: &mut Vec<u8>, parts: &http::response::Parts, framing: Framing, keep_alive: bool) {
    put_status_and_headers(out, parts);
    put_framing(out, framing, keep_alive);
}

/// Puts the status line and the handler's headers but those that frame the message (this
/// server decides them) into `out`.
pub(crate) fn put_status_and_headers(out: &mut Vec<u8>, parts: &http::response::Parts) {
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
pub(crate) fn put_framing(out: &mut Vec<u8>, framing: Framing, keep_alive: bool) {
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
pub(crate) async fn write_answer(stream: &TcpStream, answer: Rendered, keep_alive: bool) -> io::Result<()> {
    use http_body::Body as _;
    const GATHER: usize = 16 * 1024;
    let Rendered { slot, status, head, mut body, .. } = answer;
    let _slot = slot; // until the answer is written
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
        let Ok(data) = frame.into_data() else {
            continue;
        }; // trailers are not sent
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

pub(crate) fn is_event_stream(response: &axum::response::Response) -> bool {
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
pub(crate) fn stream_to_socket(
    stream: TcpStream,
    response: axum::response::Response,
) -> impl Future<Output = ()> + Send {
    let (parts, body) = response.into_parts();
    let mut head = Vec::with_capacity(256);
    put_head(&mut head, &parts, Framing::None, false);
    write_stream(stream, head, body)
}

/// What the stream's next wake-up brought.
pub(crate) enum StreamStep {
    Write(axum::body::Bytes),
    Skip,
    End,
    Gone,
}

// Not an `async fn`: that would keep each argument twice in the future (as argument and as
// local); the `async move` block keeps the one copy it captured.
pub(crate) fn write_stream(
    mut stream: TcpStream,
    head: Vec<u8>,
    mut body: axum::body::Body,
) -> impl Future<Output = ()> + Send {
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
