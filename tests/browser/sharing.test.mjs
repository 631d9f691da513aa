// Tab sharing in a real headless Chromium against the real demo server (issue 18): every tab has
// a position from the moment it joins, tabs share a connection only when it carries what each
// asked for, a leader whose page stops running (back/forward cache, frozen) hands over at once
// and rejoins when it runs again, and a browser that refuses locks (site data blocked) runs
// unshared. Pages are blank same-origin pages of the demo (its /stats), which import the real
// client/tidings.js the demo serves.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { startDemo, stopDemo, launchBrowser, freshStore, tempDir } from "./harness.mjs";

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/** Publishes `data` (with an event type, if given) to `topic`; returns its id. */
async function publish(base, topic, data, event) {
  const response = await fetch(base + "/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(event ? { topic, data, event } : { topic, data }),
  });
  if (response.status !== 201) throw new Error("publish failed: " + response.status + " " + await response.text());
  return (await response.json()).id;
}

/** Opens a blank page of the demo's origin in `context` with a feed; returns the page. */
async function feedPage(context, base, options) {
  const page = await context.newPage();
  await page.goto(base + "/stats");
  await feedOn(page, options);
  return page;
}

/** Starts a feed in `page` (already on the demo's origin) that records what it is told. */
async function feedOn(page, options) {
  await page.evaluate(async (options) => {
    const { connect } = await import("/tidings.js");
    const log = { events: [], gaps: [], states: [], errors: [] };
    const feed = connect(options);
    feed.addEventListener("event", (e) => log.events.push(e.detail));
    feed.addEventListener("gap", (e) => log.gaps.push(e.detail));
    feed.addEventListener("state", (e) => log.states.push(`${e.detail.state}/${e.detail.transport}/${e.detail.leader}`));
    feed.addEventListener("error", (e) => log.errors.push(e.detail));
    window.feed = feed;
    window.log = log;
  }, options);
}

/**
 * A pass-through proxy in front of the demo (streams unbuffered) that answers the next request
 * `fail.match(req)` accepts with `fail.status` and `fail.headers` itself, once.
 */
async function failingProxy(targetPort) {
  const http = await import("node:http");
  const server = http.createServer((req, res) => {
    const fail = server.fail;
    if (fail && fail.match(req)) {
      server.fail = null;
      server.failed.push(req.url);
      res.writeHead(fail.status, { "content-type": "text/html", connection: "close", ...fail.headers });
      return res.end(`<html>${fail.status}</html>`);
    }
    const upstream = http.request(
      { host: "127.0.0.1", port: targetPort, path: req.url, method: req.method, headers: req.headers },
      (up) => { res.writeHead(up.statusCode, up.headers); up.pipe(res); },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.fail = null;
  server.failed = [];
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  server.url = `http://127.0.0.1:${server.address().port}`;
  return server;
}

const view = (page) => page.evaluate(() => ({
  data: window.log.events.map((e) => e.data),
  types: window.log.events.map((e) => e.type),
  gaps: window.log.gaps.length,
  errors: window.log.errors,
  state: window.feed.state,
  leader: window.feed.leader,
  cursor: window.feed.cursor,
}));

const until = (page, fn, arg, timeout = 20000) => page.waitForFunction(fn, arg, { timeout });
const isOpen = (page) => until(page, () => window.feed && window.feed.state === "open");
const hasData = (page, items) =>
  until(page, (items) => items.every((d) => window.log.events.some((e) => e.data === d)), items);

test("a tab that takes over without a cursor of its own misses nothing", async () => {
  const demo = await startDemo(0, "memory");
  try {
    // The report: in most runs the new leader started at the end of the log. Several rounds,
    // each in a fresh context (its own locks and storage), each with the publish right after
    // the leader's tab closes.
    for (let round = 0; round < 4; round++) {
      const context = await browser.newContext();
      const topic = `handoff-${round}`;
      const options = { topics: [topic] };
      const first = await feedPage(context, demo.url, options);
      await isOpen(first);
      assert.equal((await view(first)).leader, true);
      const second = await feedPage(context, demo.url, options);
      await isOpen(second);
      const before = await view(second);
      assert.equal(before.leader, false, "the second tab follows");
      assert.ok(before.cursor, "a follower has a position from the moment it joins");
      await first.close();
      await publish(demo.url, topic, `published as the leader left (${round})`);
      await hasData(second, [`published as the leader left (${round})`]);
      await until(second, () => window.feed.leader);
      await publish(demo.url, topic, `then live (${round})`);
      await hasData(second, [`then live (${round})`]);
      const after = await view(second);
      assert.deepEqual(after.data, [`published as the leader left (${round})`, `then live (${round})`]);
      assert.equal(after.gaps, 0);
      await context.close();
    }
  } finally {
    await stopDemo(demo);
  }
});

test("tabs that ask for different event types do not share a connection", async () => {
  const demo = await startDemo(0, "memory");
  const context = await browser.newContext();
  try {
    const a = await feedPage(context, demo.url, { topics: ["typed"], eventTypes: ["a"] });
    const b = await feedPage(context, demo.url, { topics: ["typed"], eventTypes: ["b"] });
    const ab = await feedPage(context, demo.url, { topics: ["typed"], eventTypes: ["b", "a"] });
    const ba = await feedPage(context, demo.url, { topics: ["typed"], eventTypes: ["a", "b"] });
    for (const page of [a, b, ab, ba]) await isOpen(page);
    await publish(demo.url, "typed", "b1", "b");
    await publish(demo.url, "typed", "a1", "a");
    await publish(demo.url, "typed", "b2", "b");
    await publish(demo.url, "typed", "m1");
    await hasData(a, ["a1", "m1"]);
    await hasData(b, ["b1", "b2", "m1"]);
    await hasData(ab, ["b1", "a1", "b2", "m1"]);
    await hasData(ba, ["b1", "a1", "b2", "m1"]);
    assert.deepEqual((await view(a)).data, ["a1", "m1"]);
    assert.deepEqual((await view(b)).data, ["b1", "b2", "m1"]);
    assert.deepEqual((await view(ab)).data, ["b1", "a1", "b2", "m1"]);
    assert.deepEqual((await view(ba)).data, ["b1", "a1", "b2", "m1"]);
    // a and b each lead their own connection; the same set of types in another order shares one.
    const leaders = await Promise.all([a, b, ab, ba].map(async (p) => (await view(p)).leader));
    assert.deepEqual(leaders.slice(0, 2), [true, true]);
    assert.equal(leaders.slice(2).filter(Boolean).length, 1, "one leader for the same set of types");
    // A cursor is kept per set of types: the b tab's stored position is not moved by a's events.
    const keys = await b.evaluate(() => Object.keys(sessionStorage).filter((k) => k.startsWith("tidings:")));
    assert.equal(keys.length, 1);
  } finally {
    await context.close();
    await stopDemo(demo);
  }
});

test("a leader whose page goes into the back/forward cache hands over at once", async () => {
  // Playwright turns the back/forward cache off by default; this browser keeps it.
  const cached = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ARGS,
    ignoreDefaultArgs: ["--disable-back-forward-cache"],
  });
  const demo = await startDemo(0, "memory");
  try {
    const context = await cached.newContext();
    const options = { topics: ["cached"] };
    const leader = await feedPage(context, demo.url, options);
    await isOpen(leader);
    await leader.evaluate(() => {
      window.addEventListener("pageshow", (e) => { window.restored = e.persisted; });
    });
    const follower = await feedPage(context, demo.url, options);
    await isOpen(follower);
    await leader.goto(demo.url + "/stats?elsewhere");
    await until(follower, () => window.feed.leader, undefined, 10000);
    await publish(demo.url, "cached", "while away");
    await hasData(follower, ["while away"]);
    // Restored from the cache, a page fires pageshow, not load.
    await leader.goBack({ waitUntil: "commit" });
    await until(leader, () => window.restored !== undefined);
    assert.equal(await leader.evaluate(() => window.restored), true, "the page came back from the back/forward cache");
    await hasData(leader, ["while away"]);
    await publish(demo.url, "cached", "back");
    await hasData(leader, ["back"]);
    await hasData(follower, ["back"]);
    for (const page of [leader, follower]) {
      const seen = await view(page);
      assert.deepEqual(seen.data, ["while away", "back"]);
      assert.equal(seen.gaps, 0);
    }
    await context.close();
  } finally {
    await cached.close();
    await stopDemo(demo);
  }
});

test("with site data blocked, the feed runs unshared", async () => {
  // Chromium's own setting (cookies and site data blocked, as private browsing may set): the
  // Web Locks API rejects every request, and sessionStorage throws.
  const profile = tempDir("tidings-blocked-");
  mkdirSync(path.join(profile, "Default"), { recursive: true });
  writeFileSync(
    path.join(profile, "Default", "Preferences"),
    JSON.stringify({ profile: { default_content_setting_values: { cookies: 2 } } }),
  );
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ARGS,
  });
  const demo = await startDemo(0, freshStore());
  try {
    const page = await feedPage(context, demo.url, { topics: ["blocked"] });
    const refused = await page.evaluate(() => navigator.locks.request("x", () => 1).then(() => "granted", (e) => e.name));
    assert.equal(refused, "SecurityError", "this browser refuses locks");
    await isOpen(page);
    const other = await feedPage(context, demo.url, { topics: ["blocked"] });
    await isOpen(other);
    await publish(demo.url, "blocked", "one");
    await hasData(page, ["one"]);
    await hasData(other, ["one"]);
    for (const p of [page, other]) {
      const seen = await view(p);
      assert.deepEqual(seen.data, ["one"]);
      assert.equal(seen.leader, true, "each tab holds its own connection");
    }
  } finally {
    await context.close();
    await stopDemo(demo);
  }
});

// Found by the fresh-user review: a follower coming back with a cursor whose catch-up poll
// failed (a proxy's 502, a 429, the network) released the leader's broadcasts at once, and the
// first of them moved its cursor past everything it had missed, without a gap notice.
test("a returning follower whose catch-up fails asks again and misses nothing", async () => {
  const demo = await startDemo(0, "memory");
  const proxy = await failingProxy(demo.port);
  const failures = [
    { status: 502, headers: {} },
    { status: 429, headers: { "retry-after": "1" } },
  ];
  try {
    for (const [round, failure] of failures.entries()) {
      const context = await browser.newContext();
      const topic = `catch-up-${round}`;
      const options = { topics: [topic] };
      const leader = await feedPage(context, proxy.url, options);
      await isOpen(leader);
      const follower = await feedPage(context, proxy.url, options);
      await isOpen(follower);
      await publish(demo.url, topic, "p0");
      await hasData(follower, ["p0"]);
      // Away (a plain navigation: its cursor stays in the tab's sessionStorage), then back.
      await follower.goto(proxy.url + "/stats?away");
      const missed = ["e1", "e2", "e3", "e4", "e5"];
      for (const data of missed) await publish(demo.url, topic, data);
      await hasData(leader, missed);
      proxy.fail = { ...failure, match: (req) => req.url.startsWith("/poll") && req.url.includes("cursor=") };
      await follower.goto(proxy.url + "/stats");
      await feedOn(follower, options);
      await until(follower, () => window.feed.cursor && window.log.events.length >= 5);
      assert.equal(proxy.failed.length, round + 1, "the catch-up poll was refused once");
      await publish(demo.url, topic, "e6");
      await hasData(follower, ["e6"]);
      const seen = await view(follower);
      assert.deepEqual(seen.data, [...missed, "e6"], `after a ${failure.status}`);
      assert.equal(seen.gaps, 0);
      await context.close();
    }
  } finally {
    proxy.close();
    await stopDemo(demo);
  }
});

// Found by the fresh-user review: after the server restarted with a new log (memory store), a
// follower that caught up by itself (gap, then the new events) was sent the leader's gap
// afterwards, stepped back to it, and got the new events twice and a second gap notice.
test("after a restart, a follower that caught up first takes the leader's gap and events once", async () => {
  let demo = await startDemo(0, "memory");
  const context = await browser.newContext();
  try {
    const options = { topics: ["restart"] };
    const leader = await feedPage(context, demo.url, options);
    await isOpen(leader);
    const follower = await feedPage(context, demo.url, options);
    await isOpen(follower);
    await publish(demo.url, "restart", "before");
    await hasData(follower, ["before"]);
    await follower.goto(demo.url + "/tidings.js?away");
    const port = demo.port;
    await stopDemo(demo);
    demo = await startDemo(port, "memory");
    await publish(demo.url, "restart", "x1");
    await publish(demo.url, "restart", "x2");
    // Back at once: its own catch-up (a gap, then x1 and x2) comes before the leader's stream
    // reconnects (its `retry:` is 3 s) and broadcasts the same gap and events.
    await follower.goto(demo.url + "/stats");
    await feedOn(follower, options);
    await until(follower, () => window.log.events.length >= 2);
    await hasData(leader, ["x1", "x2"]);
    await publish(demo.url, "restart", "x3");
    await hasData(follower, ["x3"]);
    await hasData(leader, ["x3"]);
    const seen = await view(follower);
    assert.deepEqual(seen.data, ["x1", "x2", "x3"]);
    assert.equal(seen.gaps, 1, "one gap notice");
    const led = await view(leader);
    assert.deepEqual(led.data, ["before", "x1", "x2", "x3"]);
    assert.equal(led.gaps, 1);
  } finally {
    await context.close();
    await stopDemo(demo);
  }
});
