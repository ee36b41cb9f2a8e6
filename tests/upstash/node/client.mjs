// The SDK's own `Client`, from the command line, for stepstream's QStash-gateway tests.
//
//   node client.mjs trigger <url> <json body> [label] [retries]   prints {"workflowRunId": ...}
//   node client.mjs cancel <run id>...                             prints {"cancelled": n}
//   node client.mjs notify <event id> <json data> [run id]         prints NotifyResponse[]
//   node client.mjs waiters <event id>                             prints Waiter[]
//   node client.mjs logs <run id>                                  prints {cursor, runs}
//
// QSTASH_URL and QSTASH_TOKEN come from the environment, as in any app.

import process from "node:process";

import { Client } from "@upstash/workflow";

const client = new Client({ baseUrl: process.env.QSTASH_URL, token: process.env.QSTASH_TOKEN });
const [command, ...args] = process.argv.slice(2);

if (command === "trigger") {
  const [url, body, label, retries] = args;
  const options = { url, body: JSON.parse(body), headers: { "x-app-header": "kept" } };
  if (label) options.label = label;
  if (retries !== undefined) options.retries = Number(retries);
  console.log(JSON.stringify(await client.trigger(options)));
} else if (command === "cancel") {
  console.log(JSON.stringify(await client.cancel({ ids: args })));
} else if (command === "notify") {
  const [eventId, data, workflowRunId] = args;
  console.log(JSON.stringify(await client.notify({ eventId, eventData: JSON.parse(data), workflowRunId })));
} else if (command === "waiters") {
  console.log(JSON.stringify(await client.getWaiters({ eventId: args[0] })));
} else if (command === "logs") {
  console.log(JSON.stringify(await client.logs({ workflowRunId: args[0] })));
} else {
  console.error(`unknown command '${command}': trigger, cancel, notify, waiters or logs`);
  process.exit(2);
}
