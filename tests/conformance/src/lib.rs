//! The tidings conformance suite: one set of scenarios that every transport and every store
//! must pass, shipped as a library so that third-party transports and stores run it too.
//!
//! A transport implements three small traits for the suite: [`TransportAdapter`] (serve a
//! [`Hub`]), [`TestServer`] (open a client connection with topics and a cursor) and
//! [`TestClient`] (receive what the client sees). Then one line in its tests expands to one
//! `#[tokio::test]` per scenario, so that a failure names its scenario:
//!
//! ```ignore
//! tidings_conformance::transport_suite!(my_transport::ConformanceAdapter::default());
//! ```
//!
//! A store implements [`StoreFactory`] (open a fresh, empty log with a given retention) and
//! runs [`store_suite!`]; it can also run the transport suite over itself with
//! `transport_suite!(adapter, store: factory)`.
//!
//! Scenarios return an [`Outcome`]. A scenario that a transport cannot support (its
//! [`Capabilities`] say so) is reported as "not applicable", never as passed. Each run writes
//! a row per scenario (name, result, time) to standard output and writes it
//! under `$CARGO_TARGET_TMPDIR/conformance/<transport>+<store>/`; [`report_table`] renders the
//! table that `docs/conformance.md` shows.
//!
//! The crate's own tests run the whole suite on [`local::LocalAdapter`] (the hub used
//! in-process), and run deliberately broken adapters to show that scenarios can fail.

pub mod local;
pub mod scenarios;
pub mod stores;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tidings_core::{MemoryStore, Retention, Store};

pub use tidings_core::Hub;

/// What a transport can do; scenarios that need what it lacks are not applicable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Resumes from a cursor the client brings back.
    pub replay: bool,
    /// Sends heartbeats on an idle connection.
    pub heartbeats: bool,
    /// Tells clients when to come back when the server shuts down.
    pub closing: bool,
    /// Delivers a payload's CR and CRLF line endings as LF (SSE does; JSON transports do not).
    pub normalises_line_endings: bool,
    /// Can serve 1000 concurrent clients in one test process.
    pub many_clients: bool,
    /// Keeps a connection (and a subscription) open between events, so a client can fall
    /// behind the live ring; polling transports open one per request instead.
    pub persistent: bool,
    /// Carries events of 1 MiB whole (Web Push carries at most about 4 KiB, and sends larger
    /// events in a truncated form for the client to fetch).
    pub large_payloads: bool,
    /// Adds and removes topics on an open connection ([`TestClient::subscribe`],
    /// [`TestClient::unsubscribe`]), keeping the cursor exact across each change.
    pub live_topics: bool,
    /// Carries messages from the client to the server on the same connection
    /// ([`TestClient::publish`], [`TestClient::send_unreadable`],
    /// [`TestClient::send_oversized`]). The adapter's server lets a client publish to the
    /// topics it follows and to no other.
    pub return_channel: bool,
}

impl Capabilities {
    /// Everything a streaming transport such as SSE can do.
    pub const STREAMING: Capabilities = Capabilities {
        replay: true,
        heartbeats: true,
        closing: true,
        normalises_line_endings: true,
        many_clients: true,
        persistent: true,
        large_payloads: true,
        live_topics: false,
        return_channel: false,
    };

    /// What a socket transport such as WebSocket can do: everything a stream can, with exact
    /// line endings (JSON carries them), topics that change on the open connection, and a
    /// return channel.
    pub const SOCKET: Capabilities = Capabilities {
        replay: true,
        heartbeats: true,
        closing: true,
        normalises_line_endings: false,
        many_clients: true,
        persistent: true,
        large_payloads: true,
        live_topics: true,
        return_channel: true,
    };

    /// What a polling transport such as long-polling can do: replay, a closing signal, exact
    /// line endings; no heartbeats, no persistent connection.
    pub const POLLING: Capabilities = Capabilities {
        replay: true,
        heartbeats: false,
        closing: true,
        normalises_line_endings: false,
        many_clients: true,
        persistent: false,
        large_payloads: true,
        live_topics: false,
        return_channel: false,
    };

    /// What a push transport such as Web Push can do: replay from a cursor, exact line
    /// endings, a persistent subscription per client; no heartbeats, no closing signal, payloads
    /// of a few KiB, not a thousand clients in one test.
    pub const PUSH: Capabilities = Capabilities {
        replay: true,
        heartbeats: false,
        closing: false,
        normalises_line_endings: false,
        many_clients: false,
        persistent: true,
        large_payloads: false,
        live_topics: false,
        return_channel: false,
    };

    /// Sets [`Capabilities::heartbeats`].
    pub const fn with_heartbeats(mut self, yes: bool) -> Self {
        self.heartbeats = yes;
        self
    }

    /// Sets [`Capabilities::normalises_line_endings`].
    pub const fn with_normalised_line_endings(mut self, yes: bool) -> Self {
        self.normalises_line_endings = yes;
        self
    }

    /// Sets [`Capabilities::closing`].
    pub const fn with_closing(mut self, yes: bool) -> Self {
        self.closing = yes;
        self
    }
}

/// Settings the suite asks a transport's server to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Heartbeat interval for idle streams.
    pub heartbeat: Duration,
}

/// A transport under test: serves a hub the scenario built.
#[async_trait]
pub trait TransportAdapter: Send + Sync + 'static {
    /// The transport's name, for the report.
    fn name(&self) -> &'static str;

    /// What the transport can do.
    fn capabilities(&self) -> Capabilities;

    /// Serves `hub` (on 127.0.0.1 port 0, for network transports) until the server is dropped.
    async fn serve(&self, hub: Hub, settings: ServerSettings) -> Box<dyn TestServer>;
}

/// A running server of the transport under test. Dropping it stops the server.
#[async_trait]
pub trait TestServer: Send + Sync {
    /// Opens a client connection, as a real client of this transport would.
    async fn connect(&self, request: ConnectRequest) -> Result<Box<dyn TestClient>, Refused>;
}

/// What a test client asks for. Topics are raw strings: the suite also sends invalid ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The topics, as the client sends them.
    pub topics: Vec<String>,
    /// The cursor token the client brings back, if any.
    pub cursor: Option<String>,
    /// Extra request headers (authorization, cookies).
    pub headers: Vec<(String, String)>,
}

impl ConnectRequest {
    /// A request for `topics`.
    pub fn topics<S: AsRef<str>>(topics: &[S]) -> ConnectRequest {
        ConnectRequest {
            topics: topics.iter().map(|t| t.as_ref().to_owned()).collect(),
            ..ConnectRequest::default()
        }
    }

    /// Brings back `cursor`.
    #[must_use]
    pub fn cursor(mut self, cursor: Option<String>) -> ConnectRequest {
        self.cursor = cursor;
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> ConnectRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// The server refused the connection before streaming anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status (or its equivalent).
    pub status: u16,
    /// The error message the server sent.
    pub message: String,
}

/// An event as a client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceivedEvent {
    /// The event type, `None` for the default.
    pub event_type: Option<String>,
    /// The payload.
    pub data: String,
    /// The cursor after this event.
    pub cursor: String,
}

impl ReceivedEvent {
    /// An event as received.
    pub fn new(event_type: Option<String>, data: String, cursor: String) -> ReceivedEvent {
        ReceivedEvent { event_type, data, cursor }
    }
}

/// What a client sees next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// An event.
    Event(ReceivedEvent),
    /// A gap notice for these topics.
    Gap(Vec<String>),
    /// A heartbeat.
    Heartbeat,
    /// The server asked the client to come back after this delay.
    Closing(Option<Duration>),
    /// The connection ended.
    Ended,
    /// The client failed (a protocol error); the text says how.
    Failed(String),
}

/// One client connection of the transport under test. Dropping it disconnects.
#[async_trait]
pub trait TestClient: Send {
    /// Waits for what the client sees next.
    async fn next(&mut self) -> Received;

    /// The cursor the client would bring back if it reconnected now (the last one received,
    /// including the one a stream starts with), if any.
    fn cursor(&self) -> Option<String>;

    /// Adds `topics` on the open connection, positioned by `cursor` where it names them, and
    /// waits until the server confirms. What arrives meanwhile is kept for [`TestClient::next`].
    /// Only for transports with [`Capabilities::live_topics`]; the default refuses.
    async fn subscribe(&mut self, topics: &[&str], cursor: Option<String>) -> Result<(), Refused> {
        let _ = (topics, cursor);
        Err(unsupported())
    }

    /// Removes `topics` from the open connection and waits until the server confirms.
    /// Only for transports with [`Capabilities::live_topics`]; the default refuses.
    async fn unsubscribe(&mut self, topics: &[&str]) -> Result<(), Refused> {
        let _ = topics;
        Err(unsupported())
    }

    /// Publishes `data` to `topic` through the connection: the published event's cursor, or
    /// the server's refusal. Only for transports with [`Capabilities::return_channel`].
    async fn publish(&mut self, topic: &str, data: &str) -> Result<String, Refused> {
        let _ = (topic, data);
        Err(unsupported())
    }

    /// Sends a message the transport's protocol cannot read, and returns the error the server
    /// answered with (the connection stays open). `Err` says how the exchange failed.
    async fn send_unreadable(&mut self) -> Result<Refused, String> {
        Err("this transport has no return channel".into())
    }

    /// Sends a message over the server's size limit, and returns how the server closed the
    /// connection (the close code as `status`, and its reason).
    async fn send_oversized(&mut self) -> Result<Refused, String> {
        Err("this transport has no return channel".into())
    }
}

fn unsupported() -> Refused {
    Refused { status: 0, message: "not supported by this transport".into() }
}

/// Opens fresh, empty logs of the store under test.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// The store's name, for the report.
    fn name(&self) -> &'static str;

    /// A fresh log (its own epoch, no events) with `retention`.
    async fn open(&self, retention: Retention) -> Arc<dyn Store>;
}

/// Opens [`MemoryStore`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryStores;

#[async_trait]
impl StoreFactory for MemoryStores {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn open(&self, retention: Retention) -> Arc<dyn Store> {
        Arc::new(MemoryStore::with_retention(retention))
    }
}

/// Why a scenario failed.
#[derive(Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check held.
    Passed,
    /// The transport does not claim the capability the scenario needs.
    NotApplicable(&'static str),
    /// A check failed.
    Failed(Failure),
}

/// The result of a scenario body.
pub type Outcome = Result<(), Failure>;

/// Fails the scenario with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Failure(format!($($msg)+)));
        }
    };
}

/// Everything a scenario needs: the transport and the store under test.
#[derive(Clone)]
pub struct Suite {
    /// The transport under test.
    pub transport: Arc<dyn TransportAdapter>,
    /// The store under test.
    pub stores: Arc<dyn StoreFactory>,
}

impl fmt::Debug for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suite")
            .field("transport", &self.transport.name())
            .field("store", &self.stores.name())
            .finish()
    }
}

impl Suite {
    /// A suite for `transport` over `stores`.
    pub fn new(transport: impl TransportAdapter, stores: impl StoreFactory) -> Suite {
        Suite { transport: Arc::new(transport), stores: Arc::new(stores) }
    }
}

/// Runs one transport scenario and returns its verdict (does not panic).
pub async fn run_scenario(suite: &Suite, name: &str) -> Verdict {
    let Some(scenario) = scenarios::ALL.iter().find(|s| s.name == name) else {
        return Verdict::Failed(Failure(format!("no scenario named {name}")));
    };
    let caps = suite.transport.capabilities();
    if let Some(missing) = (scenario.needs)(&caps) {
        return Verdict::NotApplicable(missing);
    }
    match (scenario.run)(suite.clone()).await {
        Ok(()) => Verdict::Passed,
        Err(failure) => Verdict::Failed(failure),
    }
}

/// Runs one scenario, reports it (stdout and the report file), and panics if it failed.
/// This is what the [`transport_suite!`] tests call.
pub async fn check_scenario(suite: Suite, name: &str, report_dir: &str) {
    let started = Instant::now();
    let verdict = run_scenario(&suite, name).await;
    report(
        report_dir,
        &format!("{}+{}", suite.transport.name(), suite.stores.name()),
        name,
        &verdict,
        started.elapsed(),
    );
    if let Verdict::Failed(failure) = verdict {
        panic!("scenario {name} failed: {failure}");
    }
}

/// Prints a report row and writes it to `<dir>/conformance/<target>/<scenario>.tsv` (one file
/// per scenario, replaced on each run); [`report_table`] assembles them.
pub fn report(dir: &str, target: &str, scenario: &str, verdict: &Verdict, elapsed: Duration) {
    let result = match verdict {
        Verdict::Passed => "passed".to_owned(),
        Verdict::NotApplicable(why) => format!("not applicable ({why})"),
        Verdict::Failed(f) => format!("FAILED: {}", f.0.replace(['\n', '\t', '|'], " ")),
    };
    let row = format!("{scenario}\t{result}\t{} ms", elapsed.as_millis());
    println!("conformance | {target} | {}", row.replace('\t', " | "));
    let dir = std::path::Path::new(dir).join("conformance").join(target);
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{scenario}.tsv")), row);
    }
}

/// A Markdown table of the latest result of every scenario run for `target` (such as
/// `sse+memory`) under `dir`, in suite order.
pub fn report_table(dir: &str, target: &str) -> String {
    let base = std::path::Path::new(dir).join("conformance").join(target);
    let mut out = format!("| scenario ({target}) | result | time |\n|---|---|---|\n");
    let names = scenarios::ALL.iter().map(|s| s.name).chain(stores::ALL.iter().map(|s| s.0));
    for name in names {
        if let Ok(row) = std::fs::read_to_string(base.join(format!("{name}.tsv"))) {
            out.push_str(&format!("| {} |\n", row.replace('\t', " | ")));
        }
    }
    out
}

/// Expands to one `#[tokio::test]` per transport scenario, for the given adapter (and, after
/// `store:`, a [`StoreFactory`]; default [`MemoryStores`]).
#[macro_export]
macro_rules! transport_suite {
    ($adapter:expr) => {
        $crate::transport_suite!($adapter, store: $crate::MemoryStores);
    };
    ($adapter:expr, store: $stores:expr) => {
        $crate::__transport_scenarios!($crate::__transport_tests; $adapter, $stores);
    };
}

/// The one list of transport scenarios, each with the capability it needs: calls `$callback!`
/// with the given arguments, then `; name: needs,` pairs. Implementation detail.
#[doc(hidden)]
#[macro_export]
macro_rules! __transport_scenarios {
    ($($callback:tt)::+ ; $($args:tt)*) => {
        $($callback)::+! { $($args)* ;
            first_event_is_delivered: nothing,
            multi_line_data_arrives_byte_exact: nothing,
            cr_and_crlf_line_endings_arrive_as_promised: nothing,
            unicode_data_arrives_byte_exact: nothing,
            empty_data_arrives_as_empty: nothing,
            one_mebibyte_data_arrives_byte_exact: large_payloads,
            event_types_arrive: nothing,
            events_arrive_in_log_order: nothing,
            concurrent_publishers_keep_per_publisher_order: nothing,
            all_clients_see_the_same_order: nothing,
            no_cursor_starts_at_the_end: nothing,
            starting_cursor_is_valid_before_any_event: replay,
            replay_resumes_after_cursor: replay,
            replay_while_publishers_run_has_no_loss_no_repeat: replay,
            two_hundred_reconnects_lose_and_repeat_nothing: replay,
            multi_topic_subscription_receives_every_topic: nothing,
            multi_topic_cursor_resumes_each_topic: replay,
            unsubscribed_topics_never_arrive: nothing,
            retention_loss_yields_gap_then_what_remains: replay,
            other_epoch_cursor_yields_gap: replay,
            malformed_cursor_yields_gap_not_error: replay,
            truncated_cursor_yields_gap: replay,
            forged_cursor_yields_gap: replay,
            oversized_cursor_yields_gap: replay,
            idle_stream_gets_heartbeats: heartbeats,
            lagging_client_catches_up_from_store: persistent_with_large_payloads,
            fan_out_reaches_a_thousand_clients: many_clients,
            stalled_client_slows_nobody_and_memory_stays_bounded: large_payloads,
            unauthenticated_request_is_refused_with_401: nothing,
            forbidden_topic_is_refused_with_403_before_streaming: nothing,
            cursor_cannot_leak_a_forbidden_topic: replay,
            invalid_topic_names_are_refused_with_400: nothing,
            too_many_topics_are_refused_with_400: nothing,
            shutdown_tells_clients_to_come_back_with_jitter: closing,
            topics_change_on_a_live_connection_with_an_exact_cursor: live_topics,
            clients_publish_through_their_connection_where_allowed: return_channel,
            unreadable_messages_are_answered_and_the_connection_lives_on: return_channel,
            oversized_messages_close_with_a_code_and_a_reason: return_channel,
        }
    };
}

/// Implementation detail of [`transport_suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __transport_tests {
    ($adapter:expr, $stores:expr; $($name:ident: $needs:ident,)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let suite = $crate::Suite::new($adapter, $stores);
                $crate::check_scenario(suite, stringify!($name), env!("CARGO_TARGET_TMPDIR")).await;
            }
        )+
    };
}

/// Expands to one `#[tokio::test]` per store scenario, for the given [`StoreFactory`].
#[macro_export]
macro_rules! store_suite {
    ($stores:expr) => {
        $crate::__store_scenarios!($crate::__store_tests; $stores);
    };
}

/// The one list of store scenarios: calls `$callback!` with the given arguments, then
/// `; name,` entries. Implementation detail.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_scenarios {
    ($($callback:tt)::+ ; $($args:tt)*) => {
        $($callback)::+! { $($args)* ;
            append_assigns_consecutive_positions_per_topic,
            read_after_returns_what_follows_in_order,
            read_after_respects_the_limit,
            read_past_the_end_is_empty,
            unknown_topic_has_empty_bounds,
            retention_by_count_drops_oldest,
            retention_by_age_drops_expired,
            data_round_trips_byte_exact,
            events_carry_the_store_epoch,
            fresh_stores_have_distinct_epochs,
            concurrent_appends_get_unique_positions,
            live_tail_yields_appends_in_order,
        }
    };
}

/// Implementation detail of [`store_suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __store_tests {
    ($stores:expr; $($name:ident,)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::stores::check(std::sync::Arc::new($stores), stringify!($name), env!("CARGO_TARGET_TMPDIR")).await;
            }
        )+
    };
}
