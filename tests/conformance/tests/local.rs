//! The suite checks itself: the in-process reference adapter passes every applicable
//! scenario, and the memory store passes the store suite.

mod transport {
    tidings_conformance::transport_suite!(tidings_conformance::local::LocalAdapter);
}

mod store {
    tidings_conformance::store_suite!(tidings_conformance::MemoryStores);
}
