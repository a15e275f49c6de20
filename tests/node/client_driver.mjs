// Drives hub/static/hub-client.js in Node for tests/test_js_client_node.py.
//
//   node --experimental-websocket client_driver.mjs '<json config>'
//
// config: {url, project, options, bootstrap}; `options` go to `new HubClient(project, options)`,
// `bootstrap`: call client.bootstrap() before client.start().
// Prints one JSON object per line on stdout: {state, transport, attempt, delay, reason, at},
// {event: seq, epoch}, {snapshot: reason, head, epoch, seqs}, {control: op, reason}. When
// stdin ends it closes the client, prints {done, received, duplicates} and exits.

import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const clientPath = join(here, "..", "..", "hub", "static", "hub-client.js");
const { HubClient } = await import(pathToFileURL(clientPath).href);

const config = JSON.parse(process.argv[2]);
const started = Date.now();
const print = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);

const client = new HubClient(config.project, { url: config.url, ...config.options });
client.onState((state, info) => {
  print({
    state,
    transport: info.transport,
    attempt: info.attempt,
    delay: info.delay ?? null,
    reason: info.reason ?? null,
    at: Date.now() - started,
  });
});
client.on("*", (event) => print({ event: event.seq, epoch: client.epoch }));
client.onSnapshot((events, info) => {
  print({ snapshot: info.reason, head: info.head, epoch: info.epoch, seqs: events.map((e) => e.seq) });
});
client.onControl((frame) => {
  if (frame.op !== "event") print({ control: frame.op, reason: frame.reason ?? null });
});
if (config.bootstrap) {
  const snapshot = await client.bootstrap();
  print({ bootstrap: snapshot.head, epoch: snapshot.epoch });
}
client.start();

process.stdin.resume();
process.stdin.on("end", () => {
  client.close();
  print({ done: true, received: client.received, duplicates: client.duplicates });
  process.exit(0);
});
