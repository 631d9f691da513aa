//! The load generator of `bench/run`: opens SSE or long-poll subscriptions to a server on
//! loopback, publishes numbered events, and reports one JSON line: subscriptions opened,
//! deliveries, missing / repeated / out-of-order deliveries, latency publish→receipt, the
//! server's CPU seconds and resident memory (from `/proc`, summed over the given process and
//! its children), and deliveries per server CPU-second.
//!
//! ```text
//! loadgen fanout   --addr 127.0.0.1:PORT [--pid PID] [--kind tidings|handwritten|nchan]
//!                  [--subscribers N] [--events M] [--rate EVENTS_PER_S] [--payload BYTES]
//!                  [--sources K] [--server NAME] [--label LABEL] [--http2 | --websocket]
//! loadgen longpoll (the same flags as fanout)                                  (tidings)
//! loadgen replay   --addr ... [--pid ...] [--events M] [--payload BYTES] [--label LABEL] (tidings)
//! loadgen MODE --help                                  (every flag, with its default)
//! ```
//!
//! Each event's data is `"<n> <unix time in ns> xxx…"`, padded to `--payload` bytes; clients
//! read `n` and the time from every `data:` line (SSE), `data` field (long-poll, tidings'
//! WebSocket messages) or text message (the hand-written WebSocket server). Client
//! connections are spread over `--sources` loopback addresses (127.0.0.1, .2, …) so that their
//! number can pass one address's port range. Only ever aim it at loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant as TokioInstant;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    about = "The load generator of bench/run: subscribes to a server on loopback, publishes numbered events, and reports one JSON line",
    long_about = None
)]
struct Cli {
    /// What to measure.
    #[command(subcommand)]
    mode: Mode,
}

/// The measurements.
#[derive(Subcommand, Debug)]
enum Mode {
    /// SSE subscribers: opens them, publishes, and waits until each has every event
    Fanout(SubscriberArgs),
    /// Long-poll clients (tidings): opens them, publishes, and waits until each has every event
    Longpoll(SubscriberArgs),
    /// One SSE client (tidings) reconnecting from before every event published
    Replay(ReplayArgs),
}

/// The server measured, and what every mode reports.
#[derive(Args, Debug)]
struct Target {
    /// The server's address (loopback only)
    #[arg(long)]
    addr: SocketAddr,
    /// The server's process id: its CPU seconds and resident memory, its children's included, are reported
    #[arg(long, default_value_t = 0)]
    pid: u32,
    /// A label copied into the report
    #[arg(long)]
    label: Option<String>,
    /// The size of each event's data in bytes (its number and time, padded with `x`)
    #[arg(long, default_value_t = 256)]
    payload: usize,
}

/// The flags of `fanout` and `longpoll`.
#[derive(Args, Debug)]
struct SubscriberArgs {
    /// The server and the report.
    #[command(flatten)]
    target: Target,
    /// The kind of server, which decides the paths to subscribe and publish on
    #[arg(long, value_enum, default_value_t = Kind::Tidings)]
    kind: Kind,
    /// The server's name, copied into the report
    #[arg(long)]
    server: Option<String>,
    /// How many subscriptions to open
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// How many events to publish
    #[arg(long, default_value_t = 300)]
    events: u64,
    /// Events published per second (0: as fast as one publisher goes)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How many loopback source addresses (127.0.0.1, .2, ...) the connections are spread over
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// SSE over HTTP/2 with prior knowledge (fanout): each subscriber's stream on a connection
    /// of its own, as each browser has its own
    #[arg(long)]
    http2: bool,
    /// WebSocket subscribers (fanout): tidings' `tidings.v1` at /ws?topic=bench, or the
    /// hand-written server's /ws (each text message is an event's data)
    #[arg(long, conflicts_with = "http2")]
    websocket: bool,
    /// `--kind hub`: the publisher token (a JWT whose `mercure.publish` claim allows the topic)
    #[arg(long, default_value = "")]
    hub_token: String,
    /// `--kind hub`: the percentage of subscribers that select the topic with a URI template
    /// rather than by its name
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    template_share: u8,
}

/// The flags of `replay`.
#[derive(Args, Debug)]
struct ReplayArgs {
    /// The server and the report.
    #[command(flatten)]
    target: Target,
    /// How many events to publish before the client reconnects from before the first
    #[arg(long, default_value_t = 100_000)]
    events: u64,
}

/// The kind of server measured.
#[derive(Clone, Copy, PartialEq, Debug, ValueEnum)]
enum Kind {
    /// tidings (examples/sse_demo)
    Tidings,
    /// bench/src/bin/handwritten.rs, either variant
    Handwritten,
    /// nginx with Nchan
    Nchan,
    /// tidings-hub, the Mercure-protocol hub: subscribes at /.well-known/mercure, publishes a
    /// form with the token given by `--hub-token`
    Hub,
}

impl Kind {
    /// Its name on the command line and in the report.
    fn name(self) -> &'static str {
        match self {
            Kind::Tidings => "tidings",
            Kind::Handwritten => "handwritten",
            Kind::Nchan => "nchan",
            Kind::Hub => "tidings-hub",
        }
    }

    fn ws_path(self) -> &'static str {
        match self {
            Kind::Tidings => "/ws?topic=bench",
            _ => "/ws",
        }
    }

    fn sse_path(self) -> &'static str {
        match self {
            Kind::Tidings => "/events?topic=bench",
            Kind::Handwritten => "/events",
            Kind::Nchan => "/sub/bench",
            Kind::Hub => HUB_EXACT,
        }
    }
}

/// The hub's subscription to the benchmark's topic, named exactly.
const HUB_EXACT: &str = "/.well-known/mercure?topic=https%3A%2F%2Fbench.example%2Ftopics%2Fbench";
/// The same topic, selected by a URI template (`https://bench.example/topics/{name}`).
const HUB_TEMPLATE: &str = "/.well-known/mercure?topic=https%3A%2F%2Fbench.example%2Ftopics%2F%7Bname%7D";

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// The data of event `n`, padded to `payload` bytes.
fn event_data(n: u64, payload: usize) -> String {
    let mut data = format!("{n} {} ", now_ns());
    while data.len() < payload {
        data.push('x');
    }
    data
}

// ---------------------------------------------------------------------------------------------
// /proc

fn children(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(pid) {
                all.push(child);
            }
        }
    }
    all
}

/// CPU seconds (user + system) of `pid` and its children.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = children(pid)
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            field(11) + field(12)
        })
        .sum::<f64>();
    ticks / 100.0
}

/// Resident memory in KiB of `pid` and its children.
fn rss_kib(pid: u32) -> u64 {
    children(pid)
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()))
                .unwrap_or(0)
        })
        .sum()
}

/// Samples the resident memory until two samples 250 ms apart differ by less than 0.5 %
/// (at most 5 s): the server may still be settling the last connections.
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) * 200 < last.max(1) {
            return now;
        }
        last = now;
    }
    last
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, by hand (a client per connection costs nothing but a buffer)

async fn connect(addr: SocketAddr, index: usize, sources: usize) -> std::io::Result<TcpStream> {
    let ip = Ipv4Addr::new(127, 0, 0, 1 + (index % sources.max(1)) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

/// Reads a response head; what follows it stays in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            let content_length = head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()));
            return Ok(Head { status, chunked, content_length });
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a whole response body (`Content-Length` or chunked); `buf` holds what followed the head.
async fn read_body(stream: &mut TcpStream, head: &Head, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut chunk = [0u8; 16384];
    if head.chunked {
        let (mut dechunk, mut body) = (Dechunk::for_head(head), Vec::new());
        dechunk.feed(&buf, &mut body);
        while !(dechunk.finished && dechunk.remaining == 0) {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in a chunked body"));
            }
            dechunk.feed(&chunk[..n], &mut body);
        }
        return Ok(body);
    }
    let length = head.content_length.unwrap_or(0);
    while buf.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in a body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// Undoes `Transfer-Encoding: chunked`, incrementally (or passes a body that is not chunked
/// through as it is).
#[derive(Default)]
struct Dechunk {
    /// The response is chunked; if not, `feed` copies.
    chunked: bool,
    /// Bytes left in the current chunk's data, then 2 for its CRLF.
    remaining: usize,
    in_data: bool,
    size_line: Vec<u8>,
    /// The last (empty) chunk has been read.
    finished: bool,
}

impl Dechunk {
    fn for_head(head: &Head) -> Dechunk {
        Dechunk { chunked: head.chunked, ..Dechunk::default() }
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if !self.chunked {
            out.extend_from_slice(input);
            return;
        }
        while !input.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(input.len());
                if self.in_data {
                    // The last two bytes of `remaining` are the CRLF after the data.
                    let data = take.min(self.remaining.saturating_sub(2));
                    out.extend_from_slice(&input[..data]);
                }
                self.remaining -= take;
                input = &input[take..];
                continue;
            }
            match input.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.size_line.extend_from_slice(&input[..i]);
                    input = &input[i + 1..];
                    let line = String::from_utf8_lossy(&self.size_line).trim().to_owned();
                    self.size_line.clear();
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or(""), 16).unwrap_or(0);
                    self.in_data = true;
                    self.remaining = size + 2;
                    self.finished |= size == 0;
                }
                None => {
                    self.size_line.extend_from_slice(input);
                    input = &[];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What one client saw

#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    unique: u64,
    repeated: u64,
    out_of_order: u64,
    highest: Option<u64>,
    latencies_us: Vec<u32>,
}

impl Seen {
    fn new(events: u64) -> Seen {
        Seen { bits: vec![0; (events as usize).div_ceil(64)], ..Seen::default() }
    }

    /// Records the data of one event; `false` if it is not one of the benchmark's.
    fn record(&mut self, data: &[u8]) -> bool {
        let mut parts = data.splitn(3, |&b| b == b' ');
        let (Some(n), Some(t)) = (parts.next(), parts.next()) else { return false };
        let (Some(n), Some(t)) = (parse_u(n), parse_u(t)) else { return false };
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.bits.len() {
            return false;
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.repeated += 1;
            return true;
        }
        self.bits[word] |= 1 << bit;
        self.unique += 1;
        if self.highest.is_some_and(|h| n < h) {
            self.out_of_order += 1;
        }
        self.highest = Some(self.highest.map_or(n, |h| h.max(n)));
        let latency = now_ns().saturating_sub(t as u128) / 1000;
        self.latencies_us.push(latency.min(u32::MAX as u128) as u32);
        true
    }
}

fn parse_u(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

struct Shared {
    opened: AtomicUsize,
    failed: AtomicUsize,
    notify: Notify,
    connecting: Semaphore,
}

/// One SSE subscriber: reads until it has every event or the deadline passes.
#[allow(clippy::too_many_arguments)]
async fn sse_client(
    addr: SocketAddr,
    path: String,
    index: usize,
    sources: usize,
    events: u64,
    last_event_id: Option<String>,
    shared: Arc<Shared>,
    deadline: Arc<tokio::sync::watch::Receiver<Option<TokioInstant>>>,
) -> Seen {
    let mut seen = Seen::new(events);
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    if let Some(id) = &last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    let Some((mut stream, rest, head)) = open(addr, index, sources, &request, 200, &shared).await else { return seen };
    let mut dechunk = Dechunk::for_head(&head);
    let mut body = Vec::with_capacity(8192);
    dechunk.feed(&rest, &mut body);
    let mut chunk = vec![0u8; 16384];
    let mut deadline = (*deadline).clone();
    loop {
        take_lines(&mut body, &mut seen);
        if seen.unique >= events {
            return seen;
        }
        match before_deadline(stream.read(&mut chunk), &mut deadline).await {
            Waited::Done(Ok(n)) if n > 0 => dechunk.feed(&chunk[..n], &mut body),
            Waited::Moved => {}
            _ => return seen,
        }
    }
}

/// What became of a future awaited under the deadline.
enum Waited<T> {
    /// It resolved.
    Done(T),
    /// The deadline was set or moved meanwhile: await it again.
    Moved,
    /// The deadline passed.
    Passed,
}

/// Awaits `fut` until the deadline (none until publishing ends), or until the deadline moves.
async fn before_deadline<F: std::future::Future>(
    fut: F,
    deadline: &mut tokio::sync::watch::Receiver<Option<TokioInstant>>,
) -> Waited<F::Output> {
    let until = *deadline.borrow_and_update();
    let timed = async {
        match until {
            Some(at) => tokio::time::timeout_at(at, fut).await.ok(),
            None => Some(fut.await),
        }
    };
    tokio::select! {
        r = timed => r.map_or(Waited::Passed, Waited::Done),
        _ = deadline.changed() => Waited::Moved,
    }
}

/// One WebSocket subscriber (RFC 6455, client side, written for the benchmark): reads until it
/// has every event or the deadline passes; answers pings.
async fn ws_client(
    addr: SocketAddr,
    kind: Kind,
    index: usize,
    sources: usize,
    events: u64,
    shared: Arc<Shared>,
    deadline: Arc<tokio::sync::watch::Receiver<Option<TokioInstant>>>,
) -> Seen {
    let mut seen = Seen::new(events);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: tidings.v1\r\n\r\n",
        kind.ws_path()
    );
    let Some((mut stream, mut input, _)) = open(addr, index, sources, &request, 101, &shared).await else { return seen };
    let mut chunk = vec![0u8; 16384];
    let mut deadline = (*deadline).clone();
    loop {
        // Every whole frame in `input`: server frames are unmasked.
        let mut at = 0;
        while let Some((opcode, start, end)) = ws_frame(&input[at..]) {
            let payload = &input[at + start..at + end];
            match opcode {
                0x1 => {
                    // tidings: a JSON message whose `data` holds the event's; hand-written:
                    // the event's data itself.
                    let data = match payload.windows(8).position(|w| w == b"\"data\":\"") {
                        Some(i) => &payload[i + 8..],
                        None => payload,
                    };
                    seen.record(data);
                }
                0x9 => {
                    // A pong, masked (with a zero mask) as a client's frames must be.
                    let mut pong = vec![0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(payload);
                    if stream.write_all(&pong).await.is_err() {
                        return seen;
                    }
                }
                0x8 => return seen,
                _ => {}
            }
            at += end;
        }
        input.drain(..at);
        if seen.unique >= events {
            return seen;
        }
        match before_deadline(stream.read(&mut chunk), &mut deadline).await {
            Waited::Done(Ok(n)) if n > 0 => input.extend_from_slice(&chunk[..n]),
            Waited::Moved => {}
            _ => return seen,
        }
    }
}

/// The first whole server frame of `input`: its opcode and where its payload starts and ends.
fn ws_frame(input: &[u8]) -> Option<(u8, usize, usize)> {
    let [b0, b1, ..] = *input else { return None };
    let (len, start) = match b1 & 0x7F {
        126 => (u16::from_be_bytes(input.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(input.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    (input.len() >= start + len).then_some((b0 & 0x0F, start, start + len))
}

/// Sends `request` on a new connection (one of at most 256 connecting at once) and reads the
/// answer's head: the connection, what followed the head, and the head, when its status is
/// `status`. Counts the subscriber as opened or failed either way.
async fn open(
    addr: SocketAddr,
    index: usize,
    sources: usize,
    request: &str,
    status: u16,
    shared: &Shared,
) -> Option<(TcpStream, Vec<u8>, Head)> {
    let permit = shared.connecting.acquire().await.ok();
    let opened = async {
        let mut stream = connect(addr, index, sources).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let head = read_head(&mut stream, &mut buf).await?;
        Ok::<_, std::io::Error>((stream, buf, head))
    }
    .await;
    drop(permit);
    let opened = opened.ok().filter(|(_, _, head)| head.status == status);
    count_opening(shared, opened.is_some());
    opened
}

/// Counts a subscriber that opened its stream (`opened`) or failed to, and wakes whoever waits
/// for them all.
fn count_opening(shared: &Shared, opened: bool) {
    let counter = if opened { &shared.opened } else { &shared.failed };
    counter.fetch_add(1, Ordering::Relaxed);
    shared.notify.notify_one();
}

/// Records the `data:` of every complete line of `body`, and keeps the incomplete rest.
fn take_lines(body: &mut Vec<u8>, seen: &mut Seen) {
    let mut start = 0;
    while let Some(i) = body[start..].iter().position(|&b| b == b'\n') {
        let line = &body[start..start + i];
        if let Some(data) = line.strip_prefix(b"data: ") {
            seen.record(data);
        }
        start += i + 1;
    }
    body.drain(..start);
}

/// One SSE subscriber over HTTP/2 with prior knowledge (hyper's client), on a connection of
/// its own: reads until it has every event or the deadline passes.
async fn sse_client_h2(
    addr: SocketAddr,
    path: String,
    index: usize,
    sources: usize,
    events: u64,
    shared: Arc<Shared>,
    deadline: Arc<tokio::sync::watch::Receiver<Option<TokioInstant>>>,
) -> Seen {
    use http_body_util::BodyExt;
    let mut seen = Seen::new(events);
    let permit = shared.connecting.acquire().await.ok();
    let opened = async {
        let stream = connect(addr, index, sources).await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        let request = hyper::Request::get(format!("http://{addr}{path}"))
            .header("accept", "text/event-stream")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(std::io::Error::other)?;
        let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>((sender, response))
    }
    .await;
    drop(permit);
    let (_sender, response) = match opened {
        Ok((sender, response)) if response.status() == 200 => (sender, response),
        _ => {
            count_opening(&shared, false);
            return seen;
        }
    };
    count_opening(&shared, true);
    let mut response_body = response.into_body();
    let mut body = Vec::with_capacity(8192);
    let mut deadline = (*deadline).clone();
    loop {
        take_lines(&mut body, &mut seen);
        if seen.unique >= events {
            return seen;
        }
        match before_deadline(response_body.frame(), &mut deadline).await {
            Waited::Done(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    body.extend_from_slice(&data);
                }
            }
            Waited::Moved => {}
            _ => return seen,
        }
    }
}

/// One long-poll client: polls until it has every event or the deadline passes.
async fn poll_client(
    addr: SocketAddr,
    index: usize,
    sources: usize,
    events: u64,
    shared: Arc<Shared>,
    waiting: Arc<AtomicUsize>,
    deadline: Arc<tokio::sync::watch::Receiver<Option<TokioInstant>>>,
) -> Seen {
    let mut seen = Seen::new(events);
    let mut permit = shared.connecting.acquire().await.ok();
    let Ok(mut stream) = connect(addr, index, sources).await else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        shared.notify.notify_one();
        return seen;
    };
    let mut cursor: Option<String> = None;
    let mut first = true;
    let mut deadline = (*deadline).clone();
    loop {
        let path = match &cursor {
            None => "/poll?topic=bench".to_owned(),
            Some(c) => format!("/poll?topic=bench&timeout=60&cursor={c}"),
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return seen;
        }
        if cursor.is_some() && first {
            first = false;
            drop(permit.take());
            shared.opened.fetch_add(1, Ordering::Relaxed);
            waiting.fetch_add(1, Ordering::Relaxed);
            shared.notify.notify_one();
        }
        let answer = async {
            let mut buf = Vec::new();
            let head = read_head(&mut stream, &mut buf).await?;
            let body = read_body(&mut stream, &head, buf).await?;
            Ok::<_, std::io::Error>((head.status, body))
        };
        tokio::pin!(answer);
        // The deadline is set once publishing ends: wait for the same answer under it (never
        // send the poll twice).
        let result = loop {
            match before_deadline(&mut answer, &mut deadline).await {
                Waited::Done(r) => break Some(r),
                Waited::Moved => {}
                Waited::Passed => break None,
            }
        };
        let Some(Ok((200, body))) = result else { return seen };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else { return seen };
        for event in json["events"].as_array().into_iter().flatten() {
            if let Some(data) = event["data"].as_str() {
                seen.record(data.as_bytes());
            }
        }
        cursor = json["cursor"].as_str().map(str::to_owned);
        if cursor.is_none() || seen.unique >= events {
            return seen;
        }
    }
}

/// Publishes one event; `Ok(false)` when the server refused it.
async fn publish(stream: &mut TcpStream, kind: Kind, addr: SocketAddr, data: &str, token: &str) -> std::io::Result<bool> {
    let request = match kind {
        Kind::Nchan => format!("POST /pub/bench HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{data}", data.len()),
        Kind::Hub => {
            // The data is digits, a space and `x`s: `+` is its space in a form.
            let body = format!("topic=https%3A%2F%2Fbench.example%2Ftopics%2Fbench&data={}", data.replace(' ', "+"));
            format!(
                "POST /.well-known/mercure HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        _ => {
            let body = format!("{{\"topic\":\"bench\",\"data\":\"{data}\"}}");
            format!(
                "POST /publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
    };
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    let head = read_head(stream, &mut buf).await?;
    read_body(stream, &head, buf).await?;
    Ok((200..300).contains(&head.status))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

struct Totals {
    deliveries: u64,
    missing: u64,
    repeated: u64,
    out_of_order: u64,
    latencies: Vec<u32>,
}

fn totals(results: Vec<Seen>, events: u64, clients: u64) -> Totals {
    let mut t = Totals { deliveries: 0, missing: 0, repeated: 0, out_of_order: 0, latencies: Vec::new() };
    for seen in results {
        t.deliveries += seen.unique;
        t.repeated += seen.repeated;
        t.out_of_order += seen.out_of_order;
        t.latencies.extend_from_slice(&seen.latencies_us);
    }
    t.missing = events * clients - t.deliveries;
    t.latencies.sort_unstable();
    t
}

async fn wait_open(shared: &Shared, n: usize) {
    let give_up = Instant::now() + Duration::from_secs(120);
    while shared.opened.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n && Instant::now() < give_up {
        let _ = tokio::time::timeout(Duration::from_millis(100), shared.notify.notified()).await;
    }
}

async fn subscribers(mode: &str, args: &SubscriberArgs) {
    let kind = args.kind;
    let addr = args.target.addr;
    assert!(addr.ip().is_loopback(), "the load generator only targets loopback");
    let pid = args.target.pid;
    let n = args.subscribers;
    let events = args.events;
    let rate = args.rate;
    let payload = args.target.payload;
    let sources = args.sources;
    let shared = Arc::new(Shared {
        opened: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        notify: Notify::new(),
        connecting: Semaphore::new(256),
    });
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None);
    let deadline_rx = Arc::new(deadline_rx);
    let waiting = Arc::new(AtomicUsize::new(0));
    let rss_before = settled_rss(pid).await;
    let t_open = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (shared, deadline) = (shared.clone(), deadline_rx.clone());
        if mode == "longpoll" {
            tasks.push(tokio::spawn(poll_client(addr, i, sources, events, shared, waiting.clone(), deadline)));
        } else if args.websocket {
            tasks.push(tokio::spawn(ws_client(addr, kind, i, sources, events, shared, deadline)));
        } else if args.http2 {
            tasks.push(tokio::spawn(sse_client_h2(addr, kind.sse_path().to_owned(), i, sources, events, shared, deadline)));
        } else {
            // With `--template-share P`, P subscribers in 100 select the topic by a template.
            let path = if kind == Kind::Hub && (i % 100) < usize::from(args.template_share) { HUB_TEMPLATE } else { kind.sse_path() };
            tasks.push(tokio::spawn(sse_client(addr, path.to_owned(), i, sources, events, None, shared, deadline)));
        }
    }
    wait_open(&shared, n).await;
    let open_seconds = t_open.elapsed().as_secs_f64();
    let rss_after = settled_rss(pid).await;
    let opened = shared.opened.load(Ordering::Relaxed);

    let mut publisher = connect(addr, 0, 1).await.expect("publisher connection");
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let mut refused = 0u64;
    // Each publish's round trip (µs): how long the one publisher waits for the server's answer.
    let mut round_trips: Vec<u32> = Vec::with_capacity(events as usize);
    for i in 0..events {
        if rate > 0 {
            tokio::time::sleep_until(TokioInstant::from_std(t0 + Duration::from_secs_f64(i as f64 / rate as f64))).await;
        }
        let sent = Instant::now();
        if !publish(&mut publisher, kind, addr, &event_data(i, payload), &args.hub_token).await.unwrap_or(false) {
            refused += 1;
        }
        round_trips.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    let publish_seconds = t0.elapsed().as_secs_f64();
    round_trips.sort_unstable();
    let _ = deadline_tx.send(Some(TokioInstant::now() + Duration::from_secs(30)));
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.unwrap_or_default());
    }
    let (seconds, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0);
    let t = totals(results, events, opened as u64);
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "kind": kind.name(), "server": args.server, "label": args.target.label, "http2": args.http2, "websocket": args.websocket, "template_share": args.template_share,
            "subscribers": n, "opened": opened, "failed": shared.failed.load(Ordering::Relaxed), "open_seconds": open_seconds,
            "events": events, "rate": rate, "payload": payload, "publish_refused": refused, "publish_seconds": publish_seconds,
            "deliveries": t.deliveries, "missing": t.missing, "repeated": t.repeated, "out_of_order": t.out_of_order,
            "seconds": seconds, "deliveries_per_second": t.deliveries as f64 / seconds,
            "server_cpu_seconds": cpu, "deliveries_per_cpu_second": t.deliveries as f64 / cpu.max(0.01),
            "latency_ms": { "p50": percentile(&t.latencies, 0.5), "p99": percentile(&t.latencies, 0.99), "max": percentile(&t.latencies, 1.0) },
            "publish_ms": { "p50": percentile(&round_trips, 0.5), "p99": percentile(&round_trips, 0.99), "max": percentile(&round_trips, 1.0) },
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "kib_per_connection": (rss_after as f64 - rss_before as f64) / opened.max(1) as f64,
        })
    );
}

/// Reads the starting cursor of a tidings SSE stream (the `id:` of its `tidings.open` event).
async fn starting_cursor(addr: SocketAddr) -> String {
    let mut stream = connect(addr, 0, 1).await.expect("connect");
    stream
        .write_all(format!("GET /events?topic=bench HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.expect("a response");
    assert_eq!(head.status, 200, "the SSE stream opens");
    let mut dechunk = Dechunk::for_head(&head);
    let mut body = Vec::new();
    dechunk.feed(&buf, &mut body);
    loop {
        let text = String::from_utf8_lossy(&body);
        if let Some(id) = text.lines().find_map(|l| l.strip_prefix("id: ")) {
            return id.trim().to_owned();
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the stream ended before its first id");
        dechunk.feed(&chunk[..n], &mut body);
    }
}

async fn replay(args: &ReplayArgs) {
    let addr = args.target.addr;
    assert!(addr.ip().is_loopback(), "the load generator only targets loopback");
    let pid = args.target.pid;
    let events = args.events;
    let payload = args.target.payload;
    let cursor = starting_cursor(addr).await;
    let mut publisher = connect(addr, 0, 1).await.expect("publisher connection");
    let t_publish = Instant::now();
    for i in 0..events {
        assert!(publish(&mut publisher, Kind::Tidings, addr, &event_data(i, payload), "").await.unwrap_or(false), "publish {i}");
    }
    let publish_seconds = t_publish.elapsed().as_secs_f64();
    let shared = Arc::new(Shared { opened: AtomicUsize::new(0), failed: AtomicUsize::new(0), notify: Notify::new(), connecting: Semaphore::new(1) });
    let (_deadline_tx, deadline_rx) = tokio::sync::watch::channel(Some(TokioInstant::now() + Duration::from_secs(300)));
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let seen = sse_client(addr, Kind::Tidings.sse_path().to_owned(), 0, 1, events, Some(cursor), shared, Arc::new(deadline_rx)).await;
    let (seconds, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0);
    println!(
        "{}",
        serde_json::json!({
            "mode": "replay", "kind": "tidings", "label": args.target.label, "events": events, "payload": payload,
            "publish_seconds": publish_seconds, "publish_per_second": events as f64 / publish_seconds,
            "replayed": seen.unique, "missing": events - seen.unique, "repeated": seen.repeated, "out_of_order": seen.out_of_order,
            "seconds": seconds, "events_per_second": seen.unique as f64 / seconds, "server_cpu_seconds": cpu,
        })
    );
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    match &cli.mode {
        Mode::Fanout(args) => runtime.block_on(subscribers("fanout", args)),
        Mode::Longpoll(args) => runtime.block_on(subscribers("longpoll", args)),
        Mode::Replay(args) => runtime.block_on(replay(args)),
    }
}
