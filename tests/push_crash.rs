//! Web Push under `kill -9`: the demo server (SQLite store, SQLite push registry) is killed at
//! random moments while events are published to topics with push subscriptions. After each
//! restart the dispatcher resumes from the saved cursors: every acknowledged event reaches the
//! push service, in order per topic, and the only repeats are the sends in flight at a kill
//! (at most one per subscription per kill), which the service worker drops by id.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::publish;
use tidings_test_support::Demo;
use tidings_webpush::testing::LocalPushService;

const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_pushing_loses_nothing_and_repeats_only_what_was_in_flight() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("push-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let service = LocalPushService::start().await;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, service.root_certificate_pem()).unwrap();
    let store = format!("sqlite:{}", dir.join("events.db").display());
    let host_port = service.host_port();
    let ca_path = ca.display().to_string();
    let env = [("TIDINGS_PUSH_ALLOW_HOSTS", host_port.as_str()), ("TIDINGS_PUSH_CA_FILE", ca_path.as_str())];
    let start = || Demo::start_with_env(0, &["--store", &store], &env);
    let http = reqwest::Client::new();
    let mut demo = start();

    // Two browsers: one wants both topics, one only "b".
    let subscriptions = [(service.subscribe(), vec!["a", "b"]), (service.subscribe(), vec!["b"])];
    for (sub, topics) in &subscriptions {
        let mut body = sub.subscription.to_json();
        body["topics"] = serde_json::json!(topics);
        let r = http
            .post(format!("{}/push/subscriptions", demo.url()))
            .header("content-type", "application/json")
            .body(body.to_string()).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }

    let next = Arc::new(AtomicU32::new(0));
    let acked: Arc<Mutex<Vec<(String, u32)>>> = Arc::new(Mutex::new(Vec::new()));
    // The number of acknowledged publishes, for the rounds to wait on.
    let (acks, mut acks_seen) = tokio::sync::watch::channel(0usize);
    let acks = Arc::new(acks);
    for _ in 0..ROUNDS {
        let publisher = {
            let (http, url, next, acked, acks) = (http.clone(), demo.url(), next.clone(), acked.clone(), acks.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let topic = if n % 2 == 0 { "a" } else { "b" };
                    match publish(&http, &url, topic, &n.to_string()).await {
                        Some(_) => {
                            acked.lock().unwrap().push((topic.to_owned(), n));
                            acks.send_modify(|a| *a += 1);
                        }
                        None => return,
                    }
                }
            })
        };
        // Every round publishes something, however loaded the machine: the crash comes after
        // at least 10 acknowledged publishes of this round, at a random moment 0 to 300 ms
        // later (the moment is what varies).
        let target = *acks_seen.borrow() + 10;
        tokio::time::timeout(Duration::from_secs(60), acks_seen.wait_for(|&a| a >= target))
            .await
            .expect("the demo acknowledges publishes")
            .expect("the publisher is alive");
        let delay = tidings::Epoch::random().raw() % 300;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        demo.kill();
        publisher.await.unwrap();
        demo = start();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 50, "only {} publishes were acknowledged", acked.len());

    for (sub, topics) in &subscriptions {
        let wanted: HashSet<u32> =
            acked.iter().filter(|(t, _)| topics.contains(&t.as_str())).map(|(_, n)| *n).collect();
        // Wait until every wanted event has arrived (by id, as the service worker counts).
        let arrived = service
            .wait_until(Duration::from_secs(60), || {
                let got: HashSet<u32> = service
                    .messages(&sub.id)
                    .iter()
                    .filter_map(|m| m.json()["data"].as_str().and_then(|d| d.parse().ok()))
                    .collect();
                wanted.is_subset(&got)
            })
            .await;
        let messages = service.messages(&sub.id);
        assert!(arrived, "subscription {topics:?}: not every acknowledged event was pushed ({} pushes)", messages.len());

        let mut shown = HashSet::new();
        let mut repeats = 0;
        let mut last: HashMap<String, u32> = HashMap::new();
        for m in &messages {
            let json = m.json();
            assert!(json.get("gap").is_none(), "no gap on a durable store: {json}");
            let id = json["id"].as_str().unwrap().to_owned();
            if !shown.insert(id) {
                repeats += 1; // the service worker drops it
                continue;
            }
            let topic = json["topic"].as_str().unwrap().to_owned();
            assert!(topics.contains(&topic.as_str()), "topic {topic} was not subscribed");
            let n: u32 = json["data"].as_str().unwrap().parse().unwrap();
            if let Some(prev) = last.insert(topic.clone(), n) {
                assert!(prev < n, "{topic}: {n} after {prev}: out of order");
            }
        }
        assert!(
            repeats <= ROUNDS,
            "{repeats} repeats, more than the {ROUNDS} sends that can be in flight at {ROUNDS} kills"
        );
        println!("subscription {topics:?}: {} pushes, {} distinct, {repeats} repeated", messages.len(), shown.len());
    }
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
}
