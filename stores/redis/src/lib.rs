//! [`RedisStore`]: a tidings log in Redis Streams, shared by several app nodes.
//!
//! Several nodes behind a load balancer connect to one Redis; each event is published once,
//! every node's subscribers receive it, and a client may reconnect to any node and replay
//! exactly (cursors are the same on every node). No sticky sessions.
//!
//! # Layout
//!
//! All keys share the hash tag `{prefix}` (so a Redis Cluster keeps them in one slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:epoch` | string | the log's epoch; a flushed or replaced Redis has none, so a new one is drawn and clients get a gap |
//! | `{p}:last` | hash | topic → last sequence number |
//! | `{p}:s:<topic>` | stream | the topic's events, ids `0-<seq>`, fields `d` (data), `a` (ms), `t` (type, if any) |
//! | `{p}:all` | stream | every event of every topic, ids `0-<n>`, for the live tail |
//! | `{p}:n` | string | the counter behind `{p}:all` ids |
//!
//! Appends and reads are Lua scripts, so each is atomic: an append assigns the next position,
//! writes the topic stream (`XADD … MAXLEN ~ n`) and the shared tail stream in one step; a read
//! returns the bounds and an exclusive `XRANGE` from the same instant.
//!
//! # Live tail
//!
//! One task per store (per node) reads `{p}:all` with `XREAD BLOCK` on its own connection and
//! feeds the hub's ring: one blocking reader per node, whatever the number of subscribers. A
//! hole in the `{p}:all` numbering (the node fell behind its trimming, or the connection was cut
//! and restored), or a change of epoch, makes it signal a resync, and subscribers re-read the
//! topic streams from their own positions: nothing is lost.
//!
//! # Retention
//!
//! `MAXLEN ~ max_events` trims streams approximately (cheaply); reads never return more than
//! `max_events` per topic all the same (`first` is at least `last - max_events + 1`). An age
//! limit is applied by appends and reads of the topic.
//!
//! # Failure
//!
//! While Redis is unreachable, publishes fail with a [`StoreError`] (a 503 for HTTP
//! publishers) after the response timeout (default 2 s); subscribers wait and resume exactly
//! when it is back.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script, Value};
use tidings_core::{
    Bounds, Epoch, Event, EventType, LiveTail, NewEvent, Page, Retention, Store, StoreError,
    TailItem, Topic,
};
use tokio::sync::{broadcast, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

/// Settings of a [`RedisStore`]. Every setter states its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisOptions {
    prefix: String,
    retention: Retention,
    tail_len: usize,
    response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "tidings".to_owned(),
            retention: Retention::default(),
            tail_len: 10_000,
            response_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisOptions {
    /// The key prefix (default `tidings`): stores with different prefixes are separate logs.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Retention per topic (default [`Retention::default`]).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Approximate length of the shared tail stream `{p}:all` (default 10 000). A node whose
    /// tail falls further behind resyncs from the topic streams.
    pub fn tail_len(mut self, len: usize) -> Self {
        self.tail_len = len.max(1);
        self
    }

    /// How long a command may take before it fails (default 2 s): how fast a publish reports
    /// that Redis is gone.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }
}

/// A log in Redis Streams. See the [crate documentation](crate).
#[derive(Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
    tail: broadcast::Sender<TailItem>,
    _stop_tail: oneshot::Sender<()>,
}

struct Inner {
    conn: ConnectionManager,
    keys: Keys,
    options: RedisOptions,
    append: Script,
    read: Script,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("prefix", &self.options.prefix).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Keys {
    epoch: String,
    last: String,
    all: String,
    counter: String,
    stream_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let tag = format!("{{{prefix}}}");
        Keys {
            epoch: format!("{tag}:epoch"),
            last: format!("{tag}:last"),
            all: format!("{tag}:all"),
            counter: format!("{tag}:n"),
            stream_prefix: format!("{tag}:s:"),
        }
    }

    fn stream(&self, topic: &Topic) -> String {
        format!("{}{}", self.stream_prefix, topic.as_str())
    }
}

/// Sets the epoch if missing; trims a topic stream by age (ARGV[3] = cutoff ms, or "").
const PRELUDE: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
if ARGV[3] ~= '' then
  local cutoff = tonumber(ARGV[3])
  local old = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 128)
  local cut = nil
  for _, entry in ipairs(old) do
    local fields, at = entry[2], nil
    for i = 1, #fields, 2 do if fields[i] == 'a' then at = tonumber(fields[i + 1]) end end
    if at and at < cutoff then cut = entry[1] else break end
  end
  if cut then
    local seq = tonumber(string.sub(cut, 3))
    redis.call('XTRIM', KEYS[3], 'MINID', '0-' .. (seq + 1))
  end
end
"#;

/// KEYS: epoch, last, stream, all, counter. ARGV: candidate epoch, topic, cutoff, type, data,
/// now, maxlen, tail maxlen. Returns {epoch, seq}.
const APPEND: &str = r#"
local seq = redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
local fields = {'d', ARGV[5], 'a', ARGV[6]}
if ARGV[4] ~= '' then fields[5] = 't'; fields[6] = ARGV[4] end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '0-' .. seq, unpack(fields))
local n = redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '0-' .. n,
  'topic', ARGV[2], 'seq', seq, 'e', epoch, unpack(fields))
return {epoch, seq}
"#;

/// KEYS: epoch, last, stream. ARGV: candidate epoch, topic, cutoff, after, limit.
/// Returns {epoch, last, first id or '', entries}.
const READ: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local head = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
local first = ''
if head[1] then first = head[1][1] end
local entries = {}
if tonumber(ARGV[5]) > 0 then
  entries = redis.call('XRANGE', KEYS[3], '(0-' .. ARGV[4], '+', 'COUNT', ARGV[5])
end
return {epoch, last, first, entries}
"#;

fn store_err(context: &'static str) -> impl Fn(redis::RedisError) -> StoreError {
    move |e| StoreError::with_source(context, e)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn bad(what: &str) -> StoreError {
    StoreError::new(format!("unexpected reply from redis: {what}"))
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(bytes(other)?).ok()?.parse().ok(),
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// The sequence number of an id `0-<seq>`.
fn id_seq(v: &Value) -> Option<u64> {
    std::str::from_utf8(bytes(v)?).ok()?.strip_prefix("0-")?.parse().ok()
}

struct Entry<'a> {
    seq: u64,
    fields: &'a [Value],
}

impl Entry<'_> {
    fn parse(v: &Value) -> Option<Entry<'_>> {
        let parts = array(v)?;
        Some(Entry { seq: id_seq(parts.first()?)?, fields: array(parts.get(1)?)? })
    }

    fn field(&self, name: &str) -> Option<&Value> {
        self.fields.chunks(2).find(|kv| bytes(&kv[0]) == Some(name.as_bytes())).and_then(|kv| kv.get(1))
    }

    fn event(&self, epoch: Epoch, topic: Topic, seq: u64) -> Result<Event, StoreError> {
        let data = self.field("d").and_then(bytes).ok_or_else(|| bad("event without data"))?;
        let data = std::str::from_utf8(data).map_err(|_| bad("event data is not UTF-8"))?;
        let event_type = self
            .field("t")
            .and_then(bytes)
            .and_then(|t| std::str::from_utf8(t).ok())
            // None for "" (no type); a type an earlier version stored and that is refused now
            // (`open`, `error`: EventSource's own) is read back without one too.
            .and_then(|t| EventType::parse(t).ok());
        Ok(Event { epoch, topic, seq, event_type, data: data.into() })
    }

    fn at(&self) -> Option<u64> {
        self.field("a").and_then(int)
    }
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://HOST:PORT/DB`, `redis+unix:///path`), and starts
    /// the live tail.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<RedisStore, StoreError> {
        let client = Client::open(url).map_err(store_err("invalid redis url"))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.response_timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(store_err("cannot connect to redis"))?;
        let keys = Keys::new(&options.prefix);
        let inner = Arc::new(Inner {
            conn,
            keys,
            append: Script::new(&format!("{PRELUDE}{APPEND}")),
            read: Script::new(&format!("{PRELUDE}{READ}")),
            options,
        });
        // Where the tail starts: the current end of the shared stream.
        let start: Option<u64> = redis::cmd("GET")
            .arg(&inner.keys.counter)
            .query_async(&mut inner.conn.clone())
            .await
            .map_err(store_err("cannot read the tail position"))?;
        let (tail, _) = broadcast::channel(4096);
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(run_tail(client, inner.clone(), tail.clone(), start.unwrap_or(0), stopped));
        Ok(RedisStore { inner, tail, _stop_tail: stop })
    }

    /// The oldest `at` (ms) an age limit keeps, if there is one.
    fn cutoff(&self) -> Option<u64> {
        let age = self.inner.options.retention.max_age_per_topic()?;
        Some(now_ms().saturating_sub(age.as_millis() as u64))
    }

    /// The cutoff as a script argument ("" for none).
    fn cutoff_arg(&self) -> String {
        self.cutoff().map_or(String::new(), |c| c.to_string())
    }

    async fn read(&self, topic: &Topic, after: u64, limit: usize) -> Result<Page, StoreError> {
        let keys = &self.inner.keys;
        let reply: Value = self
            .inner
            .read
            .key(&keys.epoch)
            .key(&keys.last)
            .key(keys.stream(topic))
            .arg(Epoch::random().raw())
            .arg(topic.as_str())
            .arg(self.cutoff_arg())
            .arg(after)
            .arg(limit)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(store_err("redis read failed"))?;
        let parts = array(&reply).filter(|p| p.len() == 4).ok_or_else(|| bad("read"))?;
        let epoch = Epoch::from_raw(int(&parts[0]).ok_or_else(|| bad("epoch"))?);
        let last = int(&parts[1]).ok_or_else(|| bad("last"))?;
        let stored_first = id_seq(&parts[2]).unwrap_or(last + 1);
        let keep = self.inner.options.retention.max_events_per_topic() as u64;
        let mut first = stored_first.max((last + 1).saturating_sub(keep)).max(1);
        let cutoff = self.cutoff();
        let mut events = Vec::new();
        for raw in array(&parts[3]).ok_or_else(|| bad("entries"))? {
            let entry = Entry::parse(raw).ok_or_else(|| bad("entry"))?;
            if entry.seq < first {
                continue;
            }
            if let (Some(cutoff), Some(at)) = (cutoff, entry.at()) {
                if at < cutoff && events.is_empty() {
                    first = entry.seq + 1;
                    continue;
                }
            }
            events.push(entry.event(epoch, topic.clone(), entry.seq)?);
        }
        Ok(Page { bounds: Bounds { epoch, first, last }, events })
    }
}

/// Reads the shared tail stream and feeds the broadcast channel, until the store is dropped.
async fn run_tail(
    client: Client,
    inner: Arc<Inner>,
    tail: broadcast::Sender<TailItem>,
    mut position: u64,
    mut stopped: oneshot::Receiver<()>,
) {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(15)));
    let mut conn: Option<MultiplexedConnection> = None;
    let mut epoch: Option<Vec<u8>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut reconnecting = false;
    loop {
        let connection = match &mut conn {
            Some(c) => c,
            None => {
                let opened = tokio::select! {
                    c = client.get_multiplexed_async_connection_with_config(&config) => c,
                    _ = &mut stopped => return,
                };
                match opened {
                    Ok(c) => {
                        backoff = Duration::from_millis(100);
                        if reconnecting {
                            // Anything may have happened while we were away.
                            let _ = tail.send(TailItem::Resync);
                        }
                        reconnecting = true;
                        conn.insert(c)
                    }
                    Err(e) => {
                        tracing::warn!(%e, "redis tail cannot connect; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = &mut stopped => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(512)
            .arg("BLOCK")
            .arg(2000)
            .arg("STREAMS")
            .arg(&inner.keys.all)
            .arg(format!("0-{position}"));
        let read = xread.query_async::<Value>(connection);
        let reply = tokio::select! {
            r = read => r,
            _ = &mut stopped => return,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%e, "redis tail read failed; reconnecting");
                conn = None;
                continue;
            }
        };
        // A flushed or replaced Redis starts counting again: notice it by its epoch.
        let current: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&inner.keys.epoch)
            .query_async(connection)
            .await
            .unwrap_or(None);
        if current.is_some() && epoch.is_some() && current != epoch {
            let restart: Option<u64> =
                redis::cmd("GET").arg(&inner.keys.counter).query_async(connection).await.unwrap_or(None);
            position = restart.unwrap_or(0);
            epoch = current;
            let _ = tail.send(TailItem::Resync);
            continue;
        }
        if current.is_some() {
            epoch = current;
        }
        let entries = array(&reply)
            .and_then(|streams| streams.first())
            .and_then(array)
            .and_then(|stream| stream.get(1))
            .and_then(array)
            .unwrap_or(&[]);
        for raw in entries {
            let Some(entry) = Entry::parse(raw) else { continue };
            if entry.seq != position + 1 {
                let _ = tail.send(TailItem::Resync);
            }
            position = entry.seq;
            let topic = entry
                .field("topic")
                .and_then(bytes)
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| Topic::parse(t).ok());
            let (Some(topic), Some(seq), Some(ep)) =
                (topic, entry.field("seq").and_then(int), entry.field("e").and_then(int))
            else {
                continue;
            };
            match entry.event(Epoch::from_raw(ep), topic, seq) {
                Ok(event) => {
                    let _ = tail.send(TailItem::Event(event));
                }
                Err(e) => tracing::warn!(%e, "skipping a malformed tail entry"),
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn append(&self, new: NewEvent) -> Result<Event, StoreError> {
        let keys = &self.inner.keys;
        let options = &self.inner.options;
        let reply: Value = self
            .inner
            .append
            .key(&keys.epoch)
            .key(&keys.last)
            .key(keys.stream(&new.topic))
            .key(&keys.all)
            .key(&keys.counter)
            .arg(Epoch::random().raw())
            .arg(new.topic.as_str())
            .arg(self.cutoff_arg())
            .arg(new.event_type.as_ref().map_or("", EventType::as_str))
            .arg(&*new.data)
            .arg(now_ms())
            .arg(options.retention.max_events_per_topic())
            .arg(options.tail_len)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(store_err("redis append failed"))?;
        let parts = array(&reply).filter(|p| p.len() == 2).ok_or_else(|| bad("append"))?;
        let epoch = int(&parts[0]).ok_or_else(|| bad("epoch"))?;
        let seq = int(&parts[1]).ok_or_else(|| bad("seq"))?;
        Ok(Event {
            epoch: Epoch::from_raw(epoch),
            topic: new.topic,
            seq,
            event_type: new.event_type,
            data: new.data,
        })
    }

    async fn bounds(&self, topic: &Topic) -> Result<Bounds, StoreError> {
        Ok(self.read(topic, 0, 0).await?.bounds)
    }

    async fn read_after(&self, topic: &Topic, after: u64, limit: usize) -> Result<Page, StoreError> {
        self.read(topic, after, limit).await
    }

    async fn live_tail(&self) -> Result<LiveTail, StoreError> {
        let stream = BroadcastStream::new(self.tail.subscribe()).map(|item| match item {
            Ok(item) => item,
            Err(_lagged) => TailItem::Resync,
        });
        Ok(Box::pin(stream))
    }
}
