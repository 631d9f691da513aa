//! The `authorized` example's own test: who may read what, and presence counting.

#[allow(dead_code)]
#[path = "../examples/authorized.rs"]
mod authorized;

use futures_util::StreamExt;

async fn start() -> String {
    let (router, _hub, _presence) = authorized::app();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

async fn presence(base: &str) -> serde_json::Value {
    serde_json::from_str(&reqwest::get(format!("{base}/presence")).await.unwrap().text().await.unwrap()).unwrap()
}

#[tokio::test]
async fn private_topics_need_their_owner_and_presence_counts_connections() {
    let base = start().await;
    let http = reqwest::Client::new();
    let open = |path: &str, cookie: Option<&str>| {
        let mut request = http.get(format!("{base}{path}"));
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        request.send()
    };
    for path in ["/events?topic=private/alice", "/poll?topic=private/alice"] {
        assert_eq!(open(path, None).await.unwrap().status(), 401, "{path}");
        assert_eq!(open(path, Some("user=bob")).await.unwrap().status(), 403, "{path}");
    }
    // Alice reads her topic; a public topic needs nothing.
    let alice = open("/events?topic=private/alice", Some("theme=dark; user=alice")).await.unwrap();
    assert_eq!(alice.status(), 200);
    let public = open("/events?topic=news", None).await.unwrap();
    assert_eq!(public.status(), 200);
    assert_eq!(presence(&base).await, serde_json::json!({ "news": 1, "private/alice": 1 }));

    let published = http
        .post(format!("{base}/publish"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "topic": "private/alice", "data": "for alice" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let mut stream = alice.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("data: for alice") {
        seen.push_str(std::str::from_utf8(&stream.next().await.unwrap().unwrap()).unwrap());
    }
    drop(stream);
    drop(public);
    // Dropping the responses closes the connections; the hooks run as the streams end.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while presence(&base).await != serde_json::json!({}) {
        assert!(tokio::time::Instant::now() < deadline, "presence never went back to zero");
        tokio::task::yield_now().await;
    }
}
