//! Run with: `cargo run --example push_service -- --cert /tmp/push-ca.pem`
//!
//! A real Web Push service on 127.0.0.1 for tests and benchmarks (`LocalPushService`): TLS
//! with a fresh self-signed certificate (written to `--cert`), VAPID verified, payloads
//! decrypted with each subscriber's private key. A plain-HTTP control API beside it lets
//! another process (the browser tests, the npm `web-push` benchmark) use it:
//!
//! - `POST /subscriptions` → `{"id": "...", "subscription": {endpoint, keys}}`: a new
//!   subscriber, as a browser's `PushSubscription.toJSON()`;
//! - `GET /messages/ID` → `[{"payload": "<decrypted text>", "ttl": 86400, ...}]`;
//! - `GET /stats` → `{"accepted": N}`.
//!
//! It prints one line: `push service https://127.0.0.1:P control http://127.0.0.1:C`.
//! `--record false` counts messages without keeping them (benchmarks); `--help` lists the flags.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use tidings_webpush::testing::LocalPushService;

/// A local Web Push service for tests and benchmarks.
#[derive(Debug, clap::Parser)]
#[command(about = "A local Web Push service for tests and benchmarks: TLS, VAPID verified, payloads decrypted; a control API beside it", long_about = None)]
struct Args {
    /// Where to write the service's self-signed certificate (PEM), for the sender to trust.
    #[arg(long, value_name = "PATH")]
    cert: Option<std::path::PathBuf>,
    /// Keep each message (`true`), or only count them (`false`, for benchmarks).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    record: bool,
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let service = Arc::new(LocalPushService::start_with(0, args.record).await);
    if let Some(path) = &args.cert {
        std::fs::write(path, service.root_certificate_pem()).expect("the certificate file is writable");
    }
    let control = Router::new()
        .route(
            "/subscriptions",
            post(|State(s): State<Arc<LocalPushService>>| async move {
                let sub = s.subscribe();
                axum::Json(serde_json::json!({ "id": sub.id, "subscription": sub.subscription.to_json() }))
            }),
        )
        .route(
            "/messages/{id}",
            get(|State(s): State<Arc<LocalPushService>>, Path(id): Path<String>| async move {
                let messages: Vec<_> = s
                    .messages(&id)
                    .into_iter()
                    .map(|m| {
                        serde_json::json!({
                            "payload": String::from_utf8_lossy(&m.payload),
                            "ttl": m.ttl, "urgency": m.urgency, "topic": m.topic, "audience": m.vapid.audience,
                        })
                    })
                    .collect();
                axum::Json(messages)
            }),
        )
        .route(
            "/stats",
            get(|State(s): State<Arc<LocalPushService>>| async move {
                axum::Json(serde_json::json!({ "accepted": s.accepted() }))
            }),
        )
        .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    println!("push service {} control http://{}", service.origin(), listener.local_addr().expect("its address"));
    axum::serve(listener, control).await.expect("the control api runs");
}
