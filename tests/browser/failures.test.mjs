// How the client takes failures (issue 18, items 4 and 6), on both transports, in a real headless
// Chromium against the real demo server behind a small proxy written here. One table decides for
// both: 400, 401 and 403 end the feed with a single "error" event; anything else (a 429, a proxy's
// 502 page) is transient: the feed reports "unavailable", asks again after the delay the answer
// asks for (Retry-After, retry_ms) or after a backoff, and resumes exactly where it was. Coming
// back online ends a backoff at once.
//
// The proxy streams everything through unbuffered, and can be told to answer /events and /poll by
// itself, as a proxy in front of tidings would (an HTML page, a status, headers); being told so,
// it cuts the streams and polls it holds, so that the client has to ask again.
//
// OLD_CLIENT=/path/to/tidings.js makes the proxy serve that file as /tidings.js instead of the
// demo's, to check that these tests catch what the fix fixed (e.g. the client before it:
// `git show 0df54bc~1:client/tidings.js > /tmp/old-tidings.js`).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import { startDemo, stopDemo, launchBrowser, publish } from "./harness.mjs";

const oldClient = process.env.OLD_CLIENT ? readFileSync(process.env.OLD_CLIENT) : null;

const ENDPOINT = { sse: "/events", poll: "/poll" };
const TRANSPORTS = ["sse", "poll"];

// ---- The proxy.

/**
 * A proxy to the demo on `port`. Each request to /events and /poll is logged in `proxy.log` as
 * {seq, t, path, topics, cursor, probe, refused, status}: `probe` for an /events request that is
 * not an EventSource's (a fetch reading a failed stream's status: it does not accept
 * text/event-stream). It keeps no connection alive (each answer says `Connection: close`): a
 * request it cuts was sent on a connection of its own, and fails in the browser (Chromium resends
 * at once, unseen by the page, a request whose reused connection closes before any answer).
 * `proxy.refuse(answer)` cuts every stream and poll it holds, then answers the requests to
 * /events and /poll by itself with `answer` ({status, headers, body}); with
 * `answer.attempts`, only that many attempts (requests that are not probes), and the probes
 * that follow them, after which it passes requests through again by itself.
 */
async function switchingProxy(port) {
  const changes = new EventEmitter();
  const held = new Set(); // requests to /events and /poll forwarded, and not answered in full
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://proxy");
    if (url.pathname === "/tidings.js" && oldClient) {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-store" });
      res.end(oldClient);
      return;
    }
    const feedPath = url.pathname === "/events" || url.pathname === "/poll";
    let entry = null;
    if (feedPath) {
      entry = {
        seq: proxy.log.length,
        t: Date.now(),
        path: url.pathname,
        topics: url.searchParams.getAll("topic"),
        cursor: url.searchParams.get("cursor") || url.searchParams.get("lastEventId"),
        probe: url.pathname === "/events" && !(req.headers.accept || "").includes("text/event-stream"),
        refused: false,
        status: null,
      };
      proxy.log.push(entry);
      const answer = proxy.answer;
      if (answer && !entry.probe && answer.attempts !== undefined && answer.attempts <= 0) proxy.answer = null;
      if (proxy.answer) {
        if (!entry.probe && answer.attempts !== undefined) answer.attempts -= 1;
        entry.refused = true;
        entry.status = answer.status;
        res.writeHead(answer.status, { "content-type": "text/html; charset=utf-8", ...answer.headers, connection: "close" });
        res.end(answer.body);
        changes.emit("change");
        return;
      }
    }
    const upstream = http.request(
      { host: "127.0.0.1", port, path: req.url, method: req.method, headers: req.headers },
      (up) => {
        if (entry) entry.status = up.statusCode;
        const headers = { ...up.headers, connection: "close" };
        delete headers["keep-alive"];
        res.writeHead(up.statusCode, headers);
        res.flushHeaders();
        up.pipe(res); // chunk by chunk: an event stream goes through as it comes
        if (entry) up.on("end", () => held.delete(hold));
      },
    );
    const hold = { entry, upstream, res };
    if (entry) {
      held.add(hold);
      res.on("close", () => held.delete(hold));
    }
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
    if (entry) changes.emit("change");
  });
  const proxy = server;
  proxy.log = [];
  proxy.answer = null;
  /** Drops every stream and poll in flight, on both sides, as a lost connection would. */
  proxy.cut = () => {
    for (const h of held) {
      h.upstream.destroy();
      h.res.destroy();
    }
    held.clear();
  };
  proxy.refuse = (answer) => {
    proxy.answer = { headers: {}, ...answer };
    proxy.cut();
  };
  proxy.pass = () => { proxy.answer = null; };
  /** The requests for `topic` (to `path`, if given), in order. */
  proxy.asked = (topic, path) => proxy.log.filter((e) => e.topics.includes(topic) && (!path || e.path === path));
  /** Resolves when `check()` holds, checked at each request; rejects after `timeout` ms. */
  proxy.until = (check, what, timeout = 15000) => new Promise((resolve, reject) => {
    const test = () => {
      if (!check()) return;
      clearTimeout(timer);
      changes.off("change", test);
      resolve();
    };
    const timer = setTimeout(() => {
      changes.off("change", test);
      reject(new Error(`the proxy did not see ${what} within ${timeout} ms`));
    }, timeout);
    changes.on("change", test);
    test();
  });
  /**
   * Resolves once the proxy holds an unanswered request to `path` for `topic` (a stream, a poll)
   * sent from `cursor`, if given.
   */
  proxy.holding = (path, topic, cursor) => proxy.until(
    () => [...held].some((h) => h.entry.path === path && !h.entry.probe && h.entry.topics.includes(topic) &&
      (cursor === undefined || h.entry.cursor === cursor)),
    `an open ${path} for ${topic}` + (cursor === undefined ? "" : ` from ${cursor}`),
  );
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  return proxy;
}

function stopProxy(proxy) {
  proxy.cut();
  proxy.closeAllConnections();
  proxy.close();
}

// ---- The page's side: every feed records what it tells the app.

async function installRecorder() {
  const { connect } = await import("/tidings.js");
  window.feeds = {};
  window.onlineEvents = 0;
  window.addEventListener("online", () => { window.onlineEvents += 1; });
  window.openFeed = (name, options) => {
    const feed = connect(options);
    const log = { states: [], events: [], gaps: [], errors: [] };
    feed.addEventListener("state", (e) => log.states.push(`${e.detail.state}/${e.detail.transport}`));
    feed.addEventListener("event", (e) => log.events.push(e.detail.data));
    feed.addEventListener("gap", (e) => log.gaps.push(e.detail));
    feed.addEventListener("error", (e) => log.errors.push({ status: e.detail.status, message: e.detail.message }));
    feed.log = log;
    window.feeds[name] = feed;
  };
}

let browser;
let demo;
before(async () => { [browser, demo] = await Promise.all([launchBrowser(), startDemo()]); });
after(async () => {
  await browser?.close();
  if (demo) await stopDemo(demo);
});

let topics = 0;
const freshTopic = (label) => `failures-${label}-${++topics}`;

const logOf = (page, name = "main") => page.evaluate((n) => {
  const f = window.feeds[n];
  return { ...f.log, state: f.state, transport: f.transport, closed: f.closed, cursor: f.cursor };
}, name);

const openFeed = (page, name, topic, transport) => page.evaluate(
  ([n, t, via]) => window.openFeed(n, { topics: [t], transport: via, share: false, storageKey: `${n}:${t}` }),
  [name, topic, transport],
);

/**
 * Waits until `check(feed, arg)` holds in the page for feed `name`; fails saying `what` did not
 * come, with what the feed told the app.
 */
async function waitFeed(page, what, check, arg = null, { name = "main", timeout = 15000 } = {}) {
  try {
    await page.waitForFunction(`(${check})(window.feeds[${JSON.stringify(name)}], ${JSON.stringify(arg)})`,
      null, { timeout });
  } catch (error) {
    if (error.name !== "TimeoutError") throw error;
    const log = await logOf(page, name).catch(() => null);
    assert.fail(`feed ${name}: no ${what} within ${timeout} ms; it told the app ${JSON.stringify(log)}`);
  }
}

const waitOpen = (page, name = "main") => waitFeed(page, "open state", (f) => f.state === "open", null, { name });

/** Waits until feed `name` delivered `data`, or emitted an error (checked by the caller). */
const waitEventOrError = (page, data, name = "main", timeout = 15000) => waitFeed(page, `event "${data}" nor error`,
  (f, d) => f.log.events.includes(d) || f.log.errors.length > 0, data, { name, timeout });

const waitError = (page) => waitFeed(page, "error event", (f) => f.log.errors.length > 0);

/**
 * A fresh context and page on the proxy's origin, with feed "main" on a fresh topic over
 * `transport`, open and past one delivered event ("before"), its stream or poll held by the
 * proxy. Then `fn({proxy, context, page, topic})`.
 */
async function withFeed(transport, label, fn, { topic = freshTopic(label), login = false } = {}) {
  const proxy = await switchingProxy(demo.port);
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const pageErrors = [];
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    await page.goto(proxy.url + "/stats");
    await page.evaluate(installRecorder);
    if (login) {
      const status = await page.evaluate(async () => (await fetch("/login", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user: "alice" }),
      })).status);
      assert.equal(status, 200, "logged in");
    }
    await openFeed(page, "main", topic, transport);
    await waitOpen(page);
    await publish(demo.url, "before", topic);
    await waitEventOrError(page, "before");
    const { events, cursor } = await logOf(page);
    assert.deepEqual(events, ["before"], "the feed works before anything fails");
    // The stream that delivered it, or the poll sent after it (not the one that delivered it).
    await proxy.holding(ENDPOINT[transport], topic, transport === "poll" ? cursor : undefined);
    await fn({ proxy, context, page, topic });
    assert.deepEqual(pageErrors, []);
  } finally {
    await context.close();
    stopProxy(proxy);
  }
}

/**
 * After feed "main" emitted its error: no request for `topic` reaches the proxy any more. The
 * proxy passes requests through again, so a retry would now succeed; a control feed opened in
 * the same page after the error, on another topic, then delivers an event published after one
 * to `topic`: by then, the page has run well past any retry scheduled at once (which is what a
 * refusal carrying Retry-After: 0 would ask of a client that took it for transient).
 */
async function assertNoMoreRequests(proxy, page, topic, transport) {
  const asked = proxy.asked(topic).length;
  proxy.pass();
  const control = freshTopic("control");
  await openFeed(page, "control", control, transport);
  await waitOpen(page, "control");
  await publish(demo.url, "after the error", topic);
  await publish(demo.url, "to the control feed", control);
  await waitEventOrError(page, "to the control feed", "control");
  assert.deepEqual((await logOf(page, "control")).events, ["to the control feed"], "the control feed works");
  assert.equal(proxy.asked(topic).length, asked, "no request for the refused feed after its error");
  const log = await logOf(page);
  assert.ok(!log.events.includes("after the error"), "nothing delivered after the error");
}

// ---- 1. Transient answers from a proxy: retried (honouring Retry-After), never an error.

async function transient(transport, answer, { attempts, minGap }) {
  await withFeed(transport, "transient", async ({ proxy, page, topic }) => {
    proxy.refuse({ ...answer, attempts });
    await waitFeed(page, "unavailable state", (f) => f.state === "unavailable");
    await publish(demo.url, "meanwhile", topic);
    const published = Date.now();
    await waitEventOrError(page, "meanwhile", "main", 20000);
    await waitFeed(page, "open state nor error", (f) => f.state === "open" || f.log.errors.length > 0);
    const log = await logOf(page);
    assert.deepEqual(log.errors, [], `a ${answer.status} is not a refusal: no error event`);
    assert.equal(log.closed, false);
    assert.deepEqual(log.events, ["before", "meanwhile"], "the event published meanwhile, exactly once");
    assert.deepEqual(log.gaps, [], "nothing lost");
    assert.equal(log.state, "open");
    assert.equal(log.transport, transport);
    const states = log.states.filter((s) => !s.startsWith("connecting"));
    assert.deepEqual([...new Set(states)].sort(), [`open/${transport}`, `unavailable/${transport}`].sort(), String(states));
    assert.equal(states.at(-1), `open/${transport}`);

    const asked = proxy.asked(topic, ENDPOINT[transport]);
    const refused = asked.filter((e) => e.refused);
    const refusedAttempts = refused.filter((e) => !e.probe);
    assert.equal(refusedAttempts.length, attempts, `the feed kept asking: ${attempts} attempt(s) refused`);
    assert.ok(refused.every((e) => e.status === answer.status));
    // Each attempt after a refusal waits: for the delay the answer asked for (Retry-After), or
    // for a backoff when it asked for none. Measured from the latest refused answer before it
    // (over SSE that is the fetch reading the failed stream's status, right after it).
    const first = refused[0].seq;
    const after = asked.filter((e) => !e.probe && e.seq > first);
    const later = after.slice(0, after.findIndex((e) => !e.refused) + 1); // up to the one that got through
    const gaps = later.map((a) => a.t - refused.filter((r) => r.seq < a.seq).at(-1).t);
    assert.equal(gaps.length, attempts, "the refused attempts after the first, and the one that got through");
    assert.ok(gaps.every((g) => g >= minGap), `each attempt came >= ${minGap} ms after a refusal: ${gaps} ms`);
    const through = later.at(-1);
    assert.ok(through && !through.refused && through.status === 200, "an attempt got through");
    assert.ok(published < through.t, "the event was published while the proxy refused");
  });
}

for (const transport of TRANSPORTS) {
  test(`a proxy's 429 with Retry-After is retried no sooner than asked, then resumes exactly (${transport})`, () =>
    // 4 s: longer than any backoff after a first failure (at most 3 s), so that a client that
    // ignores Retry-After cannot pass by chance.
    transient(transport, { status: 429, headers: { "retry-after": "4" }, body: "<html>Too Many Requests</html>" },
      { attempts: 2, minGap: 3500 }));

  test(`a proxy's 502 page is retried after a backoff, then resumes exactly (${transport})`, () =>
    transient(transport, { status: 502, body: "<html><h1>502 Bad Gateway</h1></html>" }, { attempts: 1, minGap: 500 }));
}

// ---- 2. Final answers from a proxy: one error, and the feed stops asking.

for (const transport of TRANSPORTS) {
  for (const [status, body] of [
    [403, "<html><h1>403 Forbidden</h1></html>"],
    [401, "<html><h1>401 Authorization Required</h1></html>"],
    [400, "<html><h1>400 Bad Request</h1></html>"],
  ]) {
    test(`a proxy's ${status} page ends the feed with one error (${transport})`, () =>
      withFeed(transport, `final${status}`, async ({ proxy, page, topic }) => {
        // Retry-After: 0, so that a client that took this for transient would ask again at once.
        proxy.refuse({ status, headers: { "retry-after": "0" }, body });
        await waitError(page);
        assert.ok(proxy.asked(topic).some((e) => e.refused), "the proxy refused the feed");
        await assertNoMoreRequests(proxy, page, topic, transport);
        const log = await logOf(page);
        assert.deepEqual(log.errors, [{ status, message: `HTTP ${status}` }], "exactly one error, with the status");
        assert.equal(log.state, "unavailable");
        assert.equal(log.closed, true, "the feed is closed");
        assert.deepEqual(log.events, ["before"]);
      }));
  }
}

// ---- 3. Final answers from tidings itself, after the feed had worked.

for (const transport of TRANSPORTS) {
  test(`a 401 from tidings after the feed had worked ends it with an error (${transport})`, () =>
    withFeed(transport, "private", async ({ proxy, context, page, topic }) => {
      await context.clearCookies(); // the token is gone: the next request carries none
      if (transport === "sse") {
        proxy.cut(); // the stream drops; the browser asks again without the cookie
      } else {
        // The pending poll (sent with the cookie) delivers this; the next one carries none.
        await publish(demo.url, "with the last cookie", topic);
      }
      await waitError(page);
      const unauthorized = proxy.asked(topic).filter((e) => e.status === 401);
      assert.ok(unauthorized.length >= 1, "tidings answered 401");
      await assertNoMoreRequests(proxy, page, topic, transport);
      const log = await logOf(page);
      assert.equal(log.errors.length, 1, "exactly one error");
      assert.equal(log.errors[0].status, 401);
      assert.match(log.errors[0].message, /private\/alice/, "the message is tidings' own (its JSON body's error)");
      assert.equal(log.state, "unavailable");
      assert.equal(log.closed, true, "the feed is closed");
      assert.deepEqual(log.events, transport === "sse" ? ["before"] : ["before", "with the last cookie"]);
    }, { topic: "private/alice", login: true }));
}

// ---- 4. Back online: the feed asks again at once, and catches up exactly.

/**
 * The times (Date.now()) of `page`'s events `type` ("request", "requestfailed") for the requests
 * `filter` takes; `.reach(n)` resolves once there are `n`.
 */
function pageEvents(page, type, filter) {
  const times = [];
  const waiting = [];
  page.on(type, (r) => {
    if (!filter(r)) return;
    times.push(Date.now());
    for (const w of waiting.filter((w) => times.length >= w.n)) w.resolve();
  });
  times.reach = (n, timeout = 20000) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fewer than ${n} ${type} within ${timeout} ms`)), timeout);
    waiting.push({ n, resolve: () => { clearTimeout(timer); resolve(); } });
    if (times.length >= n) resolve();
  });
  return times;
}

test("back online, long-polling asks again at once instead of waiting out its backoff (poll)", () =>
  withFeed("poll", "online", async ({ proxy, context, page, topic }) => {
    const isPoll = (r) => new URL(r.url()).pathname === "/poll";
    const requests = pageEvents(page, "request", isPoll);
    const failed = pageEvents(page, "requestfailed", isPoll);
    await context.setOffline(true);
    // Chromium's offline emulation fails new requests, but stalls those in flight: the proxy
    // drops the pending poll, as a lost network would. Each poll after it fails at once.
    proxy.cut();
    // After 4 failures in a row the backoff is 4 to 12 s (jitter of 500 ms * 2^4).
    await failed.reach(4);
    await publish(demo.url, "while offline", topic);
    const online = Date.now();
    await context.setOffline(false);
    await waitEventOrError(page, "while offline", "main", 20000);
    await waitOpen(page);
    const next = requests.find((t) => t >= online);
    assert.ok(next !== undefined && next - online <= 2000,
      `the next poll started ${next - online} ms after going online (backoff cut short: <= 2000)`);
    const log = await logOf(page);
    assert.ok(await page.evaluate(() => window.onlineEvents) >= 1, "the page was told it is online");
    assert.deepEqual(log.errors, []);
    assert.deepEqual(log.events, ["before", "while offline"], "exactly once");
    assert.deepEqual(log.gaps, []);
    assert.equal(log.transport, "poll");
  }));

test("back online, the stream reopens and catches up exactly (sse)", () =>
  withFeed("sse", "online", async ({ proxy, context, page, topic }) => {
    // Chromium's EventSource reconnects by itself after a network error (every `retry:` ms, 3 s
    // from tidings), offline or not: the client's own backoff is not involved.
    const isStream = (r) => new URL(r.url()).pathname === "/events";
    const failed = pageEvents(page, "requestfailed", isStream);
    await context.setOffline(true);
    proxy.cut();
    await failed.reach(2); // the dropped stream, and a reconnection offline
    await publish(demo.url, "while offline", topic);
    await context.setOffline(false);
    await waitEventOrError(page, "while offline", "main", 20000);
    await waitOpen(page);
    const log = await logOf(page);
    assert.deepEqual(log.errors, []);
    assert.deepEqual(log.events, ["before", "while offline"], "exactly once");
    assert.deepEqual(log.gaps, []);
    assert.equal(log.transport, "sse");
    assert.equal(proxy.asked(topic).filter((e) => e.probe).length, 0, "never an HTTP failure to read");
  }));
