// The tidings-hub binary as a Mercure client outside Rust sees it: updates published with the
// real curl (a form and an HS256 token minted here), received by headless Chromium's own
// EventSource on the hub's page. Leaving and coming back, a kill -9 and a restart on the same
// SQLite file, private updates: each checked against exactly what was published.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import path from "node:path";
import { startHub, stopDemo, launchBrowser, tempDir } from "./harness.mjs";

const SECRET = randomBytes(32).toString("hex");
const ENV = { MERCURE_PUBLISHER_JWT_KEY: SECRET };

/** An HS256 JSON Web Token of `claims`, signed with `secret`. */
function jwt(claims, secret) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const signed = part({ alg: "HS256", typ: "JWT" }) + "." + part(claims);
  return signed + "." + createHmac("sha256", secret).update(signed).digest("base64url");
}
const TOKEN = jwt({ mercure: { publish: ["*"] } }, SECRET);

/** POSTs the form `fields` to the hub with curl (`-d k=v`, values URL-encoded): {status, body}. */
function curl(hub, fields, token = TOKEN) {
  const args = ["-sS", "--max-time", "10", "-H", `Authorization: Bearer ${token}`, "-w", "\n%{http_code}"];
  for (const [k, v] of Object.entries(fields)) args.push("-d", `${k}=${encodeURIComponent(v)}`);
  return new Promise((resolve, reject) => {
    execFile("curl", [...args, hub.hubUrl], (err, stdout, stderr) => {
      if (err) return reject(new Error(`curl failed: ${err.message} ${stderr}`));
      const cut = stdout.lastIndexOf("\n");
      resolve({ status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) });
    });
  });
}

/** Publishes `data` to `topic` (with `extra` fields) under a fresh id; asserts 200 and the id back. */
async function post(hub, topic, data, extra = {}) {
  const id = `urn:uuid:${randomUUID()}`;
  const { status, body } = await curl(hub, { topic, data, id, ...extra });
  assert.deepEqual({ status, body }, { status: 200, body: id }, `publish of ${data}`);
  return { data, lastEventId: id, type: "message" };
}

let browser;
const hubs = [];
async function hub(args = []) {
  const child = await startHub(["--anonymous", ...args], ENV);
  hubs.push(child);
  return child;
}
before(async () => { browser = await launchBrowser(); });
after(async () => {
  for (const child of hubs) await stopDemo(child);
  await browser?.close();
});

/** A page of the hub's own (`GET /`), to run EventSources from its origin. */
async function hubPage(h) {
  const page = await browser.newPage();
  await page.goto(h.url + "/");
  assert.equal(await page.title(), "tidings-hub");
  return page;
}

/**
 * Opens `new EventSource("/.well-known/mercure?" + query)` in `page` as `window.sources[name]`,
 * every event (messages and gap notices) kept in `window.got[name]` as {data, lastEventId, type}
 * and every open counted in `window.opens[name]`. Resolves once it is open.
 */
function listen(page, name, query) {
  return page.evaluate(([name, query]) => new Promise((resolve, reject) => {
    for (const k of ["sources", "got", "opens"]) window[k] ??= {};
    const got = (window.got[name] = []);
    window.opens[name] = 0;
    const es = (window.sources[name] = new EventSource("/.well-known/mercure?" + query));
    const keep = (e) => got.push({ data: e.data, lastEventId: e.lastEventId, type: e.type });
    es.onmessage = keep;
    es.addEventListener("tidings.gap", keep);
    es.onopen = () => { window.opens[name] += 1; resolve(); };
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) reject(new Error("the EventSource was refused")); };
  }), [name, query]);
}

const got = (page, name) => page.evaluate((n) => window.got[n], name);
const waitForCount = (page, name, n, timeout = 20000) =>
  page.waitForFunction(([n, k]) => window.got[n].length >= k, [name, n], { timeout });
const query = (params) => new URLSearchParams(params).toString();

test("a form published with curl and a JWT reaches Chromium's EventSource with the publisher's id", async () => {
  const h = await hub();
  const page = await hubPage(h);
  try {
    const topic = "https://example.com/books/1";
    await listen(page, "books", query({ topic: "https://example.com/books/{id}" }));
    const sent = await post(h, topic, "{\"title\":\"Dune\"}");
    await waitForCount(page, "books", 1);
    assert.deepEqual(await got(page, "books"), [sent]);
    // A token signed with another secret is refused, and nothing reaches the page.
    const forged = await curl(h, { topic, data: "forged" }, jwt({ mercure: { publish: ["*"] } }, "not the secret"));
    assert.equal(forged.status, 401);
    const marker = await post(h, topic, "after the forgery");
    await waitForCount(page, "books", 2);
    assert.deepEqual(await got(page, "books"), [sent, marker]);
  } finally {
    await page.close();
  }
});

test("leaving and coming back with lastEventID delivers exactly what was missed", async () => {
  const h = await hub();
  const page = await hubPage(h);
  try {
    const topic = "https://example.com/news";
    await listen(page, "first", query({ topic }));
    const seen = [await post(h, topic, "seen 1"), await post(h, topic, "seen 2")];
    await waitForCount(page, "first", 2);
    assert.deepEqual(await got(page, "first"), seen);
    const last = await page.evaluate(() => {
      window.sources.first.close();
      return window.got.first.at(-1).lastEventId;
    });
    assert.equal(last, seen[1].lastEventId);
    const missed = [];
    for (const data of ["missed 1", "missed 2", "missed 3"]) missed.push(await post(h, topic, data));
    await listen(page, "back", query({ topic, lastEventID: last }));
    await waitForCount(page, "back", 3);
    // One more, live: whatever came before it on the stream is in the list below.
    const live = await post(h, topic, "live");
    await waitForCount(page, "back", 4);
    assert.deepEqual(await got(page, "back"), [...missed, live]);
    assert.deepEqual(await got(page, "first"), seen, "the closed EventSource got nothing more");
  } finally {
    await page.close();
  }
});

test("killed with SIGKILL and restarted on the same port and SQLite file, the EventSource resumes by itself, exactly", async () => {
  const store = "sqlite:" + path.join(tempDir("tidings-hub-"), "hub.db");
  const h = await hub(["--store", store]);
  const page = await hubPage(h);
  try {
    const topic = "https://example.com/orders/{id}";
    await listen(page, "live", query({ topic }));
    // `retry=500`: the SSE `retry:` line makes Chromium reconnect after 0.5 s, not 3 s.
    const published = [];
    for (let i = 1; i <= 3; i++) published.push(await post(h, `https://example.com/orders/${i}`, `before ${i}`, { retry: "500" }));
    await waitForCount(page, "live", 3);
    assert.deepEqual(await got(page, "live"), published);

    await stopDemo(h, "SIGKILL");
    await page.waitForFunction(() => window.sources.live.readyState === EventSource.CONNECTING, null, { timeout: 20000 });

    const again = await hub(["--addr", `127.0.0.1:${h.port}`, "--store", store]);
    assert.equal(again.port, h.port);
    for (let i = 4; i <= 5; i++) published.push(await post(again, `https://example.com/orders/${i}`, `after ${i}`, { retry: "500" }));
    await page.waitForFunction(() => window.opens.live >= 2, null, { timeout: 20000 });
    await waitForCount(page, "live", published.length);
    // The stream is in log order: a duplicate or a loss would show before the last update.
    assert.deepEqual(await got(page, "live"), published);
    assert.equal(await page.evaluate(() => window.opens.live), 2, "the same EventSource reconnected once");
  } finally {
    await page.close();
  }
});

test("private updates never reach an anonymous EventSource, live or on replay", async () => {
  const h = await hub();
  const page = await hubPage(h);
  try {
    const topic = "https://example.com/users/alice/inbox";
    await listen(page, "anon", query({ topic }));
    await post(h, topic, "private to alice", { private: "on" });
    const marker = await post(h, topic, "public marker");
    await waitForCount(page, "anon", 1);
    assert.deepEqual(await got(page, "anon"), [marker]);
    // From the start of the log, with a selector of every topic: still only the public one.
    await listen(page, "replay", query({ topic: "*", lastEventID: "earliest" }));
    await waitForCount(page, "replay", 1);
    const more = await post(h, topic, "live after the replay");
    await waitForCount(page, "replay", 2);
    assert.deepEqual(await got(page, "replay"), [marker, more]);
  } finally {
    await page.close();
  }
});
