//! Retention by age on a real file: more expired events than one append trims in a batch are
//! left in the file for a while; reads must not return them, nor count them in the bounds.

use std::time::{Duration, Instant};

use tidings_core::{NewEvent, Retention, Store, Topic};
use tidings_sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_events_not_yet_trimmed_are_neither_read_nor_counted() {
    let dir = std::env::temp_dir().join(format!("tidings-sqlite-age-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("log.db");
    let age = Duration::from_secs(2);
    let store = SqliteStore::open(&file, Retention::default().max_age(age)).await.unwrap();
    let topic = Topic::new("a");
    let started = Instant::now();
    for i in 0..600 {
        store.append(NewEvent::new(topic.clone(), format!("old {i}"))).await.unwrap();
    }
    assert!(started.elapsed() < age, "600 appends took {:?}: none may expire meanwhile", started.elapsed());
    // Waits for real time to pass: the property under test is expiry by wall-clock age.
    tokio::time::sleep(age + Duration::from_millis(200)).await;
    // This append trims one batch (512) of the 600 expired events; 88 stay in the file.
    let fresh = store.append(NewEvent::new(topic.clone(), "new")).await.unwrap();
    assert_eq!(fresh.seq, 601);
    let left: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 89, "88 expired events and the new one are in the file");
    let bounds = store.bounds(&topic).await.unwrap();
    assert_eq!((bounds.first, bounds.last), (601, 601));
    let page = store.read_after(&topic, 0, 1000).await.unwrap();
    assert_eq!((page.bounds.first, page.bounds.last), (601, 601));
    assert_eq!(page.events.iter().map(|e| &*e.data).collect::<Vec<_>>(), ["new"]);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
