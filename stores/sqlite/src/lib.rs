//! [`SqliteStore`]: a durable tidings log in one SQLite file (WAL mode, bundled SQLite).
//!
//! - A publish returns only after its transaction is committed; with the default
//!   [`Durability::Full`] that includes an fsync, so answered publishes survive `kill -9` and
//!   power loss; [`Durability::Process`] survives a crashed process but not a crashed machine.
//! - Nothing half-written is ever delivered: an event reaches the live tail only after its
//!   commit, and readers only see committed rows.
//! - One process writes the file, through one `SqliteStore`: its hubs learn of each append
//!   directly ([`Store::attach_local_tail`]). Appends by another process would reach this
//!   one's subscribers only when they next read the file (after a reconnect), not live.
//! - The epoch is stored in the file: a restarted server keeps it, so clients resume exactly.
//!   A new file (or a deleted one) is a new epoch: clients get a gap.
//! - Replay after a cursor is a range read on the primary key `(topic, seq)`.
//! - Retention by count trims a key range in the same transaction as the append; retention by
//!   age is read through an index on `(topic, at)` and trimmed by appends in bounded batches.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use tidings_core::{Hub, Retention};
//! use tidings_sqlite::SqliteStore;
//! let store = SqliteStore::open("./tidings-data/events.db", Retention::default()).await.unwrap();
//! let hub = Hub::new(store);
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tidings_core::{
    Bounds, Epoch, Event, EventType, LiveTail, LocalTail, LocalTails, NewEvent, Page, Retention, Store,
    StoreError, TailItem, Topic,
};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

/// How far a committed publish is guaranteed to survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Survives a crash of the process and of the machine (`synchronous=FULL`: fsync per
    /// commit). The default.
    #[default]
    Full,
    /// Survives a crash of the process, not of the machine (`synchronous=NORMAL` in WAL mode:
    /// no fsync per commit, several times faster).
    Process,
}

/// A durable log in a SQLite file. See the [crate documentation](crate).
#[derive(Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    epoch: Epoch,
    retention: Retention,
    /// The writer; appends are serialised here.
    writer: Mutex<Connection>,
    /// A second connection for reads, so that replays do not wait for appends (WAL).
    reader: Mutex<Connection>,
    tail: broadcast::Sender<Event>,
    /// The hubs over this store.
    hubs: LocalTails,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS topics (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_seq INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS events (
        topic_id INTEGER NOT NULL, seq INTEGER NOT NULL, at INTEGER NOT NULL,
        type TEXT, data TEXT NOT NULL, PRIMARY KEY (topic_id, seq)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS events_age ON events (topic_id, at);
";

/// Rows deleted per append when trimming by age, so that no append waits long.
const AGE_TRIM_BATCH: i64 = 512;

fn err(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::with_source(context, e)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic inside a transaction rolls it back when the transaction is dropped, so a
    // poisoned connection is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SqliteStore {
    /// Opens (or creates) the log at `path` with full durability. Creates missing parent
    /// directories.
    pub async fn open(path: impl AsRef<Path>, retention: Retention) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, retention, Durability::Full).await
    }

    /// Opens (or creates) the log at `path` with the given durability.
    pub async fn open_with(
        path: impl AsRef<Path>,
        retention: Retention,
        durability: Durability,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || SqliteStore::open_blocking(path, retention, durability))
            .await
            .map_err(|e| StoreError::with_source("sqlite open task failed", e))?
    }

    fn open_blocking(
        path: PathBuf,
        retention: Retention,
        durability: Durability,
    ) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::with_source("cannot create the data directory", e))?;
        }
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Process => "NORMAL",
        };
        let configure = |c: &Connection| -> Result<(), StoreError> {
            c.busy_timeout(std::time::Duration::from_secs(10)).map_err(err("sqlite busy_timeout"))?;
            c.execute_batch(&format!("PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};"))
                .map_err(err("sqlite pragma"))
        };
        let writer = Connection::open(&path).map_err(err("cannot open the sqlite file"))?;
        configure(&writer)?;
        writer.execute_batch(SCHEMA).map_err(err("cannot create the sqlite schema"))?;
        let candidate = Epoch::random().raw() as i64;
        writer
            .execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)", [candidate])
            .map_err(err("cannot store the epoch"))?;
        let epoch: i64 = writer
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| r.get(0))
            .map_err(err("cannot read the epoch"))?;
        let reader = Connection::open(&path).map_err(err("cannot open the sqlite file"))?;
        configure(&reader)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                epoch: Epoch::from_raw(epoch as u64),
                retention,
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                tail: broadcast::channel(4096).0,
                hubs: LocalTails::new(),
            }),
        })
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The epoch stored in the file.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::with_source("sqlite task failed", e))?
    }
}

impl Inner {
    fn cutoff(&self) -> Option<i64> {
        self.retention.max_age_per_topic().map(|age| now_ms() - age.as_millis() as i64)
    }

    fn bounds(&self, conn: &Connection, topic: &Topic) -> Result<(Option<i64>, Bounds), StoreError> {
        let row: Option<(i64, i64)> = conn
            .query_row("SELECT id, last_seq FROM topics WHERE name = ?1", [topic.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(err("sqlite read failed"))?;
        let Some((id, last)) = row else {
            return Ok((None, Bounds { epoch: self.epoch, first: 1, last: 0 }));
        };
        // The oldest event within the age limit: the first one in key order that is not too
        // old. `+at` keeps the planner from reading the age index for that term (which made
        // this a scan of the whole topic for `MIN(seq)`, on every page of a replay); rows
        // past the age limit are trimmed by appends, so few are stepped over.
        let first: Option<i64> = conn
            .prepare_cached("SELECT seq FROM events WHERE topic_id = ?1 AND +at >= ?2 ORDER BY seq LIMIT 1")
            .and_then(|mut stmt| {
                stmt.query_row(params![id, self.cutoff().unwrap_or(i64::MIN)], |r| r.get(0)).optional()
            })
            .map_err(err("sqlite read failed"))?;
        let keep = self.retention.max_events_per_topic() as i64;
        let first = first.unwrap_or(last + 1).max(last - keep + 1).max(1);
        Ok((Some(id), Bounds { epoch: self.epoch, first: first as u64, last: last as u64 }))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, new: NewEvent) -> Result<Event, StoreError> {
        self.blocking(move |inner| {
            let mut conn = lock(&inner.writer);
            let tx = conn.transaction().map_err(err("sqlite begin failed"))?;
            tx.execute(
                "INSERT INTO topics (name, last_seq) VALUES (?1, 0) ON CONFLICT(name) DO NOTHING",
                [new.topic.as_str()],
            )
            .map_err(err("sqlite write failed"))?;
            let (id, last): (i64, i64) = tx
                .query_row("SELECT id, last_seq FROM topics WHERE name = ?1", [new.topic.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(err("sqlite read failed"))?;
            let seq = last + 1;
            let at = now_ms();
            tx.execute(
                "INSERT INTO events (topic_id, seq, at, type, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, seq, at, new.event_type.as_ref().map(EventType::as_str), &*new.data],
            )
            .map_err(err("sqlite write failed"))?;
            tx.execute("UPDATE topics SET last_seq = ?1 WHERE id = ?2", params![seq, id])
                .map_err(err("sqlite write failed"))?;
            let keep = inner.retention.max_events_per_topic() as i64;
            tx.execute("DELETE FROM events WHERE topic_id = ?1 AND seq <= ?2", params![id, seq - keep])
                .map_err(err("sqlite trim failed"))?;
            if let Some(cutoff) = inner.cutoff() {
                tx.execute(
                    "DELETE FROM events WHERE topic_id = ?1 AND seq IN (
                         SELECT seq FROM events WHERE topic_id = ?1 AND at < ?2 LIMIT ?3)",
                    params![id, cutoff, AGE_TRIM_BATCH],
                )
                .map_err(err("sqlite trim failed"))?;
            }
            tx.commit().map_err(err("sqlite commit failed"))?;
            let event = Event {
                epoch: inner.epoch,
                topic: new.topic,
                seq: seq as u64,
                event_type: new.event_type,
                data: new.data,
            };
            // Still under the writer lock: hubs and tails see each topic in commit order.
            inner.hubs.queue(event.clone());
            if inner.tail.receiver_count() > 0 {
                let _ = inner.tail.send(event.clone());
            }
            drop(conn);
            inner.hubs.flush();
            Ok(event)
        })
        .await
    }

    async fn bounds(&self, topic: &Topic) -> Result<Bounds, StoreError> {
        let topic = topic.clone();
        self.blocking(move |inner| Ok(inner.bounds(&lock(&inner.reader), &topic)?.1)).await
    }

    async fn read_after(&self, topic: &Topic, after: u64, limit: usize) -> Result<Page, StoreError> {
        let topic = topic.clone();
        self.blocking(move |inner| {
            let conn = lock(&inner.reader);
            // One read transaction: the bounds and the events are from the same snapshot.
            conn.execute_batch("BEGIN").map_err(err("sqlite begin failed"))?;
            let result = (|| {
                let (id, bounds) = inner.bounds(&conn, &topic)?;
                let Some(id) = id else { return Ok(Page { bounds, events: Vec::new() }) };
                let from = (after.min(i64::MAX as u64) as i64).max(bounds.first as i64 - 1);
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT seq, type, data FROM events WHERE topic_id = ?1 AND seq > ?2
                         ORDER BY seq LIMIT ?3",
                    )
                    .map_err(err("sqlite read failed"))?;
                let rows = stmt
                    .query_map(params![id, from, limit.min(i64::MAX as usize) as i64], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, String>(2)?))
                    })
                    .map_err(err("sqlite read failed"))?;
                let mut events = Vec::new();
                for row in rows {
                    let (seq, kind, data) = row.map_err(err("sqlite read failed"))?;
                    events.push(Event {
                        epoch: inner.epoch,
                        topic: topic.clone(),
                        seq: seq as u64,
                        // Written through EventType::parse, so valid; a hand-edited row that is
                        // not is delivered without a type rather than failing the replay.
                        // A type an earlier version stored and that is refused now (`open`,
                        // `error`: EventSource's own) is read back without one.
                        event_type: kind.and_then(|k| EventType::parse(&k).ok()),
                        data: data.into(),
                    });
                }
                Ok(Page { bounds, events })
            })();
            conn.execute_batch("COMMIT").map_err(err("sqlite commit failed"))?;
            result
        })
        .await
    }

    async fn live_tail(&self) -> Result<LiveTail, StoreError> {
        let stream = BroadcastStream::new(self.inner.tail.subscribe()).map(|item| match item {
            Ok(event) => TailItem::Event(event),
            Err(_lagged) => TailItem::Resync,
        });
        Ok(Box::pin(stream))
    }

    /// Taken: this store's writer is the only way into its file (see the type's documentation).
    fn attach_local_tail(&self, tail: LocalTail) -> bool {
        self.inner.hubs.attach(tail);
        true
    }
}
