//! The reference example's own test: its routes, served on loopback, do what the page and the
//! README promise.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::time::Duration;

use futures_util::StreamExt;

use tidings::{Hub, MemoryStore};

async fn start() -> (String, Hub) {
    let hub = Hub::new(MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let push = common::memory_web_push(hub.clone()).await;
    let app = sse_demo::app(hub.clone(), &push);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hub)
}

async fn post(base: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/publish"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default())
}

#[tokio::test]
async fn page_is_the_seed_demo() {
    let (base, _hub) = start().await;
    let page = reqwest::get(format!("{base}/")).await.unwrap().text().await.unwrap();
    for needle in ["<title>Server-Sent Events Demo</title>", "Server connected :)", "Server unavailable :(", "/tidings.js", "gap"] {
        assert!(page.contains(needle), "page lacks {needle:?}");
    }
}

#[tokio::test]
async fn publish_answers_201_with_the_cursor_and_the_stream_carries_it() {
    let (base, hub) = start().await;
    let mut stream = reqwest::get(format!("{base}/events")).await.unwrap().bytes_stream();
    // The stream is open once the hub counts its subscription (the default topic `demo`).
    assert_eq!(hub.subscriber_count(), 1);
    let (status, json) = post(&base, r#"{"topic":"demo","event":"my-custom-event","data":"hi\nthere"}"#).await;
    assert_eq!(status, 201);
    let id = json["id"].as_str().unwrap().to_owned();
    let expected = format!("event: my-custom-event\ndata: hi\ndata: there\nid: {id}\n\n");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(&expected) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event did not arrive")
            .expect("stream ended")
            .unwrap();
        seen.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn publish_refuses_bad_input_with_400_json() {
    let (base, _hub) = start().await;
    for (body, needle) in [
        ("not json", "invalid JSON"),
        (r#"{"topic":"","data":"x"}"#, "invalid topic"),
        (r#"{"topic":"a\nb","data":"x"}"#, "invalid topic"),
        (r#"{"topic":"demo","event":"bad\ntype","data":"x"}"#, "invalid event type"),
        (r#"{"topic":"demo"}"#, "invalid JSON"),
    ] {
        let (status, json) = post(&base, body).await;
        assert_eq!(status, 400, "{body}");
        assert!(json["error"].as_str().unwrap().contains(needle), "{body}: {json}");
    }
}

#[tokio::test]
async fn oversized_publish_is_413() {
    let (base, _hub) = start().await;
    let body = serde_json::json!({ "topic": "demo", "data": "x".repeat((1 << 20) + 1) }).to_string();
    let (status, json) = post(&base, body).await;
    assert_eq!(status, 413);
    assert!(json["error"].as_str().unwrap().contains("limit"), "{json}");
}

#[tokio::test(start_paused = true)]
async fn ticker_publishes_the_seed_greeting_every_period() {
    let hub = Hub::new(MemoryStore::new());
    let demo = tidings::Topic::new("demo");
    let mut sub = hub.subscribe(tidings::SubscribeRequest::new(vec![demo])).await.unwrap();
    tokio::spawn(sse_demo::ticker(hub.clone(), Duration::from_millis(2500)));
    let start = tokio::time::Instant::now();
    for k in 1..=3 {
        let Some(tidings::Delivery::Event(e)) = sub.next().await else { panic!() };
        assert_eq!(&*e.event().data, format!("Server says hi! (event #{k})"));
        assert_eq!(e.event().event_type.as_ref().unwrap().as_str(), "my-custom-event");
        assert_eq!(start.elapsed(), Duration::from_millis(2500 * k));
    }
}
