/**
 * The runs list (`#/`, filters in the hash: `#/?state=RUN_FAILED&workflow=basic&label=eu`,
 * `createdAfter` / `createdBefore` in epoch ms). Selecting rows and acting on many runs at
 * once is bulk.js's.
 *
 * It follows the `stepstream:runs` feed (every run's state changes, announced by the engine)
 * and reloads the first page a moment after each change (entries are small: no payload,
 * result or steps); a slow poll covers a feed that missed something. For the running rows on
 * screen it also follows their channels, so the current step shows at once.
 */

import { foldWorkflowUpdate, initialRunState, isOpen } from "../run-state.js";
import { subscribe } from "../stepstream.js";
import { api, authorizedFetch, failureMessage, realtimeUrl } from "./api.js";
import { createBulk } from "./bulk.js";
import { $, h, labelChips, loadWorkflows, setBadge, setCrumbs, showApiError } from "./dom.js";
import { FINISH_STATES, formatDuration, formatRelative, fullDate } from "./format.js";

const POLL_MS = 15000; // the fallback: changes arrive over the feed
const FEED = "stepstream:runs";
const FEED_SETTLE_MS = 250; // changes arriving together cause one reload
const LIST_SUBSCRIPTION_MAX = 25;
const FILTERS = ["state", "workflow", "label", "createdAfter", "createdBefore"];

export function runHref(id) {
  return `#/runs/${encodeURIComponent(id)}`;
}

/** Show the list for the hash's `params`; returns the view (`tick`, `leave`). */
export function showRuns(params) {
  const filters = readFilters(params);
  const { state, workflow } = filters;
  const filtered = FILTERS.some((key) => filters[key]);
  $("runs-view").hidden = false;
  document.title = "Runs · stepstream";
  setCrumbs(h("span", { class: "current-page" }, "Runs"));

  const stateSelect = $("filter-state");
  const workflowSelect = $("filter-workflow");
  const labelInput = $("filter-label");
  const afterInput = $("filter-after");
  const beforeInput = $("filter-before");
  stateSelect.value = state;
  // Set only when different: a time being typed (each segment a change) keeps its caret.
  const show = (input, value) => input.value !== value && (input.value = value);
  show(labelInput, filters.label);
  show(afterInput, toLocalInput(filters.createdAfter));
  show(beforeInput, toLocalInput(filters.createdBefore));
  $("filters-clear").hidden = !filtered;
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
  let firstPage = [];
  let older = []; // pages loaded with "Load older runs"
  let olderCursor = undefined; // undefined: not paging yet
  const live = new Map(); // run id -> its state from its latest events (run-state.js)
  let listSub = null;
  let listSubKey = "";
  let feedSub = null;
  const bulk = createBulk(filters, () => poll());

  function query(cursor) {
    const q = new URLSearchParams({ count: "50" });
    for (const key of FILTERS) if (filters[key]) q.set(key, filters[key]);
    if (cursor) q.set("cursor", cursor);
    return `api/runs?${q}`;
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
      if (!response.ok) throw new Error(failureMessage(response, data));
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

  /** The first page, then older pages, each run once (a run can move between pages). */
  function shownRuns() {
    const byId = new Map();
    for (const run of firstPage.concat(older)) if (!byId.has(run.workflowRunId)) byId.set(run.workflowRunId, run);
    return [...byId.values()];
  }

  /** Each run is an item: its checkbox (bulk.js), then its row, a link to the run. */
  function render() {
    const runs = shownRuns();
    const items = new Map([...list.children].map((item) => [item.dataset.runId, item]));
    let previous = null;
    for (const run of runs) {
      let item = items.get(run.workflowRunId);
      if (!item) {
        item = h("div", { class: "run-item", dataset: { runId: run.workflowRunId } }, bulk.checkbox(run.workflowRunId), renderRow(run));
        if (!firstLoad) item.classList.add("fresh");
      } else {
        updateRow(item.querySelector(".run-row"), run);
        items.delete(run.workflowRunId);
      }
      const expected = previous ? previous.nextSibling : list.firstChild;
      if (expected !== item) list.insertBefore(item, expected);
      previous = item;
    }
    for (const item of items.values()) item.remove();
    firstLoad = false;
    $("runs-loading").hidden = true;
    $("runs-empty").hidden = runs.length > 0;
    $("runs-empty-title").textContent = filtered ? "No runs match these filters" : "No runs yet";
    $("runs-empty-hint").textContent = filtered
      ? "Change the filters, or clear them to see every run."
      : "Trigger a workflow and it shows up here live.";
    $("empty-new-run").hidden = filtered;
    $("empty-clear-filters").hidden = !filtered;
    $("runs-more").hidden = !olderCursor;
    bulk.sync(runs.map((run) => run.workflowRunId));
    tickRuns();
    syncSubscription(runs);
  }

  function renderRow(run) {
    const row = h(
      "a",
      { class: "run-row", href: runHref(run.workflowRunId), dataset: { runId: run.workflowRunId } },
      h("span", { class: "badge", dataset: { state: "" } }),
      h("span", { class: "wf" }, h("span", { class: "wf-name" }), labelChips(run.labels), h("small", { class: "step-now" })),
      h("code", { class: "rid" }, run.workflowRunId),
      h("span", { class: "started" }),
      h("span", { class: "dur num" }),
    );
    updateRow(row, run);
    return row;
  }

  function updateRow(row, run) {
    const events = live.get(run.workflowRunId)?.run;
    const runState = FINISH_STATES[events?.status] ?? run.workflowState;
    row.dataset.state = runState;
    row.dataset.created = run.workflowRunCreatedAt ?? "";
    row.dataset.completed = events?.finishedAt ?? run.workflowRunCompletedAt ?? "";
    setBadge(row.querySelector(".badge"), runState);
    row.querySelector(".wf-name").textContent = run.displayName ?? run.workflowName;
    const stepNow = row.querySelector(".step-now");
    stepNow.textContent = runState === "RUN_STARTED" ? doing(live.get(run.workflowRunId)) : "";
    stepNow.hidden = !stepNow.textContent;
    row.querySelector(".started").title = fullDate(run.workflowRunCreatedAt);
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
    realtimeUrl(running)
      .then((url) => {
        if (stopped || listSubKey !== key) return;
        listSub = subscribe({
          url,
          channels: running,
          events: ["workflow.update"],
          history: 1, // the latest event of each: what it is doing now
          onData: (message) => {
            if (stopped) return;
            const before = live.get(message.channel) ?? initialRunState(message.channel);
            const after = foldWorkflowUpdate(before, message);
            if (after === before) return;
            live.set(message.channel, after);
            if (FINISH_STATES[after.run?.status]) {
              clearTimeout(timer); // finished: the list has its final state within a moment
              timer = setTimeout(poll, 150);
            }
            const row = [...list.querySelectorAll(".run-row")].find((r) => r.dataset.runId === message.channel);
            const run = shownRuns().find((r) => r.workflowRunId === message.channel);
            if (row && run) updateRow(row, run);
          },
        });
      })
      .catch((error) => console.error("stepstream: cannot subscribe:", error));
  }

  const onFilter = () => {
    const q = new URLSearchParams();
    if (stateSelect.value) q.set("state", stateSelect.value);
    if (workflowSelect.value) q.set("workflow", workflowSelect.value);
    if (labelInput.value.trim()) q.set("label", labelInput.value.trim());
    // An unchanged time keeps its exact value (the inputs show minutes).
    const time = (input, key) => (input.value === toLocalInput(filters[key]) ? filters[key] : fromLocalInput(input.value));
    const after = time(afterInput, "createdAfter");
    const before = time(beforeInput, "createdBefore");
    if (after) q.set("createdAfter", after);
    if (before) q.set("createdBefore", before);
    const suffix = q.toString();
    location.hash = suffix ? `#/?${suffix}` : "#/";
  };
  const clearFilters = () => {
    location.hash = "#/";
  };
  const onVisible = () => {
    if (document.visibilityState === "visible") poll();
  };
  const inputs = [stateSelect, workflowSelect, labelInput, afterInput, beforeInput];
  for (const input of inputs) input.addEventListener("change", onFilter);
  $("filters-clear").onclick = clearFilters;
  $("empty-clear-filters").onclick = clearFilters;
  $("runs-more").onclick = loadOlder;
  document.addEventListener("visibilitychange", onVisible);
  poll();
  realtimeUrl([FEED])
    .then((url) => {
      if (stopped) return;
      feedSub = subscribe({
        url,
        channels: [FEED],
        events: ["runs.update"],
        onData: () => {
          if (stopped) return;
          clearTimeout(timer);
          timer = setTimeout(poll, FEED_SETTLE_MS);
        },
      });
    })
    .catch((error) => console.error("stepstream: cannot follow the runs feed:", error));

  return {
    tick: tickRuns,
    leave() {
      stopped = true;
      clearTimeout(timer);
      inflight?.abort();
      listSub?.close();
      feedSub?.close();
      bulk.leave();
      for (const input of inputs) input.removeEventListener("change", onFilter);
      document.removeEventListener("visibilitychange", onVisible);
    },
  };
}

/** The list's filters from the hash, each "" when unset (times: epoch ms, digits only). */
function readFilters(params) {
  const filters = {};
  for (const key of FILTERS) filters[key] = params.get(key)?.trim() ?? "";
  for (const key of ["createdAfter", "createdBefore"]) if (!/^\d+$/.test(filters[key])) filters[key] = "";
  return filters;
}

/** Epoch ms -> a datetime-local input's value (local time, to the minute). */
function toLocalInput(ms) {
  if (!ms) return "";
  const date = new Date(Number(ms));
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** A datetime-local input's value (local time) -> epoch ms, "" if blank or invalid. */
function fromLocalInput(value) {
  const ms = value ? new Date(value).getTime() : NaN;
  return Number.isFinite(ms) ? String(ms) : "";
}

/** What a running run is doing, from its latest events: its most recent open step. */
function doing(state) {
  const step = state?.steps.findLast(isOpen);
  if (!step) return "";
  if (step.status === "waiting") return `waiting: ${step.stepName}`;
  if (step.status === "retrying") return `retrying ${step.stepName}`;
  return `▸ ${step.stepName}`;
}

/** Durations and "started" times move on while the list is shown. */
function tickRuns() {
  const now = Date.now();
  for (const row of $("runs").querySelectorAll(".run-row")) {
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
