//! What the server parses from the network itself, before hyper or a handler sees anything:
//! the PROXY protocol header, `X-Forwarded-For` lines and the request heads the direct path
//! takes. Nothing panics; a PROXY header's length is within what was read; the client named is
//! the peer or one of the addresses written; a head the direct path takes parses as HTTP/1.1.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tidings_server::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, len))) = fuzzing::proxy_header(data) {
        assert!(len > 0 && len <= data.len(), "{len} of {}", data.len());
    }
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let client = fuzzing::forwarded_client(&lines, peer);
    let text = String::from_utf8_lossy(data);
    if let IpAddr::V4(v4) = client {
        // Written out as it is (an IPv4 address mapped into IPv6 may be written in hex).
        if client != peer && !text.to_ascii_lowercase().contains("ffff") {
            assert!(text.contains(&v4.to_string()), "{client} from {text:?}");
        }
    }
    if fuzzing::direct_path(data).is_some() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let parsed = httparse::Request::new(&mut headers).parse(data);
        assert!(matches!(parsed, Ok(httparse::Status::Complete(n)) if n == data.len()));
    }
});
