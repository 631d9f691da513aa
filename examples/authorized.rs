//! Run with: `cargo run --example authorized`, then log in and read a private topic:
//!
//! ```text
//! TOKEN=$(curl -s -d '{"user":"alice"}' localhost:8889/login | sed 's/.*"token":"\([^"]*\)".*/\1/')
//! curl -N -H "Authorization: Bearer $TOKEN" 'localhost:8889/events?topic=private/alice'
//! ```
//!
//! Authorization as Mercure does it, and presence: topics `private/<name>` are readable only
//! with a JWT whose claims list them (`{"tidings": {"subscribe": ["private/alice"]}}`), sent as
//! `Authorization: Bearer` or in the cookie `tidingsAuthorization` (what a browser's
//! `EventSource` sends); every other topic is open. `POST /login` stands in for the
//! application's log-in and hands out such tokens (see `common/login.rs`). The lifecycle hooks
//! count who is connected to what, served at `GET /presence`. The same hook guards SSE
//! (`/events`) and long-polling (`/poll`), and replay after a cursor never leaks a topic the
//! token does not list.
//!
//! `--port` or `PORT` changes the port (default 8889); `--jwt-secret` or `TIDINGS_JWT_SECRET`
//! sets the signing secret; `--help` lists them. Publish with
//! `curl -d '{"topic":"private/alice","data":"hi"}' localhost:8889/publish`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use tidings::longpoll::LongPoll;
use tidings::sse::Sse;
use tidings::{Connection, Disconnect, Hub, Lifecycle, MemoryStore};

#[path = "common/login.rs"]
mod login;

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

/// The example's routes, over a fresh hub, signing and checking tokens with `secret`.
pub(crate) fn app_with_secret(secret: Arc<[u8]>) -> (Router, Hub, Arc<Presence>) {
    let presence = Arc::new(Presence::default());
    let hub = Hub::builder(MemoryStore::new())
        .authorize(login::authorizer(&secret))
        .lifecycle(presence.clone())
        .build();
    let router = Router::new()
        .route("/events", Sse::new(hub.clone()).method_router())
        .route("/poll", LongPoll::new(hub.clone()).method_router())
        .route("/publish", tidings::http::publish_route(hub.clone()))
        .route("/login", login::route(secret))
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

/// The `authorized` example: private topics behind JWTs, and presence counts.
#[derive(Debug, clap::Parser)]
#[command(about = "Private topics behind JWTs (POST /login), with presence counts at /presence", long_about = None)]
struct Args {
    /// The port to listen on (127.0.0.1 only).
    #[arg(long, env = "PORT", default_value_t = 8889)]
    port: u16,
    /// The secret that signs and checks tokens, at least 32 bytes (default: 32 random bytes
    /// per process).
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true, value_parser = login::parse_secret)]
    jwt_secret: Option<String>,
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let listener = match tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on port {}: {e} (set PORT or --port to use another port)", args.port);
            std::process::exit(1);
        }
    };
    println!("authorized example: http://localhost:{}/events?topic=private/alice", listener.local_addr().unwrap().port());
    let (router, _hub, _presence) = app_with_secret(login::secret(args.jwt_secret.as_deref()));
    tidings::http::Server::new(router).serve(listener, tidings::http::shutdown_signal()).await.unwrap();
}
