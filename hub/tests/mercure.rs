//! The Mercure protocol as a client sees it: publish with a form and a token, subscribe with
//! selectors, resume with `Last-Event-ID`, private updates, errors.

mod common;

use std::time::Duration;

use common::{TestHub, data, publisher, subscriber};

const BOOKS: &str = "https://example.com/books/{id}";

#[tokio::test]
async fn a_form_publish_reaches_a_subscriber_with_the_publisher_id() {
    let hub = TestHub::memory().await;
    let mut sub = hub.follow(&["https://example.com/books/1"]).await;
    assert_eq!(sub.headers["content-type"], "text/event-stream");
    assert_eq!(sub.last_event_id(), None, "no id asked, none answered");
    let token = publisher(&["https://example.com/books/{id}"]);
    let fields = [
        ("topic", "https://example.com/books/1"),
        ("data", "{\"title\":\"Dune\"}\nsecond line"),
        ("id", "urn:uuid:7f7c"),
        ("type", "change"),
        ("retry", "1500"),
    ];
    let (status, body) = hub.post(Some(&token), &fields).await;
    assert_eq!((status, body.as_str()), (200, "urn:uuid:7f7c"));
    let event = sub.next().await;
    assert_eq!(event.id, "urn:uuid:7f7c");
    assert_eq!(event.event, "change");
    assert_eq!(event.data, "{\"title\":\"Dune\"}\nsecond line");
    assert_eq!(event.retry, Some(Duration::from_millis(1500)));
}

#[tokio::test]
async fn without_an_id_the_hub_makes_one_and_answers_it() {
    let hub = TestHub::memory().await;
    let mut sub = hub.follow(&["a"]).await;
    let first = hub.publish(&["a"], "one").await;
    let second = hub.publish(&["a"], "two").await;
    assert!(first.starts_with("urn:tidings:"), "{first}");
    assert_ne!(first, second);
    let events = sub.until("two").await;
    assert_eq!(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [first.as_str(), second.as_str()]);
    assert_eq!(events[0].event, "message");
}

#[tokio::test]
async fn an_update_with_two_topics_reaches_a_subscriber_of_each_exactly_once() {
    let hub = TestHub::memory().await;
    let mut canonical = hub.follow(&["https://example.com/books/1", "end"]).await;
    let mut alternate = hub.follow(&["https://example.com/authors/9/books", "end"]).await;
    let mut both = hub.follow(&["https://example.com/books/1", "https://example.com/authors/9/books", BOOKS, "end"]).await;
    let mut neither = hub.follow(&["https://example.com/books/2", "end"]).await;
    hub.publish(&["https://example.com/books/1", "https://example.com/authors/9/books"], "both").await;
    hub.publish(&["end"], "end").await;
    for (name, sub, expected) in [
        ("canonical", &mut canonical, vec!["both", "end"]),
        ("alternate", &mut alternate, vec!["both", "end"]),
        ("both", &mut both, vec!["both", "end"]),
        ("neither", &mut neither, vec!["end"]),
    ] {
        assert_eq!(data(&sub.until("end").await), expected, "{name}");
    }
}

#[tokio::test]
async fn a_template_subscription_resumes_with_updates_to_topics_that_did_not_exist_when_it_left() {
    let hub = TestHub::memory().await;
    let mut sub = hub.follow(&[BOOKS]).await;
    let left_at = hub.publish(&["https://example.com/books/1"], "before").await;
    assert_eq!(sub.next().await.id, left_at);
    drop(sub);

    // While it is away: new topics that match, others that do not.
    hub.publish(&["https://example.com/books/2"], "new book 2").await;
    hub.publish(&["https://example.com/authors/1"], "an author").await;
    hub.publish(&["https://example.com/books/2/reviews"], "a review").await;
    hub.publish(&["https://example.com/authors/3", "https://example.com/books/3"], "new book 3, by an alternate").await;
    hub.publish(&["https://example.com/books/1"], "after").await;

    let mut back = hub.subscribe(&[("topic", BOOKS)], &[("last-event-id", &left_at)]).await;
    assert_eq!(back.status, 200);
    assert_eq!(back.last_event_id(), Some(left_at.as_str()));
    let missed = back.until("after").await;
    assert_eq!(data(&missed), ["new book 2", "new book 3, by an alternate", "after"]);

    // The query parameter works as the header does (header first when both are there).
    let mut by_query = hub.subscribe(&[("topic", BOOKS), ("lastEventID", &left_at)], &[]).await;
    assert_eq!(data(&by_query.until("after").await), ["new book 2", "new book 3, by an alternate", "after"]);
}

#[tokio::test]
async fn a_publisher_id_resumes_exactly_and_the_first_duplicate_wins() {
    let hub = TestHub::memory().await;
    let token = publisher(&["*"]);
    for (id, data) in [("u1", "one"), ("u2", "two"), ("u1", "again")] {
        let (status, body) = hub.post(Some(&token), &[("topic", "t"), ("data", data), ("id", id)]).await;
        assert_eq!((status, body.as_str()), (200, id));
    }
    hub.publish(&["t"], "end").await;
    let mut sub = hub.subscribe(&[("topic", "t")], &[("last-event-id", "u1")]).await;
    assert_eq!(data(&sub.until("end").await), ["two", "again", "end"]);
    let mut sub = hub.subscribe(&[("topic", "t")], &[("last-event-id", "earliest")]).await;
    assert_eq!(sub.last_event_id(), Some("earliest"));
    assert_eq!(data(&sub.until("end").await), ["one", "two", "again", "end"]);
}

#[tokio::test]
async fn an_unknown_id_gets_a_gap_notice_then_every_retained_update() {
    // The reference hub replays nothing for an id it does not know: a client cannot tell that
    // it lost updates. tidings says so, then sends what it has.
    let hub = TestHub::memory().await;
    hub.publish(&["t"], "one").await;
    hub.publish(&["t"], "two").await;
    let mut sub = hub.subscribe(&[("topic", "t")], &[("last-event-id", "urn:uuid:not-from-here")]).await;
    assert_eq!(sub.last_event_id(), Some("earliest"));
    let gap = sub.next().await;
    assert_eq!(gap.event, "tidings.gap");
    assert_eq!(gap.data, r#"{"reason":"unknown-id"}"#);
    assert_eq!(data(&sub.until("two").await), ["one", "two"]);

    // The notice's id is where the stream goes on from: a client that reconnects before any
    // update arrives resumes there, without another notice.
    let mut again = hub.subscribe(&[("topic", "t")], &[("last-event-id", &gap.id)]).await;
    assert_eq!(again.last_event_id(), Some(gap.id.as_str()));
    assert_eq!(data(&again.until("two").await), ["one", "two"]);
}

#[tokio::test]
async fn a_cookie_authorizes_a_publish_only_from_an_allowed_origin() {
    // A browser sends the cookie with requests any site makes: a cross-site form must not
    // publish with it.
    let settings = tidings_hub::Settings { publish_origins: vec!["https://app.example".into()], ..common::settings() };
    let hub = TestHub::start(std::sync::Arc::new(tidings_core::MemoryStore::new()), settings).await;
    let cookie = format!("mercureAuthorization={}", publisher(&["*"]));
    let post = |headers: Vec<(&'static str, String)>| {
        let mut request = hub.http.post(hub.hub_url()).header("content-type", "application/x-www-form-urlencoded").body("topic=t&data=x");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(vec![("cookie", cookie.clone()), ("origin", "https://evil.example".into())]).await, 403);
    assert_eq!(post(vec![("cookie", cookie.clone())]).await, 403, "no origin at all");
    assert_eq!(post(vec![("cookie", cookie.clone()), ("origin", "https://app.example".into())]).await, 200);
    assert_eq!(post(vec![("cookie", cookie.clone()), ("referer", "https://app.example/page?x".into())]).await, 200);
    // A bearer token is not sent by the browser on its own: no origin needed.
    assert_eq!(post(vec![("authorization", format!("Bearer {}", publisher(&["*"])))]).await, 200);
    // When an Authorization header is there, it is the token: another scheme is a 401, not a
    // fall back to the cookie.
    assert_eq!(post(vec![("authorization", "Basic dXNlcjpwYXNz".into()), ("cookie", cookie), ("origin", "https://app.example".into())]).await, 401);
}

#[tokio::test]
async fn private_updates_reach_only_matching_tokens_live_and_on_replay() {
    let hub = TestHub::memory().await;
    let alice = subscriber(&["https://example.com/users/alice/{+rest}"]);
    let bob = subscriber(&["https://example.com/users/bob/{+rest}"]);
    let topics = [("topic", "https://example.com/users/{user}/{+rest}")];
    let anonymous = hub.subscribe(&topics, &[]).await;
    let as_alice = hub.subscribe(&topics, &[("authorization", &format!("Bearer {alice}"))]).await;
    let as_bob = hub.subscribe(&[topics[0], ("authorization", &bob)], &[]).await;
    let start = hub.publish(&["https://example.com/users/alice/start"], "start").await;

    let token = publisher(&["*"]);
    let private = |topic: &'static str, data: &'static str| [("topic", topic), ("data", data), ("private", "")];
    assert_eq!(hub.post(Some(&token), &private("https://example.com/users/alice/inbox", "for alice")).await.0, 200);
    // Private to bob's topic, with alice's as an alternate: both may read it.
    let both = [("topic", "https://example.com/users/bob/inbox"), ("topic", "https://example.com/users/alice/cc"), ("data", "for both"), ("private", "on")];
    assert_eq!(hub.post(Some(&token), &both).await.0, 200);
    assert_eq!(hub.post(Some(&token), &private("https://example.com/users/bob/inbox", "for bob")).await.0, 200);
    hub.publish(&["https://example.com/users/alice/end"], "end").await;

    let expect = [(anonymous, vec!["start", "end"]), (as_alice, vec!["start", "for alice", "for both", "end"]), (as_bob, vec!["start", "for both", "for bob", "end"])];
    for (mut sub, expected) in expect {
        assert_eq!(sub.status, 200);
        assert_eq!(data(&sub.until("end").await), expected);
    }

    // On replay, the same rule.
    for (auth, expected) in [(None, vec!["end"]), (Some(&alice), vec!["for alice", "for both", "end"]), (Some(&bob), vec!["for both", "for bob", "end"])] {
        let mut query = vec![topics[0], ("lastEventID", &start)];
        if let Some(auth) = auth {
            query.push(("authorization", auth));
        }
        let mut sub = hub.subscribe(&query, &[]).await;
        assert_eq!(data(&sub.until("end").await), expected);
    }
    // A cookie carries a token too.
    let mut sub = hub.subscribe(&[topics[0], ("lastEventID", &start)], &[("cookie", &format!("other=1; mercureAuthorization={alice}"))]).await;
    assert_eq!(data(&sub.until("end").await), ["for alice", "for both", "end"]);
}

#[tokio::test]
async fn refusals_are_the_drafts_statuses_with_a_reason() {
    let hub = TestHub::memory().await;
    let form = [("topic", "https://example.com/books/1"), ("data", "x")];
    assert_eq!(hub.post(None, &form).await.0, 401);
    assert_eq!(hub.post(Some("not.a.token"), &form).await.0, 401);
    let wrong_key = common::token("another secret of at least 32 bytes....", serde_json::json!({"mercure": {"publish": ["*"]}}));
    assert_eq!(hub.post(Some(&wrong_key), &form).await.0, 401);
    let expired = common::token(common::PUBLISHER_KEY, serde_json::json!({"mercure": {"publish": ["*"]}, "exp": 1_000_000_000}));
    assert_eq!(hub.post(Some(&expired), &form).await.0, 401);
    let (status, body) = hub.post(Some(&publisher(&["https://example.com/authors/{id}"])), &form).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("books/1"), "{body}");
    // Every topic of an update must be allowed.
    let (status, _) = hub
        .post(Some(&publisher(&[BOOKS])), &[("topic", "https://example.com/books/1"), ("topic", "https://example.com/secret"), ("data", "x")])
        .await;
    assert_eq!(status, 403);
    let no_claim = common::token(common::PUBLISHER_KEY, serde_json::json!({"sub": "x"}));
    assert_eq!(hub.post(Some(&no_claim), &form).await.0, 403);

    let token = publisher(&["*"]);
    for (fields, reason) in [
        (vec![("data", "no topic")], "topic"),
        (vec![("topic", "t"), ("retry", "soon")], "retry"),
        (vec![("topic", "t"), ("type", "tidings.gap")], "tidings."),
        (vec![("topic", "t"), ("type", "a\nb")], "line break"),
        (vec![("topic", "t"), ("id", "a\nb")], "control character"),
        (vec![("topic", "t"), ("id", "a\u{7f}b")], "control character"),
        (vec![("topic", "t"), ("id", "urn:tidings:abc")], "urn:tidings:"),
        (vec![("topic", "a\u{1}b")], "control"),
    ] {
        let (status, body) = hub.post(Some(&token), &fields).await;
        assert_eq!(status, 400, "{fields:?}: {body}");
        assert!(body.contains(reason), "{fields:?}: {body}");
    }

    // Subscribers: no topic, an oversized selector, a bad token (even when anonymous is allowed).
    assert_eq!(hub.subscribe(&[], &[]).await.status, 400);
    assert_eq!(hub.subscribe(&[("topic", &"a".repeat(5000))], &[]).await.status, 400);
    assert_eq!(hub.subscribe(&[("topic", "a"), ("authorization", "bad")], &[]).await.status, 401);
    let strict = TestHub::start(std::sync::Arc::new(tidings_core::MemoryStore::new()), tidings_hub::Settings { anonymous: false, ..common::settings() }).await;
    let refused = strict.subscribe(&[("topic", "a")], &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let allowed = strict.subscribe(&[("topic", "a"), ("authorization", &subscriber(&[]))], &[]).await;
    assert_eq!(allowed.status, 200);
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires_even_while_updates_keep_coming() {
    let hub = std::sync::Arc::new(TestHub::memory().await);
    // Past already, but within the 5 s leeway: accepted, and ending within seconds.
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 3;
    let token = common::token(common::SUBSCRIBER_KEY, serde_json::json!({"mercure": {"subscribe": ["*"]}, "exp": exp}));
    let mut sub = hub.subscribe(&[("topic", "a"), ("authorization", &token)], &[]).await;
    assert_eq!(sub.status, 200);
    hub.publish(&["a"], "while valid").await;
    assert_eq!(sub.next().await.data, "while valid");
    // Updates published back to back, each awaited: the stream seldom goes idle.
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for n in 0.. {
                hub.publish(&["a"], &format!("update {n}")).await;
            }
        })
    };
    assert!(sub.ends_within(Duration::from_secs(20)).await, "the stream ends once the token expires");
    publisher.abort();
}

#[tokio::test]
async fn the_hub_answers_with_a_discovery_link_and_cors_for_allowed_origins() {
    let settings = tidings_hub::Settings { cors_origins: vec!["https://app.example".into()], ..common::settings() };
    let hub = TestHub::start(std::sync::Arc::new(tidings_core::MemoryStore::new()), settings).await;
    let sub = hub.subscribe(&[("topic", "a")], &[("origin", "https://app.example")]).await;
    assert_eq!(sub.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(sub.headers["access-control-allow-credentials"], "true");
    assert!(sub.headers.get_all("link").iter().any(|l| l == "</.well-known/mercure>; rel=\"mercure\""));
    let other = hub.subscribe(&[("topic", "a")], &[("origin", "https://evil.example")]).await;
    assert!(other.headers.get("access-control-allow-origin").is_none());
    let page = hub.http.get(format!("{}/", hub.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("EventSource"));
}

#[tokio::test]
async fn subscription_events_and_the_api_show_who_is_subscribed() {
    let settings = tidings_hub::Settings { subscriptions: true, ..common::settings() };
    let hub = TestHub::start(std::sync::Arc::new(tidings_core::MemoryStore::new()), settings).await;
    let watcher_token = subscriber(&["/.well-known/mercure/subscriptions{/topic}{/subscriber}"]);
    let mut watcher = hub
        .subscribe(&[("topic", "/.well-known/mercure/subscriptions{/topic}{/subscriber}"), ("authorization", &watcher_token)], &[])
        .await;
    // Its own arrival is announced.
    let own: serde_json::Value = serde_json::from_str(&watcher.next().await.data).unwrap();
    assert_eq!(own["type"], "Subscription");

    let member = hub.subscribe(&[("topic", "https://example.com/rooms/1"), ("authorization", &subscriber(&[]))], &[]).await;
    let joined: serde_json::Value = serde_json::from_str(&watcher.next().await.data).unwrap();
    assert_eq!(joined["topic"], "https://example.com/rooms/1");
    assert_eq!(joined["active"], true);
    assert_eq!(joined["payload"], serde_json::json!({"user": "alice"}));
    assert!(joined["subscriber"].as_str().unwrap().starts_with("urn:uuid:"));
    assert_eq!(joined["id"], format!("/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2Frooms%2F1/{}", joined["subscriber"].as_str().unwrap().replace(':', "%3A")));

    let api = |path: String, token: Option<String>| {
        let request = hub.http.get(format!("{}{path}", hub.url));
        async move {
            let response = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
            .send()
            .await
            .unwrap();
            let status = response.status().as_u16();
            let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            (status, kind, response.text().await.unwrap())
        }
    };
    // A token in the query is matched against the path alone, and not echoed back.
    let (status, _, body) = api(format!("/.well-known/mercure/subscriptions?authorization={watcher_token}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&watcher_token));
    let (status, kind, body) = api("/.well-known/mercure/subscriptions".into(), Some(watcher_token.clone())).await;
    assert_eq!((status, kind.as_deref()), (200, Some("application/ld+json")));
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["type"], "Subscriptions");
    assert!(list["lastEventID"].as_str().unwrap().starts_with("urn:tidings:"));
    let topics: Vec<&str> = list["subscriptions"].as_array().unwrap().iter().map(|s| s["topic"].as_str().unwrap()).collect();
    assert!(topics.contains(&"https://example.com/rooms/1"), "{topics:?}");
    let one_path = joined["id"].as_str().unwrap().to_owned();
    let (status, _, body) = api(one_path.clone(), Some(watcher_token.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["subscriber"], joined["subscriber"]);
    assert_eq!(api("/.well-known/mercure/subscriptions".into(), None).await.0, 401);
    assert_eq!(api("/.well-known/mercure/subscriptions".into(), Some(subscriber(&["https://example.com/{+x}"]))).await.0, 403);

    drop(member);
    let left: serde_json::Value = serde_json::from_str(&watcher.next().await.data).unwrap();
    assert_eq!((left["topic"].as_str(), left["active"].as_bool()), (Some("https://example.com/rooms/1"), Some(false)));
    assert_eq!(api(one_path, Some(watcher_token)).await.0, 404);
}

#[tokio::test]
async fn a_subscriber_behind_the_retained_log_gets_a_gap_notice_then_what_is_left() {
    let store = tidings_core::MemoryStore::with_retention(tidings_core::Retention::default().max_events(3));
    let hub = TestHub::start(std::sync::Arc::new(store), common::settings()).await;
    let token = publisher(&["*"]);
    hub.post(Some(&token), &[("topic", "t"), ("data", "seen"), ("id", "seen")]).await;
    for n in 1..=5 {
        hub.publish(&["t"], &format!("missed {n}")).await;
    }
    let mut sub = hub.subscribe(&[("topic", "t")], &[("last-event-id", "seen")]).await;
    let gap = sub.next().await;
    assert_eq!((gap.event.as_str(), gap.data.as_str()), ("tidings.gap", r#"{"reason":"trimmed"}"#));
    assert_eq!(data(&sub.until("missed 5").await), ["missed 3", "missed 4", "missed 5"]);
}

#[tokio::test]
async fn long_polling_carries_the_same_updates_with_the_same_ids() {
    let hub = TestHub::memory().await;
    let token = publisher(&["*"]);
    let start = hub.publish(&["https://example.com/books/1"], "start").await;
    hub.publish(&["https://example.com/books/2"], "two").await;
    hub.post(Some(&token), &[("topic", "https://example.com/books/3"), ("data", "private"), ("private", "on")]).await;
    hub.publish(&["https://example.com/authors/1"], "not a book").await;
    hub.post(Some(&token), &[("topic", "https://example.com/books/4"), ("data", "typed"), ("type", "change"), ("id", "b4")]).await;

    let poll = |query: Vec<(&'static str, String)>| {
        let request = hub.http.get(format!("{}/.well-known/mercure/poll", hub.url)).query(&query);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/json");
            serde_json::from_str::<serde_json::Value>(&response.text().await.unwrap()).unwrap()
        }
    };
    let batch = poll(vec![("topic", BOOKS.into()), ("lastEventID", start.clone())]).await;
    let items = batch["updates"].as_array().unwrap();
    assert_eq!(items.iter().map(|u| u["data"].as_str().unwrap()).collect::<Vec<_>>(), ["two", "typed"]);
    assert_eq!((items[1]["id"].as_str(), items[1]["type"].as_str()), (Some("b4"), Some("change")));
    assert!(batch["gap"].is_null());
    let next = batch["lastEventID"].as_str().unwrap().to_owned();

    // Resuming from the batch's lastEventID: nothing is read twice; the poll waits for the next.
    let before = hub.mercure.hub().subscriber_count();
    let waiting = tokio::spawn(poll(vec![("topic", BOOKS.into()), ("lastEventID", next.clone()), ("timeout", "30".into())]));
    // The poll is waiting (its subscription open) before anything new is published.
    while hub.mercure.hub().subscriber_count() == before {
        tokio::task::yield_now().await;
    }
    hub.publish(&["https://example.com/authors/2"], "still not a book").await;
    hub.publish(&["https://example.com/books/5"], "five").await;
    let batch = waiting.await.unwrap();
    assert_eq!(batch["updates"].as_array().unwrap().iter().map(|u| u["data"].as_str().unwrap()).collect::<Vec<_>>(), ["five"]);

    // The same id resumes an SSE stream at the same place.
    let mut sub = hub.subscribe(&[("topic", BOOKS)], &[("last-event-id", &next)]).await;
    assert_eq!(data(&sub.until("five").await), ["five"]);

    // Nothing new: an empty batch when the timeout passes, and a 400 for a timeout that is not a number.
    let idle = poll(vec![("topic", "nothing-here".into()), ("timeout", "1".into())]).await;
    assert_eq!(idle["updates"].as_array().unwrap().len(), 0);
    let bad = hub.http.get(format!("{}/.well-known/mercure/poll?topic=a&timeout=soon", hub.url)).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    // An unknown id: the gap is said.
    let unknown = poll(vec![("topic", BOOKS.into()), ("lastEventID", "nope".into())]).await;
    assert_eq!(unknown["gap"], "unknown-id");
}

#[tokio::test]
async fn tokens_as_mercure_libraries_mint_them_and_bad_dates() {
    let hub = TestHub::memory().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let form = [("topic", "a"), ("data", "x")];
    // Symfony's library (lcobucci/jwt) writes `exp` with microseconds.
    let symfony = common::token(common::PUBLISHER_KEY, serde_json::json!({"mercure": {"publish": ["*"]}, "exp": now + 3600.928842}));
    assert_eq!(hub.post(Some(&symfony), &form).await.0, 200);
    let expired = common::token(common::PUBLISHER_KEY, serde_json::json!({"mercure": {"publish": ["*"]}, "exp": now - 60.5}));
    assert_eq!(hub.post(Some(&expired), &form).await.0, 401);
    let not_yet = common::token(common::PUBLISHER_KEY, serde_json::json!({"mercure": {"publish": ["*"]}, "nbf": now + 3600.0}));
    assert_eq!(hub.post(Some(&not_yet), &form).await.0, 401);
    let wrong_type = common::token(common::PUBLISHER_KEY, serde_json::json!({"mercure": {"publish": "*"}}));
    assert_eq!(hub.post(Some(&wrong_type), &form).await.0, 401);
    // A subscriber token that expires in a far future (past what a clock can add) is fine.
    let far = common::token(common::SUBSCRIBER_KEY, serde_json::json!({"mercure": {"subscribe": ["*"]}, "exp": u64::MAX}));
    let mut sub = hub.subscribe(&[("topic", "a"), ("authorization", &far)], &[]).await;
    assert_eq!(sub.status, 200);
    hub.publish(&["a"], "far").await;
    assert_eq!(sub.next().await.data, "far");
}

#[tokio::test]
async fn an_id_that_is_an_iri_resumes_from_the_header() {
    let hub = TestHub::memory().await;
    let token = publisher(&["*"]);
    hub.post(Some(&token), &[("topic", "t"), ("data", "one"), ("id", "urn:café:1")]).await;
    hub.publish(&["t"], "two").await;
    // As a browser sends it: the UTF-8 bytes of the id in the header.
    let header = reqwest::header::HeaderValue::from_bytes("urn:café:1".as_bytes()).unwrap();
    let response = hub.http.get(hub.hub_url()).query(&[("topic", "t")]).header("last-event-id", header).send().await.unwrap();
    assert_eq!(response.headers()["last-event-id"].as_bytes(), "urn:café:1".as_bytes());
    let mut sub = common::Subscriber::from_response(response);
    assert_eq!(data(&sub.until("two").await), ["two"]);
    // Ids a header could not carry back are refused at publish.
    for id in [" padded", "padded\t"] {
        assert_eq!(hub.post(Some(&token), &[("topic", "t"), ("id", id)]).await.0, 400, "{id:?}");
    }
    // A header that is not UTF-8: a gap notice, then everything retained.
    let bad = reqwest::header::HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap();
    let response = hub.http.get(hub.hub_url()).query(&[("topic", "t")]).header("last-event-id", bad).send().await.unwrap();
    assert_eq!(response.headers()["last-event-id"], "earliest");
    let mut sub = common::Subscriber::from_response(response);
    assert_eq!(sub.next().await.event, "tidings.gap");
}

#[tokio::test]
async fn a_forged_position_past_the_log_is_answered_earliest_with_a_gap() {
    let hub = TestHub::memory().await;
    let first = hub.publish(&["t"], "one").await;
    // The same epoch, a position far past the end.
    let token = first.strip_prefix("urn:tidings:").unwrap();
    let mut cursor = tidings_core::Cursor::parse(token).unwrap();
    cursor.set(&tidings_core::Topic::new("mercure"), 1000);
    let forged = format!("urn:tidings:{cursor}");
    let mut sub = hub.subscribe(&[("topic", "t")], &[("last-event-id", &forged)]).await;
    assert_eq!(sub.last_event_id(), Some("earliest"));
    assert_eq!(sub.next().await.event, "tidings.gap");
}

#[tokio::test]
async fn max_body_bounds_the_request_not_the_record() {
    let settings = tidings_hub::Settings { max_body: 1000, ..common::settings() };
    let hub = TestHub::start(std::sync::Arc::new(tidings_core::MemoryStore::new()), settings).await;
    // 300 control characters: 900 bytes of form, 1 800 of escaped JSON in the record.
    let data = "\u{1}".repeat(300);
    let (status, body) = hub.post(Some(&publisher(&["*"])), &[("topic", "t"), ("data", &data)]).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = hub.post(Some(&publisher(&["*"])), &[("topic", "t"), ("data", &"x".repeat(1200))]).await;
    assert_eq!(status, 413);
}
