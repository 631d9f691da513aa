//! A real push service for tests and benchmarks (feature `test-push-service`).
//!
//! [`LocalPushService`] implements the receiving side of RFC 8030 over HTTPS (a fresh
//! self-signed certificate, HTTP/1.1 and HTTP/2) on 127.0.0.1. For every message it checks what
//! a real push service checks, and answers as one would:
//!
//! - an unknown subscription: 404;
//! - no `TTL`, or a bad `Urgency` or `Topic` header: 400; not `Content-Encoding: aes128gcm`: 415;
//! - a body over 4096 bytes: 413;
//! - a missing or invalid VAPID `Authorization` (signature, `aud` = this origin with its port,
//!   `exp` at most 24 h ahead, `sub`): 401; a key other than the expected one: 403;
//! - a body that does not decrypt with the subscriber's private key: 400.
//!
//! Messages that pass are decrypted and recorded; the test then reads exactly what a browser
//! would have received. Replies can be scripted per subscription (404, 410, 413, 429 with
//! `Retry-After`, 5xx…) to exercise the sender's handling of each.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64ct::{Base64UrlUnpadded, Encoding};
use rand_core::{OsRng, RngCore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::subscription::PushSubscription;
use crate::vapid::{VerifiedClaims, verify};

/// A reply the service gives instead of 201, for a scripted attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// A `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
}

impl Reply {
    /// A bare status.
    pub fn status(status: u16) -> Reply {
        Reply { status, retry_after: None }
    }

    /// A 429 with `Retry-After: secs`.
    pub fn rate_limited(secs: u64) -> Reply {
        Reply { status: 429, retry_after: Some(secs) }
    }
}

/// A message the service accepted, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceivedPush {
    /// The decrypted payload, byte for byte.
    pub payload: Vec<u8>,
    /// The encrypted body's length.
    pub body_len: usize,
    /// The `TTL` header.
    pub ttl: u64,
    /// The `Urgency` header, if any.
    pub urgency: Option<String>,
    /// The `Topic` header, if any.
    pub topic: Option<String>,
    /// The verified VAPID claims.
    pub vapid: VerifiedClaims,
}

impl ReceivedPush {
    /// The payload as JSON.
    ///
    /// # Panics
    ///
    /// Panics if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("the payload is json")
    }
}

/// One attempt to deliver, as the service answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// The status the service answered.
    pub status: u16,
    /// When it arrived, since the service started.
    pub at: Duration,
}

struct Subscriber {
    secret: p256::SecretKey,
    auth: [u8; 16],
    script: VecDeque<Reply>,
    always: Option<Reply>,
    messages: Vec<ReceivedPush>,
    attempts: Vec<Attempt>,
}

struct Shared {
    origin: String,
    started: tokio::time::Instant,
    expected_key: Mutex<Option<String>>,
    subscribers: Mutex<HashMap<String, Subscriber>>,
    record: bool,
    /// Tokens whose signature was verified, as real push services cache them (senders reuse
    /// one token per origin); `aud`, `exp` and the expected key are still checked every time.
    verified: Mutex<HashMap<String, VerifiedClaims>>,
    accepted: std::sync::atomic::AtomicU64,
    changed: watch::Sender<u64>,
}

/// A push service on 127.0.0.1 over TLS; see the [module documentation](self). Stops when
/// dropped.
pub struct LocalPushService {
    addr: SocketAddr,
    cert_pem: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LocalPushService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPushService").field("origin", &self.shared.origin).finish_non_exhaustive()
    }
}

impl Drop for LocalPushService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A subscription of the local service: what a browser's `PushSubscription` would be.
#[derive(Debug, Clone)]
pub struct TestSubscription {
    /// Its id at the service.
    pub id: String,
    /// The subscription, as a browser would send it to the application server.
    pub subscription: PushSubscription,
}

impl LocalPushService {
    /// Starts a service on a free port of 127.0.0.1, recording every accepted message.
    ///
    /// # Panics
    ///
    /// Panics if it cannot bind or build its certificate.
    pub async fn start() -> LocalPushService {
        LocalPushService::start_with(0, true).await
    }

    /// Starts a service on `port` (0: a free one); with `record` false it only counts accepted
    /// messages (for benchmarks).
    ///
    /// # Panics
    ///
    /// Panics if it cannot bind or build its certificate.
    pub async fn start_with(port: u16, record: bool) -> LocalPushService {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("a self-signed certificate");
        let cert_pem = certified.cert.pem();
        let cert_der = certified.cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .expect("a server certificate");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let shared = Arc::new(Shared {
            origin: format!("https://127.0.0.1:{}", addr.port()),
            started: tokio::time::Instant::now(),
            expected_key: Mutex::new(None),
            subscribers: Mutex::new(HashMap::new()),
            record,
            verified: Mutex::new(HashMap::new()),
            accepted: std::sync::atomic::AtomicU64::new(0),
            changed: watch::channel(0).0,
        });
        let app = Router::new()
            // A push service answers 413 to a payload over its limit (RFC 8030 section 7.2).
            .route("/push/{id}", post(axum::handler::Handler::layer(receive, tidings_http::limit_body(64 * 1024))))
            .route("/stats", get(stats))
            .with_state(shared.clone());
        let listener = TlsListener::spawn(listener, TlsAcceptor::from(Arc::new(tls)));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LocalPushService { addr, cert_pem, shared, task }
    }

    /// Its origin, `https://127.0.0.1:PORT` (the VAPID audience it expects).
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// `127.0.0.1:PORT`, for an [`EndpointPolicy`](crate::EndpointPolicy) allow-list.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Its certificate (PEM), to trust in the sender.
    pub fn root_certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Refuses (403) messages signed by any VAPID key but `public_key` (base64url), as a push
    /// service does for a subscription made with an `applicationServerKey`.
    pub fn expect_vapid_key(&self, public_key: &str) {
        *self.shared.expected_key.lock().unwrap_or_else(|e| e.into_inner()) = Some(public_key.to_owned());
    }

    /// A new subscription: a fresh P-256 key pair and auth secret, as a browser makes them.
    pub fn subscribe(&self) -> TestSubscription {
        let secret = p256::SecretKey::random(&mut OsRng);
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        let mut id_bytes = [0u8; 12];
        OsRng.fill_bytes(&mut id_bytes);
        let id = Base64UrlUnpadded::encode_string(&id_bytes);
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let public = secret.public_key().to_encoded_point(false);
        let subscription = PushSubscription::new(
            &format!("{}/push/{id}", self.shared.origin),
            &Base64UrlUnpadded::encode_string(public.as_bytes()),
            &Base64UrlUnpadded::encode_string(&auth),
        )
        .expect("a valid subscription");
        let subscriber =
            Subscriber { secret, auth, script: VecDeque::new(), always: None, messages: Vec::new(), attempts: Vec::new() };
        self.subs().insert(id.clone(), subscriber);
        TestSubscription { id, subscription }
    }

    /// Answers the next attempts for `id` with `replies`, in order, then 201 again.
    pub fn script(&self, id: &str, replies: impl IntoIterator<Item = Reply>) {
        if let Some(s) = self.subs().get_mut(id) {
            s.script.extend(replies);
        }
    }

    /// Answers every attempt for `id` with `reply` (or, with `None`, goes back to normal).
    pub fn always(&self, id: &str, reply: Option<Reply>) {
        if let Some(s) = self.subs().get_mut(id) {
            s.always = reply;
        }
    }

    /// Forgets `id`: later messages get 404 (an expired subscription).
    pub fn unsubscribe(&self, id: &str) {
        self.subs().remove(id);
    }

    /// The messages accepted for `id`, in arrival order.
    pub fn messages(&self, id: &str) -> Vec<ReceivedPush> {
        self.subs().get(id).map(|s| s.messages.clone()).unwrap_or_default()
    }

    /// Every attempt for `id` and its answer, in arrival order.
    pub fn attempts(&self, id: &str) -> Vec<Attempt> {
        self.subs().get(id).map(|s| s.attempts.clone()).unwrap_or_default()
    }

    /// Messages accepted in all.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `id` has at least `n` accepted messages, or `timeout` passes; returns them.
    pub async fn wait_for_messages(&self, id: &str, n: usize, timeout: Duration) -> Vec<ReceivedPush> {
        self.wait_until(timeout, || self.messages(id).len() >= n).await;
        self.messages(id)
    }

    /// Waits until `id` has at least `n` attempts, or `timeout` passes; returns them.
    pub async fn wait_for_attempts(&self, id: &str, n: usize, timeout: Duration) -> Vec<Attempt> {
        self.wait_until(timeout, || self.attempts(id).len() >= n).await;
        self.attempts(id)
    }

    /// Waits (notified of every change, no polling) until `done` holds or `timeout` passes.
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return done();
            }
        }
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subscriber>> {
        self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let n = shared.accepted.load(std::sync::atomic::Ordering::Relaxed);
    axum::Json(serde_json::json!({ "accepted": n })).into_response()
}

/// A refusal: the status and the text the service answers with.
type Refused = (StatusCode, String);

fn refuse(status: StatusCode, message: impl Into<String>) -> Refused {
    (status, message.into())
}

async fn receive(State(shared): State<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let response = check_and_record(&shared, &id, &headers, body);
    shared.changed.send_modify(|n| *n += 1);
    response
}

fn check_and_record(shared: &Shared, id: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut subs = shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
    let at = shared.started.elapsed();
    let Some(sub) = subs.get_mut(id) else {
        return refuse(StatusCode::NOT_FOUND, "no such subscription").into_response();
    };
    let status = match validate(shared, sub, header, &body) {
        Err((status, message)) => {
            sub.attempts.push(Attempt { status: status.as_u16(), at });
            return (status, message).into_response();
        }
        Ok(message) => {
            if let Some(reply) = sub.script.pop_front().or(sub.always) {
                sub.attempts.push(Attempt { status: reply.status, at });
                let mut response = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR).into_response();
                if let Some(secs) = reply.retry_after {
                    response.headers_mut().insert(header::RETRY_AFTER, secs.into());
                }
                return response;
            }
            if shared.record {
                sub.messages.push(message);
            }
            shared.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            StatusCode::CREATED
        }
    };
    sub.attempts.push(Attempt { status: status.as_u16(), at });
    let location = format!("{}/message/{}", shared.origin, shared.accepted.load(std::sync::atomic::Ordering::Relaxed));
    (status, [(header::LOCATION, location)]).into_response()
}

fn validate<'h>(
    shared: &Shared,
    sub: &Subscriber,
    header: impl Fn(&str) -> Option<&'h str>,
    body: &Bytes,
) -> Result<ReceivedPush, Refused> {
    let ttl = header("ttl")
        .and_then(|t| t.trim().parse::<u64>().ok())
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "TTL header is missing or invalid"))?;
    let urgency = header("urgency").map(str::to_owned);
    if urgency.as_deref().is_some_and(|u| !["very-low", "low", "normal", "high"].contains(&u)) {
        return Err(refuse(StatusCode::BAD_REQUEST, "Urgency header is invalid"));
    }
    let topic = header("topic").map(str::to_owned);
    if topic.as_deref().is_some_and(|t| crate::options::PushTopic::parse(t).is_err()) {
        return Err(refuse(StatusCode::BAD_REQUEST, "Topic header is invalid"));
    }
    if header("content-encoding") != Some("aes128gcm") {
        return Err(refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Encoding must be aes128gcm"));
    }
    if body.len() > crate::message::MAX_RECORD {
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "body is over 4096 bytes"));
    }
    let authorization = header("authorization").ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "no vapid authorization"))?;
    let cached = shared.verified.lock().unwrap_or_else(|e| e.into_inner()).get(authorization).cloned();
    let vapid = match cached {
        Some(claims) if claims.audience == shared.origin && claims.expires > unix_now() => claims,
        _ => {
            let claims = verify(authorization, &shared.origin).map_err(|e| refuse(StatusCode::UNAUTHORIZED, e))?;
            let mut verified = shared.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() > 10_000 {
                verified.clear();
            }
            verified.insert(authorization.to_owned(), claims.clone());
            claims
        }
    };
    let expected = shared.expected_key.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if expected.is_some_and(|k| k != vapid.public_key) {
        return Err(refuse(StatusCode::FORBIDDEN, "vapid key does not match the subscription's"));
    }
    let auth = web_push_native::Auth::clone_from_slice(&sub.auth);
    let payload = web_push_native::decrypt(body.to_vec(), &sub.secret, &auth)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("body does not decrypt: {e}")))?;
    Ok(ReceivedPush { payload, body_len: body.len(), ttl, urgency, topic, vapid })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop.
struct TlsListener {
    streams: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(listener: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        let local = listener.local_addr().expect("its address");
        let (tx, streams) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { continue };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { streams, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.streams.recv().await {
            Some(stream) => stream,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
