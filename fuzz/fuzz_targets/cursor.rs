//! The cursor token (`Last-Event-ID`, `lastEventId=`, `cursor=`): parsing never panics, and
//! whatever parses prints back to a token that parses to the same cursor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    if let Ok(cursor) = Cursor::parse(token) {
        let printed = cursor.to_string();
        assert_eq!(Cursor::parse(&printed).as_ref(), Ok(&cursor), "{token:?} -> {printed:?}");
    }
});
