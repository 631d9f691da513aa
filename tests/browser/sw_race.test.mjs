// The service worker's "already shown" check under concurrency: the same push delivered several
// times at the same moment is shown and posted to the page once, its truncated event fetched
// once, and other pushes delivered alongside are not lost; after the worker is stopped and
// started again, Cache Storage still remembers what was shown.
//
// Payloads are real: the demo pushes to the local push service (VAPID verified, decrypted), and
// the decrypted payloads are handed to the page's service worker through the DevTools protocol,
// as in push.test.mjs. The page is loaded through a pass-through proxy that serves
// client/tidings-sw.js from the source tree (the demo binary embeds the file when it is built,
// so this checks the worker as it is now; TIDINGS_SW_FILE serves another file, e.g. an older
// version) and counts the worker's long-poll requests.
//
// "No second message" is checked with a sentinel: the worker handles pushes one at a time in
// arrival order, so once the page has the message of a push delivered after a burst, every
// message of the burst has been posted. The test checks that order too (the sentinel is last).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { startDemo, stopDemo, launchBrowser, publish, startPushService, registerAtDemo, pushedMessages, workerPage } from "./harness.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const workerFile = process.env.TIDINGS_SW_FILE || path.join(root, "client/tidings-sw.js");
const TOPIC = "sw-race";

let browser;
let service;
before(async () => {
  browser = await launchBrowser();
  service = await startPushService();
});
after(async () => {
  await browser?.close();
  service?.kill("SIGKILL");
});

/** Passes everything to the demo on `targetPort`, but serves /tidings-sw.js from `workerFile`. */
async function workerProxy(targetPort) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://proxy");
    if (url.pathname === "/tidings-sw.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-cache" });
      res.end(readFileSync(workerFile));
      return;
    }
    if (url.pathname === "/poll") server.polls.push(url.searchParams);
    const upstream = http.request(
      { host: "127.0.0.1", port: targetPort, path: req.url, method: req.method, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.polls = [];
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  server.url = `http://127.0.0.1:${server.address().port}`;
  return server;
}

/** How often each id occurs in `ids`, as an object. */
function counts(ids) {
  const c = {};
  for (const id of ids) c[id] = (c[id] || 0) + 1;
  return c;
}

test("the same push delivered several times at once is shown and posted once", async () => {
  const demo = await startDemo(0, undefined, {
    TIDINGS_PUSH_ALLOW_HOSTS: service.hostPort,
    TIDINGS_PUSH_CA_FILE: service.cert,
  });
  const proxy = await workerProxy(demo.port);
  const context = await browser.newContext();
  try {
    const { page, cdp, deliver } = await workerPage(context, proxy.url);
    /** Delivers `payloads` all at once: no call waits for another. */
    const burst = (payloads) => Promise.all(payloads.map(deliver));
    const posted = () => page.evaluate(() => window.__pushes.map((m) => m.id));
    /** Delivers the sentinel `payload` and waits until the page has its message; returns all ids posted. */
    const settle = async (payload) => {
      const id = JSON.parse(payload).id;
      await deliver(payload);
      await page.waitForFunction((want) => window.__pushes.some((m) => m.id === want), id);
      const ids = await posted();
      assert.equal(ids.at(-1), id, `the sentinel's message is the last one: ${ids}`);
      return ids;
    };

    // Real payloads for TOPIC (the demo's ticks go to another topic): small ones, and one
    // too large for a push, which arrives truncated and is fetched from long-polling.
    const subscriber = await registerAtDemo(service, demo, [TOPIC]);
    const big = "y".repeat(5000) + " the end";
    const texts = ["one", "two", big, "four", "sentinel 1", "sentinel 2", "five", "sentinel 3"];
    for (const t of texts) await publish(demo.url, t, TOPIC);
    const payloads = (await pushedMessages(service, subscriber, texts.length)).map((m) => m.payload);
    const messages = payloads.map((p) => JSON.parse(p));
    assert.deepEqual(messages.map((m) => m.data ?? "(truncated)"),
      texts.map((t) => (t === big ? "(truncated)" : t)), "the pushes, in order");
    const [one, two, large, four, s1, s2, five, s3] = payloads;
    const [idOne, idTwo, idLarge, idFour, idS1, idS2, idFive, idS3] = messages.map((m) => m.id);
    assert.equal(messages[2].truncated, true);

    // The same push twice at the same moment.
    await burst([one, one]);
    let ids = await settle(s1);
    assert.deepEqual(counts(ids), { [idOne]: 1, [idS1]: 1 }, `twice at once, posted once: ${ids}`);

    // A burst: one id five times, a truncated one three times, another id once, and the first
    // push once more (already shown), mixed.
    await burst([two, large, two, one, two, four, large, two, large, two]);
    ids = await settle(s2);
    assert.deepEqual(counts(ids), { [idOne]: 1, [idS1]: 1, [idTwo]: 1, [idLarge]: 1, [idFour]: 1, [idS2]: 1 },
      `each id of the burst posted once, none lost: ${ids}`);
    const fetched = await page.evaluate((id) => window.__pushes.find((m) => m.id === id), idLarge);
    assert.equal(fetched.fetched, true, "the truncated event was fetched whole");
    assert.equal(fetched.data, big);
    const largeFetches = proxy.polls.filter((q) => q.get("cursor") === messages[2].after);
    assert.equal(largeFetches.length, 1, "the truncated event was fetched once");

    // One notification per id, none missing (the tag is the id).
    const notifications = await page.evaluate(async () =>
      (await (await navigator.serviceWorker.ready).getNotifications()).map((n) => ({ tag: n.tag, body: n.body })));
    assert.deepEqual(counts(notifications.map((n) => n.tag)),
      { [idOne]: 1, [idS1]: 1, [idTwo]: 1, [idLarge]: 1, [idFour]: 1, [idS2]: 1 });
    assert.equal(notifications.find((n) => n.tag === idLarge).body, big);
    assert.equal(notifications.find((n) => n.tag === idFour).body, "four");

    // A stopped worker starts again with empty memory: Cache Storage still remembers what was
    // shown, also for repeats delivered together with a new push.
    await cdp.send("ServiceWorker.stopAllWorkers");
    await burst([two, five, one, two, large, five]);
    ids = await settle(s3);
    assert.deepEqual(counts(ids),
      { [idOne]: 1, [idS1]: 1, [idTwo]: 1, [idLarge]: 1, [idFour]: 1, [idS2]: 1, [idFive]: 1, [idS3]: 1 },
      `after a restart, repeats dropped and the new id posted once: ${ids}`);
    assert.equal(proxy.polls.filter((q) => q.get("cursor") === messages[2].after).length, 1,
      "a truncated event already shown is not fetched again");
  } finally {
    await context.close();
    proxy.closeAllConnections?.();
    await new Promise((r) => proxy.close(r));
    await stopDemo(demo);
  }
});
