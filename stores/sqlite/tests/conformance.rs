//! The SQLite store passes the store suite, and the reference transport passes the transport
//! suite over it; each log is a real file in a fresh temporary directory.

mod store {
    tidings_conformance::store_suite!(tidings_test_support::SqliteStores::default());
}

mod local {
    tidings_conformance::transport_suite!(
        tidings_conformance::local::LocalAdapter,
        store: tidings_test_support::SqliteStores::default()
    );
}
