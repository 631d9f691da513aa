//! The hub's log outlives the hub: `kill -9` on SQLite loses no acknowledged update, and two
//! hubs on one Redis serve one log, so a subscriber resumes on the other hub.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{PUBLISHER_KEY, TestHub, data, publisher, settings};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;

/// The `tidings-hub` binary, started on a free port with `args`.
struct HubProcess {
    child: Child,
    url: String,
}

impl HubProcess {
    fn start(args: &[&str]) -> HubProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings-hub"))
            .args(["--addr", "127.0.0.1:0", "--anonymous"])
            .args(args)
            .env("MERCURE_PUBLISHER_JWT_KEY", PUBLISHER_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tidings-hub starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = lines.next().and_then(Result::ok).unwrap_or_default();
        let url = banner
            .split(" at ")
            .nth(1)
            .and_then(|rest| rest.split("/.well-known").next())
            .unwrap_or_else(|| panic!("no banner: {banner:?}"))
            .to_owned();
        std::thread::spawn(move || for _ in lines {});
        HubProcess { child, url }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_publishing_loses_no_acknowledged_update() {
    let dir = std::env::temp_dir().join(format!("tidings-hub-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite:{}", dir.join("hub.db").display());
    let mut hub = HubProcess::start(&["--store", &store]);
    let endpoint = format!("{}/.well-known/mercure", hub.url);

    // Four publishers at once, each numbering its updates; an update counts once the hub
    // answered 200.
    let token = publisher(&["*"]);
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (endpoint, token, acked) = (endpoint.clone(), token.clone(), acked_tx.clone());
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0.. {
                let id = format!("p{p}-{n}");
                let body = serde_urlencoded::to_string([("topic", "https://example.com/log"), ("data", id.as_str()), ("id", id.as_str())]).unwrap();
                let sent = http.post(&endpoint).bearer_auth(&token).header("content-type", "application/x-www-form-urlencoded").body(body).send().await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        assert_eq!(response.text().await.unwrap(), id);
                        let _ = acked.send(id);
                    }
                    // The hub is gone: this one was never acknowledged.
                    _ => return,
                }
            }
        }));
    }
    drop(acked_tx);
    // Kill it in the middle of the stream of publishes.
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 200 {
        acknowledged.push(acked_rx.recv().await.expect("publishes are acknowledged"));
    }
    hub.kill();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    while let Ok(id) = acked_rx.try_recv() {
        acknowledged.push(id);
    }

    // Started again on the same file: every acknowledged update is there, once, in the order
    // the hub acknowledged each publisher's.
    let hub = HubProcess::start(&["--store", &store]);
    let after = reqwest::Client::new()
        .post(format!("{}/.well-known/mercure", hub.url))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=https%3A%2F%2Fexample.com%2Flog&data=after")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    let response = reqwest::Client::new()
        .get(format!("{}/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Flog&lastEventID=earliest", hub.url))
        .send()
        .await
        .unwrap();
    let mut events = response.bytes_stream().eventsource();
    let mut replayed = Vec::new();
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
        if event.data == "after" {
            break;
        }
        assert_eq!(event.id, event.data);
        replayed.push(event.data);
    }
    let mut seen = std::collections::HashSet::new();
    assert!(replayed.iter().all(|id| seen.insert(id.clone())), "no update twice");
    for id in &acknowledged {
        assert!(seen.contains(id), "acknowledged {id} was lost ({} acknowledged, {} replayed)", acknowledged.len(), replayed.len());
    }
    for p in 0..4 {
        let prefix = format!("p{p}-");
        let order: Vec<u64> = replayed.iter().filter_map(|id| id.strip_prefix(&prefix)?.parse().ok()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "publisher {p}'s updates in its order: {order:?}");
    }
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn two_hubs_on_one_redis_serve_one_log() {
    let redis = tidings_test_support::RedisServer::start();
    let open = || async {
        let store = tidings_redis::RedisStore::connect(&redis.url(), tidings_redis::RedisOptions::default()).await.unwrap();
        TestHub::start(Arc::new(store), settings()).await
    };
    let (a, b, c) = (open().await, open().await, open().await);
    let token = publisher(&["*"]);

    // A subscriber of hub A, with a template, reads one update and leaves.
    let template = "https://example.com/rooms/{room}";
    let mut on_a = a.follow(&[template]).await;
    let (status, left_at) = a.post(Some(&token), &[("topic", "https://example.com/rooms/1"), ("data", "seen"), ("id", "msg-1")]).await;
    assert_eq!((status, left_at.as_str()), (200, "msg-1"));
    assert_eq!(on_a.next().await.id, "msg-1");
    drop(on_a);

    // Both hubs publish while it is away, to rooms old and new.
    assert_eq!(b.post(Some(&token), &[("topic", "https://example.com/rooms/2"), ("data", "from b"), ("id", "msg-2")]).await.0, 200);
    assert_eq!(a.post(Some(&token), &[("topic", "https://example.com/elsewhere"), ("data", "not a room")]).await.0, 200);
    let hub_made = a.publish(&["https://example.com/rooms/1"], "from a").await;
    b.publish(&["https://example.com/rooms/3"], "end").await;

    // It comes back on hub B, which did not publish `msg-1`: B finds it in the log.
    let mut on_b = b.subscribe(&[("topic", template)], &[("last-event-id", "msg-1")]).await;
    assert_eq!(on_b.last_event_id(), Some("msg-1"));
    assert_eq!(data(&on_b.until("end").await), ["from b", "from a", "end"]);
    // An id hub A made resumes on hub B too.
    let mut again = b.subscribe(&[("topic", template)], &[("last-event-id", &hub_made)]).await;
    assert_eq!(data(&again.until("end").await), ["end"]);
    // And on hub C, which has published nothing: its index reads the log at the lookup.
    let mut on_c = c.subscribe(&[("topic", template)], &[("last-event-id", "msg-2")]).await;
    assert_eq!(on_c.last_event_id(), Some("msg-2"));
    assert_eq!(data(&on_c.until("end").await), ["from a", "end"]);
}
