//! The `Host` rule of RFC 9112 §3.2, checked on every request [`Server`](crate::Server) reads,
//! whichever path answers it (its own, or hyper's).
//!
//! > A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request message
//! > that lacks a Host header field and to any request message that contains more than one Host
//! > header field line or a Host header field with an invalid field value.
//!
//! With the RFC's exceptions:
//! - an HTTP/1.0 request may lack `Host` (HTTP/1.0 had none; more than one, or an invalid one,
//!   is still a 400);
//! - a request whose target is in absolute form (`GET http://example.com/ HTTP/1.1`) names its
//!   host itself, and the server "MUST ignore the received Host header field (if any)"
//!   (§3.2.2): nothing is checked;
//! - an empty `Host` is valid: it is what a client sends when the target URI has no authority
//!   (§3.2).
//!
//! A valid value is `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a registered name,
//! an IPv4 address or a bracketed IP literal, optionally a colon and digits; no user
//! information, path or spaces. hyper checks none of this itself; `axum::serve` answers such
//! requests as if they were fine.

use std::fmt;

/// Why a request's `Host` header breaks the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostError {
    /// An HTTP/1.1 request without `Host`.
    Missing,
    /// More than one `Host` line.
    Repeated,
    /// A value that is not `uri-host [ ":" port ]`.
    Invalid,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Missing => "an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)",
            HostError::Repeated => "a request may carry one Host header only (RFC 9112 section 3.2)",
            HostError::Invalid => "the Host header is not a host with an optional port (RFC 9112 section 3.2)",
        })
    }
}

/// Checks the `Host` values of one request. `http11`: the request is HTTP/1.1 (not 1.0);
/// `absolute_form`: its target names a scheme and authority itself.
pub(crate) fn check_host<'a>(
    http11: bool,
    absolute_form: bool,
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Result<(), HostError> {
    if absolute_form {
        return Ok(());
    }
    let Some(value) = values.next() else {
        return if http11 { Err(HostError::Missing) } else { Ok(()) };
    };
    if values.next().is_some() {
        return Err(HostError::Repeated);
    }
    if valid_host(value) { Ok(()) } else { Err(HostError::Invalid) }
}

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2, §3.2.3), or empty. Written out rather than
/// borrowed from `http::uri::Authority`, which accepts `[zz]` and `[::1]junk` and refuses the
/// percent-encoded names the grammar allows.
fn valid_host(value: &[u8]) -> bool {
    let (host_ok, port) = if let Some(rest) = value.strip_prefix(b"[") {
        // IP-literal = "[" ( IPv6address / IPvFuture ) "]"
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok =
            std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok()) || ip_future(literal);
        match &rest[end + 1..] {
            [] => (ok, &[][..]),
            [b':', port @ ..] => (ok, port),
            _ => return false,
        }
    } else {
        // reg-name (an IPv4 address is one too) has no colon: the first one starts the port.
        match value.iter().position(|&b| b == b':') {
            Some(i) => (reg_name(&value[..i]), &value[i + 1..]),
            None => (reg_name(value), &[][..]),
        }
    };
    host_ok && port.iter().all(u8::is_ascii_digit)
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`
fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' if name.len() > i + 2 && name[i + 1].is_ascii_hexdigit() && name[i + 2].is_ascii_hexdigit() => i += 3,
            b if unreserved(b) || sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`
fn ip_future(literal: &[u8]) -> bool {
    let Some(rest) = literal.strip_prefix(b"v").or_else(|| literal.strip_prefix(b"V")) else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
    !version.is_empty()
        && version.iter().all(u8::is_ascii_hexdigit)
        && !tail.is_empty()
        && tail.iter().all(|&b| unreserved(b) || sub_delim(b) || b == b':')
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn sub_delim(b: u8) -> bool {
    matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(http11: bool, values: &[&str]) -> Result<(), HostError> {
        check_host(http11, false, values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        assert_eq!(check(true, &[]), Err(HostError::Missing));
        assert_eq!(check(true, &["a", "a"]), Err(HostError::Repeated));
        for valid in [
            "",
            "example.com",
            "example.com:8080",
            "localhost:",
            "127.0.0.1",
            "[::1]",
            "[::1]:8888",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a_b~c!$&'()*+,;=.d",
            "a%20b",
        ] {
            assert_eq!(check(true, &[valid]), Ok(()), "{valid:?}");
        }
        for invalid in [
            "a b",
            "user@example.com",
            "example.com/path",
            "example.com:80a",
            "[::1",
            "::1",
            "a:1:2",
            "ex\"ample",
            "a?b",
            "a#b",
            "[zz]",
            "[]",
            "[::1]junk",
            "[g::1]",
            "[1.2.3.4]",
            "[:::::]",
            "a%2",
            "a%zz",
            "a:+80",
            "[v.x]",
            "[v1.]",
        ] {
            assert_eq!(check(true, &[invalid]), Err(HostError::Invalid), "{invalid:?}");
        }
    }

    #[test]
    fn http10_may_lack_host_but_not_repeat_or_garble_it() {
        assert_eq!(check(false, &[]), Ok(()));
        assert_eq!(check(false, &["a", "b"]), Err(HostError::Repeated));
        assert_eq!(check(false, &["a b"]), Err(HostError::Invalid));
    }

    #[test]
    fn an_absolute_form_target_makes_host_ignored() {
        assert_eq!(check_host(true, true, std::iter::empty()), Ok(()));
        assert_eq!(check_host(true, true, [&b"a b"[..], b"c"].into_iter()), Ok(()));
    }
}
