//! The SQLite store passes the store suite, and the SSE-free reference transport passes the
//! transport suite over it; each log is a real file in a fresh temporary directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tidings_conformance::StoreFactory;
use tidings_core::{Retention, Store};
use tidings_sqlite::SqliteStore;

#[derive(Debug, Default)]
struct SqliteStores;

static N: AtomicU64 = AtomicU64::new(0);

#[async_trait]
impl StoreFactory for SqliteStores {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn open(&self, retention: Retention) -> Arc<dyn Store> {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("sqlite-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(SqliteStore::open(dir.join("events.db"), retention).await.unwrap())
    }
}

mod store {
    tidings_conformance::store_suite!(super::SqliteStores);
}

mod local {
    tidings_conformance::transport_suite!(tidings_conformance::local::LocalAdapter, store: super::SqliteStores);
}
