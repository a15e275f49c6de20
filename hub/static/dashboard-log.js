// The dashboard's event log: the newest events first, at most MAX_LOG_ROWS rows (older rows go,
// and with them their seqs: memory stays bounded however long the page stays open).

import { typeMatcher } from "/hub-client.js";
import { TERMINAL } from "./dashboard-model.js";
import { clock, el, percent } from "./dashboard-dom.js";

export const MAX_LOG_ROWS = 2000;

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

export class EventLog {
  constructor(tbody, countEl, emptyEl, maxRows = MAX_LOG_ROWS) {
    this.tbody = tbody;
    this.countEl = countEl;
    this.emptyEl = emptyEl;
    this.maxRows = maxRows;
    this.seen = new Set(); // seqs of the rows shown: never a duplicated row
    this.filter = () => true;
  }

  clear() {
    this.seen.clear();
    this.tbody.replaceChildren();
    this.count();
  }

  add(event) {
    if (this.seen.has(event.seq)) return;
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
    while (this.seen.size > this.maxRows || this.tbody.childElementCount > this.maxRows + 50) {
      const last = this.tbody.lastElementChild;
      if (last.dataset.seq) this.seen.delete(Number(last.dataset.seq));
      last.remove();
    }
    this.count();
  }

  marker(text) {
    this.tbody.prepend(el("tr", { class: "marker" }, el("td", { colspan: 5 }, text)));
    this.count();
  }

  setFilter(text) {
    this.filter = logFilter(text);
    for (const row of this.tbody.querySelectorAll("tr[data-seq]")) row.hidden = !this.filter(row);
  }

  count() {
    this.countEl.textContent = this.seen.size ? `(${this.seen.size})` : "";
    this.emptyEl.hidden = this.tbody.childElementCount > 0;
  }
}
