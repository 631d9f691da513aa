//! The server a user would write by hand: axum's `Sse` over a `tokio::sync::broadcast`
//! channel, no ids, no replay. The baseline of `bench/run`.
//!
//! ```text
//! handwritten [--port N] [--variant events|shared]
//! handwritten --help            (every flag, with its default)
//! ```
//!
//! - `events` (default): each subscriber turns the published text into an
//!   `axum::response::sse::Event` (the frame is encoded once per subscriber), as axum's
//!   documentation shows;
//! - `shared`: each frame is encoded once, as `Bytes`, and the same bytes go to every
//!   subscriber.
//!
//! `GET /ws` is the same over WebSocket, as axum's documentation shows it (`WebSocketUpgrade`
//! over tokio-tungstenite): one task per socket, each event sent as a text message of its
//! data (the `Utf8Bytes` shared through the channel, not copied per socket). With
//! `--ws-read-buffer N` and `--ws-write-buffer N`, tokio-tungstenite's buffers are set to N
//! bytes (default: the library's, 128 KiB each): the tuned candidate of
//! `docs/architecture.md`. With `--ws-impl fastwebsockets`, `/ws` is served by
//! fastwebsockets (Deno's) instead, the same way: the other candidate measured there (it only
//! writes: the benchmark's clients send nothing it must read).
//!
//! `GET /events` streams; `POST /publish` takes `{"topic": ..., "data": ...}` (the topic is
//! ignored: one channel) and answers 204.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

#[derive(Clone)]
struct App {
    shared: bool,
    text: broadcast::Sender<std::sync::Arc<str>>,
    frames: broadcast::Sender<Bytes>,
    messages: broadcast::Sender<Utf8Bytes>,
    ws_read_buffer: Option<usize>,
    ws_write_buffer: Option<usize>,
}

/// The WebSocket library behind `/ws`.
#[derive(Clone, Copy, PartialEq, Debug, ValueEnum)]
enum WsImpl {
    /// axum's `ws` (tokio-tungstenite)
    Tungstenite,
    /// fastwebsockets
    Fastwebsockets,
}

/// The command line.
#[derive(Parser, Debug)]
#[command(
    about = "The server a user would write by hand (axum's Sse over a broadcast channel): the baseline of bench/run",
    long_about = None
)]
struct Cli {
    /// The port to listen on, on 127.0.0.1 (0: any free port)
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How each frame is encoded
    #[arg(long, value_enum, default_value_t = Variant::Events)]
    variant: Variant,
    /// tokio-tungstenite's read buffer for /ws, in bytes (default: the library's)
    #[arg(long)]
    ws_read_buffer: Option<usize>,
    /// tokio-tungstenite's write buffer for /ws, in bytes (default: the library's)
    #[arg(long)]
    ws_write_buffer: Option<usize>,
    /// The WebSocket library behind /ws
    #[arg(long, value_enum, default_value_t = WsImpl::Tungstenite)]
    ws_impl: WsImpl,
}

/// How each frame is encoded.
#[derive(Clone, Copy, PartialEq, Debug, ValueEnum)]
enum Variant {
    /// Each subscriber turns the published text into an axum SSE Event
    Events,
    /// Each frame is encoded once, as Bytes shared by every subscriber
    Shared,
}

async fn events(State(app): State<App>) -> Response {
    if app.shared {
        let stream = BroadcastStream::new(app.frames.subscribe()).filter_map(|r| async move { r.ok().map(Ok::<_, Infallible>) });
        let mut response = Body::from_stream(stream).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().expect("a header value"));
        response.headers_mut().insert(header::CACHE_CONTROL, "no-cache".parse().expect("a header value"));
        response
    } else {
        let stream = BroadcastStream::new(app.text.subscribe())
            .filter_map(|r| async move { r.ok().map(|text| Ok::<_, Infallible>(Event::default().data(&*text))) });
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
    }
}

async fn ws(State(app): State<App>, mut upgrade: WebSocketUpgrade) -> Response {
    if let Some(n) = app.ws_read_buffer {
        upgrade = upgrade.read_buffer_size(n);
    }
    if let Some(n) = app.ws_write_buffer {
        upgrade = upgrade.write_buffer_size(n);
    }
    let mut messages = app.messages.subscribe();
    upgrade.on_upgrade(move |mut socket| async move {
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(text) => {
                        if socket.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    })
}

async fn fws(State(app): State<App>, upgrade: fastwebsockets::upgrade::IncomingUpgrade) -> Response {
    let Ok((response, upgraded)) = upgrade.upgrade() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut messages = app.messages.subscribe();
    tokio::spawn(async move {
        let Ok(mut socket) = upgraded.await else { return };
        loop {
            match messages.recv().await {
                Ok(text) => {
                    let frame = fastwebsockets::Frame::text(fastwebsockets::Payload::Borrowed(text.as_bytes()));
                    if socket.write_frame(frame).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    response.map(Body::new)
}

async fn publish(State(app): State<App>, body: Bytes) -> Response {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid JSON").into_response();
    };
    let Some(data) = value.get("data").and_then(|d| d.as_str()) else {
        return (StatusCode::BAD_REQUEST, "no data").into_response();
    };
    let _ = app.messages.send(Utf8Bytes::from(data));
    if app.shared {
        // Payloads without line breaks (the benchmark's) need one `data:` line.
        let mut frame = Vec::with_capacity(data.len() + 8);
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(data.as_bytes());
        frame.extend_from_slice(b"\n\n");
        let _ = app.frames.send(Bytes::from(frame));
    } else {
        let _ = app.text.send(data.into());
    }
    StatusCode::NO_CONTENT.into_response()
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let port = cli.port;
    let shared = cli.variant == Variant::Shared;
    let app = App {
        shared,
        text: broadcast::channel(4096).0,
        frames: broadcast::channel(4096).0,
        messages: broadcast::channel(4096).0,
        ws_read_buffer: cli.ws_read_buffer,
        ws_write_buffer: cli.ws_write_buffer,
    };
    let router = Router::new()
        .route("/events", get(events))
        .route("/ws", if cli.ws_impl == WsImpl::Fastwebsockets { get(fws) } else { get(ws) })
        .route("/publish", post(publish))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("handwritten listening on http://{}", listener.local_addr().expect("an address"));
    axum::serve(listener, router).await.expect("serve");
}
