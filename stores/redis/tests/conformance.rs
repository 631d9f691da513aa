//! The Redis store passes the store suite, and the reference transport passes the transport
//! suite over it, against a real redis-server started for each test.

mod store {
    tidings_conformance::store_suite!(tidings_test_support::RedisStores::default());
}

mod local {
    tidings_conformance::transport_suite!(
        tidings_conformance::local::LocalAdapter,
        store: tidings_test_support::RedisStores::default()
    );
}
