//! [`SqlitePushRegistry`]: push subscriptions and their cursors in a SQLite file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, params};
use tidings_core::Topic;

use crate::registry::{PushRegistry, Registration, RegistryError};
use crate::subscription::PushSubscription;

/// A durable registry in a SQLite file (WAL). Each call commits before it returns, so the
/// cursors survive `kill -9`: after a restart the dispatcher resumes every subscription from
/// the last cursor it saved. It may share a file with `tidings-sqlite`'s store (its own table).
#[derive(Debug, Clone)]
pub struct SqlitePushRegistry {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS push_subscriptions (
        endpoint TEXT PRIMARY KEY, p256dh TEXT NOT NULL, auth TEXT NOT NULL,
        topics TEXT NOT NULL, recipient TEXT, cursor TEXT, filter TEXT, expires INTEGER);
";

/// Columns added after the first release, with their types: a registry file written before
/// them gains them when it is opened (its rows read as `NULL`: no filter, no expiry).
const ADDED_COLUMNS: [(&str, &str); 2] = [("filter", "TEXT"), ("expires", "INTEGER")];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('push_subscriptions')")?;
    let present: Vec<String> = stmt.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
    for (column, kind) in ADDED_COLUMNS {
        if !present.iter().any(|p| p == column) {
            conn.execute_batch(&format!("ALTER TABLE push_subscriptions ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// `time` as milliseconds since the Unix epoch (negative before it), saturating.
fn to_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn from_millis(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

fn err(e: rusqlite::Error) -> RegistryError {
    RegistryError::with_source("sqlite push registry", e)
}

impl SqlitePushRegistry {
    /// Opens (creating if needed) the registry in the file at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqlitePushRegistry, RegistryError> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| RegistryError::with_source("cannot create directory", e))?;
            }
            let conn = Connection::open(&path).map_err(err)?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
            conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
            // NORMAL in WAL mode: a commit survives the process being killed.
            conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
            conn.execute_batch(SCHEMA).map_err(err)?;
            migrate(&conn).map_err(err)?;
            Ok(SqlitePushRegistry { conn: Arc::new(Mutex::new(conn)) })
        })
        .await
        .map_err(|e| RegistryError::with_source("registry task failed", e))?
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| RegistryError::with_source("registry task failed", e))?
    }
}

#[async_trait]
impl PushRegistry for SqlitePushRegistry {
    async fn put(&self, r: &Registration) -> Result<(), RegistryError> {
        let topics: Vec<&str> = r.topics.iter().map(Topic::as_str).collect();
        let row = (
            r.endpoint().to_owned(),
            r.subscription.p256dh_base64(),
            r.subscription.auth_base64(),
            serde_json::to_string(&topics).unwrap_or_default(),
            r.recipient.clone(),
            r.cursor.clone(),
            r.filter.clone(),
            r.expires.map(to_millis),
        );
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO push_subscriptions (endpoint, p256dh, auth, topics, recipient, cursor, filter, expires) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7],
            )
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn save_cursor(&self, endpoint: &str, cursor: &str) -> Result<(), RegistryError> {
        let (endpoint, cursor) = (endpoint.to_owned(), cursor.to_owned());
        self.with(move |c| {
            c.execute("UPDATE push_subscriptions SET cursor = ?2 WHERE endpoint = ?1", params![endpoint, cursor])
                .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn remove(&self, endpoint: &str) -> Result<bool, RegistryError> {
        let endpoint = endpoint.to_owned();
        self.with(move |c| {
            let n = c.execute("DELETE FROM push_subscriptions WHERE endpoint = ?1", params![endpoint]).map_err(err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn all(&self) -> Result<Vec<Registration>, RegistryError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT endpoint, p256dh, auth, topics, recipient, cursor, filter, expires FROM push_subscriptions")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Option<String>>(5)?,
                        row.get::<_, Option<String>>(6)?,
                        row.get::<_, Option<i64>>(7)?,
                    ))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            let mut respelled = Vec::new();
            for row in rows {
                let (endpoint, p256dh, auth, topics, recipient, cursor, filter, expires) = row.map_err(err)?;
                // A row that no longer validates (edited by hand) is skipped, not fatal.
                let Ok(subscription) = PushSubscription::new(&endpoint, &p256dh, &auth) else {
                    tracing::warn!("skipping an invalid push subscription row");
                    continue;
                };
                if subscription.endpoint().as_str() != endpoint {
                    // Stored under an older spelling (an empty query): keyed as it is read now,
                    // so that saving and deleting find it.
                    respelled.push((endpoint, subscription.endpoint().as_str().to_owned()));
                }
                let names: Vec<String> = serde_json::from_str(&topics).unwrap_or_default();
                let topics: Vec<Topic> = names.iter().filter_map(|t| Topic::parse(t).ok()).collect();
                out.push(Registration { subscription, topics, recipient, cursor, filter, expires: expires.map(from_millis) });
            }
            drop(stmt);
            for (old, new) in respelled {
                // Two spellings of one endpoint: the newer spelling's row stays.
                c.execute("UPDATE OR IGNORE push_subscriptions SET endpoint = ?2 WHERE endpoint = ?1", params![old, new])
                    .map_err(err)?;
                c.execute("DELETE FROM push_subscriptions WHERE endpoint = ?1", params![old]).map_err(err)?;
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str = "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY";
    const AUTH: &str = "_ordMnz7uTCmrpBTeUV4Bw";

    fn path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tidings-push-registry-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("push.db")
    }

    #[tokio::test]
    async fn filter_and_expiry_survive_a_reopen() {
        let path = path("roundtrip");
        let expires = UNIX_EPOCH + Duration::from_millis(1_900_000_000_123);
        let subscription = PushSubscription::new("https://push.example.net/a", P256DH, AUTH).unwrap();
        let registration = Registration::new(subscription, vec![Topic::new("mercure")])
            .cursor(Some("C".into()))
            .filter(Some(r#"{"topics":["/books/{id}"]}"#.into()))
            .expires(Some(expires));
        SqlitePushRegistry::open(&path).await.unwrap().put(&registration).await.unwrap();
        let all = SqlitePushRegistry::open(&path).await.unwrap().all().await.unwrap();
        assert_eq!(all, vec![registration]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_registry_written_before_filters_gains_the_columns_and_keeps_its_rows() {
        let path = path("migrate");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE push_subscriptions (endpoint TEXT PRIMARY KEY, p256dh TEXT NOT NULL, auth TEXT NOT NULL,
                    topics TEXT NOT NULL, recipient TEXT, cursor TEXT);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO push_subscriptions VALUES ('https://push.example.net/old', ?1, ?2, '[\"news\"]', 'ann', 'K')",
                params![P256DH, AUTH],
            )
            .unwrap();
        }
        let registry = SqlitePushRegistry::open(&path).await.unwrap();
        let all = registry.all().await.unwrap();
        assert_eq!(all.len(), 1);
        let old = &all[0];
        assert_eq!((old.endpoint(), old.recipient.as_deref(), old.cursor.as_deref()), ("https://push.example.net/old", Some("ann"), Some("K")));
        assert_eq!((old.filter.as_deref(), old.expires), (None, None));
        // And it takes new rows with both.
        let subscription = PushSubscription::new("https://push.example.net/new", P256DH, AUTH).unwrap();
        let new = Registration::new(subscription, vec![Topic::new("news")]).filter(Some("f".into())).expires(Some(UNIX_EPOCH));
        registry.put(&new).await.unwrap();
        let again = SqlitePushRegistry::open(&path).await.unwrap().all().await.unwrap();
        assert!(again.contains(&new), "{again:?}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A row stored under an older spelling of its endpoint (an empty query) is keyed as it is
    /// read now, so that its cursor saves and its deletion find it.
    #[tokio::test]
    async fn a_row_under_an_older_spelling_is_rekeyed() {
        let path = path("respell");
        let registry = SqlitePushRegistry::open(&path).await.unwrap();
        registry
            .with(|c| {
                c.execute(
                    "INSERT INTO push_subscriptions (endpoint, p256dh, auth, topics, cursor) VALUES ('https://push.example.net/x?', ?1, ?2, '[\"t\"]', 'K')",
                    params![P256DH, AUTH],
                )
                .map_err(err)?;
                Ok(())
            })
            .await
            .unwrap();
        let all = registry.all().await.unwrap();
        assert_eq!(all[0].endpoint(), "https://push.example.net/x");
        registry.save_cursor("https://push.example.net/x", "L").await.unwrap();
        assert_eq!(registry.all().await.unwrap()[0].cursor.as_deref(), Some("L"));
        assert!(registry.remove("https://push.example.net/x").await.unwrap());
        assert!(registry.all().await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
