//! VAPID (RFC 8292): a signed JWT that tells a push service which application server sends.
//!
//! The token's claims are `aud` (the push service's origin, **with its port when it is not the
//! default one**), `exp` (12 hours ahead; push services refuse more than 24 hours) and `sub`
//! (a `mailto:` or `https:` contact the application must give). One token is signed per
//! push-service origin and reused until an hour before it expires.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use http::HeaderValue;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, VerifyingKey};
use reqwest::Url;

use crate::keys::VapidKeys;

/// How long a signed token is valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A token is signed again when less than this remains of its life.
const RENEW_BEFORE: Duration = Duration::from_secs(3600);

/// The contact a push service can reach the application's operator at: the JWT's `sub`.
///
/// ```
/// use tidings_webpush::Contact;
/// assert!(Contact::parse("mailto:ops@example.com").is_ok());
/// assert!(Contact::parse("https://example.com/contact").is_ok());
/// assert!(Contact::parse("ops@example.com").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact(String);

/// Why a contact was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContactError(String);

impl fmt::Display for ContactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vapid contact {:?} must be a mailto: address or an https: url", self.0)
    }
}

impl std::error::Error for ContactError {}

impl Contact {
    /// Validates a `mailto:` address (with an `@`) or an `https:` URL.
    pub fn parse(contact: &str) -> Result<Contact, ContactError> {
        let ok = if let Some(address) = contact.strip_prefix("mailto:") {
            address.contains('@') && !address.starts_with('@') && !address.ends_with('@')
        } else if contact.starts_with("https:") {
            Url::parse(contact).is_ok_and(|u| u.host_str().is_some())
        } else {
            false
        };
        if ok && !contact.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
            Ok(Contact(contact.to_owned()))
        } else {
            Err(ContactError(contact.chars().take(100).collect()))
        }
    }

    /// The contact as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The JWT audience for a push endpoint: its origin, with the port when it is not the
/// scheme's default.
///
/// ```
/// use tidings_webpush::vapid::audience;
/// let url = "https://push.example.net:8443/send/abc".parse().unwrap();
/// assert_eq!(audience(&url), "https://push.example.net:8443");
/// let url = "https://push.example.net:443/send/abc".parse().unwrap();
/// assert_eq!(audience(&url), "https://push.example.net");
/// ```
pub fn audience(endpoint: &Url) -> String {
    endpoint.origin().ascii_serialization()
}

/// Signs VAPID tokens, one per push-service origin, and reuses each until shortly before it
/// expires.
pub(crate) struct VapidSigner {
    keys: VapidKeys,
    contact: Contact,
    /// Per audience: the header (cloning it is a reference-count bump) and when it expires.
    cache: Mutex<HashMap<String, (HeaderValue, SystemTime)>>,
}

impl fmt::Debug for VapidSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidSigner").field("keys", &self.keys).field("contact", &self.contact).finish()
    }
}

impl VapidSigner {
    pub(crate) fn new(keys: VapidKeys, contact: Contact) -> VapidSigner {
        VapidSigner { keys, contact, cache: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn keys(&self) -> &VapidKeys {
        &self.keys
    }

    /// The `Authorization` header value for a request to `endpoint`.
    pub(crate) fn authorization(&self, endpoint: &Url) -> HeaderValue {
        let aud = audience(endpoint);
        let now = SystemTime::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((header, expires)) = cache.get(&aud) {
            if expires.duration_since(now).is_ok_and(|left| left > RENEW_BEFORE) {
                return header.clone();
            }
        }
        let expires = now + TOKEN_LIFETIME;
        let token = sign(&self.keys, &aud, expires, self.contact.as_str());
        // A JWT and a base64url key: always a valid header value.
        let header = HeaderValue::try_from(format!("vapid t={token}, k={}", self.keys.public_key_base64()))
            .expect("base64url text is a valid header value");
        cache.insert(aud, (header.clone(), expires));
        header
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A compact ES256 JWT with the VAPID claims.
pub(crate) fn sign(keys: &VapidKeys, aud: &str, expires: SystemTime, sub: &str) -> String {
    const HEADER: &str = r#"{"typ":"JWT","alg":"ES256"}"#;
    let claims = serde_json::json!({ "aud": aud, "exp": unix(expires), "sub": sub }).to_string();
    let mut signing_input = Base64UrlUnpadded::encode_string(HEADER.as_bytes());
    signing_input.push('.');
    signing_input.push_str(&Base64UrlUnpadded::encode_string(claims.as_bytes()));
    let signature: Signature = keys.signing_key().sign(signing_input.as_bytes());
    signing_input.push('.');
    signing_input.push_str(&Base64UrlUnpadded::encode_string(&signature.to_bytes()));
    signing_input
}

/// The verified claims of a VAPID `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedClaims {
    /// The `aud` claim.
    pub audience: String,
    /// The `exp` claim, in seconds since the Unix epoch.
    pub expires: u64,
    /// The `sub` claim.
    pub subject: String,
    /// The application server's public key (`k=`), unpadded base64url.
    pub public_key: String,
}

/// Checks a VAPID `Authorization` header as a push service does (RFC 8292 §§2–3): the
/// `vapid t=…, k=…` form, an ES256 signature by `k`, `aud` equal to `expected_audience`, an
/// `exp` in the future and at most 24 hours ahead, and a `mailto:` or `https:` `sub`. The
/// error says which check failed.
pub fn verify(header: &str, expected_audience: &str) -> Result<VerifiedClaims, String> {
    let rest = header.strip_prefix("vapid ").ok_or("authorization is not the vapid scheme")?;
    let (mut token, mut key) = (None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => token = Some(v.trim()),
            Some(("k", v)) => key = Some(v.trim()),
            _ => return Err(format!("unexpected vapid parameter {part:?}")),
        }
    }
    let (token, key) = (token.ok_or("vapid t= is missing")?, key.ok_or("vapid k= is missing")?);
    let key_bytes = Base64UrlUnpadded::decode_vec(key).map_err(|_| "vapid k= is not base64url")?;
    let verifying = VerifyingKey::from_sec1_bytes(&key_bytes).map_err(|_| "vapid k= is not a p-256 key")?;
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("vapid token is not a compact jwt".into());
    };
    let header_json = Base64UrlUnpadded::decode_vec(h).map_err(|_| "jwt header is not base64url")?;
    let header: serde_json::Value = serde_json::from_slice(&header_json).map_err(|_| "jwt header is not json")?;
    if header["alg"] != "ES256" {
        return Err(format!("jwt alg is {}, not ES256", header["alg"]));
    }
    let sig = Base64UrlUnpadded::decode_vec(s).map_err(|_| "jwt signature is not base64url")?;
    let sig = Signature::from_slice(&sig).map_err(|_| "jwt signature is not 64 bytes")?;
    let signed = &token[..h.len() + 1 + c.len()];
    verifying.verify(signed.as_bytes(), &sig).map_err(|_| "jwt signature does not verify")?;
    let claims = Base64UrlUnpadded::decode_vec(c).map_err(|_| "jwt claims are not base64url")?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).map_err(|_| "jwt claims are not json")?;
    let audience = claims["aud"].as_str().ok_or("jwt aud is missing")?;
    if audience != expected_audience {
        return Err(format!("jwt aud is {audience:?}, expected {expected_audience:?}"));
    }
    let expires = claims["exp"].as_u64().ok_or("jwt exp is missing")?;
    let now = unix(SystemTime::now());
    if expires <= now {
        return Err("jwt has expired".into());
    }
    if expires > now + 24 * 3600 {
        return Err("jwt exp is more than 24 hours ahead".into());
    }
    let subject = claims["sub"].as_str().ok_or("jwt sub is missing")?;
    Contact::parse(subject).map_err(|e| e.to_string())?;
    Ok(VerifiedClaims {
        audience: audience.to_owned(),
        expires,
        subject: subject.to_owned(),
        public_key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> VapidSigner {
        VapidSigner::new(VapidKeys::generate(), Contact::parse("mailto:ops@example.com").unwrap())
    }

    #[test]
    fn audience_keeps_a_non_default_port() {
        let url = Url::parse("https://127.0.0.1:8443/push/1").unwrap();
        let header = signer().authorization(&url);
        let header = header.to_str().unwrap();
        let claims = verify(header, "https://127.0.0.1:8443").unwrap();
        assert_eq!(claims.audience, "https://127.0.0.1:8443");
        assert!(verify(header, "https://127.0.0.1").is_err());
    }

    #[test]
    fn token_expires_within_a_day_and_names_the_contact() {
        let url = Url::parse("https://push.example.net/x").unwrap();
        let claims = verify(signer().authorization(&url).to_str().unwrap(), "https://push.example.net").unwrap();
        let now = unix(SystemTime::now());
        assert!(claims.expires > now + 11 * 3600 && claims.expires <= now + 24 * 3600);
        assert_eq!(claims.subject, "mailto:ops@example.com");
    }

    #[test]
    fn one_token_per_origin_is_reused() {
        let s = signer();
        let a1 = s.authorization(&Url::parse("https://a.example/1").unwrap());
        let a2 = s.authorization(&Url::parse("https://a.example/2").unwrap());
        let b = s.authorization(&Url::parse("https://b.example/1").unwrap());
        assert_eq!(a1, a2, "same origin, same token");
        assert_ne!(a1, b);
    }

    #[test]
    fn tampered_or_foreign_tokens_fail_verification() {
        let s = signer();
        let header = s.authorization(&Url::parse("https://a.example/1").unwrap());
        let header = header.to_str().unwrap();
        let other = signer().keys().public_key_base64().to_owned();
        let (t, _) = header.split_once(", k=").unwrap();
        assert!(verify(&format!("{t}, k={other}"), "https://a.example").unwrap_err().contains("signature"));
        let expired = sign(s.keys(), "https://a.example", SystemTime::now() - Duration::from_secs(5), "mailto:a@b");
        let header = format!("vapid t={expired}, k={}", s.keys().public_key_base64());
        assert!(verify(&header, "https://a.example").unwrap_err().contains("expired"));
        let far = sign(s.keys(), "https://a.example", SystemTime::now() + Duration::from_secs(25 * 3600), "mailto:a@b");
        let header = format!("vapid t={far}, k={}", s.keys().public_key_base64());
        assert!(verify(&header, "https://a.example").unwrap_err().contains("24 hours"));
        assert!(verify("Bearer x", "https://a.example").is_err());
    }

    #[test]
    fn contacts_are_validated() {
        for bad in ["", "ops@example.com", "mailto:", "mailto:@x", "http://example.com", "https://", "mailto:a@b\n"] {
            assert!(Contact::parse(bad).is_err(), "{bad:?}");
        }
    }
}
