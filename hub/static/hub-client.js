// hub-client.js: the hub's browser client, a dependency-free ES module (docs/protocol.md, v1).
//
//   import { HubClient } from "/hub-client.js";
//   const client = new HubClient("demo", { types: ["ingest.job.*", "agent.*"] });
//   client.on("agent.message.*", (event) => ...);   // event: {seq, type, key, ts, data}
//   client.onSnapshot((events, info) => ...);       // rebuild state: bootstrap or after a gap
//   client.onState((state, info) => ...);           // connecting | open | reconnecting | closed
//   await client.bootstrap();                       // GET .../snapshot; resume from its head
//   client.start();
//
// Transports, tried in order (option `transports`): WebSocket; Server-Sent Events over fetch
// (which, unlike EventSource, sees every event name and can send an Authorization header);
// long-poll over GET .../events?wait=. Every attempt must hear from the hub within
// connectTimeoutMs, or the next transport is tried. Reconnects with full-jitter backoff (reset
// once a connection proved healthy) and resumes with since+epoch; events are deduplicated by
// seq. Runs in browsers and in Node 20+ (give `url`). docs/protocol.md, "The browser client".

/** Connection states reported to onState callbacks. */
export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

// Close codes after which reconnecting cannot help: the client or its token must change.
const FATAL_CLOSE = new Set([1000, 1003, 1008, 1009, 4003, 4400]);
const UNAUTHORIZED = 4001;
const FATAL_HTTP = new Set([400, 403, 404, 413, 422]);

/** A hub type pattern as a RegExp: `*` matches any run of characters, the rest is literal. */
export function compilePattern(pattern) {
  const body = pattern
    .split("*")
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*");
  return new RegExp(`^${body}$`);
}

/** A predicate on event types for a list of patterns (empty or missing: everything). */
export function typeMatcher(patterns) {
  if (!patterns || patterns.length === 0 || patterns.includes("*")) return () => true;
  const compiled = patterns.map(compilePattern);
  const cache = new Map();
  return (type) => {
    let hit = cache.get(type);
    if (hit === undefined) {
      hit = compiled.some((re) => re.test(type));
      if (cache.size > 1000) cache.clear();
      cache.set(type, hit);
    }
    return hit;
  };
}

/** Full-jitter exponential backoff: a random delay in [0, min(max, initial * 2^attempt)). */
export function backoffDelay(attempt, initial = 250, max = 15000, random = Math.random) {
  return Math.floor(random() * Math.min(max, initial * 2 ** Math.min(attempt, 16)));
}

/** Split an SSE byte stream (as text chunks) into {event, data, id} messages. */
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  push(chunk) {
    this.buffer += chunk;
    let newline;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      let line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length > 0) {
        this.onMessage({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // comment: keepalive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") this.id = value;
  }
}

/** Transport names, in the default order of preference. */
export const TRANSPORTS = Object.freeze(["ws", "sse", "poll"]);

/** A Retry-After header in ms (0 when absent or unreadable). */
function retryAfterMs(response) {
  const seconds = Number(response.headers.get("retry-after"));
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
}

/** The `error` of the hub's `{"error": {...}}` answer body, or null (say, a proxy's page). */
function hubError(text) {
  try {
    const body = JSON.parse(text);
    return body && typeof body.error === "object" && body.error ? body.error : null;
  } catch {
    return null;
  }
}

/** A promise that resolves after `ms`. */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function positiveNumber(value, fallback, name) {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
    throw new TypeError(`HubClient: ${name} must be a positive number, got ${value}`);
  }
  return value;
}

function patternList(value, name) {
  if (value === undefined || value === null) return null;
  const ok = Array.isArray(value) && value.every((p) => typeof p === "string" && p && !p.includes(","));
  if (!ok) throw new TypeError(`HubClient: ${name} must be a list of non-empty strings without commas`);
  return value.length ? [...value] : null;
}

export class HubClient {
  /**
   * @param {string} project
   * @param {object} [options]
   * @param {string} [options.url] hub base URL (default: this page's origin; required elsewhere)
   * @param {string[]} [options.types] type patterns to subscribe to (default: all)
   * @param {string[]} [options.keys] key patterns (e.g. "ingest.job/j17", "agent.run/*"):
   *   only events whose key matches one of them (default: no key filter)
   * @param {string|(() => string|Promise<string>)} [options.token] access token, or a
   *   function that returns a fresh one (called on every connect; 4001 then retries)
   * @param {string[]} [options.transports] of "ws", "sse", "poll", tried in this order
   *   (default all three)
   * @param {number} [options.connectTimeoutMs] per attempt, every transport: a connection
   *   that has not heard from the hub by then fails and the next transport is tried (5000)
   * @param {number} [options.pollWaitS] how long one long-poll request waits for events (25)
   * @param {number} [options.healthyAfterMs] the backoff starts over once a connection has
   *   stayed open this long or delivered an event (5000)
   * @param {number} [options.since] last seq already seen (with options.epoch)
   * @param {string} [options.epoch]
   * @param {number} [options.backoffInitial] ms (default 250)
   * @param {number} [options.backoffMax] ms (default 15000)
   */
  constructor(project, options = {}) {
    const origin = options.url || globalThis.location?.origin;
    if (!origin) throw new TypeError("HubClient: options.url is required outside a web page");
    const transports = options.transports ?? TRANSPORTS;
    if (
      !Array.isArray(transports) ||
      transports.length === 0 ||
      !transports.every((t) => TRANSPORTS.includes(t))
    ) {
      throw new TypeError(`HubClient: transports must be a non-empty list of ${TRANSPORTS.join(", ")}`);
    }
    this.project = project;
    this.url = origin.replace(/\/$/, "");
    this.types = patternList(options.types, "types");
    this.keys = patternList(options.keys, "keys");
    this.token = options.token || null;
    this.transports = [...transports];
    this.connectTimeoutMs = positiveNumber(options.connectTimeoutMs, 5000, "connectTimeoutMs");
    this.pollWaitS = positiveNumber(options.pollWaitS, 25, "pollWaitS");
    this.healthyAfterMs = positiveNumber(options.healthyAfterMs, 5000, "healthyAfterMs");
    this.backoffInitial = options.backoffInitial ?? 250;
    this.backoffMax = options.backoffMax ?? 15000;
    this.seq = options.since ?? null; // last seq seen (or replayed past) in `epoch`
    this.epoch = options.epoch ?? null;
    this.state = State.IDLE;
    this.transport = null; // "ws" | "sse" | "poll" while connecting or connected
    this.heartbeat = 20;
    this.attempt = 0; // failed connections since the last healthy one: the backoff's exponent
    this.received = 0; // events delivered to handlers
    this.duplicates = 0; // events dropped as already seen
    this._handlers = [];
    this._stateHandlers = [];
    this._snapshotHandlers = [];
    this._snapshotPages = []; // events of the `more` snapshot pages received so far
    this._controlHandlers = [];
    this._transportIndex = 0; // where in `transports` the next connection starts
    this._answered = false; // the hub spoke on this connection (else its transport failed)
    this._stopped = true;
    this._session = 0; // bumps on every connect and failure: stale callbacks are ignored
    this._conn = null;
    this._timer = null; // the reconnect delay
    this._connectTimer = null;
    this._healthyTimer = null;
    this._watchdog = null;
  }

  /** Call `callback(event)` for events whose type matches `pattern`; returns an unsubscribe. */
  on(pattern, callback) {
    const entry = { matches: typeMatcher([pattern]), callback };
    this._handlers.push(entry);
    return () => this._handlers.splice(this._handlers.indexOf(entry) >>> 0, 1);
  }

  /** `callback(state, {transport, attempt, delay, code, reason})` on every state change. */
  onState(callback) {
    this._stateHandlers.push(callback);
    return () => this._stateHandlers.splice(this._stateHandlers.indexOf(callback) >>> 0, 1);
  }

  /** `callback(events, {head, epoch, reason})`: replace state with these latest-per-key events. */
  onSnapshot(callback) {
    this._snapshotHandlers.push(callback);
    return () => this._snapshotHandlers.splice(this._snapshotHandlers.indexOf(callback) >>> 0, 1);
  }

  /** `callback(frame)` for control frames: welcome, replayed, gap, snapshot, error, pong. */
  onControl(callback) {
    this._controlHandlers.push(callback);
    return () => this._controlHandlers.splice(this._controlHandlers.indexOf(callback) >>> 0, 1);
  }

  /** Load the project's snapshot over HTTP (page by page) and resume the stream from its head. */
  async bootstrap() {
    const snapshot = await this._loadSnapshot(null);
    this.seq = snapshot.head;
    this.epoch = snapshot.epoch;
    this._emitSnapshot(snapshot.events, {
      head: snapshot.head,
      epoch: snapshot.epoch,
      reason: "bootstrap",
    });
    return snapshot;
  }

  start() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._connect();
    return this;
  }

  close() {
    this._stopped = true;
    this._session += 1;
    clearTimeout(this._timer);
    this._teardown();
    this.transport = null;
    this._setState(State.CLOSED, {});
  }

  // --- connecting ------------------------------------------------------------------------

  _base() {
    return `${this.url}/v1/projects/${encodeURIComponent(this.project)}`;
  }

  async _currentToken() {
    return typeof this.token === "function" ? await this.token() : this.token;
  }

  async _authHeaders() {
    const token = await this._currentToken();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  _filters(url) {
    if (this.types) url.searchParams.set("types", this.types.join(","));
    if (this.keys) url.searchParams.set("keys", this.keys.join(","));
    return url;
  }

  _query(url) {
    if (this.seq !== null) {
      url.searchParams.set("since", String(this.seq));
      if (this.epoch) url.searchParams.set("epoch", this.epoch);
    }
    return this._filters(url);
  }

  /** `fetch` that gives up when no response (headers) has come within connectTimeoutMs. */
  async _fetch(url, init, signal) {
    const controller = new AbortController();
    const abort = () => controller.abort();
    if (signal) signal.addEventListener("abort", abort, { once: true });
    const timer = setTimeout(abort, this.connectTimeoutMs);
    try {
      return await fetch(url, { ...init, cache: "no-store", signal: controller.signal });
    } catch (error) {
      if (controller.signal.aborted && !signal?.aborted) {
        throw new Error(`${url.pathname}: no answer within ${this.connectTimeoutMs} ms`);
      }
      throw error;
    } finally {
      clearTimeout(timer);
      if (signal) signal.removeEventListener("abort", abort);
    }
  }

  /** The whole snapshot, page by page: `{...last page, events}` with latest-per-key events. */
  async _loadSnapshot(signal) {
    let events = [];
    let snapshot = null;
    const headers = await this._authHeaders();
    for (;;) {
      const url = this._filters(new URL(`${this._base()}/snapshot`));
      if (snapshot) url.searchParams.set("after", String(snapshot.next));
      const response = await this._fetch(url, { headers }, signal);
      if (!response.ok) throw new Error(`snapshot: HTTP ${response.status}`);
      const page = await response.json();
      if (snapshot && page.epoch !== snapshot.epoch) {
        throw new Error("snapshot: the project's sequence restarted while paging; retry");
      }
      if (snapshot && page.more && page.next <= snapshot.next) {
        throw new Error("snapshot: paging did not advance");
      }
      events = events.concat(page.events);
      snapshot = page;
      if (!page.more) break;
    }
    // A key that changed between pages came again, later: keep its latest event only.
    const latest = new Map();
    for (const event of events) latest.set(event.key ?? `#${event.seq}`, event);
    events = [...latest.values()].sort((a, b) => a.seq - b.seq);
    return { ...snapshot, events };
  }

  _available(transport) {
    if (transport === "ws") return typeof globalThis.WebSocket === "function";
    return typeof globalThis.fetch === "function";
  }

  /** The first transport this runtime has, from `transports[from]` on (-1: none). */
  _transportFrom(from) {
    for (let i = from; i < this.transports.length; i += 1) {
      if (this._available(this.transports[i])) return i;
    }
    return -1;
  }

  _connect(info = {}) {
    if (this._stopped) return;
    this._teardown();
    const session = ++this._session;
    let index = this._transportFrom(this._transportIndex);
    if (index < 0) index = this._transportFrom(0);
    if (index < 0) {
      this._stopped = true;
      this.transport = null;
      this._setState(State.CLOSED, { reason: "no transport available in this runtime" });
      return;
    }
    this._transportIndex = index;
    this.transport = this.transports[index];
    this._answered = false;
    this._setState(this.attempt === 0 ? State.CONNECTING : State.RECONNECTING, info);
    // Every attempt is bounded: a handshake or a request that hangs must not hang the client.
    this._connectTimer = setTimeout(() => {
      this._failed(session, {
        answered: false,
        reason: `${this.transport}: no answer from the hub within ${this.connectTimeoutMs} ms`,
      });
    }, this.connectTimeoutMs);
    const open = {
      ws: this._openWebSocket,
      sse: this._openEventStream,
      poll: this._openLongPoll,
    }[this.transport];
    open.call(this, session).catch((error) => this._failed(session, { reason: String(error) }));
  }

  /** The hub answered (welcome, or the first poll page): open, and healthy after a while. */
  _opened() {
    clearTimeout(this._connectTimer);
    clearTimeout(this._healthyTimer);
    const session = this._session;
    this._healthyTimer = setTimeout(() => {
      if (session === this._session) this.attempt = 0;
    }, this.healthyAfterMs);
    this._setState(State.OPEN, {});
  }

  _teardown() {
    clearTimeout(this._connectTimer);
    clearTimeout(this._healthyTimer);
    clearInterval(this._watchdog);
    this._watchdog = null;
    const conn = this._conn;
    this._conn = null;
    if (conn) {
      try {
        conn.close();
      } catch {
        // a socket that never opened may refuse close() in some runtimes: it is gone anyway
      }
    }
  }

  /**
   * A connection ended. `answered`: the hub spoke on it (a frame or its JSON error); if not,
   * the transport failed here (refused, blocked, hung) and the next one is tried at once.
   */
  _failed(session, { code = 1006, reason = "", answered = this._answered, retryAfter = 0 } = {}) {
    if (session !== this._session || this._stopped) return;
    this._session += 1; // this connection's later callbacks (close after error, ...) are void
    this._teardown();
    if (!answered) {
      const next = this._transportFrom(this._transportIndex + 1);
      if (next >= 0) {
        this._transportIndex = next;
        this._connect({ reason }); // why the previous transport failed
        return;
      }
      this._transportIndex = 0; // every transport failed: start over after a backoff
    }
    const fatal = FATAL_CLOSE.has(code) || (code === UNAUTHORIZED && typeof this.token !== "function");
    if (fatal) {
      this._stopped = true;
      this._setState(State.CLOSED, { code, reason });
      return;
    }
    const backoff = backoffDelay(this.attempt, this.backoffInitial, this.backoffMax);
    const delay = Math.max(backoff, Math.min(retryAfter, this.backoffMax));
    this.attempt += 1;
    this._setState(State.RECONNECTING, { code, reason, delay });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay);
  }

  /** A failed HTTP answer: the hub's (JSON error: act on its status) or a proxy's (fall back). */
  async _httpFailed(session, response, text = null) {
    let body = text;
    if (body === null) {
      try {
        body = await response.text();
      } catch {
        body = ""; // cut off (by the connect timer, or the network): not the hub's answer
      }
    }
    if (session !== this._session) return;
    const error = hubError(body);
    const reason = `HTTP ${response.status}${error?.message ? `: ${error.message}` : ""}`;
    if (!error) {
      this._failed(session, { answered: false, reason });
      return;
    }
    const status = response.status;
    const code = status === 401 ? UNAUTHORIZED : FATAL_HTTP.has(status) ? 4400 : 1013;
    this._failed(session, { answered: true, code, reason, retryAfter: retryAfterMs(response) });
  }

  async _openWebSocket(session) {
    const url = this._query(new URL(`${this._base()}/ws`));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const token = await this._currentToken();
    if (token) url.searchParams.set("token", token); // browsers cannot set WS headers
    if (session !== this._session) return;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      this._failed(session, { answered: false, reason: String(error) });
      return;
    }
    let lastRx = Date.now();
    let serverClose = null;
    this._conn = { close: () => ws.close() };
    ws.onmessage = (message) => {
      if (session !== this._session) return;
      lastRx = Date.now();
      const closeCode = this._onText(message.data);
      if (closeCode) serverClose = closeCode;
    };
    ws.onclose = (event) => {
      const abnormal = event.code === 1005 || event.code === 1006;
      const code = abnormal && serverClose ? serverClose : event.code;
      this._failed(session, { code, reason: event.reason });
    };
    // Some runtimes (Node 20's WebSocket) fire `error` and never `close` on a refused
    // connection: an error ends the connection here, whatever follows it.
    ws.onerror = () => {
      this._failed(session, { code: serverClose ?? 1006, reason: "WebSocket error" });
    };
    // The hub pings at the protocol level, which browsers answer but never show: ping with an
    // op when idle, and drop a socket that stays silent for 2.5 heartbeats.
    this._watchdog = setInterval(() => {
      if (ws.readyState !== WebSocket.OPEN) return;
      const idle = (Date.now() - lastRx) / 1000;
      if (idle > this.heartbeat * 2.5) ws.close(4000, "silent hub");
      else if (idle > this.heartbeat) ws.send('{"op":"ping"}');
    }, Math.max(1000, (this.heartbeat * 1000) / 2));
  }

  async _openEventStream(session) {
    const url = this._query(new URL(`${this._base()}/sse`));
    const headers = { Accept: "text/event-stream", ...(await this._authHeaders()) };
    if (session !== this._session) return;
    const controller = new AbortController();
    this._conn = { close: () => controller.abort() };
    let response;
    try {
      response = await fetch(url, { headers, signal: controller.signal, cache: "no-store" });
    } catch (error) {
      this._failed(session, { reason: String(error) });
      return;
    }
    if (!response.ok) {
      await this._httpFailed(session, response);
      return;
    }
    let lastRx = Date.now();
    let serverClose = null;
    this._watchdog = setInterval(() => {
      if ((Date.now() - lastRx) / 1000 > this.heartbeat * 2.5) controller.abort();
    }, Math.max(1000, (this.heartbeat * 1000) / 2));
    const parser = new SseParser((message) => {
      if (session !== this._session) return;
      const closeCode = this._onText(message.data);
      if (closeCode) serverClose = closeCode;
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        lastRx = Date.now();
        parser.push(value);
      }
    } catch (error) {
      // aborted by us (watchdog, close) or the network dropped: reconnect below
    }
    // The hub ends a stream only after an error frame that says why (its close code).
    this._failed(session, { code: serverClose ?? 1006 });
  }

  /**
   * Long-poll over `GET .../events` (history pages): the first request, without `wait`, is
   * the handshake; then each request waits up to pollWaitS for events after `since`. The
   * resume decision is the stream's: another epoch, a `gap` or a `since` beyond `head` means
   * the snapshot is fetched and the poll goes on from its head.
   */
  async _openLongPoll(session) {
    const headers = await this._authHeaders();
    if (session !== this._session) return;
    let controller = new AbortController();
    this._conn = { close: () => controller.abort() };
    for (let first = true; ; first = false) {
      const url = this._query(new URL(`${this._base()}/events`));
      if (first && this.seq === null) url.searchParams.set("limit", "1"); // only the position
      if (!first) url.searchParams.set("wait", String(this.pollWaitS));
      controller = new AbortController();
      // The first request is bounded by the connect timer; a waiting one by wait + a margin.
      const waitMs = this.pollWaitS * 1000;
      const deadline = first ? null : setTimeout(() => controller.abort(), waitMs + this.connectTimeoutMs);
      const sent = Date.now();
      let response;
      let text;
      try {
        response = await fetch(url, { headers, signal: controller.signal, cache: "no-store" });
        text = await response.text();
      } catch (error) {
        this._failed(session, { reason: `poll: ${error}` });
        return;
      } finally {
        clearTimeout(deadline);
      }
      if (session !== this._session) return;
      if (!response.ok) {
        await this._httpFailed(session, response, text);
        return;
      }
      let page;
      try {
        page = JSON.parse(text);
      } catch {
        page = null;
      }
      if (!page || typeof page.head !== "number" || !Array.isArray(page.events)) {
        this._failed(session, { answered: false, reason: "poll: the answer is not a history page" });
        return;
      }
      this._answered = true;
      if (first) {
        if (this.seq === null) {
          this.seq = page.head; // live only: we stand at head
          this.epoch = page.epoch;
          page = { ...page, events: [], next: page.head, gap: false };
        }
        this._opened();
      }
      const gap = this._pollGap(page);
      if (gap) {
        await this._pollResync(session, gap, page, controller.signal);
        if (session !== this._session) return;
        continue;
      }
      this._welcomeEpoch = page.epoch;
      for (const frame of page.events) {
        if (session !== this._session) return; // a handler closed or restarted the client
        this._onEvent(frame);
      }
      this.seq = Math.max(this.seq, page.next);
      this.epoch = page.epoch;
      if (!first && page.events.length === 0 && Date.now() - sent < waitMs / 2) {
        // Empty long before the wait ended: a hub shutting down, or one that does not wait
        // (no long-poll support). Do not hammer it.
        await sleep(Math.min(1000, waitMs));
        if (session !== this._session) return;
      }
    }
  }

  /** Why a poll page cannot continue from `seq` ("epoch", "evicted", "ahead"), or null. */
  _pollGap(page) {
    if (this.epoch && page.epoch !== this.epoch) return "epoch";
    if (page.gap) return "evicted";
    if (this.seq > page.head) return "ahead";
    return null;
  }

  async _pollResync(session, reason, page, signal) {
    this._emitControl({ op: "gap", reason, since: this.seq, oldest: page.oldest, head: page.head });
    let snapshot;
    try {
      snapshot = await this._loadSnapshot(signal);
    } catch (error) {
      this._failed(session, { reason: `poll: ${error}` });
      return;
    }
    if (session !== this._session) return;
    this.seq = snapshot.head;
    this.epoch = snapshot.epoch;
    this._welcomeEpoch = snapshot.epoch;
    this._emitSnapshot(snapshot.events, { head: snapshot.head, epoch: snapshot.epoch, reason });
  }

  // --- frames ----------------------------------------------------------------------------

  /** Handle one WebSocket message or SSE data: a frame or an array of frames. */
  _onText(text) {
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch {
      return null;
    }
    let closeCode = null;
    for (const frame of Array.isArray(parsed) ? parsed : [parsed]) {
      const code = this._onFrame(frame);
      if (code) closeCode = code;
    }
    return closeCode;
  }

  _onFrame(frame) {
    this._answered = true;
    switch (frame.op) {
      case "event":
        this._onEvent(frame);
        return null;
      case "welcome":
        this._welcomeEpoch = frame.epoch;
        this._snapshotPages = []; // a new connection: pages of a cut one are void
        this.heartbeat = frame.heartbeat || this.heartbeat;
        if (this.seq === null) {
          this.seq = frame.head; // live only: we stand at head
          this.epoch = frame.epoch;
        }
        this._opened();
        break;
      case "replayed":
        this.seq = Math.max(this.seq ?? 0, frame.head);
        break;
      case "gap":
        this._gapReason = frame.reason;
        break;
      case "snapshot": {
        // A large snapshot comes in pages, all but the last with `more`: rebuild once, whole.
        const pages = this._snapshotPages;
        pages.push(frame.events);
        if (frame.more) break;
        this._snapshotPages = [];
        this.seq = frame.head;
        this.epoch = this._welcomeEpoch;
        this._emitSnapshot(pages.flat(), {
          head: frame.head,
          epoch: this.epoch,
          reason: this._gapReason || "gap",
        });
        break;
      }
      default:
        break;
    }
    this._emitControl(frame);
    return frame.op === "error" ? frame.close ?? null : null;
  }

  _onEvent(frame) {
    // Within one connection every event is of the welcome's epoch; a since from another
    // epoch gets gap + snapshot (which resets seq) before any event.
    if (this.seq !== null && frame.seq <= this.seq) {
      this.duplicates += 1; // already seen (or covered by a snapshot)
      return;
    }
    this.seq = frame.seq;
    this.epoch = this._welcomeEpoch;
    this.received += 1;
    this.attempt = 0; // a connection that delivers is healthy: the backoff starts over
    for (const { matches, callback } of this._handlers) {
      if (matches(frame.type)) callback(frame);
    }
  }

  _emitControl(frame) {
    for (const callback of this._controlHandlers) callback(frame);
  }

  _emitSnapshot(events, info) {
    for (const callback of this._snapshotHandlers) callback(events, info);
  }

  _setState(state, info) {
    this.state = state;
    const detail = { transport: this.transport, attempt: this.attempt, ...info };
    for (const callback of this._stateHandlers) callback(state, detail);
  }
}
