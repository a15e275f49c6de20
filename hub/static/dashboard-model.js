// The dashboard's model: the latest state of each ingest job, agent run and workflow run of
// one view, built from the snapshot and then from events, with a bounded memory: beyond
// `keep` entities of a kind, the oldest finished ones are dropped (with their steps, messages
// and nodes), except the pinned ones (the entity of a detail page).
//
// The event types are those of the demo services (services/events.py): the hub itself knows
// none of them; this page is the one place in hub/ that does.

import { compilePattern } from "/hub-client.js";

export const TERMINAL = new Set(["completed", "succeeded", "failed", "cancelled"]);
export const KEEP = 200; // entities kept per kind (jobs, agent runs, workflow runs)

// The three kinds of entity a card shows: the route name, the id field, how to find the status.
export const KINDS = {
  ingest: { id: "job_id", status: (e) => e.status, key: (id) => `ingest.job/${id}` },
  agent: { id: "run_id", status: (e) => e.status, key: (id) => `agent.run/${id}` },
  workflow: { id: "run_id", status: (e) => e.state, key: (id) => `workflow.run/${id}` },
};

// An id as the services make them (services/events.py `Id`): no `*`, so a key pattern built
// from it matches only that entity.
const ID = /^[A-Za-z0-9._:-]{1,128}$/;

export const isValidId = (id) => typeof id === "string" && ID.test(id);

/** The key patterns of one entity's events (contract A): itself and its parts. */
export function entityKeys(kind, id) {
  if (kind === "ingest") return [`ingest.job/${id}`];
  if (kind === "agent") return [`agent.run/${id}`, `agent.step/${id}/*`, `agent.message/${id}/*`];
  // A workflow's nodes, and the jobs and agent runs its nodes ran (ids `<run>.<node>.<try>`).
  return [
    `workflow.run/${id}`,
    `workflow.node/${id}/*`,
    `ingest.job/${id}.*`,
    `agent.run/${id}.*`,
    `agent.step/${id}.*`,
    `agent.message/${id}.*`,
  ];
}

/** A predicate on event keys for key patterns (null: every event; no key never matches). */
export function keyMatcher(patterns) {
  if (!patterns) return () => true;
  const compiled = patterns.map(compilePattern);
  return (key) => typeof key === "string" && compiled.some((re) => re.test(key));
}

export const created = (entity) => entity?.timings?.created_ms ?? 0;
export const newestFirst = (a, b) => created(b) - created(a);
export const isFinished = (kind, entity) => TERMINAL.has(KINDS[kind].status(entity));

export class Model {
  /** `accepts(key)`: which events belong to this view (the hub filters too, once it can). */
  constructor({ accepts = () => true, keep = KEEP, pinned = [] } = {}) {
    this.accepts = accepts;
    this.keep = keep;
    this.pinned = new Set(pinned); // "kind/id" never dropped
    this.reset();
  }

  reset() {
    this.jobs = new Map(); // job_id -> IngestJob
    this.runs = new Map(); // run_id -> AgentRun
    this.steps = new Map(); // run_id -> Map(index -> AgentStep)
    this.messages = new Map(); // run_id -> Map(message_id -> {role, text, next, done, partial})
    this.workflows = new Map(); // run_id -> WorkflowRun
    this.nodes = new Map(); // run_id -> Map(node_id -> WorkflowNodeState)
    this.revs = new Map(); // "kind/id" -> a number that changes whenever its card must
    this.dropped = 0; // entities dropped by the cap since the last reset
    this.dirty = new Set(["ingest", "agent", "workflow"]);
  }

  entities(kind) {
    return kind === "ingest" ? this.jobs : kind === "agent" ? this.runs : this.workflows;
  }

  rev(kind, id) {
    return this.revs.get(`${kind}/${id}`) ?? 0;
  }

  /** Apply one event; false if it is not of this view or not of a known type. */
  apply(event) {
    if (!this.accepts(event.key)) return false;
    const data = event.data || {};
    const type = event.type;
    if (type.startsWith("ingest.job.")) {
      this.jobs.set(data.job_id, data);
      this._touch("ingest", data.job_id);
    } else if (type.startsWith("agent.run.")) {
      this.runs.set(data.run_id, data);
      this._touch("agent", data.run_id);
    } else if (type === "agent.step.updated") {
      this._child(this.steps, data.run_id).set(data.index, data);
      this._touch("agent", data.run_id);
    } else if (type === "agent.message.appended") {
      this._appendMessage(data);
      this._touch("agent", data.run_id);
    } else if (type === "workflow.run.updated") {
      this.workflows.set(data.run_id, data);
      this._touch("workflow", data.run_id);
    } else if (type === "workflow.node_state.updated") {
      this._child(this.nodes, data.run_id).set(data.node_id, data);
      this._touch("workflow", data.run_id);
    } else {
      return false;
    }
    return true;
  }

  /** Drop the oldest finished entities beyond `keep` per kind, and parts without an entity.
   * Called once a batch of events is applied (parts may come before their entity within a
   * snapshot, never on a live stream). */
  trim() {
    for (const kind of Object.keys(KINDS)) {
      const map = this.entities(kind);
      let excess = map.size - this.keep;
      if (excess <= 0) continue;
      const oldest = [...map.values()].sort((a, b) => created(a) - created(b));
      for (const entity of oldest) {
        if (excess <= 0) break;
        const id = entity[KINDS[kind].id];
        if (!isFinished(kind, entity) || this.pinned.has(`${kind}/${id}`)) continue;
        map.delete(id);
        this.revs.delete(`${kind}/${id}`);
        this.dropped += 1;
        excess -= 1;
        this.dirty.add(kind);
      }
    }
    for (const parts of [this.steps, this.messages]) {
      for (const id of parts.keys()) if (!this.runs.has(id)) parts.delete(id);
    }
    for (const id of this.nodes.keys()) if (!this.workflows.has(id)) this.nodes.delete(id);
  }

  _touch(kind, id) {
    const at = `${kind}/${id}`;
    this.revs.set(at, (this.revs.get(at) ?? 0) + 1);
    this.dirty.add(kind);
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
