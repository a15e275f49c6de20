// A front-end module written against the installed package (@hub/client) and the event types
// `hub codegen ts` generated from the services' catalog (hub-events.d.ts). It must compile
// with `tsc --strict`; every `@ts-expect-error` line must fail (tests/test_typescript.py).

import {
  HubClient,
  SseParser,
  State,
  TRANSPORTS,
  backoffDelay,
  compilePattern,
  typeMatcher,
} from "@hub/client";
import type {
  CloseCode,
  ClientFrame,
  HubClientOptions,
  ServerFrame,
  ServerMessage,
  SnapshotPage,
  Transport,
} from "@hub/client";
import type { ErrorInfo, HubEvent, HubEventMap, IngestJob } from "./hub-events.js";

// No DOM or Node library is loaded (lib ES2022): the package's types must not need one.
declare function show(...values: unknown[]): void;

const options: HubClientOptions = {
  url: "http://127.0.0.1:8080",
  types: ["ingest.job.*", "agent.*", "workflow.*"],
  keys: ["ingest.job/j17"],
  transports: ["ws", "sse", "poll"],
  connectTimeoutMs: 5000,
  pollWaitS: 25,
  healthyAfterMs: 5000,
  token: async () => "a-token",
};
const client = new HubClient<HubEventMap>("demo", options);

export const progress: number[] = [];

client.on("ingest.job.updated", (event) => {
  const job: IngestJob = event.data;
  const same: HubEventMap["ingest.job.updated"] = job;
  const files: number | undefined = same.files_done;
  const type: "ingest.job.updated" = event.type;
  const jobId: string = event.data.job_id; // required
  const fraction: number = event.data.progress ?? 0; // optional: it has a default
  const status: "running" | "completed" | "failed" | "cancelled" | undefined = job.status;
  const error: ErrorInfo | null | undefined = event.data.error;
  const seq: number = event.seq;
  const key: string | null | undefined = event.key;
  progress.push(fraction);
  show(type, jobId, status, error?.kind, seq, key, job.timings?.started_ms, files);
  // @ts-expect-error: progress is a number
  const asText: string = event.data.progress;
  // @ts-expect-error: no such field
  show(asText, event.data.percent);
});

client.on("ingest.job.*", (event) => {
  // Every ingest.job.* type: the union is tagged by `type`, all with an IngestJob payload.
  const source: string = event.data.source;
  if (event.type === "ingest.job.failed") show(source, event.data.error?.message);
});

client.on("agent.*", (event) => {
  switch (event.type) {
    case "agent.step.updated":
      show(event.data.index + 1, event.data.status);
      break;
    case "agent.message.appended":
      show(event.data.message_id, event.data.delta ?? "");
      break;
    default: {
      const agent: string = event.data.agent; // the agent.run.* types
      show(event.type, agent, event.data.usage?.prompt_tokens);
    }
  }
});

client.on("custom.thing.happened", (event) => {
  // Not in the catalog: an untyped event frame.
  const data: unknown = event.data;
  const type: string = event.type;
  show(data, type);
});

client.onSnapshot((events, info) => {
  for (const event of events) {
    if (event.type === "workflow.node_state.updated") {
      const depends: string[] | undefined = event.data.depends_on;
      show(depends, info.head, info.epoch, info.reason);
    }
  }
});

client.onState((state, info) => {
  const transport: Transport | null = info.transport;
  if (state === State.RECONNECTING) show(transport, info.attempt, info.delay, info.code);
});

client.onControl((frame) => {
  switch (frame.op) {
    case "welcome":
      show(frame.epoch, frame.head, frame.heartbeat);
      break;
    case "gap":
      show(frame.reason === "evicted", frame.since);
      break;
    case "error":
      show(frame.code, frame.retryable, frame.close);
      break;
    default:
      show(frame.op);
  }
});

export async function boot(): Promise<number> {
  const page: SnapshotPage<HubEvent> = await client.bootstrap();
  return page.head + page.events.length + (client.seq ?? 0);
}

export function frames(message: ServerMessage): string[] {
  const list: ServerFrame[] = Array.isArray(message) ? message : [message];
  return list.map((frame) => {
    switch (frame.op) {
      case "event":
      case "welcome":
      case "replayed":
      case "gap":
      case "snapshot":
      case "subscribed":
      case "pong":
      case "error":
        return frame.op;
      default: {
        const exhaustive: never = frame;
        return exhaustive;
      }
    }
  });
}

export const subscribe: ClientFrame = { op: "subscribe", types: ["ingest.*"], id: 1 };
export const unauthorized: CloseCode = 4001;
export const current: Transport | null = client.transport;
export const fallbacks: readonly Transport[] = TRANSPORTS.slice(1);
export const matches: boolean = typeMatcher(["agent.*"])("agent.run.created");
export const pattern: RegExp = compilePattern("ingest.*");
export const delay: number = backoffDelay(3, 250, 15000, Math.random);
new SseParser((message) => show(message.event, message.data, message.id)).push("data: 1\n\n");
client.start().close();
