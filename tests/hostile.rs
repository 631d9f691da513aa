//! Hostile input against the demo's real routes: every request gets a clear answer (a 4xx with
//! a JSON message, or a stream that starts with a gap), nothing panics, nothing is lost, and
//! the server keeps serving.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::time::Duration;

use tidings::{Hub, MemoryStore, NewEvent, Topic};
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

/// Sends raw bytes, returns the status line and what followed within the first read window.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    raw_until(addr, request, "").await
}

/// Sends raw bytes and reads the answer until `expected` is in it (or the head and some body
/// are, when `expected` is empty), the server closes, or 10 s pass without a byte; returns what
/// came. Streams never end by themselves, and arrive in as many pieces as the server likes.
async fn raw_until(addr: std::net::SocketAddr, request: &[u8], expected: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    let done = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        text.contains("\r\n\r\n") && got.len() >= 40 && text.contains(expected)
    };
    while !done(&got) {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").into_bytes()
}

fn post(body: &str) -> Vec<u8> {
    post_to("/publish", body)
}

fn post_to(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn subscribe(endpoint: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "endpoint": endpoint,
        "keys": {
            "p256dh": "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY",
            "auth": "_ordMnz7uTCmrpBTeUV4Bw"
        },
        "topics": ["demo"]
    });
    post_to("/push/subscriptions", &body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_answers_and_the_server_survives() {
    let (addr, hub) = start().await;
    let long_topic = "t".repeat(300);
    let many_topics: String = (0..100).map(|i| format!("topic=t{i}&")).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (get("/events?topic=%0A", ""), "400"),
        (get("/events?topic=%FF%FE", ""), "400"),
        (get(&format!("/events?topic={long_topic}"), ""), "400"),
        (get(&format!("/events?{many_topics}"), ""), "400"),
        (get("/poll?topic=demo&timeout=1e308", ""), "400"),
        (get("/poll?topic=demo&timeout=-0.5", ""), "400"),
        (get("/poll?topic=%00", ""), "400"),
        // Garbage cursors are a gap, never an error.
        (
            [&b"GET /events?topic=demo HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfegarbage\r\n\r\n"[..]].concat(),
            "tidings.gap",
        ),
        // Control characters in a header never reach us: the HTTP parser answers 400 itself.
        (get("/events?topic=demo", "Last-Event-ID: \u{1}\r\n"), "HTTP/1.1 400"),
        (get("/events?topic=demo&lastEventId=%F0%9F%92%A5", ""), "tidings.gap"),
        (get("/events?topic=demo", &format!("Last-Event-ID: {}\r\n", "A".repeat(10_000))), "tidings.gap"),
        (get("/poll?topic=demo&cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAA&timeout=0", ""), "\"gap\":{"),
        // Publishing: malformed JSON, wrong types, huge numbers, control characters.
        (post(r#"{"to"#), "400"),
        (post(r#"{"topic":1,"data":[1,2,3]}"#), "400"),
        (post(r#"{"topic":"a\u0000","data":"x"}"#), "400"),
        (post(r#"{"topic":"demo","data":"x","extra":true}"#), "400"),
        (post(r#"{"topic":"demo","data":"\ud800"}"#), "400"),
        // Event types an EventSource dispatches itself, and tidings' own.
        (post(r#"{"topic":"demo","event":"error","data":"x"}"#), "dispatched by EventSource itself"),
        (post(r#"{"topic":"demo","event":"open","data":"x"}"#), "dispatched by EventSource itself"),
        (post(r#"{"topic":"demo","event":"tidings.gap","data":"x"}"#), "reserved"),
        // Push subscriptions: endpoints the server must never call, and malformed JSON.
        (subscribe("https://127.0.0.1/x"), "loopback"),
        (subscribe("https://10.0.0.1/x"), "private"),
        (subscribe("https://169.254.169.254/latest/meta-data"), "cloud metadata"),
        (subscribe("https://[::1]:8443/x"), "loopback"),
        (subscribe("http://push.example.net/x"), "must be https"),
        (subscribe("not a url"), "not a valid url"),
        (post_to("/push/subscriptions", r#"{"endpoint":"https://push.example.net/x","keys":{"p256dh":"x","auth":"y"}}"#), "p256dh"),
        (post_to("/push/subscriptions", "[1,2"), "400"),
        (post_to("/push/subscriptions", &"x".repeat(20_000)), "413"),
    ];
    for (request, expected) in &cases {
        let answer = raw_until(addr, request, expected).await;
        assert!(
            answer.contains(expected),
            "{:?} answered {:?}",
            String::from_utf8_lossy(&request[..request.len().min(80)]),
            &answer[..answer.len().min(200)]
        );
        if *expected == "400" {
            assert!(answer.contains("application/json") && answer.contains("\"error\""), "{answer:.300}");
        }
    }
    // Nothing was published by any of that, and the server still works.
    assert_eq!(hub.store().bounds(&Topic::new("demo")).await.unwrap().last, 0);
    hub.publish(NewEvent::new(Topic::new("demo"), "still here")).await.unwrap();
    let answer = raw(addr, &get("/poll?topic=demo&cursor=x&timeout=0", "")).await;
    assert!(answer.contains("still here"), "{answer:.300}");
}
