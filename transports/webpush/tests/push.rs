//! The Web Push transport against a real push service on loopback (TLS, VAPID verified,
//! payloads decrypted with the subscriber's private key).

use std::time::Duration;

use tidings_core::{Hub, MemoryStore, NewEvent, Topic, authorize_fn};
use tidings_webpush::message::MAX_PLAINTEXT;
use tidings_webpush::testing::{LocalPushService, Reply, TestSubscription};
use tidings_core::NoCredentials;
use tidings_webpush::message::Payload;
use tidings_webpush::{PushContent, PushMessages, PushRegistry, RegisterRequest};
use tidings_webpush::{
    DeliveryPolicy, EndpointPolicy, MemoryRegistry, Presence, PushOptions, PushTopic, Urgency, VapidKeys,
    WebPush,
};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    service: LocalPushService,
    hub: Hub,
    push: WebPush,
    registry: std::sync::Arc<MemoryRegistry>,
    base: String,
    http: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

impl Setup {
    async fn new() -> Setup {
        Setup::with(|b| b, Hub::new(MemoryStore::new())).await
    }

    async fn with(
        configure: impl FnOnce(tidings_webpush::WebPushBuilder) -> tidings_webpush::WebPushBuilder,
        hub: Hub,
    ) -> Setup {
        let service = LocalPushService::start().await;
        let keys = VapidKeys::generate();
        service.expect_vapid_key(keys.public_key_base64());
        let registry = std::sync::Arc::new(MemoryRegistry::new());
        let builder = WebPush::builder(hub.clone(), registry.clone(), keys, "mailto:ops@example.com")
            .unwrap()
            .endpoint_policy(EndpointPolicy::default().allow(&service.host_port()).unwrap())
            .add_root_certificate(service.root_certificate_pem())
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50));
        let push = configure(builder).start().await.unwrap();
        let (addr, server) = tidings_test_support::serve(push.router()).await;
        Setup { service, hub, push, registry, base: format!("http://{addr}"), http: reqwest::Client::new(), _server: server }
    }

    async fn register(&self, sub: &TestSubscription, topics: &[&str]) -> reqwest::Response {
        self.register_with(sub, topics, None).await
    }

    /// Registers `sub` for `topics`, with one extra request header.
    async fn register_with(
        &self,
        sub: &TestSubscription,
        topics: &[&str],
        header: Option<(&str, &str)>,
    ) -> reqwest::Response {
        let mut body = sub.subscription.to_json();
        body["topics"] = serde_json::json!(topics);
        self.post_with(body, header).await
    }

    async fn post(&self, body: serde_json::Value) -> reqwest::Response {
        self.post_with(body, None).await
    }

    /// Posts `body` as it is, as JSON.
    async fn post_with_body(&self, body: String) -> reqwest::Response {
        self.http
            .post(format!("{}/push/subscriptions", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn post_with(&self, body: serde_json::Value, header: Option<(&str, &str)>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/push/subscriptions", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.send().await.unwrap()
    }

    /// Registers a new subscription for `topics` and waits until the dispatcher has opened its
    /// hub subscription (so that what is published next is pushed).
    async fn subscribed(&self, topics: &[&str]) -> TestSubscription {
        let sub = self.service.subscribe();
        let before = self.hub.subscriber_count();
        assert_eq!(self.register(&sub, topics).await.status(), 201);
        let hub = self.hub.clone();
        wait_for(|| hub.subscriber_count() > before).await;
        sub
    }

    async fn publish(&self, topic: &str, data: &str) -> tidings_core::Event {
        self.hub.publish(NewEvent::new(Topic::new(topic), data)).await.unwrap()
    }
}

/// Waits for a server-side condition that nothing notifies the test of (a task opening its
/// subscription), checking every few milliseconds up to a deadline.
async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn rfc8291_appendix_a_vector_decrypts() {
    use base64ct::{Base64UrlUnpadded, Encoding};
    let d = |s: &str| Base64UrlUnpadded::decode_vec(s).unwrap();
    let ua_private = p256::SecretKey::from_slice(&d("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).unwrap();
    let auth = web_push_native::Auth::clone_from_slice(&d("BTBZMqHH6r4Tts7J_aSIgg"));
    let body = d("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN");
    let plain = web_push_native::decrypt(body, &ua_private, &auth).unwrap();
    assert_eq!(plain, b"When I grow up, I want to be a watermelon");
    // And the public key in the vector is the one of that private key.
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    assert_eq!(
        Base64UrlUnpadded::encode_string(ua_private.public_key().to_encoded_point(false).as_bytes()),
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_decrypted_byte_exact_with_a_verified_vapid_token() {
    let s = Setup::new().await;
    let sub = s.subscribed(&["news"]).await;
    let overhead = {
        let probe = s.publish("other", "").await;
        let event = tidings_core::Event { topic: Topic::new("news"), ..probe };
        let cursor = event.cursor().to_string();
        tidings_webpush::message::event_payload(&tidings_core::SharedEvent::new(event), &cursor).json.len()
    };
    let largest = "é".repeat((MAX_PLAINTEXT - overhead) / 2) + &"x".repeat((MAX_PLAINTEXT - overhead) % 2);
    let datas = ["hello", "line one\nline two\r\nthree\r", "Ünïcödé ✓ 🦀 \u{0} \"quoted\"", "", largest.as_str()];
    let mut published = Vec::new();
    for data in datas {
        published.push(s.publish("news", data).await);
    }
    let one_more = format!("{largest}x");
    published.push(s.publish("news", &one_more).await);

    let messages = s.service.wait_for_messages(&sub.id, published.len(), WAIT).await;
    assert_eq!(messages.len(), published.len());
    for (message, event) in messages.iter().zip(&published).take(datas.len()) {
        let json = message.json();
        assert_eq!(json["data"].as_str().unwrap().as_bytes(), event.data.as_bytes());
        assert_eq!(json["id"], event.cursor().to_string());
        assert_eq!(json["topic"], "news");
        assert!(message.body_len <= 4096);
        assert_eq!(message.vapid.audience, s.service.origin(), "aud carries the port");
        assert!(s.service.origin().rsplit(':').next().unwrap().parse::<u16>().is_ok());
        assert_eq!(message.vapid.subject, "mailto:ops@example.com");
        assert_eq!(message.ttl, 24 * 3600);
        assert_eq!(message.urgency.as_deref(), Some("normal"));
    }
    let largest_message = &messages[datas.len() - 1];
    assert_eq!(largest_message.payload.len(), MAX_PLAINTEXT, "exactly the largest size that fits");
    assert_eq!(largest_message.body_len, 4096);
    let truncated = messages.last().unwrap().json();
    assert_eq!(truncated["truncated"], true);
    assert!(truncated.get("data").is_none(), "never cut: no data at all");
    assert_eq!(truncated["id"], published.last().unwrap().cursor().to_string());
    assert!(messages.last().unwrap().body_len <= 4096);
    let push = s.push.clone();
    wait_for(|| push.stats().truncated == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_several_topics_arrive_in_order_per_topic_and_nothing_else() {
    let s = Setup::new().await;
    let sub = s.subscribed(&["a", "b"]).await;
    for i in 0..20 {
        s.publish("a", &format!("a{i}")).await;
        s.publish("b", &format!("b{i}")).await;
        s.publish("c", &format!("c{i}")).await;
    }
    let messages = s.service.wait_for_messages(&sub.id, 40, WAIT).await;
    assert_eq!(messages.len(), 40);
    for topic in ["a", "b"] {
        let got: Vec<String> = messages
            .iter()
            .map(|m| m.json())
            .filter(|j| j["topic"] == topic)
            .map(|j| j["data"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> = (0..20).map(|i| format!("{topic}{i}")).collect();
        assert_eq!(got, want);
    }
    assert!(messages.iter().all(|m| m.json()["topic"] != "c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_urgency_and_topic_headers_follow_topic_and_event_options() {
    let s = Setup::with(
        |b| {
            b.topic_options(
                Topic::new("alerts"),
                PushOptions::default().ttl(Duration::from_secs(60)).urgency(Urgency::High),
            )
            .options_for(|event, base| {
                let topic = (&*event.data == "replaceable").then(|| PushTopic::parse("latest-score").unwrap());
                base.clone().topic(topic)
            })
        },
        Hub::new(MemoryStore::new()),
    )
    .await;
    let sub = s.subscribed(&["alerts", "news"]).await;
    s.publish("alerts", "fire").await;
    s.publish("news", "replaceable").await;
    let m = s.service.wait_for_messages(&sub.id, 2, WAIT).await;
    assert_eq!((m[0].ttl, m[0].urgency.as_deref(), m[0].topic.as_deref()), (60, Some("high"), None));
    assert_eq!((m[1].ttl, m[1].urgency.as_deref(), m[1].topic.as_deref()), (86400, Some("normal"), Some("latest-score")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_subscriptions_404_and_410_are_deleted() {
    let s = Setup::new().await;
    let a = s.subscribed(&["t"]).await;
    let b = s.subscribed(&["t"]).await;
    s.service.always(&a.id, Some(Reply::status(404)));
    s.service.always(&b.id, Some(Reply::status(410)));
    assert_eq!(s.push.stats().subscriptions, 2);
    s.publish("t", "one").await;
    let push = s.push.clone();
    wait_for(|| push.stats().gone == 2).await;
    wait_for(|| push.stats().subscriptions == 0).await;
    s.publish("t", "two").await;
    // Deleted: unregistering finds nothing, and no further attempt was made.
    let status = s
        .http
        .delete(format!("{}/push/subscriptions", s.base))
        .body(serde_json::json!({ "endpoint": a.subscription.endpoint().as_str() }).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    assert_eq!(s.service.attempts(&a.id).len(), 1);
    assert_eq!(s.service.attempts(&b.id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_429_waits_for_retry_after() {
    let s = Setup::new().await;
    let sub = s.subscribed(&["t"]).await;
    s.service.script(&sub.id, [Reply::rate_limited(1)]);
    s.publish("t", "patience").await;
    let attempts = s.service.wait_for_attempts(&sub.id, 2, WAIT).await;
    assert_eq!(attempts[0].status, 429);
    assert_eq!(attempts[1].status, 201);
    let waited = attempts[1].at - attempts[0].at;
    assert!(waited >= Duration::from_millis(990), "retried after {waited:?}, Retry-After said 1 s");
    assert_eq!(s.service.messages(&sub.id)[0].json()["data"], "patience");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_order_is_kept() {
    let s = Setup::new().await;
    let sub = s.subscribed(&["t"]).await;
    s.service.script(&sub.id, [Reply::status(500), Reply::status(503), Reply::status(502)]);
    s.publish("t", "first").await;
    s.publish("t", "second").await;
    let messages = s.service.wait_for_messages(&sub.id, 2, WAIT).await;
    let data: Vec<_> = messages.iter().map(|m| m.json()["data"].as_str().unwrap().to_owned()).collect();
    assert_eq!(data, ["first", "second"]);
    let statuses: Vec<u16> = s.service.attempts(&sub.id).iter().map(|a| a.status).collect();
    assert_eq!(statuses, [500, 503, 502, 201, 201]);
    assert_eq!(s.push.stats().retries, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let s = Setup::new().await;
    let sub = s.subscribed(&["t"]).await;
    s.service.script(&sub.id, [Reply::status(400), Reply::status(403)]);
    s.publish("t", "refused").await;
    s.publish("t", "also refused").await;
    s.publish("t", "accepted").await;
    let messages = s.service.wait_for_messages(&sub.id, 1, WAIT).await;
    assert_eq!(messages[0].json()["data"], "accepted");
    let statuses: Vec<u16> = s.service.attempts(&sub.id).iter().map(|a| a.status).collect();
    assert_eq!(statuses, [400, 403, 201], "one attempt each, no retry");
    assert_eq!(s.push.stats().rejected, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_ttl_runs_out() {
    let s = Setup::with(
        |b| b.default_options(PushOptions::default().ttl(Duration::from_millis(300))),
        Hub::new(MemoryStore::new()),
    )
    .await;
    let sub = s.subscribed(&["t"]).await;
    s.service.always(&sub.id, Some(Reply::status(503)));
    s.publish("t", "doomed").await;
    let push = s.push.clone();
    wait_for(|| push.stats().expired == 1).await;
    s.service.always(&sub.id, None);
    s.publish("t", "next").await;
    let messages = s.service.wait_for_messages(&sub.id, 1, WAIT).await;
    assert_eq!(messages[0].json()["data"], "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_too_large_413_falls_back_to_the_truncated_form() {
    let s = Setup::new().await;
    let sub = s.subscribed(&["t"]).await;
    s.service.script(&sub.id, [Reply::status(413)]);
    let event = s.publish("t", "a small event the service still finds too large").await;
    let messages = s.service.wait_for_messages(&sub.id, 1, WAIT).await;
    let json = messages[0].json();
    assert_eq!(json["truncated"], true);
    assert_eq!(json["id"], event.cursor().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_push_service_blocks_neither_publishing_nor_other_subscriptions() {
    let s = Setup::with(|b| b.max_in_flight(4), Hub::new(MemoryStore::new())).await;
    let stuck = s.subscribed(&["t"]).await;
    let fine = s.subscribed(&["t"]).await;
    s.service.always(&stuck.id, Some(Reply::status(503)));
    for i in 0..50 {
        s.publish("t", &format!("{i}")).await;
    }
    let messages = s.service.wait_for_messages(&fine.id, 50, WAIT).await;
    assert_eq!(messages.len(), 50);
    assert!(s.service.messages(&stuck.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_may_resume_from_a_cursor_and_a_lost_cursor_is_one_gap_push() {
    let s = Setup::new().await;
    let first = s.publish("t", "one").await;
    s.publish("t", "two").await;
    let sub = s.service.subscribe();
    let mut body = sub.subscription.to_json();
    body["topics"] = serde_json::json!(["t"]);
    body["cursor"] = serde_json::json!(first.cursor().to_string());
    assert_eq!(s.post(body).await.status(), 201);
    let m = s.service.wait_for_messages(&sub.id, 1, WAIT).await;
    assert_eq!(m[0].json()["data"], "two");

    let lost = s.service.subscribe();
    let mut body = lost.subscription.to_json();
    body["topics"] = serde_json::json!(["t"]);
    body["cursor"] = serde_json::json!("not-a-cursor");
    assert_eq!(s.post(body).await.status(), 201);
    let m = s.service.wait_for_messages(&lost.id, 3, WAIT).await;
    assert_eq!(m[0].json()["gap"]["topics"], serde_json::json!(["t"]));
    assert_eq!(m[1].json()["data"], "one");
    assert_eq!(m[2].json()["data"], "two");
}

/// Found by replaying a bug report: keys written in the standard base64 alphabet with padding
/// (as `btoa` writes them) were refused with "keys.p256dh is not a p-256 public key". They are
/// the same bytes: the registration is accepted, and the push service decrypts what it gets with
/// the subscriber's private key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_standard_base64_register_and_decrypt() {
    use base64ct::Encoding;
    let s = Setup::new().await;
    let sub = s.service.subscribe();
    let mut body = sub.subscription.to_json();
    for key in ["p256dh", "auth"] {
        let bytes = base64ct::Base64UrlUnpadded::decode_vec(body["keys"][key].as_str().unwrap()).unwrap();
        body["keys"][key] = serde_json::json!(base64ct::Base64::encode_string(&bytes));
    }
    assert!(body["keys"]["auth"].as_str().unwrap().ends_with("=="), "{body}");
    body["topics"] = serde_json::json!(["t"]);
    let before = s.hub.subscriber_count();
    let response = s.post(body).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let hub = s.hub.clone();
    wait_for(|| hub.subscriber_count() > before).await;
    s.publish("t", "decrypted").await;
    let m = s.service.wait_for_messages(&sub.id, 1, WAIT).await;
    assert_eq!(m[0].json()["data"], "decrypted");

    // Not base64 in either alphabet: still a 400 naming the key.
    let other = s.service.subscribe();
    let mut body = other.subscription.to_json();
    body["keys"]["p256dh"] = serde_json::json!(format!("{}+", body["keys"]["p256dh"].as_str().unwrap()));
    body["topics"] = serde_json::json!(["t"]);
    let response = s.post(body).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("keys.p256dh"));
}

/// The cursor rule of every transport (`docs/protocol.md`): a `cursor` that is empty or blank
/// carries none, so pushing starts at the end of the log, as without one (not a gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_registration_cursor_counts_as_absent() {
    let s = Setup::new().await;
    s.publish("t", "before").await;
    let mut answers = Vec::new();
    for cursor in [serde_json::json!(""), serde_json::json!(" \t "), serde_json::Value::Null] {
        let sub = s.service.subscribe();
        let mut body = sub.subscription.to_json();
        body["topics"] = serde_json::json!(["t"]);
        body["cursor"] = cursor;
        let response = s.post(body).await;
        assert_eq!(response.status(), 201);
        let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        answers.push((sub, json["cursor"].as_str().unwrap().to_owned()));
    }
    s.publish("t", "after").await;
    for (sub, cursor) in &answers {
        assert_eq!(cursor, &answers[0].1, "every one starts at the end of the log");
        let m = s.service.wait_for_messages(&sub.id, 1, WAIT).await;
        assert_eq!(m[0].json()["data"], "after", "no gap push, nothing from before");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_offline_policy_skips_recipients_with_a_live_connection() {
    let presence = Presence::with_grace(Duration::ZERO);
    let hub = Hub::builder(MemoryStore::new())
        .authorize(authorize_fn(|_| Ok(())).identify_with(|r| r.credentials.header("x-user").map(str::to_owned)))
        .lifecycle((tidings_core::NoLifecycle, presence.clone()))
        .build();
    let s = Setup::with(|b| b.presence(presence.clone()).topic_policy(Topic::new("dm"), DeliveryPolicy::WhenOffline), hub)
        .await;
    let sub = s.service.subscribe();
    let status = s.register_with(&sub, &["dm", "news"], Some(("x-user", "alice"))).await.status();
    assert_eq!(status, 201);
    let hub = s.hub.clone();
    wait_for(|| hub.subscriber_count() == 1).await;
    assert!(!presence.is_online("alice"), "the push subscription itself is not presence");

    // Alice is connected (an SSE or long-poll subscription identified as her).
    struct Alice;
    impl tidings_core::Credentials for Alice {
        fn header(&self, name: &str) -> Option<&str> {
            (name == "x-user").then_some("alice")
        }
        fn query(&self, _: &str) -> Option<&str> {
            None
        }
    }
    let live = s
        .hub
        .subscribe(tidings_core::SubscribeRequest::new(vec![Topic::new("dm")]).transport("sse").credentials(&Alice))
        .await
        .unwrap();
    assert!(presence.is_online("alice"));
    s.publish("dm", "seen live").await;
    s.publish("news", "pushed anyway").await;
    let m = s.service.wait_for_messages(&sub.id, 1, WAIT).await;
    assert_eq!(m[0].json()["data"], "pushed anyway");
    let push = s.push.clone();
    wait_for(|| push.stats().skipped_online == 1).await;

    drop(live);
    assert!(!presence.is_online("alice"));
    s.publish("dm", "pushed while away").await;
    let m = s.service.wait_for_messages(&sub.id, 2, WAIT).await;
    assert_eq!(m[1].json()["data"], "pushed while away");
    assert_eq!(s.service.messages(&sub.id).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_authorized_like_a_subscription() {
    let hub = Hub::builder(MemoryStore::new())
        .authorize(authorize_fn(|r| {
            if r.topics.iter().any(|t| t.as_str().starts_with("private/")) {
                match r.credentials.header("authorization") {
                    Some("Bearer ok") => Ok(()),
                    Some(_) => Err(tidings_core::Refusal::forbidden("wrong token")),
                    None => Err(tidings_core::Refusal::unauthenticated("token needed")),
                }
            } else {
                Ok(())
            }
        }))
        .build();
    let s = Setup::with(|b| b, hub).await;
    let sub = s.service.subscribe();
    assert_eq!(s.register(&sub, &["private/x"]).await.status(), 401);
    let r = s.register_with(&sub, &["private/x"], Some(("authorization", "Bearer nope"))).await;
    assert_eq!(r.status(), 403);
    assert_eq!(s.push.stats().subscriptions, 0);
    // Nothing of the private topic reaches it.
    s.publish("private/x", "secret").await;
    assert!(s.service.attempts(&sub.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_endpoints_are_refused_with_a_400_naming_the_reason() {
    let s = Setup::new().await;
    let good = s.service.subscribe().subscription.to_json();
    let keys = good["keys"].clone();
    let cases = [
        ("https://127.0.0.1/push/x", "loopback"),
        ("https://10.0.0.1/push/x", "private"),
        ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("https://[::1]/push/x", "loopback"),
        ("https://[fd00::1]/push/x", "unique-local"),
        ("https://localhost/push/x", "loopback"),
        ("https://100.64.1.1/x", "carrier-grade NAT"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://[::ffff:192.168.0.1]/x", "private"),
        ("http://push.example.net/x", "must be https"),
        ("https://user:pw@push.example.net/x", "user name"),
        ("not a url", "not a valid url"),
        ("file:///etc/passwd", "not a valid url"),
    ];
    for (endpoint, reason) in cases {
        let body = serde_json::json!({ "endpoint": endpoint, "keys": keys, "topics": ["t"] });
        let r = s.post(body).await;
        assert_eq!(r.status(), 400, "{endpoint}");
        let json: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let message = json["error"].as_str().unwrap();
        assert!(message.contains(reason), "{endpoint}: {message}");
    }
    for (body, reason) in [
        ("{".to_owned(), "not valid json"),
        (serde_json::json!({"endpoint": good["endpoint"], "topics": ["t"]}).to_string(), "not valid json"),
        (serde_json::json!({"endpoint": good["endpoint"], "keys": {"p256dh": "AAAA", "auth": keys["auth"]}, "topics": ["t"]}).to_string(), "p256dh"),
        (serde_json::json!({"endpoint": good["endpoint"], "keys": {"p256dh": keys["p256dh"], "auth": "AAAA"}, "topics": ["t"]}).to_string(), "keys.auth"),
        (serde_json::json!({"endpoint": good["endpoint"], "keys": keys, "topics": []}).to_string(), "no topic"),
        (serde_json::json!({"endpoint": good["endpoint"], "keys": keys, "topics": ["a\nb"]}).to_string(), "invalid topic"),
        (format!("{{\"endpoint\":\"https://x/{}\"}}", "a".repeat(20_000)), "the limit is 16384"),
    ] {
        let r = s.post_with_body(body).await;
        let status = r.status().as_u16();
        assert!(status == 400 || status == 413, "{reason}: {status}");
        let text = r.text().await.unwrap();
        assert!(text.contains(reason), "{reason}: {text}");
    }
    assert_eq!(s.push.stats().subscriptions, 0);
}

#[tokio::test]
async fn listed_hosts_are_allowed() {
    let policy = EndpointPolicy::from_list("127.0.0.1:8443,10.0.0.1:443,169.254.169.254:443,[::1]:8443,push.local:80").unwrap();
    for endpoint in [
        "https://127.0.0.1:8443/x",
        "https://10.0.0.1/x",
        "https://169.254.169.254/x",
        "https://[::1]:8443/x",
        "http://push.local/x",
    ] {
        policy.check(&endpoint.parse().unwrap()).await.unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    }
    assert!(policy.check(&"https://127.0.0.1:8444/x".parse().unwrap()).await.is_err(), "only the listed port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vapid_public_key_is_served_as_text() {
    let s = Setup::new().await;
    let r = s.http.get(format!("{}/push/vapid-public-key", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), s.push.public_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_service_checks_the_vapid_key_so_a_foreign_key_is_refused() {
    let s = Setup::new().await;
    let sub = s.subscribed(&["t"]).await;
    s.service.expect_vapid_key(VapidKeys::generate().public_key_base64());
    s.publish("t", "signed by the wrong key").await;
    let attempts = s.service.wait_for_attempts(&sub.id, 1, WAIT).await;
    assert_eq!(attempts[0].status, 403);
    let push = s.push.clone();
    wait_for(|| push.stats().rejected == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_recipient_and_per_topic_are_bounded() {
    let hub = Hub::builder(MemoryStore::new())
        .authorize(authorize_fn(|_| Ok(())).identify_with(|r| r.credentials.header("x-user").map(str::to_owned)))
        .build();
    let s = Setup::with(|b| b.max_subscriptions_per_recipient(2).max_subscriptions_per_topic(3), hub).await;
    let alice = Some(("x-user", "alice"));
    let (a1, a2, a3) = (s.service.subscribe(), s.service.subscribe(), s.service.subscribe());
    assert_eq!(s.register_with(&a1, &["news"], alice).await.status(), 201);
    assert_eq!(s.register_with(&a2, &["news"], alice).await.status(), 201);
    // Registering one of hers again replaces it: not a third.
    assert_eq!(s.register_with(&a2, &["news", "dm"], alice).await.status(), 201);
    let refused = s.register_with(&a3, &["news"], alice).await;
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "too many push subscriptions for this recipient, the limit is 2");
    // Bob may; then `news` is full for anyone.
    let b1 = s.service.subscribe();
    assert_eq!(s.register_with(&b1, &["news"], Some(("x-user", "bob"))).await.status(), 201);
    let anonymous = s.service.subscribe();
    let full = s.register(&anonymous, &["news"]).await;
    assert_eq!(full.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&full.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "topic \"news\" has 3 push subscriptions, its limit");
    assert_eq!(s.register(&anonymous, &["dm"]).await.status(), 201, "another topic has room");
    assert_eq!(s.push.stats().subscriptions, 4);
    // Once Alice drops one, she may add one, and the topic has room again.
    let unsubscribe = s
        .http
        .delete(format!("{}/push/subscriptions", s.base))
        .body(serde_json::json!({ "endpoint": a1.subscription.endpoint().as_str() }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unsubscribe.status(), 204);
    assert_eq!(s.register_with(&a3, &["news"], alice).await.status(), 201);
    // The refused never got anything; the registered get what is published.
    let hub = s.hub.clone();
    wait_for(|| hub.subscriber_count() == 4).await;
    s.publish("news", "to the admitted").await;
    for sub in [&a2, &a3, &b1] {
        let m = s.service.wait_for_messages(&sub.id, 1, WAIT).await;
        assert_eq!(m[0].json()["data"], "to the admitted");
    }
    assert!(s.service.attempts(&a1.id).is_empty());
}

/// Pushes only the events whose data starts with the registration's filter, as `{"kept": data}`.
#[derive(Debug)]
struct Prefix;

struct PrefixMessages(String);

impl PushContent for Prefix {
    fn messages(&self, registration: &tidings_webpush::Registration) -> Result<Box<dyn PushMessages>, String> {
        match registration.filter.as_deref() {
            Some("unreadable") => Err("an unreadable filter".into()),
            filter => Ok(Box::new(PrefixMessages(filter.unwrap_or_default().to_owned()))),
        }
    }
}

impl PushMessages for PrefixMessages {
    fn event(&self, event: &tidings_core::SharedEvent, _cursor: &tidings_core::Cursor) -> Option<Payload> {
        let data = &event.event().data;
        // "huge…": a payload over what one push holds, which the dispatcher must not send.
        let json = match data.strip_prefix("huge") {
            Some(_) => serde_json::json!({ "kept": "x".repeat(MAX_PLAINTEXT) }).to_string().into_bytes(),
            None => serde_json::json!({ "kept": &**data }).to_string().into_bytes(),
        };
        data.starts_with(self.0.as_str()).then_some(Payload { json, truncated: false })
    }

    fn truncated(&self, event: &tidings_core::SharedEvent, _cursor: &tidings_core::Cursor) -> Payload {
        // "hugest…": even the smaller form is too large; the event is skipped, not a panic.
        let json = if event.event().data.starts_with("hugest") {
            vec![b' '; MAX_PLAINTEXT + 1]
        } else {
            b"{\"truncated\":true}".to_vec()
        };
        Payload { json, truncated: true }
    }

    fn gap(&self, _gap: &tidings_core::Gap, _cursor: &tidings_core::Cursor) -> Payload {
        Payload { json: b"{\"gap\":true}".to_vec(), truncated: false }
    }
}

/// Registers `sub` for topic `t` with `filter` and `expires`, through the API (not the routes,
/// which take no filter), and waits until its hub subscription is open.
async fn register_filtered(
    s: &Setup,
    sub: &TestSubscription,
    filter: &str,
    expires: Option<std::time::SystemTime>,
) -> String {
    let before = s.hub.subscriber_count();
    let request = RegisterRequest::new(sub.subscription.clone(), vec!["t".into()], &NoCredentials)
        .filter(Some(filter.to_owned()))
        .expires(expires);
    let cursor = s.push.register(request).await.unwrap();
    let hub = s.hub.clone();
    if expires.is_none() {
        wait_for(|| hub.subscriber_count() > before).await;
    }
    cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_chooses_each_registrations_events_and_payloads_from_its_filter() {
    let s = Setup::with(|b| b.content(Prefix), Hub::new(MemoryStore::new())).await;
    let keep = s.service.subscribe();
    register_filtered(&s, &keep, "keep", None).await;
    let all = s.service.subscribe();
    register_filtered(&s, &all, "", None).await;
    for data in ["keep 1", "drop 1", "keep 2", "drop 2"] {
        s.publish("t", data).await;
    }
    let kept: Vec<_> = s.service.wait_for_messages(&keep.id, 2, WAIT).await.iter().map(|m| m.json()["kept"].clone()).collect();
    assert_eq!(kept, ["keep 1", "keep 2"]);
    let every: Vec<_> = s.service.wait_for_messages(&all.id, 4, WAIT).await.iter().map(|m| m.json()["kept"].clone()).collect();
    assert_eq!(every, ["keep 1", "drop 1", "keep 2", "drop 2"]);
    // The skipped ones are counted, and the cursor past them is saved (within a second), so a
    // restart does not look at them again.
    let last = s.publish("t", "drop 3").await;
    let push = s.push.clone();
    wait_for(|| push.stats().filtered == 3).await;
    let registry = s.registry.clone();
    let endpoint = keep.subscription.endpoint().as_str().to_owned();
    let saved = move || {
        let registry = registry.clone();
        let endpoint = endpoint.clone();
        async move {
            let all = registry.all().await.unwrap();
            all.into_iter().find(|r| r.endpoint() == endpoint).and_then(|r| r.cursor)
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while saved().await.as_deref() != Some(&*last.cursor().to_string()) {
        assert!(tokio::time::Instant::now() < deadline, "the skipped cursor was never saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.service.messages(&keep.id).len(), 2, "nothing pushed for what it skipped");
    // A filter the content cannot read: never served, and deleted.
    let unreadable = s.service.subscribe();
    s.push.register(RegisterRequest::new(unreadable.subscription.clone(), vec!["t".into()], &NoCredentials).filter(Some("unreadable".into()))).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.registry.all().await.unwrap().iter().any(|r| r.endpoint() == unreadable.subscription.endpoint().as_str()) {
        assert!(tokio::time::Instant::now() < deadline, "the unservable registration is still there");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let push = s.push.clone();
    wait_for(|| push.stats().subscriptions == 2).await;
    assert!(s.service.attempts(&unreadable.id).is_empty());
    // A payload over what a push holds goes as the smaller form; if even that is too large,
    // the event is skipped (no panic), and the next one goes.
    s.publish("t", "huge").await;
    s.publish("t", "hugest").await;
    s.publish("t", "after").await;
    let got: Vec<_> = s.service.wait_for_messages(&all.id, 7, WAIT).await.iter().map(|m| m.json()).collect();
    assert_eq!(got[5], serde_json::json!({ "truncated": true }), "{got:?}");
    assert_eq!(got[6], serde_json::json!({ "kept": "after" }), "{got:?}");
    let push = s.push.clone();
    wait_for(|| push.stats().rejected == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_lapses_at_its_expiry_and_is_deleted() {
    let s = Setup::new().await;
    let sub = s.service.subscribe();
    let expires = std::time::SystemTime::now() + Duration::from_millis(300);
    register_filtered(&s, &sub, "", Some(expires)).await;
    let push = s.push.clone();
    wait_for(|| push.stats().lapsed == 1 && push.stats().subscriptions == 0).await;
    assert!(std::time::SystemTime::now() >= expires, "not before its time");
    assert!(s.registry.all().await.unwrap().is_empty(), "deleted from the registry");
    assert!(!s.push.unregister(sub.subscription.endpoint().as_str()).await.unwrap());
    // One whose time has passed already is never served.
    let late = s.service.subscribe();
    register_filtered(&s, &late, "", Some(std::time::SystemTime::now() - Duration::from_secs(1))).await;
    let push = s.push.clone();
    wait_for(|| push.stats().lapsed == 2 && push.stats().subscriptions == 0).await;
    s.publish("t", "after").await;
    assert!(s.registry.all().await.unwrap().is_empty());
    assert!(s.service.attempts(&sub.id).is_empty() && s.service.attempts(&late.id).is_empty());
}

/// A registry that counts the cursors saved.
#[derive(Debug, Default)]
struct CountingRegistry {
    inner: MemoryRegistry,
    saves: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl PushRegistry for CountingRegistry {
    async fn put(&self, r: &tidings_webpush::Registration) -> Result<(), tidings_webpush::RegistryError> {
        self.inner.put(r).await
    }
    async fn save_cursor(&self, endpoint: &str, cursor: &str) -> Result<(), tidings_webpush::RegistryError> {
        self.saves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.save_cursor(endpoint, cursor).await
    }
    async fn remove(&self, endpoint: &str) -> Result<bool, tidings_webpush::RegistryError> {
        self.inner.remove(endpoint).await
    }
    async fn all(&self) -> Result<Vec<tidings_webpush::Registration>, tidings_webpush::RegistryError> {
        self.inner.all().await
    }
}

/// A registration that skips most of a busy log does not write its cursor once per event: the
/// cursor past 200 skipped events is saved, but in a handful of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_events_save_the_cursor_within_a_second_not_once_each() {
    let hub = Hub::new(MemoryStore::new());
    let service = LocalPushService::start().await;
    let registry = std::sync::Arc::new(CountingRegistry::default());
    let push = WebPush::builder(hub.clone(), registry.clone(), VapidKeys::generate(), "mailto:ops@example.com")
        .unwrap()
        .endpoint_policy(EndpointPolicy::default().allow(&service.host_port()).unwrap())
        .content(Prefix)
        .start()
        .await
        .unwrap();
    let sub = service.subscribe();
    let request = RegisterRequest::new(sub.subscription.clone(), vec!["t".into()], &NoCredentials).filter(Some("keep".into()));
    push.register(request).await.unwrap();
    let mut last = None;
    for i in 0..200 {
        last = Some(hub.publish(NewEvent::new(Topic::new("t"), format!("drop {i}"))).await.unwrap());
    }
    let want = last.unwrap().cursor().to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let saved = registry.all().await.unwrap().pop().and_then(|r| r.cursor);
        if saved.as_deref() == Some(want.as_str()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the cursor past the skipped events was never saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(push.stats().filtered, 200);
    let saves = registry.saves.load(std::sync::atomic::Ordering::Relaxed);
    assert!(saves <= 5, "{saves} writes for 200 skipped events");
    assert!(service.attempts(&sub.id).is_empty());
}

/// A page of another site can make the browser send a form or text, with its cookies, without
/// a CORS preflight: an app whose authorization hook reads a cookie would register the other
/// site's endpoint for its user. A registration is JSON only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_is_not_json_is_a_415() {
    let s = Setup::new().await;
    let sub = s.service.subscribe();
    let mut body = sub.subscription.to_json();
    body["topics"] = serde_json::json!(["t"]);
    for content_type in [Some("text/plain;charset=UTF-8"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), None] {
        let mut request = s.http.post(format!("{}/push/subscriptions", s.base)).body(body.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        assert!(response.text().await.unwrap().contains("application/json"));
    }
    assert_eq!(s.push.stats().subscriptions, 0);
    let response = s
        .http
        .post(format!("{}/push/subscriptions", s.base))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}
