//! Every scenario must be able to fail. Deliberately broken adapters and stores, each wrapping
//! a correct one, make the scenarios that guard against their fault fail, while the correct
//! one passes the same scenarios.

use std::sync::Arc;

use async_trait::async_trait;
use tidings_conformance::local::LocalAdapter;
use tidings_conformance::{
    Capabilities, ConnectRequest, MemoryStores, Received, Refused, ServerSettings, StoreFactory,
    Suite, TestClient, TestServer, TransportAdapter, Verdict, run_scenario,
};
use tidings_core::{
    Bounds, Event, Hub, LiveTail, MemoryStore, NewEvent, Page, Retention, Store, StoreError,
    Topic,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Loses the third event of every connection.
    DropsAnEvent,
    /// Delivers the second event of every connection twice.
    RepeatsAnEvent,
    /// Swaps the second and third events of every connection.
    Reorders,
    /// Never sends the cursor back.
    IgnoresTheCursor,
    /// Subscribes to one topic more than asked.
    LeaksATopic,
}

#[derive(Debug, Clone, Copy)]
struct Broken(Fault);

#[async_trait]
impl TransportAdapter for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn capabilities(&self) -> Capabilities {
        LocalAdapter.capabilities()
    }
    async fn serve(&self, hub: Hub, settings: ServerSettings) -> Box<dyn TestServer> {
        Box::new(BrokenServer { fault: self.0, inner: LocalAdapter.serve(hub, settings).await })
    }
}

struct BrokenServer {
    fault: Fault,
    inner: Box<dyn TestServer>,
}

#[async_trait]
impl TestServer for BrokenServer {
    async fn connect(&self, mut request: ConnectRequest) -> Result<Box<dyn TestClient>, Refused> {
        match self.fault {
            Fault::IgnoresTheCursor => request.cursor = None,
            Fault::LeaksATopic => request.topics.push("other".into()),
            _ => {}
        }
        let inner = self.inner.connect(request).await?;
        Ok(Box::new(BrokenClient { fault: self.fault, inner, count: 0, held: None, replay: None }))
    }
}

struct BrokenClient {
    fault: Fault,
    inner: Box<dyn TestClient>,
    count: usize,
    held: Option<Received>,
    replay: Option<Received>,
}

#[async_trait]
impl TestClient for BrokenClient {
    async fn next(&mut self) -> Received {
        if let Some(r) = self.replay.take() {
            return r;
        }
        let got = self.inner.next().await;
        if !matches!(got, Received::Event(_)) {
            return got;
        }
        self.count += 1;
        match (self.fault, self.count) {
            (Fault::DropsAnEvent, 3) => self.inner.next().await,
            (Fault::RepeatsAnEvent, 2) => {
                self.replay = Some(got.clone());
                got
            }
            (Fault::Reorders, 2) => {
                self.held = Some(got);
                let third = self.inner.next().await;
                self.replay = self.held.take();
                third
            }
            _ => got,
        }
    }

    fn cursor(&self) -> Option<String> {
        self.inner.cursor()
    }
}

async fn verdict(transport: impl TransportAdapter, scenario: &str) -> Verdict {
    run_scenario(&Suite::new(transport, MemoryStores), scenario).await
}

async fn caught(fault: Fault, scenarios: &[&str]) {
    for &scenario in scenarios {
        assert_eq!(verdict(LocalAdapter, scenario).await, Verdict::Passed, "control run of {scenario}");
        let broken = verdict(Broken(fault), scenario).await;
        assert!(
            matches!(broken, Verdict::Failed(_)),
            "{scenario} did not catch {fault:?}: {broken:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_event_is_caught() {
    caught(
        Fault::DropsAnEvent,
        &["events_arrive_in_log_order", "replay_resumes_after_cursor", "fan_out_reaches_a_thousand_clients"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_an_event_is_caught() {
    caught(
        Fault::RepeatsAnEvent,
        &["events_arrive_in_log_order", "two_hundred_reconnects_lose_and_repeat_nothing"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_is_caught() {
    caught(
        Fault::Reorders,
        &["events_arrive_in_log_order", "concurrent_publishers_keep_per_publisher_order"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignoring_the_cursor_is_caught() {
    caught(
        Fault::IgnoresTheCursor,
        &[
            "replay_resumes_after_cursor",
            "retention_loss_yields_gap_then_what_remains",
            "malformed_cursor_yields_gap_not_error",
            "other_epoch_cursor_yields_gap",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaking_a_topic_is_caught() {
    caught(Fault::LeaksATopic, &["unsubscribed_topics_never_arrive"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_capability_is_not_applicable_never_passed() {
    // The local adapter sends no heartbeats; the heartbeat scenario must say so.
    assert_eq!(
        verdict(LocalAdapter, "idle_stream_gets_heartbeats").await,
        Verdict::NotApplicable("heartbeats")
    );
}

/// A store that loses every fifth event on reads.
#[derive(Debug)]
struct LossyStore(MemoryStore);

#[async_trait]
impl Store for LossyStore {
    async fn append(&self, event: NewEvent) -> Result<Event, StoreError> {
        self.0.append(event).await
    }
    async fn bounds(&self, topic: &Topic) -> Result<Bounds, StoreError> {
        self.0.bounds(topic).await
    }
    async fn read_after(&self, topic: &Topic, after: u64, limit: usize) -> Result<Page, StoreError> {
        let mut page = self.0.read_after(topic, after, limit).await?;
        page.events.retain(|e| e.seq % 5 != 0);
        Ok(page)
    }
    async fn live_tail(&self) -> Result<LiveTail, StoreError> {
        self.0.live_tail().await
    }
}

#[derive(Debug)]
struct LossyStores;

#[async_trait]
impl StoreFactory for LossyStores {
    fn name(&self) -> &'static str {
        "lossy"
    }
    async fn open(&self, retention: Retention) -> Arc<dyn Store> {
        Arc::new(LossyStore(MemoryStore::with_retention(retention)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_store_fails_store_and_transport_scenarios() {
    let stores: Arc<dyn StoreFactory> = Arc::new(LossyStores);
    let (_, run) = tidings_conformance::stores::ALL
        .iter()
        .find(|(n, _)| *n == "read_after_returns_what_follows_in_order")
        .unwrap();
    assert!(run(stores).await.is_err(), "the store suite accepted a lossy store");
    let suite = Suite::new(LocalAdapter, LossyStores);
    let v = run_scenario(&suite, "replay_resumes_after_cursor").await;
    assert!(matches!(v, Verdict::Failed(_)), "replay over a lossy store: {v:?}");
}
