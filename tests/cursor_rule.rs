//! The one rule for choosing a request's cursor (`docs/protocol.md`, "Choosing the cursor"),
//! through the demo's real routes under the shipped server, on SSE and on long-polling: every
//! combination of a `Last-Event-ID` header and the transport's query parameter, each empty,
//! blank, given, given twice, or unreadable. Found by replaying a bug report: an empty
//! `Last-Event-ID` made the stream drop the query's cursor and open at the end of the log,
//! without a gap notice.

mod common;
#[allow(dead_code)]
#[path = "../examples/sse_demo.rs"]
mod sse_demo;

use std::time::Duration;

use futures_util::StreamExt;
use tidings::{Hub, MemoryStore, NewEvent, Topic};

/// One place's content, as a client sends it.
#[derive(Debug, Clone, Copy)]
enum Place {
    Absent,
    Empty,
    Blank,
    /// The cursor after `e1` (`C1`) or after `e2` (`C2`).
    Cursor(usize),
    /// The same place twice with the same cursor.
    TwiceSame(usize),
    /// The same place twice: a cursor, then an empty value.
    CursorThenEmpty(usize),
    /// The same place twice with different cursors.
    TwiceDifferent,
    /// Header only: bytes that are not text.
    Unreadable,
}

/// What the subscription must start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// No cursor: the end of the log.
    End,
    /// After `e1` or `e2`.
    After(usize),
    /// Position unknown: a gap notice, then every retained event.
    Gap,
}

impl Place {
    /// What this place says on its own, by the rule: `None` when it carries no cursor.
    fn carries(self) -> Option<Start> {
        match self {
            Place::Absent | Place::Empty | Place::Blank => None,
            Place::Cursor(k) | Place::TwiceSame(k) | Place::CursorThenEmpty(k) => Some(Start::After(k)),
            Place::TwiceDifferent | Place::Unreadable => Some(Start::Gap),
        }
    }

    fn values(self, cursors: &[String]) -> Vec<Vec<u8>> {
        let c = |k: usize| cursors[k - 1].clone().into_bytes();
        match self {
            Place::Absent => vec![],
            Place::Empty => vec![b"".to_vec()],
            Place::Blank => vec![b"  ".to_vec()],
            Place::Cursor(k) => vec![c(k)],
            Place::TwiceSame(k) => vec![c(k), c(k)],
            Place::CursorThenEmpty(k) => vec![c(k), b"".to_vec()],
            Place::TwiceDifferent => vec![c(1), c(2)],
            Place::Unreadable => vec![b"\xff\xfe".to_vec()],
        }
    }
}

/// The rule: the header if it carries a cursor, else the query parameter, else none.
fn expected(header: Place, query: Place) -> Start {
    header.carries().or(query.carries()).unwrap_or(Start::End)
}

const HEADERS: [Place; 8] = [
    Place::Absent,
    Place::Empty,
    Place::Blank,
    Place::Cursor(2),
    Place::TwiceSame(2),
    Place::CursorThenEmpty(2),
    Place::TwiceDifferent,
    Place::Unreadable,
];
const QUERIES: [Place; 7] = [
    Place::Absent,
    Place::Empty,
    Place::Blank,
    Place::Cursor(1),
    Place::TwiceSame(1),
    Place::CursorThenEmpty(1),
    Place::TwiceDifferent,
];

struct Demo {
    base: String,
    hub: Hub,
    http: reqwest::Client,
    /// The cursors after `e1` and `e2`; `e3` follows.
    cursors: Vec<String>,
}

async fn start(topic: &str) -> Demo {
    let hub = Hub::new(MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let push = common::memory_web_push(hub.clone()).await;
    let app = sse_demo::app(hub.clone(), &push);
    tokio::spawn(tidings::http::Server::new(app).serve(listener, std::future::pending()));
    let mut cursors = Vec::new();
    for data in ["e1", "e2", "e3"] {
        let event = hub.publish(NewEvent::new(Topic::new(topic), data)).await.unwrap();
        cursors.push(event.cursor().to_string());
    }
    cursors.pop();
    Demo { base, hub, http: reqwest::Client::new(), cursors }
}

impl Demo {
    fn request(&self, path: &str, param: &str, header: Place, query: Place) -> reqwest::RequestBuilder {
        let mut url = format!("{}{path}", self.base);
        for value in query.values(&self.cursors) {
            url.push_str(&format!("&{param}={}", String::from_utf8(value).unwrap().replace(' ', "%20")));
        }
        let mut request = self.http.get(url).timeout(Duration::from_secs(30));
        for value in header.values(&self.cursors) {
            request = request.header("last-event-id", reqwest::header::HeaderValue::from_bytes(&value).unwrap());
        }
        request
    }
}

/// What an SSE stream starts with: `Some(gap topics)` or `None` for `tidings.open`, then the
/// data of each event up to the marker `end`, published once the stream is open.
async fn sse_start(demo: &Demo, topic: &str, header: Place, query: Place) -> (Option<String>, Vec<String>) {
    let response = demo.request(&format!("/events?topic={topic}"), "lastEventId", header, query).send().await.unwrap();
    assert_eq!(response.status(), 200, "{header:?} {query:?}");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut frames: Vec<(Option<String>, String)> = Vec::new();
    let mut published = false;
    loop {
        while let Some(end) = text.find("\n\n") {
            let raw: String = text.drain(..end + 2).collect();
            let event = raw.lines().find_map(|l| l.strip_prefix("event: ")).map(str::to_owned);
            let data = raw.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default().to_owned();
            if raw.lines().any(|l| l.starts_with("id: ")) {
                frames.push((event, data));
            }
        }
        if !frames.is_empty() && !published {
            // The stream is open (its first frame came): anything published now is live.
            demo.hub.publish(NewEvent::new(Topic::new(topic), "end")).await.unwrap();
            published = true;
        }
        if frames.last().is_some_and(|(_, data)| data == "end") {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next()).await.expect("a frame");
        text.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
    }
    let (first, rest) = frames.split_first().unwrap();
    let gap = match first.0.as_deref() {
        Some("tidings.open") => None,
        Some("tidings.gap") => Some(first.1.clone()),
        other => panic!("{header:?} {query:?}: the stream starts with {other:?}"),
    };
    let data = rest.iter().map(|(_, d)| d.clone()).filter(|d| d != "end").collect();
    (gap, data)
}

fn what_follows(start: Start) -> (bool, Vec<String>) {
    let all = ["e1", "e2", "e3"].map(String::from);
    match start {
        Start::End => (false, vec![]),
        Start::After(k) => (false, all[k..].to_vec()),
        Start::Gap => (true, all.to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_chooses_the_cursor_by_the_one_rule_in_every_combination() {
    for (i, header) in HEADERS.into_iter().enumerate() {
        for (j, query) in QUERIES.into_iter().enumerate() {
            let topic = format!("t{i}-{j}");
            let demo = start(&topic).await;
            let (gap, data) = sse_start(&demo, &topic, header, query).await;
            let (want_gap, want_data) = what_follows(expected(header, query));
            assert_eq!(gap.is_some(), want_gap, "header {header:?}, query {query:?}: gap {gap:?}");
            if let Some(gap) = gap {
                assert_eq!(gap, format!("{{\"topics\":[\"{topic}\"]}}"));
            }
            assert_eq!(data, want_data, "header {header:?}, query {query:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_chooses_the_cursor_by_the_one_rule_in_every_combination() {
    for (i, header) in HEADERS.into_iter().enumerate() {
        for (j, query) in QUERIES.into_iter().enumerate() {
            let topic = format!("t{i}-{j}");
            let demo = start(&topic).await;
            let response =
                demo.request(&format!("/poll?topic={topic}&timeout=0"), "cursor", header, query).send().await.unwrap();
            assert_eq!(response.status(), 200, "{header:?} {query:?}");
            let batch: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            let data: Vec<String> =
                batch["events"].as_array().unwrap().iter().map(|e| e["data"].as_str().unwrap().to_owned()).collect();
            let (want_gap, want_data) = what_follows(expected(header, query));
            assert_eq!(!batch["gap"].is_null(), want_gap, "header {header:?}, query {query:?}: {batch}");
            assert_eq!(data, want_data, "header {header:?}, query {query:?}");
            if expected(header, query) == Start::End {
                // No cursor: the answer's cursor is the end of the log, so nothing after it is lost.
                let next = common::poll(&demo.http, &demo.base, &topic, Some(batch["cursor"].as_str().unwrap()), 0).await;
                assert!(next.data.is_empty() && next.gap.is_none());
                demo.hub.publish(NewEvent::new(Topic::new(&topic), "e4")).await.unwrap();
                let next = common::poll(&demo.http, &demo.base, &topic, Some(batch["cursor"].as_str().unwrap()), 0).await;
                assert_eq!(next.data, ["e4"]);
            }
        }
    }
}

/// The report itself: `lastEventId=C1` streams `e2`, `e3`; so does the same request with an
/// empty or blank `Last-Event-ID` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_last_event_id_keeps_the_query_cursor() {
    for header in [Place::Absent, Place::Empty, Place::Blank] {
        let demo = start("T").await;
        let (gap, data) = sse_start(&demo, "T", header, Place::Cursor(1)).await;
        assert_eq!((gap, data), (None, vec!["e2".to_owned(), "e3".to_owned()]), "{header:?}");
    }
}

/// Found by the fresh-user review: the other transport's parameter name, and a cursor
/// parameter that is not UTF-8. Neither may start the subscription at the end in silence, and
/// neither is an error: the first is understood, the second is a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_transports_parameter_and_unreadable_query_cursors() {
    let demo = start("T").await;
    let c1 = &demo.cursors[0];
    let url = format!("{}/poll?topic=T&lastEventId={c1}&timeout=0", demo.base);
    let json: serde_json::Value = serde_json::from_str(&demo.http.get(url).send().await.unwrap().text().await.unwrap()).unwrap();
    let data: Vec<&str> = json["events"].as_array().unwrap().iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["e2", "e3"], "long-polling reads SSE's lastEventId: {json}");
    for param in ["cursor", "lastEventId"] {
        let url = format!("{}/poll?topic=T&{param}=%FF%FE&timeout=0", demo.base);
        let response = demo.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{param}");
        let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(json["gap"]["topics"], serde_json::json!(["T"]), "{param}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reads_long_pollings_cursor_parameter_too() {
    let demo = start("T").await;
    let url = format!("{}/events?topic=T&cursor={}", demo.base, demo.cursors[0]);
    let mut body = demo.http.get(url).send().await.unwrap().bytes_stream();
    let mut text = String::new();
    demo.hub.publish(NewEvent::new(Topic::new("T"), "end")).await.unwrap();
    while !text.contains("data: end") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next()).await.expect("a frame");
        text.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
    }
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| !d.is_empty()).collect();
    assert_eq!(data, ["e2", "e3", "end"], "{text}");
    assert!(text.contains("event: tidings.open"), "{text}");
}
