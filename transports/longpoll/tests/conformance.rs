//! Long-polling runs the whole transport conformance suite through a real HTTP server, over
//! each store.

mod common;

mod memory {
    tidings_conformance::transport_suite!(super::common::LongPollAdapter);
}

mod sqlite {
    tidings_conformance::transport_suite!(super::common::LongPollAdapter, store: tidings_test_support::SqliteStores::default());
}

mod redis {
    tidings_conformance::transport_suite!(super::common::LongPollAdapter, store: tidings_test_support::RedisStores::default());
}
