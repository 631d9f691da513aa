//! The SQLite store under `kill -9`: the demo server is killed at random moments while a client
//! publishes continuously; after each restart, a client resuming with its cursor receives every
//! acknowledged event exactly once, in order, and never a gap.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{drain, poll, publish};
use tidings_test_support::Demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_event() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = format!("sqlite:{}", dir.join("events.db").display());
    let http = reqwest::Client::new();
    let mut demo = Demo::start(0, &["--store", &store]);
    assert!(demo.banner.contains("store: sqlite at"), "{}", demo.banner);
    let mut cursor = poll(&http, &demo.url(), "crash", None, 0).await.cursor;

    let next = Arc::new(AtomicU32::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut received: Vec<String> = Vec::new();
    for round in 0..6 {
        let publisher = {
            let (http, url, next, acked) = (http.clone(), demo.url(), next.clone(), acked.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst).to_string();
                    match publish(&http, &url, "crash", &n).await {
                        Some(_) => acked.lock().unwrap().push(n),
                        None => return,
                    }
                }
            })
        };
        // The moment of the crash is what varies: 20 to 400 ms into the round.
        let delay = 20 + tidings::Epoch::random().raw() % 380;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        demo.kill();
        publisher.await.unwrap();
        demo = Demo::start(0, &["--store", &store]);
        let (data, after) = drain(&http, &demo.url(), "crash", cursor).await;
        cursor = after;
        received.extend(data);
        let acked_so_far = acked.lock().unwrap().len();
        assert!(acked_so_far > 0 || round > 0, "round {round} published nothing");
    }

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 50, "only {} publishes were acknowledged", acked.len());
    let numbers: Vec<u32> = received.iter().map(|d| d.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "delivered out of order or twice: {numbers:?}");
    let delivered: std::collections::HashSet<&String> = received.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !delivered.contains(n)).collect();
    assert!(lost.is_empty(), "acknowledged but never delivered: {lost:?}");
}
