//! Run with: `cargo run --release --example bench` (Redis: needs `redis-server` installed; the
//! benchmark starts its own on a free loopback port).
//!
//! Measures, per store (memory, SQLite, Redis):
//! - publish: events appended per second, one publisher, one at a time;
//! - replay: events per second read back by a reconnecting client, in-process (a `Subscription`
//!   from a cursor) and over SSE on loopback (an HTTP client reading the stream);
//!
//! And, on the memory store, fan-out: events per second delivered to N SSE clients at once.
//!
//! `--events` / `BENCH_EVENTS` (default 20000), `--bytes` / `BENCH_BYTES` (payload size, default
//! 256), `--clients` / `BENCH_CLIENTS` (default 500) and `--fanout-events` /
//! `BENCH_FANOUT_EVENTS` (default 1000) change the sizes, e.g.
//! `cargo run --release --example bench -- --events 5000` (`-- --help` lists them). Results go
//! to standard output as a Markdown table.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use tidings::redis::{RedisOptions, RedisStore};
use tidings::sqlite::{Durability, SqliteStore};
use tidings::sse::Sse;
use tidings::{Cursor, Delivery, Hub, MemoryStore, NewEvent, Retention, Store, SubscribeRequest, Topic};
use tidings_test_support::RedisServer;

/// The command line; each size may also come from its environment variable.
#[derive(Parser, Debug)]
#[command(
    about = "Measures publish and replay per store (memory, SQLite, Redis) and SSE fan-out on the memory store; prints Markdown tables",
    long_about = None
)]
struct Cli {
    /// Events published (and replayed) per store
    #[arg(long, env = "BENCH_EVENTS", default_value = "20000")]
    events: NonZeroUsize,
    /// Payload size of each event, in bytes
    #[arg(long, env = "BENCH_BYTES", default_value_t = 256)]
    bytes: usize,
    /// SSE clients in the fan-out
    #[arg(long, env = "BENCH_CLIENTS", default_value = "500")]
    clients: NonZeroUsize,
    /// Events published in the fan-out
    #[arg(long, env = "BENCH_FANOUT_EVENTS", default_value = "1000")]
    fanout_events: NonZeroUsize,
}

fn rate(n: usize, elapsed: Duration) -> String {
    format!("{:.0}", n as f64 / elapsed.as_secs_f64())
}

async fn serve(hub: &Hub) -> String {
    let app = axum::Router::new().route("/events", Sse::new(hub.clone()).method_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events?topic=bench", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Reads an SSE stream until `n` events (counted by their `id:` lines after the opening one).
async fn read_sse(url: &str, cursor: Option<&str>, n: usize) -> Duration {
    let started = Instant::now();
    let mut request = reqwest::Client::new().get(url);
    if let Some(c) = cursor {
        request = request.header("last-event-id", c);
    }
    let mut body = request.send().await.unwrap().bytes_stream();
    let (mut seen, mut tail) = (0usize, Vec::new());
    while seen < n {
        let chunk = body.next().await.expect("stream open").unwrap();
        tail.extend_from_slice(&chunk);
        seen += tail.windows(5).filter(|w| w == b"\nid: ").count();
        let keep = tail.len().saturating_sub(4);
        tail.drain(..keep);
    }
    started.elapsed()
}

async fn bench_store(name: &str, store: Arc<dyn Store>, events: usize, bytes: usize) -> String {
    let hub = Hub::builder_shared(store).build();
    let topic = Topic::new("bench");
    let payload: Arc<str> = "x".repeat(bytes).into();
    let started = Instant::now();
    let mut epoch = None;
    for _ in 0..events {
        let e = hub.publish(NewEvent::new(topic.clone(), payload.clone())).await.unwrap();
        epoch = Some(e.epoch);
    }
    let publish = rate(events, started.elapsed());

    let mut cursor = Cursor::new(epoch.unwrap());
    cursor.set(&topic, 0);
    let token = cursor.to_string();
    let started = Instant::now();
    let mut sub = hub.subscribe(SubscribeRequest::new(vec![topic.clone()]).cursor(Some(&token))).await.unwrap();
    let mut got = 0;
    while got < events {
        if let Some(Delivery::Event(_)) = sub.next().await {
            got += 1;
        }
    }
    let replay = rate(events, started.elapsed());
    drop(sub);

    let url = serve(&hub).await;
    let sse = rate(events, read_sse(&url, Some(&token), events + 1).await);
    format!("| {name} | {publish} | {replay} | {sse} |")
}

async fn bench_fanout(clients: usize, events: usize, bytes: usize) -> String {
    let hub = Hub::new(MemoryStore::with_retention(Retention::default().max_events(events.max(1))));
    let url = serve(&hub).await;
    let mut readers = Vec::new();
    for _ in 0..clients {
        let url = url.clone();
        readers.push(tokio::spawn(async move { read_sse(&url, None, events + 1).await }));
    }
    while hub.subscriber_count() < clients {
        tokio::task::yield_now().await;
    }
    let payload: Arc<str> = "x".repeat(bytes).into();
    let started = Instant::now();
    for _ in 0..events {
        hub.publish(NewEvent::new(Topic::new("bench"), payload.clone())).await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    let elapsed = started.elapsed();
    format!(
        "| {clients} clients × {events} events of {bytes} B | {} deliveries/s | {:.2} s |",
        rate(clients * events, elapsed),
        elapsed.as_secs_f64()
    )
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (events, bytes, clients) = (cli.events.get(), cli.bytes, cli.clients.get());
    let retention = Retention::default().max_events(events);
    let dir = std::env::temp_dir().join(format!("tidings-bench-{}", std::process::id()));

    println!("{events} events of {bytes} bytes on one topic; rates in events per second\n");
    println!("| store | publish | replay in-process | replay over SSE |\n|---|---|---|---|");
    println!("{}", bench_store("memory", Arc::new(MemoryStore::with_retention(retention)), events, bytes).await);
    for (label, durability) in [("sqlite (fsync per publish)", Durability::Full), ("sqlite (process-crash safe)", Durability::Process)] {
        let file = dir.join(format!("{durability:?}.db"));
        let store = SqliteStore::open_with(&file, retention, durability).await.unwrap();
        println!("{}", bench_store(label, Arc::new(store), events, bytes).await);
    }
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url(), RedisOptions::default().retention(retention)).await.unwrap();
    println!("{}", bench_store("redis (local server)", Arc::new(store), events, bytes).await);
    let _ = std::fs::remove_dir_all(&dir);

    println!("\n| fan-out over SSE (memory store) | delivered | time |\n|---|---|---|");
    println!("{}", bench_fanout(clients, cli.fanout_events.get(), bytes).await);
}
