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
//!   `Authorization: Bearer` or in the cookie (`--jwt-secret` or `TIDINGS_JWT_SECRET` sets the
//!   secret, else a random one per process). A stand-in for an application's log-in: no password.
//! - `GET /metrics`: every metric of the library in Prometheus text (connections by
//!   transport, deliveries, replays, gaps, refusals, push results, store latency).
//! - `GET /push/vapid-public-key`, `POST /push/subscriptions`, `DELETE /push/subscriptions`:
//!   Web Push (the page's "Enable notifications" button); `GET /tidings-sw.js`: the service
//!   worker that shows pushed events.
//! - `POST /publish` with `{"topic": "...", "event": "optional-type", "data": "..."}`:
//!   answers `201 {"id": "<cursor>"}`, or a 4xx with `{"error": "..."}`.
//!
//! `--help` lists every flag with its default and environment variable; an unknown flag is an
//! error (exit status 2). `--port N` or `PORT` changes the port (default 8888). The server binds
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
//! HTTPS: `--tls-cert FILE --tls-key FILE` (PEM) serves HTTP/2 and HTTP/1.1 by ALPN. Without
//! them, HTTP/1.1 and HTTP/2 with prior knowledge (`curl --http2-prior-knowledge`).
//!
//! Behind a reverse proxy (see `docs/deployment.md`): `--trusted-proxies CIDR,...` (default
//! loopback and the private ranges) are the proxies whose `X-Forwarded-For` is believed, so that
//! the per-address limit counts real clients; `--proxy-protocol` expects a PROXY protocol header
//! (v1 or v2) on every connection instead.
//!
//! Web Push: the VAPID key is created on first start as `vapid.key` next to the data (the
//! SQLite file's directory, else `./tidings-data/`) and reused; push subscriptions and their
//! cursors are kept in `push.db` there. `--push-allow-hosts` or `TIDINGS_PUSH_ALLOW_HOSTS`
//! (comma-separated `host:port`, empty by default) lets push endpoints on those hosts through the
//! endpoint policy (public `https` only otherwise); `--push-ca-file` or `TIDINGS_PUSH_CA_FILE`
//! adds a root certificate (PEM) for a private push service; `--push-contact` or
//! `TIDINGS_PUSH_CONTACT` sets the VAPID contact (default `mailto:tidings-demo@example.com`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tidings::longpoll::LongPoll;
use tidings::websocket::{SubscribedTopics, WebSocket};
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

/// The demo's command line (`--help` prints it with every default and environment variable).
#[derive(Debug, clap::Parser)]
#[command(about = "The tidings demo: a page where events roll in, and replay exactly what was missed", long_about = None)]
pub(crate) struct Args {
    /// The port to listen on (127.0.0.1 only).
    #[arg(long, env = "PORT", default_value_t = 8888)]
    port: u16,
    /// Where the log lives: `memory` (lost on restart), `sqlite:PATH` (kept across restarts) or
    /// `redis://HOST:PORT/` (shared by several demo processes).
    #[arg(long, default_value = "sqlite:./tidings-data/events.db", value_parser = parse_store)]
    store: String,
    /// Events kept per topic.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    retain: u64,
    /// No console line per client arriving and leaving (for benchmarks).
    #[arg(long)]
    quiet: bool,
    /// Connections at once; one more gets a 503 [default: 90 % of the open-file limit].
    #[arg(long, value_name = "N")]
    max_connections: Option<std::num::NonZeroUsize>,
    /// Connections at once from one client address (IPv6: one /64); one more gets a 429. Behind a
    /// trusted proxy, requests at once per client it names.
    #[arg(long, value_name = "N", default_value = "1024")]
    max_connections_per_ip: std::num::NonZeroUsize,
    /// Seconds a client has to send its request head before it is cut off.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Push endpoints let through the endpoint policy besides public `https` ones:
    /// comma-separated `host:port`.
    #[arg(long, env = "TIDINGS_PUSH_ALLOW_HOSTS", value_name = "HOST:PORT,...", default_value = "", value_parser = parse_allow_hosts)]
    push_allow_hosts: String,
    /// A root certificate (PEM) to trust for a private push service.
    #[arg(long, env = "TIDINGS_PUSH_CA_FILE", value_name = "PATH", value_parser = tidings::webpush::read_root_certificate)]
    push_ca_file: Option<String>,
    /// The VAPID contact push services may write to (`mailto:` or `https:`).
    #[arg(long, env = "TIDINGS_PUSH_CONTACT", default_value = "mailto:tidings-demo@example.com", value_parser = parse_contact)]
    push_contact: String,
    /// The secret that signs and checks `/login` tokens, at least 32 bytes [default: 32 random
    /// bytes per process].
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true, value_parser = login::parse_secret)]
    jwt_secret: Option<String>,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this certificate chain (PEM); needs
    /// `--tls-key`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Comma-separated address ranges (or addresses) of reverse proxies whose `X-Forwarded-For`
    /// is believed (empty: none); each request from one is counted under the client it names.
    #[arg(long, value_name = "CIDR,...", default_value = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7", value_parser = parse_ranges)]
    trusted_proxies: Ranges,
    /// Every connection starts with a PROXY protocol header (v1 or v2), which names the client:
    /// for a listener behind HAProxy's `send-proxy` or a load balancer that sends it.
    #[arg(long)]
    proxy_protocol: bool,
}

/// Address ranges (`--trusted-proxies`).
#[derive(Debug, Clone)]
pub(crate) struct Ranges(Vec<tidings::server::IpNet>);

/// Reads `--trusted-proxies`: comma-separated CIDR ranges or single addresses, or nothing.
fn parse_ranges(list: &str) -> Result<Ranges, String> {
    list.split(',')
        .map(str::trim)
        .filter(|range| !range.is_empty())
        .map(|range| {
            range
                .parse::<tidings::server::IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| range.parse::<std::net::IpAddr>().map(tidings::server::IpNet::from))
                .map_err(|_| format!("{range:?} is not an address range like 10.0.0.0/8 or an address"))
        })
        .collect::<Result<_, _>>()
        .map(Ranges)
}

/// Checks `--push-allow-hosts` before anything starts.
fn parse_allow_hosts(list: &str) -> Result<String, String> {
    EndpointPolicy::from_list(list).map(|_| list.to_owned())
}

/// Checks `--push-contact` before anything starts.
fn parse_contact(contact: &str) -> Result<String, String> {
    tidings::webpush::Contact::parse(contact).map(|_| contact.to_owned()).map_err(|e| e.to_string())
}

/// Checks `--store` before anything starts.
fn parse_store(spec: &str) -> Result<String, String> {
    let known = spec == "memory"
        || spec.strip_prefix("sqlite:").is_some_and(|path| !path.is_empty())
        || spec.starts_with("redis://")
        || spec.starts_with("rediss://")
        || spec.starts_with("redis+unix://");
    if known { Ok(spec.to_owned()) } else { Err("expected memory, sqlite:PATH or redis://HOST:PORT/".to_owned()) }
}

fn fail(message: String) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

/// Where the demo keeps its files besides the log: the SQLite file's directory, else
/// `./tidings-data`.
fn data_dir(args: &Args) -> std::path::PathBuf {
    args.store
        .strip_prefix("sqlite:")
        .and_then(|p| std::path::Path::new(p).parent().map(std::path::Path::to_path_buf))
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| "./tidings-data".into())
}

/// Starts Web Push: key, registry and policy as the module documentation says.
async fn web_push(hub: Hub, args: &Args) -> WebPush {
    let dir = data_dir(args);
    let keys = VapidKeys::load_or_generate(dir.join("vapid.key"))
        .unwrap_or_else(|e| fail(format!("cannot load or create the VAPID key in {}: {e}", dir.display())));
    let registry = SqlitePushRegistry::open(dir.join("push.db"))
        .await
        .unwrap_or_else(|e| fail(format!("cannot open the push registry in {}: {e}", dir.display())));
    let policy = EndpointPolicy::from_list(&args.push_allow_hosts)
        .unwrap_or_else(|e| fail(format!("--push-allow-hosts (TIDINGS_PUSH_ALLOW_HOSTS): {e}")));
    let mut builder = WebPush::builder(hub, registry, keys, &args.push_contact)
        .unwrap_or_else(|e| fail(format!("--push-contact (TIDINGS_PUSH_CONTACT): {e}")))
        .endpoint_policy(policy);
    if let Some(pem) = &args.push_ca_file {
        builder = builder.add_root_certificate(pem.clone());
    }
    builder.start().await.unwrap_or_else(|e| fail(format!("cannot start Web Push: {e}")))
}

/// Opens the store `--store` names; returns it with a description for the console.
async fn store(args: &Args) -> (std::sync::Arc<dyn tidings::Store>, String) {
    let spec = &args.store;
    let retention = Retention::default().max_events(usize::try_from(args.retain).unwrap_or(usize::MAX));
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
    let store = RedisStore::connect(spec, RedisOptions::default().retention(retention))
        .await
        .unwrap_or_else(|e| fail(format!("cannot connect to Redis at {spec}: {e}")));
    (std::sync::Arc::new(store), format!("redis at {spec}"))
}

async fn stats(State(hub): State<Hub>) -> Response {
    let s = hub.stats();
    axum::Json(serde_json::json!({
        "subscribers": s.subscribers, "connections": s.connections, "lagged": s.lagged, "gaps": s.gaps,
    }))
    .into_response()
}

/// The demo's handler of WebSocket `message`s: `{"ask": "who"}` is answered with how many
/// subscriptions the hub has; anything else is a 400 naming what it understands.
#[derive(Debug)]
struct Presence;

#[async_trait::async_trait]
impl tidings::websocket::OnMessage for Presence {
    async fn on_message(
        &self,
        client: &tidings::websocket::Client<'_>,
        data: &serde_json::value::RawValue,
    ) -> Result<Option<serde_json::Value>, tidings::http::HttpError> {
        #[derive(serde::Deserialize)]
        struct Ask {
            ask: String,
        }
        match serde_json::from_str::<Ask>(data.get()) {
            Ok(ask) if ask.ask == "who" => Ok(Some(serde_json::json!({ "subscribers": client.hub.subscriber_count() }))),
            _ => Err(tidings::http::HttpError::bad_request(r#"this demo understands {"ask": "who"}"#)),
        }
    }
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
        // A client may publish over its socket to the topics it follows, and ask who is here.
        .route(
            "/ws",
            WebSocket::new(hub.clone())
                .default_topics(vec![Topic::new("demo")])
                .publish(SubscribedTopics)
                .on_message(Presence)
                .method_router(),
        )
        .route("/tidings.js", tidings::client::route())
        .route("/tidings-sw.js", tidings::client::service_worker_route())
        .route("/stats", get(stats))
        .route("/publish", tidings::http::publish_route(hub.clone()))
        .with_state(hub)
        .merge(push.router())
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let (store, described) = store(&args).await;
    // `private/<user>` topics need a JWT listing them (from `POST /login`); others are open.
    let secret = login::secret(args.jwt_secret.as_deref());
    let hub = Hub::builder_shared(store)
        .lifecycle(Console { quiet: args.quiet })
        .authorize(login::authorizer(&secret))
        .build();
    // HTTPS, if asked: the files are read before anything listens.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            tidings::server::tls_config_from_pem(cert, key)
                .unwrap_or_else(|e| fail(format!("cannot serve HTTPS: {e}"))),
        ),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e} (set PORT or --port to use another port)");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().expect("bound address");
    println!("Server-Sent Events demo: open {scheme}://localhost:{}/ (store: {described})", addr.port());
    // After the banner: resumed push subscriptions print their lifecycle lines.
    let push = web_push(hub.clone(), &args).await;
    let app = app(hub.clone(), &push);
    println!(
        "Web Push: VAPID key {} in {}, {} push subscription(s)",
        push.public_key(),
        data_dir(&args).display(),
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
    let mut server = tidings::http::Server::new(app)
        .max_connections_per_ip(args.max_connections_per_ip.get())
        .header_timeout(Duration::from_secs(args.header_timeout))
        .trusted_proxies(args.trusted_proxies.0.iter().copied())
        .proxy_protocol(args.proxy_protocol);
    if let Some(n) = args.max_connections {
        server = server.max_connections(n.get());
    }
    if let Some(tls) = tls {
        server = server.tls(tls);
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
