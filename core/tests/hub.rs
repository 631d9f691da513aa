//! Hub behaviour that the transport suite does not reach: sharing, hooks, limits, a store whose
//! tail never opens, the local tail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tidings_core::{
    Bounds, Connection, Delivery, Disconnect, Event, Hub, Lifecycle, LiveTail, LocalTail,
    MemoryStore, NewEvent, Page, PublishError, Store, StoreError, SubscribeError, SubscribeRequest, Topic,
};

fn topic() -> Topic {
    Topic::new("t")
}

#[tokio::test]
async fn every_subscriber_receives_the_same_shared_event() {
    let hub = Hub::new(MemoryStore::new());
    let mut subs = Vec::new();
    for _ in 0..10 {
        subs.push(hub.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap());
    }
    hub.publish(NewEvent::new(topic(), "x")).await.unwrap();
    let mut shared = Vec::new();
    for sub in &mut subs {
        let Some(Delivery::Event(e)) = sub.next().await else { panic!("no event") };
        shared.push(e);
    }
    assert!(shared.iter().all(|e| Arc::ptr_eq(e, &shared[0])), "one allocation for all subscribers");
}

#[tokio::test]
async fn a_single_topic_subscription_stands_just_after_each_event_it_yields() {
    let hub = Hub::new(MemoryStore::new());
    let mut single = hub.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap();
    let mut multi = hub.subscribe(SubscribeRequest::new(vec![topic(), Topic::new("u")])).await.unwrap();
    let first = hub.publish(NewEvent::new(topic(), "1")).await.unwrap();
    let second = hub.publish(NewEvent::new(topic(), "2")).await.unwrap();
    assert!(!single.stands_just_after(&first), "not before it is yielded");
    let Some(Delivery::Event(e)) = single.next().await else { panic!("no event") };
    assert!(single.stands_just_after(e.event()));
    assert_eq!(single.cursor(), first.cursor(), "the subscriber's cursor is the event's own");
    assert!(!single.stands_just_after(&second));
    let Some(Delivery::Event(e)) = multi.next().await else { panic!("no event") };
    assert!(!multi.stands_just_after(e.event()), "two topics: the cursor holds both");
    assert_ne!(multi.cursor(), first.cursor());
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Lifecycle for Recorder {
    fn on_connect(&self, c: &Connection) {
        self.0.lock().unwrap().push(format!("connect {} {} {:?} {:?}", c.id, c.transport, c.topics, c.cursor));
    }
    fn on_disconnect(&self, c: &Connection, d: &Disconnect) {
        self.0.lock().unwrap().push(format!("disconnect {} after {}", c.id, d.delivered));
    }
}

#[tokio::test]
async fn lifecycle_hooks_see_each_connection_come_and_go() {
    let recorder = Arc::new(Recorder::default());
    let hub = Hub::builder(MemoryStore::new()).lifecycle(recorder.clone()).build();
    let mut sub = hub
        .subscribe(SubscribeRequest::new(vec![topic()]).transport("sse").cursor(Some("garbage")))
        .await
        .unwrap();
    hub.publish(NewEvent::new(topic(), "x")).await.unwrap();
    assert!(matches!(sub.next().await, Some(Delivery::Gap(_))));
    assert!(matches!(sub.next().await, Some(Delivery::Event(_))));
    assert_eq!(hub.subscriber_count(), 1);
    drop(sub);
    assert_eq!(hub.subscriber_count(), 0);
    assert_eq!(
        *recorder.0.lock().unwrap(),
        ["connect 1 sse [\"t\"] Some(\"garbage\")", "disconnect 1 after 1"]
    );
}

#[tokio::test]
async fn oversized_payloads_are_refused_and_not_stored() {
    let hub = Hub::builder(MemoryStore::new()).max_data_len(8).build();
    let err = hub.publish(NewEvent::new(topic(), "123456789")).await.unwrap_err();
    assert!(matches!(err, PublishError::TooLarge { len: 9, limit: 8 }), "{err}");
    assert_eq!(hub.store().bounds(&topic()).await.unwrap().last, 0);
    hub.publish(NewEvent::new(topic(), "12345678")).await.unwrap();
}

#[tokio::test]
async fn duplicate_topics_count_once_and_limits_apply() {
    let hub = Hub::builder(MemoryStore::new()).max_topics(2).build();
    let sub = hub.subscribe(SubscribeRequest::new(vec![topic(), topic(), Topic::new("u")])).await.unwrap();
    assert_eq!(sub.topics().count(), 2);
    let err = hub
        .subscribe(SubscribeRequest::new(vec![topic(), Topic::new("u"), Topic::new("v")]))
        .await
        .unwrap_err();
    assert!(matches!(err, SubscribeError::TooManyTopics { limit: 2 }));
    assert!(matches!(hub.subscribe(SubscribeRequest::new(vec![])).await, Err(SubscribeError::NoTopics)));
}

/// A store whose live tail can never be opened.
#[derive(Debug)]
struct NoTail(MemoryStore);

#[async_trait]
impl Store for NoTail {
    async fn append(&self, event: NewEvent) -> Result<Event, StoreError> {
        self.0.append(event).await
    }
    async fn bounds(&self, topic: &Topic) -> Result<Bounds, StoreError> {
        self.0.bounds(topic).await
    }
    async fn read_after(&self, topic: &Topic, after: u64, limit: usize) -> Result<Page, StoreError> {
        self.0.read_after(topic, after, limit).await
    }
    async fn live_tail(&self) -> Result<LiveTail, StoreError> {
        Err(StoreError::new("tail unavailable"))
    }
}

#[tokio::test(start_paused = true)]
async fn subscribing_fails_clearly_when_the_live_tail_never_opens() {
    let hub = Hub::new(NoTail(MemoryStore::new()));
    let started = tokio::time::Instant::now();
    let err = hub.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap_err();
    assert!(matches!(err, SubscribeError::Store(_)), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

/// A memory store that takes the hub's local tail, counts its reads, and has no live tail: a
/// hub over it can only learn of events through the local tail.
#[derive(Debug, Default)]
struct LocalOnly {
    store: MemoryStore,
    reads: AtomicUsize,
}

#[async_trait]
impl Store for LocalOnly {
    async fn append(&self, event: NewEvent) -> Result<Event, StoreError> {
        self.store.append(event).await
    }
    async fn bounds(&self, topic: &Topic) -> Result<Bounds, StoreError> {
        self.store.bounds(topic).await
    }
    async fn read_after(&self, topic: &Topic, after: u64, limit: usize) -> Result<Page, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.store.read_after(topic, after, limit).await
    }
    async fn live_tail(&self) -> Result<LiveTail, StoreError> {
        Err(StoreError::new("no tail: events must come through the local tail"))
    }
    fn attach_local_tail(&self, tail: LocalTail) -> bool {
        self.store.attach_local_tail(tail)
    }
}

async fn next_seq(sub: &mut tidings_core::Subscription) -> u64 {
    match sub.next().await {
        Some(Delivery::Event(e)) => e.event().seq,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_reach_subscribers_in_log_order_through_the_local_tail() {
    let store = Arc::new(LocalOnly::default());
    // Room for every event: no subscription can lag, so any store read after opening would
    // mean the ring saw an event out of order (a subscription catches up from the store then).
    let hub = Hub::builder_shared(store.clone()).ring_capacity(4096).build();
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(hub.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap());
    }
    let reads_at_open = store.reads.load(Ordering::Relaxed);
    let (publishers, each) = (8, 200);
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    hub.publish(NewEvent::new(topic(), format!("{p}-{i}"))).await.unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                for want in 1..=(publishers * each) as u64 {
                    assert_eq!(next_seq(&mut sub).await, want);
                }
            })
        })
        .collect();
    for task in tasks.into_iter().chain(readers) {
        task.await.unwrap();
    }
    assert_eq!(store.reads.load(Ordering::Relaxed), reads_at_open, "a subscription had to catch up");
}

#[tokio::test]
async fn hubs_sharing_a_local_store_each_receive_its_events() {
    let store: Arc<dyn Store> = Arc::new(LocalOnly::default());
    let first = Hub::builder_shared(store.clone()).build();
    let second = Hub::builder_shared(store.clone()).build();
    let mut a = first.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap();
    let mut b = second.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap();
    first.publish(NewEvent::new(topic(), "one")).await.unwrap();
    second.publish(NewEvent::new(topic(), "two")).await.unwrap();
    assert_eq!((next_seq(&mut a).await, next_seq(&mut a).await), (1, 2));
    assert_eq!((next_seq(&mut b).await, next_seq(&mut b).await), (1, 2));
    // Once one hub is gone, the store's appends still reach the other.
    drop(b);
    drop(second);
    store.append(NewEvent::new(topic(), "three")).await.unwrap();
    assert_eq!(next_seq(&mut a).await, 3);
}
