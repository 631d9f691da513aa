// A soak test of tab sharing (issue 18), in a real headless Chromium (with its back/forward
// cache on) against the real demo server: tabs with different topics and event types join,
// lead, go into the back/forward cache, close and come back at random moments while events are
// published without pause. At the end every tab has received each event it asked for exactly
// once, in order per topic, or a gap notice covering it (retention is short on purpose).
//
// Random but repeatable: the seed is printed; SOAK_SEED=<seed> replays a run, SOAK_SECONDS sets
// how long the random actions go on (default 20).

import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { startDemo, stopDemo, topicKey } from "./harness.mjs";

const SECONDS = Number(process.env.SOAK_SECONDS || 20);
const SEED = Number(process.env.SOAK_SEED || Date.now() % 1e9);
const TOPICS = ["soak-a", "soak-b"];

/** mulberry32: a small seeded generator, so that a failing run can be replayed. */
function generator(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The per-topic positions of a cursor token (docs/protocol.md, "The cursor token"). */
function positions(token) {
  const bytes = Buffer.from(token, "base64url");
  let i = 1 + 8;
  const varint = () => {
    let v = 0n, shift = 0n;
    for (;;) {
      const b = bytes[i++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  };
  const count = Number(varint());
  const map = new Map();
  for (let n = 0; n < count; n++) {
    const key = bytes.readBigUInt64LE(i);
    i += 8;
    map.set(key, varint());
  }
  return map;
}

/** Publishes without pause, one event at a time, each to a random topic and type. */
function publisher(base, random) {
  const log = []; // {topic, type, data, seq, started}
  let stopped = false;
  let started = 0;
  const counts = Object.fromEntries(TOPICS.map((t) => [t, 0]));
  const done = (async () => {
    while (!stopped) {
      const topic = TOPICS[Math.floor(random() * TOPICS.length)];
      const r = random();
      const type = r < 0.4 ? null : r < 0.7 ? "x" : "y";
      const data = `${topic}#${++counts[topic]}`;
      const entry = { topic, type, data, started: started++ };
      const body = type ? { topic, data, event: type } : { topic, data };
      const response = await fetch(base + "/publish", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      });
      assert.equal(response.status, 201);
      entry.seq = positions((await response.json()).id).get(topicKey(topic));
      log.push(entry);
      // About a hundred events a second: a tab away for a moment comes back within retention,
      // one away for longer meets a gap.
      await new Promise((r) => setTimeout(r, random() * 20));
    }
  })();
  return { log, started: () => started, stop: async () => { stopped = true; await done; } };
  // (A failure of the publisher surfaces when the test awaits stop().)
}

/** Opens a tab on a blank page of the demo with a feed recording everything it is told. */
async function openTab(context, base, options) {
  const page = await context.newPage();
  await page.goto(base + "/stats");
  await page.evaluate(async (options) => {
    const { connect } = await import("/tidings.js");
    window.log = { events: [], gaps: [], history: [] };
    const feed = connect(options);
    const t0 = performance.timeOrigin;
    const note = (what) => window.log.history.push(`${Math.round(t0 + performance.now()) % 100000} ${what}`);
    feed.addEventListener("event", (e) => window.log.events.push(e.detail));
    feed.addEventListener("gap", (e) => { window.log.gaps.push(e.detail); note("gap " + e.detail.topics); });
    feed.addEventListener("state", (e) => note(`state ${e.detail.state}/${e.detail.transport}/${e.detail.leader ? "leader" : "follower"} after ${window.log.events.at(-1)?.data}`));
    window.addEventListener("pagehide", (e) => note(`pagehide ${e.persisted} after ${window.log.events.at(-1)?.data}`));
    window.addEventListener("pageshow", (e) => note(`pageshow ${e.persisted}`));
    window.addEventListener("pageshow", (e) => { window.restored = e.persisted; });
    window.feed = feed;
  }, options);
  await page.waitForFunction(() => window.feed.state === "open", undefined, { timeout: 20000 });
  return page;
}

/**
 * Checks what one tab received against what was published: per topic, no event twice, events
 * in log order, and every event it asked for (its topics, its types or untyped) published from
 * `from` on and before `until` (a data string, or everything when null) present, or covered by a
 * gap notice on its topic.
 */
function verify(tab, received, published, untilAll) {
  const gaps = received.gaps.map((g) => ({ topics: g.topics, at: positions(g.id) }));
  for (const topic of tab.options.topics) {
    const wanted = published.filter((e) => e.topic === topic && (e.type === null || tab.options.eventTypes.includes(e.type)));
    const index = new Map(wanted.map((e, i) => [e.data, i]));
    const got = received.events.filter((e) => e.topic === topic).map((e) => e.data);
    const where = `${tab.name} ${JSON.stringify(tab.options)} on ${topic} (seed ${SEED})`;
    assert.equal(new Set(got).size, got.length, `${where}: an event twice: ${got}`);
    for (const data of got) assert.ok(index.has(data), `${where}: ${data} was not asked for`);
    const order = got.map((d) => index.get(d));
    assert.deepEqual(order, [...order].sort((a, b) => a - b), `${where}: out of log order: ${got}`);
    // Complete from its start to the end (or, for a tab closed along the way, to the last event
    // it received: what was still in flight when it closed is not owed).
    const last = untilAll ? wanted.length - 1 : order.length ? order[order.length - 1] : -1;
    const missing = wanted
      .filter((e, i) => i <= last && e.started >= tab.from && !got.includes(e.data))
      .filter((e) => !gaps.some((g) => g.topics.includes(topic) && (g.at.get(topicKey(topic)) ?? 0n) >= e.seq));
    if (missing.length) console.log(where, "missing", missing.map((e) => `${e.data}/${e.type}/${e.seq}/${e.started}`).join(" "), "from", tab.from, "history", received.history, "got", got.join(" "), "gaps", JSON.stringify(received.gaps));
    assert.deepEqual(missing.map((e) => e.data), [], `${where}: lost without a gap notice`);
  }
}

test(`tab sharing soak: tabs join, lead, leave for the back/forward cache, close and return (${SECONDS} s, seed ${SEED})`, async () => {
  console.log(`soak seed ${SEED} (SOAK_SEED=${SEED} replays it)`);
  const random = generator(SEED);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    ignoreDefaultArgs: ["--disable-back-forward-cache"],
  });
  // A short retention, so that a tab away long enough meets a gap, which must then be announced.
  const retained = await startDemo(0, "memory", {}, ["--retain", "100", "--quiet"]);
  const context = await browser.newContext();
  const pub = publisher(retained.url, random);
  const open = [];
  let made = 0;
  const counts = { joins: 0, closes: 0, away: 0, restored: 0, reloaded: 0, gaps: 0 };
  // Four kinds of tab (two topic sets, two type sets), each kind sharing one connection: with
  // more, the browser's six HTTP/1.1 connections per origin would run out and hold back pages.
  const KINDS = [
    { topics: ["soak-a"], eventTypes: [] },
    { topics: ["soak-a", "soak-b"], eventTypes: [] },
    { topics: ["soak-a"], eventTypes: ["y"] },
    { topics: ["soak-a", "soak-b"], eventTypes: ["x", "y"] },
  ];
  const pickOptions = () => KINDS[Math.floor(random() * KINDS.length)];
  const join = async () => {
    const options = pickOptions();
    const tab = { name: `tab ${++made}`, options };
    tab.page = await openTab(context, retained.url, options);
    tab.from = pub.started(); // owed everything whose publish starts from now on
    open.push(tab);
    counts.joins++;
  };
  try {
    for (let i = 0; i < 3; i++) await join();
    const deadline = Date.now() + SECONDS * 1000;
    while (Date.now() < deadline) {
      const r = random();
      if (r < 0.3 || open.length < 2) {
        await join();
      } else if (r < 0.55 && open.length > 2) {
        const tab = open.splice(Math.floor(random() * open.length), 1)[0];
        try {
          verify(tab, await tab.page.evaluate(() => window.log), pub.log, false);
        } catch (e) {
          for (const other of open) {
            const l = await other.page.evaluate(() => window.log);
            console.log("OTHER", other.name, JSON.stringify(other.options), l.history.join(" | "), "got", l.events.filter((e) => e.topic === "soak-a").map((e) => e.data.split("#")[1]).join(" "));
          }
          throw e;
        }
        await tab.page.close();
        counts.closes++;
      } else {
        // Away to another page (into the back/forward cache) for a moment, then back.
        const tab = open[Math.floor(random() * open.length)];
        await tab.page.goto(retained.url + "/stats?away");
        counts.away++;
        const away = 100 + random() * 2500;
        // The other tabs go on (and one takes over the lead) meanwhile: time is the scenario here.
        await new Promise((r) => setTimeout(r, away));
        await tab.page.goBack({ waitUntil: "commit" });
        await tab.page.waitForFunction(() => document.readyState === "complete" && "restored" in window || !window.feed, undefined, { timeout: 20000 });
        if (await tab.page.evaluate(() => window.restored === true)) {
          counts.restored++;
        } else {
          // Not restored from the cache (the browser may refuse): a new page, a new join.
          counts.reloaded++;
          open.splice(open.indexOf(tab), 1);
          await tab.page.close();
          await join();
        }
      }
      // Actions come at random moments, not in lockstep with the publisher.
      await new Promise((r) => setTimeout(r, random() * 300));
    }
    await pub.stop();
    // One last untyped event per topic, which every tab asked for: once it is in, all is.
    const finals = [];
    for (const topic of TOPICS) {
      const data = `${topic}#final`;
      const response = await fetch(retained.url + "/publish", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ topic, data }),
      });
      pub.log.push({ topic, type: null, data, started: Infinity, seq: positions((await response.json()).id).get(topicKey(topic)) });
      finals.push(data);
    }
    for (const tab of open) {
      const want = finals.filter((d) => tab.options.topics.some((t) => d.startsWith(t + "#")));
      await tab.page.waitForFunction((want) => want.every((d) => window.log.events.some((e) => e.data === d)), want, { timeout: 30000 });
      const received = await tab.page.evaluate(() => window.log);
      counts.gaps += received.gaps.length;
      verify(tab, received, pub.log, true);
    }
    console.log(`soak: ${pub.log.length} events, ${JSON.stringify(counts)}`);
    assert.ok(counts.restored > 0, "some tab came back from the back/forward cache");
  } finally {
    await pub.stop().catch(() => {});
    await context.close();
    await browser.close();
    await stopDemo(retained);
  }
});
