// Deliberately wrong uses: each line marked `error TSnnnn` must fail with that error, and no
// other line may fail. If the declarations degraded to `any`, these would compile.

import { HubClient } from "@hub/client";
import type { HubEventMap, IngestJob } from "./hub-events.js";

declare function show(...values: unknown[]): void;

const client = new HubClient<HubEventMap>("demo", { types: ["ingest.job.*"] });

client.on("ingest.job.updated", (event) => {
  const text: string = event.data.progress ?? 0; // error TS2322
  const count: number = event.data.job_id; // error TS2322
  show(text, count, event.data.percent); // error TS2339
});

export const job: IngestJob = { source: "upload" }; // error TS2741
export const status: IngestJob["status"] = "exploded"; // error TS2322
export type Unknown = HubEventMap["ingest.job.exploded"]; // error TS2339
new HubClient("demo", { transports: ["carrier-pigeon"] }); // error TS2322
