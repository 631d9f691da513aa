//! [`LocalAdapter`]: the hub used in-process, as a transport. It is the reference the suite
//! checks itself against, and a template for third-party adapters.

use async_trait::async_trait;
use tidings_core::{
    Credentials, Delivery, Hub, Refusal, SubscribeError, SubscribeRequest, Subscription, Topic,
};

use crate::{
    Capabilities, ConnectRequest, ReceivedEvent, Received, Refused, ServerSettings, TestClient,
    TestServer, TransportAdapter,
};

/// Subscribes to the hub directly, without a network.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalAdapter;

#[async_trait]
impl TransportAdapter for LocalAdapter {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::STREAMING.with_heartbeats(false).with_normalised_line_endings(false)
    }

    async fn serve(&self, hub: Hub, _settings: ServerSettings) -> Box<dyn TestServer> {
        Box::new(LocalServer { hub })
    }
}

#[derive(Debug)]
struct LocalServer {
    hub: Hub,
}

struct Headers<'a>(&'a [(String, String)]);

impl Credentials for Headers<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn query(&self, _: &str) -> Option<&str> {
        None
    }
}

/// The status an HTTP transport answers for a refused subscription.
pub fn status_of(err: &SubscribeError) -> u16 {
    match err {
        SubscribeError::NoTopics | SubscribeError::TooManyTopics { .. } => 400,
        SubscribeError::Refused(Refusal::Unauthenticated(_)) => 401,
        SubscribeError::Refused(_) => 403,
        _ => 503,
    }
}

#[async_trait]
impl TestServer for LocalServer {
    async fn connect(&self, request: ConnectRequest) -> Result<Box<dyn TestClient>, Refused> {
        let mut topics = Vec::new();
        for raw in &request.topics {
            topics.push(
                Topic::parse(raw).map_err(|e| Refused { status: 400, message: e.to_string() })?,
            );
        }
        let headers = Headers(&request.headers);
        let subscription = self
            .hub
            .subscribe(
                SubscribeRequest::new(topics).cursor(request.cursor.as_deref()).credentials(&headers),
            )
            .await
            .map_err(|e| Refused { status: status_of(&e), message: e.to_string() })?;
        let cursor = (!subscription.starts_with_gap()).then(|| subscription.cursor().to_string());
        Ok(Box::new(LocalClient { subscription, cursor, closed: false }))
    }
}

struct LocalClient {
    subscription: Subscription,
    cursor: Option<String>,
    closed: bool,
}

#[async_trait]
impl TestClient for LocalClient {
    async fn next(&mut self) -> Received {
        if self.closed {
            return Received::Ended;
        }
        match self.subscription.next().await {
            Some(Delivery::Event(event)) => {
                let cursor = self.subscription.cursor().to_string();
                self.cursor = Some(cursor.clone());
                let event = event.event();
                Received::Event(ReceivedEvent::new(
                    event.event_type.as_ref().map(|t| t.to_string()),
                    event.data.to_string(),
                    cursor,
                ))
            }
            Some(Delivery::Gap(gap)) => {
                self.cursor = Some(self.subscription.cursor().to_string());
                Received::Gap(gap.topics.iter().map(|t| t.to_string()).collect())
            }
            Some(Delivery::Closing(closing)) => {
                self.closed = true;
                Received::Closing(Some(closing.reconnect_after))
            }
            Some(other) => Received::Failed(format!("unknown delivery {other:?}")),
            None => Received::Ended,
        }
    }

    fn cursor(&self) -> Option<String> {
        self.cursor.clone()
    }
}
