//! The client behind a reverse proxy, as `tidings::http::Server` finds it: `X-Forwarded-For`
//! from trusted proxies and the PROXY protocol (v1 and v2), tried with raw requests over
//! loopback against the demo's routes. What matters to users: per-client limits count the real
//! clients, handlers see the real address, and what is not believed is not believed.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Extension;
use axum::extract::ConnectInfo;
use axum::routing::get;
use common::{read_answer, receives};
use tidings::http::Server;
use tidings::server::ClientIp;
use tidings::{Hub, MemoryStore, NewEvent, Topic};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The demo's routes plus `/who`, which answers `"<ClientIp> <ConnectInfo>"`, served with
/// `configure`d settings.
async fn start(configure: impl FnOnce(Server) -> Server) -> (SocketAddr, Hub) {
    let hub = Hub::new(MemoryStore::new());
    let push = common::memory_web_push(hub.clone()).await;
    let who = |Extension(ClientIp(ip)): Extension<ClientIp>, ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
        format!("{ip} {peer}")
    };
    let app = sse_demo::app(hub.clone(), &push).route("/who", get(who));
    let (addr, _stats) = common::serve_with(app, configure).await;
    (addr, hub)
}

/// Sends `raw` on a new connection and reads the answer's head and first body bytes (a
/// stream stays open: the connection is returned with it).
async fn send(addr: SocketAddr, raw: &[u8]) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let answer = read_answer(&mut stream).await;
    (stream, answer)
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn stream_request(forwarded_for: &str) -> Vec<u8> {
    format!("GET /events?topic=demo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded_for}\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_trusted_proxys_x_forwarded_for_names_the_client_and_each_client_has_its_own_limit() {
    let (addr, hub) = start(|s| s.max_connections_per_ip(2)).await;
    // Handlers see the client the proxy names; a client's own entry left of it is not believed.
    let (_, who) = send(addr, b"GET /who HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.7\r\n\r\n").await;
    assert!(body(&who).starts_with("203.0.113.7 127.0.0.1:"), "{who}");
    let (_, who) = send(addr, b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(body(&who).starts_with("127.0.0.1 127.0.0.1:"), "{who}");
    // Two streams for 203.0.113.7, through one proxy address: the third is refused, and only
    // that client is.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (stream, head) = send(addr, &stream_request("203.0.113.7")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
        streams.push(stream);
    }
    let (_, refused) = send(addr, &stream_request("203.0.113.7")).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused:.400}");
    assert!(refused.contains("\"error\":\"too many connections from your address (the limit is 2)"), "{refused}");
    let (mut other, head) = send(addr, &stream_request("198.51.100.9")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    // When a stream ends, its client's count goes down with it.
    drop(streams.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        let (stream, head) = send(addr, &stream_request("203.0.113.7")).await;
        if head.starts_with("HTTP/1.1 200") {
            break stream;
        }
        assert!(head.starts_with("HTTP/1.1 429"), "{head:.300}");
        assert!(std::time::Instant::now() < deadline, "the ended stream's count was never given back");
        tokio::task::yield_now().await; // the server has not seen the close yet
    };
    streams.push(reopened);
    hub.publish(NewEvent::new(Topic::new("demo"), "to every client")).await.unwrap();
    for stream in streams.iter_mut().chain([&mut other]) {
        receives(stream, "data: to every client").await;
    }
}

#[tokio::test]
async fn an_untrusted_peers_x_forwarded_for_is_ignored() {
    let only_elsewhere = ["10.0.0.0/8".parse().unwrap()];
    let (addr, _hub) = start(|s| s.trusted_proxies(only_elsewhere).max_connections_per_ip(2)).await;
    // (This connection stays open: it counts.)
    let (_kept, who) = send(addr, b"GET /who HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n").await;
    assert!(body(&who).starts_with("127.0.0.1 127.0.0.1:"), "{who}");
    // And its connections count under its own address, whatever they claim.
    let (_held, head) = send(addr, &stream_request("203.0.113.7")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    let (_, refused) = send(addr, &stream_request("198.51.100.9")).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused:.300}");
}

/// A PROXY protocol v1 header (text).
fn proxy_v1(source: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {} 127.0.0.1 {} 80\r\n", source.ip(), source.port()).into_bytes()
}

/// A PROXY protocol v2 header (binary), written out from the specification: the signature,
/// version 2 with `command` (0 LOCAL, 1 PROXY), TCP over IPv4, 12 address bytes.
fn proxy_v2(command: u8, source: SocketAddrV4Parts) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x20 | command);
    header.push(0x11);
    header.extend_from_slice(&12u16.to_be_bytes());
    header.extend_from_slice(&source.0.octets());
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&source.1.to_be_bytes());
    header.extend_from_slice(&80u16.to_be_bytes());
    header
}

type SocketAddrV4Parts = (Ipv4Addr, u16);

#[tokio::test]
async fn the_proxy_protocol_gives_the_clients_address_in_both_versions() {
    let (addr, _hub) = start(|s| s.proxy_protocol(true)).await;
    let who = b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n";
    // v1, with the request in the same write.
    let mut raw = proxy_v1("203.0.113.7:5555".parse().unwrap());
    raw.extend_from_slice(who);
    let (_, answer) = send(addr, &raw).await;
    assert_eq!(body(&answer), "203.0.113.7 203.0.113.7:5555", "{answer}");
    // v2, the header and the request in separate writes.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&proxy_v2(1, (Ipv4Addr::new(198, 51, 100, 9), 4444))).await.unwrap();
    stream.flush().await.unwrap();
    tokio::task::yield_now().await;
    stream.write_all(who).await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(body(&answer), "198.51.100.9 198.51.100.9:4444", "{answer}");
    // The same connection carries more requests, still as that client.
    stream.write_all(who).await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(body(&answer), "198.51.100.9 198.51.100.9:4444", "{answer}");
    // LOCAL (a proxy's health check): the peer is the client.
    let mut raw = proxy_v2(0, (Ipv4Addr::new(198, 51, 100, 9), 4444));
    raw.extend_from_slice(who);
    let (_, answer) = send(addr, &raw).await;
    assert!(body(&answer).starts_with("127.0.0.1 127.0.0.1:"), "{answer}");
    // A connection without a header is closed without a word, as the specification says; a
    // bad header too.
    for raw in [&who[..], b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"] {
        let (_, answer) = send(addr, raw).await;
        assert_eq!(answer, "", "{raw:?}");
    }
}

#[tokio::test]
async fn with_the_proxy_protocol_the_limit_counts_each_real_client() {
    let (addr, _hub) = start(|s| s.proxy_protocol(true).max_connections_per_ip(2)).await;
    let open = |source: &'static str| async move {
        let mut raw = proxy_v1(source.parse().unwrap());
        raw.extend_from_slice(b"GET /events?topic=demo HTTP/1.1\r\nHost: x\r\n\r\n");
        send(addr, &raw).await
    };
    let (_a, head) = open("203.0.113.7:1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    let (_b, head) = open("203.0.113.7:2").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    let (_, refused) = open("203.0.113.7:3").await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused:.300}");
    assert!(refused.contains("too many connections from your address (the limit is 2)"), "{refused}");
    let (_c, head) = open("198.51.100.9:1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
}


#[tokio::test]
async fn with_the_proxy_protocol_a_connection_over_capacity_gets_its_503_after_the_header() {
    let (addr, _hub) = start(|s| s.proxy_protocol(true).max_connections(1)).await;
    let mut raw = proxy_v1("203.0.113.7:1".parse().unwrap());
    raw.extend_from_slice(b"GET /events?topic=demo HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_held, head) = send(addr, &raw).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:.300}");
    // The refusal reads the proxy's header first: the proxy relays a 503, not a 400.
    let mut raw = proxy_v2(1, (Ipv4Addr::new(198, 51, 100, 9), 4444));
    raw.extend_from_slice(b"GET /events?topic=demo HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_, refused) = send(addr, &raw).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:.400}");
    assert!(refused.contains("the server is at its connection limit (1)"), "{refused}");
}
