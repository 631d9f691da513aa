//! What long-polling promises beyond the conformance suite: the batch format, timeouts,
//! batch bounds, and where a gap may stand.

use std::time::Duration;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use tidings_core::{Hub, MemoryStore, NewEvent, Retention, Topic};
use tidings_longpoll::LongPoll;
use tower::ServiceExt;

async fn get(router: &axum::Router, uri: &str) -> (u16, serde_json::Value) {
    let response = router.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn publish(hub: &Hub, topic: &str, data: &str) -> String {
    hub.publish(NewEvent::new(Topic::new(topic), data)).await.unwrap().cursor().to_string()
}

fn data(batch: &serde_json::Value) -> Vec<&str> {
    batch["events"].as_array().unwrap().iter().map(|e| e["data"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn first_poll_answers_at_once_with_the_end_of_the_log() {
    let hub = Hub::new(MemoryStore::new());
    let router = LongPoll::new(hub.clone()).into_router();
    publish(&hub, "t", "old").await;
    let (status, batch) = get(&router, "/?topic=t").await;
    assert_eq!(status, 200);
    assert_eq!(batch["events"], serde_json::json!([]));
    assert_eq!(batch["gap"], serde_json::Value::Null);
    let cursor = batch["cursor"].as_str().unwrap().to_owned();
    publish(&hub, "t", "new").await;
    let (_, batch) = get(&router, &format!("/?topic=t&cursor={cursor}")).await;
    assert_eq!(data(&batch), ["new"]);
    let event = &batch["events"][0];
    assert_eq!(event["topic"], "t");
    assert_eq!(event["event"], serde_json::Value::Null);
    assert_eq!(event["id"], batch["cursor"]);
}

#[tokio::test(start_paused = true)]
async fn poll_waits_for_the_timeout_then_answers_empty_with_the_same_position() {
    let hub = Hub::new(MemoryStore::new());
    let router = LongPoll::new(hub.clone()).into_router();
    let (_, first) = get(&router, "/?topic=t").await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let started = tokio::time::Instant::now();
    let (_, batch) = get(&router, &format!("/?topic=t&cursor={cursor}&timeout=7")).await;
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    assert_eq!(batch["events"], serde_json::json!([]));
    assert_eq!(batch["cursor"], cursor.as_str());
    let started = tokio::time::Instant::now();
    get(&router, &format!("/?topic=t&cursor={cursor}")).await;
    assert_eq!(started.elapsed(), Duration::from_secs(25), "default timeout");
}

#[tokio::test(start_paused = true)]
async fn poll_answers_as_soon_as_an_event_exists() {
    let hub = Hub::new(MemoryStore::new());
    let router = LongPoll::new(hub.clone()).into_router();
    let (_, first) = get(&router, "/?topic=t").await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let publisher = hub.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        publish(&publisher, "t", "ping").await;
    });
    let started = tokio::time::Instant::now();
    let (_, batch) = get(&router, &format!("/?topic=t&cursor={cursor}&timeout=60")).await;
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(data(&batch), ["ping"]);
}

#[tokio::test]
async fn invalid_timeouts_are_400() {
    let hub = Hub::new(MemoryStore::new());
    let router = LongPoll::new(hub).into_router();
    for t in ["61", "-1", "NaN", "inf", "soon", ""] {
        let (status, body) = get(&router, &format!("/?topic=t&timeout={t}")).await;
        assert_eq!(status, 400, "timeout={t}");
        assert!(body["error"].as_str().unwrap().contains("timeout"), "{body}");
    }
}

#[tokio::test]
async fn batches_are_bounded_by_count_and_bytes() {
    let hub = Hub::new(MemoryStore::new());
    let router = LongPoll::new(hub.clone()).max_batch_events(3).max_batch_bytes(10).into_router();
    let (_, first) = get(&router, "/?topic=t").await;
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    for d in ["a", "b", "c", "d", "eeeeeeee", "ffffffff", "g"] {
        publish(&hub, "t", d).await;
    }
    let mut batches = Vec::new();
    for _ in 0..4 {
        let (_, batch) = get(&router, &format!("/?topic=t&cursor={cursor}&timeout=0")).await;
        cursor = batch["cursor"].as_str().unwrap().to_owned();
        batches.push(data(&batch).join(""));
    }
    // 3 events at most; and a batch closes once it holds 10 bytes or more.
    assert_eq!(batches, ["abc", "deeeeeeeeffffffff", "g", ""]);
}

#[tokio::test]
async fn a_gap_is_reported_at_the_start_of_a_batch_with_its_own_id() {
    let hub = Hub::builder(MemoryStore::with_retention(Retention::default().max_events(2))).build();
    let router = LongPoll::new(hub.clone()).into_router();
    let old = publish(&hub, "t", "gone").await;
    for d in ["x", "y", "z"] {
        publish(&hub, "t", d).await;
    }
    let (_, batch) = get(&router, &format!("/?topic=t&cursor={old}")).await;
    assert_eq!(batch["gap"]["topics"], serde_json::json!(["t"]));
    assert_eq!(data(&batch), ["y", "z"]);
    // The gap's id is the position just before what remains: polling from it replays y, z.
    let gap_id = batch["gap"]["id"].as_str().unwrap();
    let (_, again) = get(&router, &format!("/?topic=t&cursor={gap_id}")).await;
    assert_eq!(again["gap"], serde_json::Value::Null);
    assert_eq!(data(&again), ["y", "z"]);
}
