// Web Push end to end: the demo server pushes to a real (local) push service, which verifies
// VAPID and decrypts; the decrypted payload is handed to the page's service worker through the
// DevTools protocol (Chromium's own push service is not reachable here), and the worker shows
// the notification once per id, fetching events too large for a push from long-polling.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startDemo, stopDemo, launchBrowser, publish, startPushService, registerAtDemo, pushedMessages, workerPage } from "./harness.mjs";

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

test("the service worker shows each pushed event once, and fetches a truncated one", async () => {
  const demo = await startDemo(0, undefined, {
    TIDINGS_PUSH_ALLOW_HOSTS: service.hostPort,
    TIDINGS_PUSH_CA_FILE: service.cert,
  });
  const context = await browser.newContext();
  try {
    const { page, scope, deliver } = await workerPage(context, demo.url);
    assert.equal(scope, demo.url + "/");

    // The button asks for permission and subscribes; in this sandbox Chromium cannot reach
    // its push service, so it either succeeds or says why, and never fails silently.
    await page.click("#notify");
    await page.waitForFunction(() => /Notifications (on|unavailable)/.test(document.getElementById("notify-status").textContent));

    const id = await registerAtDemo(service, demo, ["demo"]);
    // The dispatcher opens its subscription at once; publish until the first push arrives,
    // then check that everything after it arrives exactly.
    const data = "Pushed ✓ 🦀\nsecond line";
    await publish(demo.url, data);
    const [first] = await pushedMessages(service, id, 1);
    const message = JSON.parse(first.payload);
    assert.equal(message.data, data);
    assert.equal(first.audience, service.origin);

    await deliver(first.payload);
    await page.waitForFunction(() => window.__pushes.length === 1);
    const notifications = await page.evaluate(async () =>
      (await (await navigator.serviceWorker.ready).getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag })));
    assert.deepEqual(notifications, [{ title: "demo", body: data, tag: message.id }]);

    // The same push again (as after a crash between the push service's 201 and the saved
    // cursor) is dropped; a large event arrives truncated and is fetched whole.
    await deliver(first.payload);
    const big = "x".repeat(5000) + " the end";
    await publish(demo.url, big);
    const pushes = await pushedMessages(service, id, 2);
    const truncated = JSON.parse(pushes[1].payload);
    assert.equal(truncated.truncated, true);
    assert.equal(truncated.data, undefined);
    await deliver(pushes[1].payload);
    await page.waitForFunction(() => window.__pushes.length >= 2);
    const shown = await page.evaluate(() => window.__pushes);
    assert.equal(shown.length, 2, "the repeated id was shown once");
    assert.equal(shown[0].id, message.id);
    assert.equal(shown[1].id, truncated.id);
    assert.equal(shown[1].fetched, true);
    assert.equal(shown[1].data, big);
  } finally {
    await context.close();
    await stopDemo(demo);
  }
});
