//! What the hub's tests share: a hub on a loopback port, tokens, a publisher and an SSE
//! reader that see the hub as any HTTP client does.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use tidings_core::Store;
use tidings_hub::{MercureHub, Settings, Verifier};

pub const PUBLISHER_KEY: &str = "a publisher secret of at least 32 bytes!";
pub const SUBSCRIBER_KEY: &str = "a subscriber secret of at least 32 bytes";

/// A token signed with `key` (HS256) carrying `claims` (the whole claim set).
pub fn token(key: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// A publisher token allowed to publish to `selectors`, without `exp` (as Mercure's publisher
/// libraries often mint them).
pub fn publisher(selectors: &[&str]) -> String {
    token(PUBLISHER_KEY, serde_json::json!({ "mercure": { "publish": selectors } }))
}

/// A subscriber token allowed to receive private updates of `selectors`.
pub fn subscriber(selectors: &[&str]) -> String {
    token(SUBSCRIBER_KEY, serde_json::json!({ "mercure": { "subscribe": selectors, "payload": {"user": "alice"} } }))
}

/// The default settings of the tests: both keys, anonymous subscribers allowed.
pub fn settings() -> Settings {
    Settings {
        publisher: Some(Verifier::new("HS256", PUBLISHER_KEY.as_bytes()).unwrap()),
        subscriber: Some(Verifier::new("HS256", SUBSCRIBER_KEY.as_bytes()).unwrap()),
        anonymous: true,
        ..Settings::default()
    }
}

/// A hub on a loopback port.
pub struct TestHub {
    pub url: String,
    pub mercure: MercureHub,
    task: tokio::task::JoinHandle<()>,
    pub http: reqwest::Client,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestHub {
    pub async fn start(store: Arc<dyn Store>, settings: Settings) -> TestHub {
        let mercure = MercureHub::new(store, settings);
        let (addr, task) = tidings_test_support::serve(mercure.router()).await;
        TestHub { url: format!("http://{addr}"), mercure, task, http: reqwest::Client::new() }
    }

    pub async fn memory() -> TestHub {
        TestHub::start(Arc::new(tidings_core::MemoryStore::new()), settings()).await
    }

    pub fn hub_url(&self) -> String {
        format!("{}/.well-known/mercure", self.url)
    }

    /// Publishes the form `fields` with `token`: the status and the body.
    pub async fn post(&self, token: Option<&str>, fields: &[(&str, &str)]) -> (u16, String) {
        let mut request = self.http.post(self.hub_url()).header("content-type", "application/x-www-form-urlencoded");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let body = serde_urlencoded::to_string(fields).unwrap();
        let response = request.body(body).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Publishes `data` to `topics` with a token allowed everything; the update's id.
    pub async fn publish(&self, topics: &[&str], data: &str) -> String {
        let mut fields: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        fields.push(("data", data));
        let (status, id) = self.post(Some(&publisher(&["*"])), &fields).await;
        assert_eq!(status, 200, "publish refused: {id}");
        id
    }

    /// Opens a subscription with the query `query` (pairs) and `headers`.
    pub async fn subscribe(&self, query: &[(&str, &str)], headers: &[(&str, &str)]) -> Subscriber {
        let mut request = self.http.get(self.hub_url()).query(query);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        Subscriber::new(response)
    }

    /// Opens a subscription to `topics`, anonymous, from the end of the log.
    pub async fn follow(&self, topics: &[&str]) -> Subscriber {
        let query: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        let subscriber = self.subscribe(&query, &[]).await;
        assert_eq!(subscriber.status, 200);
        subscriber
    }
}

/// An open subscription, read as an EventSource would.
pub struct Subscriber {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
    pub body: Option<String>,
}

impl Subscriber {
    /// Reads `response` as a subscription.
    pub fn from_response(response: reqwest::Response) -> Subscriber {
        Subscriber::new(response)
    }

    fn new(response: reqwest::Response) -> Subscriber {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let events = response.bytes_stream().eventsource().map(|e| e.map_err(|e| e.to_string()));
        Subscriber { status, headers, events: Box::pin(events), body: None }
    }

    /// The `Last-Event-ID` response header.
    pub fn last_event_id(&self) -> Option<&str> {
        self.headers.get("last-event-id").and_then(|v| v.to_str().ok())
    }

    /// The next event, within 10 s.
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(10), self.events.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open")
            .expect("a well-formed event")
    }

    /// Whether the stream ends within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        loop {
            match tokio::time::timeout(within, self.events.next()).await {
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }

    /// The events up to and including the one whose data is `marker`.
    pub async fn until(&mut self, marker: &str) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = event.data == marker;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

/// The data of `events`.
pub fn data(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}
