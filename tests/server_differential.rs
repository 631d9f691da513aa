//! `tidings::http::Server` against `axum::serve`, the server it stands in for: the same router,
//! the same requests, compared on what a client observes (status, headers but `date`, body
//! bytes, when the first bytes come, whether the connection stays open). Covered: upgrades
//! (WebSocket), a streaming body that is not SSE, SSE, request bodies large, chunked and behind
//! `Expect: 100-continue`, a handler's `Connection: close`, HEAD, 204 and 304, HTTP/1.0,
//! pipelining, errors (malformed requests, 404, 405, 500), and HTTP/2 with prior knowledge.
//! The differences that remain are in `docs/deployment.md` ("Differences from axum::serve"),
//! each with its test here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An NDJSON route: a line at once, then one every 200 ms, four in all.
async fn ndjson() -> Response {
    let lines = futures_util::stream::unfold(0u32, |n| async move {
        if n == 4 {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some((Ok::<_, std::convert::Infallible>(format!("{{\"line\":{n}}}\n")), n + 1))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}

/// An SSE route of two events 100 ms apart, then the end.
async fn sse() -> Response {
    let events = futures_util::stream::unfold(0u32, |n| async move {
        if n == 2 {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some((Ok::<_, std::convert::Infallible>(format!("id: {n}\ndata: event {n}\n\n")), n + 1))
    });
    ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(events)).into_response()
}

/// Reads the whole request body (axum's default limit: 2 MiB) and answers its length and a
/// checksum.
async fn upload(body: axum::body::Bytes) -> String {
    let sum = body.iter().fold(0u64, |sum, &b| sum.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("{} bytes, sum {sum}", body.len())
}

fn router() -> Router {
    Router::new()
        .route("/ndjson", get(ndjson))
        .route("/sse", get(sse))
        .route("/upload", axum::routing::post(upload))
        .route("/fails", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "it failed") }))
        .route(
            "/close",
            get(|| async { ([(header::CONNECTION, HeaderValue::from_static("close"))], "bye").into_response() }),
        )
        .route("/no-content", get(|| async { StatusCode::NO_CONTENT }))
        .route("/not-modified", get(|| async { StatusCode::NOT_MODIFIED }))
        .route("/page", get(|| async { "a page" }))
        .route(
            "/echo",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        let reply = match message {
                            Message::Text(text) => Message::Text(format!("echo: {}", text.as_str()).into()),
                            Message::Binary(bytes) => Message::Binary(bytes),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if socket.send(reply).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        )
}

/// The two servers, each on its own loopback port, serving the same router.
async fn both() -> [(&'static str, SocketAddr); 2] {
    let axum_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let axum_addr = axum_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(axum_listener, router()).await.unwrap() });
    let ours_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours_addr = ours_listener.local_addr().unwrap();
    tokio::spawn(tidings::http::Server::new(router()).serve(ours_listener, std::future::pending()));
    [("axum::serve", axum_addr), ("tidings::http::Server", ours_addr)]
}

/// What a client saw of one answer: the head (status line and headers, lowercased names, in
/// order, without `date`), the body as it came with the time each piece came, and whether the
/// connection was closed after it.
#[derive(Debug)]
struct Seen {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Milliseconds from the request to each read that brought body bytes.
    arrivals: Vec<u128>,
    closed_after: bool,
}

/// Sends `request` on a new connection and reads one answer to its end (by its framing), then
/// whether the server closes the connection (a read of 0 within 500 ms after the answer).
async fn exchange(addr: SocketAddr, request: &str) -> Seen {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(got[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .filter(|(name, _)| name != "date")
        .collect();
    let mut raw = got[head_end..].to_vec();
    let mut arrivals = Vec::new();
    if !raw.is_empty() {
        arrivals.push(started.elapsed().as_millis());
    }
    let is_head = request.starts_with("HEAD ");
    let no_body = is_head || status_line.contains(" 204 ") || status_line.contains(" 304 ");
    let length = headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.parse::<usize>().unwrap());
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let complete = |raw: &[u8]| {
        if no_body {
            true
        } else if let Some(length) = length {
            raw.len() >= length
        } else if chunked {
            raw.ends_with(b"0\r\n\r\n")
        } else {
            false
        }
    };
    let mut closed_early = false;
    while !complete(&raw) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            closed_early = true;
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        arrivals.push(started.elapsed().as_millis());
    }
    let body = if chunked { dechunk(&raw) } else { raw };
    let closed_after = closed_early
        || matches!(tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)));
    Seen { status_line, headers, body, arrivals, closed_after }
}

fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().split(';').next().unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// The headers both servers must agree on: all of them, but those listed in `docs` as framing
/// choices (`content-length` against `transfer-encoding` for a body made over time).
fn comparable(seen: &Seen) -> Vec<(String, String)> {
    seen.headers.iter().filter(|(n, _)| n != "transfer-encoding" && n != "content-length").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_that_is_not_sse_arrives_as_it_is_made_on_both() {
    for (name, addr) in both().await {
        let seen = exchange(addr, &get_request("/ndjson")).await;
        assert!(seen.status_line.starts_with("HTTP/1.1 200"), "{name}: {seen:?}");
        assert_eq!(String::from_utf8_lossy(&seen.body), "{\"line\":0}\n{\"line\":1}\n{\"line\":2}\n{\"line\":3}\n", "{name}");
        // The first line at once, then the others as they are made: the reads are spread
        // over the 600 ms the route takes, not one read at its end.
        assert!(seen.arrivals[0] < 100, "{name}: first bytes after {} ms", seen.arrivals[0]);
        assert!(seen.arrivals.len() >= 4, "{name}: the body came in {} reads: {:?}", seen.arrivals.len(), seen.arrivals);
        assert!(!seen.closed_after, "{name}: the connection stays open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_for_pages_closes_and_bodiless_statuses() {
    let [(_, axum_addr), (_, ours_addr)] = both().await;
    for request in [
        get_request("/page"),
        get_request("/close"),
        get_request("/no-content"),
        get_request("/not-modified"),
        "HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        get_request("/missing"),
        "GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
    ] {
        let reference = exchange(axum_addr, &request).await;
        let ours = exchange(ours_addr, &request).await;
        let shown = request.lines().next().unwrap();
        assert_eq!(ours.status_line, reference.status_line, "{shown}");
        assert_eq!(comparable(&ours), comparable(&reference), "{shown}");
        assert_eq!(ours.body, reference.body, "{shown}");
        assert_eq!(ours.closed_after, reference.closed_after, "{shown}: closed after the answer");
    }
}

/// A WebSocket echo route, answered through each server to a WebSocket client library that is
/// not ours (tokio-tungstenite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_works_through_both() {
    for (name, addr) in both().await {
        let (mut socket, response) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/echo")).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS, "{name}");
        for text in ["one", "two"] {
            socket.send(tokio_tungstenite::tungstenite::Message::text(text)).await.unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {text}"), "{name}");
        }
        socket.close(None).await.unwrap();
    }
}

/// Sends `raw` (one or more requests, written at once) and reads until the server closes:
/// everything the client saw, with `date` lines taken out.
async fn conversation(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{addr} did not close after {:?}: {:?}", String::from_utf8_lossy(raw), String::from_utf8_lossy(&got)))
        .unwrap();
    String::from_utf8_lossy(&got)
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_for_pipelined_requests_http_1_0_and_malformed_ones() {
    let [(_, axum_addr), (_, ours_addr)] = both().await;
    for raw in [
        // Three requests in one write, the last one closing.
        &b"GET /page HTTP/1.1\r\nHost: x\r\n\r\nHEAD /page HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        // A body and a request after it, in one write.
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /page HTTP/1.0\r\n\r\n",
        b"GET /page HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /page HTTP/1.0\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /page HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /page HTTP/9.9\r\nHost: x\r\n\r\n",
        b"DELETE /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /fails HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let reference = conversation(axum_addr, raw).await;
        let ours = conversation(ours_addr, raw).await;
        assert_eq!(ours, reference, "{:?}", String::from_utf8_lossy(raw));
        assert!(!reference.is_empty() || raw.starts_with(b"GARBAGE"), "{reference}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_for_large_and_chunked_request_bodies() {
    let [(_, axum_addr), (_, ours_addr)] = both().await;
    let large: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let mut with_length = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", large.len()).into_bytes();
    with_length.extend_from_slice(&large);
    // The same bytes in chunks of 64 KiB, the last one short.
    let mut chunked = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in large.chunks(65_536) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let expected = upload(axum::body::Bytes::from(large.clone())).await;
    for raw in [with_length, chunked] {
        let mut answers = Vec::new();
        for addr in [axum_addr, ours_addr] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&raw).await.unwrap();
            stream.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut got)).await.unwrap().unwrap();
            let text = String::from_utf8_lossy(&got).into_owned();
            assert!(text.contains(&expected), "{text}");
            answers.push(text.split("\r\n").filter(|l| !l.starts_with("date:")).collect::<Vec<_>>().join("\r\n"));
        }
        assert_eq!(answers[1], answers[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_on_both() {
    for (name, addr) in both().await {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "{name}: closed");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), "HTTP/1.1 100 Continue\r\n\r\n", "{name}");
        stream.write_all(b"hello").await.unwrap();
        let seen = String::from_utf8_lossy(&read_one(&mut stream).await).into_owned();
        assert!(seen.starts_with("HTTP/1.1 200") && seen.ends_with(&upload("hello".into()).await), "{name}: {seen}");
    }
}

/// Reads one answer with a `content-length` from `stream`.
async fn read_one(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
            if got.len() >= end + 4 + length {
                return got;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    }
}

/// SSE is where the two differ on purpose (`docs/deployment.md`): ours writes a stream
/// close-delimited, with `connection: close`, where hyper writes it chunked and keeps the
/// connection. The events, their timing and the other headers are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_arrives_as_it_is_made_on_both_and_differs_only_in_framing() {
    let [(_, axum_addr), (_, ours_addr)] = both().await;
    let reference = exchange(axum_addr, &get_request("/sse")).await;
    let ours = exchange(ours_addr, &get_request("/sse")).await;
    for (name, seen) in [("axum::serve", &reference), ("tidings::http::Server", &ours)] {
        assert_eq!(String::from_utf8_lossy(&seen.body), "id: 0\ndata: event 0\n\nid: 1\ndata: event 1\n\n", "{name}");
        assert!(seen.arrivals[0] < 100, "{name}: first event after {} ms", seen.arrivals[0]);
        assert!(seen.arrivals.len() >= 2, "{name}: {:?}", seen.arrivals);
    }
    assert_eq!(ours.status_line, reference.status_line);
    let without_framing =
        |seen: &Seen| comparable(seen).into_iter().filter(|(n, _)| n != "connection").collect::<Vec<_>>();
    assert_eq!(without_framing(&ours), without_framing(&reference));
    assert!(ours.headers.contains(&("connection".to_owned(), "close".to_owned())), "{ours:?}");
    assert!(ours.closed_after && !reference.closed_after);
}

/// HTTP/2 with prior knowledge, from a client that is not ours (reqwest over hyper's h2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_over_http2_with_prior_knowledge() {
    let [(_, axum_addr), (_, ours_addr)] = both().await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut answers = Vec::new();
    for addr in [axum_addr, ours_addr] {
        let mut seen = Vec::new();
        for (method, path, body) in
            [("GET", "/page", ""), ("GET", "/missing", ""), ("POST", "/upload", "hello"), ("GET", "/fails", ""), ("GET", "/no-content", "")]
        {
            let response = client
                .request(method.parse().unwrap(), format!("http://{addr}{path}"))
                .body(body.to_owned())
                .send()
                .await
                .unwrap();
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(n, _)| n.as_str() != "date")
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            headers.sort();
            seen.push((response.status(), headers, response.text().await.unwrap()));
        }
        // A stream made over time arrives as it is made.
        let started = Instant::now();
        let mut ndjson = client.get(format!("http://{addr}/ndjson")).send().await.unwrap().bytes_stream();
        let first = ndjson.next().await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_millis(150), "first line after {:?}", started.elapsed());
        assert_eq!(&first[..], b"{\"line\":0}\n");
        answers.push(seen);
    }
    assert_eq!(answers[1], answers[0]);
}
