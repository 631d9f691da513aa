//! The WebSocket transport beyond the conformance suite: credentials kept for later
//! subscriptions, a refused change that changes nothing, presence across topic changes,
//! heartbeats and the client timeout, shutdown of a socket that follows no topic, and hostile
//! frames answered with a close code and a reason while other clients are served.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Item, WsClient, open, serve, ws_url};
use futures_util::SinkExt;
use serde_json::json;
use tidings_conformance::{Received, TestClient};
use tidings_core::{Connection, Disconnect, Hub, Lifecycle, MemoryStore, NewEvent, Refusal, Topic, authorize_fn};
use tidings_websocket::WebSocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn start(hub: Hub, endpoint: impl FnOnce(WebSocket) -> WebSocket) -> std::net::SocketAddr {
    let app = axum::Router::new().route("/ws", endpoint(WebSocket::new(hub)).method_router());
    serve(app).await.0
}

async fn client(addr: std::net::SocketAddr, query_topics: &[&str], extra: &str) -> WsClient {
    let topics: Vec<String> = query_topics.iter().map(|t| t.to_string()).collect();
    let url = format!("{}{extra}", ws_url(addr, &topics, None));
    let stream = open(&url, &[]).await.expect("the socket opens");
    let mut client = WsClient::from_stream(stream);
    match client.read().await {
        Item::Answer(a) if a["type"] == "subscribed" => client,
        other => panic!("expected subscribed, got {other:?}"),
    }
}

async fn next_data(client: &mut WsClient) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.next()).await.expect("within 10 s") {
            Received::Event(e) => return e.data,
            Received::Heartbeat => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn later_subscriptions_are_authorized_with_the_upgrade_requests_credentials() {
    // `secret/*` topics need `token=letmein` in the URL; others are open.
    let hub = Hub::builder(MemoryStore::new())
        .authorize(authorize_fn(|request| {
            let secret = request.topics.iter().any(|t| t.as_str().starts_with("secret/"));
            match (secret, request.credentials.query("token")) {
                (false, _) | (true, Some("letmein")) => Ok(()),
                (true, _) => Err(Refusal::forbidden("secret topics need the token")),
            }
        }))
        .build();
    let addr = start(hub.clone(), |w| w).await;

    let mut with_token = client(addr, &["open"], "&token=letmein").await;
    assert!(with_token.subscribe(&["secret/a"], None).await.is_ok(), "the URL's token admits a later subscribe");
    hub.publish(NewEvent::new(Topic::new("secret/a"), "for the token holder")).await.unwrap();
    assert_eq!(next_data(&mut with_token).await, "for the token holder");

    // Without it: refused, and the socket goes on with what it had.
    let mut without = client(addr, &["open"], "").await;
    let refused = without.subscribe(&["secret/a"], None).await.unwrap_err();
    assert_eq!(refused.status, 403);
    assert!(refused.message.contains("token"), "{}", refused.message);
    hub.publish(NewEvent::new(Topic::new("secret/a"), "not for you")).await.unwrap();
    hub.publish(NewEvent::new(Topic::new("open"), "still yours")).await.unwrap();
    assert_eq!(next_data(&mut without).await, "still yours");
}

/// Counts connections, as presence does, and records each change.
#[derive(Default)]
struct Presence {
    open: Mutex<i64>,
    disconnects: Mutex<u32>,
    changes: Mutex<Vec<(u64, u64)>>,
}

impl Lifecycle for Presence {
    fn on_connect(&self, _: &Connection) {
        *self.open.lock().unwrap() += 1;
    }

    fn on_disconnect(&self, _: &Connection, _: &Disconnect) {
        *self.open.lock().unwrap() -= 1;
        *self.disconnects.lock().unwrap() += 1;
    }

    fn on_change(&self, before: &Connection, after: &Connection) {
        self.changes.lock().unwrap().push((before.id, after.id));
    }
}

#[tokio::test]
async fn topic_changes_are_one_connection_to_the_lifecycle_hooks() {
    let presence = Arc::new(Presence::default());
    let hub = Hub::builder(MemoryStore::new()).lifecycle(presence.clone()).build();
    let addr = start(hub.clone(), |w| w).await;
    let mut socket = client(addr, &["a"], "").await;
    for topic in ["b", "c", "d"] {
        socket.subscribe(&[topic], None).await.unwrap();
    }
    socket.unsubscribe(&["a", "b"]).await.unwrap();
    assert_eq!(*presence.open.lock().unwrap(), 1, "one subscription for the socket");
    assert_eq!(*presence.disconnects.lock().unwrap(), 0, "the client was never seen going");
    let changes = presence.changes.lock().unwrap().clone();
    assert_eq!(changes.len(), 4, "one change per subscribe or unsubscribe: {changes:?}");
    assert!(changes.iter().all(|&(before, after)| before == after && after == changes[0].0), "{changes:?}");
    // With a cursor it cannot read (a gap for the added topic): one connection still.
    assert!(socket.subscribe(&["e"], Some("x".into())).await.is_ok());
    assert_eq!(hub.subscriber_count(), 1);
    assert_eq!(*presence.disconnects.lock().unwrap(), 0);
    drop(socket);
    tokio::time::timeout(Duration::from_secs(10), async {
        while hub.subscriber_count() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the subscription ends with the socket");
}

#[tokio::test]
async fn a_socket_with_no_topic_is_told_to_come_back_on_shutdown() {
    let hub = Hub::builder(MemoryStore::new()).reconnect_jitter(Duration::from_millis(700)..=Duration::from_millis(700)).build();
    let addr = start(hub.clone(), |w| w).await;
    let mut socket = client(addr, &["a"], "").await;
    socket.unsubscribe(&["a"]).await.unwrap();
    hub.shutdown();
    assert_eq!(socket.next().await, Received::Closing(Some(Duration::from_millis(700))));
    match socket.read().await {
        Item::Close(code, reason) => {
            assert_eq!(code, 1012);
            assert!(reason.contains("700 ms"), "{reason}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_with_4408() {
    let hub = Hub::new(MemoryStore::new());
    let addr = start(hub, |w| w.heartbeat(Duration::from_millis(100)).client_timeout(Duration::from_millis(600))).await;
    // A raw socket that reads but never answers: pings, then 4408 with a reason.
    let mut raw = handshake(addr, "/ws?topic=a").await;
    let (mut pings, close) = read_until_close(&mut raw).await;
    pings.retain(|&op| op == 0x9);
    assert!(pings.len() >= 2, "pings before the close: {pings:?}");
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 4408);
    assert!(reason.contains("pong"), "{reason}");

    // A client that answers pings (tokio-tungstenite does, as every client) stays open.
    let addr2 = addr;
    let mut answering = client(addr2, &["a"], "").await;
    for _ in 0..10 {
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), answering.next()).await.unwrap(), Received::Heartbeat);
    }
}

/// Opens a socket by hand (a raw TCP client) and returns it after the `101`.
async fn handshake(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: tidings.v1\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// Reads server frames until a close frame (or the end): the opcodes seen, and the close.
async fn read_until_close(stream: &mut TcpStream) -> (Vec<u8>, Option<(u16, String)>) {
    let mut input = Vec::new();
    let mut opcodes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while input.len() >= 2 {
            let len = match input[1] & 0x7F {
                126 if input.len() >= 4 => u16::from_be_bytes([input[2], input[3]]) as usize,
                126 => break,
                127 => panic!("no frame here is that long"),
                n => n as usize,
            };
            let start = if input[1] & 0x7F == 126 { 4 } else { 2 };
            assert_eq!(input[1] & 0x80, 0, "a server frame is never masked");
            if input.len() < start + len {
                break;
            }
            let opcode = input[0] & 0x0F;
            let payload: Vec<u8> = input[start..start + len].to_vec();
            input.drain(..start + len);
            opcodes.push(opcode);
            if opcode == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (opcodes, Some((code, String::from_utf8(payload[2..].to_vec()).unwrap())));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.expect("within 10 s") {
            Ok(0) | Err(_) => return (opcodes, None),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A masked client frame.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[tokio::test]
async fn hostile_frames_are_closed_with_a_code_and_a_reason_and_others_are_served() {
    let hub = Hub::new(MemoryStore::new());
    let addr = start(hub.clone(), |w| w).await;
    let mut bystander = client(addr, &["t"], "").await;
    let huge = {
        let mut f = vec![0x81, 0xFF];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        f
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved bit", client_frame(0xC1, b"{}"), 1002),
        ("unknown opcode", client_frame(0x83, b""), 1002),
        ("fragmented ping", client_frame(0x09, b""), 1002),
        ("continuation first", client_frame(0x80, b"x"), 1002),
        ("binary", client_frame(0x82, b"\x00\x01"), 1003),
        ("not UTF-8", client_frame(0x81, b"\xff\xfe"), 1007),
        ("announced 2^64 bytes", huge, 1009),
        ("close code 1005", client_frame(0x88, &1005u16.to_be_bytes()), 1002),
    ];
    for (what, bytes, code) in cases {
        let mut raw = handshake(addr, "/ws?topic=t").await;
        raw.write_all(&bytes).await.unwrap();
        let (_, close) = read_until_close(&mut raw).await;
        let (got, reason) = close.unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!(got, code, "{what}: {reason}");
        assert!(!reason.is_empty(), "{what}: a reason");
    }
    // A client's own close is echoed.
    let mut raw = handshake(addr, "/ws?topic=t").await;
    raw.write_all(&client_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e'])).await.unwrap();
    let (_, close) = read_until_close(&mut raw).await;
    assert_eq!(close.map(|c| c.0), Some(1000));
    // Messages split across frames and TCP segments, with a ping between them, are read whole.
    let mut raw = handshake(addr, "/ws?topic=t").await;
    let message = br#"{"type":"ping","ref":"split"}"#;
    let mut bytes = client_frame(0x01, &message[..7]);
    bytes.extend(client_frame(0x89, b"p"));
    bytes.extend(client_frame(0x80, &message[7..]));
    for byte in bytes {
        raw.write_all(&[byte]).await.unwrap();
    }
    raw.write_all(&client_frame(0x88, &[0x03, 0xE8])).await.unwrap();
    let mut all = Vec::new();
    raw.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains(r#""ref":"split""#) && text.contains("pong"), "{text}");
    // The bystander was served all along.
    hub.publish(NewEvent::new(Topic::new("t"), "still served")).await.unwrap();
    assert_eq!(next_data(&mut bystander).await, "still served");
}

#[tokio::test]
async fn requests_that_are_not_upgrades_get_an_answer_that_says_what_is_missing() {
    let hub = Hub::new(MemoryStore::new());
    let addr = start(hub, |w| w).await;
    for (request, status, says) in [
        ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "426", "upgrade request"),
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            "400",
            "tidings.v1",
        ),
        (
            "GET /ws?topic=%0A HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: tidings.v1\r\n\r\n",
            "400",
            "invalid topic",
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(answer.contains(says), "{answer}");
    }
}

#[tokio::test]
async fn a_large_event_goes_out_whole_and_the_socket_keeps_working() {
    let hub = Hub::new(MemoryStore::new());
    let addr = start(hub.clone(), |w| w).await;
    let mut two_topics = client(addr, &["big", "other"], "").await;
    let mut one_topic = client(addr, &["big"], "").await;
    let data = "é".repeat(512 * 1024);
    hub.publish(NewEvent::new(Topic::new("big"), data.clone())).await.unwrap();
    hub.publish(NewEvent::new(Topic::new("big"), "small after")).await.unwrap();
    for socket in [&mut two_topics, &mut one_topic] {
        assert_eq!(next_data(socket).await, data);
        assert_eq!(next_data(socket).await, "small after");
    }
    // The return channel still works after it.
    two_topics.stream.send(Message::text(json!({"type": "ping", "ref": 5}).to_string())).await.unwrap();
    loop {
        match two_topics.read().await {
            Item::Answer(a) if a["type"] == "pong" => break,
            Item::Received(Received::Heartbeat) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}
