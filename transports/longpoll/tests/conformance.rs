//! Long-polling runs the whole transport conformance suite through a real HTTP server.

mod common;

tidings_conformance::transport_suite!(common::LongPollAdapter);
