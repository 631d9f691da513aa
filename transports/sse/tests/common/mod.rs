//! The SSE transport's conformance adapter: a real HTTP server on 127.0.0.1:0, and clients
//! that read the stream with `eventsource-stream` (an SSE parser that is not ours).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::{EventStream, Eventsource};
use futures_util::{FutureExt, StreamExt};
use tidings_conformance::{
    Capabilities, ConnectRequest, Received, ReceivedEvent, Refused, ServerSettings, TestClient,
    TestServer, TransportAdapter,
};
use tidings_core::Hub;
use tidings_sse::Sse;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

pub use tidings_test_support::serve;

#[derive(Debug, Clone, Copy, Default)]
pub struct SseAdapter;

#[async_trait]
impl TransportAdapter for SseAdapter {
    fn name(&self) -> &'static str {
        "sse"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::STREAMING
    }

    async fn serve(&self, hub: Hub, settings: ServerSettings) -> Box<dyn TestServer> {
        let app = axum::Router::new()
            .route("/events", Sse::new(hub).heartbeat(settings.heartbeat).method_router());
        let (addr, task) = serve(app).await;
        Box::new(SseServer { addr, http: reqwest::Client::new(), task })
    }
}

pub struct SseServer {
    pub addr: SocketAddr,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SseServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn events_url(addr: SocketAddr, topics: &[String], extra: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for t in topics {
        query.append_pair("topic", t);
    }
    for (k, v) in extra {
        query.append_pair(k, v);
    }
    format!("http://{addr}/events?{}", query.finish())
}

#[async_trait]
impl TestServer for SseServer {
    async fn connect(&self, request: ConnectRequest) -> Result<Box<dyn TestClient>, Refused> {
        let mut req = self.http.get(events_url(self.addr, &request.topics, &[]));
        if let Some(cursor) = &request.cursor {
            req = req.header("last-event-id", cursor);
        }
        for (k, v) in &request.headers {
            req = req.header(k, v);
        }
        SseClient::open(req).await.map(|c| Box::new(c) as Box<dyn TestClient>)
    }
}

/// What the raw byte stream showed beyond events: heartbeat comments, `id:` and `retry:`
/// lines. Events themselves are parsed by `eventsource-stream`.
#[derive(Debug, Default)]
struct Tap {
    line: Vec<u8>,
    skipping: bool,
    blocks: usize,
    heartbeats: usize,
    last_id: Option<String>,
    /// The `id:` of the stream's first block (its starting cursor), whatever came after it in
    /// the same read: a server may write the opening block and a replay in one chunk.
    first_id: Option<String>,
    last_retry: Option<(usize, u64)>,
}

impl Tap {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
                continue;
            }
            if self.skipping {
                continue;
            }
            self.line.push(b);
            let interesting = [&b"id:"[..], b"retry:", b":"]
                .iter()
                .any(|p| p.starts_with(&self.line) || self.line.starts_with(p));
            if !interesting {
                self.skipping = true;
                self.line.clear();
            }
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let was_skipping = std::mem::replace(&mut self.skipping, false);
        if was_skipping {
            return;
        }
        if line.is_empty() {
            self.blocks += 1;
        } else if line == b":" {
            self.heartbeats += 1;
        } else if let Some(v) = line.strip_prefix(b"id: ") {
            self.last_id = Some(String::from_utf8_lossy(v).into_owned());
            if self.blocks == 0 {
                self.first_id = self.last_id.clone();
            }
        } else if let Some(v) = line.strip_prefix(b"retry: ") {
            if let Ok(ms) = String::from_utf8_lossy(v).parse() {
                self.last_retry = Some((self.blocks, ms));
            }
        }
    }
}

type Body = std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

pub struct SseClient {
    body: Body,
    parser: EventStream<UnboundedReceiverStream<Result<bytes::Bytes, std::convert::Infallible>>>,
    feed: Option<mpsc::UnboundedSender<Result<bytes::Bytes, std::convert::Infallible>>>,
    tap: Tap,
    /// Bytes read but not yet given to the parser: the start of a block.
    pending: Vec<u8>,
    heartbeats_reported: usize,
    cursor: Option<String>,
    ended: bool,
    closing_reported: bool,
}

impl SseClient {
    /// Sends the request; on 200, reads the stream's first block (retry hint, starting cursor).
    pub async fn open(request: reqwest::RequestBuilder) -> Result<SseClient, Refused> {
        let response = request
            .send()
            .await
            .map_err(|e| Refused { status: 0, message: format!("request failed: {e}") })?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let message = body["error"].as_str().unwrap_or_default().to_owned();
            return Err(Refused { status, message });
        }
        let content_type = response.headers().get("content-type").cloned();
        assert_eq!(content_type.as_ref().and_then(|v| v.to_str().ok()), Some("text/event-stream"));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = SseClient {
            body: Box::pin(response.bytes_stream()),
            parser: UnboundedReceiverStream::new(rx).eventsource(),
            feed: Some(tx),
            tap: Tap::default(),
            pending: Vec::new(),
            heartbeats_reported: 0,
            cursor: None,
            ended: false,
            closing_reported: false,
        };
        while client.tap.blocks == 0 && !client.ended {
            client.read_chunk().await;
        }
        client.cursor = client.tap.first_id.clone();
        Ok(client)
    }

    /// Hands what is left to the parser and ends its input.
    fn flush(&mut self) {
        if let Some(feed) = self.feed.take() {
            if !self.pending.is_empty() {
                let _ = feed.send(Ok(bytes::Bytes::from(std::mem::take(&mut self.pending))));
            }
        }
    }

    async fn read_chunk(&mut self) -> Option<String> {
        match tokio::time::timeout(Duration::from_secs(60), self.body.next()).await {
            Err(_) => Some("no bytes for 60 s".into()),
            Ok(None) => {
                self.ended = true;
                self.flush();
                None
            }
            Ok(Some(Err(e))) => {
                self.ended = true;
                self.flush();
                Some(format!("stream error: {e}"))
            }
            Ok(Some(Ok(bytes))) => {
                self.tap.feed(&bytes);
                // The parser gets whole blocks: it scans what it holds again on every chunk, so a
                // 256 KiB event read 8 KiB at a time would cost it a quadratic scan.
                let searched = self.pending.len().saturating_sub(1);
                self.pending.extend_from_slice(&bytes);
                if let Some(end) = self.pending[searched..].windows(2).rposition(|w| w == b"\n\n") {
                    let rest = self.pending.split_off(searched + end + 2);
                    let blocks = std::mem::replace(&mut self.pending, rest);
                    if let Some(feed) = &self.feed {
                        let _ = feed.send(Ok(bytes::Bytes::from(blocks)));
                    }
                }
                None
            }
        }
    }
}

#[async_trait]
impl TestClient for SseClient {
    async fn next(&mut self) -> Received {
        loop {
            if let Some(item) = self.parser.next().now_or_never().flatten() {
                let event = match item {
                    Ok(event) => event,
                    Err(e) => return Received::Failed(format!("parser: {e}")),
                };
                self.cursor = Some(event.id.clone());
                if event.event == "tidings.open" {
                    continue;
                }
                if event.event == "tidings.gap" {
                    let json: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
                    let topics = json["topics"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default();
                    return Received::Gap(topics);
                }
                let event_type = (event.event != "message").then_some(event.event);
                return Received::Event(ReceivedEvent::new(event_type, event.data, event.id));
            }
            if self.tap.heartbeats > self.heartbeats_reported {
                self.heartbeats_reported += 1;
                return Received::Heartbeat;
            }
            if self.ended {
                // A `retry:` after the first block, then the end: the server asked us to return.
                if let (false, Some((block, ms))) = (self.closing_reported, self.tap.last_retry) {
                    if block > 0 {
                        self.closing_reported = true;
                        return Received::Closing(Some(Duration::from_millis(ms)));
                    }
                }
                return Received::Ended;
            }
            if let Some(failure) = self.read_chunk().await {
                return Received::Failed(failure);
            }
        }
    }

    fn cursor(&self) -> Option<String> {
        self.cursor.clone()
    }
}
