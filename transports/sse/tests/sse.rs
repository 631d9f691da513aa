//! What the SSE transport promises beyond the conformance suite: its headers, the
//! `lastEventId` query parameter, exact bytes on the wire, shared frames, error answers, and
//! heartbeat and retry timing under paused time.

mod common;

use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use http::Request;
use tidings_conformance::{TestClient, Received};
use tidings_core::{Cursor, EventType, Hub, MemoryStore, NewEvent, Topic};
use tidings_sse::Sse;
use tower::ServiceExt;

use common::{SseClient, events_url, serve};

fn topic(name: &str) -> Topic {
    Topic::new(name)
}

async fn server(hub: &Hub, sse: impl FnOnce(Sse) -> Sse) -> std::net::SocketAddr {
    let app = axum::Router::new().route("/events", sse(Sse::new(hub.clone())).method_router());
    serve(app).await.0
}

async fn next_data(client: &mut SseClient) -> String {
    match tokio::time::timeout(Duration::from_secs(10), client.next()).await.unwrap() {
        Received::Event(e) => e.data,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_has_event_stream_headers() {
    let hub = Hub::new(MemoryStore::new());
    let addr = server(&hub, |s| s).await;
    let response = reqwest::get(events_url(addr, &["t".into()], &[])).await.unwrap();
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
}

#[tokio::test]
async fn replay_from_last_event_id_query_parameter() {
    let hub = Hub::new(MemoryStore::new());
    let addr = server(&hub, |s| s).await;
    let first = hub.publish(NewEvent::new(topic("t"), "one")).await.unwrap();
    hub.publish(NewEvent::new(topic("t"), "two")).await.unwrap();
    let cursor = first.cursor().to_string();
    let url = events_url(addr, &["t".into()], &[("lastEventId", &cursor)]);
    let mut client = SseClient::open(reqwest::Client::new().get(url)).await.unwrap();
    assert_eq!(next_data(&mut client).await, "two");
}

#[tokio::test]
async fn last_event_id_header_wins_over_query_parameter() {
    let hub = Hub::new(MemoryStore::new());
    let addr = server(&hub, |s| s).await;
    let mut cursors = Vec::new();
    for d in ["one", "two", "three"] {
        cursors.push(hub.publish(NewEvent::new(topic("t"), d)).await.unwrap().cursor().to_string());
    }
    let url = events_url(addr, &["t".into()], &[("lastEventId", &cursors[0])]);
    let request = reqwest::Client::new().get(url).header("last-event-id", &cursors[1]);
    let mut client = SseClient::open(request).await.unwrap();
    assert_eq!(next_data(&mut client).await, "three");
}

#[tokio::test]
async fn default_topics_apply_when_none_is_named() {
    let hub = Hub::new(MemoryStore::new());
    let addr = server(&hub, |s| s.default_topics(vec![topic("demo")])).await;
    let mut client =
        SseClient::open(reqwest::Client::new().get(format!("http://{addr}/events"))).await.unwrap();
    hub.publish(NewEvent::new(topic("demo"), "hi")).await.unwrap();
    assert_eq!(next_data(&mut client).await, "hi");
}

#[tokio::test]
async fn errors_are_json_4xx_before_any_stream() {
    let hub = Hub::new(MemoryStore::new());
    let addr = server(&hub, |s| s).await;
    for (query, status, needle) in [
        ("", 400, "no topic"),
        ("topic=bad%0Aname", 400, "invalid topic"),
        ("topic=", 400, "invalid topic"),
    ] {
        let response = reqwest::get(format!("http://{addr}/events?{query}")).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{query}");
        assert_eq!(response.headers()["content-type"], "application/json", "{query}");
        let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
}

#[tokio::test]
async fn cors_policy_is_applied_when_configured() {
    let hub = Hub::new(MemoryStore::new());
    let cors = tower_http::cors::CorsLayer::new().allow_origin(tower_http::cors::Any);
    let addr = server(&hub, |s| s.cors(cors)).await;
    let response = reqwest::Client::new()
        .get(events_url(addr, &["t".into()], &[]))
        .header("origin", "http://example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let plain = server(&hub, |s| s).await;
    let response = reqwest::Client::new()
        .get(events_url(plain, &["t".into()], &[]))
        .header("origin", "http://example.test")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
}

// ---- Bytes on the wire, through the service itself -----------------------------------------

async fn open_body(router: &axum::Router, uri: &str, cursor: Option<&str>) -> Body {
    let mut request = Request::get(uri);
    if let Some(c) = cursor {
        request = request.header("last-event-id", c);
    }
    let response = router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body()
}

async fn chunk(body: &mut Body) -> bytes::Bytes {
    let mut stream = http_body_util::BodyDataStream::new(body);
    stream.next().await.expect("stream ended").expect("body error")
}

#[tokio::test]
async fn wire_bytes_are_exact() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).retry(Duration::from_millis(2500)).into_router();
    let mut body = open_body(&router, "/?topic=t", None).await;
    let preamble = chunk(&mut body).await;
    let start = hub.store().bounds(&topic("t")).await.unwrap();
    let mut cursor = Cursor::new(start.epoch);
    cursor.set(&topic("t"), 0);
    assert_eq!(preamble, format!("retry: 2500\nevent: tidings.open\ndata: \nid: {cursor}\n\n"));

    let event = NewEvent::new(topic("t"), "a\r\nb").with_type(EventType::new("my-custom-event"));
    let published = hub.publish(event).await.unwrap();
    let wire = chunk(&mut body).await.to_vec();
    assert_eq!(
        String::from_utf8(wire).unwrap(),
        format!("event: my-custom-event\ndata: a\ndata: b\nid: {}\n\n", published.cursor())
    );
}

/// `listen`: a typed event the client does not listen for goes out as `tidings.skip` with its
/// cursor and no data; untyped and listened events go out whole; without `listen`, all whole.
#[tokio::test]
async fn unlistened_types_go_out_as_skip_frames_with_their_cursor() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).into_router();
    let mut listening = open_body(&router, "/?topic=a&topic=b&listen=kept&listen=kept", None).await;
    let mut everything = open_body(&router, "/?topic=a&topic=b", None).await;
    chunk(&mut listening).await;
    chunk(&mut everything).await;
    let mut cursor = Cursor::new(hub.store().bounds(&topic("a")).await.unwrap().epoch);
    cursor.set(&topic("a"), 0);
    cursor.set(&topic("b"), 0);
    let sent = [("a", Some("kept"), "one"), ("b", Some("dropped"), "two"), ("a", None, "three")];
    let mut want_listening = String::new();
    let mut want_everything = String::new();
    for (t, kind, data) in sent {
        let mut event = NewEvent::new(topic(t), data);
        if let Some(kind) = kind {
            event = event.with_type(EventType::new(kind));
        }
        let published = hub.publish(event).await.unwrap();
        cursor.set(&topic(t), published.seq);
        let head = kind.map(|k| format!("event: {k}\n")).unwrap_or_default();
        want_everything.push_str(&format!("{head}data: {data}\nid: {cursor}\n\n"));
        if kind == Some("dropped") {
            want_listening.push_str(&format!("event: tidings.skip\ndata: \nid: {cursor}\n\n"));
        } else {
            want_listening.push_str(&format!("{head}data: {data}\nid: {cursor}\n\n"));
        }
    }
    for (body, want) in [(&mut listening, want_listening), (&mut everything, want_everything)] {
        let mut got = String::new();
        while got.len() < want.len() {
            got.push_str(std::str::from_utf8(&chunk(body).await).unwrap());
        }
        assert_eq!(got, want);
    }
    // One topic: the skip frame carries the event's own cursor (encoded once for all such
    // subscribers), and is what every one of them gets.
    let mut one = open_body(&router, "/?topic=a&listen=kept", None).await;
    let mut two = open_body(&router, "/?topic=a&listen=message", None).await;
    chunk(&mut one).await;
    chunk(&mut two).await;
    let skipped = hub.publish(NewEvent::new(topic("a"), "four").with_type(EventType::new("dropped"))).await.unwrap();
    let want = format!("event: tidings.skip\ndata: \nid: {}\n\n", skipped.cursor());
    assert_eq!(std::str::from_utf8(&chunk(&mut one).await).unwrap(), want);
    assert_eq!(std::str::from_utf8(&chunk(&mut two).await).unwrap(), want);
    // A listen type that is not a valid event type is a 400.
    let response = router.clone().oneshot(Request::get("/?topic=a&listen=a%0Ab").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn every_subscriber_gets_the_same_frame_bytes() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).into_router();
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let mut body = open_body(&router, "/?topic=t", None).await;
        chunk(&mut body).await; // preamble
        bodies.push(body);
    }
    hub.publish(NewEvent::new(topic("t"), "x".repeat(100_000))).await.unwrap();
    let mut frames = Vec::new();
    for body in &mut bodies {
        frames.push(chunk(body).await);
    }
    // Encoded once: every subscriber's frame is the same allocation, not a copy (frames of
    // 16 KiB and more are sent as they are; smaller ones are gathered into write buffers).
    assert!(frames.iter().all(|f| f.as_ptr() == frames[0].as_ptr() && f.len() == frames[0].len()));
}

#[tokio::test]
async fn single_topic_subscribers_share_the_whole_frame_with_its_id() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).into_router();
    let mut single = Vec::new();
    for _ in 0..5 {
        let mut body = open_body(&router, "/?topic=t", None).await;
        chunk(&mut body).await; // preamble
        single.push(body);
    }
    let mut multi = open_body(&router, "/?topic=t&topic=u", None).await;
    chunk(&mut multi).await;
    let published = hub.publish(NewEvent::new(topic("t"), "small")).await.unwrap();
    let mut frames = Vec::new();
    for body in &mut single {
        frames.push(chunk(body).await);
    }
    // Small, yet not copied per subscriber: the id line is the event's own cursor, encoded
    // once with the frame.
    assert_eq!(frames[0], format!("data: small\nid: {}\n\n", published.cursor()));
    assert!(frames.iter().all(|f| f.as_ptr() == frames[0].as_ptr() && f.len() == frames[0].len()));
    // A subscriber of two topics gets its own cursor, which holds both topics.
    let mut text = String::new();
    while !text.ends_with("\n\n") {
        text.push_str(std::str::from_utf8(&chunk(&mut multi).await).unwrap());
    }
    let id = text.strip_prefix("data: small\nid: ").and_then(|t| t.strip_suffix("\n\n")).expect("one frame");
    let cursor = tidings_core::Cursor::parse(id).unwrap();
    assert_eq!(cursor.position(&topic("t")), Some(published.cursor().position(&topic("t")).unwrap()));
    assert!(cursor.position(&topic("u")).is_some(), "the cursor names both topics");
    assert_ne!(id, published.cursor().to_string());
}

#[tokio::test]
async fn a_burst_is_written_together_in_order_around_a_large_frame() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).into_router();
    let mut single = open_body(&router, "/?topic=t", None).await;
    chunk(&mut single).await;
    let mut multi = open_body(&router, "/?topic=t&topic=u", None).await;
    chunk(&mut multi).await;
    // Published before either body is polled again: each stream finds a burst of four.
    let big = "x".repeat(20_000);
    let mut published = Vec::new();
    for data in ["a", big.as_str(), "b", "c"] {
        published.push((data, hub.publish(NewEvent::new(topic("t"), data)).await.unwrap()));
    }
    let frame = |(data, event): &(&str, tidings_core::Event)| format!("data: {data}\nid: {}\n\n", event.cursor());
    // The large frame goes out alone, as the shared bytes, and so does the small one before it;
    // the small ones after it are gathered into one chunk.
    let mut chunks = Vec::new();
    for _ in 0..3 {
        chunks.push(String::from_utf8(chunk(&mut single).await.to_vec()).unwrap());
    }
    assert_eq!(chunks[0], frame(&published[0]));
    assert_eq!(chunks[1], frame(&published[1]));
    assert_eq!(chunks[2], frame(&published[2]) + &frame(&published[3]));
    // A subscriber of two topics: the same data in the same order, each frame with its own
    // cursor standing on that event.
    let mut text = String::new();
    while text.matches("\n\n").count() < 4 {
        text.push_str(std::str::from_utf8(&chunk(&mut multi).await).unwrap());
    }
    let frames: Vec<&str> = text.strip_suffix("\n\n").unwrap().split("\n\n").collect();
    assert_eq!(frames.len(), 4);
    for (frame, (data, event)) in frames.iter().zip(&published) {
        let (head, id) = frame.split_once("\nid: ").unwrap();
        assert_eq!(head, format!("data: {data}"));
        let cursor = Cursor::parse(id).unwrap();
        assert_eq!(cursor.position(&topic("t")), Some(event.seq));
        assert!(cursor.position(&topic("u")).is_some());
    }
}

#[tokio::test]
async fn gap_comes_before_any_cursor() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).into_router();
    hub.publish(NewEvent::new(topic("t"), "kept")).await.unwrap();
    let mut body = open_body(&router, "/?topic=t", Some("garbage")).await;
    // No `id:` before the gap notice: a client that drops here still gets the gap next time.
    assert_eq!(chunk(&mut body).await, "retry: 3000\n\n");
    // Then the gap notice with its cursor, then the event (in one chunk or two).
    let mut text = String::new();
    while !text.contains("data: kept\n") {
        text.push_str(std::str::from_utf8(&chunk(&mut body).await).unwrap());
    }
    let (gap, kept) = text.split_once("\n\n").unwrap();
    assert!(gap.starts_with("event: tidings.gap\ndata: {\"topics\":[\"t\"]}\nid: "), "{gap}");
    assert!(kept.starts_with("data: kept\nid: "), "{kept}");
}

#[tokio::test(start_paused = true)]
async fn heartbeat_is_sent_after_each_idle_interval() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).into_router();
    let mut body = open_body(&router, "/?topic=t", None).await;
    chunk(&mut body).await;
    let opened = tokio::time::Instant::now();
    assert_eq!(chunk(&mut body).await, ":\n\n");
    assert_eq!(opened.elapsed(), Duration::from_secs(15), "default heartbeat is 15 s");
    // An event resets the idle timer.
    tokio::time::advance(Duration::from_secs(10)).await;
    hub.publish(NewEvent::new(topic("t"), "e")).await.unwrap();
    assert!(chunk(&mut body).await.starts_with(b"data: e\nid: "));
    let after_event = tokio::time::Instant::now();
    assert_eq!(chunk(&mut body).await, ":\n\n");
    assert_eq!(after_event.elapsed(), Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_interval_is_configurable() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).heartbeat(Duration::from_secs(2)).into_router();
    let mut body = open_body(&router, "/?topic=t", None).await;
    chunk(&mut body).await;
    let opened = tokio::time::Instant::now();
    for i in 1..=3 {
        assert_eq!(chunk(&mut body).await, ":\n\n");
        assert_eq!(opened.elapsed(), Duration::from_secs(2 * i));
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_a_jittered_retry_and_ends() {
    let hub = Hub::builder(MemoryStore::new())
        .reconnect_jitter(Duration::from_secs(2)..=Duration::from_secs(4))
        .build();
    let router = Sse::new(hub.clone()).into_router();
    let mut body = open_body(&router, "/?topic=t", None).await;
    chunk(&mut body).await;
    hub.shutdown();
    let retry = String::from_utf8(chunk(&mut body).await.to_vec()).unwrap();
    let ms: u64 = retry.strip_prefix("retry: ").and_then(|r| r.strip_suffix("\n\n")).unwrap().parse().unwrap();
    assert!((2000..=4000).contains(&ms), "{retry:?}");
    assert!(http_body_util::BodyDataStream::new(&mut body).next().await.is_none(), "stream ended");
    // New requests are refused while shutting down.
    let response = router
        .clone()
        .oneshot(Request::get("/?topic=t").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn a_burst_is_gathered_into_few_writes_in_order() {
    let hub = Hub::new(MemoryStore::new());
    let router = Sse::new(hub.clone()).into_router();
    let first = hub.publish(NewEvent::new(topic("t"), "0")).await.unwrap().cursor().to_string();
    for i in 1..1000 {
        hub.publish(NewEvent::new(topic("t"), i.to_string())).await.unwrap();
    }
    let mut body = open_body(&router, "/?topic=t", Some(&first)).await;
    let (mut text, mut chunks) = (String::new(), 0);
    while text.matches("\nid: ").count() < 999 {
        text.push_str(std::str::from_utf8(&chunk(&mut body).await).unwrap());
        chunks += 1;
    }
    let (_preamble, events) = text.split_once("\n\n").unwrap();
    let data: Vec<&str> = events.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let expected: Vec<String> = (1..1000).map(|i| i.to_string()).collect();
    assert!(data == expected, "events out of order or missing ({} received)", data.len());
    assert!(chunks < 20, "999 small events took {chunks} chunks");
}

// ---- Stalled sockets ------------------------------------------------------------------------

/// Opens a stream with a raw TCP client that then never reads.
async fn stalled_client(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /events?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    stream
}

/// Reports each disconnection on a channel.
struct Disconnections(tokio::sync::mpsc::UnboundedSender<()>);

impl tidings_core::Lifecycle for Disconnections {
    fn on_disconnect(&self, _: &tidings_core::Connection, _: &tidings_core::Disconnect) {
        let _ = self.0.send(());
    }
}

async fn stalled_server(
    guard: Option<Duration>,
) -> (Hub, std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use axum::serve::ListenerExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hub = Hub::builder(MemoryStore::new()).lifecycle(Disconnections(tx)).build();
    let app = axum::Router::new().route("/events", Sse::new(hub.clone()).method_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match guard {
        Some(t) => {
            let listener = listener.tap_io(tidings_server::stall_timeout(t));
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        }
        None => {
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        }
    }
    (hub, addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_socket_stops_draining_is_disconnected() {
    let (guarded, guarded_addr, mut guarded_gone) = stalled_server(Some(Duration::from_secs(1))).await;
    let (plain, plain_addr, _plain_gone) = stalled_server(None).await;
    let _a = stalled_client(guarded_addr).await;
    let _b = stalled_client(plain_addr).await;
    while guarded.subscriber_count() < 1 || plain.subscriber_count() < 1 {
        tokio::task::yield_now().await;
    }
    // 16 MiB to each: far more than the socket buffers hold.
    let blob: std::sync::Arc<str> = "z".repeat(256 * 1024).into();
    for _ in 0..64 {
        guarded.publish(NewEvent::new(topic("t"), blob.clone())).await.unwrap();
        plain.publish(NewEvent::new(topic("t"), blob.clone())).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), guarded_gone.recv())
        .await
        .expect("the stalled client was never disconnected");
    assert_eq!(guarded.subscriber_count(), 0);
    // The same stall without the guard keeps its connection: the guard made the difference.
    assert_eq!(plain.subscriber_count(), 1);
}
