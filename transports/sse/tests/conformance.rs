//! The SSE transport runs the whole transport conformance suite, through a real HTTP server on
//! loopback and an SSE parser that is not ours, over each store.

mod common;

mod memory {
    tidings_conformance::transport_suite!(super::common::SseAdapter);
}

mod sqlite {
    tidings_conformance::transport_suite!(super::common::SseAdapter, store: tidings_test_support::SqliteStores::default());
}

mod redis {
    tidings_conformance::transport_suite!(super::common::SseAdapter, store: tidings_test_support::RedisStores::default());
}
