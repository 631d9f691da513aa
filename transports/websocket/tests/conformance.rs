//! The WebSocket transport runs the whole transport conformance suite, through the shipped
//! server on loopback and a WebSocket client that is not ours, over each store.

mod common;

mod memory {
    tidings_conformance::transport_suite!(super::common::WsAdapter);
}

mod sqlite {
    tidings_conformance::transport_suite!(super::common::WsAdapter, store: tidings_test_support::SqliteStores::default());
}

mod redis {
    tidings_conformance::transport_suite!(super::common::WsAdapter, store: tidings_test_support::RedisStores::default());
}
