//! SIGTERM to the demo: every open SSE stream receives a `retry:` line before it ends, every
//! waiting long-poll an answer with its cursor and `retry_ms`, and the process exits 0.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use tidings_test_support::Demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_every_stream_and_poll_when_to_come_back_then_exits_zero() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shutdown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = format!("sqlite:{}", dir.join("events.db").display());
    let demo = Demo::start(0, &["--store", &store]);
    let (http, base) = (reqwest::Client::new(), demo.url());

    // Three SSE streams, each read up to its opening event.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let response = http.get(format!("{base}/events?topic=t")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let mut text = String::new();
        while !text.contains("event: tidings.open") {
            text.push_str(std::str::from_utf8(&body.next().await.expect("stream open").unwrap()).unwrap());
        }
        streams.push(body);
    }
    // Three long-polls waiting at the end of the log.
    let cursor = common::poll(&http, &base, "t", None, 0).await.cursor;
    let polls: Vec<_> = (0..3)
        .map(|_| {
            let request = http.get(format!("{base}/poll?topic=t&timeout=60&cursor={cursor}"));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    // Wait until the server holds all six subscriptions (three streams, three polls).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats: serde_json::Value =
            serde_json::from_str(&http.get(format!("{base}/stats")).send().await.unwrap().text().await.unwrap()).unwrap();
        if stats["subscribers"].as_u64() >= Some(6) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the polls never arrived: {stats}");
        tokio::task::yield_now().await;
    }

    let exited = tokio::task::spawn_blocking(move || demo.terminate(Duration::from_secs(20)));

    for mut body in streams {
        let mut rest = String::new();
        while let Some(chunk) = body.next().await {
            rest.push_str(std::str::from_utf8(&chunk.expect("the stream ends cleanly")).unwrap());
        }
        let retry: u64 = rest
            .lines()
            .find_map(|l| l.strip_prefix("retry: "))
            .unwrap_or_else(|| panic!("no retry: line before the end: {rest:?}"))
            .parse()
            .unwrap();
        assert!((1000..=5000).contains(&retry), "retry {retry} ms");
    }
    for poll in polls {
        let response = poll.await.unwrap().expect("the poll is answered");
        assert_eq!(response.status(), 200);
        let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(json["cursor"].as_str(), Some(cursor.as_str()), "{json}");
        assert!(json["retry_ms"].as_u64().is_some_and(|ms| (1000..=5000).contains(&ms)), "{json}");
    }
    let status = exited.await.unwrap().expect("the demo exits within 20 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An SSE route served with a grace period of 200 ms until `stop` is sent, on a hub that is
/// never shut down (its streams would go on): the address, the hub, `stop`, and `serve`'s task.
async fn serve_streams_until_stopped() -> (
    std::net::SocketAddr,
    tidings::Hub,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let hub = tidings::Hub::new(tidings::MemoryStore::new());
    let app = axum::Router::new().route("/events", tidings::sse::Sse::new(hub.clone()).method_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tidings::http::Server::new(app)
            .grace_period(Duration::from_millis(200))
            .serve(listener, async move { stopped.await.unwrap_or(()) }),
    );
    (addr, hub, stop, server)
}

/// Issue 19: once the grace period is over, `serve` returns only after every connection is
/// closed, and nothing is written on any of them afterwards, on either of the server's paths
/// (a stream it writes itself, and one hyper serves: a `GET` that carries a body). Here the hub
/// is not shut down, so the streams would otherwise go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_on_a_stream_after_serve_returned() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, hub, stop, server) = serve_streams_until_stopped().await;
    let requests = [
        "GET /events?topic=t HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /events?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ];
    let mut streams = Vec::new();
    for request in requests {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("tidings.open") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        streams.push(stream);
    }
    hub.publish(tidings::NewEvent::new(tidings::Topic::new("t"), "before")).await.unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("serve returns after its grace period").unwrap().unwrap();
    // Published once serve has returned: written to nobody.
    hub.publish(tidings::NewEvent::new(tidings::Topic::new("t"), "after")).await.unwrap();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "stream {i}: still open after serve returned");
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("data: after"), "stream {i}: written after serve returned: {rest}");
    }
}

/// The same over HTTP/2: hyper runs each stream as a task of its own, which ends with its
/// connection when the grace period is over; nothing is written after `serve` returned, and no
/// subscription is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_on_an_http2_stream_after_serve_returned() {
    use futures_util::StreamExt;
    let (addr, hub, stop, server) = serve_streams_until_stopped().await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let response = client.get(format!("http://{addr}/events?topic=t")).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let mut body = response.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("tidings.open") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.next()).await.unwrap().unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        bodies.push(body);
    }
    assert_eq!(hub.subscriber_count(), 2);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("serve returns after its grace period").unwrap().unwrap();
    assert_eq!(hub.subscriber_count(), 0, "a stream outlived serve");
    hub.publish(tidings::NewEvent::new(tidings::Topic::new("t"), "after")).await.unwrap();
    for (i, mut body) in bodies.into_iter().enumerate() {
        let mut rest = String::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(chunk)) = body.next().await {
                rest.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await;
        assert!(ended.is_ok(), "stream {i}: still open after serve returned");
        assert!(!rest.contains("data: after"), "stream {i}: written after serve returned: {rest}");
    }
}
