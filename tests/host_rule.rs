//! The Host rule of RFC 9112 §3.2 on the demo's real routes under the shipped server, on each
//! of its paths: the requests it answers itself (a bodiless `GET`: a stream, a poll, a page),
//! and those it hands to hyper (a body, another method, HTTP/1.0, a request after a pipelined
//! one). Found by replaying a bug report: `GET /events` without `Host` got a live stream, and a
//! `POST /publish` without `Host` stored its event.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::time::Duration;

use tidings::{Hub, MemoryStore, Topic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start() -> (std::net::SocketAddr, Hub) {
    let hub = Hub::new(MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let push = common::memory_web_push(hub.clone()).await;
    let app = sse_demo::app(hub.clone(), &push);
    tokio::spawn(tidings::http::Server::new(app).serve(listener, std::future::pending()));
    (addr, hub)
}

/// Sends `request` and reads until `until` is in the answer, the server closes, or 10 s pass.
async fn exchange(addr: std::net::SocketAddr, request: &[u8], until: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the server closes the connection after its answer (reads to the end within 10 s).
async fn answered_then_closed(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the server closes the connection after a 400")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

const PUBLISH_BODY: &str = r#"{"topic":"demo","data":"must not be stored"}"#;

fn publish(host_lines: &str) -> Vec<u8> {
    format!(
        "POST /publish HTTP/1.1\r\n{host_lines}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{PUBLISH_BODY}",
        PUBLISH_BODY.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_break_the_host_rule_get_400_on_every_path() {
    let (addr, hub) = start().await;
    let bad_hosts = ["", "Host: a\r\nHost: b\r\n", "Host: a b\r\n", "Host: user@example.com\r\n", "Host: x:80a\r\n", "Host: x/y\r\n"];
    for host in bad_hosts {
        let requests: Vec<Vec<u8>> = vec![
            // The server's own path: a stream, a poll, a page.
            format!("GET /events?topic=demo HTTP/1.1\r\n{host}\r\n").into_bytes(),
            format!("GET /poll?topic=demo&timeout=0 HTTP/1.1\r\n{host}\r\n").into_bytes(),
            format!("GET / HTTP/1.1\r\n{host}\r\n").into_bytes(),
            // hyper's: a body, another method, a GET with a body.
            publish(host),
            format!("DELETE /push/subscriptions HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\n{{}}").into_bytes(),
            format!("GET /events?topic=demo HTTP/1.1\r\n{host}Content-Length: 1\r\n\r\nx").into_bytes(),
            format!("HEAD /events?topic=demo HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ];
        for request in requests {
            let answer = answered_then_closed(addr, &request).await;
            let shown = String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 400 "), "{shown:?} with {host:?} answered {answer:.200}");
            if !shown.starts_with("HEAD") {
                assert!(answer.contains("Host header") && answer.contains("RFC 9112"), "{answer:.300}");
            }
        }
    }
    // The same rule for a request after a good one on the same connection, on both paths.
    let pipelined = [
        &b"GET /poll?topic=demo&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\nGET /poll?topic=demo&timeout=0 HTTP/1.1\r\n\r\n"[..],
        &[&publish("Host: x\r\n")[..], &publish("")[..]].concat(),
    ];
    for request in pipelined {
        let answer = answered_then_closed(addr, request).await;
        // The good one answered, then the second one refused.
        assert!(answer.starts_with("HTTP/1.1 200 OK") || answer.starts_with("HTTP/1.1 201 Created"), "{answer:.400}");
        assert_eq!(answer.matches("HTTP/1.1 400 Bad Request").count(), 1, "{answer:.400}");
    }
    // HTTP/1.0 may lack Host, but not repeat it.
    let answer = answered_then_closed(addr, b"GET /poll?topic=demo&timeout=0 HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 400 ") || answer.starts_with("HTTP/1.1 400 "), "{answer:.200}");
    // Only the one good publish above was stored.
    assert_eq!(hub.store().bounds(&Topic::new("demo")).await.unwrap().last, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rfc_exceptions_are_served() {
    let (addr, hub) = start().await;
    let served: Vec<(Vec<u8>, &str)> = vec![
        // An empty Host: the target URI had no authority.
        (b"GET /poll?topic=demo&timeout=0 HTTP/1.1\r\nHost:\r\n\r\n".to_vec(), "\"cursor\""),
        (b"GET /events?topic=demo HTTP/1.1\r\nHost: \r\n\r\n".to_vec(), "tidings.open"),
        // Hosts with ports and IP literals.
        (b"GET /poll?topic=demo&timeout=0 HTTP/1.1\r\nHost: [::1]:8888\r\n\r\n".to_vec(), "\"cursor\""),
        (b"GET /events?topic=demo HTTP/1.1\r\nHost: 127.0.0.1:8888\r\n\r\n".to_vec(), "tidings.open"),
        // HTTP/1.0 without Host.
        (b"GET /poll?topic=demo&timeout=0 HTTP/1.0\r\n\r\n".to_vec(), "\"cursor\""),
        (publish("").replacen(b"HTTP/1.1", b"HTTP/1.0"), "\"id\""),
        // An absolute-form target names its host: Host is ignored, present or not.
        (b"GET http://example.com/poll?topic=demo&timeout=0 HTTP/1.1\r\n\r\n".to_vec(), "\"cursor\""),
        (b"GET http://example.com/events?topic=demo HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), "tidings.open"),
    ];
    for (request, expected) in served {
        let answer = exchange(addr, &request, expected).await;
        assert!(answer.contains(" 200 OK") || answer.contains(" 201 Created"), "{:?}: {answer:.300}", String::from_utf8_lossy(&request));
        assert!(answer.contains(expected), "{answer:.300}");
    }
    assert_eq!(hub.store().bounds(&Topic::new("demo")).await.unwrap().last, 1, "the HTTP/1.0 publish is stored");
}

/// Vec<u8>'s missing `replacen`, for the HTTP/1.0 variant of a request.
trait ReplaceN {
    fn replacen(self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceN for Vec<u8> {
    fn replacen(self, from: &[u8], to: &[u8]) -> Vec<u8> {
        match self.windows(from.len()).position(|w| w == from) {
            Some(i) => [&self[..i], to, &self[i + from.len()..]].concat(),
            None => self,
        }
    }
}
