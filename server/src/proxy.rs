//! The client behind a reverse proxy: the PROXY protocol (v1 and v2, HAProxy's specification)
//! and `X-Forwarded-For` from trusted proxies.
//!
//! Behind a proxy every connection comes from the proxy's address, so a per-address limit
//! would count all clients as one. The server learns the real client in one of two ways:
//!
//! - **The PROXY protocol** ([`Server::proxy_protocol`](crate::Server::proxy_protocol)): the
//!   proxy opens each connection with a header naming the client's address and port (HAProxy's
//!   `send-proxy`/`send-proxy-v2`, nginx's `proxy_protocol on` in its `stream` module, cloud
//!   load balancers). The header is required on every connection and believed; the connection is
//!   counted under that address, and handlers see it as `ConnectInfo`.
//! - **`X-Forwarded-For` from trusted proxies**
//!   ([`Server::trusted_proxies`](crate::Server::trusted_proxies)): a connection from a trusted
//!   address is not counted as one client; each request on it is counted, while it is answered
//!   (a stream: until it ends), under the client its `X-Forwarded-For` names: the right-most
//!   address that is not itself a trusted proxy (every proxy appends the address it saw, so
//!   entries left of an untrusted one may be forged).
//!
//! Either way each request carries the address believed as a [`ClientIp`] extension.

use std::io;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;
use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The client's address as the server believes it (the PROXY protocol's source, the client a
/// trusted proxy's `X-Forwarded-For` names, or the peer), in every request's extensions:
///
/// ```
/// use axum::Extension;
/// use tidings_server::ClientIp;
/// let route = axum::routing::get(|Extension(ClientIp(ip)): Extension<ClientIp>| async move { ip.to_string() });
/// # let _: axum::routing::MethodRouter = route;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

/// The proxies trusted by default: loopback and the private ranges (RFC 1918 and RFC 4193),
/// where a reverse proxy in front of an app usually is; the list Rails' `RemoteIp` trusts.
pub const DEFAULT_TRUSTED_PROXIES: [&str; 6] =
    ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

/// [`DEFAULT_TRUSTED_PROXIES`], parsed.
pub(crate) fn default_trusted() -> Vec<IpNet> {
    DEFAULT_TRUSTED_PROXIES.iter().filter_map(|net| net.parse().ok()).collect()
}

/// Whether `ip` is in one of the `trusted` ranges (an IPv4 address mapped into IPv6 as the IPv4
/// address).
pub(crate) fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// `ip`, with an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`) as the IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The client of a request that came from the trusted proxy `peer`: walking `X-Forwarded-For`
/// (every line, in order) from the right, the first address that is not a trusted proxy; the
/// left-most if all are; `peer` if there is none. An entry that is not an address (a forged or
/// mangled header) stops the walk: the last address believed before it is the client.
pub(crate) fn forwarded_client(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let mut client = peer;
    let entries =
        headers.get_all("x-forwarded-for").iter().rev().flat_map(|value| value.as_bytes().rsplit(|&b| b == b','));
    for entry in entries {
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_entry) else { break };
        client = canonical(ip);
        if !is_trusted(trusted, client) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The longest PROXY header read: a v2 header's 16 bytes plus its largest payload.
const MAX_PROXY_HEADER: usize = 16 + 65_535;

/// Reads the PROXY protocol header (v1 or v2) that starts the connection: the client's address
/// (`None` for a `LOCAL` or `UNKNOWN` header: a proxy's own health check, where the peer is the
/// client), and the bytes read after the header (the start of the first request).
///
/// # Errors
///
/// `InvalidData` if the connection does not start with a valid header, `UnexpectedEof` if it
/// closes first. The specification says to close such a connection without a word.
pub(crate) async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<(Option<SocketAddr>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some((source, len)) = parse_proxy_header(&buf)? {
            buf.drain(..len);
            buf.shrink_to_fit();
            return Ok((source, buf));
        }
        buf.reserve(256);
    }
}

/// The v2 header's signature (its first 12 bytes).
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The PROXY header at the start of `read`: the client's address (`None` for `LOCAL` or
/// `UNKNOWN`) and the header's length, or `None` while more bytes are needed.
pub(crate) fn parse_proxy_header(read: &[u8]) -> io::Result<Option<(Option<SocketAddr>, usize)>> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "not a PROXY protocol header");
    // What can start a header at all, decided before the parser: a v1 header is one line of at
    // most 107 bytes (the parser may wait for more on some malformed lines).
    let starts = |prefix: &[u8]| prefix[..read.len().min(prefix.len())] == read[..read.len().min(prefix.len())];
    let v1 = starts(b"PROXY ");
    if v1 {
        let line_end = read.windows(2).position(|w| w == b"\r\n");
        if line_end.is_none() && read.len() < 107 {
            return Ok(None);
        }
        if line_end.is_none_or(|end| end + 2 > 107) {
            return Err(invalid());
        }
    } else if !starts(V2_SIGNATURE) {
        return Err(invalid());
    }
    let header = ppp::HeaderResult::parse(read);
    if header.is_incomplete() {
        // A v1 line is whole by now: what it lacks, it will not get.
        return if !v1 && read.len() < MAX_PROXY_HEADER { Ok(None) } else { Err(invalid()) };
    }
    let parsed = match header {
        ppp::HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v1::Addresses::Unknown => None,
            };
            (source, header.header.len())
        }
        ppp::HeaderResult::V2(Ok(header)) => {
            let source = match (header.command, header.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            (source, header.len())
        }
        _ => return Err(invalid()),
    };
    Ok(Some(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("x-forwarded-for", line.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_address() {
        let trusted = default_trusted();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let client = |lines: &[&str]| forwarded_client(&headers(lines), peer, &trusted).to_string();
        assert_eq!(client(&[]), "127.0.0.1");
        assert_eq!(client(&["203.0.113.7"]), "203.0.113.7");
        // A client may send its own header: what it wrote is left of what the proxy appended.
        assert_eq!(client(&["1.1.1.1, 203.0.113.7"]), "203.0.113.7");
        assert_eq!(client(&["1.1.1.1", "203.0.113.7, 10.0.0.2"]), "203.0.113.7");
        // All trusted: the left-most.
        assert_eq!(client(&["10.0.0.9, 10.0.0.2"]), "10.0.0.9");
        // Garbage stops the walk at the last address believed.
        assert_eq!(client(&["203.0.113.7, nonsense, 10.0.0.2"]), "10.0.0.2");
        assert_eq!(client(&["nonsense"]), "127.0.0.1");
        // Ports, brackets and mapped addresses.
        assert_eq!(client(&["[2001:db8::1]:443"]), "2001:db8::1");
        assert_eq!(client(&["203.0.113.7:5000"]), "203.0.113.7");
        assert_eq!(client(&["::ffff:203.0.113.7"]), "203.0.113.7");
    }

    #[test]
    fn proxy_headers_are_read_whole_or_refused_at_once() {
        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        let (source, len) = parse_proxy_header(v1).unwrap().unwrap();
        assert_eq!(source, Some("203.0.113.7:5555".parse().unwrap()));
        assert_eq!(&v1[len..], b"GET / HTTP/1.1\r\n");
        // Every prefix of a header waits for more.
        for end in 1..len {
            assert!(parse_proxy_header(&v1[..end]).unwrap().is_none(), "{end}");
        }
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse_proxy_header(unknown).unwrap(), Some((None, unknown.len())));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x11, 0x5c, 0, 80]);
        assert_eq!(parse_proxy_header(&v2).unwrap(), Some((Some("198.51.100.9:4444".parse().unwrap()), 28)));
        for end in 1..v2.len() {
            assert!(parse_proxy_header(&v2[..end]).unwrap().is_none(), "{end}");
        }
        // Not a header, a malformed line, a line too long: refused now, not after a timeout.
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PROXY TCP4 nonsense\r\n",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 5555\r\n",
            b"PROXY TCP9 1 2 3 4\r\n",
            &[b'P', b'R', b'O', b'X', b'Y', b' '].iter().copied().chain([b'x'; 120]).collect::<Vec<u8>>(),
            b"\r\n\r\n\0\r\nQUIT\n\x99\x11\0\x0c",
        ] {
            assert!(parse_proxy_header(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn trust_covers_mapped_addresses() {
        let trusted = default_trusted();
        assert!(is_trusted(&trusted, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(is_trusted(&trusted, "fd00::1".parse().unwrap()));
        assert!(!is_trusted(&trusted, "203.0.113.7".parse().unwrap()));
        assert!(!is_trusted(&[], "127.0.0.1".parse().unwrap()));
    }
}
