//! The server's connection limits as a listener, for apps that keep `axum::serve`
//! (`tidings::server::LimitedListener`): per-address and total limits answered `429` and `503`
//! with a JSON body and `Retry-After`, counts given back when connections close.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tidings::server::{LimitedListener, ServerStatsHandle};
use tidings::{Hub, MemoryStore, NewEvent, Topic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn start(configure: impl FnOnce(LimitedListener) -> LimitedListener) -> (SocketAddr, Hub, ServerStatsHandle) {
    let hub = Hub::new(MemoryStore::new());
    let listener = configure(LimitedListener::new(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()));
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    let stats = listener.stats();
    let push = common::memory_web_push(hub.clone()).await;
    let app = sse_demo::app(hub.clone(), &push);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hub, stats)
}

/// Opens an SSE stream from `source`; the connection and what came first.
async fn open_stream(addr: SocketAddr, source: Ipv4Addr) -> (TcpStream, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(b"GET /events?topic=demo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            if text.starts_with("HTTP/1.1 200") || text.len() > end + 4 {
                return (stream, text);
            }
        }
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(_) => return (stream, text),
            Err(_) => panic!("no answer within 20 s: {text:?}"),
        }
    }
}

#[tokio::test]
async fn axum_serve_gets_the_per_address_limit() {
    let (addr, hub, stats) = start(|l| l.max_connections_per_ip(2).retry_after(Duration::from_secs(7))).await;
    let one = Ipv4Addr::new(127, 0, 0, 2);
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (stream, head) = open_stream(addr, one).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
        streams.push(stream);
    }
    let (_, refused) = open_stream(addr, one).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused:.400}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 7"), "{refused:.400}");
    assert!(refused.contains("\"error\":\"too many connections from your address (the limit is 2)"), "{refused}");
    let (_other, head) = open_stream(addr, Ipv4Addr::new(127, 0, 0, 3)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    // A closed connection gives its count back.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        let (stream, head) = open_stream(addr, one).await;
        if head.starts_with("HTTP/1.1 200") {
            break stream;
        }
        assert!(Instant::now() < deadline, "the closed connection's count was never given back");
        tokio::task::yield_now().await;
    };
    streams.push(reopened);
    assert!(stats.get().refused_per_ip >= 1);
    hub.publish(NewEvent::new(Topic::new("demo"), "still streaming")).await.unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = String::new();
    while !seen.contains("data: still streaming") {
        let n = tokio::time::timeout(Duration::from_secs(20), streams[0].read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn axum_serve_gets_the_total_limit() {
    let (addr, _hub, stats) = start(|l| l.max_connections(1)).await;
    let (_held, head) = open_stream(addr, Ipv4Addr::LOCALHOST).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    let (_, refused) = open_stream(addr, Ipv4Addr::new(127, 0, 0, 2)).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:.400}");
    assert!(refused.contains("the server is at its connection limit (1)"), "{refused}");
    assert_eq!(stats.get().refused_capacity, 1);
    assert_eq!(stats.get().open, 1);
}
