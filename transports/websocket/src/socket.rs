//! One socket: the subscription it follows (changed by the client's messages), the client's
//! messages, heartbeats, and what goes out, on one task.
//!
//! The loop writes what is queued, gathers what the subscription has ready without waiting
//! (a replay, a burst), and only then waits for whichever comes first: bytes from the client,
//! the next delivery, the hub's shutdown (while no subscription would tell), or the heartbeat.
//! Each of those waits is cancel-safe (`read_buf`, `Subscription::next`, `Hub::closed`, a
//! timer), so nothing is lost to the race. While idle, the socket keeps no write buffer and a
//! read buffer of 128 bytes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use serde_json::value::RawValue;
use tidings_core::{
    Credentials, Cursor, Delivery, JsonEvent, NewEvent, SharedEvent, SubscribeError, SubscribeRequest, Subscription,
    Topic, WireFormat,
};
use tidings_http::{HttpError, SubscribeParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::frame::{self, Incoming, Reader, close};
use crate::protocol::{self, ClientMessage, EventFrameWithId};
use crate::{Client, Config, TRANSPORT};

/// Frames smaller than this are copied into the chunk being gathered; larger ones go out as
/// the event's shared bytes.
const COALESCE_BELOW: usize = 16 * 1024;
/// A burst of ready deliveries is gathered until it holds this much.
const WRITE_BUFFER: usize = 64 * 1024;
/// The read buffer a socket keeps while idle.
const READ_ROOM: usize = 128;
/// Bursts written in a row before the socket looks at the client and the heartbeat again
/// (through the `select!`, whose branches are polled in random order).
const MAX_STREAK: u32 = 8;

/// How long a socket that sent a close frame reads (and drops) what the client still sends,
/// waiting for its close frame: closing at once, with unread bytes, would reset the
/// connection, and the client could lose the close frame that says why.
const LINGER: Duration = Duration::from_secs(2);

/// What the upgrade request brought: the subscription its URL names and its credentials.
#[derive(Debug)]
pub(crate) struct Opening {
    topics: Vec<Topic>,
    cursor: Option<String>,
    peer: Option<SocketAddr>,
    credentials: Kept,
}

impl Opening {
    pub(crate) fn new(headers: HeaderMap, params: SubscribeParams) -> Opening {
        Opening { topics: params.topics, cursor: params.cursor, peer: params.peer, credentials: Kept::new(&headers, params.query) }
    }
}

/// The upgrade request's headers and query, kept for the authorization hook of later
/// `subscribe` messages. Copied (not slices of the request's head, which would keep all of
/// it), without the handshake's own headers and the subscription's parameters.
#[derive(Debug, Default, Clone)]
struct Kept(Option<Arc<KeptParts>>);

/// The headers and the query parameters [`Kept`] holds.
type KeptParts = (Box<[(HeaderName, HeaderValue)]>, Box<[(String, String)]>);

impl Kept {
    fn new(headers: &HeaderMap, query: Vec<(String, String)>) -> Kept {
        let handshake = |name: &HeaderName| {
            name == header::UPGRADE || name == header::CONNECTION || name.as_str().starts_with("sec-websocket-")
        };
        let headers: Vec<_> = headers
            .iter()
            .filter(|(name, _)| !handshake(name))
            .filter_map(|(name, value)| Some((name.clone(), HeaderValue::from_bytes(value.as_bytes()).ok()?)))
            .collect();
        let query: Vec<_> = query
            .into_iter()
            .filter(|(k, _)| k != "topic" && !tidings_http::CURSOR_PARAMS.contains(&k.as_str()))
            .collect();
        if headers.is_empty() && query.is_empty() {
            Kept(None)
        } else {
            // Exactly as long as they are: kept for the socket's life.
            Kept(Some(Arc::new((headers.into_boxed_slice(), query.into_boxed_slice()))))
        }
    }
}

impl Credentials for Kept {
    fn header(&self, name: &str) -> Option<&str> {
        let (headers, _) = self.0.as_deref()?;
        headers.iter().find(|(n, _)| n.as_str().eq_ignore_ascii_case(name)).and_then(|(_, v)| v.to_str().ok())
    }

    fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.0.as_deref()?;
        query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Serves one upgraded connection until either side closes it.
pub(crate) async fn serve(config: Arc<Config>, io: TokioIo<Upgraded>, opening: Opening) {
    // Boxed: the task keeps no room for the opening (a store read, the authorization hook)
    // once it is done.
    let mut socket = Box::pin(Socket::open(config, io, opening)).await;
    socket.run().await;
}

struct Socket {
    config: Arc<Config>,
    io: TokioIo<Upgraded>,
    /// `None` while the socket follows no topic.
    subscription: Option<Subscription>,
    /// While there is no subscription (which would say so), the hub's shutdown; boxed, and
    /// only then, so that a socket with a subscription keeps no room for it.
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    credentials: Kept,
    peer: Option<SocketAddr>,
    /// Bytes from the client not yet read as frames.
    input: BytesMut,
    reader: Reader,
    out: Out,
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    last_read: Instant,
    /// A close frame is queued: the socket ends once it is written (nothing is queued after
    /// it).
    done: bool,
    /// `input` may hold whole frames not read yet: reading them waited for the answers queued
    /// so far to be written.
    more_input: bool,
}

impl Socket {
    /// The socket, with the subscription its URL names opened (or its refusal queued).
    async fn open(config: Arc<Config>, io: TokioIo<Upgraded>, opening: Opening) -> Socket {
        let Opening { topics, cursor, peer, credentials } = opening;
        let now = Instant::now();
        let mut socket = Socket {
            heartbeat: Box::pin(tokio::time::sleep_until(now + config.heartbeat)),
            reader: Reader::new(config.max_message),
            config,
            io,
            subscription: None,
            shutdown: None,
            credentials,
            peer,
            input: BytesMut::new(),
            out: Out::default(),
            last_read: now,
            done: false,
            more_input: false,
        };
        let topics = if topics.is_empty() { socket.config.default_topics.clone() } else { topics };
        if topics.is_empty() {
            socket.answer(&None, "subscribed", json!({ "topics": [] }));
        } else {
            socket.open_url(topics, cursor.as_deref()).await;
        }
        socket
    }

    async fn run(&mut self) {
        // Bursts gathered in a row without waiting for the client: bounded, so that a topic
        // busy enough to always have something ready never keeps the client's messages, its
        // pongs and the heartbeat waiting.
        let mut streak = 0;
        loop {
            if !self.out.is_empty() && self.flush().await.is_err() {
                return;
            }
            if self.done {
                // Boxed, as the handling of input below: an idle socket's task keeps no room
                // for what it does rarely.
                Box::pin(self.linger()).await;
                return;
            }
            if self.more_input {
                // The rest of what the client sent, once the answers so far are written.
                Box::pin(self.take_input()).await;
                continue;
            }
            // A burst (a replay, a busy topic) is gathered without touching a timer.
            let mut ready = false;
            while self.out.len < WRITE_BUFFER && !self.done && streak < MAX_STREAK {
                let Some(subscription) = self.subscription.as_mut() else { break };
                match subscription.next_ready().await {
                    Some(delivery) => {
                        ready = true;
                        self.push(delivery);
                    }
                    None => break,
                }
            }
            if ready {
                streak += 1;
                continue;
            }
            // Idle, or busy for MAX_STREAK bursts in a row: the client and the heartbeat now.
            if streak < MAX_STREAK {
                // Idle: give back what a burst or a large message needed.
                self.out.release();
            }
            streak = 0;
            match (&self.subscription, &self.shutdown) {
                (None, None) => {
                    let hub = self.config.hub.clone();
                    self.shutdown = Some(Box::pin(async move { hub.closed().await }));
                }
                (Some(_), Some(_)) => self.shutdown = None,
                _ => {}
            }
            if self.input.is_empty() && self.input.capacity() > 8 * READ_ROOM {
                self.input = BytesMut::new();
            }
            self.input.reserve(READ_ROOM);
            tokio::select! {
                read = self.io.read_buf(&mut self.input) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        self.last_read = Instant::now();
                        Box::pin(self.take_input()).await;
                    }
                },
                delivery = next(&mut self.subscription) => match delivery {
                    Some(delivery) => self.push(delivery),
                    None => self.subscription = None,
                },
                () = shut_down(&mut self.shutdown) => {
                    let delay = self.config.hub.reconnect_delay();
                    self.closing(delay);
                }
                () = self.heartbeat.as_mut() => self.beat(),
            }
        }
    }

    /// Ends the socket after a close frame went out: the write side is shut, and what the
    /// client still sends is read and dropped until it closes too, for at most [`LINGER`].
    async fn linger(&mut self) {
        let _ = self.io.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(1..) = self.io.read(&mut sink).await {}
        })
        .await;
    }

    /// Writes what is queued (the server's stall timeout bounds how long a client that does
    /// not read can hold it).
    async fn flush(&mut self) -> std::io::Result<()> {
        while let Some(chunk) = self.out.next_chunk() {
            self.io.write_all(&chunk).await?;
        }
        self.io.flush().await
    }

    /// A ping at every heartbeat; a close once the client has sent nothing for the client
    /// timeout.
    fn beat(&mut self) {
        let interval = self.config.heartbeat;
        let now = Instant::now();
        let silent = now - self.last_read;
        if silent >= self.config.client_timeout {
            let reason = format!("nothing from the client for {} s, not even a pong", silent.as_secs());
            self.close(close::TIMEOUT, &reason);
        } else {
            self.out.copy(frame::EMPTY_PING);
        }
        self.heartbeat.as_mut().reset(now + interval);
    }

    /// Reads the whole frames the client sent and acts on each, until the answers queued reach
    /// [`WRITE_BUFFER`] (the rest waits for them to be written: a read full of requests cannot
    /// queue more than that).
    async fn take_input(&mut self) {
        self.more_input = false;
        while !self.done {
            if self.out.len >= WRITE_BUFFER {
                self.more_input = true;
                return;
            }
            match self.reader.next(&mut self.input) {
                Ok(Some(Incoming::Text(text))) => self.on_text(&text).await,
                Ok(Some(Incoming::Ping(payload))) => self.out.put(frame::frame(frame::PONG, &payload)),
                Ok(Some(Incoming::Pong)) => {}
                Ok(Some(Incoming::Close(code, _))) => {
                    // Echo the client's code (RFC 6455, section 5.5.1), then close.
                    self.close(code.unwrap_or(close::NORMAL), "closed as the client asked");
                }
                Ok(None) => return,
                Err(violation) => self.close(violation.code, &violation.reason),
            }
        }
    }

    async fn on_text(&mut self, text: &[u8]) {
        let request = match protocol::parse(text) {
            Ok(request) => request,
            Err(malformed) => {
                let error = HttpError::bad_request(malformed.message);
                return self.error(&malformed.reference, &error);
            }
        };
        let reference = request.reference;
        match request.message {
            ClientMessage::Subscribe { topics, cursor } => self.subscribe(&reference, topics, cursor.as_deref()).await,
            ClientMessage::Unsubscribe { topics } => self.unsubscribe(&reference, &topics).await,
            ClientMessage::Publish { topic, event_type, data } => {
                let mut event = NewEvent::new(topic, data);
                if let Some(kind) = event_type {
                    event = event.with_type(kind);
                }
                self.publish(&reference, event).await;
            }
            ClientMessage::Message { data } => self.message(&reference, &data).await,
            ClientMessage::Ping => self.answer(&reference, "pong", json!({})),
        }
    }

    /// The topics followed now.
    fn topics(&self) -> Vec<Topic> {
        self.subscription.as_ref().map_or_else(Vec::new, |s| s.topics().cloned().collect())
    }

    /// Opens the subscription the URL names; a refusal closes the socket with its reason.
    async fn open_url(&mut self, topics: Vec<Topic>, cursor: Option<&str>) {
        match self.subscribe_to(topics, Start::Token(cursor)).await {
            Ok(()) => self.announce(&None),
            Err(err) => match err {
                SubscribeError::ShuttingDown => {
                    // Refused as SSE refuses it (a 503 with a delay), then closed as every
                    // socket is on shutdown.
                    let error = HttpError::refused(SubscribeError::ShuttingDown, &self.config.hub);
                    self.error(&None, &error);
                    self.closing(error.retry_after.unwrap_or_default());
                }
                err => {
                    let store = matches!(err, SubscribeError::Store(_));
                    let error = HttpError::from(err);
                    self.error(&None, &error);
                    let code = if store { close::TRY_AGAIN_LATER } else { 4000 + error.status.as_u16() };
                    self.close(code, &error.message);
                }
            },
        }
    }

    /// Follows `topics` from `start`: opens the socket's subscription, or moves the current one
    /// there (`Subscription::change`: the same connection for the lifecycle hooks). Refused,
    /// the current one is left as it was.
    async fn subscribe_to(&mut self, topics: Vec<Topic>, start: Start<'_>) -> Result<(), SubscribeError> {
        // The fields the request needs, not `&self` (the socket's IO is not `Sync`).
        let credentials = self.credentials.clone();
        let mut request =
            SubscribeRequest::new(topics).transport(TRANSPORT).peer(self.peer).credentials(&credentials);
        request = match start {
            Start::Token(token) => request.cursor(token),
            Start::Position(position) => request.position(position),
        };
        match &mut self.subscription {
            Some(current) => current.change(request).await,
            None => {
                self.subscription = Some(self.config.hub.subscribe(request).await?);
                Ok(())
            }
        }
    }

    /// Adds topics. Kept topics go on from where the socket stands; added ones start where
    /// the client's cursor places them (at the end if it names them not; with a gap notice
    /// if it cannot be read).
    async fn subscribe(&mut self, reference: &Option<Box<RawValue>>, add: Vec<Topic>, cursor: Option<&str>) {
        let mut topics = self.topics();
        let mut added: Vec<Topic> = Vec::new();
        for topic in add {
            if !topics.contains(&topic) && !added.contains(&topic) {
                added.push(topic);
            }
        }
        topics.extend(added.iter().cloned());
        let limit = self.config.hub.max_topics();
        if topics.len() > limit {
            // Refused here, before a cursor is built for them (a cursor holds a bounded number).
            return self.error(reference, &HttpError::from(SubscribeError::TooManyTopics { limit }));
        }
        let position = match self.position_for_change() {
            _ if self.done => return,
            None => None,
            Some(mut now) => {
                if let Some(given) = cursor {
                    match Cursor::parse(given) {
                        Ok(given) if given.epoch() == now.epoch() => {
                            for topic in &added {
                                if let Some(position) = given.position(topic) {
                                    now.set(topic, position);
                                }
                            }
                        }
                        // Another epoch or no cursor at all: the added topics' position is
                        // unknown, which the hub answers with a gap notice for them alone (a
                        // position past the end of the log is unknown).
                        _ => added.iter().for_each(|topic| now.set(topic, u64::MAX)),
                    }
                }
                Some(now)
            }
        };
        match position {
            Some(position) => self.change(reference, topics, Start::Position(position)).await,
            None => self.change(reference, topics, Start::Token(cursor)).await,
        }
    }

    /// Removes topics; the others go on from where the socket stands.
    async fn unsubscribe(&mut self, reference: &Option<Box<RawValue>>, remove: &[Topic]) {
        let topics: Vec<Topic> = self.topics().into_iter().filter(|t| !remove.contains(t)).collect();
        if topics.is_empty() {
            self.subscription = None;
            return self.answer(reference, "subscribed", json!({ "topics": [] }));
        }
        match self.position_for_change() {
            _ if self.done => {}
            Some(position) => self.change(reference, topics, Start::Position(position)).await,
            None => self.change(reference, topics, Start::Token(None)).await,
        }
    }

    /// The exact position of the socket before its topics change: a gap notice the current
    /// subscription holds is sent first (its cursor already stands past it).
    fn position_for_change(&mut self) -> Option<Cursor> {
        let subscription = self.subscription.as_mut()?;
        if subscription.starts_with_gap() {
            // The notice is decided already: `next_ready` yields it without waiting.
            if let Some(delivery) = futures_util::FutureExt::now_or_never(subscription.next_ready()).flatten() {
                self.push(delivery);
            }
        }
        self.subscription.as_ref().map(Subscription::cursor)
    }

    /// [`Socket::subscribe_to`], answered with `subscribed` or an `error` that changes nothing.
    async fn change(&mut self, reference: &Option<Box<RawValue>>, topics: Vec<Topic>, start: Start<'_>) {
        match self.subscribe_to(topics, start).await {
            Ok(()) => self.announce(reference),
            Err(err) => {
                let error = HttpError::refused(err, &self.config.hub);
                self.error(reference, &error);
            }
        }
    }

    /// Queues the `subscribed` message of the subscription now in place.
    fn announce(&mut self, reference: &Option<Box<RawValue>>) {
        let Some(subscription) = &self.subscription else { return };
        let topics: Vec<&str> = subscription.topics().map(Topic::as_str).collect();
        let mut fields = json!({ "topics": topics });
        // Never a cursor before the gap notice it stands past: the notice carries it.
        if !subscription.starts_with_gap() {
            fields["id"] = Value::String(subscription.cursor().to_string());
        }
        self.answer(reference, "subscribed", fields);
    }

    async fn publish(&mut self, reference: &Option<Box<RawValue>>, event: NewEvent) {
        let topics = self.topics();
        let allowed = self.config.publish.allows(&self.client(&topics), &event);
        if let Err(error) = allowed {
            return self.error(reference, &error);
        }
        match self.config.hub.publish(event).await {
            Ok(event) => self.answer(reference, "ack", json!({ "id": event.cursor().to_string() })),
            Err(err) => self.error(reference, &HttpError::from(err)),
        }
    }

    async fn message(&mut self, reference: &Option<Box<RawValue>>, data: &RawValue) {
        let Some(handler) = self.config.on_message.clone() else {
            let error = HttpError::new(http::StatusCode::NOT_IMPLEMENTED, "this endpoint has no handler for messages");
            return self.error(reference, &error);
        };
        let topics = self.topics();
        let client = Client {
            peer: self.peer,
            topics: &topics,
            connection: self.subscription.as_ref().map(Subscription::connection),
            credentials: &self.credentials,
            hub: &self.config.hub,
        };
        let result = handler.on_message(&client, data).await;
        match result {
            Ok(Some(reply)) => self.answer(reference, "reply", json!({ "data": reply })),
            Ok(None) => self.answer(reference, "reply", json!({ "data": null })),
            Err(error) => self.error(reference, &error),
        }
    }

    fn client<'a>(&'a self, topics: &'a [Topic]) -> Client<'a> {
        Client {
            peer: self.peer,
            topics,
            connection: self.subscription.as_ref().map(Subscription::connection),
            credentials: &self.credentials,
            hub: &self.config.hub,
        }
    }

    /// Queues a message of `kind` with `fields` and the client's `ref`; nothing once a close
    /// frame is queued (RFC 6455: no data frame after a close).
    fn answer(&mut self, reference: &Option<Box<RawValue>>, kind: &str, fields: Value) {
        if self.done {
            return;
        }
        let mut message = Map::new();
        message.insert("type".into(), Value::String(kind.into()));
        if let Value::Object(fields) = fields {
            message.extend(fields);
        }
        self.out.put(protocol::answer_frame(&Value::Object(message), reference.as_deref()));
    }

    fn error(&mut self, reference: &Option<Box<RawValue>>, error: &HttpError) {
        let mut fields = json!({ "code": error.status.as_u16(), "message": error.message });
        if let Some(retry) = error.retry_after {
            fields["retry_ms"] = json!(retry.as_millis() as u64);
        }
        self.answer(reference, "error", fields);
    }

    /// Queues a close frame (the first only); the socket ends once it is written.
    fn close(&mut self, code: u16, reason: &str) {
        if self.done {
            return;
        }
        self.out.put(frame::close_frame_bytes(code, reason));
        self.done = true;
    }

    /// The hub is going away: a `closing` message with the delay, then 1012.
    fn closing(&mut self, delay: Duration) {
        let ms = delay.as_millis() as u64;
        self.answer(&None, "closing", json!({ "retry_ms": ms }));
        self.close(close::SERVICE_RESTART, &format!("server is shutting down; come back in {ms} ms"));
    }

    fn push(&mut self, delivery: Delivery) {
        let Some(subscription) = self.subscription.as_ref().filter(|_| !self.done) else { return };
        match delivery {
            Delivery::Event(event) => {
                if subscription.stands_just_after(event.event()) {
                    // One topic: the whole frame is the event's own, encoded once for all.
                    self.out.put_event(&event, None);
                } else {
                    self.out.put_event(&event, Some(&subscription.cursor()));
                }
            }
            Delivery::Gap(gap) => {
                let topics: Vec<&str> = gap.topics.iter().map(Topic::as_str).collect();
                let id = subscription.cursor().to_string();
                self.answer(&None, "gap", json!({ "topics": topics, "id": id }));
            }
            Delivery::Closing(closing) => self.closing(closing.reconnect_after),
            _ => {}
        }
    }
}

/// Where a new subscription starts: a token from the client, or the socket's own position.
enum Start<'a> {
    Token(Option<&'a str>),
    Position(Cursor),
}

/// Resolves when `shutdown` does; never while there is none.
async fn shut_down(shutdown: &mut Option<Pin<Box<dyn Future<Output = ()> + Send>>>) {
    match shutdown {
        Some(shutdown) => shutdown.await,
        None => std::future::pending().await,
    }
}

/// The next delivery of `subscription`, or never while there is none.
async fn next(subscription: &mut Option<Subscription>) -> Option<Delivery> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}

/// What is queued to go out: finished chunks, then small frames gathered into one.
#[derive(Default)]
struct Out {
    queued: VecDeque<Bytes>,
    gathering: BytesMut,
    /// Bytes in `queued` and `gathering`.
    len: usize,
}

impl Out {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `bytes`: copied if small, else as they are.
    fn put(&mut self, bytes: Bytes) {
        if bytes.len() < COALESCE_BELOW {
            self.copy(&bytes);
        } else {
            self.enqueue(bytes);
        }
    }

    fn copy(&mut self, bytes: &[u8]) {
        self.write(bytes.len(), |out| out.extend_from_slice(bytes));
    }

    /// Appends to the chunk being gathered what `write` writes (`room`: at most that much).
    fn write(&mut self, room: usize, write: impl FnOnce(&mut BytesMut)) {
        if self.gathering.capacity() - self.gathering.len() < room {
            self.gathering.reserve(room.max(4096));
        }
        let before = self.gathering.len();
        write(&mut self.gathering);
        self.len += self.gathering.len() - before;
    }

    fn enqueue(&mut self, bytes: Bytes) {
        if !self.gathering.is_empty() {
            self.queued.push_back(self.gathering.split().freeze());
        }
        self.len += bytes.len();
        self.queued.push_back(bytes);
    }

    /// Queues an event: its shared whole frame (`head` is `None`), or `head` and the shared
    /// JSON of the event. Small ones are copied straight from the shared bytes; a large one
    /// goes out as the shared bytes themselves, never copied per subscriber.
    fn put_event(&mut self, event: &SharedEvent, cursor: Option<&Cursor>) {
        match cursor {
            None => self.put_shared::<EventFrameWithId>(event),
            Some(cursor) => {
                // The subscriber's own head, written straight into the chunk.
                let token = cursor.to_string();
                let body_len = event.with_encoded::<JsonEvent, _>(Bytes::len);
                self.write(protocol::EVENT_HEAD_ROOM + token.len(), |out| protocol::put_event_head(out, &token, body_len));
                self.put_shared::<JsonEvent>(event);
            }
        }
    }

    /// Queues `event`'s shared encoding `F`: copied if small, else the shared bytes themselves.
    fn put_shared<F: WireFormat>(&mut self, event: &SharedEvent) {
        if event.with_encoded::<F, _>(Bytes::len) < COALESCE_BELOW {
            event.with_encoded::<F, _>(|f| self.copy(f));
        } else {
            self.enqueue(event.encoded::<F>());
        }
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        let chunk = match self.queued.pop_front() {
            Some(chunk) => chunk,
            None if !self.gathering.is_empty() => self.gathering.split().freeze(),
            None => return None,
        };
        self.len -= chunk.len();
        Some(chunk)
    }

    /// Gives back the room of a burst (called when idle).
    fn release(&mut self) {
        if self.queued.capacity() > 0 {
            self.queued = VecDeque::new();
        }
        if self.gathering.capacity() > 0 {
            self.gathering = BytesMut::new();
        }
    }
}
