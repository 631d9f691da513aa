//! The WebSocket transport's conformance adapter: the shipped server on 127.0.0.1:0 and a
//! client that is not ours (tokio-tungstenite) speaking `tidings.v1` as `docs/protocol.md`
//! documents it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_conformance::{
    Capabilities, ConnectRequest, Received, ReceivedEvent, Refused, ServerSettings, TestClient, TestServer,
    TransportAdapter,
};
use tidings_core::Hub;
use tidings_websocket::{SubscribedTopics, WebSocket};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

pub use tidings_test_support::serve;

pub type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, Clone, Copy, Default)]
pub struct WsAdapter;

#[async_trait]
impl TransportAdapter for WsAdapter {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::SOCKET
    }

    async fn serve(&self, hub: Hub, settings: ServerSettings) -> Box<dyn TestServer> {
        let endpoint = WebSocket::new(hub).heartbeat(settings.heartbeat).publish(SubscribedTopics);
        let app = axum::Router::new().route("/ws", endpoint.method_router());
        let (addr, task) = serve(app).await;
        Box::new(WsServer { addr, task })
    }
}

pub struct WsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The URL of the endpoint at `addr` for `topics` and `cursor`.
pub fn ws_url(addr: SocketAddr, topics: &[String], cursor: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for t in topics {
        query.append_pair("topic", t);
    }
    if let Some(c) = cursor {
        query.append_pair("cursor", c);
    }
    format!("ws://{addr}/ws?{}", query.finish())
}

/// Opens a socket offering `tidings.v1`, with `headers`; a refusal before the upgrade is its
/// HTTP status and body.
pub async fn open(url: &str, headers: &[(String, String)]) -> Result<Stream, Refused> {
    let mut request = url.into_client_request().expect("a valid URL");
    request.headers_mut().insert("sec-websocket-protocol", "tidings.v1".parse().unwrap());
    for (k, v) in headers {
        request.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((stream, response)) => {
            assert_eq!(response.headers()["sec-websocket-protocol"], "tidings.v1");
            Ok(stream)
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            Err(Refused { status, message: body })
        }
        Err(e) => Err(Refused { status: 0, message: format!("connect failed: {e}") }),
    }
}

#[async_trait]
impl TestServer for WsServer {
    async fn connect(&self, request: ConnectRequest) -> Result<Box<dyn TestClient>, Refused> {
        let url = ws_url(self.addr, &request.topics, request.cursor.as_deref());
        let stream = open(&url, &request.headers).await?;
        let mut client = WsClient { stream, cursor: request.cursor, buffer: VecDeque::new(), next_ref: 1 };
        // The first message says whether the subscription opened: `subscribed`, or an error
        // and a close code 4000 + the HTTP status.
        match client.read().await {
            Item::Answer(answer) if answer["type"] == "subscribed" => {
                if let Some(id) = answer["id"].as_str() {
                    client.cursor = Some(id.to_owned());
                }
                Ok(Box::new(client))
            }
            Item::Answer(answer) if answer["type"] == "error" => Err(Refused {
                status: answer["code"].as_u64().unwrap_or(0) as u16,
                message: answer["message"].as_str().unwrap_or_default().to_owned(),
            }),
            Item::Received(received) => {
                // A gap before `subscribed` is impossible; closing is possible (shutdown).
                client.buffer.push_back(Item::Received(received));
                Ok(Box::new(client))
            }
            other => Err(Refused { status: 0, message: format!("unexpected first message {other:?}") }),
        }
    }
}

#[derive(Debug)]
pub enum Item {
    Received(Received),
    /// A cursor to hold once the items before it were taken (a `subscribed`'s).
    Cursor(String),
    /// A gap notice and the cursor after it.
    Gap(Vec<String>, String),
    /// `subscribed`, `ack`, `error`, `reply`, `pong`.
    Answer(Value),
    /// A close frame: its code and reason.
    Close(u16, String),
}

pub struct WsClient {
    pub stream: Stream,
    cursor: Option<String>,
    buffer: VecDeque<Item>,
    next_ref: u64,
}

impl WsClient {
    /// A client over an open socket whose first message is not read yet.
    pub fn from_stream(stream: Stream) -> WsClient {
        WsClient { stream, cursor: None, buffer: VecDeque::new(), next_ref: 1 }
    }

    /// Reads one thing from the wire.
    pub async fn read(&mut self) -> Item {
        loop {
            let message = match self.stream.next().await {
                None => return Item::Received(Received::Ended),
                Some(Err(e)) => return Item::Received(Received::Failed(e.to_string())),
                Some(Ok(message)) => message,
            };
            return match message {
                Message::Ping(_) => Item::Received(Received::Heartbeat),
                Message::Pong(_) | Message::Frame(_) => continue,
                Message::Binary(_) => Item::Received(Received::Failed("a binary message".into())),
                Message::Close(frame) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    Item::Close(code, reason)
                }
                Message::Text(text) => {
                    let value: Value = match serde_json::from_str(&text) {
                        Ok(v) => v,
                        Err(e) => return Item::Received(Received::Failed(format!("not JSON ({e}): {text:.200}"))),
                    };
                    match value["type"].as_str() {
                        Some("event") => Item::Received(Received::Event(ReceivedEvent::new(
                            value["event"].as_str().map(str::to_owned),
                            value["data"].as_str().unwrap_or_default().to_owned(),
                            value["id"].as_str().unwrap_or_default().to_owned(),
                        ))),
                        Some("gap") => {
                            let topics = value["topics"].as_array().into_iter().flatten();
                            let topics = topics.filter_map(|t| t.as_str().map(str::to_owned)).collect();
                            Item::Gap(topics, value["id"].as_str().unwrap_or_default().to_owned())
                        }
                        Some("closing") => {
                            Item::Received(Received::Closing(value["retry_ms"].as_u64().map(Duration::from_millis)))
                        }
                        _ => Item::Answer(value),
                    }
                }
            };
        }
    }

    /// Sends `message` with a fresh `ref` and waits for the answer carrying it; what arrives
    /// meanwhile is kept for `next`.
    pub async fn request(&mut self, mut message: Value) -> Result<Value, String> {
        let reference = self.next_ref;
        self.next_ref += 1;
        message["ref"] = json!(reference);
        self.stream.send(Message::text(message.to_string())).await.map_err(|e| e.to_string())?;
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), self.read())
                .await
                .map_err(|_| format!("no answer to {message} within 10 s"))?;
            match item {
                Item::Answer(answer) if answer["ref"] == json!(reference) => return Ok(answer),
                Item::Answer(answer) if answer["type"] == "subscribed" || answer["type"] == "error" => {
                    return Err(format!("an answer to another message: {answer}"));
                }
                Item::Answer(_) => {}
                Item::Received(Received::Ended) | Item::Received(Received::Failed(_)) | Item::Close(..) => {
                    return Err(format!("the socket ended before the answer to {message}: {item:?}"));
                }
                // Events and gaps carry their cursors: `next` holds them as it hands them out.
                other => self.buffer.push_back(other),
            }
        }
    }

    fn refusal(answer: &Value) -> Refused {
        Refused {
            status: answer["code"].as_u64().unwrap_or(0) as u16,
            message: answer["message"].as_str().unwrap_or_default().to_owned(),
        }
    }

    async fn change(&mut self, message: Value) -> Result<(), Refused> {
        let answer = self.request(message).await.map_err(|message| Refused { status: 0, message })?;
        if answer["type"] != "subscribed" {
            return Err(WsClient::refusal(&answer));
        }
        if let Some(id) = answer["id"].as_str() {
            self.buffer.push_back(Item::Cursor(id.to_owned()));
        }
        Ok(())
    }
}

#[async_trait]
impl TestClient for WsClient {
    async fn next(&mut self) -> Received {
        loop {
            let item = match self.buffer.pop_front() {
                Some(item) => item,
                None => self.read().await,
            };
            match item {
                Item::Cursor(cursor) => self.cursor = Some(cursor),
                Item::Gap(topics, cursor) => {
                    self.cursor = Some(cursor);
                    return Received::Gap(topics);
                }
                Item::Received(Received::Event(e)) => {
                    self.cursor = Some(e.cursor.clone());
                    return Received::Event(e);
                }
                Item::Received(received) => return received,
                Item::Answer(_) => {}
                Item::Close(..) => return Received::Ended,
            }
        }
    }

    fn cursor(&self) -> Option<String> {
        self.cursor.clone()
    }

    async fn subscribe(&mut self, topics: &[&str], cursor: Option<String>) -> Result<(), Refused> {
        let mut message = json!({ "type": "subscribe", "topics": topics });
        if let Some(cursor) = cursor {
            message["cursor"] = json!(cursor);
        }
        self.change(message).await
    }

    async fn unsubscribe(&mut self, topics: &[&str]) -> Result<(), Refused> {
        self.change(json!({ "type": "unsubscribe", "topics": topics })).await
    }

    async fn publish(&mut self, topic: &str, data: &str) -> Result<String, Refused> {
        let answer = self
            .request(json!({ "type": "publish", "topic": topic, "data": data }))
            .await
            .map_err(|message| Refused { status: 0, message })?;
        match answer["type"].as_str() {
            Some("ack") => Ok(answer["id"].as_str().unwrap_or_default().to_owned()),
            _ => Err(WsClient::refusal(&answer)),
        }
    }

    async fn send_unreadable(&mut self) -> Result<Refused, String> {
        self.stream.send(Message::text("this is not JSON")).await.map_err(|e| e.to_string())?;
        loop {
            match self.read().await {
                Item::Answer(answer) if answer["type"] == "error" => return Ok(WsClient::refusal(&answer)),
                Item::Answer(_) | Item::Received(Received::Heartbeat) => {}
                other => return Err(format!("expected an error message, got {other:?}")),
            }
        }
    }

    async fn send_oversized(&mut self) -> Result<Refused, String> {
        let big = "x".repeat(64 * 1024 + 1);
        // The server may close before it has read all of it: a failed send is not the answer.
        let _ = self.stream.send(Message::text(big)).await;
        loop {
            match self.read().await {
                Item::Close(code, reason) => return Ok(Refused { status: code, message: reason }),
                Item::Answer(_) | Item::Received(Received::Heartbeat) => {}
                other => return Err(format!("expected a close frame, got {other:?}")),
            }
        }
    }
}
