// HTTP/2 in a real browser: the demo served over HTTPS (a self-signed certificate made here with
// openssl) speaks h2 by ALPN, so one page holds 10 EventSources to one origin at once. Over
// HTTP/1.1 a browser opens at most 6 connections per origin, and a seventh stream would wait
// for one of them to close: here every one of the 10 receives its events.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { launchBrowser, startDemo, stopDemo, tempDir } from "./harness.mjs";

let browser;
let demo;

before(async () => {
  const dir = tempDir("tidings-h2-");
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", key, "-out", cert,
  ], { stdio: "ignore" });
  demo = await startDemo(0, undefined, {}, ["--tls-cert", cert, "--tls-key", key]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  if (demo) await stopDemo(demo);
});

test("ten EventSources to one origin over h2 all receive their events", async () => {
  assert.match(demo.url, /^https:/);
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(demo.url + "/");
  const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  assert.equal(protocol, "h2");
  // Ten streams, each on its own topic, opened at once; then one event to each topic.
  await page.evaluate(() => {
    window.got = {};
    window.opened = 0;
    for (let i = 0; i < 10; i++) {
      const source = new EventSource(`/events?topic=h2-${i}`);
      source.onopen = () => { window.opened++; };
      source.onmessage = (event) => { (window.got[i] ||= []).push(event.data); };
    }
  });
  await page.waitForFunction(() => window.opened === 10, null, { timeout: 20000 });
  for (let i = 0; i < 10; i++) {
    const answer = await page.evaluate(async (i) => {
      const response = await fetch("/publish", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ topic: `h2-${i}`, data: `for stream ${i}` }),
      });
      return response.status;
    }, i);
    assert.equal(answer, 201);
  }
  await page.waitForFunction(() => Object.keys(window.got).length === 10, null, { timeout: 20000 });
  const got = await page.evaluate(() => window.got);
  for (let i = 0; i < 10; i++) assert.deepEqual(got[i], [`for stream ${i}`]);
  await context.close();
});
