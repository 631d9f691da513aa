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
// a postMessage {type: "tidings.push", message}, in the order the pushes arrived.
//
// Once per id, also when the same push arrives twice at the same moment. Checking "shown?"
// and recording "shown" are separated by awaits (showing, fetching a truncated event, Cache
// Storage itself), so two pushes handled concurrently would both pass the check. Hence:
// - Each push takes its turn synchronously, in its event handler before any await, and
//   pushes are handled one after the other in arrival order. Check, fetch, show, record and
//   prune of one push all happen before the next push's check: nothing of this worker runs
//   between them. A truncated event is fetched once; two prunes never interleave.
// - Where Web Locks exist, each turn also holds the lock "tidings-sw-seen", so a worker being
//   replaced (skipWaiting: the old one may still be finishing a push while the new one gets
//   the repeat) does not interleave with its successor either.
// - The record of shown ids is kept in Cache Storage, because a service worker is stopped
//   when idle and started again for the next push with empty memory: the turn order alone
//   would forget every id. (The record alone, without the turn order, is the race above.)
//   The last KEEP ids are kept; ids are also remembered in memory for this worker's life, so
//   a repeat is dropped even if Cache Storage fails.
//
// Order within a turn: check, show, record, post to pages. Showing before recording means a
// worker stopped between the two (browser closed, event timed out) shows the event again when
// its push repeats, instead of never: recording first would drop the repeat of an event that
// was never shown, and lose it. The repeat carries the same id, which is the notification's
// tag, so it replaces the notification still on screen (silently: no renotify) rather than
// adding one: the person sees it once either way. Pages are posted to after the record, so a
// page is told at most once; a worker stopped just before posting costs the pages that
// message, not the notification (open pages have their own stream of the same events).

const POLL = new URL(self.location.href).searchParams.get("poll") || "/poll";
const SEEN = "tidings-sw-seen-v1";
const LOCK = "tidings-sw-seen";
const KEEP = 1000; // ids remembered
const FETCH_TIMEOUT = 10000; // ms for fetching a truncated event; later pushes wait behind it

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

// Runs `work` after the previous work of the same queue has settled, whether it succeeded or
// not: one failed push does not stop the next.
function queue() {
  let tail = Promise.resolve();
  return (work) => {
    const turn = tail.then(work);
    tail = turn.catch(() => {});
    return turn;
  };
}
const pushes = queue();
const clicks = queue();
const remembered = new Set(); // ids shown by this worker since it started, oldest first

self.addEventListener("push", (event) => {
  const text = event.data ? event.data.text() : "";
  // The turn is taken here, synchronously, before anything is awaited.
  event.waitUntil(pushes(() => exclusively(() => handle(text))));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  // One click at a time: two clicks at once would both find no window and open two.
  event.waitUntil(
    clicks(async () => {
      const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      if (windows.length > 0) return windows[0].focus();
      return self.clients.openWindow("/");
    }),
  );
});

function exclusively(work) {
  const locks = self.navigator && self.navigator.locks;
  if (!locks) return work();
  let started = false;
  const locked = () => {
    started = true;
    return work();
  };
  // A lock refused (not its own failure) does not cost the push: it runs on the turn alone.
  return locks.request(LOCK, locked).catch((e) => {
    if (started) throw e;
    return work();
  });
}

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
  const id = message.id;
  if (remembered.has(id)) return; // already shown by this worker
  const seen = await openSeen();
  const key = seenKey(id);
  if (seen && (await seen.match(key).catch(() => undefined))) return; // already shown: a repeat after a crash
  if (message.truncated) message = await fetchWhole(message);
  if (message.gap) {
    await show("Some events were missed", "Topics: " + message.gap.topics.join(", "), id);
  } else {
    const title = message.event && message.event !== "message" ? `${message.topic}: ${message.event}` : message.topic;
    const body = message.data !== undefined ? message.data : "(a new event, too large to show here)";
    await show(title, body, id);
  }
  remember(id);
  if (seen) {
    try {
      await seen.put(key, new Response(""));
    } catch {
      // Storage full or gone: remembered in memory only, for this worker's life.
    }
  }
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const w of windows) w.postMessage({ type: "tidings.push", message });
  if (seen) await prune(seen);
}

// The record of shown ids, or null when Cache Storage cannot be opened (then the push is shown
// all the same: a repeat shown twice is better than an event never shown).
async function openSeen() {
  try {
    return await caches.open(SEEN);
  } catch {
    return null;
  }
}

function seenKey(id) {
  return new Request(new URL("/__tidings_seen/" + encodeURIComponent(id), self.location.origin).href);
}

function remember(id) {
  remembered.add(id);
  if (remembered.size > KEEP) remembered.delete(remembered.values().next().value);
}

// Keeps the newest KEEP records (Cache Storage lists keys in insertion order).
async function prune(cache) {
  try {
    const keys = await cache.keys();
    for (const k of keys.slice(0, Math.max(0, keys.length - KEEP))) await cache.delete(k);
  } catch {
    // Tried again after the next push.
  }
}

// Fetches a truncated event from the long-poll endpoint: the first event after `after` is it.
async function fetchWhole(message) {
  const url = new URL(POLL, self.location.origin);
  url.searchParams.append("topic", message.topic);
  url.searchParams.set("cursor", message.after);
  url.searchParams.set("timeout", "0");
  try {
    const signal = typeof AbortSignal.timeout === "function" ? AbortSignal.timeout(FETCH_TIMEOUT) : undefined;
    const response = await fetch(url, { credentials: "same-origin", signal });
    if (response.ok) {
      const batch = await response.json();
      const found = (batch.events || []).find((e) => e.id === message.id);
      if (found) return { id: message.id, topic: found.topic, event: found.event, data: found.data, fetched: true };
    }
  } catch {
    // Offline again, or too slow: show what the push said.
  }
  return message;
}

function show(title, body, tag) {
  const options = { body, data: { id: tag } };
  if (tag) options.tag = tag;
  return self.registration.showNotification(title, options);
}
