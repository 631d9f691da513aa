// tidings browser client: one small API over WebSocket, Server-Sent Events and long-polling
// (each the fallback of the one before), exact resume from a cursor, one shared connection for
// all tabs of an origin, and a return channel (send, publish) over WebSocket.
//
//   import { connect } from "/tidings.js";
//   const feed = connect({ topics: ["demo"], eventTypes: ["my-custom-event"] });
//   feed.addEventListener("event", (e) => console.log(e.detail.topic, e.detail.data));
//   feed.addEventListener("gap", (e) => console.log("missed some of", e.detail.topics));
//   feed.addEventListener("state", (e) => console.log(e.detail.state, e.detail.transport));
//
// Events: "event" {id, topic, type, data}; "gap" {id, topics}; "state" {state, transport,
// leader} where state is "connecting", "open" or "unavailable"; "error" {status, message}
// when the server (or a proxy) refuses the subscription (400/401/403; over WebSocket the close
// codes 4400/4401/4403), after which the client stops. Every other failure is retried, on
// every transport alike (classifyStatus).
//
// Tabs that ask for the same thing share one connection: one leads (a Web Lock), the others
// follow its broadcasts. Every tab has a position from the moment it joins; a leader whose page
// stops running (back/forward cache, frozen) hands over at once and rejoins when it runs again.
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

const jitter = (ms) => ms / 2 + Math.random() * ms;

/** The error a send() or publish() rejects with when nothing could answer it: code 503. */
const unavailable = (why) => Object.assign(new Error("tidings: " + why), { code: 503 });
const backoff = (failures, base) => jitter(Math.min(30000, base * 2 ** Math.min(failures, 6)));

/**
 * How every transport takes an HTTP answer that is not a stream or a batch (one table: see
 * docs/client.md, "Failures"). 400, 401 and 403 are final: the server (or a proxy in front of
 * it) refuses this subscription, and asking again changes nothing, so the feed ends with an
 * "error" event. Anything else (429, 5xx, 404 from a proxy being redeployed, ...) is
 * transient: the feed stays, reports "unavailable", and tries again after the delay the answer
 * asks for (`retry_ms` in a tidings JSON body, else `Retry-After` in seconds or as an HTTP
 * date), or after a backoff with jitter when it asks for none.
 */
export function classifyStatus(status) {
  return status === 400 || status === 401 || status === 403 ? "refused" : "transient";
}

/** The delay an answer asks for, in ms, or null: `retry_ms` in its JSON body, else `Retry-After`. */
export function retryDelay(headers, body) {
  if (body && Number.isFinite(body.retry_ms) && body.retry_ms >= 0) return Math.max(MIN_RETRY_MS, body.retry_ms);
  const value = headers && headers.get("retry-after");
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Math.max(MIN_RETRY_MS, Number(value) * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(MIN_RETRY_MS, at - Date.now());
}

/** The least wait before asking again, whatever an answer says (`Retry-After: 0` is no loop). */
const MIN_RETRY_MS = 100;

/** Asks `url` once and reads its answer's status, retry delay and message (a failure's probe). */
async function probe(url, signal) {
  const abort = new AbortController();
  const stop = () => abort.abort();
  signal.addEventListener("abort", stop);
  try {
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin", signal: abort.signal });
    if (response.ok) return { status: response.status, delay: null, message: "" }; // a stream: not read
    const text = await response.text().catch(() => "");
    let body = null;
    try { body = JSON.parse(text); } catch { /* a proxy's page */ }
    const message = (body && body.error) || `HTTP ${response.status}`;
    const ours = Boolean(body && typeof body.error === "string");
    return { status: response.status, delay: retryDelay(response.headers, body), message, ours };
  } catch {
    return null; // the network, not an answer
  } finally {
    abort.abort();
    signal.removeEventListener("abort", stop);
  }
}

/**
 * Opens a subscription. Options:
 * - topics: the topics (required)
 * - ws: the WebSocket endpoint (default "/ws"); sse: the SSE endpoint (default "/events");
 *   poll: the long-poll endpoint (default "/poll")
 * - eventTypes: the event types the app publishes (EventSource only hands over named events
 *   it listens for; "message" is always included). "open", "error" and "tidings.*" are
 *   refused: EventSource and tidings dispatch those names themselves
 * - transport: "auto" (default: WebSocket, falling back to SSE, then to long-polling),
 *   "websocket", "sse" or "poll"
 * - share: share one connection between the tabs of this origin that ask for the same thing
 *   (same endpoints, topics, event types and transport; default true)
 * - storageKey: where the cursor is kept in sessionStorage (default from the endpoint, the
 *   topics and the event types)
 * - openTimeout: ms to wait for an opened SSE stream to deliver its first bytes before
 *   deciding a proxy buffers it (default 5000); sseFailures: failed SSE opens before
 *   falling back (default 2); wsFailures: WebSocket opens that fail (no `subscribed` within
 *   openTimeout) before falling back (default 2); pollTimeout: seconds a poll may wait
 *   (default 25); upgradeAfter: ms on long-polling (or on SSE after WebSocket failed) before
 *   the transport before it is tried again (default 300000); requestTimeout: ms a send() or
 *   publish() waits for its answer (default 30000)
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
      ws: "/ws", sse: "/events", poll: "/poll", eventTypes: [], transport: "auto", share: true,
      openTimeout: 5000, sseFailures: 2, wsFailures: 2, pollTimeout: 25, upgradeAfter: 300000,
      requestTimeout: 30000, ...options, topics,
    };
    this.topics = topics;
    this.keys = new Map(topics.map((t) => [topicKey(t), t]));
    // What the connection carries: tabs share one only when it carries what each asked for, and
    // a cursor is kept per what it counts.
    const types = [...new Set(this.options.eventTypes)].filter((t) => t !== "message").sort();
    const o = this.options;
    this.storageKey = o.storageKey ||
      "tidings:" + o.sse + ":" + topics.join("\u0000") + (types.length ? "\u0001" + types.join("\u0000") : "");
    this.shareName = "tidings-share:" +
      JSON.stringify([o.ws, o.sse, o.poll, [...topics].sort(), types, o.transport, this.storageKey]);
    this.cursor = this._load();
    this.positions = null; // per-topic sequence numbers of this.cursor, for de-duplication
    this._setCursor(this.cursor);
    this.state = "connecting";
    this.transport = null;
    this.leader = false;
    this.closed = false;
    this._session = null;
    this._wake = new EventTarget(); // "online": backoffs end at once
    this._socket = null; // the open WebSocket, once it said `subscribed` (leader only)
    this._answers = new Map(); // ref -> {resolve, reject}: send() and publish() awaiting answers
    this._refs = 0;
    this._lifecycle();
    this._join();
  }

  /**
   * Sends `data` (any JSON value) to the application's message handler over the WebSocket
   * (from any tab: a follower's goes through the leader's socket). Resolves with the reply's
   * `data`; rejects with an Error whose `code` is the server's (403, 501...), or 503 when no
   * socket is open (the feed is on SSE or long-polling, or reconnecting).
   */
  send(data) {
    return this._request({ type: "message", data }).then((answer) => answer.data);
  }

  /**
   * Publishes `data` (a string) to `topic`, of event type `type` if given, through the
   * WebSocket, where the server's policy allows it. Resolves with the event's cursor; rejects
   * as send() does.
   */
  publish(topic, data, type) {
    const message = { type: "publish", topic, data };
    if (type) message.event = type;
    return this._request(message).then((answer) => answer.id);
  }

  /**
   * One request over the leader's socket: this tab's own, or through the leader. Rejected with
   * 503 when no answer comes within `requestTimeout` ms, or when this tab stops following
   * (it leads, or its page stops running) before the answer.
   */
  _request(message) {
    if (this.closed) return Promise.reject(unavailable("the feed is closed"));
    const session = this._session;
    if (this.leader || !session || !session.channel) return this._sendOver(message);
    const id = Math.random().toString(36).slice(2) + Date.now().toString(36);
    session.asked = session.asked || new Map();
    return this._awaitAnswer(session.asked, id, "no answer from the tab that holds the socket",
      () => session.channel.postMessage({ kind: "request", id, message }));
  }

  /**
   * Sends with `send()` and waits for whoever takes `key` out of `waiting` to settle it; after
   * `requestTimeout` ms, rejects with 503 saying `why`.
   */
  _awaitAnswer(waiting, key, why, send) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiting.delete(key);
        reject(unavailable(why));
      }, this.options.requestTimeout);
      const settle = (f) => (v) => { clearTimeout(timer); f(v); };
      waiting.set(key, { resolve: settle(resolve), reject: settle(reject) });
      send();
    });
  }

  /** A follower's requests still waiting for the leader: they fail (this tab leads or leaves). */
  _abandonAsked(session) {
    if (!session || !session.asked) return;
    for (const waiting of session.asked.values()) waiting.reject(unavailable("the tab that held the socket went away"));
    session.asked.clear();
  }

  /** Sends `message` with a fresh `ref` over the open socket; settles with its answer. */
  _sendOver(message) {
    const socket = this._socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(unavailable(`send() and publish() need an open WebSocket (the feed is on ${this.transport || "nothing yet"})`));
    }
    const ref = ++this._refs;
    return this._awaitAnswer(this._answers, ref, "no answer from the server",
      () => socket.send(JSON.stringify({ ...message, ref })));
  }

  /** Settles the request an answer (`ack`, `reply`, `pong`, `error` with a `ref`) is for. */
  _answer(message) {
    const waiting = this._answers.get(message.ref);
    if (!waiting) return;
    this._answers.delete(message.ref);
    if (message.type === "error") waiting.reject(Object.assign(new Error(message.message), { code: message.code }));
    else waiting.resolve(message);
  }

  /** The socket is gone: every request still waiting fails. */
  _unanswered() {
    for (const waiting of this._answers.values()) waiting.reject(unavailable("the socket closed before the answer"));
    this._answers.clear();
  }

  /** Stops the subscription for good. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this._leave();
    for (const stop of this._unlisten || []) stop();
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
    this._broadcast({ kind: "state", detail, cursor: this.cursor });
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
    } else if (kind === "gap" && !this._behind(detail.id) && this._sameEpoch(detail.id)) {
      return; // a gap we are past already (our own catch-up met it first): never step back
    }
    this._setCursor(detail.id);
    this._emit(kind, detail);
    this._broadcast({ kind, detail });
  }

  /** Whether the app asked for events of `type` (null: untyped, which arrive as "message"). */
  _wants(type) {
    return !type || type === "message" || this.options.eventTypes.includes(type);
  }

  /** Moves past an event the app did not ask for (and, as leader, the other tabs too). */
  _skip(token) {
    if (!token || !this._classify(token).fresh) return;
    this._setCursor(token);
    this._broadcast({ kind: "skip", cursor: token });
  }

  /** Takes `token` as this tab's position if it has none yet (a tab joining without a cursor). */
  _adopt(token) {
    if (!this.cursor && token) this._setCursor(token);
  }

  _broadcast(message) {
    const session = this._session;
    if (this.leader && session && session.channel) session.channel.postMessage(message);
  }

  /** The subscription is refused (400/401/403): the app hears it once, and the feed ends. */
  _refused(detail) {
    if (this.closed) return;
    this._setState("unavailable", this.transport);
    this._broadcast({ kind: "refused", detail });
    this._emit("error", detail);
    this.close();
  }

  /**
   * Waits `ms`, or less: the feed or its session stops, or (unless `honour`, a delay the
   * server asked for) the browser comes back online.
   */
  _wait(ms, session, honour = false) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        session.signal.removeEventListener("abort", done);
        this._wake.removeEventListener("online", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      session.signal.addEventListener("abort", done);
      if (!honour) this._wake.addEventListener("online", done);
    });
  }

  // ---- Page lifecycle: a page that cannot run its code holds no connection and no lock.

  _lifecycle() {
    this._unlisten = [];
    if (typeof window === "undefined" || typeof window.addEventListener !== "function") return;
    const on = (target, type, handler) => {
      target.addEventListener(type, handler);
      this._unlisten.push(() => target.removeEventListener(type, handler));
    };
    // The back/forward cache (pagehide with persisted) and a frozen page (freeze) stop running
    // code without closing: hand the connection (and the lead) over at once, and join again,
    // from our own cursor, when the page runs again.
    on(window, "pagehide", (e) => { if (e.persisted) this._leave(); });
    on(window, "pageshow", (e) => { if (e.persisted) this._join(); });
    if (typeof document !== "undefined") {
      on(document, "freeze", () => this._leave());
      on(document, "resume", () => this._join());
    }
    on(window, "online", () => this._wake.dispatchEvent(new Event("online")));
  }

  // ---- Sessions: one per time the page runs (joined at start and after each resume).

  _join() {
    if (this.closed || this._session) return;
    const abort = new AbortController();
    const session = { abort, signal: abort.signal, channel: null, stops: [] };
    this._session = session;
    this.leader = false;
    this._setState("connecting", null);
    const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
    const share = this.options.share && typeof BroadcastChannel !== "undefined" && locks;
    if (!share) return this._alone(session);
    try {
      session.channel = new BroadcastChannel(this.shareName);
    } catch {
      return this._alone(session);
    }
    session.stops.push(() => session.channel.close());
    session.held = []; // messages wait here while we catch up, then are taken in order
    session.catching = Promise.resolve();
    session.channel.onmessage = (m) => this._onMessage(session, m.data);
    session.channel.postMessage({ kind: "hello" });
    const fallBack = (error) => {
      // Locks refused (site data blocked, an opaque origin): run unshared, as where there are none.
      if (session.signal.aborted || this._session !== session || session.alone) return;
      if (error && error.name === "AbortError") return;
      if (session.channel) session.channel.close();
      session.channel = null;
      session.held = null;
      this._alone(session);
    };
    // Whoever holds the lock holds the connection; the others follow its broadcasts. When the
    // leader's tab closes or stops running, the lock passes to a follower, which opens the
    // connection from its own cursor.
    locks.request(this.shareName, { ifAvailable: true }, (lock) => {
      if (lock) {
        session.held = null; // nobody leads but us: nothing to wait for
        return this._lead(session);
      }
      // A follower with a cursor catches up from it; one without takes the leader's position
      // (the leader's answer to our hello, or its first broadcast), so that it has a position
      // from the moment it joins and a handoff to it is exact whatever the timing.
      if (this.cursor) this._catchUp(session);
      else this._release(session);
      locks.request(this.shareName, { signal: session.signal }, () => this._lead(session)).catch(fallBack);
      return undefined;
    }).catch(fallBack);
  }

  /** Ends this page's session: its connection closes, its lock (if it leads) goes to another tab. */
  _leave() {
    const session = this._session;
    if (!session) return;
    this._abandonAsked(session);
    this._session = null;
    this.leader = false;
    session.abort.abort();
    for (const stop of session.stops.splice(0)) stop();
  }

  /** Runs unshared: this tab holds its own connection. */
  _alone(session) {
    session.alone = true;
    this.leader = true;
    this._run(session);
  }

  /** Holds the lock (and the connection) until the session ends. */
  async _lead(session) {
    if (session.signal.aborted) return;
    await session.catching; // a follower's catch-up first (and what it was sent meanwhile)
    if (session.signal.aborted || this.closed) return;
    this._abandonAsked(session); // asked of the leader we replace, which will not answer now
    this.leader = true;
    this._setState("connecting", null);
    // Where we take over from. A follower that is behind it (we caught up further than the
    // last leader had sent) fills the difference itself: nobody is left behind by a handoff.
    this._broadcast({ kind: "lead", detail: { state: this.state, transport: this.transport, leader: true }, cursor: this.cursor });
    const ended = new Promise((resolve) => session.signal.addEventListener("abort", resolve));
    await Promise.race([this._run(session), ended]);
  }

  _onMessage(session, message) {
    if (session !== this._session || this.closed) return;
    if (this.leader) {
      // A tab just joined: tell it where the shared connection stands, and our position.
      if (message.kind === "hello") {
        session.channel.postMessage({ kind: "state", detail: { state: this.state, transport: this.transport, leader: true }, cursor: this.cursor });
      } else if (message.kind === "request") {
        // A follower's send() or publish(), over our socket; the answer goes back by its id.
        this._sendOver(message.message).then(
          (answer) => session.channel.postMessage({ kind: "answer", id: message.id, answer }),
          (error) => session.channel.postMessage({ kind: "answer", id: message.id, error: { message: error.message, code: error.code } }),
        );
      }
      return;
    }
    if (message.kind === "hello" || message.kind === "request") return;
    if (message.kind === "answer") {
      const waiting = session.asked && session.asked.get(message.id);
      if (!waiting) return;
      session.asked.delete(message.id);
      if (message.error) waiting.reject(Object.assign(new Error(message.error.message), { code: message.error.code }));
      else waiting.resolve(message.answer);
      return;
    }
    if (session.held) session.held.push(message); // in order, after our catch-up
    else this._follow(session, message);
  }

  _follow(session, message) {
    if (this.leader || this.closed) return;
    if (message.kind === "state" || message.kind === "lead") {
      this._adopt(message.cursor);
      this.state = message.detail.state;
      this.transport = message.detail.transport;
      this._emit("state", { ...message.detail, leader: false });
      if (message.kind === "lead" && this._behind(message.cursor)) this._catchUp(session);
    } else if (message.kind === "position") {
      this._adopt(message.cursor);
    } else if (message.kind === "skip") {
      this._skip(message.cursor);
    } else if (message.kind === "event") {
      this._deliver("event", message.detail);
    } else if (message.kind === "gap") {
      this._deliver("gap", message.detail);
    } else if (message.kind === "refused") {
      this._emit("error", message.detail);
      this.close();
    }
  }

  /** Whether `token` belongs to the same incarnation of the log as our cursor. */
  _sameEpoch(token) {
    const theirs = token && decodeCursor(token);
    return Boolean(theirs && this.positions && theirs.epoch === this.positions.epoch);
  }

  /** Whether `token` stands past our cursor on some topic (or in another epoch of the log). */
  _behind(token) {
    const theirs = token && decodeCursor(token);
    const mine = this.positions;
    if (!theirs || !mine) return false;
    if (theirs.epoch !== mine.epoch) return true;
    for (const [key, seq] of theirs.positions) {
      const before = mine.positions.get(key);
      if (before === undefined || before < seq) return true;
    }
    return false;
  }

  /**
   * A follower catches up from its own cursor with immediate polls, holding what the leader
   * sends meanwhile; then it takes those messages in order (what it has already is dropped).
   */
  _catchUp(session) {
    if (session.catchingUp) return session.catching; // already: the messages wait for it
    session.catchingUp = true;
    if (!session.held) session.held = [];
    session.catching = (async () => {
      // Until the log is read to its end: the held broadcasts may only follow what we missed,
      // never stand in for it (their first event would move our cursor past it all). A failure
      // is taken by the table, like any poll's: retried (with backoff, or the delay asked), or,
      // if final, the end of the feed.
      let failures = 0;
      while (!session.signal.aborted && !this.leader && !this.closed) {
        const batch = await this._pollByTable(0, session, failures);
        if (batch === "refused") break;
        if (!batch) {
          failures += 1;
          continue;
        }
        failures = 0;
        if (!batch.events.length && !batch.gap) break;
      }
      session.catchingUp = false;
      this._release(session);
    })();
    return session.catching;
  }

  /** Takes the messages held meanwhile, in order. */
  _release(session) {
    const held = session.held || [];
    session.held = null;
    for (let i = 0; i < held.length; i++) {
      this._follow(session, held[i]);
      if (session.catchingUp) { // that message started another catch-up: the rest waits for it
        session.held.push(...held.slice(i + 1));
        return;
      }
    }
  }

  // ---- Transports.

  async _run(session) {
    const via = this.options.transport;
    const wantWs = (via === "auto" || via === "websocket") && typeof WebSocket !== "undefined";
    const wantSse = (via === "auto" || via === "sse") && typeof EventSource !== "undefined";
    // After a fallback, try the socket and the stream again every `upgradeAfter` ms (the proxy
    // may be gone); the cursor goes along every way, and de-duplication absorbs any overlap.
    const upgradeAfter = (wantWs || wantSse) && via === "auto" ? this.options.upgradeAfter : Infinity;
    while (!this.closed && !session.signal.aborted) {
      let socketFailed = false;
      if (wantWs) {
        const fellBack = await this._runWs(session);
        if (!fellBack || this.closed || session.signal.aborted) return;
        socketFailed = true;
      }
      if (wantSse) {
        // On the stream because the socket failed: try the socket again after a while.
        const outcome = await this._runSse(session, socketFailed ? upgradeAfter : Infinity);
        if (outcome === "upgrade") continue;
        if (!outcome || this.closed || session.signal.aborted) return;
      }
      if ((await this._runPoll(upgradeAfter, session)) === "stopped") return;
    }
  }

  /** The socket's URL (`ws:` or `wss:` as the page's), with our cursor if `withCursor`. */
  _wsUrl(withCursor) {
    const u = new URL(this.options.ws, location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    for (const t of this.topics) u.searchParams.append("topic", t);
    if (withCursor && this.cursor) u.searchParams.set("cursor", this.cursor);
    return u;
  }

  /**
   * Runs WebSocket until stopped (returns false) or until it should fall back (returns true):
   * with transport "auto", when the socket never said `subscribed` (a proxy that refuses
   * upgrades, a server without the endpoint) `wsFailures` times, each within `openTimeout`.
   * The close codes are taken by the failure table: 4400/4401/4403 end the feed, a `closing`
   * message's `retry_ms` is waited for, anything else is retried with backoff.
   */
  _runWs(session) {
    return new Promise((resolve) => {
      const auto = this.options.transport === "auto";
      let failures = 0; // sockets in a row that did not say `subscribed` (the backoff)
      let blocked = 0; // ... of which the upgrade did not pass (toward falling back)
      let socket = null;
      let timer = null;
      let finished = false;
      const stop = () => finish(false);
      const finish = (fallBack) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        const at = session.stops.indexOf(stop);
        if (at >= 0) session.stops.splice(at, 1);
        if (socket) {
          socket.onclose = null;
          socket.close(1000);
        }
        this._socket = null;
        this._unanswered();
        resolve(fallBack);
      };
      session.stops.push(stop);
      const url = () => this._wsUrl(true);
      const open = () => {
        if (this.closed || session.signal.aborted) return finish(false);
        const current = new WebSocket(url(), "tidings.v1");
        socket = current;
        let upgraded = false; // the upgrade passed (`open`)
        let opened = false; // this socket said `subscribed`
        let held = false; // nothing came within openTimeout
        let retry = null; // a `closing` message's retry_ms
        current.onopen = () => { upgraded = true; };
        if (auto && !this._wsOpened) {
          clearTimeout(timer);
          // A socket that does not open (a proxy that holds the upgrade) is as good as none.
          timer = setTimeout(() => {
            if (opened) return;
            held = true;
            current.close();
          }, this.options.openTimeout);
        }
        const delivering = () => {
          opened = true;
          this._wsOpened = true;
          failures = 0;
          blocked = 0;
          clearTimeout(timer);
          this._socket = current;
          this._setState("open", "websocket");
        };
        current.onmessage = (m) => {
          let message;
          try { message = JSON.parse(m.data); } catch { return; }
          if (message.ref !== undefined && message.ref !== null) return this._answer(message);
          if (message.type === "subscribed") {
            delivering();
            // The socket starts where our cursor was, or where the log ends if we had none.
            // Never step back: a catch-up may have taken us further already.
            const mine = this.positions, theirs = message.id && decodeCursor(message.id);
            if (theirs && (!mine || mine.epoch !== theirs.epoch)) {
              this._setCursor(message.id);
              this._broadcast({ kind: "position", cursor: this.cursor });
            }
          } else if (message.type === "event") {
            delivering();
            if (this._wants(message.event)) {
              this._deliver("event", { id: message.id, topic: message.topic, type: message.event || "message", data: message.data });
            } else {
              this._skip(message.id);
            }
          } else if (message.type === "gap") {
            delivering();
            this._deliver("gap", { id: message.id, topics: message.topics });
          } else if (message.type === "closing") {
            retry = message.retry_ms;
          }
          // An `error` without a `ref` precedes a close whose code says it all.
        };
        current.onclose = async (e) => {
          if (finished || socket !== current) return;
          clearTimeout(timer);
          this._socket = null;
          this._unanswered();
          // 4000 + an HTTP status: the subscription is refused, as a 4xx is on the others.
          if (e.code >= 4000 && e.code < 5000 && classifyStatus(e.code - 4000) === "refused") {
            finish(false);
            return this._refused({ status: e.code - 4000, message: e.reason || `closed with ${e.code}` });
          }
          this._setState("unavailable", "websocket");
          let asked = Number.isFinite(retry) ? Math.max(MIN_RETRY_MS, retry) : null;
          if (!opened) failures += 1; // the backoff grows with every socket that did not open
          if (!upgraded || held) {
            // The upgrade did not pass (or nothing came through it): ask the same URL with
            // fetch to read why, and take the answer as every transport does. A refusal
            // (400, 401, 403, from the server or a proxy) ends the feed; anything else counts
            // toward falling back to the stream.
            const http = url();
            http.protocol = http.protocol === "wss:" ? "https:" : "http:";
            const answer = await probe(http, session.signal);
            if (finished || session.signal.aborted) return;
            // The probe is not the upgrade: only a refusal from tidings itself (its JSON error,
            // about the URL) is final; a proxy's refusal of a plain GET counts as a failure.
            if (answer && answer.ours && classifyStatus(answer.status) === "refused") {
              finish(false);
              return this._refused({ status: answer.status, message: answer.message });
            }
            if (answer && answer.delay !== null && asked === null) asked = answer.delay;
            blocked += 1;
            if (auto && !this._wsOpened && blocked >= this.options.wsFailures) {
              if (asked !== null) await this._wait(asked, session, true);
              return finish(true);
            }
          }
          // Through the upgrade, closed by the server (a restart, the store down): transient.
          await this._wait(asked !== null ? asked : backoff(failures, 1000), session, asked !== null);
          if (!finished) open();
        };
      };
      open();
    });
  }

  /**
   * Runs SSE until stopped (returns false), until it should fall back (returns true), or, after
   * `until` ms, to try the socket again (returns "upgrade").
   */
  _runSse(session, until = Infinity) {
    return new Promise((resolve) => {
      let failures = 0;
      let source = null;
      let timer = null;
      let finished = false;
      let trial = null; // a socket tried beside the stream
      // Every `until` ms, a socket is tried beside the stream, which goes on meanwhile: only
      // once it says `subscribed` does the feed move to WebSocket (from its own cursor).
      const tryUpgrade = () => {
        if (finished) return;
        try { trial = new WebSocket(this._wsUrl(false), "tidings.v1"); } catch { return; }
        const giveUp = setTimeout(() => trial && trial.close(), this.options.openTimeout);
        trial.onmessage = (m) => {
          let message = null;
          try { message = JSON.parse(m.data); } catch { /* not ours */ }
          clearTimeout(giveUp);
          if (trial) trial.close();
          trial = null;
          if (message && message.type === "subscribed") finish("upgrade");
        };
        trial.onclose = () => {
          clearTimeout(giveUp);
          trial = null;
          if (!finished) upgrade = setTimeout(tryUpgrade, until);
        };
      };
      let upgrade = Number.isFinite(until) ? setTimeout(tryUpgrade, until) : null;
      const stop = () => finish(false);
      const finish = (fallBack) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        clearTimeout(upgrade);
        if (trial) {
          trial.onclose = null;
          trial.close();
        }
        const at = session.stops.indexOf(stop);
        if (at >= 0) session.stops.splice(at, 1);
        if (source) source.close();
        resolve(fallBack);
      };
      session.stops.push(stop);
      const url = () => {
        const u = new URL(this.options.sse, location.href);
        for (const t of this.topics) u.searchParams.append("topic", t);
        // The types we listen for: the server sends the others as `tidings.skip` (their
        // position, no data), so every position is seen and each event's topic is certain.
        for (const t of new Set(["message", ...this.options.eventTypes])) u.searchParams.append("listen", t);
        if (this.cursor) u.searchParams.set("lastEventId", this.cursor);
        return u;
      };
      // The browser gave up on the stream (an HTTP error, or not a stream): ask once more with
      // fetch to read the answer's status, and take it as every transport does.
      const closed = async () => {
        const answer = await probe(url(), session.signal);
        if (finished || session.signal.aborted) return;
        if (answer && classifyStatus(answer.status) === "refused") {
          finish(false);
          return this._refused({ status: answer.status, message: answer.message });
        }
        const delay = answer && answer.delay !== null ? answer.delay : null;
        if (this.options.transport === "auto" && !this._everOpened && failures >= this.options.sseFailures) {
          // Long-polling next, but not before the answer said to ask again.
          if (delay !== null) await this._wait(delay, session, true);
          return finish(true);
        }
        await this._wait(delay !== null ? delay : backoff(failures, 1000), session, delay !== null);
        if (!finished) open();
      };
      const open = () => {
        if (this.closed || session.signal.aborted) return finish(false);
        source = new EventSource(url());
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
          if (source.readyState === EventSource.CLOSED) {
            source.close();
            closed();
          } else if (this.options.transport === "auto" && failures >= this.options.sseFailures && !this._everOpened) {
            finish(true);
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
          if (!mine || !theirs || mine.epoch !== theirs.epoch) {
            this._setCursor(e.lastEventId);
            this._broadcast({ kind: "position", cursor: this.cursor });
          }
        });
        source.addEventListener("tidings.skip", (e) => {
          if (!fromServer(e)) return;
          delivering();
          this._skip(e.lastEventId);
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

  /** One poll; delivers what it brings. Returns the batch; throws {status, delay, message}. */
  async _pollOnce(timeout, session) {
    const url = new URL(this.options.poll, location.href);
    for (const t of this.topics) url.searchParams.append("topic", t);
    if (this.cursor) url.searchParams.set("cursor", this.cursor);
    url.searchParams.set("timeout", String(timeout));
    let response;
    try {
      response = await fetch(url, { cache: "no-store", credentials: "same-origin", signal: session.signal });
    } catch {
      return null;
    }
    const text = await response.text().catch(() => "");
    let body = null;
    try { body = JSON.parse(text); } catch { /* a proxy's page */ }
    if (response.status !== 200 || !body || !Array.isArray(body.events)) {
      const error = new Error((body && body.error) || "HTTP " + response.status);
      error.status = response.status;
      error.delay = retryDelay(response.headers, body);
      throw error;
    }
    if (session.signal.aborted) return null;
    if (body.gap) this._deliver("gap", { id: body.gap.id, topics: body.gap.topics });
    for (const e of body.events) {
      // The same events whatever carries them: an EventSource hands over only the types it
      // listens for, so polls deliver those too (the cursor still moves past the others).
      if (!this._wants(e.event)) continue;
      this._deliver("event", { id: e.id, topic: e.topic, type: e.event || "message", data: e.data });
    }
    this._setCursor(body.cursor);
    if (Number.isFinite(body.retry_ms)) await this._wait(body.retry_ms, session, true);
    return body;
  }

  /** Polls until stopped or refused ("stopped"), or until `until` ms have passed ("upgrade"). */
  async _runPoll(until, session) {
    let failures = 0;
    const started = Date.now();
    while (!this.closed && !session.signal.aborted) {
      if (Date.now() - started >= until) return "upgrade";
      // A poll never outlasts the moment the stream is due to be tried again.
      const remaining = Math.ceil((until - (Date.now() - started)) / 1000);
      const wait = this.cursor ? Math.max(0, Math.min(this.options.pollTimeout, remaining)) : 0;
      const batch = await this._pollByTable(wait, session, failures, () => this._setState("unavailable", "poll"));
      if (batch === "refused") return "stopped";
      if (!batch) {
        failures += 1;
        continue;
      }
      failures = 0;
      this._setState("open", "poll");
    }
    return "stopped";
  }

  /**
   * One poll, a failure taken by the failure table: the batch; or null, once the wait a
   * transient failure asks for is over (`failures` before this one set the backoff;
   * `onFailure` runs before the wait); or "refused", once the feed has ended.
   */
  async _pollByTable(timeout, session, failures, onFailure) {
    let delay = null;
    try {
      const batch = await this._pollOnce(timeout, session);
      if (batch) return batch;
    } catch (error) {
      if (classifyStatus(error.status) === "refused") {
        this._refused({ status: error.status, message: error.message });
        return "refused";
      }
      delay = error.delay;
    }
    if (session.signal.aborted) return null;
    if (onFailure) onFailure();
    await this._wait(delay !== null ? delay : backoff(failures + 1, 500), session, delay !== null);
    return null;
  }
}
