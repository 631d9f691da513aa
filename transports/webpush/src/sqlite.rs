//! [`SqlitePushRegistry`]: push subscriptions and their cursors in a SQLite file.

use std::path::Path;
use std::sync::{Arc, Mutex};

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
        topics TEXT NOT NULL, recipient TEXT, cursor TEXT);
";

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
        );
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO push_subscriptions VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![row.0, row.1, row.2, row.3, row.4, row.5],
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
                .prepare("SELECT endpoint, p256dh, auth, topics, recipient, cursor FROM push_subscriptions")
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
                    ))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (endpoint, p256dh, auth, topics, recipient, cursor) = row.map_err(err)?;
                // A row that no longer validates (edited by hand) is skipped, not fatal.
                let Ok(subscription) = PushSubscription::new(&endpoint, &p256dh, &auth) else {
                    tracing::warn!("skipping an invalid push subscription row");
                    continue;
                };
                let names: Vec<String> = serde_json::from_str(&topics).unwrap_or_default();
                let topics: Vec<Topic> = names.iter().filter_map(|t| Topic::parse(t).ok()).collect();
                out.push(Registration { subscription, topics, recipient, cursor });
            }
            Ok(out)
        })
        .await
    }
}
