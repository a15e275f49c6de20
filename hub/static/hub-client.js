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
// WebSocket first; when it cannot connect, Server-Sent Events over fetch (which, unlike
// EventSource, sees every event name and can send an Authorization header). Reconnects with
// jittered exponential backoff and resumes with since+epoch; events are deduplicated by seq.

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

export class HubClient {
  /**
   * @param {string} project
   * @param {object} [options]
   * @param {string} [options.url] hub base URL (default: this page's origin)
   * @param {string[]} [options.types] type patterns to subscribe to (default: all)
   * @param {string|(() => string|Promise<string>)} [options.token] access token, or a
   *   function that returns a fresh one (called on every connect; 4001 then retries)
   * @param {string[]} [options.transports] ["ws", "sse"] (the order is the preference)
   * @param {number} [options.since] last seq already seen (with options.epoch)
   * @param {string} [options.epoch]
   * @param {number} [options.backoffInitial] ms (default 250)
   * @param {number} [options.backoffMax] ms (default 15000)
   */
  constructor(project, options = {}) {
    this.project = project;
    this.url = (options.url || globalThis.location.origin).replace(/\/$/, "");
    this.types = options.types || null;
    this.token = options.token || null;
    this.transports = options.transports || ["ws", "sse"];
    this.backoffInitial = options.backoffInitial ?? 250;
    this.backoffMax = options.backoffMax ?? 15000;
    this.seq = options.since ?? null; // last seq seen (or replayed past) in `epoch`
    this.epoch = options.epoch ?? null;
    this.state = State.IDLE;
    this.transport = null; // "ws" | "sse" while connected or connecting
    this.heartbeat = 20;
    this.attempt = 0;
    this.received = 0; // events delivered to handlers
    this.duplicates = 0; // events dropped as already seen
    this._handlers = [];
    this._stateHandlers = [];
    this._snapshotHandlers = [];
    this._snapshotPages = []; // events of the `more` snapshot pages received so far
    this._controlHandlers = [];
    this._wsFailed = false; // WebSocket could not connect: use SSE until SSE fails too
    this._stopped = true;
    this._session = 0; // bumps on every connect: stale callbacks of old sockets are ignored
    this._conn = null;
    this._timer = null;
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
    let events = [];
    let snapshot = null;
    for (;;) {
      const url = new URL(`${this._base()}/snapshot`);
      if (this.types) url.searchParams.set("types", this.types.join(","));
      if (snapshot) url.searchParams.set("after", String(snapshot.next));
      const response = await fetch(url, { headers: await this._authHeaders(), cache: "no-store" });
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
    this.seq = snapshot.head;
    this.epoch = snapshot.epoch;
    this._emitSnapshot(events, { head: snapshot.head, epoch: snapshot.epoch, reason: "bootstrap" });
    return { ...snapshot, events };
  }

  start() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._connect();
    return this;
  }

  close() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._teardown();
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

  _query(url) {
    if (this.seq !== null) {
      url.searchParams.set("since", String(this.seq));
      if (this.epoch) url.searchParams.set("epoch", this.epoch);
    }
    if (this.types) url.searchParams.set("types", this.types.join(","));
    return url;
  }

  _pickTransport() {
    const ws = this.transports.includes("ws") && typeof globalThis.WebSocket === "function";
    if (ws && !(this._wsFailed && this.transports.includes("sse"))) return "ws";
    return "sse";
  }

  _connect() {
    if (this._stopped) return;
    this._teardown();
    const session = ++this._session;
    this.transport = this._pickTransport();
    this._setState(this.attempt === 0 ? State.CONNECTING : State.RECONNECTING, {});
    const open = this.transport === "ws" ? this._openWebSocket : this._openEventStream;
    open.call(this, session).catch((error) => this._failed(session, { reason: String(error) }));
  }

  _teardown() {
    clearInterval(this._watchdog);
    this._watchdog = null;
    const conn = this._conn;
    this._conn = null;
    if (conn) conn.close();
  }

  /** A connection ended. `opened`: it had reached the hub (else the transport failed). */
  _failed(session, { opened = true, code = 1006, reason = "" } = {}) {
    if (session !== this._session || this._stopped) return;
    this._teardown();
    if (!opened && this.transport === "ws" && this.transports.includes("sse")) {
      this._wsFailed = true; // WebSocket is blocked or broken here: fall back to SSE now
      this._connect();
      return;
    }
    if (!opened && this.transport === "sse") this._wsFailed = false; // both failed: try WS again
    const fatal = FATAL_CLOSE.has(code) || (code === UNAUTHORIZED && typeof this.token !== "function");
    if (fatal) {
      this._stopped = true;
      this._setState(State.CLOSED, { code, reason });
      return;
    }
    const delay = backoffDelay(this.attempt, this.backoffInitial, this.backoffMax);
    this.attempt += 1;
    this._setState(State.RECONNECTING, { code, reason, delay });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay);
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
      this._failed(session, { opened: false, reason: String(error) });
      return;
    }
    let opened = false;
    let lastRx = Date.now();
    let serverClose = null;
    this._conn = { close: () => ws.close() };
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (message) => {
      if (session !== this._session) return;
      lastRx = Date.now();
      const closeCode = this._onText(message.data);
      if (closeCode) serverClose = closeCode;
    };
    ws.onclose = (event) => {
      const code = event.code === 1005 && serverClose ? serverClose : event.code;
      this._failed(session, { opened, code, reason: event.reason });
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
    const controller = new AbortController();
    this._conn = { close: () => controller.abort() };
    const headers = { Accept: "text/event-stream", ...(await this._authHeaders()) };
    let response;
    try {
      response = await fetch(url, { headers, signal: controller.signal, cache: "no-store" });
    } catch (error) {
      this._failed(session, { opened: false, reason: String(error) });
      return;
    }
    if (!response.ok) {
      const code = response.status === 401 ? UNAUTHORIZED : FATAL_HTTP.has(response.status) ? 4400 : 1013;
      this._failed(session, { opened: true, code, reason: `HTTP ${response.status}` });
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
    this._failed(session, { opened: true, code: serverClose ?? 1006 });
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
        this.attempt = 0;
        this._setState(State.OPEN, {});
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
    for (const callback of this._controlHandlers) callback(frame);
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
    for (const { matches, callback } of this._handlers) {
      if (matches(frame.type)) callback(frame);
    }
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
