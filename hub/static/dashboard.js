// The live dashboard: one project's ingest jobs, agent runs, workflow DAGs and event log.
// State is rebuilt from the snapshot (on load and after every gap) and then kept by events;
// hub-client.js dedupes by seq, and the log keys its rows by seq, so reconnects repeat nothing.

import { HubClient, State, typeMatcher } from "/hub-client.js";

const MAX_CARDS = 8; // agent and workflow runs shown, newest first
const MAX_JOBS = 20;
const MAX_LOG_ROWS = 5000;
const RATE_WINDOW_MS = 5000;
const TERMINAL = new Set(["completed", "succeeded", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const escapeXml = (text) =>
  String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const percent = (progress) => Math.round(Math.max(0, Math.min(1, progress || 0)) * 100);
const created = (entity) => entity?.timings?.created_ms ?? 0;
const newestFirst = (a, b) => created(b) - created(a);

function duration(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function clock(ts) {
  const d = new Date(ts);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// --- the model: latest state per entity, built from events ---------------------------------

class Model {
  constructor() {
    this.reset();
  }

  reset() {
    this.jobs = new Map(); // job_id -> IngestJob
    this.runs = new Map(); // run_id -> AgentRun
    this.steps = new Map(); // run_id -> Map(index -> AgentStep)
    this.messages = new Map(); // run_id -> Map(message_id -> {role, text, next, done, partial})
    this.workflows = new Map(); // run_id -> WorkflowRun
    this.nodes = new Map(); // run_id -> Map(node_id -> WorkflowNodeState)
    this.dirty = new Set(["ingest", "agents", "workflows"]);
  }

  apply(event) {
    const data = event.data || {};
    const type = event.type;
    if (type.startsWith("ingest.job.")) {
      this.jobs.set(data.job_id, data);
      this.dirty.add("ingest");
    } else if (type.startsWith("agent.run.")) {
      this.runs.set(data.run_id, data);
      this.dirty.add("agents");
    } else if (type === "agent.step.updated") {
      this._child(this.steps, data.run_id).set(data.index, data);
      this.dirty.add("agents");
    } else if (type === "agent.message.appended") {
      this._appendMessage(data);
      this.dirty.add("agents");
    } else if (type === "workflow.run.updated") {
      this.workflows.set(data.run_id, data);
      this.dirty.add("workflows");
    } else if (type === "workflow.node_state.updated") {
      this._child(this.nodes, data.run_id).set(data.node_id, data);
      this.dirty.add("workflows");
    }
  }

  _child(map, key) {
    let child = map.get(key);
    if (!child) map.set(key, (child = new Map()));
    return child;
  }

  _appendMessage(data) {
    const messages = this._child(this.messages, data.run_id);
    let message = messages.get(data.message_id);
    if (!message) {
      message = { role: data.role, text: "", next: 0, done: false, partial: false };
      messages.set(data.message_id, message);
    }
    if (data.done) {
      if (typeof data.text === "string") {
        message.text = data.text; // the last append carries the whole message
        message.partial = false;
      }
      message.done = true;
    } else if (data.index === message.next) {
      message.text += data.delta;
      message.next += 1;
    } else if (data.index > message.next) {
      // Deltas before this one are gone (a snapshot keeps only the latest): say so.
      message.text += `${message.text ? " " : ""}… ${data.delta}`;
      message.partial = true;
      message.next = data.index + 1;
    }
  }
}

// --- rendering ---------------------------------------------------------------------------

function badge(status) {
  return el("span", { class: `badge s-${status}` }, status);
}

function renderIngest(model) {
  const jobs = [...model.jobs.values()].sort(newestFirst).slice(0, MAX_JOBS);
  const rows = jobs.map((job) => {
    const pct = percent(job.progress);
    const skipped = (job.skipped_duplicates || 0) + (job.skipped_files || 0);
    return el(
      "tr",
      { id: `job-${job.job_id}`, "data-job": job.job_id, "data-status": job.status, "data-progress": pct },
      el("td", { class: "mono", title: job.source }, job.job_id),
      el("td", {}, badge(job.status)),
      el(
        "td",
        { class: "wide" },
        el(
          "div",
          { class: "bar", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100 },
          el("div", { class: `fill s-${job.status}`, style: `width:${pct}%` }),
        ),
        el("span", { class: "pct" }, `${pct}%`),
      ),
      el("td", { class: "num" }, `${job.files_done}/${job.total_files}`),
      el("td", { class: "num" }, job.documents),
      el("td", { class: "num" }, job.chunks),
      el("td", { class: "num", title: "duplicates + unreadable files" }, skipped),
    );
  });
  $("jobs").replaceChildren(...rows);
  $("jobs-empty").hidden = model.jobs.size > 0;
  $("ingest-count").textContent = model.jobs.size ? `(${model.jobs.size})` : "";
}

function renderAgents(model) {
  const runs = [...model.runs.values()].sort(newestFirst).slice(0, MAX_CARDS);
  const cards = runs.map((run) => {
    const steps = [...(model.steps.get(run.run_id)?.values() || [])].sort((a, b) => a.index - b.index);
    const messages = [...(model.messages.get(run.run_id)?.values() || [])];
    const tokens = run.usage ? run.usage.prompt_tokens + run.usage.completion_tokens : 0;
    return el(
      "article",
      { class: "card agent", "data-run": run.run_id, "data-status": run.status },
      el(
        "header",
        {},
        el("strong", { class: "mono" }, run.run_id),
        badge(run.status),
        el("span", { class: "meta" }, [run.agent, run.model, tokens ? `${tokens} tokens` : ""].filter(Boolean).join(" · ")),
      ),
      el("p", { class: "question" }, run.input),
      el(
        "ol",
        { class: "steps" },
        steps.map((step) =>
          el(
            "li",
            { "data-status": step.status },
            el("span", { class: `dot s-${step.status}` }),
            el("span", { class: "step-name" }, step.name),
            step.tool ? el("span", { class: "tool mono" }, step.tool) : null,
            el("span", { class: "meta" }, duration(step.duration_ms)),
          ),
        ),
      ),
      messages.map((message) =>
        el(
          "div",
          {
            class: `answer${message.done ? "" : " streaming"}${message.partial ? " partial" : ""}`,
            "data-done": message.done ? "true" : "false",
          },
          el("span", { class: "role" }, message.role),
          el("span", { class: "text" }, message.text),
        ),
      ),
      run.error ? el("p", { class: "error" }, `${run.error.kind}: ${run.error.message}`) : null,
    );
  });
  $("agent-runs").replaceChildren(...cards);
  $("agents-empty").hidden = model.runs.size > 0;
  $("agents-count").textContent = model.runs.size ? `(${model.runs.size})` : "";
}

const NODE_W = 150;
const NODE_H = 46;
const COL_GAP = 46;
const ROW_GAP = 14;

/** Inline SVG of a workflow's DAG: columns by dependency depth, nodes coloured by state. */
function dagSvg(nodes) {
  const byId = new Map(nodes.map((n) => [n.node_id, n]));
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0; // a cycle would be refused by the engine; stay finite anyway
    seen.add(id);
    const deps = (byId.get(id)?.depends_on || []).filter((d) => byId.has(d));
    const value = deps.length ? 1 + Math.max(...deps.map((d) => depthOf(d, seen))) : 0;
    depth.set(id, value);
    return value;
  };
  const columns = [];
  for (const node of nodes) {
    const d = depthOf(node.node_id);
    (columns[d] ||= []).push(node);
  }
  const place = new Map();
  columns.forEach((column, c) =>
    (column || []).forEach((node, r) =>
      place.set(node.node_id, { x: 8 + c * (NODE_W + COL_GAP), y: 8 + r * (NODE_H + ROW_GAP) }),
    ),
  );
  const rows = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const width = 16 + columns.length * NODE_W + Math.max(0, columns.length - 1) * COL_GAP;
  const height = 16 + rows * NODE_H + (rows - 1) * ROW_GAP;
  const edges = [];
  for (const node of nodes) {
    const to = place.get(node.node_id);
    for (const dep of node.depends_on || []) {
      const from = place.get(dep);
      if (!from) continue;
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x;
      const y2 = to.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      edges.push(`<path class="edge" d="M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 4},${y2}" marker-end="url(#arrow)"/>`);
    }
  }
  const boxes = nodes.map((node) => {
    const { x, y } = place.get(node.node_id);
    const attempt = node.attempt > 1 ? ` · try ${node.attempt}/${node.max_attempts}` : "";
    const pct = percent(node.progress);
    return `<g class="node s-${escapeXml(node.state)}" data-node="${escapeXml(node.node_id)}" data-state="${escapeXml(node.state)}" transform="translate(${x},${y})">
      <title>${escapeXml(node.node_id)} (${escapeXml(node.kind)}): ${escapeXml(node.state)}${node.error ? ` - ${escapeXml(node.error.message)}` : ""}</title>
      <rect width="${NODE_W}" height="${NODE_H}" rx="7"/>
      <text x="10" y="19" class="label">${escapeXml(node.node_id)}</text>
      <text x="10" y="35" class="sub">${escapeXml(node.kind)} · ${escapeXml(node.state)}${attempt}</text>
      <rect class="progress" x="0" y="${NODE_H - 4}" width="${(NODE_W * pct) / 100}" height="4" rx="2"/>
    </g>`;
  });
  return `<svg class="dag" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="workflow graph">
    <defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" class="arrowhead"/></marker></defs>
    ${edges.join("")}${boxes.join("")}</svg>`;
}

function renderWorkflows(model) {
  const runs = [...model.workflows.values()].sort(newestFirst).slice(0, MAX_CARDS);
  const cards = runs.map((run) => {
    const nodes = [...(model.nodes.get(run.run_id)?.values() || [])];
    const graph = el("div", { class: "graph" });
    graph.innerHTML = dagSvg(nodes);
    const done = run.nodes_succeeded + run.nodes_failed + run.nodes_skipped + run.nodes_cancelled;
    return el(
      "article",
      { class: "card workflow", "data-run": run.run_id, "data-state": run.state },
      el(
        "header",
        {},
        el("strong", {}, run.workflow),
        badge(run.state),
        el("span", { class: "meta mono" }, run.run_id),
        el("span", { class: "meta" }, `${done}/${run.nodes_total} nodes · ${percent(run.progress)}%`),
      ),
      graph,
      run.error ? el("p", { class: "error" }, `${run.error.kind}: ${run.error.message}`) : null,
    );
  });
  $("workflow-runs").replaceChildren(...cards);
  $("workflows-empty").hidden = model.workflows.size > 0;
  $("workflows-count").textContent = model.workflows.size ? `(${model.workflows.size})` : "";
}

const RENDERERS = { ingest: renderIngest, agents: renderAgents, workflows: renderWorkflows };

// --- the event log -----------------------------------------------------------------------

function summary(event) {
  const d = event.data || {};
  if (event.type === "agent.message.appended") return d.done ? `done (${(d.text || "").length} chars)` : JSON.stringify(d.delta);
  const parts = [];
  const status = d.status || d.state;
  if (status) parts.push(status);
  if (typeof d.progress === "number" && !TERMINAL.has(status)) parts.push(`${percent(d.progress)}%`);
  if (d.name) parts.push(d.name);
  if (d.error) parts.push(d.error.message);
  return parts.join(" · ");
}

/** Filter terms: with `*` a hub type pattern; otherwise text anywhere in the type or key. */
function logFilter(text) {
  const terms = text.split(",").map((t) => t.trim()).filter(Boolean);
  if (!terms.length) return () => true;
  const tests = terms.map((term) => {
    if (term.includes("*")) {
      const matches = typeMatcher([term]);
      return (row) => matches(row.dataset.type);
    }
    const needle = term.toLowerCase();
    return (row) => row.dataset.type.includes(needle) || (row.dataset.key || "").toLowerCase().includes(needle);
  });
  return (row) => tests.some((test) => test(row));
}

class EventLog {
  constructor(tbody, countEl) {
    this.tbody = tbody;
    this.countEl = countEl;
    this.seen = new Set();
    this.rows = 0;
    this.filter = () => true;
  }

  clear() {
    this.seen.clear();
    this.rows = 0;
    this.tbody.replaceChildren();
    this.count();
  }

  add(event) {
    if (this.seen.has(event.seq)) return; // never a duplicated row
    this.seen.add(event.seq);
    const row = el(
      "tr",
      { "data-seq": event.seq, "data-type": event.type, "data-key": event.key || "" },
      el("td", { class: "num mono" }, event.seq),
      el("td", { class: "mono" }, clock(event.ts)),
      el("td", { class: "mono" }, event.type),
      el("td", { class: "mono key" }, event.key || ""),
      el("td", { class: "summary" }, summary(event)),
    );
    row.hidden = !this.filter(row);
    this.tbody.prepend(row);
    this.rows += 1;
    while (this.rows > MAX_LOG_ROWS) {
      const last = this.tbody.lastElementChild;
      if (last.dataset.seq) this.rows -= 1;
      last.remove();
    }
    this.count();
  }

  marker(text) {
    this.tbody.prepend(el("tr", { class: "marker" }, el("td", { colspan: 5 }, text)));
  }

  setFilter(text) {
    this.filter = logFilter(text);
    for (const row of this.tbody.querySelectorAll("tr[data-seq]")) row.hidden = !this.filter(row);
  }

  count() {
    this.countEl.textContent = this.rows ? `(${this.rows})` : "";
  }
}

// --- wiring ------------------------------------------------------------------------------

const model = new Model();
const log = new EventLog($("log-rows"), $("log-count"));
const arrivals = [];
let client = null;
let generation = 0;
let renderQueued = false;

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    for (const section of model.dirty) RENDERERS[section]?.(model);
    model.dirty.clear();
  });
}

function showState(state, info) {
  const conn = $("conn");
  conn.dataset.state = state;
  conn.dataset.transport = info.transport || "";
  const transport = info.transport === "sse" ? "SSE" : info.transport === "ws" ? "WebSocket" : "";
  let text = state;
  if (state === State.OPEN) text = `live · ${transport}`;
  else if (state === State.CONNECTING) text = `connecting · ${transport}`;
  else if (state === State.RECONNECTING) {
    text = info.delay !== undefined ? `reconnecting in ${(info.delay / 1000).toFixed(1)} s` : `reconnecting · ${transport}`;
  } else if (state === State.CLOSED && info.code) text = `closed (${info.code}${info.reason ? `: ${info.reason}` : ""})`;
  conn.textContent = text;
}

function showPosition() {
  $("position").textContent = client && client.seq !== null ? `${client.epoch || "?"}:${client.seq}` : "–";
}

function onEvent(event) {
  model.apply(event);
  log.add(event);
  arrivals.push(performance.now());
  showPosition();
  scheduleRender();
}

function onSnapshot(events, info) {
  model.reset();
  for (const event of events) model.apply(event);
  if (info.reason !== "bootstrap") {
    log.marker(`gap (${info.reason}): state rebuilt from the snapshot at seq ${info.head}`);
  }
  showPosition();
  scheduleRender();
}

function rememberProject(project) {
  try {
    const recent = JSON.parse(localStorage.getItem("hub.projects") || "[]").filter((p) => p !== project);
    recent.unshift(project);
    localStorage.setItem("hub.projects", JSON.stringify(recent.slice(0, 10)));
    $("recent-projects").replaceChildren(...recent.map((p) => el("option", { value: p })));
  } catch {
    // storage disabled: no recent list
  }
}

/** A token from the page's fragment (`#token=...`, kept out of server logs), kept for the tab. */
function accessToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  try {
    if (fromHash) sessionStorage.setItem("hub.token", fromHash);
    return fromHash || sessionStorage.getItem("hub.token") || null;
  } catch {
    return fromHash || null;
  }
}

async function watch(project) {
  const mine = ++generation;
  if (client) client.close();
  model.reset();
  log.clear();
  arrivals.length = 0;
  scheduleRender();
  $("project").value = project;
  document.title = `${project} · Hub dashboard`;
  const url = new URL(location.href);
  url.searchParams.set("project", project);
  history.replaceState(null, "", url);
  rememberProject(project);

  const next = new HubClient(project, { token: accessToken() });
  next.on("*", onEvent);
  next.onSnapshot(onSnapshot);
  next.onState(showState);
  client = next;
  window.hubDashboard.client = next;
  try {
    await next.bootstrap();
  } catch {
    next.seq = 0; // no snapshot now: replay what is retained (or get gap + snapshot)
    next.epoch = null;
  }
  if (mine === generation) next.start();
}

setInterval(() => {
  const cutoff = performance.now() - RATE_WINDOW_MS;
  while (arrivals.length && arrivals[0] < cutoff) arrivals.shift();
  $("rate").textContent = `${(arrivals.length / (RATE_WINDOW_MS / 1000)).toFixed(1)} ev/s`;
}, 1000);

$("project-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const project = $("project").value.trim();
  if (project) watch(project);
});
$("log-filter").addEventListener("input", (e) => log.setFilter(e.target.value));

window.hubDashboard = { model, log, client: null, watch };
watch(new URLSearchParams(location.search).get("project") || "demo");
