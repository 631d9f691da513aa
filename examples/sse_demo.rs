//! Run with: `cargo run --example sse_demo`, then open <http://localhost:8888/>.
//!
//! The seed demo, made true: a page where events roll in every 2.5 s, and where leaving the page
//! and coming back, or dropping the connection, delivers exactly the events that were missed.
//! After a server restart the in-memory log is gone, so the page shows a gap notice instead.
//!
//! - `GET /`: the page.
//! - `GET /events?topic=A&topic=B`: the SSE stream (default topic `demo`).
//! - `GET /poll?topic=A&cursor=C`: the same events by long-polling.
//! - `GET /tidings.js`: the browser client the page uses (SSE, falling back to long-polling).
//! - `GET /stats`: the hub's counters as JSON (open subscriptions, connections, lags, gaps).
//! - `POST /login` with `{"user": "alice"}`: a JWT (and an HttpOnly cookie) that lets alice
//!   read the private topic `private/alice`; `private/…` topics need such a token, sent as
//!   `Authorization: Bearer` or in the cookie (`TIDINGS_JWT_SECRET` sets the secret, else a
//!   random one per process). A stand-in for an application's log-in: no password.
//! - `GET /metrics`: every metric of the library in Prometheus text (connections by
//!   transport, deliveries, replays, gaps, refusals, push results, store latency).
//! - `GET /push/vapid-public-key`, `POST /push/subscriptions`, `DELETE /push/subscriptions`:
//!   Web Push (the page's "Enable notifications" button); `GET /tidings-sw.js`: the service
//!   worker that shows pushed events.
//! - `POST /publish` with `{"topic": "...", "event": "optional-type", "data": "..."}`:
//!   answers `201 {"id": "<cursor>"}`, or a 4xx with `{"error": "..."}`.
//!
//! `PORT` (environment) or `--port N` changes the port (default 8888). The server binds
//! 127.0.0.1 only. `--store` chooses the log: `sqlite:PATH` (the default,
//! `sqlite:./tidings-data/events.db`: events survive restarts, so the page catches up exactly),
//! `memory` (lost on restart: the page shows a gap), or `redis://HOST:PORT/` (several demo
//! processes share one log). `--retain N` keeps the last N events per topic (default 10 000);
//! `--quiet` stops the console lines per client (for benchmarks).
//!
//! Limits (see `tidings::http::Server`): `--max-connections N` (default 90 % of the open-file
//! limit: one more gets a 503), `--max-connections-per-ip N` (default 1024: one more gets a
//! 429), `--header-timeout SECS` (default 10: a client slower to send its request headers is
//! cut off). Request heads over 16 KiB get a 431, publish bodies over 8 MiB a 413.
//!
//! Web Push: the VAPID key is created on first start as `vapid.key` next to the data (the
//! SQLite file's directory, else `./tidings-data/`) and reused; push subscriptions and their
//! cursors are kept in `push.db` there. `TIDINGS_PUSH_ALLOW_HOSTS` (comma-separated
//! `host:port`, empty by default) lets push endpoints on those hosts through the endpoint
//! policy (public `https` only otherwise); `TIDINGS_PUSH_CA_FILE` adds a root certificate (PEM)
//! for a private push service; `TIDINGS_PUSH_CONTACT` sets the VAPID contact (default
//! `mailto:tidings-demo@example.com`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tidings::longpoll::LongPoll;
use tidings::sse::Sse;
use tidings::redis::{RedisOptions, RedisStore};
use tidings::sqlite::SqliteStore;
use tidings::webpush::{EndpointPolicy, SqlitePushRegistry, VapidKeys, WebPush};
use tidings::{Connection, Disconnect, EventType, Hub, Lifecycle, MemoryStore, NewEvent, Retention, Topic};

#[path = "common/login.rs"]
mod login;

const PAGE: &str = include_str!("assets/sse_demo.html");

/// Prints each client arriving and leaving, as the seed demo's console did (unless `--quiet`:
/// benchmarks open thousands).
#[derive(Debug)]
struct Console {
    quiet: bool,
}

impl Lifecycle for Console {
    fn on_connect(&self, c: &Connection) {
        if self.quiet {
            return;
        }
        let topics: Vec<&str> = c.topics.iter().map(Topic::as_str).collect();
        let peer = c.peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
        match &c.cursor {
            Some(cursor) => println!(
                "Client {} connected over {} from {peer} to {topics:?}, resuming after {cursor}",
                c.id, c.transport
            ),
            None => println!("Client {} connected over {} from {peer} to {topics:?}", c.id, c.transport),
        }
    }

    fn on_disconnect(&self, c: &Connection, d: &Disconnect) {
        if self.quiet {
            return;
        }
        let plural = if d.delivered == 1 { "" } else { "s" };
        println!(
            "Client {} went away after {} event{plural} ({:.1} s)",
            c.id,
            d.delivered,
            d.duration.as_secs_f64()
        );
    }
}

/// The value of `--name VALUE` or `--name=VALUE`.
fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if let Some(v) = arg.strip_prefix(&format!("{name}=")) {
            return Some(v.to_owned());
        }
        if arg == name {
            return args.next();
        }
    }
    None
}

fn fail(message: String) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

fn port() -> u16 {
    if let Some(v) = arg("--port") {
        return v.parse().unwrap_or_else(|_| fail(format!("--port takes a number, got {v:?}")));
    }
    match std::env::var("PORT") {
        Ok(v) => v.parse().unwrap_or_else(|_| fail(format!("PORT must be a number, got {v:?}"))),
        Err(_) => 8888,
    }
}

fn store_spec() -> String {
    arg("--store").unwrap_or_else(|| "sqlite:./tidings-data/events.db".to_owned())
}

/// Where the demo keeps its files besides the log: the SQLite file's directory, else
/// `./tidings-data`.
fn data_dir() -> std::path::PathBuf {
    let spec = store_spec();
    spec.strip_prefix("sqlite:")
        .and_then(|p| std::path::Path::new(p).parent().map(std::path::Path::to_path_buf))
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| "./tidings-data".into())
}

/// Starts Web Push: key, registry and policy as the module documentation says.
async fn web_push(hub: Hub) -> WebPush {
    let dir = data_dir();
    let keys = VapidKeys::load_or_generate(dir.join("vapid.key"))
        .unwrap_or_else(|e| fail(format!("cannot load or create the VAPID key in {}: {e}", dir.display())));
    let registry = SqlitePushRegistry::open(dir.join("push.db"))
        .await
        .unwrap_or_else(|e| fail(format!("cannot open the push registry in {}: {e}", dir.display())));
    let allow = std::env::var("TIDINGS_PUSH_ALLOW_HOSTS").unwrap_or_default();
    let policy = EndpointPolicy::from_list(&allow)
        .unwrap_or_else(|e| fail(format!("TIDINGS_PUSH_ALLOW_HOSTS: {e}")));
    let contact = std::env::var("TIDINGS_PUSH_CONTACT").unwrap_or_else(|_| "mailto:tidings-demo@example.com".into());
    let mut builder = WebPush::builder(hub, registry, keys, &contact)
        .unwrap_or_else(|e| fail(format!("TIDINGS_PUSH_CONTACT: {e}")))
        .endpoint_policy(policy);
    if let Ok(path) = std::env::var("TIDINGS_PUSH_CA_FILE") {
        let pem = std::fs::read_to_string(&path).unwrap_or_else(|e| fail(format!("TIDINGS_PUSH_CA_FILE {path}: {e}")));
        builder = builder.add_root_certificate(pem);
    }
    builder.start().await.unwrap_or_else(|e| fail(format!("cannot start Web Push: {e}")))
}

/// Opens the store `--store` names; returns it with a description for the console.
async fn store() -> (std::sync::Arc<dyn tidings::Store>, String) {
    let spec = store_spec();
    let retain = arg("--retain").map_or(10_000, |v| {
        v.parse().unwrap_or_else(|_| fail(format!("--retain takes a number of events, got {v:?}")))
    });
    let retention = Retention::default().max_events(retain);
    if spec == "memory" {
        return (std::sync::Arc::new(MemoryStore::with_retention(retention)), "memory (lost on restart)".into());
    }
    if let Some(path) = spec.strip_prefix("sqlite:") {
        let store = SqliteStore::open(path, retention)
            .await
            .unwrap_or_else(|e| fail(format!("cannot open the SQLite store at {path}: {e}")));
        let shown = std::fs::canonicalize(path).map_or_else(|_| path.to_owned(), |p| p.display().to_string());
        return (std::sync::Arc::new(store), format!("sqlite at {shown}"));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") || spec.starts_with("redis+unix://") {
        let store = RedisStore::connect(&spec, RedisOptions::default().retention(retention))
            .await
            .unwrap_or_else(|e| fail(format!("cannot connect to Redis at {spec}: {e}")));
        return (std::sync::Arc::new(store), format!("redis at {spec}"));
    }
    fail(format!("--store takes memory, sqlite:PATH or redis://HOST:PORT/, got {spec:?}"))
}

async fn stats(State(hub): State<Hub>) -> Response {
    let s = hub.stats();
    axum::Json(serde_json::json!({
        "subscribers": s.subscribers, "connections": s.connections, "lagged": s.lagged, "gaps": s.gaps,
    }))
    .into_response()
}

/// Publishes "Server says hi! (event #k)" to `demo` every `period` (2.5 s in the demo).
pub(crate) async fn ticker(hub: Hub, period: Duration) {
    let demo = Topic::new("demo");
    let greeting = EventType::new("my-custom-event");
    let mut interval = tokio::time::interval(period);
    interval.tick().await;
    loop {
        interval.tick().await;
        let k = match hub.store().bounds(&demo).await {
            Ok(bounds) => bounds.last + 1,
            Err(e) => {
                eprintln!("store unavailable: {e}");
                continue;
            }
        };
        let event = NewEvent::new(demo.clone(), format!("Server says hi! (event #{k})"))
            .with_type(greeting.clone());
        if let Err(e) = hub.publish(event).await {
            eprintln!("publish failed: {e}");
        }
    }
}

/// The demo's routes over `hub`, with Web Push's.
pub(crate) fn app(hub: Hub, push: &WebPush) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", Sse::new(hub.clone()).default_topics(vec![Topic::new("demo")]).method_router())
        .route("/poll", LongPoll::new(hub.clone()).default_topics(vec![Topic::new("demo")]).method_router())
        .route("/tidings.js", tidings::client::route())
        .route("/tidings-sw.js", tidings::client::service_worker_route())
        .route("/stats", get(stats))
        .route("/publish", tidings::http::publish_route(hub.clone()))
        .with_state(hub)
        .merge(push.router())
}

#[tokio::main]
async fn main() {
    let (store, described) = store().await;
    // `private/<user>` topics need a JWT listing them (from `POST /login`); others are open.
    let secret = login::secret();
    let hub = Hub::builder_shared(store)
        .lifecycle(Console { quiet: std::env::args().any(|a| a == "--quiet") })
        .authorize(login::authorizer(&secret))
        .build();
    let addr = SocketAddr::from(([127, 0, 0, 1], port()));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e} (set PORT or --port to use another port)");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().expect("bound address");
    println!("Server-Sent Events demo: open http://localhost:{}/ (store: {described})", addr.port());
    // After the banner: resumed push subscriptions print their lifecycle lines.
    let push = web_push(hub.clone()).await;
    let app = app(hub.clone(), &push);
    println!(
        "Web Push: VAPID key {} in {}, {} push subscription(s)",
        push.public_key(),
        data_dir().display(),
        push.stats().subscriptions
    );
    tokio::spawn(ticker(hub.clone(), Duration::from_millis(2500)));

    // Every limit of the library's server, at its default unless a flag says otherwise: a
    // client whose socket stops draining for 30 s is disconnected (it reconnects and replays),
    // request heads must come within 10 s and stay under 16 KiB, connections are bounded in
    // total and per address.
    // Prometheus text at GET /metrics: what the library records through the `metrics` crate.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap_or_else(|e| fail(format!("cannot install the metrics recorder: {e}")));
    tidings::describe_metrics();
    let app = app.route("/login", login::route(secret)).route(
        "/metrics",
        get(move || {
            let prometheus = prometheus.clone();
            async move {
                prometheus.run_upkeep();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus.render())
            }
        }),
    );
    let mut server = tidings::http::Server::new(app);
    if let Some(n) = number_arg("--max-connections") {
        server = server.max_connections(n);
    }
    if let Some(n) = number_arg("--max-connections-per-ip") {
        server = server.max_connections_per_ip(n);
    }
    if let Some(secs) = number_arg("--header-timeout") {
        server = server.header_timeout(Duration::from_secs(secs as u64));
    }

    // SIGTERM or Ctrl-C: stop accepting, tell SSE streams when to come back (`retry:`, jittered
    // 1-5 s) and end them, answer waiting long-polls with their cursor, stop pushing; then exit
    // 0 once the connections are done, or after 10 s whatever they do.
    let shutdown_hub = hub.clone();
    server
        .serve(listener, async move {
            tidings::http::shutdown_signal().await;
            println!("Shutting down: clients are told to come back in 1 to 5 s");
            push.shutdown();
            shutdown_hub.shutdown();
        })
        .await
        .expect("server error");
}

/// The value of `--name N` as a number, if given.
fn number_arg(name: &str) -> Option<usize> {
    arg(name).map(|v| v.parse().unwrap_or_else(|_| fail(format!("{name} takes a number, got {v:?}"))))
}
