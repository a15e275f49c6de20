// The dashboard's cards: an ingest job (a table row, or a card on its own page), an agent run
// and a workflow run. Each view is built once per entity and updated in place: its header
// (status, cancel button) on every change, its body only when the entity changed.
//
// `ctx` given to update(): {model, ui, detail}; `ui` holds what the person chose:
// ui.expanded(kind, id, entity) -> bool, ui.toggle(kind, id), ui.cancelling(kind, id) -> bool,
// ui.cancel(kind, id).

import { isFinished } from "./dashboard-model.js";
import { badge, duration, el, escapeXml, percent, setAttrs, setText, updateBadge } from "./dashboard-dom.js";

const pageOf = (kind, id) => `#/${kind}/${encodeURIComponent(id)}`;

/** The link to an entity's page from an event key (`agent.run/<id>`, `ingest.job/<id>`). */
function linkOfKey(key) {
  const [prefix, id] = [key.slice(0, key.indexOf("/")), key.slice(key.indexOf("/") + 1)];
  const kind = { "agent.run": "agent", "ingest.job": "ingest", "workflow.run": "workflow" }[prefix];
  return kind && id ? el("a", { class: "mono", href: pageOf(kind, id) }, id) : el("span", { class: "mono" }, key);
}

function progressBar(pct, status) {
  return el(
    "div",
    { class: "bar", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100 },
    el("div", { class: `fill s-${status}`, style: `width:${pct}%` }),
  );
}

/** The header every card shares: expand toggle, link to its page, status, meta, cancel. */
class CardHead {
  constructor(kind, id, title) {
    this.kind = kind;
    this.id = id;
    this.toggle = el("button", { type: "button", class: "toggle", "aria-label": "show or hide the details" });
    this.link = el("a", { class: "title", href: pageOf(kind, id) }, title);
    this.status = el("span", { class: "badge" });
    this.meta = el("span", { class: "meta" });
    this.cancel = el("button", { type: "button", class: "cancel", "data-action": "cancel" }, "Cancel");
    this.root = el("header", {}, this.toggle, this.link, this.status, this.meta, this.cancel);
    this._ctx = null;
    this.toggle.addEventListener("click", () => this._ctx?.ui.toggle(kind, id));
    this.cancel.addEventListener("click", () => this._ctx?.ui.cancel(kind, id));
  }

  update(status, meta, expanded, finished, ctx) {
    this._ctx = ctx;
    updateBadge(this.status, status);
    setText(this.meta, meta);
    this.toggle.hidden = ctx.detail;
    setAttrs(this.toggle, { "aria-expanded": expanded ? "true" : "false" });
    setText(this.toggle, expanded ? "▾" : "▸");
    this.cancel.hidden = finished; // nothing to cancel once it ended
    const cancelling = !finished && ctx.ui.cancelling(this.kind, this.id);
    this.cancel.disabled = cancelling;
    setText(this.cancel, cancelling ? "Cancelling…" : "Cancel");
  }
}

/** A card: head, an always-shown line, and a body built again only when something changed. */
class Card {
  constructor(kind, id, cls, title) {
    this.kind = kind;
    this.id = id;
    this.head = new CardHead(kind, id, title);
    this.line = el("p", { class: "line" });
    this.body = el("div", { class: "body" });
    this.root = el("article", { class: `card ${cls}` }, this.head.root, this.line, this.body);
    this._built = null; // what the body was built from: rev, expanded, detail
  }

  update(entity, ctx, { status, meta, line, attrs }) {
    const finished = isFinished(this.kind, entity);
    const expanded = ctx.detail || ctx.ui.expanded(this.kind, this.id, entity);
    setAttrs(this.root, { ...attrs, "data-expanded": expanded ? "true" : "false" });
    this.head.update(status, meta, expanded, finished, ctx);
    setText(this.line, line);
    this.line.hidden = !line;
    this.body.hidden = !expanded;
    const built = `${ctx.model.rev(this.kind, this.id)}/${expanded}/${ctx.detail}`;
    if (built !== this._built) {
      this._built = built;
      // A collapsed card keeps its body (bounded: only the shown cards exist), hidden.
      this.body.replaceChildren(...this.content(entity, ctx).flat(Infinity).filter(Boolean));
    }
  }
}

// --- ingest ------------------------------------------------------------------------------

/** A job as a row of the overview's table. */
export class JobRow {
  constructor(id) {
    this.kind = "ingest";
    this.id = id;
    this.head = new CardHead("ingest", id, id);
    this.head.link.classList.add("mono");
    this.bar = progressBar(0, "running");
    this.pct = el("span", { class: "pct" });
    this.cells = { files: el("td", { class: "num" }), docs: el("td", { class: "num" }), chunks: el("td", { class: "num" }) };
    this.skipped = el("td", { class: "num", title: "duplicates + unreadable files" });
    this.root = el(
      "tr",
      { class: "job-row" },
      el("td", {}, this.head.link),
      el("td", {}, this.head.status),
      el("td", { class: "wide" }, this.bar, this.pct),
      this.cells.files,
      this.cells.docs,
      this.cells.chunks,
      this.skipped,
      el("td", { class: "actions" }, this.head.cancel),
    );
  }

  update(job, ctx) {
    const pct = percent(job.progress);
    setAttrs(this.root, { "data-job": job.job_id, "data-status": job.status, "data-progress": pct });
    this.head.update(job.status, "", false, isFinished("ingest", job), ctx);
    this.head.link.title = job.source || "";
    const fill = this.bar.firstChild;
    fill.className = `fill s-${job.status}`;
    fill.style.width = `${pct}%`;
    this.bar.setAttribute("aria-valuenow", pct);
    setText(this.pct, `${pct}%`);
    setText(this.cells.files, `${job.files_done ?? 0}/${job.total_files ?? 0}`);
    setText(this.cells.docs, job.documents ?? 0);
    setText(this.cells.chunks, job.chunks ?? 0);
    setText(this.skipped, (job.skipped_duplicates || 0) + (job.skipped_files || 0));
  }
}

/** A job on its own page (or under its workflow): everything its events say. */
export class JobCard extends Card {
  constructor(id) {
    super("ingest", id, "job", id);
    this.head.link.classList.add("mono");
  }

  update(job, ctx) {
    super.update(job, ctx, {
      status: job.status,
      meta: `${percent(job.progress)}% · ${job.files_done ?? 0}/${job.total_files ?? 0} files`,
      line: job.source ? `source: ${job.source}` : "",
      attrs: { "data-job": job.job_id, "data-status": job.status, "data-progress": percent(job.progress) },
    });
  }

  content(job) {
    const t = job.timings || {};
    const facts = [
      ["documents", job.documents],
      ["chunks", job.chunks],
      ["bytes", job.bytes],
      ["duplicates skipped", job.skipped_duplicates],
      ["files skipped", job.skipped_files],
      ["duration", duration(t.duration_ms)],
    ].filter(([, v]) => v !== undefined && v !== "");
    return [
      el("div", { class: "progress-line" }, progressBar(percent(job.progress), job.status), el("span", { class: "pct" }, `${percent(job.progress)}%`)),
      el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", { class: "num" }, v)])),
      job.file_errors?.length
        ? el("ul", { class: "file-errors" }, job.file_errors.map((f) => el("li", {}, el("span", { class: "mono" }, f.name), ` ${f.kind}: ${f.message}`)))
        : null,
      job.error ? el("p", { class: "error" }, `${job.error.kind}: ${job.error.message}`) : null,
    ];
  }
}

// --- agent -------------------------------------------------------------------------------

export class AgentCard extends Card {
  constructor(id) {
    super("agent", id, "agent", id);
    this.head.link.classList.add("mono");
  }

  update(run, ctx) {
    const tokens = run.usage ? run.usage.prompt_tokens + run.usage.completion_tokens : 0;
    super.update(run, ctx, {
      status: run.status,
      meta: [run.agent, run.model, tokens ? `${tokens} tokens` : ""].filter(Boolean).join(" · "),
      line: run.input,
      attrs: { "data-run": run.run_id, "data-status": run.status },
    });
  }

  content(run, ctx) {
    const steps = [...(ctx.model.steps.get(run.run_id)?.values() || [])].sort((a, b) => a.index - b.index);
    const messages = [...(ctx.model.messages.get(run.run_id)?.values() || [])];
    return [
      el(
        "ol",
        { class: ctx.detail ? "steps detail" : "steps" },
        steps.map((step) =>
          el(
            "li",
            { "data-status": step.status },
            el("span", { class: `dot s-${step.status}` }),
            el("span", { class: "step-name" }, step.name),
            step.tool ? el("span", { class: "tool mono" }, step.tool) : null,
            el("span", { class: "meta" }, duration(step.duration_ms)),
            ctx.detail && step.output_excerpt ? el("span", { class: "excerpt" }, step.output_excerpt) : null,
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
    ];
  }
}

// --- workflow ----------------------------------------------------------------------------

const NODE_W = 150;
const NODE_H = 46;
const COL_GAP = 46;
const ROW_GAP = 14;

/** Inline SVG of a workflow's DAG: columns by dependency depth, nodes coloured by state. */
export function dagSvg(nodes) {
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

export class WorkflowCard extends Card {
  constructor(id) {
    super("workflow", id, "workflow", id);
  }

  update(run, ctx) {
    const done = run.nodes_succeeded + run.nodes_failed + run.nodes_skipped + run.nodes_cancelled;
    setText(this.head.link, run.workflow || this.id);
    super.update(run, ctx, {
      status: run.state,
      meta: `${this.id} · ${done || 0}/${run.nodes_total ?? 0} nodes · ${percent(run.progress)}%`,
      line: "",
      attrs: { "data-run": run.run_id, "data-state": run.state },
    });
  }

  content(run, ctx) {
    const nodes = [...(ctx.model.nodes.get(run.run_id)?.values() || [])];
    const graph = el("div", { class: "graph" });
    graph.innerHTML = dagSvg(nodes);
    const table = ctx.detail
      ? el(
          "table",
          { class: "nodes" },
          el("thead", {}, el("tr", {}, ["node", "kind", "state", "try", "progress", "took", "output", "error"].map((h) => el("th", {}, h)))),
          el(
            "tbody",
            {},
            nodes.map((n) =>
              el(
                "tr",
                { "data-node": n.node_id, "data-state": n.state },
                el("td", { class: "mono" }, n.node_id),
                el("td", {}, n.kind),
                el("td", {}, badge(n.state)),
                el("td", { class: "num" }, `${n.attempt}/${n.max_attempts}`),
                el("td", { class: "num" }, `${percent(n.progress)}%`),
                el("td", { class: "num" }, duration(n.timings?.duration_ms)),
                el("td", {}, n.output_ref ? linkOfKey(n.output_ref) : ""),
                el("td", { class: "error" }, n.error ? `${n.error.kind}: ${n.error.message}` : ""),
              ),
            ),
          ),
        )
      : null;
    return [graph, table, run.error ? el("p", { class: "error" }, `${run.error.kind}: ${run.error.message}`) : null];
  }
}

export const CARD_OF = { ingest: JobCard, agent: AgentCard, workflow: WorkflowCard };
