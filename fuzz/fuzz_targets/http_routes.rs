//! Whole requests to the SSE, long-poll and publish routes over a hub that holds a few events:
//! any request line, `Last-Event-ID` and body. Never a panic and never a 5xx; a stream or a
//! poll answer starts as the protocol says, and a long-poll body is JSON with a cursor.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tidings_core::{Hub, MemoryStore, NewEvent, Topic};
use tower::ServiceExt;

struct World {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let router = runtime.block_on(async {
            let hub = Hub::new(MemoryStore::new());
            for (topic, data) in [("a", "one"), ("b", "two\nlines"), ("a", "three")] {
                hub.publish(NewEvent::new(Topic::new(topic), data)).await.unwrap();
            }
            axum::Router::new()
                .route("/events", tidings_sse::Sse::new(hub.clone()).method_router())
                .route(
                    "/poll",
                    tidings_longpoll::LongPoll::new(hub.clone())
                        .default_timeout(Duration::ZERO)
                        .max_timeout(Duration::ZERO)
                        .method_router(),
                )
                .route("/publish", tidings_http::publish_route(hub))
        });
        World { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    // Line 1: method and target ("GET /poll?topic=a"); line 2: Last-Event-ID; rest: the body.
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let Some(Ok(line)) = lines.next().map(std::str::from_utf8) else { return };
    let header = lines.next();
    let body = lines.next().unwrap_or_default().to_vec();
    let (method, target) = line.split_once(' ').unwrap_or(("GET", line));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return };
    let mut request = http::Request::builder().method(method).uri(target);
    if let Some(value) = header.and_then(|h| http::HeaderValue::from_bytes(h).ok()) {
        request = request.header("last-event-id", value);
    }
    let Ok(request) = request.body(Body::from(body)) else { return };
    let path = request.uri().path().to_owned();
    let world = world();
    world.runtime.block_on(async {
        let response = world.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        assert!(!status.is_server_error(), "{status} for {line:?}");
        if status.is_success() && path == "/events" {
            // The stream's first frame is ready at once: the opening `retry:`.
            let first = tokio::time::timeout(Duration::from_secs(5), response.into_body().frame()).await;
            let frame = first.expect("the stream starts at once").expect("a frame").expect("no error");
            let bytes = frame.into_data().expect("data");
            assert!(bytes.starts_with(b"retry: "), "{:?}", String::from_utf8_lossy(&bytes));
        } else if status.is_success() && path == "/poll" {
            let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
                .await
                .expect("a poll with timeout 0 answers at once")
                .expect("a body")
                .to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert!(json["cursor"].is_string(), "{json}");
        }
    });
});
