// The SDK's own `Client`, from the command line, for stepstream's QStash-gateway tests.
//
//   node client.mjs trigger <url> <json body> [label] [retries] [json options]
//                                                                   prints {"workflowRunId": ...}
//       (options: more of trigger's options, e.g. {"flowControl": {...}, "retryDelay": "..."})
//   node client.mjs cancel <run id>...                             prints {"cancelled": n}
//   node client.mjs cancel-filter <json filter | "all">             prints {"cancelled": n}
//   node client.mjs dlq-list                                       prints {messages, cursor}
//   node client.mjs dlq-resume|dlq-restart <dlq id> [json options]  prints {workflowRunId, ...}
//       (several ids comma-separated: prints [{workflowRunId, ...}]; options: {retries, flowControl})
//   node client.mjs dlq-callback <dlq id>                          prints {workflowRunId, ...}
//   node client.mjs dlq-delete <dlq id>...                         prints {deleted, cursor?}
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
  const [url, body, label, retries, more] = args;
  const options = { url, body: JSON.parse(body), headers: { "x-app-header": "kept" } };
  if (label) options.label = label;
  if (retries) options.retries = Number(retries);
  if (more) Object.assign(options, JSON.parse(more));
  console.log(JSON.stringify(await client.trigger(options)));
} else if (command === "cancel") {
  console.log(JSON.stringify(await client.cancel({ ids: args })));
} else if (command === "cancel-filter") {
  const request = args[0] === "all" ? { all: true } : { filter: JSON.parse(args[0]) };
  console.log(JSON.stringify(await client.cancel(request)));
} else if (command === "dlq-list") {
  console.log(JSON.stringify(await client.dlq.list()));
} else if (command === "dlq-resume" || command === "dlq-restart") {
  const [ids, more] = args;
  const request = { dlqId: ids.includes(",") ? ids.split(",") : ids, ...JSON.parse(more ?? "{}") };
  const dlq = client.dlq;
  const answer = command === "dlq-resume" ? await dlq.resume(request) : await dlq.restart(request);
  console.log(JSON.stringify(answer));
} else if (command === "dlq-callback") {
  console.log(JSON.stringify(await client.dlq.retryFailureFunction({ dlqId: args[0] })));
} else if (command === "dlq-delete") {
  console.log(JSON.stringify(await client.dlq.delete(args)));
} else if (command === "notify") {
  const [eventId, data, workflowRunId] = args;
  console.log(JSON.stringify(await client.notify({ eventId, eventData: JSON.parse(data), workflowRunId })));
} else if (command === "waiters") {
  console.log(JSON.stringify(await client.getWaiters({ eventId: args[0] })));
} else if (command === "logs") {
  console.log(JSON.stringify(await client.logs({ workflowRunId: args[0] })));
} else {
  console.error(`unknown command '${command}': see the top of client.mjs`);
  process.exit(2);
}
