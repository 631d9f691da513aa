//! Run with: `cargo run --example authorized`, then
//! `curl -N -b user=alice 'localhost:8889/events?topic=private/alice'`.
//!
//! Authorization and presence: topics `private/<name>` are readable only by the user `<name>`
//! (here a `user` cookie stands in for a real session), every other topic by anyone; the
//! lifecycle hooks count who is connected to what, served at `GET /presence`. The same hooks
//! guard SSE (`/events`) and long-polling (`/poll`), and replay after a cursor never leaks a
//! topic the request may not read.
//!
//! `PORT` changes the port (default 8889). Publish with
//! `curl -d '{"topic":"private/alice","data":"hi"}' localhost:8889/publish`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tidings::longpoll::LongPoll;
use tidings::sse::Sse;
use tidings::{
    AccessRequest, Connection, Disconnect, Hub, Lifecycle, MemoryStore, NewEvent, Refusal, Topic,
    authorize_fn,
};

/// Who may read what: `private/<name>` needs the cookie `user=<name>`.
pub(crate) fn authorize(request: &AccessRequest<'_>) -> Result<(), Refusal> {
    for topic in request.topics {
        if let Some(owner) = topic.as_str().strip_prefix("private/") {
            match request.credentials.cookie("user") {
                None => return Err(Refusal::unauthenticated("log in to read private topics")),
                Some(user) if user == owner => {}
                Some(_) => return Err(Refusal::forbidden(format!("{topic} is not yours"))),
            }
        }
    }
    Ok(())
}

/// Open subscriptions per topic.
#[derive(Debug, Default)]
pub(crate) struct Presence(Mutex<BTreeMap<String, usize>>);

impl Lifecycle for Presence {
    fn on_connect(&self, connection: &Connection) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for topic in &connection.topics {
            *counts.entry(topic.to_string()).or_default() += 1;
        }
    }

    fn on_disconnect(&self, connection: &Connection, _: &Disconnect) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for topic in &connection.topics {
            if let Some(n) = counts.get_mut(topic.as_str()) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(topic.as_str());
                }
            }
        }
    }
}

/// The example's routes, over a fresh hub.
pub(crate) fn app() -> (Router, Hub, Arc<Presence>) {
    let presence = Arc::new(Presence::default());
    let hub = Hub::builder(MemoryStore::new())
        .authorize(authorize_fn(authorize))
        .lifecycle(presence.clone())
        .build();
    let router = Router::new()
        .route("/events", Sse::new(hub.clone()).method_router())
        .route("/poll", LongPoll::new(hub.clone()).method_router())
        .route("/publish", post(publish))
        .route(
            "/presence",
            get({
                let presence = presence.clone();
                move || async move {
                    let counts = presence.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    axum::Json(counts).into_response()
                }
            }),
        )
        .with_state(hub.clone());
    (router, hub, presence)
}

#[derive(serde::Deserialize)]
struct Publish {
    topic: String,
    data: String,
}

async fn publish(State(hub): State<Hub>, axum::Json(body): axum::Json<Publish>) -> impl IntoResponse {
    let Ok(topic) = Topic::parse(&body.topic) else {
        return (axum::http::StatusCode::BAD_REQUEST, "invalid topic").into_response();
    };
    match hub.publish(NewEvent::new(topic, body.data)).await {
        Ok(event) => (axum::http::StatusCode::CREATED, event.cursor().to_string()).into_response(),
        Err(err) => tidings::http::HttpError::from(err).into_response(),
    }
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8889);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on port {port}: {e}"));
    println!("authorized example: http://localhost:{}/events?topic=private/alice", listener.local_addr().unwrap().port());
    let (router, _hub, _presence) = app();
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
}
