//! A publish request's JSON body: never a panic; either a 400 or an event whose topic and type
//! are valid and whose data is the body's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::Topic;

fuzz_target!(|data: &[u8]| {
    match tidings_http::parse_publish(data) {
        Ok(event) => {
            assert_eq!(Topic::parse(event.topic.as_str()).as_ref(), Ok(&event.topic));
            let body: serde_json::Value = serde_json::from_slice(data).expect("it parsed once");
            assert_eq!(body["data"].as_str(), Some(&*event.data));
        }
        Err(err) => assert_eq!(err.status, 400),
    }
});
