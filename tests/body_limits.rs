//! One body limit for every route that reads a body (`tidings::http::limit_body`): a request
//! whose `Content-Length` announces more than the route's limit is answered `413` at once, from
//! its head, before any of its body is sent (and without `100 Continue` when it asked for one);
//! a chunked body is cut off at the limit. Walks every route of the demo (the process, as
//! users run it) and of the `authorized` example with every method that carries a body. Found by
//! replaying a bug report: `POST /push/subscriptions` with `Expect: 100-continue` got `100
//! Continue`, the whole upload, then `413`; without `Expect`, no answer until 16 KiB arrived.

#[allow(dead_code)]
#[path = "../examples/authorized.rs"]
mod authorized;

use std::net::SocketAddr;
use std::time::Duration;

use tidings_test_support::Demo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every path the demo serves.
const DEMO_PATHS: [&str; 10] = [
    "/",
    "/events",
    "/poll",
    "/tidings.js",
    "/tidings-sw.js",
    "/stats",
    "/publish",
    "/login",
    "/metrics",
    "/push/subscriptions",
];
/// The demo's routes that read a body, with their documented limits (`docs/security.md`).
const DEMO_BODY_ROUTES: [(&str, &str, usize); 4] = [
    ("POST", "/publish", 8 << 20),
    ("POST", "/login", 1024),
    ("POST", "/push/subscriptions", 16 * 1024),
    ("DELETE", "/push/subscriptions", 16 * 1024),
];
const AUTHORIZED_PATHS: [&str; 5] = ["/events", "/poll", "/publish", "/login", "/presence"];
const AUTHORIZED_BODY_ROUTES: [(&str, &str, usize); 2] = [("POST", "/publish", 8 << 20), ("POST", "/login", 1024)];

const METHODS_WITH_BODIES: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// Sends a request head (no body) and reads the answer's head, which must come within 10 s.
async fn head_only(addr: SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    read_head(&mut stream).await.unwrap_or_else(|| panic!("{method} {path} with {headers:?}: no answer within 10 s"))
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// The status line's code.
fn status(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// Every path, every method that carries a body, a body announced far over any limit: a route
/// that reads bodies answers 413 from the head; any other answers 405. Never `100 Continue`,
/// never a wait for the body.
async fn announced_oversize_is_refused_from_the_head(addr: SocketAddr, paths: &[&str], body_routes: &[(&str, &str, usize)]) {
    for path in paths {
        for method in METHODS_WITH_BODIES {
            let reads_body = body_routes.iter().any(|(m, p, _)| *m == method && p == path);
            for expect in ["Expect: 100-continue\r\n", ""] {
                let head = head_only(addr, method, path, &format!("Content-Length: 1073741824\r\n{expect}")).await;
                let want = if reads_body { "413" } else { "405" };
                assert_eq!(status(&head), want, "{method} {path} {expect:?}: {head:.300}");
                if reads_body {
                    assert!(head.contains("application/json"), "{head:.300}");
                }
            }
        }
    }
}

/// At its limit, a route reads the body (it asks for it with `100 Continue`); one byte over,
/// it refuses; a chunked body over the limit is cut off with a 413.
async fn limits_are_the_documented_ones(addr: SocketAddr, body_routes: &[(&str, &str, usize)]) {
    for &(method, path, limit) in body_routes {
        let head = head_only(addr, method, path, &format!("Content-Length: {limit}\r\nExpect: 100-continue\r\n")).await;
        assert_eq!(status(&head), "100", "{method} {path} at its limit {limit}: {head:.300}");
        let head = head_only(addr, method, path, &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", limit + 1)).await;
        assert_eq!(status(&head), "413", "{method} {path} over its limit {limit}: {head:.300}");
        assert!(head.contains(&format!("the limit is {limit}")), "{head:.300}");

        // Chunked, no length announced: the route reads up to its limit, then refuses.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let chunk = vec![b' '; (limit / 4).clamp(256, 64 * 1024)];
        let mut sent = 0;
        let answer = loop {
            if sent <= limit {
                let piece = format!("{:x}\r\n", chunk.len());
                let written = async {
                    stream.write_all(piece.as_bytes()).await?;
                    stream.write_all(&chunk).await?;
                    stream.write_all(b"\r\n").await
                };
                if written.await.is_err() {
                    break read_head(&mut stream).await; // refused while we were sending
                }
                sent += chunk.len();
                continue;
            }
            break read_head(&mut stream).await;
        };
        let answer = answer.unwrap_or_else(|| panic!("{method} {path}: no answer to a chunked body over the limit"));
        assert_eq!(status(&answer), "413", "{method} {path} chunked: {answer:.300}");
        assert!(answer.contains("application/json"), "{method} {path} chunked: {answer:.300}");
        assert!(answer.contains(&format!("request body is over the limit of {limit} bytes")), "{method} {path} chunked: {answer:.300}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{method} {path} chunked: {answer:.300}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_route_that_reads_a_body_refuses_an_oversized_one_from_its_head() {
    let demo = Demo::start(0, &["--store", "memory", "--quiet"]);
    let addr = SocketAddr::from(([127, 0, 0, 1], demo.port));
    announced_oversize_is_refused_from_the_head(addr, &DEMO_PATHS, &DEMO_BODY_ROUTES).await;
    limits_are_the_documented_ones(addr, &DEMO_BODY_ROUTES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authorized_example_route_that_reads_a_body_refuses_an_oversized_one_from_its_head() {
    let (router, _hub, _presence) = authorized::app_with_secret(std::sync::Arc::from(&[7u8; 32][..]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tidings::http::Server::new(router).serve(listener, std::future::pending()));
    announced_oversize_is_refused_from_the_head(addr, &AUTHORIZED_PATHS, &AUTHORIZED_BODY_ROUTES).await;
    limits_are_the_documented_ones(addr, &AUTHORIZED_BODY_ROUTES).await;
}
