//! Which push endpoints the server may POST to.
//!
//! A push endpoint comes from a client, and the server sends requests to it: without a check,
//! anyone could make the server call its own loopback, the cloud's metadata service or a host
//! of the private network (server-side request forgery). By default only `https` endpoints
//! whose every resolved address is public are accepted. The check runs when a subscription
//! registers and again on every connection the sender opens (its DNS resolver applies the same
//! rule), so a name that later resolves to a private address is refused then too. Redirects
//! are never followed.
//!
//! An explicit allow-list of `host:port` opens specific services, plain `http` included: a
//! private push service, or a local one in tests.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

/// Why an endpoint was refused (a 400 with this text at registration).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// Not `https`, and not on the allow-list.
    NotHttps(String),
    /// The URL carries a user name or password.
    Credentials,
    /// The host resolves to (or is) an address that is not public.
    NotPublic {
        /// The host as written in the URL.
        host: String,
        /// The offending address.
        addr: IpAddr,
        /// What kind of address it is (`"loopback"`, `"private"`, …).
        kind: &'static str,
    },
    /// The host does not resolve.
    Unresolvable(String),
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::NotHttps(scheme) => write!(
                f,
                "push endpoint must be https (got {scheme}:), unless its host:port is on the allow-list"
            ),
            EndpointError::Credentials => f.write_str("push endpoint must not carry a user name or password"),
            EndpointError::NotPublic { host, addr, kind } => write!(
                f,
                "push endpoint host {host} is {addr}, a {kind} address; only public addresses are allowed unless its host:port is on the allow-list"
            ),
            EndpointError::Unresolvable(host) => write!(f, "push endpoint host {host} does not resolve"),
        }
    }
}

impl std::error::Error for EndpointError {}

/// The rule for push endpoints: public `https` only, plus an allow-list of `host:port`.
///
/// ```
/// use tidings_webpush::EndpointPolicy;
/// let policy = EndpointPolicy::default();
/// assert!(policy.check_syntax(&"https://127.0.0.1/push".parse().unwrap()).is_err());
/// let policy = EndpointPolicy::default().allow("127.0.0.1:8443").unwrap();
/// assert!(policy.check_syntax(&"https://127.0.0.1:8443/push".parse().unwrap()).is_ok());
/// assert!(policy.check_syntax(&"https://127.0.0.1:9999/push".parse().unwrap()).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Lowercase host (IPv6 without brackets) and port.
    allowed: HashSet<(String, u16)>,
}

impl EndpointPolicy {
    /// Public `https` endpoints only (the default).
    pub fn public_only() -> EndpointPolicy {
        EndpointPolicy::default()
    }

    /// Also accepts endpoints at `host:port` (`[::1]:8443` for IPv6), over `https` or `http`,
    /// whatever their addresses. An entry without a port is an error: the rule is per service.
    pub fn allow(mut self, host_port: &str) -> Result<EndpointPolicy, String> {
        let entry = host_port.trim();
        let (host, port) = entry.rsplit_once(':').ok_or_else(|| format!("{entry:?} is not host:port"))?;
        let port: u16 = port.parse().map_err(|_| format!("{entry:?} has no valid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("{entry:?} has no host"));
        }
        self.allowed.insert((host, port));
        Ok(self)
    }

    /// A policy from a comma-separated list of `host:port` (such as the demo's
    /// `TIDINGS_PUSH_ALLOW_HOSTS`); an empty list is the default policy.
    pub fn from_list(list: &str) -> Result<EndpointPolicy, String> {
        list.split(',').filter(|e| !e.trim().is_empty()).try_fold(EndpointPolicy::default(), |p, e| p.allow(e))
    }

    fn host_key(url: &Url) -> Option<(String, u16)> {
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        Some((host, url.port_or_known_default()?))
    }

    /// Whether `url`'s host and port are on the allow-list.
    pub fn is_allowed(&self, url: &Url) -> bool {
        EndpointPolicy::host_key(url).is_some_and(|k| self.allowed.contains(&k))
    }

    fn host_is_allowed(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.allowed.iter().any(|(h, _)| *h == host)
    }

    /// The checks that need no DNS: scheme, credentials, and addresses written as IP literals.
    pub fn check_syntax(&self, url: &Url) -> Result<(), EndpointError> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointError::Credentials);
        }
        if !matches!(url.scheme(), "https" | "http") {
            return Err(EndpointError::NotHttps(url.scheme().to_owned()));
        }
        if self.is_allowed(url) {
            return Ok(());
        }
        if url.scheme() != "https" {
            return Err(EndpointError::NotHttps(url.scheme().to_owned()));
        }
        let host = url.host_str().unwrap_or_default();
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(addr) = literal {
            if let Some(kind) = non_public(addr) {
                return Err(EndpointError::NotPublic { host: host.to_owned(), addr, kind });
            }
        }
        Ok(())
    }

    /// Every check: [`EndpointPolicy::check_syntax`], then the host's resolved addresses must
    /// all be public (unless allowed).
    pub async fn check(&self, url: &Url) -> Result<(), EndpointError> {
        self.check_syntax(url)?;
        if self.is_allowed(url) {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|_| EndpointError::Unresolvable(host.to_owned()))?
            .collect();
        check_addrs(host, &addrs)?;
        Ok(())
    }

    /// The DNS resolver the sender uses, applying the same rule at connection time.
    pub(crate) fn resolver(&self) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver { policy: self.clone() })
    }
}

fn check_addrs(host: &str, addrs: &[SocketAddr]) -> Result<(), EndpointError> {
    if addrs.is_empty() {
        return Err(EndpointError::Unresolvable(host.to_owned()));
    }
    for addr in addrs {
        if let Some(kind) = non_public(addr.ip()) {
            return Err(EndpointError::NotPublic { host: host.to_owned(), addr: addr.ip(), kind });
        }
    }
    Ok(())
}

/// Resolves names for the sender and refuses any whose addresses are not all public, unless
/// the host is on the allow-list (the URL's port was checked before the request).
#[derive(Debug)]
pub(crate) struct PolicyResolver {
    policy: EndpointPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.policy.host_is_allowed(name.as_str());
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allowed {
                check_addrs(&host, &addrs).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What kind of non-public address `ip` is, or `None` if it is a public unicast address.
///
/// ```
/// use tidings_webpush::endpoint::non_public;
/// assert_eq!(non_public("169.254.169.254".parse().unwrap()), Some("link-local (cloud metadata)"));
/// assert_eq!(non_public("::ffff:10.0.0.1".parse().unwrap()), Some("private"));
/// assert_eq!(non_public("93.184.216.34".parse().unwrap()), None);
/// ```
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() || a == 0 => "unspecified (this network)",
        (127, ..) => "loopback",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private",
        (169, 254, 169) if ip.octets()[3] == 254 => "link-local (cloud metadata)",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (192, 0, 0) => "reserved (IETF protocol assignments)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (192, 88, 99) => "reserved (6to4 relay)",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let seg = ip.segments();
    Some(match seg[0] {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        // NAT64 (64:ff9b::/96): the embedded IPv4 address decides.
        0x64 if seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] => {
            let [a, b] = seg[6].to_be_bytes();
            let [c, d] = seg[7].to_be_bytes();
            return non_public_v4(Ipv4Addr::new(a, b, c, d));
        }
        0 => "reserved (IPv4-compatible)",
        0x0100 if seg[1..4] == [0, 0, 0] => "discard-only",
        0x2001 if seg[1] == 0x0db8 => "documentation",
        0x2001 if seg[1] < 0x0200 => "reserved (IETF protocol assignments)",
        0x2002 => "6to4",
        s if s & 0xfe00 == 0xfc00 => "unique-local",
        s if s & 0xffc0 == 0xfe80 => "link-local",
        s if s & 0xffc0 == 0xfec0 => "site-local",
        s if s & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn non_public_addresses_are_named() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified (this network)"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(non_public(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2606:4700::1111", "100.128.0.1"] {
            assert_eq!(non_public(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn syntax_rules() {
        let p = EndpointPolicy::default();
        assert!(matches!(p.check_syntax(&url("http://push.example.net/x")), Err(EndpointError::NotHttps(_))));
        assert!(matches!(p.check_syntax(&url("https://u:p@push.example.net/x")), Err(EndpointError::Credentials)));
        assert!(matches!(p.check_syntax(&url("https://[::1]:8443/x")), Err(EndpointError::NotPublic { .. })));
        let p = p.allow("[::1]:8443").unwrap().allow("localhost:8080").unwrap();
        assert!(p.check_syntax(&url("https://[::1]:8443/x")).is_ok());
        assert!(p.check_syntax(&url("http://LOCALHOST:8080/x")).is_ok());
        assert!(p.check_syntax(&url("http://localhost:8081/x")).is_err());
        // An allowed host:port is let through over http or https only (found by a fresh user:
        // an ftp: endpoint was stored and never served).
        for other in ["ftp://localhost:8080/x", "ws://localhost:8080/x", "gopher://localhost:8080/x"] {
            assert!(matches!(p.check_syntax(&url(other)), Err(EndpointError::NotHttps(_))), "{other}");
        }
        assert!(EndpointPolicy::default().allow("localhost").is_err());
        assert_eq!(EndpointPolicy::from_list(" ").unwrap(), EndpointPolicy::default());
        assert!(EndpointPolicy::from_list("a:1,b:2").unwrap().is_allowed(&url("http://b:2/")));
    }

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused() {
        let err = EndpointPolicy::default().check(&url("https://localhost/x")).await.unwrap_err();
        assert!(matches!(err, EndpointError::NotPublic { kind: "loopback", .. }), "{err}");
    }
}
