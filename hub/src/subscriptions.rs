//! Active subscriptions (draft-dunglas-mercure-07, "Active Subscriptions"): when enabled, the
//! hub publishes a private update each time a subscriber comes or goes, on the topic
//! `/.well-known/mercure/subscriptions/{topic}/{subscriber}`, and serves the list of the
//! subscriptions it holds at `/.well-known/mercure/subscriptions` (also per topic, and per
//! topic and subscriber), as JSON-LD. Apps build presence on them.
//!
//! Both need a subscriber token whose `mercure.subscribe` selectors match the subscription's
//! topic (`/.well-known/mercure/subscriptions/{+rest}` covers them all). The list holds this
//! hub's subscribers: with several hubs on one Redis, each lists its own, while the events of
//! all of them go through the shared log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tidings_http::HttpError;

use crate::MercureHub;
use crate::selector::Selectors;
use crate::update::Update;

/// The path of the subscriptions API, and the prefix of subscription topics.
pub const PATH: &str = "/.well-known/mercure/subscriptions";

/// What the parts of a subscription's IRI keep as they are: letters, digits and `-_.~` (as Go's
/// `url.QueryEscape`, which the reference hub uses, except that a space is `%20`, not `+`: a
/// `{topic}` template variable matches `%20` but not `+`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The IRI of one subscriber's subscription to one selector:
/// `/.well-known/mercure/subscriptions/{selector}/{subscriber}`, each part percent-encoded.
pub fn subscription_id(topic: &str, subscriber: &str) -> String {
    format!("{PATH}/{}/{}", utf8_percent_encode(topic, COMPONENT), utf8_percent_encode(subscriber, COMPONENT))
}

/// One subscription of one subscriber to one selector.
#[derive(Debug, Clone)]
struct Entry {
    topic: String,
    subscriber: String,
    payload: Option<Value>,
}

impl Entry {
    fn json(&self, active: bool) -> Value {
        let mut value = json!({
            "@context": "https://mercure.rocks/",
            "id": subscription_id(&self.topic, &self.subscriber),
            "type": "Subscription",
            "topic": self.topic,
            "subscriber": self.subscriber,
            "active": active,
        });
        if let Some(payload) = &self.payload {
            value["payload"] = payload.clone();
        }
        value
    }
}

/// The subscriptions this hub holds, by subscription id.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<BTreeMap<String, Entry>>,
}

/// A subscriber's registration: published active when opened; inactive, and out of the list,
/// when dropped (the stream ended).
#[derive(Debug)]
pub struct Active {
    mercure: MercureHub,
    entries: Vec<Entry>,
}

impl Active {
    /// Registers a new subscriber to `topics` and publishes its subscription events. The
    /// registration exists before the first event is published: if the request goes away
    /// meanwhile, dropping it takes the subscriber out again and says so.
    pub async fn open(mercure: MercureHub, topics: &[String], payload: Option<Value>) -> Arc<dyn Send + Sync> {
        let subscriber = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let entries: Vec<Entry> =
            topics.iter().map(|t| Entry { topic: t.clone(), subscriber: subscriber.clone(), payload: payload.clone() }).collect();
        {
            let mut registry = mercure.inner.registry.entries.lock().unwrap_or_else(|e| e.into_inner());
            for entry in &entries {
                registry.insert(subscription_id(&entry.topic, &entry.subscriber), entry.clone());
            }
        }
        let active = Active { mercure, entries };
        for entry in &active.entries {
            announce(&active.mercure, entry, true).await;
        }
        Arc::new(active)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let entries = std::mem::take(&mut self.entries);
        {
            let mut registry = self.mercure.inner.registry.entries.lock().unwrap_or_else(|e| e.into_inner());
            for entry in &entries {
                registry.remove(&subscription_id(&entry.topic, &entry.subscriber));
            }
        }
        let mercure = self.mercure.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for entry in &entries {
                    announce(&mercure, entry, false).await;
                }
            });
        }
    }
}

/// Publishes a subscription event (a private update on the subscription's own topic).
async fn announce(mercure: &MercureHub, entry: &Entry, active: bool) {
    let update = Update {
        topics: vec![subscription_id(&entry.topic, &entry.subscriber)],
        private: true,
        id: None,
        kind: None,
        retry: None,
        data: entry.json(active).to_string(),
    };
    if let Err(err) = crate::publish_update(mercure, update).await {
        tracing::warn!("cannot publish a subscription event: {}", err.message);
    }
}

/// `GET /.well-known/mercure/subscriptions[/{topic}]`.
pub async fn list(State(mercure): State<MercureHub>, topic: Option<Path<String>>, request: Request) -> Response {
    let topic = topic.map(|Path(t)| t);
    answer(&mercure, request, |entry| topic.as_ref().is_none_or(|t| &entry.topic == t), false).await
}

/// `GET /.well-known/mercure/subscriptions/{topic}/{subscriber}`.
pub async fn one(State(mercure): State<MercureHub>, Path((topic, subscriber)): Path<(String, String)>, request: Request) -> Response {
    answer(&mercure, request, |entry| entry.topic == topic && entry.subscriber == subscriber, true).await
}

/// The JSON-LD answer of the API: the collection of the subscriptions `keep` keeps, or the one
/// subscription (`single`, a 404 when there is none). `lastEventID` is the id of the newest
/// update in the log when the list was taken (`earliest` for an empty log): a client that
/// subscribes to the subscription events from it misses no change after the list.
async fn answer(mercure: &MercureHub, request: Request, keep: impl Fn(&Entry) -> bool, single: bool) -> Response {
    let (parts, _) = request.into_parts();
    let query: Vec<(String, String)> = serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
    // The URL without its query: a token in the query is neither matched nor echoed.
    let request_uri = parts.uri.path().to_owned();
    if let Err(err) = authorize(mercure, &parts.headers, &query, &request_uri) {
        return err.into_response();
    }
    // The position first, then the list: a change between the two is replayed, not lost.
    let last_event_id = match crate::newest_id(&mercure.inner).await {
        Ok(id) => id.unwrap_or_else(|| "earliest".to_owned()),
        Err(err) => return err.into_response(),
    };
    let entries: Vec<Value> = {
        let registry = mercure.inner.registry.entries.lock().unwrap_or_else(|e| e.into_inner());
        registry
            .values()
            .filter(|entry| keep(entry))
            .map(|entry| {
                let mut value = entry.json(true);
                if let Some(object) = value.as_object_mut() {
                    object.remove("@context");
                }
                value
            })
            .collect()
    };
    let body = if single {
        let Some(mut entry) = entries.into_iter().next() else {
            return HttpError::new(StatusCode::NOT_FOUND, "no such subscription").into_response();
        };
        entry["@context"] = json!("https://mercure.rocks/");
        entry["lastEventID"] = json!(last_event_id);
        entry
    } else {
        json!({
            "@context": "https://mercure.rocks/",
            "id": request_uri,
            "type": "Subscriptions",
            "lastEventID": last_event_id,
            "subscriptions": entries,
        })
    };
    ([(header::CONTENT_TYPE, "application/ld+json")], body.to_string()).into_response()
}

/// Checks that the request's token has a `mercure.subscribe` selector matching the requested
/// URL's path (draft-07; the reference hub matches the query too, which a token sent in the
/// query would then have to match): a 401 without a valid token, a 403 when none matches.
fn authorize(mercure: &MercureHub, headers: &http::HeaderMap, query: &[(String, String)], request_uri: &str) -> Result<(), HttpError> {
    let unauthorized = |m: &str| HttpError::new(StatusCode::UNAUTHORIZED, m.to_owned());
    let (token, _) = crate::auth::token(headers, query).map_err(|e| unauthorized(&e))?.ok_or_else(|| unauthorized("a subscriber token is needed"))?;
    let verifier = mercure.inner.settings.subscriber.as_ref().ok_or_else(|| unauthorized("this hub accepts no subscriber tokens"))?;
    let claims = verifier.verify(token).map_err(|e| unauthorized(&e))?;
    let selectors = Selectors::parse(claims.mercure.subscribe.as_deref().unwrap_or_default(), &mercure.inner.templates).map_err(|e| unauthorized(&e))?;
    if selectors.matches(request_uri) {
        Ok(())
    } else {
        Err(HttpError::new(StatusCode::FORBIDDEN, "the token's mercure.subscribe selectors do not match this URL"))
    }
}
