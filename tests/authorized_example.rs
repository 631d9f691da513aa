//! The `authorized` example's own test: JWT authorization as Mercure does it (header or
//! cookie, claims listing topics), replay that never leaks a topic the token does not list, and
//! presence counting.

#[allow(dead_code)]
#[path = "../examples/authorized.rs"]
mod authorized;

use futures_util::StreamExt;

const SECRET: &[u8] = b"a test secret of thirty-two bytes!";

async fn start() -> String {
    let (router, _hub, _presence) = authorized::app_with_secret(SECRET.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tidings::http::Server::new(router).serve(listener, std::future::pending()));
    base
}

async fn presence(base: &str) -> serde_json::Value {
    serde_json::from_str(&reqwest::get(format!("{base}/presence")).await.unwrap().text().await.unwrap()).unwrap()
}

/// Logs `user` in: the token from the body, and the `Set-Cookie` value.
async fn login(http: &reqwest::Client, base: &str, user: &str) -> (String, String) {
    let response = http
        .post(format!("{base}/login"))
        .body(serde_json::json!({ "user": user }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    (body["token"].as_str().unwrap().to_owned(), cookie.split(';').next().unwrap().to_owned())
}

async fn publish(http: &reqwest::Client, base: &str, topic: &str, data: &str) {
    let published = http
        .post(format!("{base}/publish"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "topic": topic, "data": data }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
}

/// Reads an SSE body until `until` appears; returns all it read.
async fn read_until<B: AsRef<[u8]>>(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<B>> + Unpin),
    until: &str,
) -> String {
    let mut seen = String::new();
    while !seen.contains(until) {
        let chunk = stream.next().await.expect("stream open").unwrap();
        seen.push_str(std::str::from_utf8(chunk.as_ref()).unwrap());
    }
    seen
}

#[tokio::test]
async fn private_topics_need_a_token_listing_them_and_presence_counts_connections() {
    let base = start().await;
    let http = reqwest::Client::new();
    let (alice_token, alice_cookie) = login(&http, &base, "alice").await;
    let (bob_token, _) = login(&http, &base, "bob").await;
    let open = |path: &str, header: Option<(&str, String)>| {
        let mut request = http.get(format!("{base}{path}"));
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.send()
    };
    for path in ["/events?topic=private/alice", "/poll?topic=private/alice&timeout=0"] {
        let none = open(path, None).await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let bobs = open(path, Some(("authorization", format!("Bearer {bob_token}")))).await.unwrap();
        assert_eq!(bobs.status(), 403, "{path}");
        assert!(bobs.text().await.unwrap().contains("the token does not allow private/alice"));
        // A forged token (signed with another secret) is no token at all.
        let forged = tidings::http::jwt::sign_hs256(b"not the server's secret, 32 bytes", Some("alice"), &["*"], std::time::Duration::from_secs(60));
        let forged = open(path, Some(("authorization", format!("Bearer {forged}")))).await.unwrap();
        assert_eq!(forged.status(), 401, "{path}");
    }
    // Alice reads her topic with the header or with the cookie; a public topic needs nothing.
    let by_header = open("/events?topic=private/alice", Some(("authorization", format!("Bearer {alice_token}")))).await.unwrap();
    assert_eq!(by_header.status(), 200);
    let alice = open("/events?topic=private/alice", Some(("cookie", format!("theme=dark; {alice_cookie}")))).await.unwrap();
    assert_eq!(alice.status(), 200);
    drop(by_header);
    let public = open("/events?topic=news", None).await.unwrap();
    assert_eq!(public.status(), 200);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while presence(&base).await != serde_json::json!({ "news": 1, "private/alice": 1 }) {
        assert!(tokio::time::Instant::now() < deadline, "presence never settled: {}", presence(&base).await);
        tokio::task::yield_now().await;
    }

    publish(&http, &base, "private/alice", "for alice").await;
    let mut stream = alice.bytes_stream();
    read_until(&mut stream, "data: for alice").await;
    drop(stream);
    drop(public);
    // Dropping the responses closes the connections; the hooks run as the streams end.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while presence(&base).await != serde_json::json!({}) {
        assert!(tokio::time::Instant::now() < deadline, "presence never went back to zero");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_cursor_never_replays_a_topic_the_token_does_not_list() {
    let base = start().await;
    let http = reqwest::Client::new();
    let (bob, _) = login(&http, &base, "bob").await;
    let (alice, _) = login(&http, &base, "alice").await;
    // Bob's cursor stands before two events of his private topic.
    let bobs_poll = http
        .get(format!("{base}/poll?topic=private/bob&topic=news&timeout=0"))
        .header("authorization", format!("Bearer {bob}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bobs_poll.status(), 200);
    let cursor = serde_json::from_str::<serde_json::Value>(&bobs_poll.text().await.unwrap()).unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    publish(&http, &base, "private/bob", "bob's secret").await;
    publish(&http, &base, "news", "public news").await;

    // Alice, with Bob's cursor: asking for his topic is refused outright...
    let asked = http
        .get(format!("{base}/poll?topic=private/bob&cursor={cursor}&timeout=0"))
        .header("authorization", format!("Bearer {alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 403);
    // ...and over her own topics the cursor replays only what those topics hold.
    let replay = http
        .get(format!("{base}/events?topic=news&topic=private/alice&lastEventId={cursor}"))
        .header("authorization", format!("Bearer {alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    let mut stream = replay.bytes_stream();
    let seen = read_until(&mut stream, "data: public news").await;
    publish(&http, &base, "private/alice", "alice's own").await;
    let seen = seen + &read_until(&mut stream, "data: alice's own").await;
    assert!(!seen.contains("bob's secret"), "{seen}");
}
