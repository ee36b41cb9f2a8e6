/**
 * The stepstream dashboard: runs list (`#/`), one run live (`#/runs/<id>`), trigger / cancel /
 * notify. Plain ES module, no dependencies beyond `/static/stepstream.js`.
 *
 * - The runs list polls `GET /api/runs` every 2 s (robust: it sees runs however they were
 *   started) and, for the running rows on screen, also subscribes to their channels so a state
 *   change and the current step show up at once.
 * - The run page reads `GET /api/runs/<id>` for payload / result / error and subscribes to the
 *   run's channel with `history: true`: the step timeline and the event log are built from the
 *   `workflow.update` events, every one exactly once, so a reload mid-run loses nothing.
 */

import { subscribe } from "/static/stepstream.js";

const POLL_MS = 2000;
const TICK_MS = 200;
const LIST_SUBSCRIPTION_MAX = 25;
const STATE_LABELS = {
  RUN_STARTED: "Running",
  RUN_SUCCESS: "Succeeded",
  RUN_FAILED: "Failed",
  RUN_CANCELED: "Canceled",
};
const TYPE_LABELS = { Run: "run", SleepFor: "sleep", SleepUntil: "sleep", Wait: "wait", Call: "call", Invoke: "invoke" };
const FINISH_STATES = { success: "RUN_SUCCESS", failed: "RUN_FAILED", canceled: "RUN_CANCELED" };

const $ = (id) => document.getElementById(id);

/** Build an element: `h("span", {class: "x", dataset: {a: 1}}, "text", child)`. Never innerHTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// ---------------------------------------------------------------------------------------------
// formatting

function formatDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  ms = Math.max(0, ms);
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

function sameDay(a, b) {
  return a.toDateString() === b.toDateString();
}

function formatTime(ms, { millis = false } = {}) {
  if (!ms) return "—";
  const date = new Date(ms);
  const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const withMs = millis ? `${time}.${String(date.getMilliseconds()).padStart(3, "0")}` : time;
  if (sameDay(date, new Date())) return withMs;
  return `${date.toLocaleDateString(undefined, { month: "short", day: "numeric" })}, ${withMs}`;
}

function formatRelative(ms) {
  if (!ms) return "—";
  const delta = Date.now() - ms;
  if (delta < 5_000) return "just now";
  if (delta < 60_000) return `${Math.floor(delta / 1000)}s ago`;
  if (delta < 3_600_000) return `${Math.floor(delta / 60_000)}m ago`;
  if (delta < 86_400_000) return `${Math.floor(delta / 3_600_000)}h ago`;
  return new Date(ms).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

function fullDate(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

/** Pretty JSON as highlighted spans (text nodes only, so any value is safe to show). */
function jsonInto(pre, value, placeholder = "—") {
  pre.replaceChildren();
  if (value === undefined) {
    pre.append(h("span", { class: "placeholder" }, placeholder));
    return;
  }
  const text = JSON.stringify(value, null, 2) ?? String(value);
  const token = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (const match of text.matchAll(token)) {
    if (match.index > last) pre.append(text.slice(last, match.index));
    const kind = match[1] ? (match[2] ? "k" : "s") : match[3] ? "b" : "n";
    pre.append(h("span", { class: kind }, match[1] ?? match[0]));
    if (match[2]) pre.append(match[2]);
    last = match.index + match[0].length;
  }
  pre.append(text.slice(last));
}

function compactJson(value) {
  if (value === undefined) return "";
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// With STEPSTREAM_TOKEN set on the server, the API wants "Authorization: Bearer <token>". The
// dashboard asks for it once (on the first 401) and keeps it in this browser's localStorage.
const TOKEN_KEY = "stepstream.apiToken";

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** fetch() with the stored API token; on 401 ask for a token once and retry. */
async function authorizedFetch(path, init = {}) {
  const send = () => fetch(path, { ...init, headers: { ...(init.headers ?? {}), ...authHeaders() } });
  let response = await send();
  if (response.status === 401) {
    const token = window.prompt("This stepstream server needs its API token (STEPSTREAM_TOKEN):");
    if (token) {
      localStorage.setItem(TOKEN_KEY, token.trim());
      response = await send();
    }
  }
  return response;
}

/** The SSE endpoint for `channels`, with a subscription token scoped to them (EventSource
 * cannot send an Authorization header; a server without STEPSTREAM_TOKEN ignores it). */
async function realtimeUrl(channels) {
  const minted = await api("POST", "/api/realtime/token", JSON.stringify({ channels, ttl: 86400 }));
  return `/api/realtime?token=${encodeURIComponent(minted.token)}`;
}

async function api(method, path, body) {
  const init = { method, headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = body;
  }
  let response;
  try {
    response = await authorizedFetch(path, init);
  } catch (error) {
    throw new ApiError(`cannot reach the server (${error.message})`, 0, "network");
  }
  let data = null;
  const text = await response.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data?.error?.message ?? `${response.status} ${response.statusText || "error"}`;
    throw new ApiError(message, response.status, data?.error?.code ?? "http_error");
  }
  return data;
}

/** Parse a JSON textarea: `{ok, value}` (blank means no payload) or `{ok: false, message}`. */
function parseJsonField(text) {
  if (!text.trim()) return { ok: true, value: undefined };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (error) {
    return { ok: false, message: error.message };
  }
}

// ---------------------------------------------------------------------------------------------
// routing

function currentRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const match = /^\/runs\/([^/]+)$/.exec(path);
  if (match) return { view: "run", runId: decodeURIComponent(match[1]) };
  return { view: "runs", params: new URLSearchParams(query) };
}

function runHref(id) {
  return `#/runs/${encodeURIComponent(id)}`;
}

let active = null; // the view being shown: {name, leave()}

function route() {
  active?.leave();
  const target = currentRoute();
  for (const id of ["runs-view", "run-view", "notfound-view"]) $(id).hidden = true;
  $("api-error").hidden = true;
  active = target.view === "run" ? showRun(target.runId) : showRuns(target.params);
}

function setCrumbs(...items) {
  const crumbs = $("crumbs");
  crumbs.replaceChildren();
  items.forEach((item, i) => {
    if (i) crumbs.append(h("span", { class: "sep" }, "/"));
    crumbs.append(item);
  });
}

// ---------------------------------------------------------------------------------------------
// workflows (for the trigger form and the filter)

let workflowNames = null;

async function loadWorkflows() {
  if (workflowNames) return workflowNames;
  try {
    workflowNames = (await api("GET", "/api/workflows")).workflows ?? [];
  } catch (error) {
    showApiError(`Could not load workflows: ${error.message}`);
    return []; // not cached: the next call tries again
  }
  const filter = $("filter-workflow");
  const chosen = filter.value;
  filter.replaceChildren(h("option", { value: "" }, "All workflows"));
  const select = $("trigger-workflow");
  select.replaceChildren();
  for (const name of workflowNames) {
    filter.append(h("option", { value: name }, name));
    select.append(h("option", { value: name }, name));
  }
  filter.value = chosen;
  return workflowNames;
}

function showApiError(message) {
  const banner = $("api-error");
  banner.textContent = message;
  banner.hidden = !message;
}

// ---------------------------------------------------------------------------------------------
// runs list

function showRuns(params) {
  const state = params.get("state") ?? "";
  const workflow = params.get("workflow") ?? "";
  $("runs-view").hidden = false;
  document.title = "Runs · stepstream";
  setCrumbs(h("span", { class: "current-page" }, "Runs"));

  const stateSelect = $("filter-state");
  const workflowSelect = $("filter-workflow");
  stateSelect.value = state;
  loadWorkflows().then(() => {
    if (workflow && ![...workflowSelect.options].some((o) => o.value === workflow)) {
      workflowSelect.append(h("option", { value: workflow }, workflow));
    }
    workflowSelect.value = workflow;
  });

  const list = $("runs");
  list.replaceChildren();
  $("runs-empty").hidden = true;
  $("runs-loading").hidden = false;
  $("runs-more").hidden = true;

  let stopped = false;
  let timer = null;
  let inflight = null;
  let firstLoad = true;
  let older = []; // pages loaded with "Load older runs"
  let olderCursor = undefined; // undefined: not paging yet
  let firstPage = [];
  const current = new Map(); // run id -> latest live step text
  let listSub = null;
  let listSubKey = "";

  function query(cursor) {
    const q = new URLSearchParams({ count: "50" });
    if (state) q.set("state", state);
    if (workflow) q.set("workflow", workflow);
    if (cursor) q.set("cursor", cursor);
    return `/api/runs?${q}`;
  }

  async function poll() {
    clearTimeout(timer);
    inflight?.abort();
    const controller = new AbortController();
    inflight = controller;
    try {
      const response = await authorizedFetch(query(), { signal: controller.signal, headers: { accept: "application/json" } });
      const data = await response.json().catch(() => null);
      if (stopped || controller !== inflight) return;
      if (!response.ok) throw new Error(data?.error?.message ?? `${response.status}`);
      firstPage = data.runs ?? [];
      if (olderCursor === undefined) olderCursor = data.cursor;
      showApiError("");
      render();
    } catch (error) {
      if (stopped || error.name === "AbortError") return;
      showApiError(`Could not load runs: ${error.message}`);
      $("runs-loading").hidden = true;
    } finally {
      if (!stopped && controller === inflight) {
        inflight = null;
        timer = setTimeout(poll, POLL_MS);
      }
    }
  }

  async function loadOlder() {
    if (!olderCursor) return;
    const button = $("runs-more");
    button.disabled = true;
    try {
      const data = await api("GET", query(olderCursor));
      older = older.concat(data.runs ?? []);
      olderCursor = data.cursor;
      render();
    } catch (error) {
      showApiError(`Could not load older runs: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function render() {
    const seen = new Set();
    const runs = [];
    for (const run of firstPage.concat(older)) {
      if (seen.has(run.workflowRunId)) continue;
      seen.add(run.workflowRunId);
      runs.push(run);
    }
    const rows = new Map([...list.children].map((row) => [row.dataset.runId, row]));
    let previous = null;
    for (const run of runs) {
      let row = rows.get(run.workflowRunId);
      if (!row) {
        row = renderRow(run);
        if (!firstLoad) row.classList.add("fresh");
      } else {
        updateRow(row, run);
        rows.delete(run.workflowRunId);
      }
      const expected = previous ? previous.nextSibling : list.firstChild;
      if (expected !== row) list.insertBefore(row, expected);
      previous = row;
    }
    for (const row of rows.values()) row.remove();
    firstLoad = false;
    $("runs-loading").hidden = true;
    $("runs-empty").hidden = runs.length > 0;
    $("runs-empty-hint").textContent =
      state || workflow
        ? "No runs match these filters."
        : "Trigger a workflow and it shows up here live.";
    $("runs-more").hidden = !olderCursor;
    tickList();
    syncSubscription(runs);
  }

  function renderRow(run) {
    const row = h(
      "a",
      { class: "run-row", href: runHref(run.workflowRunId), dataset: { runId: run.workflowRunId } },
      h("span", { class: "badge", dataset: { state: "" } }),
      h("span", { class: "wf" }, h("span", { class: "wf-name" }), h("small", { class: "step-now" })),
      h("code", { class: "rid" }, run.workflowRunId),
      h("span", { class: "started" }),
      h("span", { class: "dur num" }),
    );
    updateRow(row, run);
    return row;
  }

  function updateRow(row, run) {
    const live = current.get(run.workflowRunId);
    const runState = live?.state ?? run.workflowState;
    row.dataset.state = runState;
    row.dataset.created = run.workflowRunCreatedAt ?? "";
    row.dataset.completed = live?.completedAt ?? run.workflowRunCompletedAt ?? "";
    const badge = row.querySelector(".badge");
    badge.dataset.state = runState;
    badge.textContent = STATE_LABELS[runState] ?? runState;
    row.querySelector(".wf-name").textContent = run.workflowName;
    const stepNow = row.querySelector(".step-now");
    stepNow.textContent = runState === "RUN_STARTED" ? (live?.step ?? "") : "";
    stepNow.hidden = !stepNow.textContent;
    const started = row.querySelector(".started");
    started.title = fullDate(run.workflowRunCreatedAt);
  }

  /** Live state for the running rows on screen: one SSE connection for all of them. */
  function syncSubscription(runs) {
    const running = runs
      .filter((run) => run.workflowState === "RUN_STARTED")
      .slice(0, LIST_SUBSCRIPTION_MAX)
      .map((run) => run.workflowRunId);
    const key = running.join(",");
    if (key === listSubKey) return;
    listSub?.close();
    listSub = null;
    listSubKey = key;
    if (!running.length) return;
    realtimeUrl(running).then((url) => {
      if (stopped || listSubKey !== key) return;
      listSub = subscribe({
      url,
        channels: running,
        events: ["workflow.update"],
        history: 1, // the latest event of each: what it is doing now
        onData: ({ channel, data }) => {
          if (stopped || !data || typeof data !== "object") return;
          const live = current.get(channel) ?? {};
          if (data.type === "stepStart") {
            live.step = data.stepType === "Wait" ? `waiting: ${data.stepName}` : `▸ ${data.stepName}`;
          } else if (data.type === "stepFail" && data.willRetry) {
            live.step = `retrying ${data.stepName}`;
          } else if (data.type === "runFinish") {
            live.state = FINISH_STATES[data.status] ?? live.state;
            live.completedAt = data.timestamp;
            clearTimeout(timer);
            timer = setTimeout(poll, 150);
          }
          current.set(channel, live);
          const row = [...list.children].find((r) => r.dataset.runId === channel);
          const run = firstPage.concat(older).find((r) => r.workflowRunId === channel);
          if (row && run) updateRow(row, run);
        },
      });
    }).catch((error) => console.error("stepstream: cannot subscribe:", error));
  }

  const onFilter = () => {
    const q = new URLSearchParams();
    if (stateSelect.value) q.set("state", stateSelect.value);
    if (workflowSelect.value) q.set("workflow", workflowSelect.value);
    const suffix = q.toString();
    location.hash = suffix ? `#/?${suffix}` : "#/";
  };
  const onVisible = () => {
    if (document.visibilityState === "visible") poll();
  };
  stateSelect.addEventListener("change", onFilter);
  workflowSelect.addEventListener("change", onFilter);
  $("runs-more").onclick = loadOlder;
  document.addEventListener("visibilitychange", onVisible);
  poll();

  return {
    name: "runs",
    refresh: poll,
    tick: tickList,
    leave() {
      stopped = true;
      clearTimeout(timer);
      inflight?.abort();
      listSub?.close();
      stateSelect.removeEventListener("change", onFilter);
      workflowSelect.removeEventListener("change", onFilter);
      document.removeEventListener("visibilitychange", onVisible);
    },
  };
}

function tickList() {
  const now = Date.now();
  for (const row of $("runs").children) {
    const created = Number(row.dataset.created) || null;
    const completed = Number(row.dataset.completed) || null;
    const running = row.dataset.state === "RUN_STARTED";
    const dur = row.querySelector(".dur");
    const text = created ? formatDuration((completed ?? (running ? now : null)) - created) : "—";
    if (dur.textContent !== text) dur.textContent = text;
    const started = row.querySelector(".started");
    const rel = formatRelative(created);
    if (started.textContent !== rel) started.textContent = rel;
  }
}

// ---------------------------------------------------------------------------------------------
// one run

function showRun(runId) {
  $("run-view").hidden = false;
  document.title = `${runId} · stepstream`;
  setCrumbs(h("a", { href: "#/" }, "Runs"), h("span", { class: "current" }, runId));

  const run = {
    id: runId,
    log: null,
    events: [],
    seen: new Set(),
    steps: new Map(), // stepName -> {name, type, first, attempts: [{n, start, end, status, error}], state, result, error}
    finish: null, // the runFinish event data
  };
  let stopped = false;
  let logTimer = null;
  let lastWaitDefault = "";

  // reset the page
  $("run-id").textContent = runId;
  $("run-workflow").textContent = "…";
  setBadge($("run-state"), "");
  $("run-banner").hidden = true;
  $("events").replaceChildren();
  $("events-empty").hidden = false;
  $("event-count").textContent = "0 events";
  $("timeline").replaceChildren();
  jsonInto($("run-payload"), undefined, "loading…");
  jsonInto($("run-result"), undefined, "loading…");
  $("notify-error").hidden = true;
  $("notify-result").hidden = true;
  $("notify-event").value = "";
  $("notify-event").dataset.auto = "";
  setConn("connecting");
  $("conn").hidden = false;

  async function loadLog() {
    clearTimeout(logTimer);
    try {
      const log = await api("GET", `/api/runs/${encodeURIComponent(runId)}`);
      if (stopped) return;
      run.log = log;
      render();
    } catch (error) {
      if (stopped) return;
      if (error.status === 404 && !run.events.length) {
        notFound(error.message);
        return;
      }
      banner(`Could not load the run: ${error.message}`);
      logTimer = setTimeout(loadLog, POLL_MS);
    }
  }

  function notFound(message) {
    $("run-view").hidden = true;
    $("notfound-view").hidden = false;
    $("notfound-title").textContent = "Run not found";
    $("notfound-text").textContent = message;
    sub.close();
  }

  function banner(message) {
    $("run-banner").textContent = message;
    $("run-banner").hidden = !message;
  }

  function state() {
    if (run.finish) return FINISH_STATES[run.finish.status] ?? run.log?.workflowState ?? "RUN_STARTED";
    return run.log?.workflowState ?? (run.events.length ? "RUN_STARTED" : "");
  }

  function startedAt() {
    return run.log?.workflowRunCreatedAt ?? run.events.find((e) => e.data.type === "runStart")?.data.timestamp ?? run.events[0]?.data.timestamp ?? null;
  }

  function completedAt() {
    return run.log?.workflowRunCompletedAt ?? run.finish?.timestamp ?? null;
  }

  // --- events -> model ------------------------------------------------------------------------

  function step(name, type) {
    let s = run.steps.get(name);
    if (!s) {
      s = { name, type: type ?? null, attempts: [], state: "pending", result: undefined, error: null, order: run.steps.size };
      run.steps.set(name, s);
    }
    if (type && !s.type) s.type = type;
    return s;
  }

  function openAttempt(s) {
    for (let i = s.attempts.length - 1; i >= 0; i--) if (s.attempts[i].end === null) return s.attempts[i];
    return null;
  }

  function apply(data) {
    const ts = data.timestamp;
    switch (data.type) {
      case "stepStart": {
        const s = step(data.stepName, data.stepType);
        s.attempts.push({ n: data.attempt ?? s.attempts.length + 1, start: ts, end: null, status: "running", error: null });
        s.state = s.type === "Wait" ? "waiting" : "running";
        break;
      }
      case "stepFinish": {
        const s = step(data.stepName, data.stepType);
        const a = openAttempt(s) ?? s.attempts[s.attempts.push({ n: data.attempt ?? 1, start: ts, end: null }) - 1];
        a.end = ts;
        a.status = "success";
        s.state = "success";
        s.result = data.result;
        break;
      }
      case "stepFail": {
        const s = step(data.stepName, data.stepType);
        const a = openAttempt(s) ?? s.attempts[s.attempts.push({ n: data.attempt ?? 1, start: ts, end: null }) - 1];
        a.end = ts;
        a.status = data.willRetry ? "retry" : "failed";
        a.error = data.error ?? null;
        s.state = data.willRetry ? "retrying" : "failed";
        s.error = data.error ?? null;
        break;
      }
      case "runFinish": {
        run.finish = data;
        for (const s of run.steps.values()) {
          const a = openAttempt(s);
          if (a) {
            a.end = ts;
            a.status = "canceled";
            s.state = "canceled";
          }
        }
        break;
      }
      default:
        break;
    }
  }

  /** Steps from the log that the events do not cover (history trimmed, or a pre-event run). */
  function mergedSteps() {
    const steps = [...run.steps.values()];
    for (const logStep of run.log?.steps ?? []) {
      const known = run.steps.get(logStep.stepName);
      if (known) {
        if (!known.type) known.type = logStep.stepType;
        if (known.result === undefined && logStep.out !== null) known.result = logStep.out;
        continue;
      }
      if (!logStep.startedAt) continue;
      const status = { STEP_SUCCESS: "success", STEP_FAILED: "failed", STEP_CANCELED: "canceled", STEP_RETRY: "retry" }[logStep.state] ?? "running";
      const running = status === "running";
      steps.push({
        name: logStep.stepName,
        type: logStep.stepType,
        attempts: [{ n: logStep.attempts || 1, start: logStep.startedAt, end: logStep.finishedAt, status, error: logStep.error }],
        state: running ? (logStep.stepType === "Wait" ? "waiting" : "running") : status,
        result: logStep.out ?? undefined,
        error: logStep.error,
        order: 1000 + (logStep.stepId ?? 0),
        fromLog: true,
      });
    }
    const first = (s) => s.attempts[0]?.start ?? Infinity;
    return steps.sort((a, b) => first(a) - first(b) || a.order - b.order);
  }

  function onData(message) {
    if (stopped || run.seen.has(message.id)) return;
    run.seen.add(message.id);
    const data = message.data && typeof message.data === "object" ? message.data : {};
    run.events.push({ id: message.id, event: message.event, data });
    apply(data);
    appendEvent(message, data);
    if (data.type === "runFinish") {
      loadLog(); // result, error and completion time
      // Nothing follows runFinish on a run's channel: stop listening.
      queueMicrotask(() => {
        sub.close();
        $("conn").hidden = true;
      });
    }
    scheduleRender();
  }

  // --- rendering ------------------------------------------------------------------------------

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    queueMicrotask(() => {
      renderQueued = false;
      if (!stopped) render();
    });
  }

  function render() {
    const runState = state();
    const log = run.log;
    $("run-workflow").textContent = log?.workflowName ?? "…";
    setBadge($("run-state"), runState);
    document.title = `${log?.workflowName ?? runId} · ${STATE_LABELS[runState] ?? "…"} · stepstream`;
    $("run-started").textContent = formatTime(startedAt());
    $("run-started").title = fullDate(startedAt());
    $("run-finished").textContent = runState === "RUN_STARTED" ? "—" : formatTime(completedAt());
    $("run-finished").title = fullDate(completedAt());
    const running = runState === "RUN_STARTED";
    $("cancel-run").hidden = !running || !log;

    // payload / outcome
    if (log) {
      jsonInto($("run-payload"), log.requestPayload ?? undefined, "no payload");
      const outcome = $("run-result");
      const card = $("outcome-card");
      outcome.classList.remove("error");
      card.classList.remove("failed");
      const error = log.error ?? run.finish?.error;
      if (runState === "RUN_SUCCESS") {
        $("outcome-title").textContent = "Result";
        jsonInto(outcome, log.workflowRunResponse ?? null);
      } else if (runState === "RUN_FAILED" || (runState === "RUN_CANCELED" && error)) {
        $("outcome-title").textContent = runState === "RUN_FAILED" ? "Error" : "Canceled";
        card.classList.add("failed");
        outcome.classList.add("error");
        outcome.textContent = error ?? "failed";
      } else if (runState === "RUN_CANCELED") {
        $("outcome-title").textContent = "Result";
        jsonInto(outcome, undefined, "The run was canceled.");
      } else {
        $("outcome-title").textContent = "Result";
        jsonInto(outcome, undefined, "Running… the result appears here when the run finishes.");
      }
    }

    // send event: offered while running; defaults to approve-<id> while a Wait step is open
    const steps = mergedSteps();
    const waiting = steps.find((s) => s.state === "waiting");
    const card = $("notify-card");
    card.hidden = !running || !log;
    card.classList.toggle("waiting", Boolean(waiting));
    $("notify-hint").textContent = waiting
      ? `“${waiting.name}” is waiting for an event.`
      : "Notify a waiting step of this run.";
    const input = $("notify-event");
    const suggested = waiting ? `approve-${runId}` : "";
    if (suggested && (input.value === "" || input.value === lastWaitDefault)) {
      input.value = suggested;
      lastWaitDefault = suggested;
    }

    $("run-steps").textContent = steps.length ? `${steps.filter((s) => s.state === "success").length} / ${steps.length} done` : "—";
    renderTimeline(steps);
    tick();
  }

  // timeline: rows keyed by step name, bars keyed by attempt; only positions change per tick
  const rowsByName = new Map();
  let expanded = new Set();

  function span(now) {
    const t0 = startedAt();
    if (!t0) return null;
    let end = state() === "RUN_STARTED" ? now : completedAt() ?? now;
    for (const s of run.steps.values()) for (const a of s.attempts) end = Math.max(end, a.end ?? a.start);
    return { t0, width: Math.max(end - t0, 1000) };
  }

  function renderTimeline(steps) {
    const box = $("timeline");
    if (!steps.length) {
      rowsByName.clear();
      const text = state() === "RUN_STARTED" ? "No step has started yet…" : "This run has no steps.";
      box.replaceChildren(h("div", { class: "tl-empty" }, text));
      return;
    }
    let grid = box.querySelector(".tl-grid");
    let rows = box.querySelector(".tl-rows");
    if (!rows) {
      grid = h("div", { class: "tl-grid" });
      rows = h("div", { class: "tl-rows" });
      box.replaceChildren(grid, rows);
    }
    let previous = null;
    for (const s of steps) {
      let entry = rowsByName.get(s.name);
      if (!entry) {
        const row = h(
          "div",
          { class: "tl-row", role: "button", tabindex: "0", dataset: { step: s.name } },
          h("div", { class: "tl-label" },
            h("span", { class: "dot" }),
            h("span", { class: "name", title: s.name }, s.name),
            h("span", { class: "type" }),
            h("span", { class: "tries" }),
            h("span", { class: "d" })),
          h("div", { class: "tl-track" }),
        );
        const toggle = (event) => {
          if (event.target.closest(".tl-detail")) return;
          if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
          event.preventDefault();
          if (expanded.has(s.name)) expanded.delete(s.name);
          else expanded.add(s.name);
          render();
        };
        row.addEventListener("click", toggle);
        row.addEventListener("keydown", toggle);
        entry = { row, bars: [] };
        rowsByName.set(s.name, entry);
      }
      const { row } = entry;
      row.dataset.state = s.state;
      row.dataset.attempts = String(s.attempts.length);
      row.querySelector(".type").textContent = TYPE_LABELS[s.type] ?? String(s.type).toLowerCase();
      row.querySelector(".type").hidden = !s.type || s.type === "Run";
      const retries = s.attempts.length > 1 ? `×${s.attempts.length}` : "";
      row.querySelector(".tries").textContent = retries;
      row.querySelector(".tries").title = retries ? `${s.attempts.length} attempts` : "";
      const track = row.querySelector(".tl-track");
      while (entry.bars.length < s.attempts.length) {
        const bar = h("div", { class: "bar" });
        track.append(bar);
        entry.bars.push(bar);
      }
      entry.step = s;
      s.attempts.forEach((a, i) => {
        const bar = entry.bars[i];
        const kind = s.type === "Wait" ? "wait" : s.type === "SleepFor" || s.type === "SleepUntil" ? "sleep" : null;
        const cls = kind && (a.status === "running" || a.status === "success") ? `${kind}${a.end === null ? " open" : ""}` : a.status;
        bar.className = `bar ${cls}`;
        bar.dataset.status = a.status;
        bar.dataset.attempt = String(a.n);
        bar.title = `${s.name} · attempt ${a.n} · ${a.status}${a.error ? ` · ${a.error}` : ""}`;
      });
      // details
      let detail = row.querySelector(".tl-detail");
      if (expanded.has(s.name)) {
        if (!detail) {
          detail = h("div", { class: "tl-detail" });
          row.append(detail);
        }
        fillDetail(detail, s);
      } else {
        detail?.remove();
      }
      const expected = previous ? previous.nextSibling : rows.firstChild;
      if (expected !== row) rows.insertBefore(row, expected);
      previous = row;
    }
    positionTimeline(Date.now());
  }

  function fillDetail(detail, s) {
    detail.replaceChildren(
      h("ul", {},
        s.attempts.map((a) => h("li", {},
          h("span", { class: "mono" }, `attempt ${a.n}`),
          h("span", { class: `st-${a.status}` }, a.status),
          h("span", { class: "muted" }, `${formatTime(a.start, { millis: true })} · ${a.end ? formatDuration(a.end - a.start) : "in progress"}`),
          a.error ? h("span", { class: "st-failed" }, a.error) : null))),
    );
    if (s.result !== undefined) {
      const pre = h("pre", { class: "json" });
      jsonInto(pre, s.result);
      detail.append(pre);
    }
  }

  function positionTimeline(now) {
    const frame = span(now);
    if (!frame) return;
    const { t0, width } = frame;
    for (const entry of rowsByName.values()) {
      const s = entry.step;
      if (!s) continue;
      s.attempts.forEach((a, i) => {
        const bar = entry.bars[i];
        const end = a.end ?? (state() === "RUN_STARTED" ? now : completedAt() ?? now);
        bar.style.left = `${(Math.max(0, a.start - t0) / width) * 100}%`;
        bar.style.width = `${(Math.max(0, end - a.start) / width) * 100}%`;
      });
      const first = s.attempts[0]?.start;
      const last = s.attempts.at(-1);
      const end = last?.end ?? (state() === "RUN_STARTED" ? now : completedAt());
      entry.row.querySelector(".d").textContent = first && end ? formatDuration(end - first) : "";
    }
    // axis ticks at a round step
    const grid = $("timeline").querySelector(".tl-grid");
    if (!grid) return;
    const stepMs = niceStep(width / 5);
    const count = Math.floor(width / stepMs);
    const labels = [];
    for (let i = 0; i <= count; i++) labels.push(i * stepMs);
    if (grid.childElementCount !== labels.length) {
      grid.replaceChildren(...labels.map(() => h("div", { class: "tl-tick" }, h("span"))));
    }
    labels.forEach((ms, i) => {
      const tick = grid.children[i];
      tick.style.left = `${(ms / width) * 100}%`;
      tick.firstChild.textContent = ms === 0 ? "0" : formatAxis(ms, stepMs);
      tick.classList.toggle("last", (ms / width) > 0.93 && i > 0);
    });
  }

  function tick() {
    const now = Date.now();
    const runState = state();
    const t0 = startedAt();
    const end = runState === "RUN_STARTED" ? now : completedAt();
    $("run-duration").textContent = t0 && end ? formatDuration(end - t0) : "—";
    if (runState === "RUN_STARTED") positionTimeline(now);
  }

  // event log
  function appendEvent(message, data) {
    const list = $("events");
    const stickToBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
    const detail = data.type === "stepFinish"
      ? compactJson(data.result)
      : data.type === "stepFail"
        ? `${data.error ?? ""}${data.willRetry ? " · will retry" : ""}`
        : data.type === "runFinish"
          ? `${data.status}${data.error ? ` · ${data.error}` : ""}`
          : data.type === "stepStart" && data.stepType && data.stepType !== "Run" ? data.stepType : "";
    const item = h(
      "li",
      {
        class: `ev${run.events.length > 1 ? " new" : ""}`,
        tabindex: "0",
        dataset: { id: message.id, type: data.type ?? message.event, json: JSON.stringify(message.data) },
      },
      h("span", { class: "ev-time", title: message.id }, formatTime(data.timestamp ?? Number(message.id.split("-")[0]), { millis: true }).split(", ").at(-1)),
      h("span", { class: "ev-type" }, data.type ?? message.event),
      h("span", { class: "ev-step" }, data.stepName ?? ""),
      h("span", { class: "ev-attempt" }, data.attempt ? `#${data.attempt}` : ""),
      h("span", { class: "ev-detail", title: detail }, detail),
    );
    const toggle = (event) => {
      if (event.type === "keydown" && event.key !== "Enter") return;
      const open = item.querySelector(".ev-full");
      if (open) open.remove();
      else {
        const pre = h("pre", { class: "json ev-full" });
        jsonInto(pre, message.data);
        item.append(pre);
      }
    };
    item.addEventListener("click", toggle);
    item.addEventListener("keydown", toggle);
    list.append(item);
    if (stickToBottom) list.scrollTop = list.scrollHeight;
    $("events-empty").hidden = true;
    $("event-count").textContent = `${run.events.length} event${run.events.length === 1 ? "" : "s"}`;
  }

  // --- actions --------------------------------------------------------------------------------

  async function cancelRun() {
    const button = $("cancel-run");
    button.disabled = true;
    banner("");
    try {
      await api("POST", `/api/runs/${encodeURIComponent(runId)}/cancel`);
      await loadLog();
    } catch (error) {
      banner(`Could not cancel: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async function sendEvent(event) {
    event.preventDefault();
    const error = $("notify-error");
    const ok = $("notify-result");
    const eventInput = $("notify-event");
    const dataInput = $("notify-data");
    error.hidden = ok.hidden = true;
    eventInput.removeAttribute("aria-invalid");
    dataInput.removeAttribute("aria-invalid");
    const eventId = eventInput.value.trim();
    if (!eventId) {
      error.textContent = "Enter the event id the step waits for.";
      error.hidden = false;
      eventInput.setAttribute("aria-invalid", "true");
      eventInput.focus();
      return;
    }
    const parsed = parseJsonField(dataInput.value);
    if (!parsed.ok) {
      error.textContent = `The data is not valid JSON: ${parsed.message}`;
      error.hidden = false;
      dataInput.setAttribute("aria-invalid", "true");
      dataInput.focus();
      return;
    }
    const button = $("notify-send");
    button.disabled = true;
    try {
      const body = parsed.value === undefined ? undefined : JSON.stringify(parsed.value);
      const q = new URLSearchParams({ workflowRunId: runId });
      const result = await api("POST", `/api/events/${encodeURIComponent(eventId)}?${q}`, body);
      const n = result?.waiters ?? 0;
      ok.textContent = n
        ? `Sent “${eventId}” — delivered to ${n} waiting step${n === 1 ? "" : "s"}.`
        : `Sent “${eventId}” — no step is waiting yet; it is kept for this run.`;
      ok.hidden = false;
    } catch (err) {
      error.textContent = `Could not send the event: ${err.message}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  async function copyId() {
    try {
      await navigator.clipboard.writeText(runId);
      $("copy-id").title = "Copied";
    } catch {
      const range = document.createRange();
      range.selectNodeContents($("run-id"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }
  }

  $("cancel-run").onclick = cancelRun;
  $("notify-form").onsubmit = sendEvent;
  $("copy-id").onclick = copyId;

  // Closed when the page is left, the run is not found, or after runFinish.
  let closed = false;
  let live = null;
  const sub = {
    close() {
      closed = true;
      live?.close();
    },
  };
  realtimeUrl([runId])
    .then((url) => {
      if (closed) return;
      live = subscribe({
        url,
        channels: [runId],
        events: ["workflow.update"],
        history: true,
        onData,
        onStatus: (status) => {
          if (!stopped) setConn(status);
        },
      });
    })
    .catch((error) => banner(`Live updates unavailable: ${error.message}`));
  loadLog();

  return {
    name: "run",
    tick,
    refresh: loadLog,
    leave() {
      stopped = true;
      clearTimeout(logTimer);
      sub.close();
    },
  };
}

function niceStep(raw) {
  const steps = [1, 2, 5];
  let base = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
  for (;;) {
    for (const m of steps) if (m * base >= raw) return m * base;
    base *= 10;
  }
}

function formatAxis(ms, step) {
  if (step < 1000) return `${(ms / 1000).toFixed(step < 100 ? 2 : 1)}s`;
  if (ms < 60_000) return `${Math.round(ms / 1000)}s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m${ms % 60_000 ? ` ${Math.round((ms % 60_000) / 1000)}s` : ""}`;
  return `${Math.floor(ms / 3_600_000)}h${ms % 3_600_000 ? ` ${Math.round((ms % 3_600_000) / 60_000)}m` : ""}`;
}

function setBadge(el, state) {
  el.dataset.state = state;
  el.textContent = STATE_LABELS[state] ?? (state || "…");
}

const CONN_LABELS = { connecting: "connecting…", connected: "live", disconnected: "reconnecting…", error: "offline, retrying…" };

function setConn(status) {
  const el = $("conn");
  el.dataset.status = status;
  el.textContent = CONN_LABELS[status] ?? status;
}

// ---------------------------------------------------------------------------------------------
// trigger dialog

function setupTrigger() {
  const dialog = $("trigger-dialog");
  const form = $("trigger-form");
  const payload = $("trigger-payload");
  const error = $("trigger-error");
  const submit = $("trigger-submit");

  const open = async () => {
    error.hidden = true;
    payload.removeAttribute("aria-invalid");
    if (!dialog.open) dialog.showModal();
    const names = await loadWorkflows();
    if (!names.length) {
      error.textContent = "This server has no workflows registered (GET /api/workflows).";
      error.hidden = false;
    }
    $("trigger-workflow").focus();
  };
  const close = () => dialog.close();

  $("new-run").addEventListener("click", open);
  $("empty-new-run").addEventListener("click", open);
  $("trigger-close").addEventListener("click", close);
  $("trigger-cancel").addEventListener("click", close);
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) close(); // backdrop
  });
  payload.addEventListener("input", () => {
    payload.removeAttribute("aria-invalid");
    error.hidden = true;
  });
  payload.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.metaKey || event.ctrlKey)) form.requestSubmit();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const name = $("trigger-workflow").value;
    if (!name) {
      error.textContent = "Choose a workflow.";
      error.hidden = false;
      return;
    }
    const parsed = parseJsonField(payload.value);
    if (!parsed.ok) {
      error.textContent = `The payload is not valid JSON: ${parsed.message}`;
      error.hidden = false;
      payload.setAttribute("aria-invalid", "true");
      payload.focus();
      return;
    }
    submit.disabled = true;
    try {
      const body = parsed.value === undefined ? undefined : JSON.stringify(parsed.value);
      const { workflowRunId } = await api("POST", `/api/workflows/${encodeURIComponent(name)}`, body);
      close();
      location.hash = runHref(workflowRunId);
    } catch (err) {
      error.textContent = `Could not trigger “${name}”: ${err.message}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
}

// ---------------------------------------------------------------------------------------------

setupTrigger();
window.addEventListener("hashchange", route);
setInterval(() => active?.tick?.(), TICK_MS);
route();
