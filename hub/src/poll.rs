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
use bytes::Bytes;
use http::{HeaderValue, header};
use tidings_core::Delivery;
use tidings_http::HttpError;

use crate::update::{Decoded, PollItem, View, cursor_id};
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
    // Each update's item is the event's shared encoding: polls do not parse records.
    let mut updates: Vec<Bytes> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let expires = crate::expiry(opened.claims.as_ref()).unwrap_or(deadline).min(deadline);
    // What one delivery does to the batch; `true` when the poll must answer now (shutdown).
    let take = |delivery: Delivery, updates: &mut Vec<Bytes>, gap: &mut Option<&'static str>| match delivery {
        Delivery::Event(event) => {
            if event.with_encoded::<Decoded, _>(|bytes| opened.filter.lets_through(&View::new(bytes))) {
                updates.push(event.encoded::<PollItem>());
            }
            false
        }
        Delivery::Gap(_) => {
            *gap = Some("trimmed");
            false
        }
        _ => true,
    };
    let mut read = 0;
    'poll: loop {
        while updates.len() < MAX_BATCH && read < MAX_READ {
            let Some(delivery) = opened.subscription.next_ready().await else { break };
            read += 1;
            if take(delivery, &mut updates, &mut gap) {
                break 'poll;
            }
            tokio::task::consume_budget().await;
        }
        if !updates.is_empty() || gap.is_some() || read >= MAX_READ {
            break;
        }
        tokio::select! {
            delivery = opened.subscription.next() => {
                let Some(delivery) = delivery else { break };
                if take(delivery, &mut updates, &mut gap) {
                    break;
                }
            }
            () = tokio::time::sleep_until(expires) => break,
        }
    }
    let last_event_id = serde_json::to_string(&cursor_id(&opened.subscription.cursor())).unwrap_or_default();
    let gap = gap.map_or("null".to_owned(), |g| format!("\"{g}\""));
    let mut body = Vec::with_capacity(64 + updates.iter().map(|u| u.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"updates\":[");
    for (i, item) in updates.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(format!("],\"lastEventID\":{last_event_id},\"gap\":{gap}}}").as_bytes());
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
