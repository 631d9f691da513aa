//! What a WebSocket client sends after the handshake, cut into pieces anywhere: never a panic;
//! every text message read is UTF-8 and within the limit, every `tidings.v1` message is read or
//! refused with a reason, every violation closes with a code a server may send and a reason
//! that fits a close frame. The first two bytes choose where the input is cut.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, bytes) = data.split_at(data.len().min(2));
    let cuts: Vec<usize> = cuts.iter().map(|&c| usize::from(c)).collect();
    // A small limit, so that the fuzzer reaches it.
    let whole = tidings_websocket::fuzzing::read_client_bytes(bytes, &[], 1024);
    let cut = tidings_websocket::fuzzing::read_client_bytes(bytes, &cuts, 1024);
    // However the bytes arrive, they come to the same.
    assert_eq!(whole, cut);
});
