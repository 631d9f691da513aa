// tidings service worker: shows each event pushed by tidings-webpush as a notification.
//
// Register it from the page (its URL may carry ?poll=/path/of/long-poll, default /poll):
//
//   const reg = await navigator.serviceWorker.register("/tidings-sw.js");
//
// Each push carries one event as JSON (see docs/webpush.md):
//   {"id", "topic", "event", "data"}             the event
//   {"id", "topic", "event", "truncated", "after"}  too large for a push: fetched from long-poll
//   {"id", "gap": {"topics": [...]}}             events were lost (retention passed)
//
// An id already shown is dropped: after a server crash the push that was in flight may come
// again, and the person sees it once. Pages of the origin receive each shown message too, as
// a postMessage {type: "tidings.push", message}.

const POLL = new URL(self.location.href).searchParams.get("poll") || "/poll";
const SEEN = "tidings-sw-seen-v1";
const KEEP = 1000; // ids remembered

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  const text = event.data ? event.data.text() : "";
  event.waitUntil(handle(text));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      if (windows.length > 0) return windows[0].focus();
      return self.clients.openWindow("/");
    }),
  );
});

async function handle(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    message = null;
  }
  if (!message || typeof message.id !== "string") {
    // Not from tidings; browsers require a notification for every push all the same.
    return show("New message", String(text).slice(0, 200), undefined);
  }
  const seen = await caches.open(SEEN);
  const key = seenKey(message.id);
  if (await seen.match(key)) return; // already shown: a repeat after a crash
  if (message.truncated) message = await fetchWhole(message);
  if (message.gap) {
    await show("Some events were missed", "Topics: " + message.gap.topics.join(", "), message.id);
  } else {
    const title = message.event && message.event !== "message" ? `${message.topic}: ${message.event}` : message.topic;
    const body = message.data !== undefined ? message.data : "(a new event, too large to show here)";
    await show(title, body, message.id);
  }
  await seen.put(key, new Response(""));
  await prune(seen);
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const w of windows) w.postMessage({ type: "tidings.push", message });
}

function seenKey(id) {
  return new Request(new URL("/__tidings_seen/" + encodeURIComponent(id), self.location.origin).href);
}

async function prune(cache) {
  const keys = await cache.keys();
  for (const k of keys.slice(0, Math.max(0, keys.length - KEEP))) await cache.delete(k);
}

// Fetches a truncated event from the long-poll endpoint: the first event after `after` is it.
async function fetchWhole(message) {
  const url = new URL(POLL, self.location.origin);
  url.searchParams.append("topic", message.topic);
  url.searchParams.set("cursor", message.after);
  url.searchParams.set("timeout", "0");
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    if (response.ok) {
      const batch = await response.json();
      const found = (batch.events || []).find((e) => e.id === message.id);
      if (found) return { id: message.id, topic: found.topic, event: found.event, data: found.data, fetched: true };
    }
  } catch {
    // Offline again: show what the push said.
  }
  return message;
}

function show(title, body, tag) {
  const options = { body, data: { id: tag } };
  if (tag) options.tag = tag;
  return self.registration.showNotification(title, options);
}
