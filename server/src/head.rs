//! Reading request heads: the bytes of a request up to its blank line, parsed once, and the
//! checks both paths share (the header limit, the `Host` rule, `Connection: close`).

use std::io;

use crate::Config;
use crate::host::{HostError, check_host};
use http::Request;
use tokio::net::TcpStream;

/// Whether `Connection` header values hold the `close` option (RFC 9110 §7.6.1).
pub(crate) fn says_close<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    values.into_iter().any(|v| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")))
}

/// Reads until the first request's head is complete, unparseable, or as long as the parser's
/// own limit: what was read, for [`bodiless_get`] and, failing that, for hyper to read again.
/// `buf` holds what was read already (after a PROXY protocol header), if anything.
pub(crate) async fn read_head(stream: &mut TcpStream, config: &Config, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let cap = hard_header_cap(config);
    buf.reserve(1024usize.saturating_sub(buf.len()));
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            match httparse::Request::new(&mut headers).parse(&buf) {
                Ok(httparse::Status::Partial) if buf.len() < cap => {}
                // Complete, an error (hyper answers it), or too large (hyper answers 431).
                _ => return Ok(buf),
            }
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The request `head` holds, if it is a `GET` over HTTP/1.1 without a body, upgrade or
/// expectation, within the header limit: the requests a stream may answer.
pub(crate) fn bodiless_get(head: &[u8], max_header_bytes: usize) -> Option<(Request<axum::body::Body>, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(head).ok()? else {
        return None;
    };
    if len > max_header_bytes || parsed.method? != "GET" || parsed.version? != 1 || len != head.len() {
        return None; // too large (hyper answers 431), another method, HTTP/1.0, or pipelined
    }
    let mut request = Request::get(parsed.path?);
    let mut keep_alive = true;
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "upgrade" | "expect") {
            return None;
        }
        if name == "connection" && says_close([header.value]) {
            keep_alive = false;
        }
        request = request.header(header.name, http::HeaderValue::from_bytes(header.value).ok()?);
    }
    let request = request.body(axum::body::Body::empty()).ok()?;
    // A request that breaks the Host rule goes to hyper's path, which answers it 400.
    request_host(&request).ok()?;
    Some((request, keep_alive))
}

/// The Host rule (see [`host`](crate::host)) for a request as either path reads it.
pub(crate) fn request_host<B>(request: &Request<B>) -> Result<(), HostError> {
    check_host(
        request.version() == http::Version::HTTP_11,
        request.uri().scheme().is_some(),
        request.headers().get_all(http::header::HOST).iter().map(http::HeaderValue::as_bytes),
    )
}

pub(crate) fn hard_header_cap(config: &Config) -> usize {
    (config.max_header_bytes.saturating_mul(4)).max(64 * 1024)
}

/// The size of a request's head as it came on the wire, near enough: request line and headers.
pub(crate) fn head_len<B>(request: &Request<B>) -> usize {
    let line = request.method().as_str().len()
        + request.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + request.uri().authority().map_or(0, |a| a.as_str().len() + 8)
        + 11;
    request.headers().iter().fold(line, |n, (name, value)| n + name.as_str().len() + value.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_len_counts_line_and_headers() {
        let request = Request::get("/events?topic=a").header("x-big", "v".repeat(100)).body(()).unwrap();
        assert!(head_len(&request) >= 100 + 5 + 15);
        assert!(head_len(&request) < 200);
    }
}
