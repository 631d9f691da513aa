//! The demo's private topics: `private/<user>` needs the JWT `POST /login` hands out, by
//! header or cookie; the events reach only its holder.

mod common;

use futures_util::StreamExt;
use tidings_test_support::Demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_private_topic_needs_the_token_from_login() {
    let demo = Demo::start(0, &["--store", "memory"]);
    let (http, base) = (reqwest::Client::new(), demo.url());
    let events = |cookie: Option<String>| {
        let mut request = http.get(format!("{base}/events?topic=private/alice"));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    assert_eq!(events(None).await.unwrap().status(), 401);
    let login = |user: &str| {
        http.post(format!("{base}/login")).body(serde_json::json!({ "user": user }).to_string()).send()
    };
    let cookie_of = |response: &reqwest::Response| {
        response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
    };
    let bob = login("bob").await.unwrap();
    assert_eq!(events(Some(cookie_of(&bob))).await.unwrap().status(), 403);
    assert_eq!(login("a*").await.unwrap().status(), 400, "no wildcard user names");
    let alice = login("alice").await.unwrap();
    assert_eq!(alice.status(), 200);
    let stream = events(Some(cookie_of(&alice))).await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    common::publish(&http, &base, "private/alice", "for alice only").await.expect("published");
    let mut seen = String::new();
    while !seen.contains("data: for alice only") {
        seen.push_str(std::str::from_utf8(&body.next().await.expect("open").unwrap()).unwrap());
    }
}
