//! The transport scenarios. Each is a sentence about behaviour; [`ALL`] lists them with the
//! capabilities they need. `docs/conformance.md` says what each checks and why.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tidings_core::{
    Cursor, Event, EventType, Hub, HubBuilder, NewEvent, Refusal, Retention, Topic, authorize_fn,
};

use crate::{
    Capabilities, ConnectRequest, Failure, Outcome, Received, ReceivedEvent, ServerSettings,
    Suite, TestClient, TestServer, ensure,
};

/// How long a scenario waits for any one thing before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A scenario: its name, what it needs, and its body.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// The scenario's name (also its test's name).
    pub name: &'static str,
    /// `Some(capability)` when the transport lacks what the scenario needs.
    pub needs: fn(&Capabilities) -> Option<&'static str>,
    /// The body.
    pub run: fn(Suite) -> Pin<Box<dyn Future<Output = Outcome> + Send>>,
}

fn nothing(_: &Capabilities) -> Option<&'static str> {
    None
}
fn replay(c: &Capabilities) -> Option<&'static str> {
    (!c.replay).then_some("replay")
}
fn heartbeats(c: &Capabilities) -> Option<&'static str> {
    (!c.heartbeats).then_some("heartbeats")
}
fn closing(c: &Capabilities) -> Option<&'static str> {
    (!c.closing).then_some("closing")
}
fn persistent(c: &Capabilities) -> Option<&'static str> {
    (!c.persistent).then_some("persistent connection")
}
fn large_payloads(c: &Capabilities) -> Option<&'static str> {
    (!c.large_payloads).then_some("large payloads")
}
// The lag is made of 256 KiB events, which must arrive whole.
fn persistent_with_large_payloads(c: &Capabilities) -> Option<&'static str> {
    persistent(c).or_else(|| large_payloads(c))
}
fn many_clients(c: &Capabilities) -> Option<&'static str> {
    (!c.many_clients).then_some("many clients")
}
fn live_topics(c: &Capabilities) -> Option<&'static str> {
    (!c.live_topics).then_some("live topics")
}
fn return_channel(c: &Capabilities) -> Option<&'static str> {
    (!c.return_channel).then_some("return channel")
}

macro_rules! define_all {
    (; $($name:ident: $needs:ident,)+) => {
        /// Every transport scenario, in report order.
        pub const ALL: &[Scenario] = &[
            $(Scenario { name: stringify!($name), needs: $needs, run: |s| Box::pin($name(s)) },)+
        ];
    };
}

pub(crate) use define_all;

crate::__transport_scenarios!(crate::scenarios::define_all;);

// ---------------------------------------------------------------------------------------------
// Helpers

struct Env {
    hub: Hub,
    server: Box<dyn TestServer>,
}

const HEARTBEAT: Duration = Duration::from_millis(300);

async fn start_with(
    s: &Suite,
    retention: Retention,
    configure: impl FnOnce(HubBuilder) -> HubBuilder,
) -> Env {
    let store = s.stores.open(retention).await;
    let hub = configure(Hub::builder_shared(store)).build();
    let server = s.transport.serve(hub.clone(), ServerSettings { heartbeat: HEARTBEAT }).await;
    Env { hub, server }
}

async fn start(s: &Suite) -> Env {
    start_with(s, Retention::default(), |b| b).await
}

fn topic(name: &str) -> Topic {
    Topic::new(name)
}

async fn publish(hub: &Hub, t: &str, data: &str) -> Result<Event, Failure> {
    hub.publish(NewEvent::new(topic(t), data))
        .await
        .map_err(|e| Failure(format!("publish to {t} failed: {e}")))
}

async fn connect(env: &Env, request: ConnectRequest) -> Result<Box<dyn TestClient>, Failure> {
    tokio::time::timeout(WAIT, env.server.connect(request.clone()))
        .await
        .map_err(|_| Failure(format!("connect {request:?} timed out")))?
        .map_err(|r| Failure(format!("connect {request:?} refused: {} {}", r.status, r.message)))
}

/// The next thing the client sees, heartbeats skipped.
async fn next(client: &mut Box<dyn TestClient>) -> Result<Received, Failure> {
    loop {
        let received = tokio::time::timeout(WAIT, client.next())
            .await
            .map_err(|_| Failure(format!("nothing received within {WAIT:?}")))?;
        if received != Received::Heartbeat {
            return Ok(received);
        }
    }
}

async fn next_event(client: &mut Box<dyn TestClient>) -> Result<ReceivedEvent, Failure> {
    match next(client).await? {
        Received::Event(e) => Ok(e),
        other => Err(Failure(format!("expected an event, got {other:?}"))),
    }
}

async fn expect_data(client: &mut Box<dyn TestClient>, expected: &[String]) -> Outcome {
    for (i, want) in expected.iter().enumerate() {
        let got = next_event(client).await?;
        ensure!(
            &got.data == want,
            "event {i} of {}: expected {:?}, got {:?}",
            expected.len(),
            abbreviate(want),
            abbreviate(&got.data)
        );
    }
    Ok(())
}

async fn expect_gap(client: &mut Box<dyn TestClient>, topics: &[&str]) -> Outcome {
    match next(client).await? {
        Received::Gap(mut got) => {
            got.sort();
            let mut want: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
            want.sort();
            ensure!(got == want, "gap names {got:?}, expected {want:?}");
            Ok(())
        }
        other => Err(Failure(format!("expected a gap notice for {topics:?}, got {other:?}"))),
    }
}

fn abbreviate(s: &str) -> String {
    if s.len() <= 80 {
        s.to_owned()
    } else {
        format!("{}… ({} bytes)", s.chars().take(40).collect::<String>(), s.len())
    }
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

async fn publish_all(hub: &Hub, t: &str, data: &[String]) -> Outcome {
    for d in data {
        publish(hub, t, d).await?;
    }
    Ok(())
}

/// Publishes "0", "1", … to topic `t` in the background, yielding every `yield_every` events so
/// that readers and reconnections interleave with it.
fn publish_numbers(hub: &Hub, total: usize, yield_every: usize) -> tokio::task::JoinHandle<Outcome> {
    let hub = hub.clone();
    tokio::spawn(async move {
        for n in 0..total {
            publish(&hub, "t", &n.to_string()).await?;
            if n % yield_every == 0 {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    })
}

/// Connects, publishes `data` to topic `t`, checks the client receives it as `expected`.
async fn round_trip(s: &Suite, data: &str, expected: &str) -> Outcome {
    let env = start(s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    publish(&env.hub, "t", data).await?;
    expect_data(&mut client, &[expected.to_owned()]).await
}

/// Held by the scenarios that move tens of MiB through the server (1 MiB events, a lag made
/// of 256 KiB events, a thousand clients, the stalled client), so that in one test process
/// (`cargo test` runs a binary's tests as threads) they never overlap: the memory scenario's
/// resident-set reading then measures the scenario, not a heavy neighbour.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

// ---------------------------------------------------------------------------------------------
// Delivery and byte-exactness

/// A subscribed client receives an event published after it connected.
pub async fn first_event_is_delivered(s: Suite) -> Outcome {
    round_trip(&s, "hello", "hello").await
}

/// LF-separated lines arrive as they were sent.
pub async fn multi_line_data_arrives_byte_exact(s: Suite) -> Outcome {
    round_trip(&s, "line 1\nline 2\n\nline 4\n", "line 1\nline 2\n\nline 4\n").await
}

/// CR and CRLF arrive as LF on transports that say they normalise, byte-exact on the others.
pub async fn cr_and_crlf_line_endings_arrive_as_promised(s: Suite) -> Outcome {
    let sent = "a\r\nb\rc\nd\r\n\r\ne\r";
    let expected = if s.transport.capabilities().normalises_line_endings {
        "a\nb\nc\nd\n\ne\n"
    } else {
        sent
    };
    round_trip(&s, sent, expected).await
}

/// Non-ASCII text, astral-plane characters and odd punctuation arrive byte-exact.
pub async fn unicode_data_arrives_byte_exact(s: Suite) -> Outcome {
    let text = "héllo wörld — ✓ 日本語 🦀🎉 𝄞 \u{10FFFF} \u{FEFF}bom \"quotes\" \\ data: id: : tab\t";
    round_trip(&s, text, text).await
}

/// An empty payload arrives as an empty payload.
pub async fn empty_data_arrives_as_empty(s: Suite) -> Outcome {
    round_trip(&s, "", "").await
}

/// A 1 MiB payload (multi-byte characters and newlines included) arrives byte-exact.
pub async fn one_mebibyte_data_arrives_byte_exact(s: Suite) -> Outcome {
    let _heavy = HEAVY.lock().await;
    let unit = "0123456789abcdef\nüñí🦀\n"; // 16 + 1 + 2+2+2+4 + 1 = 28 bytes
    let mut data = unit.repeat((1 << 20) / unit.len());
    while data.len() < 1 << 20 {
        data.push('x');
    }
    ensure!(data.len() == 1 << 20, "test payload is {} bytes", data.len());
    round_trip(&s, &data, &data).await
}

/// An event type reaches the client; an event without one arrives as the default type.
pub async fn event_types_arrive(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    env.hub
        .publish(NewEvent::new(topic("t"), "typed").with_type(EventType::new("my-custom-event")))
        .await
        .map_err(|e| Failure(e.to_string()))?;
    publish(&env.hub, "t", "plain").await?;
    let typed = next_event(&mut client).await?;
    ensure!(
        typed.event_type.as_deref() == Some("my-custom-event"),
        "typed event arrived with type {:?}",
        typed.event_type
    );
    let plain = next_event(&mut client).await?;
    ensure!(plain.event_type.is_none(), "untyped event arrived with type {:?}", plain.event_type);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Order

/// 500 events on one topic arrive in the order they were published.
pub async fn events_arrive_in_log_order(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let data = numbered("e", 0..500);
    publish_all(&env.hub, "t", &data).await?;
    expect_data(&mut client, &data).await
}

/// Four publishers at once: every event arrives once, each publisher's events in its order,
/// and all of them in log order (the positions the store gave them).
pub async fn concurrent_publishers_keep_per_publisher_order(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let mut tasks = Vec::new();
    for p in 0..4 {
        let hub = env.hub.clone();
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::with_capacity(250);
            for n in 0..250 {
                let data = format!("{p}:{n}");
                let event = publish(&hub, "t", &data).await?;
                positions.push((data, event.seq));
            }
            Ok::<_, Failure>(positions)
        }));
    }
    let mut next_n = [0usize; 4];
    let mut received = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let e = next_event(&mut client).await?;
        let (p, n) = e.data.split_once(':').ok_or_else(|| Failure(format!("odd data {:?}", e.data)))?;
        let (p, n): (usize, usize) = (p.parse().unwrap_or(9), n.parse().unwrap_or(usize::MAX));
        ensure!(p < 4 && next_n[p] == n, "publisher {p}: expected #{}, got #{n}", next_n.get(p).unwrap_or(&0));
        next_n[p] += 1;
        received.push(e.data);
    }
    let mut position = std::collections::HashMap::new();
    for t in tasks {
        position.extend(t.await.map_err(|e| Failure(e.to_string()))??);
    }
    for pair in received.windows(2) {
        let (a, b) = (position[&pair[0]], position[&pair[1]]);
        ensure!(a < b, "{:?} (position {a}) arrived before {:?} (position {b})", pair[0], pair[1]);
    }
    Ok(())
}

/// Two clients of the same topic see the same sequence, under concurrent publishers.
pub async fn all_clients_see_the_same_order(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut a = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let mut b = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let mut tasks = Vec::new();
    for p in 0..3 {
        let hub = env.hub.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..100 {
                let _ = publish(&hub, "t", &format!("{p}:{n}")).await;
            }
        }));
    }
    for i in 0..300 {
        let (x, y) = (next_event(&mut a).await?, next_event(&mut b).await?);
        ensure!(x.data == y.data, "event {i}: client A got {:?}, client B got {:?}", x.data, y.data);
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Replay

/// A client without a cursor receives only what is published after it connects.
pub async fn no_cursor_starts_at_the_end(s: Suite) -> Outcome {
    let env = start(&s).await;
    publish(&env.hub, "t", "before").await?;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    publish(&env.hub, "t", "after").await?;
    expect_data(&mut client, &["after".into()]).await
}

/// A client that received nothing yet can reconnect with the cursor its stream started with
/// and lose nothing published in between.
pub async fn starting_cursor_is_valid_before_any_event(s: Suite) -> Outcome {
    let env = start(&s).await;
    publish(&env.hub, "t", "old").await?;
    let quiet = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let cursor = quiet.cursor();
    drop(quiet);
    ensure!(cursor.is_some(), "a fresh stream carried no starting cursor");
    publish(&env.hub, "t", "missed").await?;
    let mut back = connect(&env, ConnectRequest::topics(&["t"]).cursor(cursor)).await?;
    expect_data(&mut back, &["missed".into()]).await
}

/// After a reconnect with its cursor, a client receives exactly what it missed, then live.
pub async fn replay_resumes_after_cursor(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    publish_all(&env.hub, "t", &numbered("e", 0..5)).await?;
    expect_data(&mut client, &numbered("e", 0..3)).await?;
    let cursor = client.cursor();
    drop(client);
    publish_all(&env.hub, "t", &numbered("e", 5..8)).await?;
    let mut client = connect(&env, ConnectRequest::topics(&["t"]).cursor(cursor)).await?;
    publish(&env.hub, "t", "e8").await?;
    expect_data(&mut client, &numbered("e", 3..9)).await
}

/// While a publisher runs, repeated reconnects with the cursor neither lose nor repeat.
pub async fn replay_while_publishers_run_has_no_loss_no_repeat(s: Suite) -> Outcome {
    let env = start(&s).await;
    let total = 600;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let publisher = publish_numbers(&env.hub, total, 1);
    let mut expected = 0;
    let mut round = 0;
    while expected < total {
        let e = next_event(&mut client).await?;
        ensure!(e.data == expected.to_string(), "expected {expected}, got {:?} (round {round})", e.data);
        expected += 1;
        if expected % 37 == 0 {
            let cursor = client.cursor();
            drop(client);
            client = connect(&env, ConnectRequest::topics(&["t"]).cursor(cursor)).await?;
            round += 1;
        }
    }
    publisher.await.map_err(|e| Failure(e.to_string()))??;
    Ok(())
}

/// 200 disconnect/reconnect cycles during publishing: every event exactly once, in order.
pub async fn two_hundred_reconnects_lose_and_repeat_nothing(s: Suite) -> Outcome {
    let env = start(&s).await;
    let total = 800;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let publisher = publish_numbers(&env.hub, total, 4);
    let mut expected = 0;
    for cycle in 0..200 {
        // Receive 0 to 3 events, then drop the connection.
        for _ in 0..(cycle % 4).min(total - expected) {
            let e = next_event(&mut client).await?;
            ensure!(e.data == expected.to_string(), "cycle {cycle}: expected {expected}, got {:?}", e.data);
            expected += 1;
        }
        let cursor = client.cursor();
        drop(client);
        client = connect(&env, ConnectRequest::topics(&["t"]).cursor(cursor)).await?;
    }
    while expected < total {
        let e = next_event(&mut client).await?;
        ensure!(e.data == expected.to_string(), "after cycles: expected {expected}, got {:?}", e.data);
        expected += 1;
    }
    publisher.await.map_err(|e| Failure(e.to_string()))??;
    publish(&env.hub, "t", "end").await?;
    expect_data(&mut client, &["end".into()]).await
}

// ---------------------------------------------------------------------------------------------
// Topics

/// One connection to three topics receives the events of each, each topic in order.
pub async fn multi_topic_subscription_receives_every_topic(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["a", "b", "c"])).await?;
    let sent = ["a0", "b0", "c0", "b1", "a1", "c1", "b2"];
    for d in sent {
        publish(&env.hub, &d[..1], d).await?;
    }
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(next_event(&mut client).await?.data);
    }
    for t in ["a", "b", "c"] {
        let want: Vec<&str> = sent.iter().copied().filter(|d| d.starts_with(t)).collect();
        let have: Vec<&str> = got.iter().map(String::as_str).filter(|d| d.starts_with(t)).collect();
        ensure!(want == have, "topic {t}: received {have:?}, published {want:?}");
    }
    Ok(())
}

/// One cursor carries a position per topic: a reconnect resumes each topic where it was.
pub async fn multi_topic_cursor_resumes_each_topic(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["a", "b"])).await?;
    for (t, d) in [("a", "a1"), ("b", "b1"), ("b", "b2")] {
        publish(&env.hub, t, d).await?;
    }
    expect_data(&mut client, &["a1".into(), "b1".into(), "b2".into()]).await?;
    let cursor = client.cursor();
    drop(client);
    for (t, d) in [("a", "a2"), ("b", "b3"), ("a", "a3")] {
        publish(&env.hub, t, d).await?;
    }
    let mut client = connect(&env, ConnectRequest::topics(&["a", "b"]).cursor(cursor)).await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_event(&mut client).await?.data);
    }
    let a: Vec<_> = got.iter().filter(|d| d.starts_with('a')).cloned().collect();
    let b: Vec<_> = got.iter().filter(|d| d.starts_with('b')).cloned().collect();
    ensure!(a == ["a2", "a3"] && b == ["b3"], "replayed {got:?}, expected a2, a3 and b3");
    Ok(())
}

/// Events of topics the client did not subscribe to never reach it.
pub async fn unsubscribed_topics_never_arrive(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["mine"])).await?;
    for i in 0..20 {
        publish(&env.hub, "other", &format!("leak{i}")).await?;
        publish(&env.hub, "mine/sub", &format!("leak-prefix{i}")).await?;
        publish(&env.hub, "min", &format!("leak-prefix2-{i}")).await?;
    }
    publish(&env.hub, "mine", "mine").await?;
    expect_data(&mut client, &["mine".into()]).await?;
    // And through a replay: a cursor, then only "mine" again.
    let cursor = client.cursor();
    drop(client);
    publish(&env.hub, "other", "leak-after").await?;
    publish(&env.hub, "mine", "mine2").await?;
    let mut client = connect(&env, ConnectRequest::topics(&["mine"]).cursor(cursor)).await?;
    expect_data(&mut client, &["mine2".into()]).await
}

// ---------------------------------------------------------------------------------------------
// Gaps

/// A cursor older than retention yields a gap notice for the topic, then what is retained.
pub async fn retention_loss_yields_gap_then_what_remains(s: Suite) -> Outcome {
    let env = start_with(&s, Retention::default().max_events(5), |b| b).await;
    let mut cursor = None;
    for i in 0..12 {
        let e = publish(&env.hub, "t", &format!("e{i}")).await?;
        if i == 2 {
            cursor = Some(e.cursor().to_string());
        }
    }
    let mut client = connect(&env, ConnectRequest::topics(&["t"]).cursor(cursor)).await?;
    expect_gap(&mut client, &["t"]).await?;
    expect_data(&mut client, &numbered("e", 7..12)).await?;
    // The cursor after the gap is good: a reconnect with it has no new gap.
    let cursor = client.cursor();
    drop(client);
    publish(&env.hub, "t", "e12").await?;
    let mut client = connect(&env, ConnectRequest::topics(&["t"]).cursor(cursor)).await?;
    expect_data(&mut client, &["e12".into()]).await
}

/// A cursor from another incarnation of the log yields a gap, then the new log's events.
pub async fn other_epoch_cursor_yields_gap(s: Suite) -> Outcome {
    let old = start(&s).await;
    let cursor = publish(&old.hub, "t", "old").await?.cursor().to_string();
    drop(old);
    let env = start(&s).await;
    publish_all(&env.hub, "t", &numbered("new", 0..2)).await?;
    let mut client = connect(&env, ConnectRequest::topics(&["t", "u"]).cursor(Some(cursor))).await?;
    expect_gap(&mut client, &["t", "u"]).await?;
    expect_data(&mut client, &numbered("new", 0..2)).await
}

async fn garbage_cursor_gives_gap(s: Suite, cursor: String) -> Outcome {
    let env = start(&s).await;
    publish_all(&env.hub, "t", &numbered("e", 0..3)).await?;
    let mut client = connect(&env, ConnectRequest::topics(&["t"]).cursor(Some(cursor))).await?;
    expect_gap(&mut client, &["t"]).await?;
    expect_data(&mut client, &numbered("e", 0..3)).await?;
    publish(&env.hub, "t", "live").await?;
    expect_data(&mut client, &["live".into()]).await
}

/// A cursor that is not a cursor yields a gap notice, not an error.
pub async fn malformed_cursor_yields_gap_not_error(s: Suite) -> Outcome {
    garbage_cursor_gives_gap(s, "not-a-cursor!!".into()).await
}

/// A real cursor cut short yields a gap.
pub async fn truncated_cursor_yields_gap(s: Suite) -> Outcome {
    let mut c = Cursor::new(tidings_core::Epoch::random());
    c.set(&topic("t"), 1);
    let token = c.to_string();
    garbage_cursor_gives_gap(s, token[..token.len() - 3].to_owned()).await
}

/// A well-formed cursor that points past the end of the log yields a gap.
pub async fn forged_cursor_yields_gap(s: Suite) -> Outcome {
    let env = start(&s).await;
    let first = publish(&env.hub, "t", "e0").await?;
    publish_all(&env.hub, "t", &numbered("e", 1..3)).await?;
    let mut forged = first.cursor();
    forged.set(&topic("t"), 1_000_000);
    let mut client =
        connect(&env, ConnectRequest::topics(&["t"]).cursor(Some(forged.to_string()))).await?;
    expect_gap(&mut client, &["t"]).await?;
    expect_data(&mut client, &numbered("e", 0..3)).await
}

/// A cursor of several kilobytes yields a gap, not an error.
pub async fn oversized_cursor_yields_gap(s: Suite) -> Outcome {
    garbage_cursor_gives_gap(s, "A".repeat(6000)).await
}

// ---------------------------------------------------------------------------------------------
// Liveness and backpressure

/// An idle stream receives heartbeats at the configured interval.
pub async fn idle_stream_gets_heartbeats(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let started = tokio::time::Instant::now();
    for i in 0..2 {
        let got = tokio::time::timeout(WAIT, client.next())
            .await
            .map_err(|_| Failure("no heartbeat".into()))?;
        ensure!(got == Received::Heartbeat, "idle stream sent {got:?} (#{i})");
    }
    ensure!(
        started.elapsed() >= HEARTBEAT,
        "two heartbeats within {:?}, interval is {HEARTBEAT:?}",
        started.elapsed()
    );
    Ok(())
}

/// A client far behind the live ring reads the store, then rejoins live: nothing is lost.
pub async fn lagging_client_catches_up_from_store(s: Suite) -> Outcome {
    let _heavy = HEAVY.lock().await;
    let env = start_with(&s, Retention::default(), |b| b.ring_capacity(4).page_size(8)).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    // Large events, so that neither socket buffers nor the ring can hold them while the
    // client reads nothing.
    let blob = "x".repeat(256 * 1024);
    let data: Vec<String> = (0..100).map(|i| format!("{i}:{blob}")).collect();
    publish_all(&env.hub, "t", &data).await?;
    expect_data(&mut client, &data).await?;
    publish(&env.hub, "t", "live").await?;
    expect_data(&mut client, &["live".into()]).await?;
    ensure!(env.hub.stats().lagged > 0, "the client never lagged, so nothing was tested");
    Ok(())
}

/// 1000 clients of one topic each receive every event.
pub async fn fan_out_reaches_a_thousand_clients(s: Suite) -> Outcome {
    let _heavy = HEAVY.lock().await;
    let env = start(&s).await;
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        clients.push(connect(&env, ConnectRequest::topics(&["t"])).await?);
    }
    let data = numbered("e", 0..10);
    publish_all(&env.hub, "t", &data).await?;
    let data = Arc::new(data);
    let mut tasks = Vec::new();
    for mut client in clients {
        let data = data.clone();
        tasks.push(tokio::spawn(async move { expect_data(&mut client, &data).await }));
    }
    for t in tasks {
        t.await.map_err(|e| Failure(e.to_string()))??;
    }
    Ok(())
}

/// A client that reads nothing does not hold others back; server memory does not grow with
/// what it misses; when it reads again it gets a gap, never silent loss.
///
/// Memory: after a warm-up that fills the ring, the store's retention and the allocator's
/// pools, another 48 MiB go past the stalled client; a queue per subscriber would grow by as
/// much, the shared ring by nothing.
///
/// A server may also cut the stalled client off (`tidings::http::Server` does once its socket
/// has not drained for its stall timeout): the client then reconnects from its cursor, as an
/// `EventSource` does, and the rule holds across the reconnection.
pub async fn stalled_client_slows_nobody_and_memory_stays_bounded(s: Suite) -> Outcome {
    let _heavy = HEAVY.lock().await;
    let env = start_with(&s, Retention::default().max_events(16), |b| b.ring_capacity(64)).await;
    let mut stalled = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let mut live = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let blob = "y".repeat(256 * 1024);
    let mut warm = None;
    for i in 0..320 {
        if i == 128 {
            warm = rss_bytes();
        }
        publish(&env.hub, "t", &format!("{i}:{blob}")).await?;
        let e = next_event(&mut live).await?;
        ensure!(e.data.starts_with(&format!("{i}:")), "live client expected {i}, got {}", abbreviate(&e.data));
    }
    if let (Some(before), Some(after)) = (warm, rss_bytes()) {
        let grown = after.saturating_sub(before);
        ensure!(grown < 16 << 20, "memory grew by {} MiB while 48 MiB went past a stalled client", grown >> 20);
    }
    // The stalled client now reads: increasing numbers, and any jump is announced by a gap.
    let mut last: Option<usize> = None;
    let mut gap_pending = false;
    let mut reconnections = 0;
    loop {
        match next(&mut stalled).await? {
            Received::Gap(_) => gap_pending = true,
            Received::Event(e) => {
                let n: usize = e.data.split(':').next().and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
                let contiguous = last.map_or(n == 0, |l| n == l + 1);
                ensure!(contiguous || gap_pending, "stalled client jumped from {last:?} to {n} without a gap notice");
                ensure!(last.is_none_or(|l| n > l), "stalled client went back from {last:?} to {n}");
                gap_pending = false;
                last = Some(n);
                if n == 319 {
                    return Ok(());
                }
            }
            Received::Ended | Received::Failed(_) if reconnections < 3 => {
                reconnections += 1;
                let cursor = stalled.cursor();
                stalled = connect(&env, ConnectRequest::topics(&["t"]).cursor(cursor)).await?;
            }
            other => return Err(Failure(format!("stalled client got {other:?}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization and validation

fn guarded(b: HubBuilder) -> HubBuilder {
    b.authorize(authorize_fn(|req| {
        if !req.topics.iter().any(|t| t.as_str().starts_with("private")) {
            return Ok(());
        }
        match req.credentials.header("authorization") {
            None => Err(Refusal::unauthenticated("a bearer token is required")),
            Some("Bearer ok") => Ok(()),
            Some(_) => Err(Refusal::forbidden("this token may not read private topics")),
        }
    }))
}

async fn expect_refused(env: &Env, request: ConnectRequest, status: u16) -> Outcome {
    match tokio::time::timeout(WAIT, env.server.connect(request.clone())).await {
        Err(_) => Err(Failure("connect timed out".into())),
        Ok(Ok(_)) => Err(Failure(format!("{request:?} was accepted, expected {status}"))),
        Ok(Err(refused)) => {
            ensure!(refused.status == status, "{request:?}: status {}, expected {status}", refused.status);
            ensure!(!refused.message.is_empty(), "{request:?}: refusal without a message");
            Ok(())
        }
    }
}

/// A private topic without credentials is refused with 401.
pub async fn unauthenticated_request_is_refused_with_401(s: Suite) -> Outcome {
    let env = start_with(&s, Retention::default(), guarded).await;
    expect_refused(&env, ConnectRequest::topics(&["private"]), 401).await
}

/// Wrong credentials for a private topic: 403, before any byte of stream; right ones stream.
pub async fn forbidden_topic_is_refused_with_403_before_streaming(s: Suite) -> Outcome {
    let env = start_with(&s, Retention::default(), guarded).await;
    expect_refused(&env, ConnectRequest::topics(&["public", "private"]).header("authorization", "Bearer no"), 403)
        .await?;
    ensure!(env.hub.stats().connections == 0, "a refused request opened a subscription");
    let mut ok = connect(&env, ConnectRequest::topics(&["private"]).header("authorization", "Bearer ok")).await?;
    publish(&env.hub, "private", "secret").await?;
    expect_data(&mut ok, &["secret".into()]).await
}

/// A cursor that mentions a forbidden topic replays only the topics the request may read.
pub async fn cursor_cannot_leak_a_forbidden_topic(s: Suite) -> Outcome {
    let env = start_with(&s, Retention::default(), guarded).await;
    // An authorized client reads both topics and keeps its cursor (positions for both).
    let mut insider = connect(
        &env,
        ConnectRequest::topics(&["public", "private"]).header("authorization", "Bearer ok"),
    )
    .await?;
    publish(&env.hub, "public", "p0").await?;
    publish(&env.hub, "private", "s0").await?;
    expect_data(&mut insider, &["p0".into(), "s0".into()]).await?;
    let cursor = insider.cursor();
    drop(insider);
    publish(&env.hub, "private", "s1").await?;
    publish(&env.hub, "public", "p1").await?;
    // Without credentials, the same cursor asking for both is refused...
    expect_refused(&env, ConnectRequest::topics(&["public", "private"]).cursor(cursor.clone()), 401).await?;
    // ...and asking for the public topic replays only the public topic.
    let mut outsider = connect(&env, ConnectRequest::topics(&["public"]).cursor(cursor)).await?;
    publish(&env.hub, "private", "s2").await?;
    publish(&env.hub, "public", "p2").await?;
    expect_data(&mut outsider, &["p1".into(), "p2".into()]).await
}

/// Empty, over-long and control-character topic names are a 400 with a message.
pub async fn invalid_topic_names_are_refused_with_400(s: Suite) -> Outcome {
    let env = start(&s).await;
    for bad in [String::new(), "x".repeat(257), "new\nline".into(), "nul\0".into(), "del\u{7f}".into()] {
        expect_refused(&env, ConnectRequest::topics(&["ok".to_owned(), bad]), 400).await?;
    }
    Ok(())
}

/// More topics than the hub allows is a 400.
pub async fn too_many_topics_are_refused_with_400(s: Suite) -> Outcome {
    let env = start_with(&s, Retention::default(), |b| b.max_topics(8)).await;
    let topics: Vec<String> = (0..9).map(|i| format!("t{i}")).collect();
    expect_refused(&env, ConnectRequest::topics(&topics), 400).await?;
    let mut ok = connect(&env, ConnectRequest::topics(&topics[..8])).await?;
    publish(&env.hub, "t7", "fine").await?;
    expect_data(&mut ok, &["fine".into()]).await
}

// ---------------------------------------------------------------------------------------------
// Closing

/// On shutdown every client is told when to come back, with jitter; new clients get a 503.
pub async fn shutdown_tells_clients_to_come_back_with_jitter(s: Suite) -> Outcome {
    let range = Duration::from_millis(1000)..=Duration::from_millis(9000);
    let env = start_with(&s, Retention::default(), |b| b.reconnect_jitter(range.clone())).await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(connect(&env, ConnectRequest::topics(&["t"])).await?);
    }
    // Every client is streaming.
    publish(&env.hub, "t", "ready").await?;
    for c in &mut clients {
        expect_data(c, &["ready".into()]).await?;
    }
    env.hub.shutdown();
    let mut delays = Vec::new();
    for c in &mut clients {
        match next(c).await? {
            Received::Closing(Some(d)) => {
                ensure!(range.contains(&d), "reconnect delay {d:?} outside {range:?}");
                delays.push(d);
            }
            other => return Err(Failure(format!("expected a closing notice, got {other:?}"))),
        }
        let end = next(c).await?;
        ensure!(end == Received::Ended, "after closing: {end:?}");
    }
    delays.sort();
    delays.dedup();
    ensure!(delays.len() > 1, "all 12 clients were told the same delay: no jitter");
    expect_refused(&env, ConnectRequest::topics(&["t"]), 503).await
}

// ---------------------------------------------------------------------------------------------
// Live topics and the return channel (socket transports)

fn refused(what: &str, r: crate::Refused) -> Failure {
    Failure(format!("{what} was refused: {} {}", r.status, r.message))
}

/// Topics added and removed on an open connection: kept topics go on without loss or repeat,
/// removed ones stop, added ones start where the client's cursor places them (at the end
/// without one, with a gap notice for them alone when it cannot be read), and the cursor the
/// client holds afterwards resumes exactly.
pub async fn topics_change_on_a_live_connection_with_an_exact_cursor(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["a"])).await?;
    publish(&env.hub, "a", "a1").await?;
    expect_data(&mut client, &["a1".to_owned()]).await?;
    // Events of `b` before it is added are not the client's; after, they are.
    publish(&env.hub, "b", "b0").await?;
    client.subscribe(&["b"], None).await.map_err(|r| refused("subscribe", r))?;
    publish(&env.hub, "b", "b1").await?;
    publish(&env.hub, "a", "a2").await?;
    let mut got = vec![next_event(&mut client).await?.data, next_event(&mut client).await?.data];
    got.sort();
    ensure!(got == ["a2", "b1"], "after adding b, expected a2 and b1, got {got:?}");
    client.unsubscribe(&["a"]).await.map_err(|r| refused("unsubscribe", r))?;
    publish(&env.hub, "a", "a3").await?;
    publish(&env.hub, "b", "b2").await?;
    expect_data(&mut client, &["b2".to_owned()]).await?;

    // An added topic starts after the position the client's cursor gives it.
    let mut other = connect(&env, ConnectRequest::topics(&["c"])).await?;
    publish_all(&env.hub, "c", &numbered("c", 0..3)).await?;
    expect_data(&mut other, &["c0".to_owned()]).await?;
    let after_c0 = other.cursor();
    client.subscribe(&["c"], after_c0).await.map_err(|r| refused("subscribe with a cursor", r))?;
    expect_data(&mut client, &numbered("c", 1..3)).await?;

    // A cursor that cannot be read: a gap notice for the added topic alone.
    publish(&env.hub, "d", "d0").await?;
    client.subscribe(&["d"], Some("garbage".into())).await.map_err(|r| refused("subscribe with garbage", r))?;
    expect_gap(&mut client, &["d"]).await?;
    expect_data(&mut client, &["d0".to_owned()]).await?;

    // The cursor held now resumes each topic exactly, on a new connection.
    let cursor = client.cursor();
    drop(client);
    publish(&env.hub, "b", "b3").await?;
    publish(&env.hub, "c", "c3").await?;
    publish(&env.hub, "d", "d1").await?;
    let mut back = connect(&env, ConnectRequest::topics(&["b", "c", "d"]).cursor(cursor)).await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_event(&mut back).await?.data);
    }
    got.sort();
    ensure!(got == ["b3", "c3", "d1"], "resumed with the changed cursor, expected b3 c3 d1, got {got:?}");
    Ok(())
}

/// A client publishes through its connection to a topic it follows: it gets the event's
/// cursor back, and every subscriber (itself included) receives the event with that cursor.
/// To a topic it does not follow, the answer is a refusal, and the connection goes on.
pub async fn clients_publish_through_their_connection_where_allowed(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut author = connect(&env, ConnectRequest::topics(&["p"])).await?;
    let mut reader = connect(&env, ConnectRequest::topics(&["p"])).await?;
    let id = author.publish("p", "from the client").await.map_err(|r| refused("publish", r))?;
    for client in [&mut author, &mut reader] {
        let e = next_event(client).await?;
        ensure!(e.data == "from the client", "expected the client's event, got {:?}", e.data);
        ensure!(e.cursor == id, "the event's cursor {:?} is not the one the publish returned ({id:?})", e.cursor);
    }
    match author.publish("q", "not mine").await {
        Ok(id) => return Err(Failure(format!("publishing to a topic the client does not follow was accepted ({id})"))),
        Err(r) => ensure!(r.status == 403 && !r.message.is_empty(), "expected a 403 with a message, got {} {:?}", r.status, r.message),
    }
    publish(&env.hub, "p", "after").await?;
    expect_data(&mut author, &["after".to_owned()]).await
}

/// A message the server cannot read is answered with an error that says why, and the
/// connection keeps delivering.
pub async fn unreadable_messages_are_answered_and_the_connection_lives_on(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let answer = client.send_unreadable().await.map_err(Failure)?;
    ensure!(answer.status == 400 && !answer.message.is_empty(), "expected a 400 with a message, got {} {:?}", answer.status, answer.message);
    publish(&env.hub, "t", "still here").await?;
    expect_data(&mut client, &["still here".to_owned()]).await
}

/// A message over the server's limit closes the connection with a code and a reason, rather
/// than dropping it in silence.
pub async fn oversized_messages_close_with_a_code_and_a_reason(s: Suite) -> Outcome {
    let env = start(&s).await;
    let mut client = connect(&env, ConnectRequest::topics(&["t"])).await?;
    let close = client.send_oversized().await.map_err(Failure)?;
    ensure!(close.status != 0 && !close.message.is_empty(), "expected a close code and a reason, got {} {:?}", close.status, close.message);
    Ok(())
}
