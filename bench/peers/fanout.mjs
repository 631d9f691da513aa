// Run with: node fanout.mjs   (after `npm install` here and
// `cargo build --release --example sse_demo` at the repository root)
//
// One harness, two servers: N clients subscribe to one topic, then M events are published one
// after another with POST /publish; the clock runs from the first publish until every client
// has every event. tidings: the sse_demo binary (memory store), clients read SSE over HTTP/1.1.
// Socket.IO 4.8: a server with the same POST /publish, clients use socket.io-client over
// WebSocket. Servers and clients run in separate processes (one core each, roughly).

import { spawn, fork } from "node:child_process";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const N = Number(process.env.CLIENTS || 500);
const M = Number(process.env.EVENTS || 1000);
const BYTES = Number(process.env.BYTES || 256);

if (process.argv[2] === "clients") {
  // Child: open N clients of the given kind, report when all are ready and when all are done.
  const [kind, base] = [process.argv[3], process.argv[4]];
  let ready = 0, done = 0;
  const finish = () => { if (++done === N) process.send({ done: true }); };
  for (let i = 0; i < N; i++) {
    let count = 0;
    if (kind === "tidings") {
      http.get(base + "/events?topic=bench", (res) => {
        ready++;
        if (ready === N) process.send({ ready: true });
        let tail = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => {
          const text = tail + chunk;
          const hits = text.split("\nid: ").length - 1;
          tail = text.slice(-4);
          count += hits;
          // The stream's opening event carries an id too.
          if (count === M + 1) finish();
        });
      });
    } else {
      const { io } = await import("socket.io-client");
      const socket = io(base, { transports: ["websocket"], query: { topic: "bench" }, forceNew: true });
      socket.on("connect", () => { ready++; if (ready === N) process.send({ ready: true }); });
      socket.on("event", () => { if (++count === M) finish(); });
    }
  }
} else {
  const payload = "x".repeat(BYTES);
  const post = (base) => new Promise((resolve, reject) => {
    const body = JSON.stringify({ topic: "bench", data: payload });
    const req = http.request(base + "/publish", { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
      res.resume();
      res.on("end", resolve);
    });
    req.on("error", reject);
    req.end(body);
  });
  const startServer = (cmd, args, env) => new Promise((resolve) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
    child.stdout.on("data", (d) => {
      const m = String(d).match(/http:\/\/localhost:(\d+)\//);
      if (m) resolve({ child, base: `http://127.0.0.1:${m[1]}` });
    });
  });
  const run = async (name, kind, server) => {
    const { child, base } = await server;
    const clients = fork(fileURLToPath(import.meta.url), ["clients", kind, base]);
    await new Promise((r) => clients.on("message", (m) => m.ready && r()));
    const started = performance.now();
    const done = new Promise((r) => clients.on("message", (m) => m.done && r()));
    for (let i = 0; i < M; i++) await post(base);
    await done;
    const seconds = (performance.now() - started) / 1000;
    clients.kill();
    child.kill();
    console.log(`| ${name} | ${N} × ${M} × ${BYTES} B | ${Math.round((N * M) / seconds)} deliveries/s | ${seconds.toFixed(2)} s |`);
  };
  console.log("| server | clients × events × payload | delivered | time |\n|---|---|---|---|");
  const demo = path.join(here, "../../target/release/examples/sse_demo");
  await run("tidings (SSE, memory store)", "tidings", startServer(demo, ["--store", "memory"], { PORT: "0" }));
  await run("Socket.IO 4.8 (WebSocket)", "socketio", startServer(process.execPath, [path.join(here, "socketio-server.mjs")], { PORT: "0" }));
}
