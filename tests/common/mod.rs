//! A small long-polling and publishing client for the process-level tests.

#![allow(dead_code)]

use std::time::Duration;

/// One long-poll batch: `(data of each event, cursor after the batch, gap topics)`.
pub struct Batch {
    pub data: Vec<String>,
    pub cursor: String,
    pub gap: Option<Vec<String>>,
}

pub async fn poll(http: &reqwest::Client, base: &str, topic: &str, cursor: Option<&str>, timeout: u32) -> Batch {
    let mut url = format!("{base}/poll?topic={topic}&timeout={timeout}");
    if let Some(c) = cursor {
        url.push_str(&format!("&cursor={c}"));
    }
    let response = http.get(url).timeout(Duration::from_secs(60)).send().await.expect("poll answered");
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    Batch {
        data: json["events"].as_array().unwrap().iter().map(|e| e["data"].as_str().unwrap().to_owned()).collect(),
        cursor: json["cursor"].as_str().unwrap().to_owned(),
        gap: json["gap"]["topics"].as_array().map(|t| t.iter().map(|t| t.as_str().unwrap().to_owned()).collect()),
    }
}

/// Publishes; `Some(id)` when the server answered 201, `None` when it could not be reached.
pub async fn publish(http: &reqwest::Client, base: &str, topic: &str, data: &str) -> Option<String> {
    let body = serde_json::json!({ "topic": topic, "data": data }).to_string();
    let response = http
        .post(format!("{base}/publish"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    if response.status() != 201 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
    json["id"].as_str().map(str::to_owned)
}

/// Reads everything after `cursor` with immediate polls; returns the data and the new cursor.
pub async fn drain(http: &reqwest::Client, base: &str, topic: &str, mut cursor: String) -> (Vec<String>, String) {
    let mut all = Vec::new();
    loop {
        let batch = poll(http, base, topic, Some(&cursor), 0).await;
        assert!(batch.gap.is_none(), "unexpected gap after {} events", all.len());
        cursor = batch.cursor;
        if batch.data.is_empty() {
            return (all, cursor);
        }
        all.extend(batch.data);
    }
}

/// A Web Push transport over `hub` with an in-memory registry and a fresh key, for tests that
/// serve the demo's routes in-process.
pub async fn memory_web_push(hub: tidings::Hub) -> tidings::webpush::WebPush {
    tidings::webpush::WebPush::builder(
        hub,
        tidings::webpush::MemoryRegistry::new(),
        tidings::webpush::VapidKeys::generate(),
        "mailto:test@example.com",
    )
    .expect("a valid contact")
    .start()
    .await
    .expect("the transport starts")
}

/// Connects to `addr` from `source` (any 127.0.0.0/8 address is this machine's loopback), so
/// that tests can be several clients.
pub async fn connect_from(addr: std::net::SocketAddr, source: std::net::Ipv4Addr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(std::net::IpAddr::V4(source), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads `stream` until `expected` came (30 s at most).
pub async fn receives(stream: &mut tokio::net::TcpStream, expected: &str) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(expected) {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("stream ended or stalled ({other:?}) before {expected:?}: {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

/// Serves `app` with `configure(tidings::http::Server::new(app))` on a fresh loopback port
/// until the test ends: its address, and a handle on its counters.
pub async fn serve_with(
    app: axum::Router,
    configure: impl FnOnce(tidings::http::Server) -> tidings::http::Server,
) -> (std::net::SocketAddr, tidings::http::ServerStatsHandle) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = configure(tidings::http::Server::new(app));
    let stats = server.stats();
    tokio::spawn(server.serve(listener, std::future::pending()));
    (addr, stats)
}

/// Reads one answer from `stream`: its head and, if it says a length, that much body; else
/// (a stream, a chunked answer) the head and the first body bytes; or what came before the
/// peer closed. Panics after 30 s without them.
pub async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>()))
                .and_then(Result::ok);
            match length {
                Some(n) if got.len() >= end + 4 + n => break,
                None if got.len() > end + 4 => break, // a stream: its first bytes are enough
                _ => {}
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within 30 s; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}
