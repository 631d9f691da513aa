//! The server's limits, tried from outside against the demo's real routes served by
//! `tidings::http::Server`: each abuse gets its documented answer (a status with a JSON message,
//! or the connection cut), and other clients are served all along.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{connect_from, read_answer, receives};
use tidings::http::{Server, ServerStatsHandle};
use tidings::{Hub, MemoryStore, NewEvent, Topic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(configure: impl FnOnce(Server) -> Server) -> (SocketAddr, Hub, ServerStatsHandle) {
    let hub = Hub::new(MemoryStore::new());
    let push = common::memory_web_push(hub.clone()).await;
    let (addr, stats) = common::serve_with(sse_demo::app(hub.clone(), &push), configure).await;
    (addr, hub, stats)
}


async fn request(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    read_answer(&mut stream).await
}

/// The server still answers an ordinary request, and still delivers events.
async fn still_serving(addr: SocketAddr, hub: &Hub) {
    let event = hub.publish(NewEvent::new(Topic::new("demo"), "still serving")).await.unwrap();
    let answer = request(addr, b"GET /poll?topic=demo&cursor=x&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.300}");
    assert!(answer.contains("still serving") && answer.contains(&event.cursor().to_string()), "{answer:.300}");
}

fn assert_json_error(answer: &str, status: &str, message: &str) {
    assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer:.400}");
    assert!(answer.contains("application/json"), "{answer:.400}");
    assert!(answer.contains(&format!("\"error\":\"{message}")), "{answer:.400}");
}

#[tokio::test]
async fn oversized_request_headers_get_431() {
    let (addr, hub, stats) = start(|s| s).await;
    // Over the limit (16 KiB): a JSON 431.
    let big = format!("GET /events?topic=demo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert_json_error(&request(addr, big.as_bytes()).await, "431", "request headers are over 16384 bytes");
    // Far over it (the 200 KB header of the issue): the parser stops reading at 64 KiB.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let huge = format!("GET /events?topic=demo HTTP/1.1\r\nHost: x\r\nX-Huge: {}", "a".repeat(200_000));
    // The server may close before taking it all: what matters is its answer.
    let _ = stream.write_all(huge.as_bytes()).await;
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.300}");
    // Just under the limit is served.
    let fits = format!("GET /poll?topic=demo&timeout=0 HTTP/1.1\r\nHost: x\r\nX-Fits: {}\r\n\r\n", "a".repeat(15_000));
    assert!(request(addr, fits.as_bytes()).await.starts_with("HTTP/1.1 200"));
    assert_eq!(stats.get().header_too_large, 1);
    still_serving(addr, &hub).await;
}

#[tokio::test]
async fn announced_oversized_publish_gets_413_before_its_body() {
    let (addr, hub, _) = start(|s| s).await;
    // 20 MiB announced, not one byte sent: the answer comes from the header alone.
    let head = "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20971520\r\n\r\n";
    let answer = request(addr, head.as_bytes()).await;
    assert_json_error(&answer, "413", "request body is 20971520 bytes, the limit is 8388608");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer:.400}");
    // A chunked body that grows past the limit is cut off with a 413 as well.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, "a".repeat(1 << 20));
    for _ in 0..9 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server answered and closed: read the answer
        }
    }
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
    assert!(answer.contains("\"error\""), "{answer:.300}");
    assert_eq!(hub.store().bounds(&Topic::new("demo")).await.unwrap().last, 0, "nothing was published");
    still_serving(addr, &hub).await;
}

#[tokio::test]
async fn slow_loris_is_cut_off_after_the_header_timeout() {
    let (addr, hub, _) = start(|s| s.header_timeout(Duration::from_secs(1))).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /events?topic=demo HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    // Others are served while it dawdles.
    still_serving(addr, &hub).await;
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await.expect("cut off within 20 s");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection is closed, not answered: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());
    still_serving(addr, &hub).await;
}

/// Opens an SSE stream from `source` and returns it once its head came.
async fn open_stream(addr: SocketAddr, source: Ipv4Addr) -> (TcpStream, String) {
    let mut stream = connect_from(addr, source).await;
    stream.write_all(b"GET /events?topic=demo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut stream).await;
    (stream, answer)
}

#[tokio::test]
async fn connections_per_address_are_bounded_with_429() {
    // Loopback is not a trusted proxy here: each connection is counted as it is accepted.
    per_address_limit(|s| s.trusted_proxies([])).await;
}

#[tokio::test]
async fn requests_from_a_trusted_proxy_without_x_forwarded_for_are_bounded_under_its_address() {
    // Loopback is a trusted proxy by default: each request is counted under the client its
    // `X-Forwarded-For` names, here none, so the proxy's own address.
    per_address_limit(|s| s).await;
}

async fn per_address_limit(configure: impl FnOnce(Server) -> Server) {
    let (addr, hub, stats) =
        start(|s| configure(s.max_connections_per_ip(3).retry_after(Duration::from_secs(7)))).await;
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (stream, head) = open_stream(addr, one).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
        streams.push(stream);
    }
    let (_, refused) = open_stream(addr, one).await;
    assert_json_error(&refused, "429", "too many connections from your address (the limit is 3)");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 7"), "{refused:.400}");
    // Another address is not affected.
    let (_, other) = open_stream(addr, Ipv4Addr::new(127, 0, 0, 2)).await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other:.300}");
    // Once one of the three closes, that address may open one again.
    drop(streams.pop());
    let reopened = loop {
        let (stream, head) = open_stream(addr, one).await;
        if head.starts_with("HTTP/1.1 200") {
            break stream;
        }
        assert!(head.starts_with("HTTP/1.1 429"), "{head:.300}");
        tokio::task::yield_now().await; // the server has not seen the close yet
    };
    drop(reopened);
    assert!(stats.get().refused_per_ip >= 1);
    // The streams that were let in still get events.
    hub.publish(NewEvent::new(Topic::new("demo"), "for the admitted")).await.unwrap();
    receives(&mut streams[0], "data: for the admitted").await;
}


#[tokio::test]
async fn total_connections_are_bounded_with_503() {
    let (addr, hub, stats) = start(|s| s.max_connections(2)).await;
    let (a, head) = open_stream(addr, Ipv4Addr::new(127, 0, 0, 3)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    let (mut b, head) = open_stream(addr, Ipv4Addr::new(127, 0, 0, 4)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    let (_, refused) = open_stream(addr, Ipv4Addr::new(127, 0, 0, 5)).await;
    assert_json_error(&refused, "503", "the server is at its connection limit (2); try again later");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 5"), "{refused:.400}");
    assert_eq!(stats.get().refused_capacity, 1);
    // Once one closes, there is room again.
    drop(a);
    loop {
        let answer = request(addr, b"GET /poll?topic=demo&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:.300}");
        tokio::task::yield_now().await; // the server has not seen the close yet
    }
    // The stream that stayed open still gets events.
    hub.publish(NewEvent::new(Topic::new("demo"), "for the open one")).await.unwrap();
    receives(&mut b, "data: for the open one").await;
}

#[tokio::test]
async fn a_stream_is_written_straight_to_its_socket_and_other_requests_keep_their_connection() {
    let (addr, hub, _) = start(|s| s).await;
    // An SSE stream: its own connection, delimited by its end (no chunked framing).
    let (mut stream, head) = open_stream(addr, Ipv4Addr::LOCALHOST).await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/event-stream") && lower.contains("connection: close"), "{head}");
    assert!(!lower.contains("transfer-encoding"), "{head}");
    hub.publish(NewEvent::new(Topic::new("demo"), "straight")).await.unwrap();
    receives(&mut stream, "data: straight").await;
    // Other requests share a keep-alive connection as before: a poll, a publish, a poll.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /poll?topic=demo&cursor=x&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let first = read_answer(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200") && first.contains("straight"), "{first:.300}");
    let body = r#"{"topic":"demo","data":"second"}"#;
    let publish = format!("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    conn.write_all(publish.as_bytes()).await.unwrap();
    let second = read_answer(&mut conn).await;
    assert!(second.starts_with("HTTP/1.1 201"), "{second:.300}");
    conn.write_all(b"GET /poll?topic=demo&cursor=x&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let third = read_answer(&mut conn).await;
    assert!(third.contains("second"), "{third:.300}");
}

/// A connection whose poll on `topic` waits (it brings the cursor of the log's end, and a 60 s
/// timeout), returned once the hub counts its subscription. A poll without a cursor answers at
/// once with where the log ends.
async fn open_waiting_poll(addr: SocketAddr, hub: &Hub, topic: &str) -> TcpStream {
    let first = format!("GET /poll?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = request(addr, first.as_bytes()).await;
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let cursor = serde_json::from_str::<serde_json::Value>(body).unwrap()["cursor"].as_str().unwrap().to_owned();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let wait = format!("GET /poll?topic={topic}&timeout=60&cursor={cursor} HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.write_all(wait.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while hub.subscriber_count() == 0 {
        assert!(Instant::now() < deadline, "the poll never arrived");
        tokio::task::yield_now().await;
    }
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_whose_client_hangs_up_ends_at_once() {
    let (addr, hub, _) = start(|s| s).await;
    let poll = open_waiting_poll(addr, &hub, "quiet").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    drop(poll);
    // Well before its 60 s timeout, the subscription is gone.
    while hub.subscriber_count() > 0 {
        assert!(Instant::now() < deadline, "the poll outlived its client");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_share_a_keep_alive_connection_until_the_client_says_close() {
    let (addr, hub, _) = start(|s| s).await;
    hub.publish(NewEvent::new(Topic::new("demo"), "kept")).await.unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        conn.write_all(b"GET /poll?topic=demo&cursor=x&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = read_answer(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("kept"), "{answer:.300}");
        assert!(answer.to_ascii_lowercase().contains("content-length: "), "{answer:.300}");
    }
    conn.write_all(b"GET /poll?topic=demo&cursor=x&timeout=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let last = read_answer(&mut conn).await;
    assert!(last.to_ascii_lowercase().contains("connection: close"), "{last:.300}");
    let mut rest = [0u8; 16];
    let after = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut rest)).await.expect("closed within 20 s");
    assert!(matches!(after, Ok(0)), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_poll_goes_out_with_its_length_and_a_request_sent_meanwhile_is_answered_after_it() {
    let (addr, hub, _) = start(|s| s).await;
    let mut conn = open_waiting_poll(addr, &hub, "later").await;
    // A second request while the first waits (the client pipelines): it must wait its turn.
    conn.write_all(b"GET /poll?topic=later&cursor=x&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let event = hub.publish(NewEvent::new(Topic::new("later"), "worth the wait")).await.unwrap();
    // Both answers, read from the connection as they come (they may share a read).
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let answers = loop {
        if let Some(answers) = split_answers(&got, 2) {
            break answers;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    };
    let batch: serde_json::Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(batch["events"][0]["data"], "worth the wait", "{answers:?}");
    assert_eq!(batch["cursor"], event.cursor().to_string(), "{answers:?}");
    assert!(answers[1].0.starts_with("HTTP/1.1 200") && answers[1].1.contains("worth the wait"), "{answers:?}");
}

/// The first `n` answers in `bytes`, as (head, body), if they are complete; each must have a
/// `Content-Length`.
fn split_answers(mut bytes: &[u8], n: usize) -> Option<Vec<(String, String)>> {
    let mut answers = Vec::new();
    while answers.len() < n {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no content-length: {head}"));
        let body = bytes.get(end + 4..end + 4 + length)?;
        answers.push((head, String::from_utf8_lossy(body).into_owned()));
        bytes = &bytes[end + 4 + length..];
    }
    Some(answers)
}

/// Reads one chunked answer (head and body up to its last chunk); returns the head and the
/// body's bytes joined.
async fn read_chunked(stream: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let (head, mut rest) = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&got[..end]).into_owned(), got[end + 4..].to_vec());
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    };
    let mut body = String::new();
    loop {
        if let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            if rest.len() >= line_end + 2 + size + 2 {
                body.push_str(std::str::from_utf8(&rest[line_end + 2..line_end + 2 + size]).unwrap());
                assert_eq!(&rest[line_end + 2 + size..line_end + 4 + size], b"\r\n");
                rest.drain(..line_end + 4 + size);
                if size == 0 {
                    assert!(rest.is_empty(), "bytes after the last chunk: {rest:?}");
                    return (head, body);
                }
                continue;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed inside the body");
        rest.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn answers_of_unknown_length_go_out_chunked_and_bodiless_statuses_without_a_body() {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/pieces",
            get(|| async {
                let pieces = ["one ", "", "two ", "three"].map(|p| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(p)));
                axum::body::Body::from_stream(futures_util::stream::iter(pieces))
            }),
        )
        .route("/nothing", get(|| async { axum::http::StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(app).serve(listener, std::future::pending()));
    // Three answers on one keep-alive connection.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /pieces HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (head, body) = read_chunked(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(body, "one two three");
    conn.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8(got).unwrap();
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("content-length") && !lower.contains("transfer-encoding") && !lower.contains("connection: close"), "{head}");
    conn.write_all(b"GET /pieces HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_chunked(&mut conn).await.1, "one two three");
}

/// A stream that hyper serves (a `GET` with a body goes to hyper, not the direct path) ends as
/// soon as its client hangs up, as one on the direct path does, not at the next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_served_by_hyper_ends_when_its_client_hangs_up() {
    let (addr, hub, _) = start(|s| s).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /events?topic=demo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    let head = read_answer(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head:.300}");
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "served by hyper: {head:.300}");
    assert_eq!(hub.subscriber_count(), 1);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5); // the heartbeat comes after 15 s
    while hub.subscriber_count() > 0 {
        assert!(Instant::now() < deadline, "the stream outlived its client");
        tokio::task::yield_now().await;
    }
}

/// Opens a WebSocket (`/ws`, tidings.v1) from `source` and returns it once its answer's head
/// came.
async fn open_socket(addr: SocketAddr, source: Ipv4Addr) -> (TcpStream, String) {
    open_socket_with(addr, source, "").await
}

/// [`open_socket`] with `extra` header lines (each ending in CRLF).
async fn open_socket_with(addr: SocketAddr, source: Ipv4Addr, extra: &str) -> (TcpStream, String) {
    let mut stream = connect_from(addr, source).await;
    let request = format!(
        "GET /ws?topic=demo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: tidings.v1\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let mut head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        // A refusal: its body too.
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest).await;
        head.push_str(&rest);
    }
    (stream, head)
}

#[tokio::test]
async fn upgraded_connections_count_toward_the_limits_until_they_close() {
    let (addr, _hub, stats) = start(|s| s.max_connections(2)).await;
    let (a, head) = open_socket(addr, Ipv4Addr::new(127, 0, 0, 3)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head:.300}");
    let (_b, head) = open_socket(addr, Ipv4Addr::new(127, 0, 0, 4)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head:.300}");
    // Two open sockets fill the server: a third connection of any kind is refused.
    let (_, refused) = open_socket(addr, Ipv4Addr::new(127, 0, 0, 5)).await;
    assert_json_error(&refused, "503", "the server is at its connection limit (2)");
    let (_, refused) = open_stream(addr, Ipv4Addr::new(127, 0, 0, 5)).await;
    assert_json_error(&refused, "503", "the server is at its connection limit (2)");
    assert_eq!(stats.get().open, 2);
    // Once a socket closes, there is room again.
    drop(a);
    loop {
        let (_, head) = open_socket(addr, Ipv4Addr::new(127, 0, 0, 5)).await;
        if head.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(head.starts_with("HTTP/1.1 503"), "{head:.300}");
        tokio::task::yield_now().await; // the server has not seen the close yet
    }
}

#[tokio::test]
async fn upgraded_connections_count_under_their_address() {
    let (addr, _hub, _) = start(|s| s.trusted_proxies([]).max_connections_per_ip(1)).await;
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let (_socket, head) = open_socket(addr, one).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head:.300}");
    let (_, refused) = open_socket(addr, one).await;
    assert_json_error(&refused, "429", "too many connections from your address (the limit is 1)");
    let (_, other) = open_socket(addr, Ipv4Addr::new(127, 0, 0, 2)).await;
    assert!(other.starts_with("HTTP/1.1 101"), "{other:.300}");
}

#[tokio::test]
async fn upgraded_connections_from_a_trusted_proxy_count_under_the_client_it_names() {
    // Loopback is a trusted proxy by default: each request is counted under the client its
    // `X-Forwarded-For` names, and a socket's count lasts as long as the socket.
    let (addr, _hub, _) = start(|s| s.max_connections_per_ip(1)).await;
    let proxy = Ipv4Addr::new(127, 0, 0, 1);
    let (first, head) = open_socket_with(addr, proxy, "X-Forwarded-For: 10.1.1.1\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head:.300}");
    let (_, refused) = open_socket_with(addr, proxy, "X-Forwarded-For: 10.1.1.1\r\n").await;
    assert_json_error(&refused, "429", "too many connections from your address (the limit is 1)");
    let (_other, head) = open_socket_with(addr, proxy, "X-Forwarded-For: 10.1.1.2\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "another client: {head:.300}");
    drop(first);
    loop {
        let (_, head) = open_socket_with(addr, proxy, "X-Forwarded-For: 10.1.1.1\r\n").await;
        if head.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(head.starts_with("HTTP/1.1 429"), "{head:.300}");
        tokio::task::yield_now().await; // the server has not seen the close yet
    }
}
