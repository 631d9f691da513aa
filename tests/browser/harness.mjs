// Starts the real sse_demo server as a child process and a headless Chromium (Debian's, driven
// by playwright-core). Nothing here is a stub: the page, the client and the server are the ones
// `cargo run --example sse_demo` serves.

import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const demoBinary = process.env.TIDINGS_DEMO_BIN || path.join(root, "target/debug/examples/sse_demo");

const made = [];
process.on("exit", () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A new directory under the system's temporary directory, removed when this test process exits. */
export function tempDir(prefix) {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

/** A fresh SQLite file for one test's demo server. */
export function freshStore() {
  const dir = tempDir("tidings-browser-");
  return "sqlite:" + path.join(dir, "events.db");
}

/** Starts the demo on `port` (0: any free port) with `store` (and `args`). Resolves once it listens. */
export function startDemo(port = 0, store = freshStore(), env = {}, args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(demoBinary, ["--store", store, ...args], {
      env: { ...process.env, ...env, PORT: String(port) },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const timer = setTimeout(() => reject(new Error("demo did not start: " + out)), 20000);
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/(https?):\/\/localhost:(\d+)\//);
      if (m && !child.port) {
        child.port = Number(m[2]);
        // Over HTTPS, the name the certificate is for.
        child.url = m[1] === "https" ? `https://localhost:${child.port}` : `http://127.0.0.1:${child.port}`;
        child.store = store;
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.stderr.on("data", (chunk) => { out += chunk; });
    child.output = () => out;
    child.on("exit", (code) => { if (!child.port) reject(new Error(`demo exited ${code}: ${out}`)); });
  });
}

export async function stopDemo(child, signal = "SIGKILL") {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill(signal);
  await exited;
}

export const hubBinary = process.env.TIDINGS_HUB_BIN || path.join(root, "target/debug/tidings-hub");

/**
 * Starts the tidings-hub binary with `args` (given as separate words; `--addr 127.0.0.1:0` and
 * `--store memory` unless `args` name their own) and `env`. Resolves once it prints its banner,
 * with `port`, `url` (its origin) and `hubUrl` (`/.well-known/mercure`) set on the child.
 */
export function startHub(args = [], env = {}) {
  const argv = [...args];
  if (!argv.includes("--store")) argv.unshift("--store", "memory");
  if (!argv.includes("--addr")) argv.unshift("--addr", "127.0.0.1:0");
  return new Promise((resolve, reject) => {
    const child = spawn(hubBinary, argv, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const timer = setTimeout(() => { child.kill("SIGKILL"); reject(new Error("hub did not start: " + out)); }, 20000);
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/Mercure hub at (http:\/\/[^/\s]+:(\d+))(\/\.well-known\/mercure) \(store: /);
      if (m && !child.port) {
        Object.assign(child, { port: Number(m[2]), url: m[1], hubUrl: m[1] + m[3] });
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.stderr.on("data", (chunk) => { out += chunk; });
    child.output = () => out;
    child.on("error", (err) => { clearTimeout(timer); reject(err); });
    child.on("exit", (code, signal) => { if (!child.port) reject(new Error(`hub exited ${code ?? signal}: ${out}`)); });
  });
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

export async function publish(base, data, topic = "demo") {
  const response = await fetch(base + "/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic, data }),
  });
  if (response.status !== 201) throw new Error("publish failed: " + response.status);
  return (await response.json()).id;
}

export async function stats(base) {
  return (await fetch(base + "/stats")).json();
}

/** The page's list, oldest first: event data, or "GAP" for a gap notice. */
export async function listed(page) {
  return page.$$eval("#events li", (lis) =>
    lis.map((li) => (li.classList.contains("gap") ? "GAP" : li.firstChild.textContent)).reverse());
}

export async function waitForText(page, selector, text, timeout = 20000) {
  await page.waitForFunction(
    ([s, t]) => document.querySelector(s)?.textContent.includes(t),
    [selector, text],
    { timeout },
  );
}

/** Waits until the page lists every one of `items`. */
export async function waitForItems(page, items, timeout = 20000) {
  await page.waitForFunction(
    (wanted) => {
      const texts = [...document.querySelectorAll("#events li")].map((li) => li.firstChild.textContent);
      return wanted.every((w) => texts.includes(w));
    },
    items,
    { timeout },
  );
}

/** The k of every "Server says hi! (event #k)" listed, in page order. */
export function tickNumbers(list) {
  return list.map((t) => t.match(/event #(\d+)\)/)).filter(Boolean).map((m) => Number(m[1]));
}

/**
 * A proxy that passes everything to `target` but holds back the body of streaming responses
 * until they end, as some corporate proxies do with text/event-stream.
 */
export async function bufferingProxy(targetPort) {
  const http = await import("node:http");
  const server = http.createServer((req, res) => {
    const upstream = http.request(
      { host: "127.0.0.1", port: targetPort, path: req.url, method: req.method, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        if (server.buffering && (up.headers["content-type"] || "").startsWith("text/event-stream")) {
          res.flushHeaders();
          const held = [];
          up.on("data", (chunk) => held.push(chunk));
          up.on("end", () => res.end(Buffer.concat(held)));
        } else {
          up.pipe(res);
        }
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  // Upgrades (WebSocket) are passed through as bytes, or refused with a 502 as a proxy not
  // configured for them answers.
  server.refuseUpgrades = false;
  server.upgradesRefused = 0;
  server.on("upgrade", async (req, socket, head) => {
    if (server.refuseUpgrades) {
      server.upgradesRefused += 1;
      socket.end("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      return;
    }
    const net = await import("node:net");
    const upstream = net.connect(targetPort, "127.0.0.1", () => {
      let lines = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(lines + "\r\n");
      if (head && head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on("error", () => socket.destroy());
    socket.on("error", () => upstream.destroy());
  });
  server.buffering = true;
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  server.url = `http://127.0.0.1:${server.address().port}`;
  return server;
}

export const pushServiceBinary = process.env.TIDINGS_PUSH_SERVICE_BIN || path.join(root, "target/debug/examples/push_service");

/**
 * Starts the local Web Push service (examples/push_service.rs: TLS, VAPID verified, payloads
 * decrypted). Resolves with {child, origin, hostPort, control, cert}.
 */
export function startPushService() {
  const cert = path.join(tempDir("tidings-push-"), "ca.pem");
  return new Promise((resolve, reject) => {
    const child = spawn(pushServiceBinary, ["--cert", cert], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    const timer = setTimeout(() => reject(new Error("push service did not start: " + out)), 20000);
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/push service (https:\/\/(127\.0\.0\.1:\d+)) control (http:\/\/\S+)/);
      if (m && !child.origin) {
        clearTimeout(timer);
        Object.assign(child, { origin: m[1], hostPort: m[2], control: m[3], cert });
        resolve(child);
      }
    });
    child.on("exit", (code) => { if (!child.origin) reject(new Error(`push service exited ${code}: ${out}`)); });
  });
}

/** Registers a new subscriber of the local push `service` with the demo; resolves with its id. */
export async function registerAtDemo(service, demo, topics) {
  const created = await (await fetch(service.control + "/subscriptions", { method: "POST" })).json();
  const response = await fetch(demo.url + "/push/subscriptions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...created.subscription, topics }),
  });
  if (response.status !== 201) throw new Error("registration refused: " + response.status + " " + await response.text());
  return created.id;
}

/** The messages (decrypted) the push `service` accepted for `id`, once there are `n`. */
export async function pushedMessages(service, id, n) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const messages = await (await fetch(`${service.control}/messages/${id}`)).json();
    if (messages.length >= n) return messages;
    if (Date.now() > deadline) throw new Error(`only ${messages.length} of ${n} pushes arrived`);
    // The push service has no way to wait for a message; it is asked again shortly.
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** FNV-1a 64 of a topic's UTF-8 bytes: the key a cursor keeps the topic's position under. */
export function topicKey(topic) {
  let hash = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(topic, "utf8")) {
    hash ^= BigInt(byte);
    hash = (hash * 0x100000001b3n) & ((1n << 64n) - 1n);
  }
  return hash;
}

/**
 * Opens the demo's page at `origin` in `context` with notifications allowed, every
 * `tidings.push` message its service worker posts recorded in `window.__pushes`, and the
 * DevTools protocol's service-worker domain on. Resolves with {page, cdp, scope, deliver}:
 * `deliver(payload)` hands a push to the page's worker as its push service would.
 */
export async function workerPage(context, origin) {
  await context.grantPermissions(["notifications"], { origin });
  const page = await context.newPage();
  await page.addInitScript(() => {
    window.__pushes = [];
    navigator.serviceWorker?.addEventListener("message", (e) => {
      if (e.data?.type === "tidings.push") window.__pushes.push(e.data.message);
    });
  });
  const cdp = await context.newCDPSession(page);
  const registrations = [];
  cdp.on("ServiceWorker.workerRegistrationUpdated", (e) => registrations.push(...e.registrations));
  await cdp.send("ServiceWorker.enable");
  await page.goto(origin + "/");
  const scope = await page.evaluate(async () => (await navigator.serviceWorker.ready).scope);
  const registration = registrations.find((r) => r.scopeURL === scope && !r.isDeleted);
  if (!registration) throw new Error("the page did not register /tidings-sw.js");
  const deliver = (payload) =>
    cdp.send("ServiceWorker.deliverPushMessage", { origin, registrationId: registration.registrationId, data: payload });
  return { page, cdp, scope, deliver };
}
