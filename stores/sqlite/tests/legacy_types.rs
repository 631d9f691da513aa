//! A log written before tidings refused the event types `open` and `error` (EventSource's own,
//! issue 17): such events are still read back, in order, without their type, never lost and
//! never an error.

use tidings_core::{EventType, NewEvent, Retention, Store, Topic};
use tidings_sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_under_a_type_now_refused_are_read_back_untyped() {
    let dir = std::env::temp_dir().join(format!("tidings-sqlite-legacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("log.db");
    let store = SqliteStore::open(&file, Retention::default()).await.unwrap();
    let topic = Topic::new("a");
    for kind in ["note", "legacy", "note"] {
        store.append(NewEvent::new(topic.clone(), kind).with_type(EventType::new("note"))).await.unwrap();
    }
    // What an earlier version could store: the second event under "error".
    rusqlite::Connection::open(&file).unwrap().execute("UPDATE events SET type = 'error' WHERE seq = 2", []).unwrap();
    let page = store.read_after(&topic, 0, 10).await.unwrap();
    let read: Vec<(u64, Option<&str>, &str)> =
        page.events.iter().map(|e| (e.seq, e.event_type.as_ref().map(EventType::as_str), &*e.data)).collect();
    assert_eq!(read, [(1, Some("note"), "note"), (2, None, "legacy"), (3, Some("note"), "note")]);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
