// The SDK's own `Client`, from the command line, for stepstream's QStash-gateway tests.
//
//   node client.mjs trigger <url> <json body> [label]   prints {"workflowRunId": "wfr_..."}
//   node client.mjs cancel <run id>...                   prints {"cancelled": n}
//
// QSTASH_URL and QSTASH_TOKEN come from the environment, as in any app.

import process from "node:process";

import { Client } from "@upstash/workflow";

const client = new Client({ baseUrl: process.env.QSTASH_URL, token: process.env.QSTASH_TOKEN });
const [command, ...args] = process.argv.slice(2);

if (command === "trigger") {
  const [url, body, label] = args;
  const options = { url, body: JSON.parse(body), headers: { "x-app-header": "kept" } };
  if (label !== undefined) options.label = label;
  console.log(JSON.stringify(await client.trigger(options)));
} else if (command === "cancel") {
  console.log(JSON.stringify(await client.cancel({ ids: args })));
} else {
  console.error(`unknown command '${command}': trigger or cancel`);
  process.exit(2);
}
