//! The Redis store passes the store suite, and the reference transport passes the transport
//! suite over it, against a real redis-server started for each test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tidings_conformance::StoreFactory;
use tidings_core::{Retention, Store};
use tidings_redis::{RedisOptions, RedisStore};
use tidings_test_support::RedisServer;

/// Fresh logs (distinct key prefixes, so distinct epochs) in one redis-server of the test's own.
struct RedisStores {
    server: RedisServer,
    next: AtomicU64,
}

impl RedisStores {
    fn start() -> RedisStores {
        RedisStores { server: RedisServer::start(), next: AtomicU64::new(0) }
    }
}

#[async_trait]
impl StoreFactory for RedisStores {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn open(&self, retention: Retention) -> Arc<dyn Store> {
        let prefix = format!("t{}", self.next.fetch_add(1, Ordering::Relaxed));
        let options = RedisOptions::default().prefix(prefix).retention(retention);
        Arc::new(RedisStore::connect(&self.server.url(), options).await.unwrap())
    }
}

mod store {
    tidings_conformance::store_suite!(super::RedisStores::start());
}

mod local {
    tidings_conformance::transport_suite!(tidings_conformance::local::LocalAdapter, store: super::RedisStores::start());
}
