// tidings browser client: one small API over Server-Sent Events, with long-polling as a
// fallback, exact resume from a cursor, and one shared connection for all tabs of an origin.
//
//   import { connect } from "/tidings.js";
//   const feed = connect({ topics: ["demo"], eventTypes: ["my-custom-event"] });
//   feed.addEventListener("event", (e) => console.log(e.detail.topic, e.detail.data));
//   feed.addEventListener("gap", (e) => console.log("missed some of", e.detail.topics));
//   feed.addEventListener("state", (e) => console.log(e.detail.state, e.detail.transport));
//
// Events: "event" {id, topic, type, data}; "gap" {id, topics}; "state" {state, transport,
// leader} where state is "connecting", "open" or "unavailable"; "error" {status, message}
// when the server refuses the subscription (400/401/403), after which the client stops.
//
// Reserved event types: an EventSource dispatches its connection's own events as `open` and
// `error`, in the same namespace as the events the server sends, and tidings sends its own as
// `tidings.open` and `tidings.gap` (the `tidings.` prefix is reserved). connect() throws when
// `eventTypes` names one of them; the server refuses to publish them. An app event under such
// a name that a server sends all the same is delivered as an "event" like any other, and never
// taken for the connection's state: only a plain Event is the connection speaking, a
// MessageEvent is always something the server sent.
//
// No build step, no dependency. See docs/client.md.

const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;
const MASK = (1n << 64n) - 1n;

/** FNV-1a 64 of a string's UTF-8 bytes: the key a cursor uses for a topic. */
export function topicKey(topic) {
  let hash = FNV_OFFSET;
  for (const byte of new TextEncoder().encode(topic)) {
    hash ^= BigInt(byte);
    hash = (hash * FNV_PRIME) & MASK;
  }
  return hash;
}

/** Decodes a cursor token: {epoch, positions: Map(key -> seq)}, or null if it is not one. */
export function decodeCursor(token) {
  try {
    const b64 = token.replace(/-/g, "+").replace(/_/g, "/");
    const raw = atob(b64 + "===".slice((b64.length + 3) % 4));
    const bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0));
    let i = 0;
    const u64 = () => {
      let v = 0n;
      for (let k = 0; k < 8; k++) v |= BigInt(bytes[i + k]) << BigInt(8 * k);
      i += 8;
      return v;
    };
    const varint = () => {
      let v = 0n, shift = 0n;
      for (;;) {
        const b = bytes[i++];
        if (b === undefined) throw new Error("truncated");
        v |= BigInt(b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
        shift += 7n;
      }
    };
    if (bytes[i++] !== 1) return null;
    const epoch = u64();
    const count = Number(varint());
    const positions = new Map();
    for (let n = 0; n < count; n++) positions.set(u64(), varint());
    return { epoch, positions };
  } catch {
    return null;
  }
}

/**
 * Why `type` cannot be one of the app's event types, or null when it can: `open` and `error`
 * are the names EventSource dispatches itself, `tidings.*` are tidings' own.
 */
function reservedType(type) {
  if (type === "open" || type === "error") {
    return `tidings: event type "${type}" is dispatched by EventSource itself; publish under another name`;
  }
  if (typeof type === "string" && type.startsWith("tidings.")) {
    return `tidings: event type "${type}" is reserved for tidings' own events; publish under another name`;
  }
  return null;
}

/** Whether an EventSource event came from the server (a MessageEvent), not from the connection. */
const fromServer = (e) => e instanceof MessageEvent;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const jitter = (ms) => ms / 2 + Math.random() * ms;

/**
 * Opens a subscription. Options:
 * - topics: the topics (required)
 * - sse: the SSE endpoint (default "/events"); poll: the long-poll endpoint (default "/poll")
 * - eventTypes: the event types the app publishes (EventSource only hands over named events
 *   it listens for; "message" is always included). "open", "error" and "tidings.*" are
 *   refused: EventSource and tidings dispatch those names themselves
 * - transport: "auto" (default: SSE, falling back to long-polling), "sse" or "poll"
 * - share: share one connection between the tabs of this origin (default true)
 * - storageKey: where the cursor is kept in sessionStorage (default from the topics)
 * - openTimeout: ms to wait for an opened SSE stream to deliver its first bytes before
 *   deciding a proxy buffers it (default 5000); sseFailures: failed SSE opens before
 *   falling back (default 2); pollTimeout: seconds a poll may wait (default 25);
 *   upgradeAfter: ms on long-polling before the stream is tried again (default 300000)
 */
export function connect(options) {
  return new Feed(options);
}

export class Feed extends EventTarget {
  constructor(options) {
    super();
    const topics = [...new Set(options.topics || [])];
    if (!topics.length) throw new Error("tidings: connect() needs at least one topic");
    for (const type of options.eventTypes || []) {
      const reason = reservedType(type);
      if (reason) throw new Error(reason);
    }
    this.options = {
      sse: "/events", poll: "/poll", eventTypes: [], transport: "auto", share: true,
      openTimeout: 5000, sseFailures: 2, pollTimeout: 25, upgradeAfter: 300000, ...options, topics,
    };
    this.topics = topics;
    this.keys = new Map(topics.map((t) => [topicKey(t), t]));
    this.storageKey = this.options.storageKey || "tidings:" + this.options.sse + ":" + topics.join("\u0000");
    this.cursor = this._load();
    this.positions = null; // per-topic sequence numbers of this.cursor, for de-duplication
    this._setCursor(this.cursor);
    this.state = "connecting";
    this.transport = null;
    this.leader = false;
    this.closed = false;
    this._stop = [];
    this._start();
  }

  /** Stops the subscription for good. */
  close() {
    this.closed = true;
    for (const stop of this._stop.splice(0)) stop();
  }

  _load() {
    try { return sessionStorage.getItem(this.storageKey); } catch { return null; }
  }

  _setCursor(token) {
    this.cursor = token;
    const decoded = token && decodeCursor(token);
    this.positions = decoded;
    if (token) {
      try { sessionStorage.setItem(this.storageKey, token); } catch { /* private mode */ }
    }
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, transport) {
    if (state === this.state && transport === this.transport) return;
    this.state = state;
    this.transport = transport;
    const detail = { state, transport, leader: this.leader };
    this._emit("state", detail);
    this._broadcast({ kind: "state", detail });
  }

  /** Which topic an event belongs to, and whether it is new, from its cursor. */
  _classify(token) {
    const next = decodeCursor(token);
    if (!next) return { topic: null, fresh: true };
    const prev = this.positions;
    if (!prev || prev.epoch !== next.epoch) return { topic: this._advanced(prev, next), fresh: true };
    for (const [key, seq] of next.positions) {
      const before = prev.positions.get(key);
      if (before === undefined || seq > before) return { topic: this.keys.get(key) || null, fresh: true };
    }
    return { topic: null, fresh: false };
  }

  _advanced(prev, next) {
    if (next.positions.size === 1) return this.keys.get([...next.positions.keys()][0]) || null;
    return null;
  }

  /** Delivers an event or a gap to the app (and, as leader, to the other tabs). */
  _deliver(kind, detail) {
    if (kind === "event") {
      const { topic, fresh } = this._classify(detail.id);
      if (!fresh) return; // already delivered (a replay overlapping a broadcast)
      detail = { ...detail, topic: detail.topic || topic };
    }
    this._setCursor(detail.id);
    this._emit(kind, detail);
    this._broadcast({ kind, detail });
  }

  _broadcast(message) {
    if (this.leader && this.channel) this.channel.postMessage(message);
  }

  _start() {
    const share = this.options.share && typeof BroadcastChannel !== "undefined" && navigator.locks;
    if (!share) {
      this.leader = true;
      this._run();
      return;
    }
    this.channel = new BroadcastChannel(this.storageKey);
    this._stop.push(() => this.channel.close());
    this.channel.onmessage = (m) => (this.leader ? this._lead(m.data) : this._follow(m.data));
    this.channel.postMessage({ kind: "hello" });
    const abort = new AbortController();
    this._stop.push(() => abort.abort());
    const lead = async () => {
      if (this.closed) return;
      this.leader = true;
      this._setState("connecting", null);
      await this._run();
    };
    // Whoever holds the lock holds the connection; the others follow its broadcasts. When the
    // leader's tab closes, the lock passes to a follower, which resumes from its own cursor.
    navigator.locks.request(this.storageKey, { ifAvailable: true }, async (lock) => {
      if (lock) return lead();
      // Another tab leads: catch up from our own cursor, follow, and wait for our turn.
      this._catchUp();
      navigator.locks.request(this.storageKey, { signal: abort.signal }, lead).catch(() => {});
    }).catch(() => {});
  }

  _lead(message) {
    // A tab just joined: tell it where the shared connection stands.
    if (message.kind === "hello") {
      this.channel.postMessage({ kind: "state", detail: { state: this.state, transport: this.transport, leader: true } });
    }
  }

  _follow(message) {
    if (this.leader || this.closed || message.kind === "hello") return;
    if (message.kind === "state") {
      this.state = message.detail.state;
      this.transport = message.detail.transport;
      this._emit("state", { ...message.detail, leader: false });
    } else if (this._catchingUp) {
      this._held.push(message);
    } else if (message.kind === "event") {
      this._deliver("event", message.detail);
    } else if (message.kind === "gap") {
      this._deliver("gap", message.detail);
    }
  }

  async _catchUp() {
    this._catchingUp = true;
    this._held = [];
    try {
      if (this.cursor) {
        for (let round = 0; round < 100 && !this.leader && !this.closed; round++) {
          const batch = await this._pollOnce(0);
          if (!batch || (!batch.events.length && !batch.gap)) break;
        }
      }
    } catch { /* the leader's broadcasts will do */ }
    this._catchingUp = false;
    for (const m of this._held.splice(0)) this._follow(m);
  }

  async _run() {
    const wantSse = this.options.transport !== "poll" && typeof EventSource !== "undefined";
    // After a fallback, try the stream again every `upgradeAfter` ms (the proxy may be gone);
    // the cursor goes along both ways, and de-duplication absorbs any overlap.
    const upgradeAfter = wantSse && this.options.transport === "auto" ? this.options.upgradeAfter : Infinity;
    while (!this.closed) {
      if (wantSse) {
        const fellBack = await this._runSse();
        if (this.closed || !fellBack) return;
      }
      if ((await this._runPoll(upgradeAfter)) === "stopped") return;
    }
  }

  /** Runs SSE until closed (returns false) or until it should fall back (returns true). */
  _runSse() {
    return new Promise((resolve) => {
      let failures = 0;
      let source = null;
      let timer = null;
      let finished = false;
      const finish = (fallBack) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        if (source) source.close();
        resolve(fallBack);
      };
      this._stop.push(() => finish(false));
      const open = () => {
        if (this.closed) return finish(false);
        const url = new URL(this.options.sse, location.href);
        for (const t of this.topics) url.searchParams.append("topic", t);
        if (this.cursor) url.searchParams.set("lastEventId", this.cursor);
        source = new EventSource(url);
        let delivered = false;
        // A stream that never opens, or opens and never delivers, is as good as none.
        if (!this._everOpened && this.options.transport === "auto") {
          clearTimeout(timer);
          timer = setTimeout(() => { if (!delivered) finish(true); }, this.options.openTimeout * 2);
        }
        // One namespace holds both the connection's events and the server's: EventSource fires
        // `onopen`/`onerror` for the connection (a plain Event) and for a server-sent event
        // named `open`/`error` (a MessageEvent). Only the former is about the connection.
        // The latter is an app event from a server that still sends these names (a foreign
        // hub, or a log written before tidings refused them): it goes to the app as the event
        // it is (the Feed's own "event", where its name collides with nothing), and it does
        // not count as the stream delivering, so it never changes the connection's state.
        const stray = (e) => this._deliver("event", { id: e.lastEventId, topic: null, type: e.type, data: e.data });
        const delivering = () => {
          delivered = true;
          failures = 0;
          clearTimeout(timer);
          this._setState("open", "sse");
        };
        source.onopen = (e) => {
          if (fromServer(e)) return stray(e);
          // Headers arrived. If the first bytes (the stream's opening event) do not follow,
          // something between us and the server buffers the stream.
          clearTimeout(timer);
          timer = setTimeout(() => { if (!delivered) finish(this.options.transport === "auto"); }, this.options.openTimeout);
        };
        source.onerror = (e) => {
          if (fromServer(e)) return stray(e);
          clearTimeout(timer);
          if (!delivered) failures += 1;
          delivered = false;
          this._setState("unavailable", "sse");
          if (this.options.transport === "auto" && failures >= this.options.sseFailures && !this._everOpened) {
            return finish(true);
          }
          if (source.readyState === EventSource.CLOSED) {
            // Refused (an HTTP error) or closed for good: reopen by hand, with backoff.
            setTimeout(open, jitter(Math.min(30000, 1000 * 2 ** Math.min(failures, 5))));
          }
          // Otherwise the browser reconnects by itself, sending Last-Event-ID.
        };
        source.addEventListener("tidings.open", (e) => {
          if (!fromServer(e)) return;
          this._everOpened = true;
          delivering();
          // The stream starts where our cursor was, or where the log ends if we had none. Never
          // step back: a catch-up may have taken us further already.
          const mine = this.positions, theirs = decodeCursor(e.lastEventId);
          if (!mine || !theirs || mine.epoch !== theirs.epoch) this._setCursor(e.lastEventId);
        });
        source.addEventListener("tidings.gap", (e) => {
          if (!fromServer(e)) return;
          this._everOpened = true;
          delivering();
          this._deliver("gap", { id: e.lastEventId, topics: JSON.parse(e.data).topics });
        });
        const onEvent = (e) => {
          if (!fromServer(e)) return; // never something about the connection
          delivering();
          this._deliver("event", { id: e.lastEventId, topic: null, type: e.type, data: e.data });
        };
        for (const type of new Set(["message", ...this.options.eventTypes])) source.addEventListener(type, onEvent);
      };
      open();
    });
  }

  /** One poll; delivers what it brings. Returns the batch, or null on a network error. */
  async _pollOnce(timeout) {
    const url = new URL(this.options.poll, location.href);
    for (const t of this.topics) url.searchParams.append("topic", t);
    if (this.cursor) url.searchParams.set("cursor", this.cursor);
    url.searchParams.set("timeout", String(timeout));
    let response;
    try {
      response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    } catch {
      return null;
    }
    const body = await response.json().catch(() => ({}));
    if (response.status !== 200) {
      const error = new Error(body.error || "HTTP " + response.status);
      error.status = response.status;
      error.retryMs = body.retry_ms;
      throw error;
    }
    if (body.gap) this._deliver("gap", { id: body.gap.id, topics: body.gap.topics });
    for (const e of body.events) {
      this._deliver("event", { id: e.id, topic: e.topic, type: e.event || "message", data: e.data });
    }
    this._setCursor(body.cursor);
    if (body.retry_ms) await sleep(body.retry_ms);
    return body;
  }

  /** Polls until closed or refused ("stopped"), or until `until` ms have passed ("upgrade"). */
  async _runPoll(until) {
    let failures = 0;
    const started = Date.now();
    while (!this.closed) {
      if (Date.now() - started >= until) return "upgrade";
      try {
        // A poll never outlasts the moment the stream is due to be tried again.
        const remaining = Math.ceil((until - (Date.now() - started)) / 1000);
        const wait = this.cursor ? Math.max(0, Math.min(this.options.pollTimeout, remaining)) : 0;
        const batch = await this._pollOnce(wait);
        if (batch) {
          failures = 0;
          this._setState("open", "poll");
          continue;
        }
      } catch (error) {
        if (error.status === 503) {
          this._setState("unavailable", "poll");
          await sleep(error.retryMs || jitter(2000));
          continue;
        }
        this._setState("unavailable", "poll");
        this._emit("error", { status: error.status, message: error.message });
        return "stopped";
      }
      failures += 1;
      this._setState("unavailable", "poll");
      await sleep(jitter(Math.min(30000, 500 * 2 ** Math.min(failures, 6))));
    }
    return "stopped";
  }
}
