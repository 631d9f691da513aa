// The WebSocket protocol (tidings.v1, docs/protocol.md) spoken by a client that is not ours:
// Node's `ws` library, against the real demo server. Everything goes through the documented
// messages only: subscribe with a cursor, receive, change topics, publish, ask, be refused.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startDemo, stopDemo, publish } from "./harness.mjs";

let demo;
before(async () => { demo = await startDemo(0); });
after(async () => { await stopDemo(demo); });

/** A socket to the demo's /ws with `query`, and a reader of its messages in order. */
function open(query, protocols = ["tidings.v1"]) {
  const socket = new WebSocket(`ws://127.0.0.1:${demo.port}/ws?${query}`, protocols);
  const inbox = [];
  const waiting = [];
  let closed = null;
  const settle = () => {
    while (waiting.length && (inbox.length || closed)) {
      const w = waiting.shift();
      if (inbox.length) w.resolve(inbox.shift());
      else w.resolve({ type: "closed", ...closed });
    }
  };
  socket.on("message", (data, binary) => {
    assert.equal(binary, false, "the server sends text messages only");
    inbox.push(JSON.parse(data.toString()));
    settle();
  });
  socket.on("close", (code, reason) => { closed = { code, reason: reason.toString() }; settle(); });
  socket.on("error", () => {});
  const next = (ms = 10000) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no message within " + ms + " ms")), ms);
    waiting.push({ resolve: (m) => { clearTimeout(timer); resolve(m); } });
    settle();
  });
  const send = (message) => socket.send(JSON.stringify(message));
  return { socket, next, send, opened: new Promise((r, j) => { socket.once("open", r); socket.once("error", j); }) };
}

/** Reads messages until one has `ref`; returns it and the others read meanwhile. */
async function answerTo(client, ref) {
  const meanwhile = [];
  for (;;) {
    const m = await client.next();
    if (m.ref === ref) return { answer: m, meanwhile };
    meanwhile.push(m);
  }
}

test("a foreign client subscribes with a cursor, changes topics and publishes, exactly", async () => {
  const ids = [];
  for (const data of ["a1", "a2", "a3"]) ids.push(await publish(demo.url, data, "alpha"));
  // Resume after a1: a2 and a3 are replayed, in order, each with its id.
  const client = open("topic=alpha&cursor=" + encodeURIComponent(ids[0]));
  await client.opened;
  assert.equal(client.socket.protocol, "tidings.v1");
  const subscribed = await client.next();
  assert.equal(subscribed.type, "subscribed");
  assert.deepEqual(subscribed.topics, ["alpha"]);
  assert.equal(subscribed.id, ids[0], "the socket starts at the cursor it was given");
  for (const [i, data] of [[1, "a2"], [2, "a3"]]) {
    const e = await client.next();
    assert.deepEqual([e.type, e.topic, e.data, e.id, e.event], ["event", "alpha", data, ids[i], null]);
  }

  // Add a topic on the live socket: from the end of its log (no cursor for it).
  await publish(demo.url, "b0 (before)", "beta");
  client.send({ type: "subscribe", topics: ["beta"], ref: "add-beta" });
  const { answer: added } = await answerTo(client, "add-beta");
  assert.equal(added.type, "subscribed");
  assert.deepEqual(added.topics, ["alpha", "beta"]);
  const b1 = await publish(demo.url, "b1", "beta");
  const e = await client.next();
  assert.deepEqual([e.topic, e.data], ["beta", "b1"]);
  assert.notEqual(e.id, b1, "on a socket of two topics, the id is the socket's own cursor");

  // Publish through the socket: an ack with the event's cursor, then the event itself.
  client.send({ type: "publish", topic: "beta", data: "from node", ref: 7 });
  const { answer: ack, meanwhile } = await answerTo(client, 7);
  assert.equal(ack.type, "ack");
  const echoed = meanwhile.find((m) => m.type === "event") || await client.next();
  assert.deepEqual([echoed.topic, echoed.data], ["beta", "from node"]);

  // Remove a topic: its events stop, the other's go on.
  client.send({ type: "unsubscribe", topics: ["alpha"], ref: 8 });
  const { answer: removed } = await answerTo(client, 8);
  assert.deepEqual(removed.topics, ["beta"]);
  await publish(demo.url, "a4 (not for us)", "alpha");
  await publish(demo.url, "b2", "beta");
  const b2 = await client.next();
  assert.deepEqual([b2.topic, b2.data], ["beta", "b2"]);

  // The last id resumes exactly on a new socket.
  await publish(demo.url, "b3", "beta");
  const b3 = await client.next();
  client.socket.close(1000);
  await publish(demo.url, "b4", "beta");
  const again = open("topic=beta&cursor=" + encodeURIComponent(b3.id));
  assert.equal((await again.next()).type, "subscribed");
  const b4 = await again.next();
  assert.deepEqual([b4.topic, b4.data], ["beta", "b4"]);

  // The application's handler answers messages; refusals come back as errors with codes.
  again.send({ type: "message", data: { ask: "who" }, ref: 1 });
  const { answer: reply } = await answerTo(again, 1);
  assert.equal(reply.type, "reply");
  assert.ok(reply.data.subscribers >= 1);
  again.send({ type: "publish", topic: "gamma", data: "x", ref: 2 });
  const { answer: forbidden } = await answerTo(again, 2);
  assert.deepEqual([forbidden.type, forbidden.code], ["error", 403]);
  again.send({ type: "jump", ref: 3 });
  const { answer: unknown } = await answerTo(again, 3);
  assert.deepEqual([unknown.type, unknown.code], ["error", 400]);
  assert.match(unknown.message, /unknown message type/);
  again.socket.send("not JSON at all");
  const malformed = await again.next();
  assert.deepEqual([malformed.type, malformed.code], ["error", 400]);
  // Still delivering after all that.
  await publish(demo.url, "b5", "beta");
  assert.equal((await again.next()).data, "b5");
  again.socket.close(1000);
});

test("refusals reach a foreign client as close codes with reasons", async () => {
  // A private topic without a token: the authorization hook's 401, as 4401.
  const privateTopic = open("topic=private/bob");
  const error = await privateTopic.next();
  assert.deepEqual([error.type, error.code], ["error", 401]);
  const closed = await privateTopic.next();
  assert.equal(closed.type, "closed");
  assert.equal(closed.code, 4401);
  assert.ok(closed.reason.length > 0, "a reason");

  // A message over the limit: 1009 and a reason.
  const big = open("topic=demo");
  assert.equal((await big.next()).type, "subscribed");
  big.socket.send(JSON.stringify({ type: "message", data: "x".repeat(70 * 1024) }));
  let m;
  do m = await big.next(); while (m.type !== "closed");
  assert.equal(m.code, 1009);
  assert.match(m.reason, /limit/);

  // A binary message: 1003.
  const binary = open("topic=demo");
  assert.equal((await binary.next()).type, "subscribed");
  binary.socket.send(Buffer.from([1, 2, 3]));
  do m = await binary.next(); while (m.type !== "closed");
  assert.equal(m.code, 1003);

  // Without the subprotocol: refused before the upgrade, with a 400 naming it.
  const plain = new WebSocket(`ws://127.0.0.1:${demo.port}/ws`);
  const [status, body] = await new Promise((resolve) => {
    plain.on("unexpected-response", (req, res) => {
      let text = "";
      res.on("data", (chunk) => { text += chunk; });
      res.on("end", () => resolve([res.statusCode, text]));
    });
    plain.on("open", () => resolve(["opened", ""]));
    plain.on("error", () => {});
  });
  assert.match(body, /tidings\.v1/);
  assert.equal(status, 400, `without tidings.v1: ${status}`);
});
