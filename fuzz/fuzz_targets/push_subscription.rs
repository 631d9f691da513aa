//! A browser's push subscription JSON (`PushSubscription.toJSON()`): parsing never panics;
//! what parses survives its own JSON, and the endpoint policy answers for its URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_webpush::{EndpointPolicy, PushSubscription};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else { return };
    if let Ok(subscription) = PushSubscription::from_json(json) {
        let again = PushSubscription::from_json(&subscription.to_json().to_string()).expect("its own JSON parses");
        assert_eq!(again.endpoint(), subscription.endpoint());
        assert_eq!(again.p256dh_base64(), subscription.p256dh_base64());
        let _ = EndpointPolicy::public_only().check_syntax(subscription.endpoint());
    }
});
