//! Authorization the way Mercure does it (feature `jwt`): a JSON Web Token, sent as
//! `Authorization: Bearer <token>` or in the cookie `tidingsAuthorization` (browsers'
//! `EventSource` cannot set headers, but sends cookies), whose claims list the topics the
//! client may read:
//!
//! ```json
//! { "sub": "alice", "exp": 1767225600, "tidings": { "subscribe": ["private/alice", "rooms/42/*"] } }
//! ```
//!
//! A pattern is a topic name, or a prefix ending in `*` (`"*"` alone: every topic). `sub`, if
//! present, names the recipient (presence, Web Push's per-recipient limits). `exp` is required.
//!
//! Topics are public unless [`JwtAuthorizer::protect`] says otherwise (by default every topic is
//! protected). A subscription naming a protected topic needs a valid token listing it: no token
//! is a 401, a token that does not list it a 403. A token that is present but invalid (bad
//! signature, wrong algorithm, expired, malformed) is a 401 whatever the topics, so that a client
//! learns at once that its session is over.
//!
//! Replay follows the same rule, because the hub authorizes the topics a request names before
//! it reads anything, and a cursor only moves the topics of its own subscription: a cursor taken
//! from someone else's stream yields nothing of a topic the token does not list.
//!
//! ```
//! use tidings_http::jwt::JwtAuthorizer;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let secret = b"a secret of at least 32 bytes, please!!";
//! let hub = tidings_core::Hub::builder(tidings_core::MemoryStore::new())
//!     .authorize(JwtAuthorizer::hs256(secret).protect(|topic| topic.as_str().starts_with("private/")))
//!     .build();
//! // What a login route would hand to the browser (as an HttpOnly cookie, say):
//! let token = tidings_http::jwt::sign_hs256(secret, Some("alice"), &["private/alice"], std::time::Duration::from_secs(3600));
//! # let _ = (hub, token);
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tidings_core::{AccessRequest, Authorize, Credentials, Refusal, Topic};

/// The cookie a token is read from when no `Authorization` header carries one.
pub const COOKIE: &str = "tidingsAuthorization";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    tidings: TidingsClaims,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TidingsClaims {
    #[serde(default)]
    subscribe: Vec<String>,
}

type Protect = dyn Fn(&Topic) -> bool + Send + Sync;

/// An [`Authorize`] hook that reads topics from a JWT: see the [module documentation](self).
pub struct JwtAuthorizer {
    key: DecodingKey,
    validation: Validation,
    protect: Box<Protect>,
}

impl fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthorizer").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl JwtAuthorizer {
    /// Tokens signed with HMAC-SHA256 and the shared `secret` (Mercure's default).
    pub fn hs256(secret: &[u8]) -> JwtAuthorizer {
        JwtAuthorizer::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Tokens signed with ECDSA P-256 (`ES256`), verified with a PEM public key.
    ///
    /// # Errors
    ///
    /// The PEM text is not an EC public key.
    pub fn es256_pem(public_key: &[u8]) -> Result<JwtAuthorizer, jsonwebtoken::errors::Error> {
        Ok(JwtAuthorizer::new(DecodingKey::from_ec_pem(public_key)?, Algorithm::ES256))
    }

    /// Tokens signed with RSA (`RS256`), verified with a PEM public key.
    ///
    /// # Errors
    ///
    /// The PEM text is not an RSA public key.
    pub fn rs256_pem(public_key: &[u8]) -> Result<JwtAuthorizer, jsonwebtoken::errors::Error> {
        Ok(JwtAuthorizer::new(DecodingKey::from_rsa_pem(public_key)?, Algorithm::RS256))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> JwtAuthorizer {
        // One algorithm only: a token cannot pick a weaker one (or `none`) for itself.
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        JwtAuthorizer { key, validation, protect: Box::new(|_| true) }
    }

    /// Which topics need a token (default: all). Others are readable by anyone; a token, if
    /// sent, must still be valid.
    pub fn protect(mut self, protected: impl Fn(&Topic) -> bool + Send + Sync + 'static) -> JwtAuthorizer {
        self.protect = Box::new(protected);
        self
    }

    /// The token of a request: the `Authorization: Bearer` header, else the cookie.
    fn token(credentials: &dyn Credentials) -> Option<&str> {
        let header = credentials.header("authorization").and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        header.or_else(|| credentials.cookie(COOKIE)).filter(|t| !t.is_empty())
    }

    fn claims(&self, credentials: &dyn Credentials) -> Result<Option<Claims>, Refusal> {
        let Some(token) = JwtAuthorizer::token(credentials) else { return Ok(None) };
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(Some(data.claims)),
            Err(err) => Err(Refusal::unauthenticated(format!("invalid token: {err}"))),
        }
    }
}

/// Whether `pattern` (a topic, or a prefix ending in `*`) covers `topic`.
fn covers(pattern: &str, topic: &Topic) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.as_str().starts_with(prefix),
        None => pattern == topic.as_str(),
    }
}

#[async_trait]
impl Authorize for JwtAuthorizer {
    async fn authorize(&self, request: &AccessRequest<'_>) -> Result<(), Refusal> {
        let claims = self.claims(request.credentials)?;
        for topic in request.topics.iter().filter(|t| (self.protect)(t)) {
            let Some(claims) = &claims else {
                return Err(Refusal::unauthenticated(format!("a token is needed to read {topic}")));
            };
            if !claims.tidings.subscribe.iter().any(|p| covers(p, topic)) {
                return Err(Refusal::forbidden(format!("the token does not allow {topic}")));
            }
        }
        Ok(())
    }

    fn identify(&self, request: &AccessRequest<'_>) -> Option<String> {
        self.claims(request.credentials).ok().flatten()?.sub
    }
}

/// Signs an HS256 token for `sub` that allows `topics` (patterns as above) for `ttl`: what a
/// login route hands out, and what tests use.
///
/// # Panics
///
/// Never in practice: HS256 signing of a serializable claim set cannot fail.
pub fn sign_hs256(secret: &[u8], sub: Option<&str>, topics: &[&str], ttl: Duration) -> String {
    let claims = Claims {
        sub: sub.map(str::to_owned),
        exp: jsonwebtoken::get_current_timestamp() + ttl.as_secs(),
        tidings: TidingsClaims { subscribe: topics.iter().map(|t| (*t).to_owned()).collect() },
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing does not fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::NoCredentials;

    struct Bearer(String);
    impl Credentials for Bearer {
        fn header(&self, name: &str) -> Option<&str> {
            (name == "authorization").then_some(self.0.as_str())
        }
        fn query(&self, _: &str) -> Option<&str> {
            None
        }
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    async fn check(auth: &JwtAuthorizer, credentials: &dyn Credentials, topics: &[&str]) -> Result<(), Refusal> {
        let topics: Vec<Topic> = topics.iter().map(|t| Topic::new(t)).collect();
        auth.authorize(&AccessRequest::new("test", &topics, None, credentials)).await
    }

    #[tokio::test]
    async fn claims_list_the_topics_a_token_may_read() {
        let auth = JwtAuthorizer::hs256(SECRET);
        let token = sign_hs256(SECRET, Some("alice"), &["private/alice", "rooms/*"], Duration::from_secs(60));
        let alice = Bearer(format!("Bearer {token}"));
        assert_eq!(check(&auth, &alice, &["private/alice", "rooms/1", "rooms/2/x"]).await, Ok(()));
        assert!(matches!(check(&auth, &alice, &["private/bob"]).await, Err(Refusal::Forbidden(_))));
        assert!(matches!(check(&auth, &alice, &["room"]).await, Err(Refusal::Forbidden(_))));
        assert!(matches!(check(&auth, &NoCredentials, &["rooms/1"]).await, Err(Refusal::Unauthenticated(_))));
        let topics = [Topic::new("private/alice")];
        assert_eq!(auth.identify(&AccessRequest::new("test", &topics, None, &alice)).as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn forged_expired_and_other_algorithm_tokens_are_401() {
        let auth = JwtAuthorizer::hs256(SECRET).protect(|t| t.as_str().starts_with("private/"));
        let forged = sign_hs256(b"another secret of thirty-two bytes!!", None, &["*"], Duration::from_secs(60));
        let expired = {
            let claims = Claims { sub: None, exp: 1, tidings: TidingsClaims { subscribe: vec!["*".into()] } };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
        };
        let hs512 = {
            let claims = Claims { sub: None, exp: u64::MAX / 2, tidings: TidingsClaims { subscribe: vec!["*".into()] } };
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
        };
        // `alg: none` with the claims of a valid token.
        let none = {
            let valid = sign_hs256(SECRET, None, &["*"], Duration::from_secs(60));
            let payload = valid.split('.').nth(1).unwrap().to_owned();
            format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
        };
        for token in [forged, expired, hs512, none, "garbage".into(), "a.b.c".into()] {
            let credentials = Bearer(format!("Bearer {token}"));
            for topics in [&["private/x"][..], &["public"][..]] {
                let answer = check(&auth, &credentials, topics).await;
                assert!(matches!(&answer, Err(Refusal::Unauthenticated(m)) if m.starts_with("invalid token")), "{token}: {answer:?}");
            }
        }
        // Without a token, public topics are open and protected ones need one.
        assert_eq!(check(&auth, &NoCredentials, &["public"]).await, Ok(()));
        assert!(matches!(check(&auth, &NoCredentials, &["private/x"]).await, Err(Refusal::Unauthenticated(_))));
    }

    #[tokio::test]
    async fn the_cookie_carries_a_token_when_no_header_does() {
        struct Cookie(String);
        impl Credentials for Cookie {
            fn header(&self, name: &str) -> Option<&str> {
                (name == "cookie").then_some(self.0.as_str())
            }
            fn query(&self, _: &str) -> Option<&str> {
                None
            }
        }
        let auth = JwtAuthorizer::hs256(SECRET);
        let token = sign_hs256(SECRET, None, &["news"], Duration::from_secs(60));
        let cookie = Cookie(format!("theme=dark; {COOKIE}={token}"));
        assert_eq!(check(&auth, &cookie, &["news"]).await, Ok(()));
    }
}
