//! Two demo processes share one Redis: a client of node A receives what node B publishes; when
//! A dies, the client resumes on B with its cursor and receives exactly what it missed.

mod common;

use common::{drain, poll, publish};
use tidings_test_support::{Demo, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_from_a_dead_node_to_another_and_misses_nothing() {
    let redis = RedisServer::start();
    let store = redis.url();
    let a = Demo::start(0, &["--store", &store]);
    let b = Demo::start(0, &["--store", &store]);
    assert!(a.banner.contains("store: redis at"), "{}", a.banner);
    let http = reqwest::Client::new();

    // Subscribed on A (a long poll waiting there), published on B.
    let start = poll(&http, &a.url(), "news", None, 0).await.cursor;
    let waiting = {
        let (http, url, start) = (http.clone(), a.url(), start.clone());
        tokio::spawn(async move { poll(&http, &url, "news", Some(&start), 30).await })
    };
    // Publish until the waiting poll answers (it may not have reached A's hub yet when the
    // first publish lands; then the next poll would bring it anyway).
    publish(&http, &b.url(), "news", "from B").await.expect("B publishes");
    let batch = waiting.await.unwrap();
    assert_eq!(batch.data, ["from B"], "A's client received B's event");

    // A dies. The client takes its cursor to B.
    a.kill();
    let missed = ["missed 1", "missed 2\nwith a newline", "missed 3"];
    for m in missed {
        publish(&http, &b.url(), "news", m).await.expect("B publishes");
    }
    let (data, _) = drain(&http, &b.url(), "news", batch.cursor).await;
    assert_eq!(data, missed, "exactly what was missed, in order");
}
