//! `tidings-hub`: the Mercure-protocol hub. `tidings-hub --help` lists every setting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use tidings_core::{MemoryStore, Retention, Store};
use tidings_hub::{MercureHub, Settings, Verifier};

/// The command line. Settings that Mercure's hub also has take its environment variables.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tidings-hub",
    version,
    about = "A hub that speaks the Mercure protocol (draft-dunglas-mercure-07), with exact replay on SQLite or Redis",
    long_about = None
)]
struct Args {
    /// The address to listen on.
    #[arg(long, env = "TIDINGS_HUB_ADDR", value_name = "HOST:PORT", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Where the log lives: `memory` (lost on restart), `sqlite:PATH` (kept across restarts and
    /// kill -9) or `redis://HOST:PORT/` (shared by several hubs).
    #[arg(long, env = "TIDINGS_HUB_STORE", default_value = "sqlite:./tidings-hub.db", value_parser = parse_store)]
    store: String,
    /// Updates kept in the log (older ones go first; a subscriber behind them gets a gap notice).
    #[arg(long, env = "TIDINGS_HUB_RETAIN", value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    retain: u64,
    /// The key that checks publishers' tokens (HS*: the shared secret; RS*, PS*, ES*, EdDSA: a
    /// PEM public key) [default: --jwt-key; none: every publish is refused].
    #[arg(long, env = "MERCURE_PUBLISHER_JWT_KEY", hide_env_values = true)]
    publisher_jwt_key: Option<String>,
    /// The algorithm of publishers' tokens [default: --jwt-alg, HS256].
    #[arg(long, env = "MERCURE_PUBLISHER_JWT_ALG", value_name = "ALG")]
    publisher_jwt_alg: Option<String>,
    /// The key that checks subscribers' tokens [default: --jwt-key; none: no subscriber token
    /// is accepted].
    #[arg(long, env = "MERCURE_SUBSCRIBER_JWT_KEY", hide_env_values = true)]
    subscriber_jwt_key: Option<String>,
    /// The algorithm of subscribers' tokens [default: --jwt-alg, HS256].
    #[arg(long, env = "MERCURE_SUBSCRIBER_JWT_ALG", value_name = "ALG")]
    subscriber_jwt_alg: Option<String>,
    /// The key of both kinds of tokens, when no specific key is given [default: none].
    #[arg(long, env = "MERCURE_JWT_KEY", hide_env_values = true)]
    jwt_key: Option<String>,
    /// The algorithm of both kinds of tokens, when no specific one is given.
    #[arg(long, env = "MERCURE_JWT_ALG", value_name = "ALG", default_value = "HS256")]
    jwt_alg: String,
    /// Serve subscribers without a token (public updates only).
    #[arg(long)]
    anonymous: bool,
    /// Publish subscription events and serve the subscriptions API.
    #[arg(long)]
    subscriptions: bool,
    /// Origins allowed to subscribe and publish from a browser (CORS, with credentials),
    /// space- or comma-separated; `*` for any [default: none, same-origin pages only].
    #[arg(long, env = "TIDINGS_HUB_CORS_ORIGINS", value_name = "ORIGIN ...", value_delimiter = ',', num_args = 1..)]
    cors_origins: Vec<String>,
    /// Origins whose pages may publish with the `mercureAuthorization` cookie, space- or
    /// comma-separated; `*` for any. A publish authorized by the cookie from another origin is a
    /// 403 [default: none].
    #[arg(long, env = "TIDINGS_HUB_PUBLISH_ORIGINS", value_name = "ORIGIN ...", value_delimiter = ',', num_args = 1..)]
    publish_origins: Vec<String>,
    /// Seconds of silence after which a stream gets a heartbeat comment.
    #[arg(long, value_name = "SECS", default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat: u64,
    /// The most bytes a publish request may hold.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    max_body: usize,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this certificate chain (PEM); needs
    /// --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Connections at once; one more gets a 503 [default: 90 % of the open-file limit].
    #[arg(long, value_name = "N")]
    max_connections: Option<std::num::NonZeroUsize>,
    /// Connections at once from one client address (IPv6: one /64); one more gets a 429.
    #[arg(long, value_name = "N", default_value = "1024")]
    max_connections_per_ip: std::num::NonZeroUsize,
    /// No page at `/`.
    #[arg(long)]
    no_page: bool,
    /// Serve Web Push (tidings' extension): browsers register at /.well-known/mercure/push and
    /// get the updates their selectors and token let through from their push service, also
    /// when no page is open. Needs --push-contact.
    #[arg(long, requires = "push_contact")]
    push: bool,
    /// The VAPID contact push services may write to (`mailto:` or `https:` URL).
    #[arg(long, env = "TIDINGS_PUSH_CONTACT", value_name = "URL", value_parser = parse_contact)]
    push_contact: Option<String>,
    /// Where Web Push keeps its VAPID key (`vapid.key`, made on first start) and its
    /// registrations (`push.db`, SQLite) [default: the SQLite store's directory, else
    /// ./tidings-data].
    #[arg(long, env = "TIDINGS_PUSH_DIR", value_name = "DIR")]
    push_dir: Option<std::path::PathBuf>,
    /// Push endpoints let through besides public `https` ones (for a private push service):
    /// comma-separated `host:port`.
    #[arg(long, env = "TIDINGS_PUSH_ALLOW_HOSTS", value_name = "HOST:PORT,...", default_value = "", value_parser = parse_allow_hosts)]
    push_allow_hosts: String,
    /// A root certificate (PEM) to trust for a private push service [default: the system's].
    #[arg(long, env = "TIDINGS_PUSH_CA_FILE", value_name = "FILE", value_parser = tidings_webpush::read_root_certificate)]
    push_ca_file: Option<String>,
    /// Web Push registrations at once, in all; one more is a 503.
    #[arg(long, value_name = "N", default_value = "100000")]
    push_max: std::num::NonZeroUsize,
    /// Web Push registrations at once per client (the token's `sub`, else the client's
    /// address, an IPv6 /64); one more is a 429.
    #[arg(long, value_name = "N", default_value = "32")]
    push_max_per_client: std::num::NonZeroUsize,
}

/// Checks `--push-contact` before anything starts.
fn parse_contact(contact: &str) -> Result<String, String> {
    tidings_webpush::Contact::parse(contact).map(|_| contact.to_owned()).map_err(|e| e.to_string())
}

/// Checks `--push-allow-hosts` before anything starts.
fn parse_allow_hosts(list: &str) -> Result<String, String> {
    tidings_webpush::EndpointPolicy::from_list(list).map(|_| list.to_owned())
}

/// Starts Web Push on `mercure` as `--push*` say.
async fn enable_push(mercure: &MercureHub, args: &Args, contact: &str) -> tidings_webpush::WebPush {
    let dir = args.push_dir.clone().unwrap_or_else(|| {
        args.store
            .strip_prefix("sqlite:")
            .and_then(|p| std::path::Path::new(p).parent().map(std::path::Path::to_path_buf))
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| "./tidings-data".into())
    });
    let keys = tidings_webpush::VapidKeys::load_or_generate(dir.join("vapid.key"))
        .unwrap_or_else(|e| fail(format!("cannot load or create the VAPID key in {}: {e}", dir.display())));
    let registry = tidings_webpush::SqlitePushRegistry::open(dir.join("push.db"))
        .await
        .unwrap_or_else(|e| fail(format!("cannot open the push registry in {}: {e}", dir.display())));
    let policy = tidings_webpush::EndpointPolicy::from_list(&args.push_allow_hosts)
        .unwrap_or_else(|e| fail(format!("--push-allow-hosts: {e}")));
    let mut builder = mercure
        .push_builder(registry, keys, contact)
        .unwrap_or_else(|e| fail(format!("--push-contact: {e}")))
        .endpoint_policy(policy);
    if let Some(pem) = &args.push_ca_file {
        builder = builder.add_root_certificate(pem.clone());
    }
    let builder = builder
        .max_subscriptions_per_topic(args.push_max.get())
        .max_subscriptions_per_recipient(args.push_max_per_client.get());
    let push = mercure.start_push(builder).await.unwrap_or_else(|e| fail(format!("cannot start Web Push: {e}")));
    println!(
        "tidings-hub: Web Push at {} (VAPID key {} in {}, {} registration(s))",
        tidings_hub::push::PATH,
        push.public_key(),
        dir.display(),
        push.stats().subscriptions
    );
    push
}

fn parse_store(spec: &str) -> Result<String, String> {
    let known = spec == "memory"
        || spec.strip_prefix("sqlite:").is_some_and(|path| !path.is_empty())
        || spec.starts_with("redis://")
        || spec.starts_with("rediss://")
        || spec.starts_with("redis+unix://");
    if known { Ok(spec.to_owned()) } else { Err("expected memory, sqlite:PATH or redis://HOST:PORT/".to_owned()) }
}

fn fail(message: String) -> ! {
    eprintln!("tidings-hub: {message}");
    std::process::exit(2)
}

async fn open_store(args: &Args) -> Arc<dyn Store> {
    let retention = Retention::default().max_events(usize::try_from(args.retain).unwrap_or(usize::MAX));
    let spec = &args.store;
    if spec == "memory" {
        return Arc::new(MemoryStore::with_retention(retention));
    }
    if let Some(path) = spec.strip_prefix("sqlite:") {
        let store = tidings_sqlite::SqliteStore::open(path, retention)
            .await
            .unwrap_or_else(|e| fail(format!("cannot open the SQLite store at {path}: {e}")));
        return Arc::new(store);
    }
    let store = tidings_redis::RedisStore::connect(spec, tidings_redis::RedisOptions::default().retention(retention))
        .await
        .unwrap_or_else(|e| fail(format!("cannot connect to Redis at {spec}: {e}")));
    Arc::new(store)
}

/// A verifier from a key and an algorithm, each falling back to the shared one.
fn verifier(kind: &str, key: Option<&str>, alg: Option<&str>, args: &Args) -> Option<Verifier> {
    let key = key.or(args.jwt_key.as_deref())?;
    let alg = alg.unwrap_or(&args.jwt_alg);
    Some(Verifier::new(alg, key.as_bytes()).unwrap_or_else(|e| fail(format!("the {kind} JWT key: {e}"))))
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let publisher = verifier("publisher", args.publisher_jwt_key.as_deref(), args.publisher_jwt_alg.as_deref(), &args);
    let subscriber = verifier("subscriber", args.subscriber_jwt_key.as_deref(), args.subscriber_jwt_alg.as_deref(), &args);
    if publisher.is_none() {
        eprintln!("tidings-hub: no publisher key (MERCURE_PUBLISHER_JWT_KEY or MERCURE_JWT_KEY): every publish will be refused");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            tidings_server::tls_config_from_pem(cert, key).unwrap_or_else(|e| fail(format!("cannot serve HTTPS: {e}"))),
        ),
        _ => None,
    };
    let store = open_store(&args).await;
    let settings = Settings {
        publisher,
        subscriber,
        anonymous: args.anonymous,
        subscriptions: args.subscriptions,
        cors_origins: args.cors_origins.iter().flat_map(|o| o.split_whitespace()).map(str::to_owned).collect(),
        publish_origins: args.publish_origins.iter().flat_map(|o| o.split_whitespace()).map(str::to_owned).collect(),
        heartbeat: Duration::from_secs(args.heartbeat),
        max_body: args.max_body,
        max_indexed_ids: usize::try_from(args.retain).unwrap_or(usize::MAX),
        page: !args.no_page,
        ..Settings::default()
    };
    let mercure = MercureHub::new(store, settings);
    let push = match (&args.push, &args.push_contact) {
        (true, Some(contact)) => Some(enable_push(&mercure, &args, contact).await),
        _ => None,
    };

    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap_or_else(|e| fail(format!("cannot install the metrics recorder: {e}")));
    let app = mercure.router().route(
        "/metrics",
        get(move || {
            let prometheus = prometheus.clone();
            async move {
                prometheus.run_upkeep();
                ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus.render())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .unwrap_or_else(|e| fail(format!("cannot listen on {}: {e}", args.addr)));
    let addr = listener.local_addr().unwrap_or(args.addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("tidings-hub: Mercure hub at {scheme}://{addr}{} (store: {})", tidings_hub::PATH, args.store);

    let mut server = tidings_server::Server::new(app).max_connections_per_ip(args.max_connections_per_ip.get());
    if let Some(n) = args.max_connections {
        server = server.max_connections(n.get());
    }
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    let hub = mercure.hub().clone();
    let served = server
        .serve(listener, async move {
            tidings_server::shutdown_signal().await;
            if let Some(push) = &push {
                push.shutdown();
            }
            hub.shutdown();
        })
        .await;
    if let Err(e) = served {
        fail(format!("server error: {e}"));
    }
}
