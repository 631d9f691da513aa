//! Topic names and event types: parsing never panics; what parses is within the documented
//! bounds and parses again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::event::MAX_EVENT_TYPE_LEN;
use tidings_core::topic::MAX_TOPIC_LEN;
use tidings_core::{EventType, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if let Ok(topic) = Topic::parse(name) {
        assert!(!topic.as_str().is_empty() && topic.as_str().len() <= MAX_TOPIC_LEN);
        assert!(!topic.as_str().chars().any(char::is_control), "{name:?}");
        assert_eq!(Topic::parse(topic.as_str()).as_ref(), Ok(&topic));
    }
    if let Ok(kind) = EventType::parse(name) {
        assert!(kind.as_str().len() <= MAX_EVENT_TYPE_LEN);
        assert!(!kind.as_str().contains(['\n', '\r']), "{name:?}");
    }
});
