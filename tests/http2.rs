//! HTTP/2 through `tidings::http::Server`, with clients that are not ours: with prior knowledge
//! over plain TCP (reqwest, and curl as a user would run it), and over TLS where ALPN chooses
//! `h2` (or `http/1.1` for a client that only speaks that). Many SSE streams share one
//! connection, which is the point: a browser opens at most 6 HTTP/1.1 connections per origin.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidings::http::{Server, ServerStatsHandle};
use tidings::{Hub, MemoryStore, NewEvent, Topic};
use tokio::io::AsyncReadExt;

async fn start(configure: impl FnOnce(Server) -> Server) -> (SocketAddr, Hub, ServerStatsHandle) {
    let hub = Hub::new(MemoryStore::new());
    let push = common::memory_web_push(hub.clone()).await;
    let (addr, stats) = common::serve_with(sse_demo::app(hub.clone(), &push), configure).await;
    (addr, hub, stats)
}

/// An open SSE response, read chunk by chunk.
struct Events {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    seen: String,
}

impl Events {
    async fn open(http: &reqwest::Client, url: &str, version: reqwest::Version) -> Events {
        let response = http.get(url).send().await.expect("the stream opens");
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events { body: response.bytes_stream().boxed(), seen: String::new() }
    }

    async fn receives(&mut self, expected: &str) {
        while !self.seen.contains(expected) {
            match tokio::time::timeout(Duration::from_secs(20), self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                other => panic!("stream ended or stalled ({other:?}) before {expected:?}: {:?}", self.seen),
            }
        }
    }
}

/// Opens `n` streams on `http` (one first, so that the others find its connection), publishes
/// through `http` too, and checks that every stream receives the event.
async fn many_streams_on_one_client(http: &reqwest::Client, base: &str, hub: &Hub, version: reqwest::Version, n: usize) {
    let url = format!("{base}/events?topic=demo");
    let mut streams = vec![Events::open(http, &url, version).await];
    for _ in 1..n {
        streams.push(Events::open(http, &url, version).await);
    }
    let published = http
        .post(format!("{base}/publish"))
        .header("content-type", "application/json")
        .body(r#"{"topic":"demo","data":"to all ten"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    assert_eq!(published.version(), version);
    for stream in &mut streams {
        stream.receives("data: to all ten").await;
    }
    drop(streams);
    // Once the server sees them go (at once, not at the next heartbeat), none is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.subscriber_count() > 0 {
        assert!(Instant::now() < deadline, "streams left behind after their client closed them");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn ten_sse_streams_share_one_connection_with_prior_knowledge() {
    let (addr, hub, stats) = start(|s| s).await;
    let http = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    many_streams_on_one_client(&http, &format!("http://{addr}"), &hub, reqwest::Version::HTTP_2, 10).await;
    assert_eq!(stats.get().accepted, 1, "one connection carried every stream and the publish");
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files in a new
/// directory: (directory, certificate PEM).
fn certificate() -> (std::path::PathBuf, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tidings-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    (dir, certified.cert.pem())
}

fn https_client(cert_pem: &str, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .https_only(true);
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn over_tls_alpn_chooses_h2_and_http1_clients_still_work() {
    let (dir, cert_pem) = certificate();
    let tls = tidings::server::tls_config_from_pem(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let (addr, hub, stats) = start(|s| s.tls(tls)).await;
    let base = format!("https://localhost:{}", addr.port());
    let h2 = https_client(&cert_pem, addr, false);
    many_streams_on_one_client(&h2, &base, &hub, reqwest::Version::HTTP_2, 10).await;
    assert_eq!(stats.get().accepted, 1, "one TLS connection carried every stream");
    let h1 = https_client(&cert_pem, addr, true);
    many_streams_on_one_client(&h1, &base, &hub, reqwest::Version::HTTP_11, 2).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn tls_configuration_errors_name_the_file_and_the_fault() {
    let (dir, _) = certificate();
    let missing = dir.join("nope.pem");
    let err = tidings::server::tls_config_from_pem(&missing, &dir.join("key.pem")).unwrap_err().to_string();
    assert!(err.contains("nope.pem"), "{err}");
    // The two swapped.
    let err = tidings::server::tls_config_from_pem(&dir.join("key.pem"), &dir.join("cert.pem")).unwrap_err().to_string();
    assert!(err.contains("key.pem: no certificate in it (it holds a private key: swapped?)"), "{err}");
    // A certificate given as the key.
    let err = tidings::server::tls_config_from_pem(&dir.join("cert.pem"), &dir.join("cert.pem")).unwrap_err().to_string();
    assert!(err.contains("cert.pem: no private key in it (it holds a certificate, not a key)"), "{err}");
    // A file that never ends is not read forever.
    let err = tidings::server::tls_config_from_pem(&dir.join("cert.pem"), "/dev/zero".as_ref()).unwrap_err().to_string();
    assert!(err.contains("/dev/zero: over 1048576 bytes"), "{err}");
    // Another certificate's key: refused where rustls can tell; where it cannot (ECDSA on
    // aws-lc-rs), no client completes a handshake.
    let (other, _) = certificate();
    match tidings::server::tls_config_from_pem(&dir.join("cert.pem"), &other.join("key.pem")) {
        Err(err) => assert!(err.to_string().contains("do not make a TLS configuration"), "{err}"),
        Ok(tls) => {
            let cert_pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
            let (addr, _hub, _stats) = start(|s| s.tls(tls)).await;
            let client = https_client(&cert_pem, addr, false);
            assert!(client.get(format!("https://localhost:{}/", addr.port())).send().await.is_err());
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(other).unwrap();
}

#[tokio::test]
async fn curl_streams_the_demo_events_over_http2_with_prior_knowledge() {
    let (addr, hub, _stats) = start(|s| s).await;
    let mut curl = tokio::process::Command::new("curl")
        .args(["-sSvN", "--http2-prior-knowledge", &format!("http://{addr}/events?topic=demo")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs (scripts/test installs it)");
    let mut stdout = curl.stdout.take().unwrap();
    let mut stderr = curl.stderr.take().unwrap();
    // The stream is open once the hub has its subscriber; then an event goes out.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hub.subscriber_count() == 0 {
        assert!(Instant::now() < deadline, "curl's stream never reached the hub");
        tokio::task::yield_now().await;
    }
    hub.publish(NewEvent::new(Topic::new("demo"), "hello curl")).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: hello curl") {
        match tokio::time::timeout(Duration::from_secs(20), stdout.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            other => panic!("curl's output ended ({other:?}): {:?}", String::from_utf8_lossy(&seen)),
        }
    }
    curl.kill().await.unwrap();
    let mut log = String::new();
    stderr.read_to_string(&mut log).await.unwrap();
    assert!(log.contains("< HTTP/2 200"), "curl did not speak HTTP/2: {log}");
}

/// An HTTP/2 connection with no request in progress is closed after the header timeout, as an
/// idle HTTP/1.1 keep-alive connection is: an idle connection holds nothing for long. The
/// client (reqwest, which keeps its connection for the next request) is told with `GOAWAY`.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_header_timeout() {
    let (addr, _hub, stats) = start(|s| s.header_timeout(Duration::from_millis(300))).await;
    let http = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let page = http.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(page.version(), reqwest::Version::HTTP_2);
    page.bytes().await.unwrap();
    assert_eq!(stats.get().open, 1);
    // A stream in progress keeps it, however long.
    let mut stream = Events::open(&http, &format!("http://{addr}/events?topic=demo"), reqwest::Version::HTTP_2).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // twice the header timeout
    assert_eq!(stats.get().open, 1, "a connection with a stream in progress was closed");
    stream.receives("tidings.open").await;
    drop(stream);
    // Then, idle, it is closed while the client still holds it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.get().open > 0 {
        assert!(Instant::now() < deadline, "the idle connection was kept");
        tokio::task::yield_now().await;
    }
    // The client opens a new one for its next request.
    assert_eq!(http.get(format!("http://{addr}/")).send().await.unwrap().status(), 200);
    assert_eq!(stats.get().accepted, 2);
}

/// HTTP/2's preface counts only as a connection's first bytes (RFC 9113 §3.4): after an
/// HTTP/1.1 request, it is not HTTP/2.
#[tokio::test]
async fn the_http2_preface_after_an_http1_request_is_not_http2() {
    use tokio::io::AsyncWriteExt;
    let (addr, _hub, _stats) = start(|s| s).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while !String::from_utf8_lossy(&seen).contains("</html>") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    // hyper's HTTP/1.1 (as under `axum::serve`) closes the connection: no HTTP/2 `SETTINGS`.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 4"), "{:?}", String::from_utf8_lossy(&rest));
}

/// Over TLS, a connection refused for capacity is closed without an answer: a refusal in plain
/// HTTP would be garbage to a TLS client.
#[tokio::test]
async fn over_tls_a_refused_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let (dir, cert_pem) = certificate();
    let tls = tidings::server::tls_config_from_pem(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let (addr, _hub, stats) = start(|s| s.tls(tls).max_connections(1)).await;
    let client = https_client(&cert_pem, addr, false);
    let base = format!("https://localhost:{}", addr.port());
    let _held = Events::open(&client, &format!("{base}/events?topic=demo"), reqwest::Version::HTTP_2).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(b"\x16\x03\x01\x00\x05hello").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await.unwrap();
    assert!(read.is_err() || rest.is_empty(), "answered in plain text: {:?}", String::from_utf8_lossy(&rest));
    assert_eq!(stats.get().refused_capacity, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A client that starts HTTP/2's preface and never finishes it (or never answers the `PING`
/// of the server's `GOAWAY`) is dropped after twice the header timeout, as the docs say:
/// otherwise a few such sockets would hold every connection the server allows.
#[tokio::test]
async fn a_connection_that_never_finishes_the_http2_preface_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let (addr, _hub, stats) = start(|s| s.header_timeout(Duration::from_millis(300))).await;
    for sent in [&b"PRI * HTTP/2.0\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "kept after sending {sent:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "closed before the header timeout");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.get().open > 0 {
        assert!(Instant::now() < deadline, "still counted as open");
        tokio::task::yield_now().await;
    }
}
