//! The demo behind real reverse proxies from Debian's packages (nginx, HAProxy, Caddy), each run
//! with its configuration from `docs/deploy/` (only the two addresses replaced by free ports).
//! What a deployment relies on: with the server's defaults, 1 500 SSE clients through one proxy
//! all stream and a publish still goes through; the per-client limit counts the real clients
//! (`X-Forwarded-For` from nginx and Caddy, the PROXY protocol from HAProxy); long-polls wait
//! and answer through the proxy; a WebSocket opens, receives and publishes through each.
//! `scripts/test` installs the three programs.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect_from, read_answer, receives};
use tidings::http::Server;
use tidings::{Hub, MemoryStore, NewEvent, Topic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The demo's routes served by `configure(Server::new(..))`.
async fn start_demo(configure: impl FnOnce(Server) -> Server) -> (SocketAddr, Hub) {
    let hub = Hub::new(MemoryStore::new());
    let push = common::memory_web_push(hub.clone()).await;
    let (addr, _stats) = common::serve_with(sse_demo::app(hub.clone(), &push), configure).await;
    (addr, hub)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nginx,
    Haproxy,
    Caddy,
}

/// A proxy process, stopped when dropped, and its working directory.
struct Proxy {
    addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, and wait: nginx's workers would outlive a master killed outright, still
        // bound to the port.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free now (the proxy binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Proxy {
    /// Starts `kind` with its configuration from `docs/deploy/`, in front of `upstream`;
    /// resolves once it accepts connections.
    async fn start(kind: Kind, upstream: SocketAddr) -> Proxy {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let (file, program) = match kind {
            Kind::Nginx => ("nginx.conf", "nginx"),
            Kind::Haproxy => ("haproxy.cfg", "haproxy"),
            Kind::Caddy => ("Caddyfile", "caddy"),
        };
        let shipped = std::fs::read_to_string(root.join("docs/deploy").join(file)).unwrap();
        assert!(shipped.contains(":8080") && shipped.contains("127.0.0.1:8888"), "{file}");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = shipped.replace(":8080", &format!(":{}", addr.port())).replace("127.0.0.1:8888", &upstream.to_string());
        let dir = std::env::temp_dir().join(format!("tidings-{program}-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(dir.join("temp")).unwrap();
        std::fs::write(dir.join(file), config).unwrap();
        let mut command = match kind {
            Kind::Nginx => {
                let mut c = Command::new("nginx");
                c.args(["-p", &format!("{}/", dir.display()), "-c", file, "-g", "daemon off;"]);
                c
            }
            Kind::Haproxy => {
                let mut c = Command::new("haproxy");
                c.args(["-f", file, "-db"]);
                c
            }
            Kind::Caddy => {
                let mut c = Command::new("caddy");
                c.args(["run", "--config", file, "--adapter", "caddyfile"]);
                c.env("HOME", &dir).env("XDG_DATA_HOME", &dir).env("XDG_CONFIG_HOME", &dir);
                c
            }
        };
        let child = command
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} runs (scripts/test installs it): {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Proxy { addr, child, dir }
    }
}


/// Opens an SSE stream through `proxy` from `source`: the connection and the answer's head.
async fn open_stream(proxy: SocketAddr, source: Ipv4Addr) -> (TcpStream, String) {
    let mut stream = connect_from(proxy, source).await;
    stream.write_all(b"GET /events?topic=demo HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let head = read_answer(&mut stream).await;
    (stream, head)
}

/// Whether `head` is tidings' answer opening a stream (not the proxy's own answer).
fn is_stream(head: &str) -> bool {
    head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("content-type: text/event-stream")
}


/// 1 500 SSE clients (500 each from three addresses) through `kind`, in front of the demo
/// served with `configure`: every one streams, a publish through the proxy is accepted, and
/// every client receives it.
async fn fifteen_hundred_streams(kind: Kind, configure: impl FnOnce(Server) -> Server) {
    const CLIENTS: usize = 1500;
    let (demo, hub) = start_demo(configure).await;
    let proxy = Proxy::start(kind, demo).await;
    let opening = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let opening = opening.clone();
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 3) as u8);
        let addr = proxy.addr;
        tasks.spawn(async move {
            let _turn = opening.acquire().await.unwrap();
            let (stream, head) = open_stream(addr, source).await;
            (stream, head)
        });
    }
    let mut streams = Vec::with_capacity(CLIENTS);
    while let Some(opened) = tasks.join_next().await {
        let (stream, head) = opened.unwrap();
        assert!(is_stream(&head), "{kind:?}: {head:.400}");
        streams.push(stream);
    }
    // Each reached the hub (a proxy answers a stream's head only once tidings did).
    assert_eq!(hub.subscriber_count(), CLIENTS, "{kind:?}");
    // A publish from this host, through the proxy, while they are open.
    let mut publisher = connect_from(proxy.addr, Ipv4Addr::LOCALHOST).await;
    let body = r#"{"topic":"demo","data":"to all 1500"}"#;
    let publish = format!(
        "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    publisher.write_all(publish.as_bytes()).await.unwrap();
    let answer = read_answer(&mut publisher).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{kind:?}: {answer:.400}");
    let mut tasks = tokio::task::JoinSet::new();
    for mut stream in streams {
        tasks.spawn(async move {
            receives(&mut stream, "data: to all 1500").await;
            stream
        });
    }
    let mut delivered = 0;
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
        delivered += 1;
    }
    assert_eq!(delivered, CLIENTS);
}

/// With a limit of 3 per client: three streams from one client through `kind`, then a 429 for
/// its fourth, while another client is let in; and a long-poll that waits through the proxy and
/// answers with the event published meanwhile.
async fn per_client_limit_and_long_poll(kind: Kind, configure: impl FnOnce(Server) -> Server) {
    let (demo, hub) = start_demo(|s| configure(s.max_connections_per_ip(3))).await;
    let proxy = Proxy::start(kind, demo).await;
    let one = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    for _ in 0..3 {
        let (stream, head) = open_stream(proxy.addr, one).await;
        assert!(is_stream(&head), "{kind:?}: {head:.400}");
        held.push(stream);
    }
    let (_, refused) = open_stream(proxy.addr, one).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{kind:?}: {refused:.400}");
    assert!(refused.contains("too many connections from your address (the limit is 3)"), "{kind:?}: {refused}");
    let (_other, head) = open_stream(proxy.addr, Ipv4Addr::new(127, 0, 0, 3)).await;
    assert!(is_stream(&head), "{kind:?}: {head:.400}");
    // A long-poll from a third client waits until an event comes, then answers with it.
    let first = hub.publish(NewEvent::new(Topic::new("polled"), "before")).await.unwrap();
    let mut poll = connect_from(proxy.addr, Ipv4Addr::new(127, 0, 0, 4)).await;
    let request = format!("GET /poll?topic=polled&timeout=30&cursor={} HTTP/1.1\r\nHost: localhost\r\n\r\n", first.cursor());
    poll.write_all(request.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while hub.subscriber_count() < 5 {
        assert!(Instant::now() < deadline, "{kind:?}: the poll never reached the hub");
        tokio::task::yield_now().await;
    }
    hub.publish(NewEvent::new(Topic::new("polled"), "while waiting")).await.unwrap();
    let mut answer = read_answer(&mut poll).await;
    // A chunked answer (Caddy re-frames it) arrives in pieces: read until the event is in.
    if !answer.contains("while waiting") {
        let mut buf = [0u8; 4096];
        while !answer.contains("while waiting") {
            match tokio::time::timeout(Duration::from_secs(30), poll.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
                other => panic!("{kind:?}: poll ended ({other:?}): {answer}"),
            }
        }
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{kind:?}: {answer:.400}");
    assert!(answer.contains("\"cursor\""), "{kind:?}: {answer}");
    assert!(!answer.contains("\"before\""), "{kind:?}: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_carries_1500_streams_with_the_defaults() {
    fifteen_hundred_streams(Kind::Nginx, |s| s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_carries_1500_streams_with_the_proxy_protocol() {
    fifteen_hundred_streams(Kind::Haproxy, |s| s.proxy_protocol(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_the_limit_counts_each_client_by_x_forwarded_for() {
    per_client_limit_and_long_poll(Kind::Nginx, |s| s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_the_limit_counts_each_client_by_the_proxy_protocol() {
    per_client_limit_and_long_poll(Kind::Haproxy, |s| s.proxy_protocol(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_caddy_the_limit_counts_each_client_by_x_forwarded_for() {
    per_client_limit_and_long_poll(Kind::Caddy, |s| s).await;
}

/// A WebSocket through `kind`: the upgrade passes, events arrive, a publish over the socket is
/// acknowledged, and the application's message handler answers.
async fn websocket_through(kind: Kind, configure: impl FnOnce(Server) -> Server) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let (demo, hub) = start_demo(configure).await;
    let proxy = Proxy::start(kind, demo).await;
    let mut request = format!("ws://localhost:{}/ws?topic=demo", proxy.addr.port()).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "tidings.v1".parse().unwrap());
    let stream = connect_from(proxy.addr, Ipv4Addr::new(127, 0, 0, 7)).await;
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: the upgrade passes: {e}"));
    assert_eq!(response.headers()["sec-websocket-protocol"], "tidings.v1", "{kind:?}");
    type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;
    async fn next(socket: &mut Socket, kind: Kind) -> serde_json::Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("within 10 s");
            match message {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(Message::Ping(_))) => continue,
                other => panic!("{kind:?}: {other:?}"),
            }
        }
    }
    assert_eq!(next(&mut socket, kind).await["type"], "subscribed", "{kind:?}");
    hub.publish(NewEvent::new(Topic::new("demo"), "through the proxy")).await.unwrap();
    assert_eq!(next(&mut socket, kind).await["data"], "through the proxy", "{kind:?}");
    socket
        .send(Message::text(r#"{"type":"message","data":{"ask":"who"},"ref":1}"#))
        .await
        .unwrap();
    let reply = next(&mut socket, kind).await;
    assert_eq!((reply["type"].as_str(), reply["ref"].as_u64()), (Some("reply"), Some(1)), "{kind:?}: {reply}");
    socket.send(Message::text(r#"{"type":"publish","topic":"demo","data":"from the socket","ref":2}"#)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = next(&mut socket, kind).await;
        seen.push(m["type"].as_str().unwrap_or_default().to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["ack", "event"], "{kind:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_passes_through_nginx() {
    websocket_through(Kind::Nginx, |s| s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_passes_through_haproxy() {
    websocket_through(Kind::Haproxy, |s| s.proxy_protocol(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_passes_through_caddy() {
    websocket_through(Kind::Caddy, |s| s).await;
}
