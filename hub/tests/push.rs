//! Web Push on the hub, against a real push service on loopback (TLS, VAPID checked, payloads
//! decrypted with the subscriber's private key): the updates a subscription would get, with
//! the same ids, private ones only for a matching token, a resume after a restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestHub, settings, subscriber, token};
use tidings_webpush::testing::{LocalPushService, TestSubscription};
use tidings_webpush::{EndpointPolicy, MemoryRegistry, PushRegistry, SqlitePushRegistry, VapidKeys, WebPush};

const WAIT: Duration = Duration::from_secs(20);
const BOOKS: &str = "https://example.com/books/{id}";

/// Starts Web Push on `hub` with `registry`, signing for `service`.
async fn enable(hub: &TestHub, service: &LocalPushService, keys: VapidKeys, registry: impl PushRegistry) -> WebPush {
    enable_with(hub, service, keys, registry, |b| b).await
}

/// [`enable`], with more settings on the builder.
async fn enable_with(
    hub: &TestHub,
    service: &LocalPushService,
    keys: VapidKeys,
    registry: impl PushRegistry,
    configure: impl FnOnce(tidings_webpush::WebPushBuilder) -> tidings_webpush::WebPushBuilder,
) -> WebPush {
    service.expect_vapid_key(keys.public_key_base64());
    let builder = hub
        .mercure
        .push_builder(registry, keys, "mailto:ops@example.com")
        .unwrap()
        .endpoint_policy(EndpointPolicy::default().allow(&service.host_port()).unwrap())
        .add_root_certificate(service.root_certificate_pem())
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50));
    let push = hub.mercure.start_push(configure(builder)).await.unwrap();
    assert!(matches!(
        hub.mercure.start_push(hub.mercure.push_builder(MemoryRegistry::new(), VapidKeys::generate(), "mailto:a@b.c").unwrap()).await,
        Err(tidings_hub::PushError::AlreadyStarted)
    ));
    push
}

/// Registers `sub` for `topics` (with `lastEventID` and a bearer token when given): the status
/// and the JSON answer.
async fn register(
    hub: &TestHub,
    sub: &TestSubscription,
    topics: &[&str],
    last_event_id: Option<&str>,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut body = sub.subscription.to_json();
    body["topic"] = serde_json::json!(topics);
    if let Some(id) = last_event_id {
        body["lastEventID"] = serde_json::json!(id);
    }
    let mut request = hub
        .http
        .post(format!("{}/.well-known/mercure/push", hub.url))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(serde_json::Value::Null),
    )
}

/// The pushes `sub` received up to and including the one whose data is `marker`, as JSON.
async fn pushes_until(service: &LocalPushService, sub: &TestSubscription, marker: &str) -> Vec<serde_json::Value> {
    let found = service
        .wait_until(WAIT, || {
            service.messages(&sub.id).iter().any(|m| m.json()["data"] == marker)
        })
        .await;
    assert!(
        found,
        "{marker:?} not pushed within {WAIT:?}; got {:?}",
        datas(&service.messages(&sub.id).iter().map(|m| m.json()).collect::<Vec<_>>())
    );
    service.messages(&sub.id).iter().map(|m| m.json()).collect()
}

/// Waits until `check` holds, for server-side state that notifies nobody (the dispatcher's
/// counters, its registry), looking every 10 ms up to [`WAIT`]; fails naming `what`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn datas(pushes: &[serde_json::Value]) -> Vec<String> {
    pushes
        .iter()
        .map(|p| p["data"].as_str().unwrap_or("<none>").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_carry_what_the_selectors_and_token_let_through_with_the_publishers_ids() {
    let hub = TestHub::memory().await;
    let service = LocalPushService::start().await;
    let push = enable(
        &hub,
        &service,
        VapidKeys::generate(),
        MemoryRegistry::new(),
    )
    .await;
    let anonymous = service.subscribe();
    let (status, answer) = register(&hub, &anonymous, &[BOOKS, "end"], None, None).await;
    assert_eq!(status, 201, "{answer}");
    assert!(
        answer["lastEventID"].as_str().unwrap().starts_with("urn:tidings:"),
        "where pushing starts: {answer}"
    );
    let authorized = service.subscribe();
    let token = subscriber(&[BOOKS]);
    assert_eq!(
        register(&hub, &authorized, &[BOOKS, "end"], None, Some(&token)).await.0,
        201
    );
    let other_private = service.subscribe();
    let authors = subscriber(&["https://example.com/authors/{id}"]);
    assert_eq!(
        register(&hub, &other_private, &[BOOKS, "end"], None, Some(&authors))
            .await
            .0,
        201
    );

    let typed = [
        ("topic", "https://example.com/books/1"),
        ("data", "one"),
        ("id", "urn:uuid:one"),
        ("type", "change"),
    ];
    assert_eq!(hub.post(Some(&common::publisher(&["*"])), &typed).await.0, 200);
    let hub_made = hub.publish(&["https://example.com/books/2"], "two").await;
    hub.publish(&["https://example.com/authors/1"], "not a book").await;
    let private = [
        ("topic", "https://example.com/books/3"),
        ("data", "secret"),
        ("private", "on"),
    ];
    assert_eq!(hub.post(Some(&common::publisher(&["*"])), &private).await.0, 200);
    // Private, with an alternate topic that the authors token matches.
    let alternate = [
        ("topic", "https://example.com/books/4"),
        ("topic", "https://example.com/authors/9"),
        ("data", "secret by alternate"),
        ("private", "on"),
    ];
    assert_eq!(hub.post(Some(&common::publisher(&["*"])), &alternate).await.0, 200);
    hub.publish(&["end"], "end").await;

    // Each registration's pushes arrive in order, so at "end" it has had everything before.
    let got = pushes_until(&service, &anonymous, "end").await;
    assert_eq!(datas(&got), ["one", "two", "end"]);
    assert_eq!(
        (got[0]["id"].as_str(), got[0]["type"].as_str()),
        (Some("urn:uuid:one"), Some("change"))
    );
    assert_eq!(
        (got[1]["id"].as_str(), got[1]["type"].as_str()),
        (Some(hub_made.as_str()), None)
    );
    let got_authorized = pushes_until(&service, &authorized, "end").await;
    assert_eq!(
        datas(&got_authorized),
        ["one", "two", "secret", "secret by alternate", "end"]
    );
    let got_other = pushes_until(&service, &other_private, "end").await;
    assert_eq!(datas(&got_other), ["one", "two", "secret by alternate", "end"]);

    // `lastEventID` is where the subscriber stands: a long poll from the one after "one"
    // starts at "two" (for this selector), and one from the last is empty.
    let poll = |last: String| {
        let url = format!("{}/.well-known/mercure/poll", hub.url);
        let http = hub.http.clone();
        async move {
            let answer = http
                .get(url)
                .query(&[
                    ("topic", BOOKS),
                    ("topic", "end"),
                    ("lastEventID", &last),
                    ("timeout", "0"),
                ])
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
            answer["updates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["data"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        poll(got[0]["lastEventID"].as_str().unwrap().to_owned()).await,
        ["two", "end"]
    );
    assert!(
        poll(got[2]["lastEventID"].as_str().unwrap().to_owned())
            .await
            .is_empty()
    );
    eventually("every push counted", || async { push.stats().delivered >= 3 + 5 + 4 }).await;
    assert_eq!(push.stats().delivered, 3 + 5 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_too_large_for_a_push_is_pushed_without_data_and_fetched_by_long_poll() {
    let hub = TestHub::memory().await;
    let service = LocalPushService::start().await;
    enable(
        &hub,
        &service,
        VapidKeys::generate(),
        MemoryRegistry::new(),
    )
    .await;
    let sub = service.subscribe();
    assert_eq!(register(&hub, &sub, &["big"], None, None).await.0, 201);
    let large = "é".repeat(3000);
    let fields = [
        ("topic", "big"),
        ("data", large.as_str()),
        ("id", "urn:large"),
        ("type", "bulk"),
    ];
    assert_eq!(hub.post(Some(&common::publisher(&["*"])), &fields).await.0, 200);
    hub.publish(&["big"], "small").await;
    let got = pushes_until(&service, &sub, "small").await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["truncated"], true);
    assert!(got[0].get("data").is_none(), "never cut: no data at all");
    assert_eq!(
        (got[0]["id"].as_str(), got[0]["type"].as_str()),
        (Some("urn:large"), Some("bulk"))
    );
    assert!(service.messages(&sub.id)[0].body_len <= 4096);
    let answer = hub
        .http
        .get(format!("{}/.well-known/mercure/poll", hub.url))
        .query(&[
            ("topic", "big"),
            ("lastEventID", got[0]["after"].as_str().unwrap()),
            ("timeout", "0"),
        ])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["updates"][0]["id"], "urn:large");
    assert_eq!(answer["updates"][0]["data"].as_str(), Some(large.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_resumes_after_its_last_event_id_and_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("tidings-hub-push-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store: Arc<dyn tidings_core::Store> = Arc::new(tidings_core::MemoryStore::new());
    let service = LocalPushService::start().await;
    let keys = VapidKeys::load_or_generate(dir.join("vapid.key")).unwrap();

    let first = TestHub::start(store.clone(), settings()).await;
    let push = enable(
        &first,
        &service,
        keys.clone(),
        SqlitePushRegistry::open(dir.join("push.db")).await.unwrap(),
    )
    .await;
    let fields = [
        ("topic", "https://example.com/books/1"),
        ("data", "before"),
        ("id", "urn:before"),
    ];
    assert_eq!(first.post(Some(&common::publisher(&["*"])), &fields).await.0, 200);
    first.publish(&["https://example.com/books/2"], "missed").await;
    let sub = service.subscribe();
    let (status, answer) = register(&first, &sub, &[BOOKS], Some("urn:before"), None).await;
    assert_eq!(
        (
            status,
            answer["lastEventID"].as_str().map(|s| s.starts_with("urn:tidings:"))
        ),
        (201, Some(true))
    );
    first.publish(&["https://example.com/books/3"], "live").await;
    assert_eq!(datas(&pushes_until(&service, &sub, "live").await), ["missed", "live"]);
    // An id no update has: a gap notice, then every update the log holds.
    let lost = service.subscribe();
    assert_eq!(register(&first, &lost, &[BOOKS], Some("urn:nobody"), None).await.0, 201);
    let got = pushes_until(&service, &lost, "live").await;
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["data"].as_str()),
        (Some("tidings.gap"), Some("{\"reason\":\"unknown-id\"}"))
    );
    assert_eq!(datas(&got[1..]), ["before", "missed", "live"]);

    // The hub stops; an update is published while it is away; it starts again with the same
    // key and registry, and pushes that one only.
    push.shutdown();
    drop(first);
    let second = TestHub::start(store.clone(), settings()).await;
    second.publish(&["https://example.com/books/4"], "while away").await;
    let push = enable(
        &second,
        &service,
        keys,
        SqlitePushRegistry::open(dir.join("push.db")).await.unwrap(),
    )
    .await;
    assert_eq!(push.stats().subscriptions, 2);
    second.publish(&["https://example.com/books/5"], "after").await;
    assert_eq!(
        datas(&pushes_until(&service, &sub, "after").await),
        ["missed", "live", "while away", "after"]
    );
    // Unregistered: 204, then 404; the registry forgets it.
    let delete = |endpoint: String| {
        let request = second
            .http
            .delete(format!("{}/.well-known/mercure/push", second.url))
            .body(serde_json::json!({ "endpoint": endpoint }).to_string());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Spelled otherwise than registered: the same endpoint.
    let endpoint = sub.subscription.endpoint().to_string();
    assert_eq!(delete(format!("HTTPS{}?", &endpoint["https".len()..])).await, 204);
    assert_eq!(delete(sub.subscription.endpoint().to_string()).await, 404);
    let left = SqlitePushRegistry::open(dir.join("push.db"))
        .await
        .unwrap()
        .all()
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    push.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_ends_when_its_token_expires() {
    let hub = TestHub::memory().await;
    let service = LocalPushService::start().await;
    let registry = Arc::new(MemoryRegistry::new());
    let push = enable(&hub, &service, VapidKeys::generate(), registry.clone()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // Expired 4 s ago, within the 5 s leeway: accepted, and lapses a second from now.
    let expiring = token(
        common::SUBSCRIBER_KEY,
        serde_json::json!({ "exp": now - 4.0, "mercure": { "subscribe": ["*"] } }),
    );
    let sub = service.subscribe();
    assert_eq!(register(&hub, &sub, &["a"], None, Some(&expiring)).await.0, 201);
    eventually("the registration lapses", || async { push.stats().lapsed > 0 }).await;
    assert!(registry.all().await.unwrap().is_empty());
    // Its task ended, and its subscription to the log with it: nothing more can be pushed.
    let core = hub.mercure.hub().clone();
    eventually("its subscription ends", || async { core.subscriber_count() == 0 && push.stats().subscriptions == 0 }).await;
    // Past the leeway: refused at once.
    let expired = token(
        common::SUBSCRIBER_KEY,
        serde_json::json!({ "exp": now - 60.0, "mercure": { "subscribe": ["*"] } }),
    );
    assert_eq!(
        register(&hub, &service.subscribe(), &["a"], None, Some(&expired))
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_get_a_status_and_a_reason() {
    let hub = TestHub::start(
        Arc::new(tidings_core::MemoryStore::new()),
        tidings_hub::Settings {
            anonymous: false,
            ..settings()
        },
    )
    .await;
    let service = LocalPushService::start().await;
    let sub = service.subscribe();
    let key_url = format!("{}/.well-known/mercure/push/vapid-public-key", hub.url);
    // Not enabled yet: 404 with a reason, for every route.
    let (status, answer) = register(&hub, &sub, &["a"], None, Some(&subscriber(&[]))).await;
    assert_eq!(status, 404);
    assert!(answer["error"].as_str().unwrap().contains("--push"), "{answer}");
    assert_eq!(hub.http.get(&key_url).send().await.unwrap().status(), 404);

    let push = enable(
        &hub,
        &service,
        VapidKeys::generate(),
        MemoryRegistry::new(),
    )
    .await;
    let key = hub.http.get(&key_url).send().await.unwrap();
    assert_eq!(key.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(key.text().await.unwrap(), push.public_key());
    let token = subscriber(&[]);
    for (topics, bearer, status, reason) in [
        (vec!["a"], None, 401, "token"),
        (vec!["a"], Some("not a jwt"), 401, "invalid token"),
        (vec![], Some(token.as_str()), 400, "topic"),
        (vec![""], Some(token.as_str()), 400, "empty"),
    ] {
        let (got, answer) = register(&hub, &sub, &topics, None, bearer).await;
        assert_eq!(got, status, "{topics:?} {bearer:?}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{answer}");
    }
    let post = |body: String| {
        let request = hub
            .http
            .post(format!("{}/.well-known/mercure/push", hub.url))
            .header("content-type", "application/json")
            .bearer_auth(&token)
            .body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post("{".into()).await, 400);
    assert_eq!(
        post(r#"{"endpoint":"https://127.0.0.1:1/x","keys":{"p256dh":"AAAA","auth":"AAAA"},"topic":"a"}"#.into()).await,
        400
    );
    // A private address that the policy does not allow.
    let mut private = sub.subscription.to_json();
    private["endpoint"] = serde_json::json!("https://10.0.0.1/push/x");
    private["topic"] = serde_json::json!("a");
    assert_eq!(post(private.to_string()).await, 400);
    assert_eq!(post("x".repeat(tidings_hub::push::MAX_BODY + 1)).await, 413);
    assert_eq!(push.stats().subscriptions, 0);
    // One selector as a string is a list of one.
    let mut one = sub.subscription.to_json();
    one["topic"] = serde_json::json!("a");
    assert_eq!(post(one.to_string()).await, 201);
}

/// Sends a registration of `sub` for topic `a` with the headers `headers`: the status and the
/// answer.
async fn register_with_headers(hub: &TestHub, sub: &TestSubscription, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut body = sub.subscription.to_json();
    body["topic"] = serde_json::json!("a");
    let mut request = hub.http.post(format!("{}/.well-known/mercure/push", hub.url)).body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(serde_json::Value::Null))
}

/// A hub with Web Push, allowing `cors_origin`, and a `mercureAuthorization` cookie whose token
/// may receive every private update.
async fn cookie_hub(cors_origin: &str) -> (TestHub, LocalPushService, WebPush, String) {
    let settings = tidings_hub::Settings { cors_origins: vec![cors_origin.into()], ..settings() };
    let hub = TestHub::start(Arc::new(tidings_core::MemoryStore::new()), settings).await;
    let service = LocalPushService::start().await;
    let push = enable(&hub, &service, VapidKeys::generate(), MemoryRegistry::new()).await;
    (hub, service, push, format!("mercureAuthorization={}", subscriber(&["*"])))
}

/// Found by a fresh user: a registration with the `mercureAuthorization` cookie, sent as text by
/// another site's page (no CORS preflight for that), had the victim's private updates pushed
/// to the other site's endpoint. A registration is JSON, and one the cookie authorizes must
/// come from the hub's own origin or one of `--cors-origins`, as a publish with the cookie must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_registers_only_from_the_hubs_origin_or_an_allowed_one_and_only_as_json() {
    let (hub, service, push, cookie) = cookie_hub("https://app.example").await;
    let host = hub.url.trim_start_matches("http://").to_owned();
    let own = hub.url.clone();
    let json = ("content-type", "application/json");
    for (headers, status, reason) in [
        (vec![("content-type", "text/plain;charset=UTF-8"), ("cookie", &*cookie), ("origin", &*own)], 415, "JSON"),
        (vec![("content-type", "application/x-www-form-urlencoded"), ("cookie", &*cookie)], 415, "JSON"),
        (vec![json, ("cookie", &*cookie), ("origin", "https://evil.example")], 403, "evil.example"),
        (vec![json, ("cookie", &*cookie), ("referer", "https://evil.example/page")], 403, "evil.example"),
        (vec![json, ("cookie", &*cookie)], 403, "Origin"),
    ] {
        let (got, answer) = register_with_headers(&hub, &service.subscribe(), &headers).await;
        assert_eq!(got, status, "{headers:?}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{answer}");
    }
    assert_eq!(push.stats().subscriptions, 0);
    for origin in [own.as_str(), "https://app.example"] {
        let (got, answer) = register_with_headers(&hub, &service.subscribe(), &[json, ("cookie", &cookie), ("origin", origin)]).await;
        assert_eq!(got, 201, "{origin}: {answer}");
    }
    // The hub's own origin is told by its Host, whatever the scheme in front.
    let behind_tls = format!("https://{host}");
    let (got, _) = register_with_headers(&hub, &service.subscribe(), &[json, ("cookie", &cookie), ("origin", &behind_tls)]).await;
    assert_eq!(got, 201);
    // A token in the header needs no origin (another site cannot make the browser send it).
    let bearer = format!("Bearer {}", subscriber(&["*"]));
    let (got, _) = register_with_headers(&hub, &service.subscribe(), &[json, ("authorization", &bearer), ("origin", "https://evil.example")]).await;
    assert_eq!(got, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_bounded_per_client_and_in_all() {
    let hub = TestHub::memory().await;
    let service = LocalPushService::start().await;
    let push = enable_with(&hub, &service, VapidKeys::generate(), MemoryRegistry::new(), |b| {
        b.max_subscriptions_per_recipient(2).max_subscriptions_per_topic(3)
    })
    .await;
    let json = ("content-type", "application/json");
    let ann = format!("Bearer {}", token(common::SUBSCRIBER_KEY, serde_json::json!({ "sub": "ann", "mercure": { "subscribe": [] } })));
    let bob = format!("Bearer {}", token(common::SUBSCRIBER_KEY, serde_json::json!({ "sub": "bob", "mercure": { "subscribe": [] } })));
    let first = service.subscribe();
    assert_eq!(register_with_headers(&hub, &first, &[json, ("authorization", &ann)]).await.0, 201);
    assert_eq!(register_with_headers(&hub, &service.subscribe(), &[json, ("authorization", &ann)]).await.0, 201);
    let (status, answer) = register_with_headers(&hub, &service.subscribe(), &[json, ("authorization", &ann)]).await;
    assert_eq!(status, 429, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("--push-max-per-client"), "{answer}");
    // The same endpoint again replaces itself: it does not count twice.
    assert_eq!(register_with_headers(&hub, &first, &[json, ("authorization", &ann)]).await.0, 201);
    // Anonymous clients count by address: this test's client is one.
    assert_eq!(register_with_headers(&hub, &service.subscribe(), &[json]).await.0, 201);
    let (status, answer) = register_with_headers(&hub, &service.subscribe(), &[json, ("authorization", &bob)]).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("--push-max"), "{answer}");
    assert_eq!(push.stats().subscriptions, 3);
}

/// Found by a fresh user: an update whose id (or type) alone was near 4 KB made even the
/// push without data too large, and the dispatcher panicked: the registration never got
/// another push, even after a restart. Now the id and type are left out too, the long poll
/// gives them, and the next update arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_too_large_for_any_push_is_left_out_and_pushing_goes_on() {
    let hub = TestHub::memory().await;
    let service = LocalPushService::start().await;
    enable(&hub, &service, VapidKeys::generate(), MemoryRegistry::new()).await;
    let sub = service.subscribe();
    assert_eq!(register(&hub, &sub, &["big"], None, None).await.0, 201);
    let id = format!("urn:{}", "j".repeat(4000));
    let kind = "t".repeat(4000);
    for fields in [[("topic", "big"), ("data", "d"), ("id", id.as_str())], [("topic", "big"), ("data", "e"), ("type", kind.as_str())]] {
        assert_eq!(hub.post(Some(&common::publisher(&["*"])), &fields).await.0, 200);
    }
    hub.publish(&["big"], "next").await;
    let got = pushes_until(&service, &sub, "next").await;
    assert_eq!(got.len(), 3, "{got:?}");
    for truncated in &got[..2] {
        assert_eq!(truncated["truncated"], true);
        assert!(truncated["id"].is_null() && truncated["type"].is_null(), "{truncated}");
    }
    let answer = hub
        .http
        .get(format!("{}/.well-known/mercure/poll", hub.url))
        .query(&[("topic", "big"), ("lastEventID", got[0]["after"].as_str().unwrap()), ("timeout", "0")])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["updates"][0]["id"].as_str(), Some(id.as_str()));
    assert_eq!(answer["updates"][1]["type"].as_str(), Some(kind.as_str()));
}

/// Mercure's users revoke tokens by changing the subscriber key. A registration made with a
/// token that the old key checked is revoked with it: deleted when the hub starts with the new
/// key. One made without a token stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_key_revokes_the_registrations_its_predecessor_authorized() {
    let dir = std::env::temp_dir().join(format!("tidings-hub-push-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store: Arc<dyn tidings_core::Store> = Arc::new(tidings_core::MemoryStore::new());
    let service = LocalPushService::start().await;
    let keys = VapidKeys::generate();
    let first = TestHub::start(store.clone(), settings()).await;
    let push = enable(&first, &service, keys.clone(), SqlitePushRegistry::open(dir.join("push.db")).await.unwrap()).await;
    let with_token = service.subscribe();
    assert_eq!(register(&first, &with_token, &["a"], None, Some(&subscriber(&["*"]))).await.0, 201);
    let anonymous = service.subscribe();
    assert_eq!(register(&first, &anonymous, &["a"], None, None).await.0, 201);
    push.shutdown();
    drop(first);

    // The same key again: both are served.
    let again = TestHub::start(store.clone(), settings()).await;
    let push = enable(&again, &service, keys.clone(), SqlitePushRegistry::open(dir.join("push.db")).await.unwrap()).await;
    again.publish(&["a"], "same key").await;
    pushes_until(&service, &with_token, "same key").await;
    push.shutdown();
    drop(again);

    let rotated = tidings_hub::Settings {
        subscriber: Some(tidings_hub::Verifier::new("HS256", b"another subscriber secret of 32 bytes!").unwrap()),
        ..settings()
    };
    let second = TestHub::start(store.clone(), rotated).await;
    let push = enable(&second, &service, keys, SqlitePushRegistry::open(dir.join("push.db")).await.unwrap()).await;
    second.publish(&["a"], "after rotation").await;
    pushes_until(&service, &anonymous, "after rotation").await;
    let registry = SqlitePushRegistry::open(dir.join("push.db")).await.unwrap();
    eventually("the revoked registration is deleted", || async { registry.all().await.unwrap().len() == 1 }).await;
    let left = registry.all().await.unwrap();
    assert_eq!(left[0].endpoint(), anonymous.subscription.endpoint().as_str());
    assert!(!service.messages(&with_token.id).iter().any(|m| m.json()["data"] == "after rotation"));
    push.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by a fresh user: with `--cors-origins '*'`, any site could register its endpoint with
/// a visitor's cookie and have the visitor's private updates pushed to it for good. `*` lets
/// pages of any site read streams while they are open; a registration needs its origin named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_cors_origin_does_not_let_any_site_register_with_the_cookie() {
    let (hub, service, push, cookie) = cookie_hub("*").await;
    let json = ("content-type", "application/json");
    for origin in ["https://evil.example", "null"] {
        let (status, answer) = register_with_headers(&hub, &service.subscribe(), &[json, ("cookie", &cookie), ("origin", origin)]).await;
        assert_eq!(status, 403, "{origin}: {answer}");
    }
    assert_eq!(push.stats().subscriptions, 0);
    // The hub's own origin, with its default port written or not, still registers.
    let port = hub.url.rsplit(':').next().unwrap().to_owned();
    let own = format!("http://127.0.0.1:{port}");
    let (status, _) = register_with_headers(&hub, &service.subscribe(), &[json, ("cookie", &cookie), ("origin", &own)]).await;
    assert_eq!(status, 201);
    let (status, _) = register_with_headers(
        &hub,
        &service.subscribe(),
        &[json, ("cookie", &cookie), ("host", "hub.example:443"), ("origin", "https://hub.example")],
    )
    .await;
    assert_eq!(status, 201);
}

/// The 201 says where pushing starts, as a stream's `Last-Event-ID` does: `earliest` when a gap
/// notice comes first, also for an id whose followers retention dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_after_a_trimmed_id_answers_earliest_then_pushes_the_gap_and_the_rest() {
    let store = tidings_core::MemoryStore::with_retention(tidings_core::Retention::default().max_events(3));
    let hub = TestHub::start(Arc::new(store), settings()).await;
    let service = LocalPushService::start().await;
    enable(&hub, &service, VapidKeys::generate(), MemoryRegistry::new()).await;
    let first = hub.publish(&["a"], "first").await;
    hub.publish(&["a"], "second").await;
    for i in 0..5 {
        hub.publish(&["a"], &format!("later {i}")).await;
    }
    let sub = service.subscribe();
    let (status, answer) = register(&hub, &sub, &["a"], Some(&first), None).await;
    assert_eq!((status, answer["lastEventID"].as_str()), (201, Some("earliest")), "{answer}");
    let got = pushes_until(&service, &sub, "later 4").await;
    assert_eq!((got[0]["type"].as_str(), got[0]["data"].as_str()), (Some("tidings.gap"), Some("{\"reason\":\"trimmed\"}")));
    assert_eq!(datas(&got[1..]), ["later 2", "later 3", "later 4"]);
    // One whose followers are all there answers its own position.
    let (_, answer) = register(&hub, &service.subscribe(), &["a"], Some("urn:tidings:none"), None).await;
    assert_eq!(answer["lastEventID"], "earliest", "an id no update has");
    let kept = hub.publish(&["a"], "kept").await;
    let (_, answer) = register(&hub, &service.subscribe(), &["a"], Some(&kept), None).await;
    assert!(answer["lastEventID"].as_str().unwrap().starts_with("urn:tidings:"), "{answer}");
}
