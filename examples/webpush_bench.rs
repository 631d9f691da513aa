//! Run with: `node bench/peers/webpush.mjs` (it builds nothing: first
//! `cargo build --release --example push_service --example webpush_bench`), which runs
//! `webpush_bench --control URL --cert PEM [--mode sender|dispatch] [--runtime multi|current]
//! [--subscriptions N] [--messages N] [--concurrency N]`; `--help` lists every flag with its
//! default.
//!
//! Sends Web Push messages to a push service started by `examples/push_service.rs` and reports
//! sends per second and per CPU-second of this process, as one JSON line:
//!
//! - `--mode sender`: `PushSender::send` alone (encrypt, VAPID, HTTPS POST), `--concurrency`
//!   sends at once, round-robin over `--subscriptions` subscribers: what npm `web-push`'s
//!   `sendNotification` does;
//! - `--mode dispatch`: the whole transport: a hub, `--subscriptions` registered push
//!   subscriptions to one topic, `--messages / --subscriptions` events published, every push
//!   delivered (`max_in_flight` = `--concurrency`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tidings::webpush::{
    Contact, EndpointPolicy, MemoryRegistry, PushOptions, PushSender, PushSubscription, RegisterRequest,
    VapidKeys, WebPush,
};
use tidings::{Hub, MemoryStore, NewEvent, NoCredentials, Topic};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    about = "Sends Web Push messages to the push service of examples/push_service.rs and reports sends per second and per CPU-second, as one JSON line",
    long_about = None
)]
struct Cli {
    /// The push service's control URL, where test subscriptions are created
    #[arg(long)]
    control: String,
    /// The push service's TLS certificate (a PEM file), trusted as a root
    #[arg(long)]
    cert: PathBuf,
    /// What to measure
    #[arg(long, value_enum, default_value_t = Mode::Sender)]
    mode: Mode,
    /// tokio's runtime
    #[arg(long, value_enum, default_value_t = Runtime::Multi)]
    runtime: Runtime,
    /// How many push subscriptions to create (and send to, round-robin)
    #[arg(long, default_value_t = 100)]
    subscriptions: usize,
    /// How many pushes to send in all
    #[arg(long, default_value_t = 20000)]
    messages: usize,
    /// How many sends at once (dispatch: the transport's `max_in_flight`)
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// What to measure.
#[derive(Clone, Copy, PartialEq, Debug, ValueEnum)]
enum Mode {
    /// PushSender::send alone (encrypt, VAPID, HTTPS POST), round-robin over the subscriptions
    Sender,
    /// The whole transport: a hub, the subscriptions registered to one topic, events published
    Dispatch,
}

impl Mode {
    /// Its name on the command line and in the report.
    fn name(self) -> &'static str {
        match self {
            Mode::Sender => "sender",
            Mode::Dispatch => "dispatch",
        }
    }
}

/// Which tokio runtime runs the benchmark.
#[derive(Clone, Copy, PartialEq, Debug, ValueEnum)]
enum Runtime {
    /// One thread (tokio's current-thread runtime)
    Current,
    /// tokio's default: one worker per core
    Multi,
}

impl Runtime {
    /// Its name on the command line and in the report.
    fn name(self) -> &'static str {
        match self {
            Runtime::Current => "current",
            Runtime::Multi => "multi",
        }
    }
}

/// This process's CPU time (user + system), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let cli = Cli::parse();
    // `--runtime current` (one thread) or `multi` (tokio's default, one worker per core).
    let mut runtime = match cli.runtime {
        Runtime::Current => tokio::runtime::Builder::new_current_thread(),
        Runtime::Multi => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build().expect("a runtime").block_on(run(cli));
}

async fn run(cli: Cli) {
    let control = cli.control;
    let cert = std::fs::read_to_string(&cli.cert).expect("--cert names the push service's certificate");
    let mode = cli.mode;
    let subscribers = cli.subscriptions;
    let messages = cli.messages;
    let concurrency = cli.concurrency;
    let http = reqwest::Client::new();
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        let created: serde_json::Value =
            serde_json::from_str(&http.post(format!("{control}/subscriptions")).send().await.unwrap().text().await.unwrap())
                .unwrap();
        subs.push(PushSubscription::from_json(&created["subscription"].to_string()).unwrap());
    }
    let host_port = {
        let url = subs[0].endpoint();
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
    };
    let policy = EndpointPolicy::default().allow(&host_port).unwrap();
    let payload = serde_json::json!({ "id": "AQ", "topic": "bench", "event": null, "data": "x".repeat(200) }).to_string();

    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let delivered = if mode == Mode::Sender {
        let sender = PushSender::new(
            VapidKeys::generate(),
            Contact::parse("mailto:bench@example.com").unwrap(),
            policy,
            &[cert],
        )
        .unwrap();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subs = std::sync::Arc::new(subs);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (sender, next, subs, payload) = (sender.clone(), next.clone(), subs.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                let options = PushOptions::default().ttl(Duration::from_secs(60));
                let mut ok = 0usize;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= messages {
                        return ok;
                    }
                    let outcome = sender.send(&subs[i % subs.len()], payload.as_bytes(), &options).await;
                    if outcome == tidings::webpush::SendOutcome::Delivered {
                        ok += 1;
                    }
                }
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        ok as u64
    } else {
        let hub = Hub::new(MemoryStore::new());
        let push = WebPush::builder(hub.clone(), MemoryRegistry::new(), VapidKeys::generate(), "mailto:bench@example.com")
            .unwrap()
            .endpoint_policy(policy)
            .add_root_certificate(cert)
            .max_in_flight(concurrency)
            .start()
            .await
            .unwrap();
        for sub in &subs {
            push.register(RegisterRequest::new(sub.clone(), vec!["bench".into()], &NoCredentials)).await.unwrap();
        }
        let events = messages / subscribers;
        let topic = Topic::new("bench");
        for _ in 0..events {
            hub.publish(NewEvent::new(topic.clone(), "x".repeat(200))).await.unwrap();
        }
        let want = (events * subscribers) as u64;
        while push.stats().delivered < want && t0.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        push.stats().delivered
    };
    let (cpu, secs) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "sender": format!("tidings ({}, {} runtime)", mode.name(), cli.runtime.name()), "delivered": delivered, "seconds": secs, "cpu_seconds": cpu,
            "per_second": delivered as f64 / secs, "per_cpu_second": delivered as f64 / cpu.max(0.01),
        })
    );
}
