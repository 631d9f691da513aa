//! What a Mercure client sends the hub: a topic selector and a topic to match, a publish form,
//! and (from the store) a record's decoded bytes. Never a panic; a plain selector selects
//! itself; a publish's topics, id and data survive the record and the SSE frame. The first two
//! bytes split the rest into the selector, the topic and the form.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, rest) = data.split_at(data.len().min(2));
    let a = usize::from(cuts.first().copied().unwrap_or(0)) % (rest.len() + 1);
    let b = (a + usize::from(cuts.get(1).copied().unwrap_or(0))).min(rest.len());
    let selector = String::from_utf8_lossy(&rest[..a]);
    let topic = String::from_utf8_lossy(&rest[a..b]);
    tidings_hub::fuzzing::selector_and_form(&selector, &topic, &rest[b..]);
    tidings_hub::fuzzing::view(rest);
});
