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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let push = common::memory_web_push(hub.clone()).await;
    let server = configure(Server::new(sse_demo::app(hub.clone(), &push)));
    let stats = server.stats();
    tokio::spawn(server.serve(listener, std::future::pending()));
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
    let dir = std::env::temp_dir().join(format!("tidings-tls-{}-{:?}", std::process::id(), std::thread::current().id()));
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
    // A client that does not trust the certificate gets no answer at all.
    let stranger = reqwest::Client::builder().resolve("localhost", addr).build().unwrap();
    assert!(stranger.get(format!("{base}/")).send().await.is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tls_configuration_errors_name_the_file_and_the_fault() {
    let (dir, _) = certificate();
    let missing = dir.join("nope.pem");
    let err = tidings::server::tls_config_from_pem(&missing, &dir.join("key.pem")).unwrap_err().to_string();
    assert!(err.contains("nope.pem"), "{err}");
    // A key given as the certificate: no certificate in it.
    let err = tidings::server::tls_config_from_pem(&dir.join("key.pem"), &dir.join("key.pem")).unwrap_err().to_string();
    assert!(err.contains("no certificate"), "{err}");
    // A certificate given as the key.
    let err = tidings::server::tls_config_from_pem(&dir.join("cert.pem"), &dir.join("cert.pem")).unwrap_err().to_string();
    assert!(err.contains("cert.pem"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
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
