//! Sending one encrypted, VAPID-signed message, and what the push service's answer means.

use std::fmt;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;

use crate::endpoint::{EndpointError, EndpointPolicy};
use crate::keys::VapidKeys;
use crate::message::{MAX_PLAINTEXT, MAX_RECORD};
use crate::options::PushOptions;
use crate::subscription::PushSubscription;
use crate::vapid::{Contact, VapidSigner};

/// What a push service answered, sorted by what the sender should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendOutcome {
    /// 201 or 202: accepted.
    Delivered,
    /// 404 or 410: the subscription is gone; delete it.
    Gone(u16),
    /// 413: the push service wants a smaller body.
    TooLarge,
    /// 429: wait (`Retry-After`, if the service gave one) and try again.
    RateLimited(Option<Duration>),
    /// 5xx, or the connection failed: try again later, within the TTL.
    Unavailable(String),
    /// Any other answer (400, 401, 403, …): retrying will not help. The text says what the
    /// service said.
    Rejected(u16, String),
    /// The endpoint is not allowed by the [`EndpointPolicy`] (checked again at send time).
    Refused(EndpointError),
}

/// Sends encrypted, VAPID-signed push messages over one shared HTTPS connection pool
/// (keep-alive, HTTP/2 where the push service offers it).
#[derive(Clone)]
pub struct PushSender {
    client: reqwest::Client,
    signer: std::sync::Arc<VapidSigner>,
    policy: EndpointPolicy,
}

impl fmt::Debug for PushSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushSender").field("signer", &self.signer).field("policy", &self.policy).finish()
    }
}

/// Why a sender could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum SenderError {
    /// A root certificate did not parse.
    Certificate(String),
    /// The HTTP client could not be built.
    Client(String),
}

impl fmt::Display for SenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderError::Certificate(e) => write!(f, "root certificate: {e}"),
            SenderError::Client(e) => write!(f, "http client: {e}"),
        }
    }
}

impl std::error::Error for SenderError {}

impl PushSender {
    /// A sender signing with `keys` for `contact`, under `policy`, trusting the system's root
    /// certificates plus `extra_roots` (PEM; for a private or test push service).
    pub fn new(
        keys: VapidKeys,
        contact: Contact,
        policy: EndpointPolicy,
        extra_roots: &[String],
    ) -> Result<PushSender, SenderError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(policy.resolver())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("tidings-webpush/", env!("CARGO_PKG_VERSION")));
        for pem in extra_roots {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| SenderError::Certificate(e.to_string()))?;
            if certs.is_empty() {
                return Err(SenderError::Certificate("no certificate in the PEM text".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| SenderError::Client(e.to_string()))?;
        Ok(PushSender { client, signer: std::sync::Arc::new(VapidSigner::new(keys, contact)), policy })
    }

    /// The VAPID keys.
    pub fn keys(&self) -> &VapidKeys {
        self.signer.keys()
    }

    /// The endpoint policy.
    pub fn policy(&self) -> &EndpointPolicy {
        &self.policy
    }

    /// Encrypts `plaintext` for `subscription` (RFC 8291, one `aes128gcm` record) and posts it.
    ///
    /// A `plaintext` longer than [`MAX_PLAINTEXT`] does not fit one record: it is not sent, and
    /// the outcome is [`SendOutcome::TooLarge`], as when a push service answers 413 (the caller
    /// decides what to send instead: see [`crate::message`]).
    pub async fn send(&self, subscription: &PushSubscription, plaintext: &[u8], options: &PushOptions) -> SendOutcome {
        if plaintext.len() > MAX_PLAINTEXT {
            return SendOutcome::TooLarge;
        }
        let endpoint = subscription.endpoint();
        if let Err(err) = self.policy.check_syntax(endpoint) {
            return SendOutcome::Refused(err);
        }
        let body = match crate::encrypt::encrypt(plaintext, subscription.p256dh_bytes(), subscription.auth()) {
            Ok(body) => body,
            Err(_) => return SendOutcome::Rejected(0, "encryption failed".into()),
        };
        debug_assert!(body.len() <= MAX_RECORD);
        let mut request = self
            .client
            .post(endpoint.clone())
            .header("TTL", options.ttl.as_secs().to_string())
            .header("Urgency", options.urgency.as_str())
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(AUTHORIZATION, self.signer.authorization(endpoint));
        if let Some(topic) = &options.topic {
            request = request.header("Topic", topic.as_str());
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(err) => {
                // A refusal by the resolver surfaces as a connect error; find it.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
                while let Some(e) = source {
                    if let Some(refused) = e.downcast_ref::<EndpointError>() {
                        return SendOutcome::Refused(refused.clone());
                    }
                    source = e.source();
                }
                return SendOutcome::Unavailable(error_chain(&err));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match status {
            StatusCode::CREATED | StatusCode::ACCEPTED | StatusCode::OK => SendOutcome::Delivered,
            StatusCode::NOT_FOUND | StatusCode::GONE => SendOutcome::Gone(status.as_u16()),
            StatusCode::PAYLOAD_TOO_LARGE => SendOutcome::TooLarge,
            StatusCode::TOO_MANY_REQUESTS => SendOutcome::RateLimited(retry_after),
            s if s.is_server_error() => SendOutcome::Unavailable(format!("push service answered {s}")),
            s => {
                let mut text = response.text().await.unwrap_or_default();
                text.truncate(200);
                SendOutcome::Rejected(s.as_u16(), text)
            }
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
