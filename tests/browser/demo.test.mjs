// The seed demo's promises, checked in a real headless Chromium against the real demo server.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startDemo, stopDemo, launchBrowser, publish, stats, listed, waitForText, waitForItems, tickNumbers,
  bufferingProxy,
} from "./harness.mjs";

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/**
 * Runs `fn(demo, proxy, page)` with a fresh demo, the test proxy in front of it (its settings
 * from `settings`: `buffering`, `refuseUpgrades`) and a page; closes all three after.
 */
const withProxy = (settings, fn) => withDemo(async (demo) => {
  const proxy = Object.assign(await bufferingProxy(demo.port), settings);
  const page = await browser.newPage();
  try {
    return await fn(demo, proxy, page);
  } finally {
    await page.close();
    proxy.closeAllConnections();
    proxy.close();
  }
});

async function withDemo(fn, store) {
  const demo = await startDemo(0, store);
  try {
    return await fn(demo);
  } finally {
    await stopDemo(demo);
  }
}

// The page's transports: "auto" is WebSocket first; each can be chosen with ?transport=.
const SHOWN = { websocket: /via WebSocket/, sse: /via Server-Sent Events/, poll: /via long-polling/ };

for (const [query, via] of [["", "websocket"], ["?transport=sse", "sse"], ["?transport=poll", "poll"]]) {
  test(`events roll in, each with its id (page ${query || "default"}: ${via})`, () => withDemo(async (demo) => {
    const page = await browser.newPage();
    await page.goto(demo.url + "/" + query);
    assert.equal(await page.title(), "Server-Sent Events Demo");
    await waitForText(page, "#status", "Server connected :)");
    const ids = [await publish(demo.url, "first"), await publish(demo.url, "second\nline")];
    await waitForItems(page, ["first", "second\nline"]);
    const shown = await page.$$eval("#events li", (lis) => lis.map((li) => li.dataset.id));
    for (const id of ids) assert.ok(shown.includes(id), `id ${id} is shown`);
    assert.match(await page.textContent("#transport"), SHOWN[via]);
    await page.close();
  }));
}

for (const via of ["websocket", "sse"]) {
test(`leaving the page and coming back shows exactly what was missed (${via})`, () => withDemo(async (demo) => {
  const page = await browser.newPage();
  await page.goto(demo.url + "/?transport=" + via);
  await waitForText(page, "#status", "Server connected :)");
  assert.match(await page.textContent("#transport"), SHOWN[via]);
  await publish(demo.url, "before leaving");
  await waitForItems(page, ["before leaving"]);
  await page.goto("about:blank");
  const missed = ["missed 1", "missed 2", "missed 3"];
  for (const m of missed) await publish(demo.url, m);
  await page.goBack();
  await waitForItems(page, [...missed]);
  await publish(demo.url, "after return");
  await waitForItems(page, ["after return"]);
  const list = await listed(page);
  for (const item of ["before leaving", ...missed, "after return"]) {
    assert.equal(list.filter((t) => t === item).length, 1, `${item} is listed exactly once`);
  }
  const order = ["before leaving", ...missed, "after return"].map((i) => list.indexOf(i));
  assert.deepEqual(order, [...order].sort((a, b) => a - b), "in publication order");
  const ticks = tickNumbers(list);
  assert.ok(!list.includes("GAP"), "no gap notice");
  // Every event of the topic was shown once, in order: published ones and ticks interleave,
  // so their positions in the log are consecutive.
  await page.close();
  assert.ok(ticks.every((k, i) => i === 0 || k > ticks[i - 1]), `ticks in order: ${ticks}`);
}));

test(`a killed server is reported; restarted, it is rejoined and the page catches up exactly (${via})`, () => withDemo(async (demo) => {
  const page = await browser.newPage();
  await page.goto(demo.url + "/?transport=" + via);
  await waitForText(page, "#status", "Server connected :)");
  assert.match(await page.textContent("#transport"), SHOWN[via]);
  await publish(demo.url, "before the crash");
  await waitForItems(page, ["before the crash"]);
  await stopDemo(demo, "SIGKILL");
  await waitForText(page, "#status", "Server unavailable :(");
  // Same port, same SQLite file: the log survived the crash.
  const again = await startDemo(demo.port, demo.store);
  try {
    // Published after the restart, before the page is back: the page must get them on return.
    const missed = ["while you were away 1", "while you were away 2"];
    for (const m of missed) await publish(again.url, m);
    await waitForText(page, "#status", "Server connected :)");
    await waitForItems(page, missed);
    await publish(again.url, "after the return");
    await waitForItems(page, ["after the return"]);
    const list = await listed(page);
    assert.ok(!list.includes("GAP"), "no gap: nothing was lost");
    for (const item of ["before the crash", ...missed, "after the return"]) {
      assert.equal(list.filter((t) => t === item).length, 1, `${item} exactly once`);
    }
    const ticks = tickNumbers(list);
    assert.ok(ticks.every((k, i) => i === 0 || k > ticks[i - 1]), `ticks in order: ${ticks}`);
  } finally {
    await stopDemo(again);
    await page.close();
  }
}));

test(`with the memory store, a restarted server is rejoined with a gap notice (${via})`, () => withDemo(async (demo) => {
  const page = await browser.newPage();
  await page.goto(demo.url + "/?transport=" + via);
  await waitForText(page, "#status", "Server connected :)");
  assert.match(await page.textContent("#transport"), SHOWN[via]);
  await publish(demo.url, "before the crash");
  await waitForItems(page, ["before the crash"]);
  await stopDemo(demo, "SIGKILL");
  await waitForText(page, "#status", "Server unavailable :(");
  const again = await startDemo(demo.port, "memory");
  try {
    await waitForText(page, "#status", "Server connected :)");
    // The in-memory log died with the process: the page says so rather than losing silently.
    await page.waitForSelector("#events li.gap", { timeout: 20000 });
    await publish(again.url, "after the restart");
    await waitForItems(page, ["after the restart"]);
    const list = await listed(page);
    assert.ok(list.indexOf("GAP") > list.indexOf("before the crash"));
    assert.ok(list.indexOf("after the restart") > list.indexOf("GAP"));
  } finally {
    await stopDemo(again);
    await page.close();
  }
}, "memory"));
}

test("without EventSource the same events arrive by long-polling", () => withDemo(async (demo) => {
  const context = await browser.newContext();
  await context.addInitScript(() => { delete window.EventSource; delete window.WebSocket; });
  const page = await context.newPage();
  await page.goto(demo.url + "/");
  await waitForText(page, "#status", "Server connected :)");
  assert.match(await page.textContent("#transport"), /long-polling/);
  const sent = ["poll 1", "poll 2\r\nwith CRLF", "poll 3 🦀"];
  for (const s of sent) await publish(demo.url, s);
  await waitForItems(page, ["poll 1", "poll 2\r\nwith CRLF", "poll 3 🦀"]);
  const list = await listed(page);
  for (const s of sent) assert.equal(list.filter((t) => t === s).length, 1);
  // Leaving and coming back works the same way over long-polling.
  await page.goto("about:blank");
  await publish(demo.url, "poll missed");
  await page.goBack();
  await waitForItems(page, ["poll missed"]);
  await context.close();
}));

test("three tabs share one connection", () => withDemo(async (demo) => {
  const context = await browser.newContext();
  const pages = [];
  for (let i = 0; i < 3; i++) {
    const page = await context.newPage();
    await page.goto(demo.url + "/");
    await waitForText(page, "#status", "Server connected :)");
    pages.push(page);
  }
  await publish(demo.url, "to every tab");
  for (const page of pages) await waitForItems(page, ["to every tab"]);
  // Catch-up polls of joining tabs end at once; then only the leader's stream stays open.
  const deadline = Date.now() + 10000;
  let s = await stats(demo.url);
  while (s.subscribers !== 1 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    s = await stats(demo.url);
  }
  assert.equal(s.subscribers, 1, "one open subscription for three tabs");
  const followers = await Promise.all(pages.map((p) => p.textContent("#transport")));
  assert.equal(followers.filter((t) => t.includes("shared with another tab")).length, 2);
  // The leader's tab closes: another tab takes over and nothing is lost.
  const leader = pages.find((p, i) => !followers[i].includes("shared"));
  await leader.close();
  const rest = pages.filter((p) => p !== leader);
  await publish(demo.url, "after the leader left");
  for (const page of rest) await waitForItems(page, ["after the leader left"]);
  for (const page of rest) {
    const list = await listed(page);
    assert.equal(list.filter((t) => t === "after the leader left").length, 1);
  }
  await context.close();
}));

test("behind a proxy that buffers the stream, the client falls back to long-polling", () => withProxy({ refuseUpgrades: true }, async (demo, proxy, page) => {
  // The proxy buffers streams and does not pass WebSocket either.
  await page.goto(proxy.url + "/");
  // The stream opens (headers pass) but delivers nothing; after the open timeout the client
  // switches to long-polling.
  await waitForText(page, "#transport", "long-polling", 30000);
  await publish(demo.url, "through the proxy");
  await waitForItems(page, ["through the proxy"]);
  await publish(demo.url, "polled through the proxy");
  await waitForItems(page, ["polled through the proxy"]);
  const list = await listed(page);
  assert.equal(list.filter((t) => t === "through the proxy").length, 1);
}));

test("the cursor carries over from Server-Sent Events to long-polling", () => withDemo(async (demo) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(demo.url + "/?transport=sse");
  await waitForText(page, "#status", "Server connected :)");
  assert.match(await page.textContent("#transport"), /Server-Sent Events/);
  await publish(demo.url, "seen over SSE");
  await waitForItems(page, ["seen over SSE"]);
  await page.goto("about:blank");
  const missed = ["missed A", "missed B"];
  for (const m of missed) await publish(demo.url, m);
  // Back on the page, without EventSource this time: long-polling resumes from the cursor that
  // the stream left in sessionStorage.
  await context.addInitScript(() => { delete window.EventSource; });
  await page.goBack();
  await waitForText(page, "#transport", "long-polling");
  await waitForItems(page, missed);
  const list = await listed(page);
  for (const item of ["seen over SSE", ...missed]) {
    assert.equal(list.filter((t) => t === item).length, 1, `${item} exactly once`);
  }
  assert.ok(!list.includes("GAP"));
  await context.close();
}));

test("the client names each event's topic, over both transports", () => withDemo(async (demo) => {
  for (const transport of ["sse", "poll"]) {
    const page = await browser.newPage();
    await page.goto(demo.url + "/");
    await page.evaluate(async (via) => {
      const { connect } = await import("/tidings.js");
      window.received = [];
      const feed = connect({ topics: ["alpha", "beta/β"], transport: via, share: false, storageKey: "t-" + via });
      feed.addEventListener("event", (e) => window.received.push([e.detail.topic, e.detail.data]));
      await new Promise((resolve) => feed.addEventListener("state", (e) => e.detail.state === "open" && resolve()));
    }, transport);
    await publish(demo.url, "to alpha", "alpha");
    await publish(demo.url, "to beta", "beta/β");
    await publish(demo.url, "alpha again", "alpha");
    await page.waitForFunction(() => window.received.length >= 3, null, { timeout: 20000 });
    const received = await page.evaluate(() => window.received);
    // Per topic in log order (across topics a replayed batch may group them).
    const byTopic = (t) => received.filter(([topic]) => topic === t).map(([, data]) => data);
    assert.deepEqual(byTopic("alpha"), ["to alpha", "alpha again"], transport);
    assert.deepEqual(byTopic("beta/β"), ["to beta"], transport);
    assert.equal(received.length, 3, transport);
    await page.close();
  }
}));

// Found by the tab-sharing soak: on a stream of several topics, events of a type the page does
// not listen for move the other topic's position unseen, and the next event was named after
// the wrong topic. With `listen`, the server sends those as `tidings.skip`: every position is
// seen. The same events arrive over long-polling (which filters the types itself).
test("an event's topic is right after events of types the page does not listen for", () => withDemo(async (demo) => {
  const typed = (data, topic, event) => fetch(demo.url + "/publish", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ topic, data, event }),
  }).then((r) => assert.equal(r.status, 201));
  for (const transport of ["sse", "poll"]) {
    const page = await browser.newPage();
    await page.goto(demo.url + "/stats");
    await page.evaluate(async (via) => {
      const { connect } = await import("/tidings.js");
      window.received = [];
      const feed = connect({ topics: ["left", "right"], eventTypes: ["kept"], transport: via, share: false, storageKey: "s-" + via });
      feed.addEventListener("event", (e) => window.received.push([e.detail.topic, e.detail.type, e.detail.data]));
      await new Promise((resolve) => feed.addEventListener("state", (e) => e.detail.state === "open" && resolve()));
    }, transport);
    // Each wanted event follows an unwanted one on the other topic, in both directions.
    await typed("unwanted right 1", "right", "other");
    await typed("left 1", "left");
    await typed("unwanted left 1", "left", "other");
    await typed("right 1", "right", "kept");
    await typed("unwanted right 2", "right", "other");
    await typed("left 2", "left", "kept");
    await typed("end", "right");
    await page.waitForFunction(() => window.received.some(([, , data]) => data === "end"), null, { timeout: 20000 });
    const received = await page.evaluate(() => window.received);
    assert.deepEqual(received.sort(), [
      ["left", "kept", "left 2"], ["left", "message", "left 1"], ["right", "kept", "right 1"], ["right", "message", "end"],
    ].sort(), transport);
    await page.close();
  }
}));

test("after a fallback, the client returns to Server-Sent Events once the stream gets through", () => withProxy({ refuseUpgrades: true }, async (demo, proxy, page) => {
  // The proxy buffers streams and does not pass WebSocket either.
  await page.goto(proxy.url + "/tidings.js");
  await page.evaluate(async () => {
    const { connect } = await import("/tidings.js");
    window.received = [];
    window.transports = [];
    const feed = connect({ topics: ["up"], share: false, storageKey: "upgrade", openTimeout: 500, upgradeAfter: 1500 });
    feed.addEventListener("event", (e) => window.received.push(e.detail.data));
    feed.addEventListener("state", (e) => e.detail.state === "open" && window.transports.push(e.detail.transport));
    window.feed = feed;
  });
  await page.waitForFunction(() => window.transports.includes("poll"), null, { timeout: 20000 });
  await publish(demo.url, "while polling", "up");
  await page.waitForFunction(() => window.received.includes("while polling"), null, { timeout: 20000 });
  proxy.buffering = false; // the proxy stops buffering streams
  await page.waitForFunction(() => window.transports.at(-1) === "sse", null, { timeout: 20000 });
  await publish(demo.url, "streamed again", "up");
  await page.waitForFunction(() => window.received.includes("streamed again"), null, { timeout: 20000 });
  assert.deepEqual(await page.evaluate(() => window.received), ["while polling", "streamed again"]);
}));

test("a proxy that refuses upgrades: the page lands on Server-Sent Events, its cursor kept", () => withProxy({ buffering: false }, async (demo, proxy, page) => {
  // Through the proxy while it passes upgrades: the socket carries the events.
  await page.goto(proxy.url + "/");
  await waitForText(page, "#transport", "WebSocket");
  await publish(demo.url, "over the socket");
  await waitForItems(page, ["over the socket"]);
  // The page goes away; the proxy is reconfigured to refuse upgrades; events go on.
  await page.goto("about:blank");
  proxy.refuseUpgrades = true;
  const missed = ["missed 1", "missed 2"];
  for (const m of missed) await publish(demo.url, m);
  await page.goBack();
  // The socket cannot open: the client falls back to the stream, from the socket's cursor.
  await waitForText(page, "#transport", "Server-Sent Events", 30000);
  await waitForItems(page, missed);
  await publish(demo.url, "streamed");
  await waitForItems(page, ["streamed"]);
  const list = await listed(page);
  for (const item of ["over the socket", ...missed, "streamed"]) {
    assert.equal(list.filter((t) => t === item).length, 1, `${item} exactly once`);
  }
  assert.ok(!list.includes("GAP"), "no gap: the cursor was kept");
  assert.ok(proxy.upgradesRefused >= 2, `the proxy refused ${proxy.upgradesRefused} upgrade(s)`);
}));

test("over WebSocket, any tab sends to the server and publishes through the shared socket", () => withDemo(async (demo) => {
  const context = await browser.newContext();
  const pages = [];
  for (let i = 0; i < 2; i++) {
    const page = await context.newPage();
    await page.goto(demo.url + "/?transport=websocket");
    await waitForText(page, "#status", "Server connected :)");
    pages.push(page);
  }
  const roles = await Promise.all(pages.map((p) => p.evaluate(() => window.tidingsFeed.leader)));
  assert.deepEqual([...roles].sort(), [false, true], "one leader, one follower");
  for (const page of pages) {
    // The demo's message handler answers {"ask": "who"} with the hub's subscription count.
    const reply = await page.evaluate(() => window.tidingsFeed.send({ ask: "who" }));
    assert.equal(reply.subscribers, 1, "one subscription for two tabs");
    // The handler's refusal comes back as an error with its code, and the socket lives on.
    const refused = await page.evaluate(() => window.tidingsFeed.send("what?").then(() => null, (e) => [e.code, e.message]));
    assert.equal(refused[0], 400);
    assert.match(refused[1], /ask/);
  }
  const follower = pages[roles.indexOf(false)];
  const id = await follower.evaluate(() => window.tidingsFeed.publish("demo", "from the follower"));
  for (const page of pages) await waitForItems(page, ["from the follower"]);
  const shown = await pages[0].$$eval("#events li", (lis) => lis.map((li) => li.dataset.id));
  assert.ok(shown.includes(id), "the event carries the id publish() returned");
  // A topic the socket does not follow: refused by the endpoint's policy.
  const refused = await follower.evaluate(() => window.tidingsFeed.publish("elsewhere", "x").then(() => null, (e) => e.code));
  assert.equal(refused, 403);
  await context.close();
}));

test("on the stream after the socket failed, the client moves back to WebSocket once it gets through, without a pause", () => withProxy({ buffering: false, refuseUpgrades: true }, async (demo, proxy, page) => {
  await page.goto(proxy.url + "/tidings.js");
  await page.evaluate(async () => {
    const { connect } = await import("/tidings.js");
    window.received = [];
    window.states = [];
    const feed = connect({ topics: ["up"], share: false, storageKey: "ws-upgrade", openTimeout: 500, upgradeAfter: 1500 });
    feed.addEventListener("event", (e) => window.received.push(e.detail.data));
    feed.addEventListener("state", (e) => window.states.push(`${e.detail.state}/${e.detail.transport}`));
    window.feed = feed;
  });
  await page.waitForFunction(() => window.states.includes("open/sse"), null, { timeout: 20000 });
  await publish(demo.url, "on the stream", "up");
  await page.waitForFunction(() => window.received.includes("on the stream"), null, { timeout: 20000 });
  // While upgrades are refused, the stream stays: a try of the socket beside it is refused
  // (by the proxy) and changes nothing.
  const refusedBefore = proxy.upgradesRefused;
  const deadline = Date.now() + 20000;
  while (proxy.upgradesRefused === refusedBefore) {
    assert.ok(Date.now() < deadline, "the socket is tried again beside the stream");
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(await page.evaluate(() => window.states.at(-1)), "open/sse");
  proxy.refuseUpgrades = false;
  await page.waitForFunction(() => window.states.at(-1) === "open/websocket", null, { timeout: 20000 });
  await publish(demo.url, "over the socket", "up");
  await page.waitForFunction(() => window.received.includes("over the socket"), null, { timeout: 20000 });
  const states = await page.evaluate(() => window.states);
  const fromStream = states.slice(states.indexOf("open/sse"));
  assert.ok(!fromStream.includes("unavailable/sse") && !fromStream.includes("unavailable/websocket"),
    `no pause reported between the stream and the socket: ${fromStream}`);
  assert.deepEqual(await page.evaluate(() => window.received), ["on the stream", "over the socket"]);
}));
