// The Upstash "Workflow + Realtime" guide's Next.js app, on node:http, for stepstream's test of the
// guide's page against an `@upstash/workflow` run.
//
//   node guide.mjs <port>
//
// Routes, as in the guide:
//   POST /api/workflow/basic   the guide's `basic` workflow, served by the SDK's `serve`, its
//                              emit calls removed: stepstream's built-in `workflow.update` events
//                              are all the page gets
//   POST /api/trigger          the guide's trigger route: the SDK's `Client` starts the workflow
//   GET  /api/realtime         the guide's realtime route, here a proxy to stepstream's SSE
//                              endpoint (`STEPSTREAM_URL`) holding the API token server-side
//   GET  /, /guide/main.js     the guide's page and hook, as built by examples/guide/build.sh
//   GET  /healthz              200 once listening
//
// QSTASH_URL (stepstream's /qstash), QSTASH_TOKEN (its API token) and the signing keys come from
// the environment, as in any app. Binds 127.0.0.1 only; prints `listening on <url>`.

import { readFile } from "node:fs/promises";
import http from "node:http";
import process from "node:process";

import { Client } from "@upstash/workflow";
import { serve } from "@upstash/workflow/nextjs";

import { reply, toRequest } from "./http_bridge.mjs";

const PAGE = new URL("../../../examples/guide/dist/", import.meta.url);
const STEPSTREAM_URL = process.env.STEPSTREAM_URL;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The guide's workflow without its emits. Its `start-workflow` step only emitted `runStart`, so
// it is gone (stepstream emits `runStart` itself); the steps after `validate-data` are the ones
// "following the same pattern" that examples/guide_app.py spells out.
const basic = serve(async (context) => {
  const { userId, action } = context.requestPayload;
  const workflowRunId = context.workflowRunId;

  const data = await context.run("validate-data", async () => {
    if (!userId || !action) {
      throw new Error("Missing required fields");
    }
    await sleep(500);
    return { valid: true, userId, action };
  });
  const processed = await context.run("process-data", async () => {
    await sleep(500);
    return { processed: true, ...data };
  });
  await context.run("send-notification", async () => {
    await sleep(300);
    return { notified: processed.userId };
  });

  return { success: true, workflowRunId };
}).POST;

const workflowClient = new Client({
  token: process.env.QSTASH_TOKEN,
  baseUrl: process.env.QSTASH_URL,
});

async function trigger(request) {
  const body = await request.json();
  const workflowUrl = `${new URL(request.url).origin}/api/workflow/${body.workflowType}`;
  const { workflowRunId } = await workflowClient.trigger({
    url: workflowUrl,
    body: { userId: "user-123", action: "process-data" },
  });
  return Response.json({ workflowRunId });
}

function proxyRealtime(incoming, outgoing) {
  const upstream = http.get(
    new URL(incoming.url, STEPSTREAM_URL),
    {
      headers: {
        accept: incoming.headers.accept ?? "text/event-stream",
        authorization: `Bearer ${process.env.QSTASH_TOKEN}`,
      },
    },
    (answer) => {
      outgoing.writeHead(answer.statusCode, answer.headers);
      answer.pipe(outgoing);
    },
  );
  upstream.on("error", () => outgoing.destroy());
  outgoing.on("close", () => upstream.destroy());
}

async function page(path) {
  const [file, type] =
    path === "/guide/main.js" ? ["main.js", "text/javascript"] : ["index.html", "text/html"];
  return new Response(await readFile(new URL(file, PAGE)), { headers: { "content-type": type } });
}


async function route(incoming, outgoing) {
  const { pathname } = new URL(incoming.url, "http://localhost");
  const { method } = incoming;
  if (method === "GET" && pathname === "/api/realtime") return proxyRealtime(incoming, outgoing);
  if (method === "GET" && pathname === "/healthz") return reply(outgoing, new Response("ok"));
  if (method === "GET" && ["/", "/guide/main.js"].includes(pathname)) {
    return reply(outgoing, await page(pathname));
  }
  if (method === "POST" && pathname === "/api/trigger") {
    return reply(outgoing, await trigger(await toRequest(incoming)));
  }
  if (method === "POST" && pathname === "/api/workflow/basic") {
    return reply(outgoing, await basic(await toRequest(incoming)));
  }
  return reply(outgoing, new Response("not found", { status: 404 }));
}

const port = Number(process.argv[2] ?? process.env.PORT ?? 3000);
const server = http.createServer(async (incoming, outgoing) => {
  try {
    await route(incoming, outgoing);
  } catch (error) {
    console.error(error);
    await reply(outgoing, new Response(String(error?.stack ?? error), { status: 500 }));
  }
});
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${port}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
}
