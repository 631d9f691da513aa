//! Long-polling, tidings' extension to the hub: the updates an SSE stream would carry, as JSON
//! batches, for clients and proxies where streams break. Not part of the Mercure protocol.
//!
//! `GET /.well-known/mercure/poll?topic=…[&lastEventID=…][&timeout=SECS]` takes the same
//! selectors, tokens and `Last-Event-ID` as a subscription. It answers at once with the updates
//! after the id that the subscriber may see, at most [`MAX_BATCH`]; when there are none yet, it
//! waits up to `timeout` seconds (default 25, at most 60) for the first. The answer:
//!
//! ```json
//! {"updates": [{"id": "urn:uuid:…", "type": null, "data": "…"}], "lastEventID": "urn:tidings:…", "gap": null}
//! ```
//!
//! `lastEventID` is where the next poll resumes: the position after everything this poll read,
//! whether it passed the subscriber's selectors or not (so the next poll never reads it again).
//! It is also a valid `Last-Event-ID` for an SSE subscription. `gap` is `"trimmed"` or
//! `"unknown-id"` when the hub could not give everything after the id (the SSE stream's
//! `tidings.gap` notice), else `null`.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use serde::Serialize;
use tidings_core::Delivery;
use tidings_http::HttpError;

use crate::update::{Decoded, HUB_ID_PREFIX, Update, View};
use crate::{MercureHub, open_subscription};

/// The path of the long-polling endpoint.
pub const PATH: &str = "/.well-known/mercure/poll";

/// The most updates one answer carries.
pub const MAX_BATCH: usize = 1000;

/// How long a poll waits when the request does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);

/// The longest wait a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The most updates one poll reads, seen or not: a poll far behind, through updates it does
/// not see, answers with its new position after this many (and an empty batch, perhaps).
pub const MAX_READ: usize = 10_000;

/// One update in a batch.
#[derive(Debug, Serialize)]
struct Item {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    data: String,
}

/// A batch.
#[derive(Debug, Serialize)]
struct Batch {
    updates: Vec<Item>,
    #[serde(rename = "lastEventID")]
    last_event_id: String,
    gap: Option<&'static str>,
}

/// `GET /.well-known/mercure/poll`.
pub async fn poll(State(mercure): State<MercureHub>, request: Request) -> Response {
    match answer(&mercure, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

fn timeout(query: Option<&str>) -> Result<Duration, HttpError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    match pairs.iter().find(|(k, _)| k == "timeout") {
        None => Ok(DEFAULT_TIMEOUT),
        Some((_, value)) => value
            .parse::<u64>()
            .map(|secs| Duration::from_secs(secs).min(MAX_TIMEOUT))
            .map_err(|_| HttpError::bad_request(format!("invalid timeout {:?}: a whole number of seconds", value.chars().take(32).collect::<String>()))),
    }
}

async fn answer(mercure: &MercureHub, request: Request) -> Result<Response, HttpError> {
    let (parts, _body) = request.into_parts();
    let wait = timeout(parts.uri.query())?;
    let mut opened = open_subscription(&mercure.inner, &parts).await?;
    let mut gap = opened.unknown_id.is_some().then_some("unknown-id");
    let mut updates = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let expires = crate::expiry(opened.claims.as_ref()).unwrap_or(deadline).min(deadline);
    let mut done = false;
    let take = |delivery: Delivery, updates: &mut Vec<Item>, gap: &mut Option<&'static str>| match delivery {
        Delivery::Event(event) => {
            let visible = event.with_encoded::<Decoded, _>(|bytes| opened.filter.lets_through(&View::new(bytes)));
            if visible && let Ok(update) = serde_json::from_str::<Update>(&event.event().data) {
                let id = update.id.unwrap_or_else(|| crate::update::hub_id(event.event()));
                updates.push(Item { id, kind: update.kind, data: update.data });
            }
            false
        }
        Delivery::Gap(_) => {
            *gap = Some("trimmed");
            false
        }
        // Shutting down, or anything else: answer with what there is.
        _ => true,
    };
    let mut read = 0;
    while !done {
        while updates.len() < MAX_BATCH && read < MAX_READ {
            match opened.subscription.next_ready().await {
                Some(delivery) => {
                    read += 1;
                    if take(delivery, &mut updates, &mut gap) {
                        done = true;
                        break;
                    }
                }
                None => break,
            }
            tokio::task::consume_budget().await;
        }
        if done || !updates.is_empty() || gap.is_some() || read >= MAX_READ {
            break;
        }
        tokio::select! {
            delivery = opened.subscription.next() => match delivery {
                Some(delivery) => done = take(delivery, &mut updates, &mut gap),
                None => done = true,
            },
            () = tokio::time::sleep_until(expires) => done = true,
        }
    }
    let mut last_event_id = String::from(HUB_ID_PREFIX);
    opened.subscription.cursor().encode_into(&mut last_event_id);
    let body = serde_json::to_string(&Batch { updates, last_event_id, gap }).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
