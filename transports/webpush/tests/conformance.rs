//! Web Push runs the transport conformance suite through a real push service on loopback: each
//! test client is a push subscription registered over the push transport's own API, and what
//! it "receives" is what the push service accepted, decrypted with the subscriber's key. The
//! scenarios that need what push cannot do (heartbeats, a closing signal, 1 MiB payloads, a
//! thousand clients in one test) report "not applicable".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tidings_conformance::{
    Capabilities, ConnectRequest, Received, ReceivedEvent, Refused, ServerSettings, TestClient, TestServer,
    TransportAdapter,
};
use tidings_core::{Credentials, Hub};
use tidings_webpush::testing::LocalPushService;
use tidings_webpush::{EndpointPolicy, MemoryRegistry, RegisterRequest, VapidKeys, WebPush};

/// Serves a hub through Web Push to a local push service.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushAdapter;

#[async_trait]
impl TransportAdapter for PushAdapter {
    fn name(&self) -> &'static str {
        "webpush"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::PUSH
    }

    async fn serve(&self, hub: Hub, _settings: ServerSettings) -> Box<dyn TestServer> {
        let service = Arc::new(LocalPushService::start().await);
        let push = WebPush::builder(hub, MemoryRegistry::new(), VapidKeys::generate(), "mailto:conformance@example.com")
            .unwrap()
            .endpoint_policy(EndpointPolicy::default().allow(&service.host_port()).unwrap())
            .add_root_certificate(service.root_certificate_pem())
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
            .start()
            .await
            .unwrap();
        Box::new(PushServer { service, push })
    }
}

struct PushServer {
    service: Arc<LocalPushService>,
    push: WebPush,
}

impl Drop for PushServer {
    fn drop(&mut self) {
        self.push.shutdown();
    }
}

struct Headers(Vec<(String, String)>);

impl Credentials for Headers {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn query(&self, _: &str) -> Option<&str> {
        None
    }
}

#[async_trait]
impl TestServer for PushServer {
    async fn connect(&self, request: ConnectRequest) -> Result<Box<dyn TestClient>, Refused> {
        let sub = self.service.subscribe();
        let endpoint = sub.subscription.endpoint().as_str().to_owned();
        let credentials = Headers(request.headers.clone());
        let register = RegisterRequest::new(sub.subscription.clone(), request.topics.clone(), &credentials)
            .cursor(request.cursor.clone());
        // The cursor the registration starts from (saved with the 201).
        let cursor = self
            .push
            .register(register)
            .await
            .map_err(|e| Refused { status: e.status(), message: e.to_string() })?;
        let cursor = Some(cursor);
        Ok(Box::new(PushClient {
            service: self.service.clone(),
            push: self.push.clone(),
            id: sub.id,
            endpoint,
            read: 0,
            cursor,
        }))
    }
}

struct PushClient {
    service: Arc<LocalPushService>,
    push: WebPush,
    id: String,
    endpoint: String,
    read: usize,
    cursor: Option<String>,
}

impl Drop for PushClient {
    fn drop(&mut self) {
        // A client that goes away unsubscribes, as a browser's pushSubscription.unsubscribe().
        let (push, endpoint) = (self.push.clone(), self.endpoint.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = push.unregister(&endpoint).await;
            });
        }
        self.service.unsubscribe(&self.id);
    }
}

#[async_trait]
impl TestClient for PushClient {
    async fn next(&mut self) -> Received {
        let messages = self.service.wait_for_messages(&self.id, self.read + 1, Duration::from_secs(3600)).await;
        let Some(message) = messages.get(self.read) else {
            return Received::Failed("no push arrived".into());
        };
        self.read += 1;
        let json = message.json();
        if let Some(cursor) = json["cursor"].as_str() {
            self.cursor = Some(cursor.to_owned());
        }
        if let Some(gap) = json.get("gap") {
            let topics = gap["topics"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).map(str::to_owned);
            return Received::Gap(topics.collect());
        }
        match json["data"].as_str() {
            Some(data) => Received::Event(ReceivedEvent::new(
                json["event"].as_str().map(str::to_owned),
                data.to_owned(),
                json["cursor"].as_str().unwrap_or_default().to_owned(),
            )),
            None => Received::Failed(format!("push arrived without data: {json}")),
        }
    }

    fn cursor(&self) -> Option<String> {
        self.cursor.clone()
    }
}

mod memory {
    tidings_conformance::transport_suite!(super::PushAdapter);
}

mod sqlite {
    tidings_conformance::transport_suite!(super::PushAdapter, store: tidings_test_support::SqliteStores::default());
}
