//! Presence-aware Web Push sees WebSocket clients: a socket identified as a recipient makes it
//! online, keeps it online through every change of topics (one connection for the lifecycle:
//! `on_change`, never a disconnect), and makes it offline when it closes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tidings::webpush::Presence;
use tidings::websocket::WebSocket;
use tidings::{Connection, Disconnect, Hub, Lifecycle, MemoryStore, authorize_fn};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// Records the lifecycle calls after the presence's: each end (and whether alice is still
/// online then), each change (and the connection id it keeps).
struct AfterEachEnd {
    presence: Presence,
    seen: Arc<Mutex<Vec<bool>>>,
    changes: Arc<Mutex<Vec<(u64, u64, usize)>>>,
}

impl Lifecycle for AfterEachEnd {
    fn on_disconnect(&self, _: &Connection, _: &Disconnect) {
        self.seen.lock().unwrap().push(self.presence.is_online("alice"));
    }

    fn on_change(&self, before: &Connection, after: &Connection) {
        self.changes.lock().unwrap().push((before.id, after.id, after.topics.len()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_is_online_through_its_topic_changes() {
    let presence = Presence::with_grace(Duration::ZERO);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let changes = Arc::new(Mutex::new(Vec::new()));
    let hub = Hub::builder(MemoryStore::new())
        .authorize(authorize_fn(|_| Ok(())).identify_with(|r| r.credentials.query("user").map(str::to_owned)))
        .lifecycle((presence.clone(), AfterEachEnd { presence: presence.clone(), seen: seen.clone(), changes: changes.clone() }))
        .build();
    let app = axum::Router::new().route("/ws", WebSocket::new(hub.clone()).method_router());
    let (addr, _server) = tidings_test_support::serve(app).await;

    let mut request = format!("ws://{addr}/ws?topic=dm&user=alice").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "tidings.v1".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut answers = 0;
    let mut read_answer = async |socket: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["type"], "subscribed", "{v}");
                answers += 1;
                return;
            }
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("{other:?}"),
        }
    };
    read_answer(&mut socket).await;
    assert!(presence.is_online("alice"), "a socket identified as alice makes her online");
    for message in [
        r#"{"type":"subscribe","topics":["news"]}"#,
        r#"{"type":"subscribe","topics":["sports"]}"#,
        r#"{"type":"unsubscribe","topics":["dm","news"]}"#,
    ] {
        socket.send(Message::text(message)).await.unwrap();
        read_answer(&mut socket).await;
    }
    assert_eq!(answers, 4);
    assert!(seen.lock().unwrap().is_empty(), "no disconnect while the socket changes topics");
    let changes = changes.lock().unwrap().clone();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(changes.iter().all(|&(before, after, _)| before == after && before == changes[0].0), "one connection: {changes:?}");
    assert_eq!(changes.iter().map(|c| c.2).collect::<Vec<_>>(), [2, 3, 1], "the topics after each change");
    assert!(presence.is_online("alice"));
    socket.close(None).await.unwrap();
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while presence.is_online("alice") {
        assert!(std::time::Instant::now() < deadline, "alice goes offline when her socket closes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*seen.lock().unwrap(), [false], "one disconnect, at the end");
}
