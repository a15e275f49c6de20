// The live dashboard: one project's ingest jobs, agent runs, workflow DAGs and event log, and
// a page per job or run (`#/ingest/<id>`, `#/agent/<id>`, `#/workflow/<id>`) that subscribes
// to that entity's keys only. State is rebuilt from the snapshot (on load, on every page and
// after every gap) and then kept by events; hub-client.js dedupes by seq.
//
// What stays bounded however long the page is open: the cards shown (the newest few per
// section, more on demand), the entities kept (dashboard-model.js KEEP per kind) and the log.

import { HubClient, State } from "/hub-client.js";
import { Actions, ApiError } from "./dashboard-actions.js";
import { AgentCard, CARD_OF, JobRow, WorkflowCard } from "./dashboard-cards.js";
import { $, el, KeyedList } from "./dashboard-dom.js";
import { EventLog } from "./dashboard-log.js";
import { entityKeys, isFinished, isValidId, keyMatcher, KINDS, Model, newestFirst } from "./dashboard-model.js";

const RATE_WINDOW_MS = 5000;
const MAX_NOTICES = 4;
const SHOWN = { ingest: 10, agent: 5, workflow: 4 }; // cards per section before "show more"
const LABEL = { ingest: "Ingest job", agent: "Agent run", workflow: "Workflow run" };

// --- the page's route, from its fragment: `#/agent/<id>` (and `?token=...` or `#token=...`) ---

function fragment() {
  const text = location.hash.replace(/^#/, "");
  if (!text.startsWith("/")) return { path: "", query: text };
  const cut = text.indexOf("?");
  return cut < 0 ? { path: text, query: "" } : { path: text.slice(0, cut), query: text.slice(cut + 1) };
}

function currentRoute() {
  const match = /^\/(ingest|agent|workflow)\/(.+)$/.exec(fragment().path);
  if (!match) return null;
  let id = match[2];
  try {
    id = decodeURIComponent(id);
  } catch {
    // left as written: isValidId refuses it
  }
  return { kind: match[1], id };
}

/** A token from the page's fragment (kept out of server logs), kept for the tab. */
function accessToken() {
  const fromHash = new URLSearchParams(fragment().query).get("token");
  try {
    if (fromHash) sessionStorage.setItem("hub.token", fromHash);
    return fromHash || sessionStorage.getItem("hub.token") || null;
  } catch {
    return fromHash || null;
  }
}

// --- what the person chose: expanded cards, cancels under way, how many cards shown ---------

const ui = {
  chosen: new Map(), // "kind/id" -> expanded (true/false), when the person toggled it
  cancels: new Set(), // "kind/id" whose cancel was asked
  shown: { ...SHOWN },

  expanded(kind, id, entity) {
    return this.chosen.get(`${kind}/${id}`) ?? !isFinished(kind, entity); // finished: collapsed
  },
  toggle(kind, id) {
    const entity = view.model.entities(kind).get(id);
    if (entity) this.chosen.set(`${kind}/${id}`, !this.expanded(kind, id, entity));
    changed(kind);
  },
  cancelling(kind, id) {
    return this.cancels.has(`${kind}/${id}`);
  },
  async cancel(kind, id) {
    const at = `${kind}/${id}`;
    if (this.cancels.has(at)) return;
    this.cancels.add(at);
    changed(kind);
    try {
      await view.actions.cancel(kind, id);
    } catch (error) {
      this.cancels.delete(at);
      changed(kind);
      notify(`Cancel ${LABEL[kind].toLowerCase()} ${id}`, error);
    }
  },
  /** Forget choices about entities the model no longer holds (bounded memory). */
  prune(model) {
    for (const at of [...this.chosen.keys(), ...this.cancels]) {
      const [kind, id] = [at.slice(0, at.indexOf("/")), at.slice(at.indexOf("/") + 1)];
      const entity = model.entities(kind).get(id);
      if (!entity) this.chosen.delete(at);
      if (!entity || isFinished(kind, entity)) this.cancels.delete(at);
    }
  },
};

// --- notices: what the API refused, on the page --------------------------------------------

function notify(what, error) {
  const detail =
    error instanceof ApiError
      ? `${error.message}${error.status ? ` (HTTP ${error.status} ${error.code})` : ""}`
      : String(error?.message || error);
  const dismiss = el("button", { type: "button", class: "dismiss", "aria-label": "dismiss" }, "×");
  const notice = el("div", { class: "notice", "data-code": error?.code || "error" }, el("strong", {}, `${what}: `), detail, dismiss);
  dismiss.addEventListener("click", () => notice.remove());
  const box = $("notices");
  box.prepend(notice);
  while (box.childElementCount > MAX_NOTICES) box.lastElementChild.remove();
}

// --- rendering ---------------------------------------------------------------------------

const SECTIONS = {
  ingest: { list: new KeyedList($("jobs"), (id) => new JobRow(id)), count: "ingest-count", empty: "jobs-empty" },
  agent: { list: new KeyedList($("agent-runs"), (id) => new AgentCard(id)), count: "agents-count", empty: "agents-empty" },
  workflow: { list: new KeyedList($("workflow-runs"), (id) => new WorkflowCard(id)), count: "workflows-count", empty: "workflows-empty" },
};
const DETAIL = {
  main: null, // a KeyedList of the route's kind, made per page
  ingest: new KeyedList($("detail-jobs"), (id) => new CARD_OF.ingest(id)),
  agent: new KeyedList($("detail-agents"), (id) => new CARD_OF.agent(id)),
};

function renderSection(kind) {
  const { list, count, empty } = SECTIONS[kind];
  // Running ones first (what can still be cancelled never hides behind "show more"), then newest.
  const all = [...view.model.entities(kind).values()].sort(
    (a, b) => isFinished(kind, a) - isFinished(kind, b) || newestFirst(a, b),
  );
  const limit = ui.shown[kind];
  list.render(all.slice(0, limit), (entity) => entity[KINDS[kind].id], { model: view.model, ui, detail: false });
  $(empty).hidden = all.length > 0;
  $(count).textContent = all.length > limit ? `(${limit} of ${all.length})` : all.length ? `(${all.length})` : "";
  const rest = all.length - limit;
  const more = $(`${kind}-more`);
  more.hidden = rest <= 0;
  more.textContent = `Show ${Math.min(SHOWN[kind], rest)} more (${rest} older)`;
  $(`${kind}-fewer`).hidden = limit <= SHOWN[kind];
}

function renderDetail() {
  const { kind, id } = view.route;
  const model = view.model;
  const entity = model.entities(kind).get(id);
  const missing = $("detail-missing");
  missing.hidden = Boolean(entity);
  if (!isValidId(id)) missing.textContent = `"${id.slice(0, 200)}" is not an id of a ${LABEL[kind].toLowerCase()}.`;
  else if (!view.loaded) missing.textContent = "Loading…";
  else missing.textContent = `No ${LABEL[kind].toLowerCase()} ${id} in project ${view.project} (yet): it shows here as soon as it has an event.`;
  DETAIL.main.render(entity ? [entity] : [], () => id, { model, ui, detail: true });
  // A workflow's page also shows the jobs and agent runs its nodes ran.
  for (const child of ["ingest", "agent"]) {
    const items = kind === "workflow" ? [...model.entities(child).values()].sort((a, b) => -newestFirst(a, b)) : [];
    DETAIL[child].render(items, (e) => e[KINDS[child].id], { model, ui, detail: false });
    $(`detail-${child === "ingest" ? "jobs" : "agents"}-title`).hidden = items.length === 0;
  }
}

let renderQueued = false;

function changed(kind) {
  view.model.dirty.add(kind);
  scheduleRender();
}

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const model = view.model;
    model.trim();
    ui.prune(model);
    if (view.route) {
      if (model.dirty.size) renderDetail();
    } else {
      for (const kind of model.dirty) if (SECTIONS[kind]) renderSection(kind);
    }
    model.dirty.clear();
  });
}

// --- wiring ------------------------------------------------------------------------------

const log = new EventLog($("log-rows"), $("log-count"), $("log-empty"));
const arrivals = [];
let view = { project: null, route: null, model: new Model(), client: null, actions: null, loaded: false };
let generation = 0;

function showState(state, info) {
  const conn = $("conn");
  conn.dataset.state = state;
  conn.dataset.transport = info.transport || "";
  const transport = { ws: "WebSocket", sse: "SSE", poll: "long-poll" }[info.transport] || "";
  let text = state;
  if (state === State.OPEN) text = `live · ${transport}`;
  else if (state === State.CONNECTING) text = `connecting · ${transport}`;
  else if (state === State.RECONNECTING) {
    text = info.delay !== undefined ? `reconnecting in ${(info.delay / 1000).toFixed(1)} s` : `reconnecting · ${transport}`;
  } else if (state === State.CLOSED && info.code) text = `closed (${info.code}${info.reason ? `: ${info.reason}` : ""})`;
  conn.textContent = text;
}

function showPosition() {
  const client = view.client;
  $("position").textContent = client && client.seq !== null ? `${client.epoch || "?"}:${client.seq}` : "–";
}

function onEvent(event) {
  if (!view.model.accepts(event.key)) return; // another entity's (a hub without `keys`)
  view.model.apply(event);
  if (view.model.jobs.size + view.model.runs.size + view.model.workflows.size > 3 * view.model.keep + 60) {
    view.model.trim(); // a hidden tab renders nothing: keep memory bounded anyway
  }
  log.add(event);
  arrivals.push(performance.now());
  showPosition();
  scheduleRender();
}

function onSnapshot(events, info) {
  const model = view.model;
  model.reset();
  for (const event of events) model.apply(event);
  view.loaded = true;
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

function showPage(route) {
  $("detail").hidden = !route;
  document.querySelector("main").dataset.page = route ? "detail" : "overview";
  for (const id of ["ingest", "workflows", "agents"]) $(id).hidden = Boolean(route);
  if (route) {
    $("detail-title").textContent = `${LABEL[route.kind]} ${route.id.slice(0, 128)}`;
    DETAIL.main = new KeyedList($("detail-main"), (id) => new CARD_OF[route.kind](id));
    $("detail-main").replaceChildren();
  }
}

/** Watch `project`: the overview, or one entity's page when the fragment names one. */
async function watch(project) {
  const mine = ++generation;
  view.client?.close();
  const route = currentRoute();
  const valid = !route || isValidId(route.id);
  // On an entity's page, only its keys: the hub filters (contract A); so does the model, for
  // a hub that does not know `keys` yet.
  const keys = route && valid ? entityKeys(route.kind, route.id) : null;
  const model = new Model({ accepts: keyMatcher(keys), pinned: route ? [`${route.kind}/${route.id}`] : [] });
  view = { project, route, model, client: null, actions: new Actions(project, accessToken), loaded: false, keys };
  for (const section of Object.values(SECTIONS)) section.list.render([], () => "", {});
  for (const kind of ["ingest", "agent"]) DETAIL[kind].render([], () => "", {});
  ui.shown = { ...SHOWN };
  showPage(route);
  log.clear();
  arrivals.length = 0;
  scheduleRender();
  $("project").value = project;
  document.title = route ? `${route.kind} ${route.id.slice(0, 60)} · ${project} · Hub` : `${project} · Hub dashboard`;
  const url = new URL(location.href);
  url.searchParams.set("project", project);
  history.replaceState(null, "", url);
  rememberProject(project);
  if (!valid) return;

  const next = new HubClient(project, keys ? { token: accessToken(), keys } : { token: accessToken() });
  next.on("*", onEvent);
  next.onSnapshot(onSnapshot);
  next.onState(showState);
  view.client = next;
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

/** Run `work` with `buttons` disabled; show what the API refused. */
async function act(what, buttons, work) {
  for (const button of buttons) button.disabled = true;
  try {
    await work();
  } catch (error) {
    notify(what, error);
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}

$("ask-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("ask-question");
  const question = input.value.trim();
  if (!question) return;
  act("Ask a question", [$("ask-submit")], async () => {
    await view.actions.ask(question);
    input.value = ""; // the run's card comes with its first event
  });
});
$("start-workflow").addEventListener("click", (e) =>
  act("Start the demo workflow", [e.currentTarget], () => view.actions.startDemoWorkflow()),
);
for (const kind of Object.keys(SHOWN)) {
  $(`${kind}-more`).addEventListener("click", () => {
    ui.shown[kind] += SHOWN[kind];
    changed(kind);
  });
  $(`${kind}-fewer`).addEventListener("click", () => {
    ui.shown[kind] = SHOWN[kind];
    changed(kind);
  });
}
$("project-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const project = $("project").value.trim();
  if (project) watch(project);
});
$("log-filter").addEventListener("input", (e) => log.setFilter(e.target.value));
window.addEventListener("hashchange", () => {
  const route = currentRoute();
  const same = route && view.route ? route.kind === view.route.kind && route.id === view.route.id : route === view.route;
  if (!same) watch(view.project);
});

window.hubDashboard = {
  get model() {
    return view.model;
  },
  get client() {
    return view.client;
  },
  get view() {
    return view;
  },
  log,
  watch,
};
watch(new URLSearchParams(location.search).get("project") || "demo");
