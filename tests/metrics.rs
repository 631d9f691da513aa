//! `GET /metrics` on the demo: Prometheus text with what the library recorded, checked against
//! what this test did to a fresh demo process (its own recorder, so nothing else counts).

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use tidings_test_support::Demo;

/// The value of the sample `name{labels}` (exactly as Prometheus text writes it), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics(http: &reqwest::Client, base: &str) -> String {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    response.text().await.unwrap()
}

/// Reads /metrics until every `(series, value)` holds: counters are added when a burst ends,
/// a moment after the client has its bytes.
async fn until(http: &reqwest::Client, base: &str, expected: &[(&str, f64)]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(http, base).await;
        if expected.iter().all(|(series, value)| sample(&text, series) == Some(*value)) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached {expected:?}:\n{text}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_deliveries_replays_gaps_and_refusals() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = format!("sqlite:{}", dir.join("events.db").display());
    let demo = Demo::start(0, &["--store", &store]);
    let (http, base) = (reqwest::Client::new(), demo.url());

    // Two SSE streams on `m`, then three events published: six deliveries.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = http.get(format!("{base}/events?topic=m")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response.bytes_stream());
    }
    until(&http, &base, &[("tidings_subscriptions{transport=\"sse\"}", 2.0)]).await;
    let mut first = None;
    for i in 0..3 {
        let id = common::publish(&http, &base, "m", &format!("event {i}")).await.expect("published");
        first.get_or_insert(id);
    }
    for body in &mut streams {
        let mut text = String::new();
        while !text.contains("data: event 2") {
            text.push_str(std::str::from_utf8(&body.next().await.expect("open").unwrap()).unwrap());
        }
    }
    // A long-poll resuming after the first event replays two from the store; a foreign cursor
    // is a gap; a bad topic is a 400.
    let batch = common::poll(&http, &base, "m", first.as_deref(), 0).await;
    assert_eq!(batch.data, ["event 1", "event 2"]);
    let gap = common::poll(&http, &base, "m", Some("not-a-cursor"), 0).await;
    assert!(gap.gap.is_some());
    let bad = http.get(format!("{base}/events?topic=%0A")).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let text = until(
        &http,
        &base,
        &[
            ("tidings_subscriptions{transport=\"sse\"}", 2.0),
            ("tidings_subscriptions_opened_total{transport=\"sse\"}", 2.0),
            ("tidings_deliveries_total{transport=\"sse\"}", 6.0),
            // Two replayed after the first event, then all three after the gap notice.
            ("tidings_deliveries_total{transport=\"longpoll\"}", 5.0),
            ("tidings_replays_total{transport=\"longpoll\"}", 2.0),
            ("tidings_gaps_total{transport=\"longpoll\"}", 1.0),
            ("tidings_http_errors_total{status=\"400\"}", 1.0),
            ("tidings_subscriptions{transport=\"longpoll\"}", 0.0),
        ],
    )
    .await;
    // The demo's ticker publishes too, every 2.5 s.
    assert!(sample(&text, "tidings_published_total").is_some_and(|n| n >= 3.0), "{text}");
    // Store latency is a histogram (a summary in Prometheus text) per operation.
    assert!(sample(&text, "tidings_store_seconds_count{op=\"append\"}").is_some_and(|n| n >= 3.0), "{text}");
    assert!(text.contains("tidings_http_connections"), "{text}");
    // Every metric the library names is described.
    assert!(text.contains("# HELP tidings_deliveries_total Events delivered to subscribers"), "{text}");

    // Streams closing are seen as such.
    drop(streams);
    until(&http, &base, &[("tidings_subscriptions{transport=\"sse\"}", 0.0)]).await;
}
