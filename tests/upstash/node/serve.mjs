// Serve Upstash Workflow SDK workflows on node:http, for stepstream's QStash-compatibility tests.
//
//   node serve.mjs <workflow|all> <port>      (or PORT in the environment)
//
// `<workflow>` serves that one workflow with the SDK's `serve` on every path; `all` serves every
// workflow below with the SDK's `serveMany`, each at `/<name>` (what `context.invoke` needs).
// The SDK reads QSTASH_URL, QSTASH_TOKEN and, when both are set, QSTASH_CURRENT_SIGNING_KEY /
// QSTASH_NEXT_SIGNING_KEY from the environment, as in any app. Binds 127.0.0.1 only. Prints
// `listening on <url>` once it accepts connections.
//
// `GET /_executions` answers the step bodies run so far in this process, in order, as
// `[{"workflow", "step", "runId"}]`: tests count them to prove a step body ran once.
// `GET /_concurrency` answers `{"max"}`: the most workflow requests this process served at once.
// `GET /_heal` makes the `flaky` workflow's second step succeed from then on (and the `limited`
// workflow's slow step, which fails until then when its payload says `"failUnhealed": true`).

import http from "node:http";
import process from "node:process";

import { WorkflowNonRetryableError, WorkflowRetryAfterError } from "@upstash/workflow";
import { createWorkflow, serve, serveMany } from "@upstash/workflow/nextjs";

import { reply, toRequest } from "./http_bridge.mjs";

const executions = [];
let healed = false;
let inFlight = 0;
let maxInFlight = 0;

function body(workflow, context, step, fn) {
  return context.run(step, async () => {
    executions.push({ workflow, step, runId: context.workflowRunId });
    return await fn();
  });
}

const failureFunction = async ({ context, failStatus, failResponse }) => {
  executions.push({ workflow: "failure", step: "failureFunction", runId: context.workflowRunId });
  const slow = context.requestPayload?.slowFailure; // ms: a failure function that takes a while
  if (slow) await new Promise((resolve) => setTimeout(resolve, slow));
  return `handled ${failStatus}: ${failResponse}`;
};

// Each entry: [route function, serve options].
const WORKFLOWS = {
  "two-step": [
    async (context) => {
      const first = await body("two-step", context, "first", () => ({
        user: context.requestPayload?.user ?? null,
        n: 1,
      }));
      const second = await body("two-step", context, "second", () => `${first.user}-${first.n + 1}`);
      return { first, second };
    },
    {},
  ],
  sleepy: [
    async (context) => {
      await context.sleep("nap", 2);
      await context.sleepUntil("wake", Math.floor(Date.now() / 1000) + 1);
      return await body("sleepy", context, "after", () => "awake");
    },
    {},
  ],
  caller: [
    async (context) => {
      const { url, method = "POST", payload, objectBody = false } = context.requestPayload;
      const response = await context.call("fetch", {
        url,
        method,
        // The SDK's types allow an object: it reaches QStash's batch as an object, not text.
        body: objectBody ? (payload ?? {}) : JSON.stringify(payload ?? {}),
        headers: { "content-type": "application/json", "x-probe": "1" },
      });
      return await body("caller", context, "status", () => response.status);
    },
    {},
  ],
  waiter: [
    async (context) => {
      const { eventId, timeout = "10s" } = context.requestPayload;
      const { eventData, timeout: timedOut } = await context.waitForEvent("wait", eventId, {
        timeout,
      });
      await context.notify("echo", `${eventId}-echo`, { got: eventData }, context.workflowRunId);
      await body("waiter", context, "after", () => "after");
      return { eventData, timedOut };
    },
    {},
  ],
  parallel: [
    async (context) => {
      const results = await Promise.all([
        body("parallel", context, "a", () => "A"),
        body("parallel", context, "b", () => "B"),
        body("parallel", context, "c", () => "C"),
      ]);
      return results.join("");
    },
    {},
  ],
  "parallel-sleeps": [
    async (context) => {
      const until = Math.floor(Date.now() / 1000) + 2;
      const [, , ran] = await Promise.all([
        context.sleep("nap", 1),
        context.sleepUntil("wake", until),
        body("parallel-sleeps", context, "beside", () => "ran"),
        context.notify("poke", "nobody-waits", { n: 1 }),
      ]);
      return await body("parallel-sleeps", context, "after", () => ran);
    },
    {},
  ],
  "parallel-waits": [
    async (context) => {
      const { eventId } = context.requestPayload;
      const [first, second] = await Promise.all([
        context.waitForEvent("first", `${eventId}-1`, { timeout: "20s" }),
        context.waitForEvent("second", `${eventId}-2`, { timeout: "1s" }),
      ]);
      return await body("parallel-waits", context, "after", () => ({ first, second }));
    },
    {},
  ],
  "parallel-calls": [
    async (context) => {
      const { urls } = context.requestPayload;
      const responses = await Promise.all(
        urls.map((url, i) => context.call(`call-${i}`, { url, method: "POST", body: `${i}` })),
      );
      return await body("parallel-calls", context, "after", () =>
        responses.map(({ status, body: answer }) => [status, answer]),
      );
    },
    {},
  ],
  "parallel-sleep-wait": [
    async (context) => {
      const { eventId } = context.requestPayload;
      const [, waited] = await Promise.all([
        context.sleep("nap", 1),
        context.waitForEvent("wait", eventId, { timeout: "30s" }),
      ]);
      return waited.eventData;
    },
    {},
  ],
  "parallel-wait-call": [
    async (context) => {
      const { eventId, url } = context.requestPayload;
      const [waited, called] = await Promise.all([
        context.waitForEvent("wait", eventId, { timeout: "30s" }),
        context.call("call", { url, method: "POST", body: "x" }),
      ]);
      return { eventData: waited.eventData, status: called.status };
    },
    {},
  ],
  failing: [
    async (context) => {
      await body("failing", context, "boom", () => {
        throw new Error("boom failed");
      });
    },
    { failureFunction },
  ],
  flaky: [
    async (context) => {
      const first = await body("flaky", context, "first", () => "one");
      const second = await body("flaky", context, "second", () => {
        if (!healed) throw new Error("not healed yet");
        return "two";
      });
      return `${first}-${second}`;
    },
    { failureFunction },
  ],
  limited: [
    async (context) => {
      const { pause = 500, failUnhealed = false } = context.requestPayload ?? {};
      await body("limited", context, "slow", async () => {
        await new Promise((resolve) => setTimeout(resolve, pause));
        if (failUnhealed && !healed) throw new Error("not healed yet");
        return "slow";
      });
      return await body("limited", context, "fast", () => "fast");
    },
    {},
  ],
  "non-retryable": [
    async (context) => {
      await body("non-retryable", context, "ok", () => "ok");
      throw new WorkflowNonRetryableError("give up");
    },
    { failureFunction },
  ],
  "retry-after": [
    async (context) => {
      await body("retry-after", context, "ok", () => "ok");
      if (context.retried === 0) throw new WorkflowRetryAfterError("later", 2);
      return "retried";
    },
    {},
  ],
  canceller: [
    async (context) => {
      await body("canceller", context, "before", () => "before");
      await context.cancel();
      await body("canceller", context, "never", () => "never");
    },
    {},
  ],
  webhook: [
    async (context) => {
      const webhook = await context.createWebhook("hook");
      const wait = context.requestPayload?.timeout ?? "10s";
      const { request, timeout } = await context.waitForWebhook("hooked", webhook, wait);
      const text = request ? await request.text() : null;
      const header = request?.headers.get("x-hook") ?? null;
      return { timeout, method: request?.method ?? null, body: text, header };
    },
    {},
  ],
};

const child = createWorkflow(async (context) => {
  const doubled = await body("child", context, "double", () => 2 * (context.requestPayload?.n ?? 0));
  return { doubled };
});
const invoker = createWorkflow(async (context) => {
  const { body: result, isFailed, isCanceled } = await context.invoke("invoke-child", {
    workflow: child,
    body: { n: context.requestPayload?.n ?? 21 },
  });
  return { result, isFailed: isFailed ?? false, isCanceled: isCanceled ?? false };
});

const parallelInvoker = createWorkflow(async (context) => {
  const outcomes = await Promise.all(
    [1, 2].map((n) => context.invoke(`invoke-${n}`, { workflow: child, body: { n } })),
  );
  return outcomes.map(({ body: result, isFailed }) => ({ result, isFailed: isFailed ?? false }));
});

function handlerFor(name) {
  if (name === "all") {
    const workflows = Object.fromEntries(
      Object.entries(WORKFLOWS).map(([key, [fn, options]]) => [key, createWorkflow(fn, options)]),
    );
    return serveMany({ ...workflows, child, invoker, "parallel-invoker": parallelInvoker }).POST;
  }
  const entry = WORKFLOWS[name];
  if (entry === undefined) {
    const known = [...Object.keys(WORKFLOWS), "all"].join(", ");
    throw new Error(`unknown workflow '${name}': one of ${known} (invoke needs 'all')`);
  }
  return serve(entry[0], entry[1]).POST;
}


const [name = "all", portArg] = process.argv.slice(2);
const port = Number(portArg ?? process.env.PORT ?? 3000);
const handler = handlerFor(name);

const server = http.createServer(async (incoming, outgoing) => {
  try {
    if (incoming.method === "GET" && incoming.url === "/_executions") {
      await reply(outgoing, Response.json(executions));
    } else if (incoming.method === "GET" && incoming.url === "/_concurrency") {
      await reply(outgoing, Response.json({ max: maxInFlight }));
    } else if (incoming.method === "GET" && incoming.url === "/_heal") {
      healed = true;
      await reply(outgoing, Response.json({ healed }));
    } else if (incoming.method !== "POST") {
      await reply(outgoing, new Response("workflows take POST", { status: 405 }));
    } else {
      inFlight += 1;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        await reply(outgoing, await handler(await toRequest(incoming)));
      } finally {
        inFlight -= 1;
      }
    }
  } catch (error) {
    await reply(outgoing, new Response(String(error?.stack ?? error), { status: 500 }));
  }
});
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${port}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
