//! Redis going away, being cut off, or being flushed: no silent loss.

use std::time::Duration;

use tidings_core::{Delivery, Hub, NewEvent, Retention, SubscribeRequest, Subscription, Topic};
use tidings_redis::{RedisOptions, RedisStore};
use tidings_test_support::{RedisServer, free_port};

async fn hub(server: &RedisServer) -> Hub {
    let options = RedisOptions::default().retention(Retention::default().max_events(100_000));
    Hub::new(RedisStore::connect(&server.url(), options).await.unwrap())
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(30), sub.next()).await.expect("a delivery").expect("not ended")
}

fn topic() -> Topic {
    Topic::new("load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_every_connection_under_load_loses_and_repeats_nothing() {
    let server = RedisServer::start();
    let hub = hub(&server).await;
    let mut sub = hub.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap();
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0);
            for n in 0..1500u32 {
                // A publish that fails while connections are cut is retried until it succeeds.
                loop {
                    match hub.publish(NewEvent::new(topic(), n.to_string())).await {
                        Ok(e) => {
                            acked.push((n, e.seq));
                            break;
                        }
                        Err(_) => failed += 1,
                    }
                }
            }
            (acked, failed)
        })
    };
    // Cut every client connection (the hub's commands and its live tail) while publishing.
    let mut kills = 0;
    let mut received = Vec::new();
    while received.len() < 1500 {
        if let Delivery::Event(e) = next(&mut sub).await {
            received.push((e.event().seq, e.event().data.to_string()));
        } else {
            panic!("unexpected delivery");
        }
        if received.len() % 300 == 150 {
            let out = server.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
            kills += out.trim().parse::<u32>().unwrap_or(0);
        }
    }
    let (acked, _failed) = publisher.await.unwrap();
    assert!(kills >= 4, "connections were cut {kills} times");
    // Drain whatever the log holds beyond what was received (retried publishes may have
    // committed twice): the subscriber must see the whole log, positions 1, 2, 3, … once each.
    let last = hub.store().bounds(&topic()).await.unwrap().last;
    while (received.len() as u64) < last {
        if let Delivery::Event(e) = next(&mut sub).await {
            received.push((e.event().seq, e.event().data.to_string()));
        }
    }
    for (i, (seq, _)) in received.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "position {} delivered as {seq}", i + 1);
    }
    // And every acknowledged publish is in it, at the position it was acknowledged with.
    for (n, seq) in acked {
        assert_eq!(received[seq as usize - 1].1, n.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_yields_a_gap_not_silence() {
    let server = RedisServer::start();
    let hub = hub(&server).await;
    let mut sub = hub.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap();
    hub.publish(NewEvent::new(topic(), "before")).await.unwrap();
    assert!(matches!(next(&mut sub).await, Delivery::Event(e) if &*e.event().data == "before"));
    server.cli(&["FLUSHALL"]);
    hub.publish(NewEvent::new(topic(), "after")).await.unwrap();
    match next(&mut sub).await {
        Delivery::Gap(gap) => assert_eq!(gap.topics, vec![topic()]),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert!(matches!(next(&mut sub).await, Delivery::Event(e) if &*e.event().data == "after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_publishes_fail_clearly_and_subscribers_resume_when_it_is_back() {
    let port = free_port();
    let server = RedisServer::start_persistent_on(port);
    let hub = hub(&server).await;
    let mut sub = hub.subscribe(SubscribeRequest::new(vec![topic()])).await.unwrap();
    hub.publish(NewEvent::new(topic(), "one")).await.unwrap();
    assert!(matches!(next(&mut sub).await, Delivery::Event(e) if &*e.event().data == "one"));

    server.kill();
    let err = hub.publish(NewEvent::new(topic(), "lost")).await.unwrap_err();
    assert!(err.to_string().contains("store unavailable"), "{err}");

    let _back = RedisServer::start_persistent_on(port);
    // The connection manager reconnects on demand: the first publishes may still fail.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match hub.publish(NewEvent::new(topic(), "two")).await {
            Ok(e) => {
                assert_eq!(e.seq, 2, "the log survived the restart");
                break;
            }
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "redis never came back: {e}"),
        }
    }
    assert!(matches!(next(&mut sub).await, Delivery::Event(e) if &*e.event().data == "two"));
}
