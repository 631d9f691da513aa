//! A browser's push subscription (what `PushSubscription.toJSON()` gives), validated.

use std::fmt;

use base64ct::{Base64UrlUnpadded, Encoding};
use reqwest::Url;
use serde::Deserialize;

/// The longest endpoint URL accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// A validated push subscription: where to send, and the keys to encrypt for.
///
/// ```
/// use tidings_webpush::PushSubscription;
/// let json = r#"{"endpoint":"https://push.example.net/send/abc","expirationTime":null,
///   "keys":{"p256dh":"BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY",
///           "auth":"_ordMnz7uTCmrpBTeUV4Bw"}}"#;
/// let sub = PushSubscription::from_json(json).unwrap();
/// assert_eq!(sub.endpoint().host_str(), Some("push.example.net"));
/// assert!(PushSubscription::from_json(r#"{"endpoint":"x"}"#).is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PushSubscription {
    endpoint: Url,
    /// The user agent's key, uncompressed (65 bytes), validated as a point on P-256.
    p256dh_bytes: Box<[u8]>,
    auth: [u8; 16],
}

/// Why a push subscription was refused (a 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The JSON does not have the shape of `PushSubscription.toJSON()`.
    Json(String),
    /// The endpoint is not an absolute URL, or is too long.
    Endpoint(String),
    /// `keys.p256dh` is not a P-256 public key in base64 (either alphabet, padded or not).
    P256dh,
    /// `keys.auth` is not 16 bytes in base64 (either alphabet, padded or not).
    Auth,
}

impl fmt::Display for SubscriptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriptionError::Json(e) => write!(f, "push subscription is not valid json: {e}"),
            SubscriptionError::Endpoint(e) => write!(f, "push endpoint is not a valid url: {e}"),
            SubscriptionError::P256dh => {
                f.write_str("keys.p256dh is not a p-256 public key (65 bytes, base64 or base64url)")
            }
            SubscriptionError::Auth => f.write_str("keys.auth is not a 16-byte secret (base64 or base64url)"),
        }
    }
}

impl std::error::Error for SubscriptionError {}

/// The JSON form, as browsers produce it.
#[derive(Debug, Deserialize)]
struct SubscriptionJson {
    endpoint: String,
    keys: KeysJson,
}

#[derive(Debug, Deserialize)]
pub(crate) struct KeysJson {
    pub(crate) p256dh: String,
    pub(crate) auth: String,
}

/// Decodes base64 in either alphabet of RFC 4648, padded or not: browsers send unpadded
/// base64url (`PushSubscription.toJSON()`), while `btoa` and many server libraries write the
/// standard alphabet (`+`, `/`) with `=` padding; other Web Push libraries accept both. `None`
/// for anything else: the two alphabets mixed, padding that is not the right length for the
/// text, a character of neither alphabet, or bits left over.
pub(crate) fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let unpadded = text.trim_end_matches('=');
    let padding = text.len() - unpadded.len();
    if padding > 0 && (padding > 2 || text.len() % 4 != 0) {
        return None;
    }
    let url = unpadded.contains(['-', '_']);
    let standard = unpadded.contains(['+', '/']);
    if url && standard {
        return None;
    }
    if standard {
        base64ct::Base64Unpadded::decode_vec(unpadded).ok()
    } else {
        Base64UrlUnpadded::decode_vec(unpadded).ok()
    }
}

fn drop_empty_query(url: &mut Url) {
    if url.query() == Some("") {
        url.set_query(None);
    }
}

/// `endpoint` spelled as registrations are keyed ([`PushSubscription::endpoint`]): parsed and
/// written back as a URL (scheme and host in lower case, for one), without an empty query. A
/// string that is no URL is returned as it is (no registration has it). For looking an
/// endpoint up, as `DELETE` does.
pub fn normalize_endpoint(endpoint: &str) -> String {
    match Url::parse(endpoint) {
        Ok(mut url) => {
            drop_empty_query(&mut url);
            url.into()
        }
        Err(_) => endpoint.to_owned(),
    }
}

impl PushSubscription {
    /// Validates a subscription from its parts.
    pub fn new(endpoint: &str, p256dh: &str, auth: &str) -> Result<PushSubscription, SubscriptionError> {
        if endpoint.len() > MAX_ENDPOINT_LEN {
            return Err(SubscriptionError::Endpoint(format!("longer than {MAX_ENDPOINT_LEN} bytes")));
        }
        let mut endpoint = Url::parse(endpoint).map_err(|e| SubscriptionError::Endpoint(e.to_string()))?;
        if endpoint.host_str().is_none() || endpoint.cannot_be_a_base() {
            return Err(SubscriptionError::Endpoint("no host".into()));
        }
        // The endpoint is the registration's key: one spelling per endpoint. A fragment is never
        // sent in a request (a push service cannot tell `…#a` from `…`), and an empty query is
        // no query.
        if endpoint.fragment().is_some() {
            return Err(SubscriptionError::Endpoint("a push endpoint has no fragment (#…)".into()));
        }
        drop_empty_query(&mut endpoint);
        let key = decode_b64(p256dh).ok_or(SubscriptionError::P256dh)?;
        if key.len() != 65 {
            return Err(SubscriptionError::P256dh);
        }
        p256::PublicKey::from_sec1_bytes(&key).map_err(|_| SubscriptionError::P256dh)?;
        let auth: [u8; 16] = decode_b64(auth)
            .and_then(|a| a.try_into().ok())
            .ok_or(SubscriptionError::Auth)?;
        Ok(PushSubscription { endpoint, p256dh_bytes: key.into_boxed_slice(), auth })
    }

    /// Parses the JSON of `PushSubscription.toJSON()` (extra fields are ignored).
    pub fn from_json(json: &str) -> Result<PushSubscription, SubscriptionError> {
        let parsed: SubscriptionJson =
            serde_json::from_str(json).map_err(|e| SubscriptionError::Json(e.to_string()))?;
        PushSubscription::new(&parsed.endpoint, &parsed.keys.p256dh, &parsed.keys.auth)
    }

    /// The push service's URL for this subscription.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The user agent's public key, unpadded base64url.
    pub fn p256dh_base64(&self) -> String {
        Base64UrlUnpadded::encode_string(&self.p256dh_bytes)
    }

    /// The authentication secret, unpadded base64url.
    pub fn auth_base64(&self) -> String {
        Base64UrlUnpadded::encode_string(&self.auth)
    }

    /// The subscription as `PushSubscription.toJSON()` writes it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint.as_str(),
            "keys": { "p256dh": self.p256dh_base64(), "auth": self.auth_base64() },
        })
    }

    pub(crate) fn p256dh_bytes(&self) -> &[u8] {
        &self.p256dh_bytes
    }

    pub(crate) fn auth(&self) -> &[u8; 16] {
        &self.auth
    }
}

impl fmt::Debug for PushSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The endpoint is a capability URL; show its origin only.
        f.debug_struct("PushSubscription")
            .field("origin", &self.endpoint.origin().ascii_serialization())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str =
        "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY";
    const AUTH: &str = "_ordMnz7uTCmrpBTeUV4Bw";

    #[test]
    fn malformed_subscriptions_are_errors_not_panics() {
        let e = "https://push.example.net/x";
        assert!(PushSubscription::new(e, P256DH, AUTH).is_ok());
        assert!(PushSubscription::new(&format!("{AUTH}=="), P256DH, AUTH).is_err());
        assert_eq!(PushSubscription::new(e, "AAAA", AUTH), Err(SubscriptionError::P256dh));
        // 65 bytes, but not a point on the curve.
        let off_curve = Base64UrlUnpadded::encode_string(&[4u8; 65]);
        assert_eq!(PushSubscription::new(e, &off_curve, AUTH), Err(SubscriptionError::P256dh));
        assert_eq!(PushSubscription::new(e, P256DH, "AAAA"), Err(SubscriptionError::Auth));
        assert_eq!(PushSubscription::new(e, P256DH, "!!"), Err(SubscriptionError::Auth));
        assert!(PushSubscription::new(&format!("https://x/{}", "a".repeat(MAX_ENDPOINT_LEN)), P256DH, AUTH).is_err());
        assert!(PushSubscription::new("mailto:a@b", P256DH, AUTH).is_err());
        for json in ["", "null", "[]", "{}", r#"{"endpoint":1}"#, r#"{"endpoint":"https://a/","keys":{}}"#] {
            assert!(matches!(PushSubscription::from_json(json), Err(SubscriptionError::Json(_))), "{json}");
        }
    }

    /// The standard alphabet (what `btoa` writes), padded or not, is the same key; what is not
    /// base64 in one alphabet is still refused.
    #[test]
    fn keys_in_standard_base64_are_accepted() {
        let e = "https://push.example.net/x";
        let url = PushSubscription::new(e, P256DH, AUTH).unwrap();
        let key = Base64UrlUnpadded::decode_vec(P256DH).unwrap();
        let auth = Base64UrlUnpadded::decode_vec(AUTH).unwrap();
        let std_padded = (base64ct::Base64::encode_string(&key), base64ct::Base64::encode_string(&auth));
        assert!(std_padded.0.contains(['+', '/']) && std_padded.1.ends_with("=="), "the fixture uses both alphabets' own characters");
        let std_unpadded = (base64ct::Base64Unpadded::encode_string(&key), base64ct::Base64Unpadded::encode_string(&auth));
        let url_padded = (base64ct::Base64Url::encode_string(&key), base64ct::Base64Url::encode_string(&auth));
        for (p256dh, auth) in [&std_padded, &std_unpadded, &url_padded] {
            assert_eq!(PushSubscription::new(e, p256dh, auth).as_ref(), Ok(&url), "{p256dh} {auth}");
        }
        // Mixed alphabets, wrong padding, foreign characters, leftover bits.
        let mixed = format!("{}+{}", &P256DH[..10], &P256DH[11..]);
        assert!(P256DH[..10].contains('-') || P256DH[..10].contains('_'));
        assert_eq!(PushSubscription::new(e, &mixed, AUTH), Err(SubscriptionError::P256dh));
        for bad_auth in [format!("{AUTH}="), format!("{AUTH}==="), format!("{}=", &std_padded.1[..22]), "_ordMnz7uTCmrpBTeUV4B*".to_owned(), "_ordMnz7uTCmrpBTeUV4Bx".to_owned()] {
            assert_eq!(PushSubscription::new(e, P256DH, &bad_auth), Err(SubscriptionError::Auth), "{bad_auth}");
        }
    }

    /// Found by a fresh user: `…/ID`, `…/ID#a` and `…/ID?` were three registrations of one
    /// endpoint, each pushed the same events. A fragment is refused, an empty query dropped.
    #[test]
    fn one_endpoint_has_one_spelling() {
        let plain = PushSubscription::new("https://push.example.net/x", P256DH, AUTH).unwrap();
        let empty_query = PushSubscription::new("https://push.example.net/x?", P256DH, AUTH).unwrap();
        assert_eq!(empty_query.endpoint().as_str(), plain.endpoint().as_str());
        let upper = PushSubscription::new("HTTPS://PUSH.example.net/x", P256DH, AUTH).unwrap();
        assert_eq!(upper.endpoint().as_str(), plain.endpoint().as_str());
        assert!(matches!(PushSubscription::new("https://push.example.net/x#a", P256DH, AUTH), Err(SubscriptionError::Endpoint(_))));
        assert!(matches!(PushSubscription::new("https://push.example.net/x#", P256DH, AUTH), Err(SubscriptionError::Endpoint(_))));
        // A query that says something stays.
        let query = PushSubscription::new("https://push.example.net/x?a=1", P256DH, AUTH).unwrap();
        assert_eq!(query.endpoint().query(), Some("a=1"));
    }

    #[test]
    fn round_trips_through_json() {
        let sub = PushSubscription::new("https://push.example.net/x", P256DH, AUTH).unwrap();
        let back = PushSubscription::from_json(&sub.to_json().to_string()).unwrap();
        assert_eq!(back, sub);
        assert_eq!(back.auth_base64(), AUTH);
        assert_eq!(back.p256dh_base64(), P256DH);
    }
}
