//! The SSE transport runs the whole transport conformance suite, through a real HTTP server on
//! loopback and an SSE parser that is not ours.

mod common;

tidings_conformance::transport_suite!(common::SseAdapter);
