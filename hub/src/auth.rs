//! JSON Web Tokens as Mercure's publishers and subscribers carry them (draft-dunglas-mercure-07,
//! "Authorization"): the claim `mercure` holds `publish` and `subscribe`, lists of topic
//! selectors, and `payload`, any JSON the hub hands on in subscription events.
//!
//! ```json
//! { "mercure": { "publish": ["*"], "subscribe": ["https://example.com/users/{id}"], "payload": {"user": 1} } }
//! ```
//!
//! `exp` is optional (Mercure's publisher libraries often leave it out); when present it is
//! checked, and so is `nbf`. Both are RFC 7519 NumericDates, which may have a fraction: the
//! Symfony library (through lcobucci/jwt) writes `"exp": 1796060601.928842`. `aud` is not
//! checked (draft-07 gives it no meaning).

use std::fmt;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The cookie a subscriber's token may come in (draft-07: `mercureAuthorization`).
pub const COOKIE: &str = "mercureAuthorization";
/// The query parameter a subscriber's token may come in, when neither a header nor a cookie
/// can carry it.
pub const QUERY: &str = "authorization";

/// The `mercure` claim.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MercureClaim {
    /// Selectors of the topics the bearer may publish to.
    #[serde(default)]
    pub publish: Option<Vec<String>>,
    /// Selectors of the topics whose private updates the bearer may receive.
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
    /// Handed on in subscription events.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
}

/// The claims the hub reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claims {
    /// The Mercure claim (absent: no rights).
    #[serde(default)]
    pub mercure: MercureClaim,
    /// Expiry, in seconds since the Unix epoch (a fraction allowed).
    #[serde(default)]
    pub exp: Option<f64>,
    /// Not before, in seconds since the Unix epoch (a fraction allowed).
    #[serde(default)]
    pub nbf: Option<f64>,
    /// The subject (RFC 7519): whose token it is, when the issuer says.
    #[serde(default)]
    pub sub: Option<String>,
}

/// Seconds a token's `exp` and `nbf` may be off by (clocks differ).
pub const LEEWAY: f64 = 5.0;

/// Checks tokens signed with one key and one algorithm (a token cannot pick its own).
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    fingerprint: String,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `algorithm` (`HS256`, `HS384`, `HS512`: `key` is the shared secret;
    /// `RS256`…`RS512`, `PS256`…`PS512`: an RSA public key in PEM; `ES256`, `ES384`: an EC
    /// public key in PEM; `EdDSA`: an Ed25519 public key in PEM), as Mercure's
    /// `MERCURE_*_JWT_KEY` and `MERCURE_*_JWT_ALG` name them.
    ///
    /// # Errors
    ///
    /// An unknown algorithm, or a key that is not of its kind.
    pub fn new(algorithm: &str, key: &[u8]) -> Result<Verifier, String> {
        let key_bytes = key;
        let algorithm: Algorithm = algorithm.parse().map_err(|_| format!("unknown JWT algorithm {algorithm:?}"))?;
        let pem_error = |e: jsonwebtoken::errors::Error| format!("the {algorithm:?} key is not a PEM public key of its kind: {e}");
        let key = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                if key.is_empty() {
                    return Err("the JWT key is empty".to_owned());
                }
                DecodingKey::from_secret(key)
            }
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
                DecodingKey::from_rsa_pem(key).map_err(pem_error)?
            }
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(key).map_err(pem_error)?,
            Algorithm::EdDSA => DecodingKey::from_ed_pem(key).map_err(pem_error)?,
        };
        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        // jsonwebtoken reads `exp` and `nbf` as whole numbers only: `verify` checks them.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // A PEM key is the same key however its lines are broken: whitespace is not hashed.
        let hashed: Vec<u8> = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => key_bytes.to_vec(),
            _ => key_bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect(),
        };
        let fingerprint = fingerprint(&format!("{algorithm:?}"), &hashed);
        Ok(Verifier { key, validation, fingerprint })
    }

    /// What tells this verifier's key from another, without giving the key away: 16 hex digits
    /// of the SHA-256 of the algorithm and the key. Web Push registrations keep the fingerprint
    /// of the key that checked their token, so that a new key revokes them, as it revokes the
    /// tokens (`crate::push`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The claims of `token`.
    ///
    /// # Errors
    ///
    /// A bad signature, another algorithm, an expired or malformed token: the reason.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| format!("invalid token: {e}"))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        if claims.exp.is_some_and(|exp| exp + LEEWAY <= now) {
            return Err("invalid token: expired (exp)".to_owned());
        }
        if claims.nbf.is_some_and(|nbf| nbf - LEEWAY > now) {
            return Err("invalid token: not valid yet (nbf)".to_owned());
        }
        Ok(claims)
    }
}

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer`.
    Header,
    /// The `authorization` query parameter.
    Query,
    /// The `mercureAuthorization` cookie: sent by the browser on its own, so a publish with it
    /// must come from an allowed origin.
    Cookie,
}

/// The token of a request and where it came from: `Authorization: Bearer`, else the
/// `authorization` query parameter, else the `mercureAuthorization` cookie (the draft's order:
/// when the header is there, the others are ignored). `None`: no token.
///
/// # Errors
///
/// An `Authorization` header that is not one `Bearer` token: the reason (a 401).
pub fn token<'a>(headers: &'a HeaderMap, query: &'a [(String, String)]) -> Result<Option<(&'a str, Source)>, String> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = values.next() {
        let bearer = value.to_str().ok().and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
        });
        return match (bearer, values.next()) {
            (Some(token), None) => Ok(Some((token, Source::Header))),
            _ => Err("the Authorization header must be one `Bearer` token".to_owned()),
        };
    }
    if let Some((_, token)) = query.iter().find(|(k, v)| k == QUERY && !v.is_empty()) {
        return Ok(Some((token, Source::Query)));
    }
    let cookie = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| (value, Source::Cookie));
    Ok(cookie)
}

/// The origin a browser says a request comes from: its `Origin` header, else the origin of its
/// `Referer`.
pub fn origin(headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return Some(origin.to_owned());
    }
    let referer = headers.get(http::header::REFERER)?.to_str().ok()?;
    let uri: http::Uri = referer.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

fn fingerprint(algorithm: &str, key: &[u8]) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(b"tidings-hub key\0");
    context.update(algorithm.as_bytes());
    context.update(b"\0");
    context.update(key);
    context.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}
