// What a person can do from the dashboard: ask a question, start the demo workflow, cancel a
// job or run. Each is one POST to the services' HTTP API (services/api.py) mounted beside the
// hub; a refusal comes back as `ApiError` with the API's own code and message, for the page to
// show.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0: the hub could not be reached
    this.code = code;
  }
}

// The questions `hub demo` asks in its workflows (services/demo.py QUESTIONS), in turn.
const DEMO_QUESTIONS = [
  ["How do we treat varroa mites?", "When does swarm season start and how do we prevent swarms?"],
  ["How much honey does a colony need for winter?", "What should a hive inspection check?"],
  ["What do I do if I get stung?", "Which hive gave the best honey yield?"],
];

/** The demo's workflow (ingest the demo's documents, then two questions), as `hub demo` runs it. */
export function demoWorkflow(turn) {
  const questions = DEMO_QUESTIONS[turn % DEMO_QUESTIONS.length];
  const asks = questions.map((question, i) => ({
    id: `ask-${i + 1}`,
    kind: "agent",
    params: { question },
    depends_on: ["ingest"],
    retries: 1,
    timeout: 60,
  }));
  return {
    name: "ingest-and-ask",
    max_concurrency: 2,
    // "." is the first folder the services may read: the demo's documents under `hub demo`.
    nodes: [{ id: "ingest", kind: "ingest", params: { folder: "." }, retries: 1, timeout: 60 }, ...asks],
  };
}

const CANCEL_PATHS = {
  ingest: (id) => `ingest/jobs/${encodeURIComponent(id)}/cancel`,
  agent: (id) => `agent/runs/${encodeURIComponent(id)}/cancel`,
  workflow: (id) => `workflows/runs/${encodeURIComponent(id)}/cancel`,
};

export class Actions {
  /** `token()`: the page's access token or null (sent as a bearer token). */
  constructor(project, token, base = location.origin) {
    this.project = project;
    this.token = token;
    this.base = base;
    this.workflowTurn = 0;
  }

  /** Start an agent run on `question`; resolves to the run (its events follow on the stream). */
  async ask(question) {
    const body = await this._post("agent/runs", { question });
    return body.run;
  }

  async startDemoWorkflow() {
    const body = await this._post("workflows/runs", demoWorkflow(this.workflowTurn));
    this.workflowTurn += 1;
    return body.run;
  }

  /** Ask for `kind`/`id` to be cancelled; its `cancelled` event follows on the stream. */
  async cancel(kind, id) {
    return this._post(CANCEL_PATHS[kind](id), null);
  }

  async _post(path, payload) {
    const headers = { Accept: "application/json" };
    if (payload !== null) headers["Content-Type"] = "application/json";
    const token = this.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    const url = `${this.base}/v1/projects/${encodeURIComponent(this.project)}/${path}`;
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers,
        body: payload === null ? undefined : JSON.stringify(payload),
        cache: "no-store",
      });
    } catch (error) {
      throw new ApiError(0, "unreachable", `the hub did not answer (${error.message || error})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: a proxy's page, or an empty body
    }
    if (!response.ok) {
      const error = body && typeof body.error === "object" && body.error ? body.error : null;
      if (!error && response.status === 404) {
        throw new ApiError(404, "no_services", "this hub serves no jobs or runs API (`hub demo` mounts the demo's)");
      }
      const message = typeof error?.message === "string" ? error.message : response.statusText;
      throw new ApiError(response.status, String(error?.code || "http_error"), message || `HTTP ${response.status}`);
    }
    return body || {};
  }
}
