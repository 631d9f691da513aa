//! The long-polling transport's conformance adapter: a real HTTP server on 127.0.0.1:0 and a
//! client that polls with `reqwest`, parses the JSON batch, and carries the cursor.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use tidings_conformance::{
    Capabilities, ConnectRequest, Received, ReceivedEvent, Refused, ServerSettings, TestClient,
    TestServer, TransportAdapter,
};
use tidings_core::Hub;
use tidings_longpoll::LongPoll;

pub use tidings_test_support::serve;

#[derive(Debug, Clone, Copy, Default)]
pub struct LongPollAdapter;

#[async_trait]
impl TransportAdapter for LongPollAdapter {
    fn name(&self) -> &'static str {
        "longpoll"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::POLLING
    }

    async fn serve(&self, hub: Hub, _settings: ServerSettings) -> Box<dyn TestServer> {
        let app = axum::Router::new().route("/poll", LongPoll::new(hub).method_router());
        let (addr, task) = serve(app).await;
        Box::new(PollServer { addr, http: reqwest::Client::new(), task })
    }
}

pub struct PollServer {
    pub addr: SocketAddr,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PollServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl TestServer for PollServer {
    async fn connect(&self, request: ConnectRequest) -> Result<Box<dyn TestClient>, Refused> {
        let mut client = PollClient {
            http: self.http.clone(),
            addr: self.addr,
            request,
            buffer: VecDeque::new(),
            ended: false,
        };
        // The first poll answers at once: it opens the "connection" (or is refused) and brings
        // the starting cursor, or what the client's cursor says it missed.
        match client.poll(0.0).await {
            Ok(()) => Ok(Box::new(client)),
            Err(PollError::Refused(r)) => Err(r),
            Err(PollError::Failed(f)) => Err(Refused { status: 0, message: f }),
        }
    }
}

pub struct PollClient {
    http: reqwest::Client,
    addr: SocketAddr,
    request: ConnectRequest,
    buffer: VecDeque<Received>,
    ended: bool,
}

enum PollError {
    Refused(Refused),
    Failed(String),
}

impl PollClient {
    fn url(&self, timeout: f64) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for t in &self.request.topics {
            query.append_pair("topic", t);
        }
        if let Some(c) = &self.request.cursor {
            query.append_pair("cursor", c);
        }
        query.append_pair("timeout", &timeout.to_string());
        format!("http://{}/poll?{}", self.addr, query.finish())
    }

    /// Polls once with the current cursor; buffers what comes back.
    async fn poll(&mut self, timeout: f64) -> Result<(), PollError> {
        let mut req = self.http.get(self.url(timeout));
        for (k, v) in &self.request.headers {
            req = req.header(k, v);
        }
        let response = req.send().await.map_err(|e| PollError::Failed(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| PollError::Failed(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| PollError::Failed(format!("bad JSON ({e}): {text:.200}")))?;
        if status != 200 {
            if let (503, Some(ms)) = (status, json["retry_ms"].as_u64()) {
                if self.request.cursor.is_some() {
                    self.buffer.push_back(Received::Closing(Some(Duration::from_millis(ms))));
                    self.ended = true;
                    return Ok(());
                }
            }
            let message = json["error"].as_str().unwrap_or_default().to_owned();
            return Err(PollError::Refused(Refused { status, message }));
        }
        if let Some(topics) = json["gap"]["topics"].as_array() {
            self.request.cursor = json["gap"]["id"].as_str().map(str::to_owned);
            let topics = topics.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect();
            self.buffer.push_back(Received::Gap(topics));
        }
        for event in json["events"].as_array().into_iter().flatten() {
            self.buffer.push_back(Received::Event(ReceivedEvent::new(
                event["event"].as_str().map(str::to_owned),
                event["data"].as_str().unwrap_or_default().to_owned(),
                event["id"].as_str().unwrap_or_default().to_owned(),
            )));
        }
        if self.buffer.is_empty() {
            self.request.cursor = json["cursor"].as_str().map(str::to_owned);
        }
        if let Some(ms) = json["retry_ms"].as_u64() {
            self.buffer.push_back(Received::Closing(Some(Duration::from_millis(ms))));
            self.ended = true;
        }
        Ok(())
    }
}

#[async_trait]
impl TestClient for PollClient {
    async fn next(&mut self) -> Received {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                if let Received::Event(e) = &item {
                    self.request.cursor = Some(e.cursor.clone());
                }
                return item;
            }
            if self.ended {
                return Received::Ended;
            }
            match self.poll(25.0).await {
                Ok(()) => {}
                Err(PollError::Refused(r)) => return Received::Failed(format!("poll refused: {r:?}")),
                Err(PollError::Failed(f)) => return Received::Failed(f),
            }
        }
    }

    fn cursor(&self) -> Option<String> {
        self.request.cursor.clone()
    }
}
