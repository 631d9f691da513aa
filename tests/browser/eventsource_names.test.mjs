// An EventSource dispatches its connection's own events as `open` and `error`, in the same
// namespace as the events the server sends: a server-sent event named `error` reaches `onerror`
// too (issue 17, item 3). The tidings server refuses to publish those names, but a server that
// still sends them (an older one, a foreign hub) must not make the client think its connection
// failed, and nothing the browser says about the connection may reach the app as an event.
//
// A small Node server stands in for such a server here: it serves a page that imports the real
// client/tidings.js (read from disk) and hand-written streams with cursor tokens in tidings'
// format. The browser is the real headless Chromium.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { launchBrowser, topicKey } from "./harness.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const clientSource = readFileSync(path.join(root, "client/tidings.js"));

// ---- Cursor tokens, in the format decodeCursor() reads: base64url of the byte 1, the epoch
// (u64 LE), the number of topics (varint), then per topic its key (FNV-1a 64 of its UTF-8
// bytes, u64 LE) and its sequence number (varint).

const EPOCH = 0x7d1_6e55n;

function u64(value) {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64LE(value);
  return bytes;
}

function varint(value) {
  let v = BigInt(value);
  const bytes = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v) byte |= 0x80;
    bytes.push(byte);
  } while (v);
  return Buffer.from(bytes);
}

/** The cursor of topic "t" after its event number `seq`. */
function cursor(seq, topic = "t") {
  return Buffer.concat([Buffer.from([1]), u64(EPOCH), varint(1), u64(topicKey(topic)), varint(seq)])
    .toString("base64url");
}

// ---- The stand-in server.

const PAGE = `<!doctype html><meta charset="utf-8"><title>stand-in</title>
<script type="module">
  import * as tidings from "/tidings.js";
  window.tidings = tidings;
</script>`;

/**
 * Serves the page, the client, and `streams[path](req, res)` for the stream endpoints. Counts
 * the requests per path in `server.hits`; `server.hit(path)` resolves at the first request to
 * `path` (from the moment it is called).
 */
async function standIn(streams) {
  const waiting = [];
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, "http://stand-in");
    server.hits[pathname] = (server.hits[pathname] || 0) + 1;
    for (const w of waiting.filter((w) => w.path === pathname)) w.resolve();
    if (pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
    } else if (pathname === "/tidings.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
      res.end(clientSource);
    } else if (streams[pathname]) {
      streams[pathname](req, res);
    } else {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: "not served by this stand-in" }));
    }
  });
  server.hits = {};
  server.hit = (p) => new Promise((resolve) => waiting.push({ path: p, resolve }));
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  server.url = `http://127.0.0.1:${server.address().port}`;
  return server;
}

function stopStandIn(server) {
  server.closeAllConnections();
  server.close();
}

/** Starts an event stream on `res`; returns send(type, id, data). */
function stream(res, retryMs) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" });
  if (retryMs) res.write(`retry: ${retryMs}\n\n`);
  return (type, id, data) => res.write(`event: ${type}\nid: ${id}\ndata: ${data}\n\n`);
}

// ---- The page's side: every feed the test opens records what it tells the app.

function installRecorder() {
  window.feeds = [];
  window.openFeed = (options) => {
    const feed = window.tidings.connect(options);
    const log = { states: [], events: [], gaps: [], errors: [], odd: [] };
    feed.addEventListener("state", (e) => log.states.push(`${e.detail.state}/${e.detail.transport}`));
    feed.addEventListener("event", (e) => {
      // What an "event" listener gets is always an app event: a detail with data and an id.
      if (!(e instanceof CustomEvent) || !e.detail || typeof e.detail.data !== "string" || !e.detail.id) {
        log.odd.push(String(e.detail && e.detail.type));
      }
      log.events.push({ ...e.detail });
    });
    feed.addEventListener("gap", (e) => log.gaps.push(e.detail));
    feed.addEventListener("error", (e) => log.errors.push(e.detail));
    feed.log = log;
    window.feeds.push(feed);
    return window.feeds.length - 1;
  };
}

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** A fresh context and page on `server`'s page, with the recorder installed. */
async function openPage(server) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  await page.goto(server.url + "/");
  await page.waitForFunction(() => window.tidings, null, { timeout: 20000 });
  await page.evaluate(installRecorder);
  return { context, page, pageErrors };
}

const logOf = (page, n = 0) => page.evaluate((i) => {
  const f = window.feeds[i];
  return { ...f.log, state: f.state, transport: f.transport, cursor: f.cursor };
}, n);

test("the cursor tokens built here are tidings' own", async () => {
  const server = await standIn({});
  const { context, page } = await openPage(server);
  try {
    const decoded = await page.evaluate(([token]) => {
      const c = window.tidings.decodeCursor(token);
      return { epoch: String(c.epoch), seq: String(c.positions.get(window.tidings.topicKey("t"))) };
    }, [cursor(300)]);
    assert.deepEqual(decoded, { epoch: String(EPOCH), seq: "300" });
  } finally {
    await context.close();
    stopStandIn(server);
  }
});

test("app events named error and open reach the app as events, never as the connection's state", async () => {
  // Long enough that a slow machine still opens the stream in time (the client gives a stream
  // that has not delivered within twice this long up for long-polling).
  const OPEN_TIMEOUT = 1000;
  const server = await standIn({
    "/events": (req, res) => {
      const send = stream(res);
      send("tidings.open", cursor(0), "");
      send("note", cursor(1), "first note");
      send("error", cursor(2), "an app event named error");
      send("open", cursor(3), "an app event named open");
      // Then the stream is quiet for several open timeouts: a client that took the `open` above
      // for its connection's (re)opening and the `error` for a failure would give up on the
      // stream here and poll /poll. A stream stays open once it has delivered: nothing but such
      // a mistake makes the client leave it.
      const later = setTimeout(() => {
        send("message", cursor(4), "then a message");
        send("error", cursor(5), "a last app event named error");
      }, OPEN_TIMEOUT * 3);
      res.on("close", () => clearTimeout(later));
    },
  });
  const { context, page, pageErrors } = await openPage(server);
  const polled = server.hit("/poll").then(() => { throw new Error("the client fell back to long-polling"); });
  polled.catch(() => {}); // raced below; never left unhandled
  try {
    // EventSource's names are the subject: "auto" starts on the stream where there is no
    // WebSocket (and falls back from it to long-polling, which must not happen here).
    await page.evaluate(() => { delete window.WebSocket; });
    await page.evaluate((timeout) => window.openFeed({
      topics: ["t"], eventTypes: ["note"], share: false, openTimeout: timeout,
    }), OPEN_TIMEOUT);
    // The last event is an app event named error: delivered, and the cursor moves past it.
    await Promise.race([
      page.waitForFunction(([last]) => window.feeds[0].cursor === last, [cursor(5)], { timeout: 20000 }),
      polled,
    ]);
    const log = await logOf(page);
    assert.deepEqual(log.states, ["open/sse"], "open on the stream at once, never unavailable");
    assert.equal(log.state, "open");
    assert.equal(log.transport, "sse");
    assert.deepEqual(
      log.events.map((e) => [e.type, e.data, e.id, e.topic]),
      [
        ["note", "first note", cursor(1), "t"],
        ["error", "an app event named error", cursor(2), "t"],
        ["open", "an app event named open", cursor(3), "t"],
        ["message", "then a message", cursor(4), "t"],
        ["error", "a last app event named error", cursor(5), "t"],
      ],
      "the app gets every event the server sent, once, in order, under its own name",
    );
    assert.deepEqual(log.odd, [], "an event listener never sees anything without data");
    assert.deepEqual(log.gaps, []);
    assert.deepEqual(log.errors, []);
    assert.equal(server.hits["/poll"] || 0, 0, "never fell back to long-polling");
    assert.equal(server.hits["/events"], 1, "the stream was never dropped");
    assert.deepEqual(pageErrors, []);
  } finally {
    await context.close();
    stopStandIn(server);
  }
});

test("connect() refuses the event types EventSource and tidings dispatch themselves", async () => {
  const server = await standIn({});
  const { context, page } = await openPage(server);
  try {
    const refused = await page.evaluate(() => {
      const attempt = (eventTypes) => {
        try {
          window.openFeed({ topics: ["t"], eventTypes, share: false });
          return null;
        } catch (error) {
          return error.message;
        }
      };
      return {
        error: attempt(["error"]),
        open: attempt(["open"]),
        gap: attempt(["tidings.gap"]),
        tidingsOpen: attempt(["tidings.open"]),
        mixed: attempt(["note", "error"]),
        opened: window.feeds.length,
      };
    });
    assert.equal(refused.error, 'tidings: event type "error" is dispatched by EventSource itself; publish under another name');
    assert.equal(refused.open, 'tidings: event type "open" is dispatched by EventSource itself; publish under another name');
    assert.match(refused.gap ?? "", /^tidings: event type "tidings\.gap" is reserved/);
    assert.match(refused.tidingsOpen ?? "", /^tidings: event type "tidings\.open" is reserved/);
    assert.match(refused.mixed ?? "", /^tidings: event type "error"/);
    assert.equal(refused.opened, 0, "no feed was made");
    assert.equal(server.hits["/events"] || 0, 0, "nothing was connected");
    assert.equal(server.hits["/poll"] || 0, 0, "nothing was connected");
  } finally {
    await context.close();
    stopStandIn(server);
  }
});

test("a stream that really fails still turns the state unavailable", async () => {
  let serving = false;
  let open = null;
  const server = await standIn({
    "/events": (req, res) => {
      if (!serving) {
        res.writeHead(500, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "down" }));
        return;
      }
      open = res;
      const send = stream(res, 100);
      send("tidings.open", cursor(0), "");
      send("note", cursor(1), "a note");
    },
  });
  const { context, page, pageErrors } = await openPage(server);
  const lastState = (want) => page.waitForFunction(
    (w) => window.feeds[0].log.states.at(-1) === w, want, { timeout: 20000 });
  try {
    // Refused from the first request on (an HTTP error: the browser gives up on the stream).
    await page.evaluate(() => window.openFeed({ topics: ["t"], eventTypes: ["note"], share: false, transport: "sse" }));
    await lastState("unavailable/sse");
    // Served again: the client reopens the stream by itself.
    serving = true;
    await lastState("open/sse");
    await page.waitForFunction(() => window.feeds[0].log.events.length === 1, null, { timeout: 20000 });
    // The connection breaks (the browser sees a network error) and the server is down again.
    serving = false;
    open.destroy();
    await lastState("unavailable/sse");
    const log = await logOf(page);
    assert.deepEqual(log.states, ["unavailable/sse", "open/sse", "unavailable/sse"]);
    assert.deepEqual(log.events.map((e) => [e.type, e.data, e.id]), [["note", "a note", cursor(1)]],
      "the connection's failures never reach the app as events");
    assert.deepEqual(log.odd, []);
    assert.deepEqual(log.errors, [], "the stream's failures are not refusals of the subscription");
    assert.equal(server.hits["/poll"] || 0, 0);
    assert.deepEqual(pageErrors, []);
  } finally {
    await context.close();
    stopStandIn(server);
  }
});
