//! A subscription request's query string and `Last-Event-ID` header, as SSE and long-polling
//! read them: never a panic; either a 400 or topics that are all valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::Topic;
use tidings_http::SubscribeParams;

fuzz_target!(|data: &[u8]| {
    // First line: the query; the rest: the Last-Event-ID header's bytes.
    let (query, header) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(query) = std::str::from_utf8(query) else { return };
    let mut request = http::Request::get(format!("/events?{query}"));
    if let Some(value) = header.and_then(|h| http::HeaderValue::from_bytes(h).ok()) {
        request = request.header("last-event-id", value);
    }
    let Ok(request) = request.body(()) else { return };
    let (parts, ()) = request.into_parts();
    match SubscribeParams::from_parts(&parts, "lastEventId") {
        Ok(params) => {
            for topic in &params.topics {
                assert_eq!(Topic::parse(topic.as_str()).as_ref(), Ok(topic));
            }
        }
        Err(err) => assert_eq!(err.status, 400),
    }
});
