//! The store scenarios: the [`Store`] contract, checked directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings_core::{NewEvent, Retention, Store, TailItem, Topic};
use tokio_stream::StreamExt;

use crate::{Failure, Outcome, StoreFactory, Verdict, ensure};

type Run = fn(Arc<dyn StoreFactory>) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;

macro_rules! define_all {
    (; $($name:ident,)+) => {
        /// Every store scenario, in report order.
        pub const ALL: &[(&str, Run)] = &[$((stringify!($name), |f| Box::pin($name(f))),)+];
    };
}

pub(crate) use define_all;

crate::__store_scenarios!(crate::stores::define_all;);

/// Runs one store scenario, reports it, and panics if it failed.
pub async fn check(stores: Arc<dyn StoreFactory>, name: &str, report_dir: &str) {
    let started = Instant::now();
    let verdict = match ALL.iter().find(|(n, _)| *n == name) {
        None => Verdict::Failed(Failure(format!("no store scenario named {name}"))),
        Some((_, run)) => match run(stores.clone()).await {
            Ok(()) => Verdict::Passed,
            Err(f) => Verdict::Failed(f),
        },
    };
    crate::report(report_dir, &format!("store+{}", stores.name()), name, &verdict, started.elapsed());
    if let Verdict::Failed(failure) = verdict {
        panic!("store scenario {name} failed: {failure}");
    }
}

fn t(name: &str) -> Topic {
    Topic::new(name)
}

fn err(e: impl std::fmt::Display) -> Failure {
    Failure(format!("store error: {e}"))
}

async fn append(store: &Arc<dyn Store>, topic: &str, data: &str) -> Result<u64, Failure> {
    Ok(store.append(NewEvent::new(t(topic), data)).await.map_err(err)?.seq)
}

async fn data_after(store: &Arc<dyn Store>, topic: &str, after: u64) -> Result<Vec<String>, Failure> {
    let page = store.read_after(&t(topic), after, 1000).await.map_err(err)?;
    Ok(page.events.iter().map(|e| e.data.to_string()).collect())
}

/// Positions count 1, 2, 3… per topic, independently.
pub async fn append_assigns_consecutive_positions_per_topic(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    let mut seqs = Vec::new();
    for topic in ["a", "a", "b", "a", "b"] {
        seqs.push(append(&store, topic, "x").await?);
    }
    ensure!(seqs == [1, 2, 1, 3, 2], "positions {seqs:?}, expected [1, 2, 1, 3, 2]");
    Ok(())
}

/// `read_after(p)` returns exactly the events after `p`, oldest first.
pub async fn read_after_returns_what_follows_in_order(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    for i in 0..10 {
        append(&store, "a", &i.to_string()).await?;
    }
    let got = data_after(&store, "a", 4).await?;
    ensure!(got == ["4", "5", "6", "7", "8", "9"], "read_after(4) gave {got:?}");
    let all = data_after(&store, "a", 0).await?;
    ensure!(all.len() == 10 && all[0] == "0", "read_after(0) gave {all:?}");
    Ok(())
}

/// A page holds at most `limit` events.
pub async fn read_after_respects_the_limit(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    for i in 0..10 {
        append(&store, "a", &i.to_string()).await?;
    }
    let page = store.read_after(&t("a"), 2, 3).await.map_err(err)?;
    let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
    ensure!(seqs == [3, 4, 5], "limit 3 after 2 gave {seqs:?}");
    ensure!((page.bounds.first, page.bounds.last) == (1, 10), "bounds {:?}", page.bounds);
    Ok(())
}

/// Reading at or past the end returns nothing (and no error).
pub async fn read_past_the_end_is_empty(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    append(&store, "a", "x").await?;
    for after in [1, 2, u64::MAX] {
        let got = data_after(&store, "a", after).await?;
        ensure!(got.is_empty(), "read_after({after}) gave {got:?}");
    }
    Ok(())
}

/// A topic never written to has bounds first = 1, last = 0.
pub async fn unknown_topic_has_empty_bounds(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    let b = store.bounds(&t("nobody")).await.map_err(err)?;
    ensure!((b.first, b.last) == (1, 0), "bounds of an unknown topic: {b:?}");
    Ok(())
}

/// With a count limit, the oldest events go and `first` moves.
pub async fn retention_by_count_drops_oldest(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default().max_events(3)).await;
    for i in 0..7 {
        append(&store, "a", &i.to_string()).await?;
    }
    append(&store, "b", "other").await?;
    let b = store.bounds(&t("a")).await.map_err(err)?;
    ensure!((b.first, b.last) == (5, 7), "bounds after 7 appends keeping 3: {b:?}");
    let got = data_after(&store, "a", 0).await?;
    ensure!(got == ["4", "5", "6"], "retained {got:?}");
    let other = data_after(&store, "b", 0).await?;
    ensure!(other == ["other"], "another topic's retention was affected: {other:?}");
    Ok(())
}

/// With an age limit, expired events go.
pub async fn retention_by_age_drops_expired(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default().max_age(Duration::from_millis(300))).await;
    append(&store, "a", "old").await?;
    // Waits for real time to pass: the property under test is expiry by wall-clock age.
    tokio::time::sleep(Duration::from_millis(600)).await;
    append(&store, "a", "new").await?;
    let got = data_after(&store, "a", 0).await?;
    ensure!(got == ["new"], "after expiry: {got:?}");
    let b = store.bounds(&t("a")).await.map_err(err)?;
    ensure!((b.first, b.last) == (2, 2), "bounds after expiry: {b:?}");
    Ok(())
}

/// Any UTF-8 text, newlines, NUL and astral characters included, comes back byte-exact.
pub async fn data_round_trips_byte_exact(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    let samples = ["", "a\r\nb\rc\n", "\0nul", "🦀 𝄞 \u{10FFFF}", &"z".repeat(1 << 20)];
    for s in samples {
        append(&store, "a", s).await?;
    }
    let got = data_after(&store, "a", 0).await?;
    ensure!(got == samples, "data changed on the way through the store");
    Ok(())
}

/// Every event and bound carries the store's epoch.
pub async fn events_carry_the_store_epoch(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    let e = store.append(NewEvent::new(t("a"), "x")).await.map_err(err)?;
    let b = store.bounds(&t("a")).await.map_err(err)?;
    let page = store.read_after(&t("a"), 0, 10).await.map_err(err)?;
    ensure!(e.epoch == b.epoch && page.events[0].epoch == b.epoch, "epochs differ");
    Ok(())
}

/// Two fresh logs have different epochs, so cursors of one are foreign to the other.
pub async fn fresh_stores_have_distinct_epochs(f: Arc<dyn StoreFactory>) -> Outcome {
    let a = f.open(Retention::default()).await;
    let b = f.open(Retention::default()).await;
    let (ea, eb) = (a.bounds(&t("x")).await.map_err(err)?.epoch, b.bounds(&t("x")).await.map_err(err)?.epoch);
    ensure!(ea != eb, "two fresh logs share epoch {ea}");
    Ok(())
}

/// Appends from many tasks at once get distinct, consecutive positions.
pub async fn concurrent_appends_get_unique_positions(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    let mut tasks = Vec::new();
    for p in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..50 {
                seqs.push(append(&store, "a", &format!("{p}:{n}")).await?);
            }
            Ok::<_, Failure>(seqs)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| Failure(e.to_string()))??);
    }
    all.sort_unstable();
    ensure!(all == (1..=400).collect::<Vec<u64>>(), "positions are not exactly 1..=400");
    Ok(())
}

/// The live tail yields what is appended after it opens, per topic in order (it may also
/// yield events appended shortly before it opened: the hub skips those).
pub async fn live_tail_yields_appends_in_order(f: Arc<dyn StoreFactory>) -> Outcome {
    let store = f.open(Retention::default()).await;
    append(&store, "a", "before").await?;
    let mut tail = store.live_tail().await.map_err(err)?;
    for i in 0..20 {
        append(&store, if i % 2 == 0 { "a" } else { "b" }, &i.to_string()).await?;
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        match tokio::time::timeout(Duration::from_secs(10), tail.next()).await {
            Err(_) => return Err(Failure(format!("tail stalled after {seen:?}"))),
            Ok(None) => return Err(Failure("tail ended".into())),
            Ok(Some(TailItem::Event(e))) if seen.is_empty() && &*e.data == "before" => {}
            Ok(Some(TailItem::Event(e))) => seen.push(e.data.to_string()),
            Ok(Some(other)) => return Err(Failure(format!("unexpected {other:?}"))),
        }
    }
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    ensure!(seen == want, "tail yielded {seen:?}");
    Ok(())
}

