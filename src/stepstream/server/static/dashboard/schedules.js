/**
 * The schedules page (`#/schedules`): every schedule with its next run and a link to its last
 * run, pause / resume / delete (with a confirm); a form to create one; and the workflows, each
 * with a paused badge and pause / resume. Polls `GET api/schedules` and `GET api/workflows`
 * every 2 s, so schedules declared in code or made with the CLI show up too.
 */

import { api } from "./api.js";
import { $, h, setCrumbs, showApiError } from "./dom.js";
import { fullDate, parseJsonField } from "./format.js";
import { runHref } from "./runs.js";

const POLL_MS = 2000;

/** How far ahead `ms` is: "in 3 s", "in 12 min", "in 5 h", "in 2 days". */
function fromNow(ms) {
  const seconds = Math.max(0, Math.round((ms - Date.now()) / 1000));
  if (seconds < 60) return `in ${seconds} s`;
  if (seconds < 3600) return `in ${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `in ${Math.round(seconds / 3600)} h`;
  return `in ${Math.round(seconds / 86400)} days`;
}

/** Show the page; returns the view (`tick`, `leave`). */
export function showSchedules() {
  $("schedules-view").hidden = false;
  document.title = "Schedules · stepstream";
  setCrumbs(h("a", { href: "#/" }, "Runs"), h("span", { class: "current-page" }, "Schedules"));

  let stopped = false;
  let timer = null;
  let schedules = [];
  let workflows = { workflows: [], paused: [] };

  async function poll() {
    clearTimeout(timer);
    try {
      const [listed, names] = await Promise.all([api("GET", "api/schedules"), api("GET", "api/workflows")]);
      if (stopped) return;
      schedules = listed.schedules ?? [];
      workflows = names;
      showApiError("");
      render();
    } catch (error) {
      if (!stopped) showApiError(`Could not load schedules: ${error.message}`);
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  /** Run an action, then show the new state at once; a failure goes to the banner. */
  async function act(label, call) {
    try {
      await call();
      await poll();
    } catch (error) {
      showApiError(`Could not ${label}: ${error.message}`);
    }
  }

  function scheduleRow(item) {
    const path = `api/schedules/${encodeURIComponent(item.id)}`;
    const toggle = item.paused
      ? h("button", { type: "button", class: "btn", onclick: () => act(`resume ${item.id}`, () => api("POST", `${path}/resume`)) }, "Resume")
      : h("button", { type: "button", class: "btn", onclick: () => act(`pause ${item.id}`, () => api("POST", `${path}/pause`)) }, "Pause");
    const remove = h("button", {
      type: "button",
      class: "btn danger",
      onclick: () => {
        if (!window.confirm(`Delete schedule “${item.id}”? No more runs of it will start.`)) return;
        act(`delete ${item.id}`, () => api("DELETE", path));
      },
    }, "Delete");
    const next = item.nextRunAt == null
      ? h("span", { class: "muted" }, "—")
      : h("span", { title: fullDate(item.nextRunAt) }, fullDate(item.nextRunAt), h("small", {}, fromNow(item.nextRunAt)));
    const last = item.lastRunId
      ? h("a", { class: "last mono", href: runHref(item.lastRunId), title: item.lastRunId }, item.lastRunId)
      : item.lastError
        ? h("span", { class: "last error", title: item.lastError }, `not started: ${item.lastError}`)
        : h("span", { class: "last muted" }, "none yet");
    return h("div", { class: "schedule-row", dataset: { id: item.id, paused: String(item.paused) } },
      h("div", {},
        h("div", { class: "name" }, item.id,
          h("span", { class: "badge", dataset: { state: item.paused ? "PAUSED" : "ACTIVE" } }, item.paused ? "Paused" : "Active")),
        h("small", {}, `workflow ${item.workflow}`)),
      h("div", {}, h("code", {}, item.cron), h("small", {}, item.timezone)),
      next,
      last,
      h("div", { class: "actions" }, toggle, remove));
  }

  function workflowRow(name) {
    const paused = workflows.paused.includes(name);
    const path = `api/workflows/${encodeURIComponent(name)}`;
    return h("li", { dataset: { workflow: name, paused: String(paused) } },
      h("span", { class: "wf-name" }, name),
      h("span", { class: "badge", dataset: { state: paused ? "PAUSED" : "ACTIVE" } }, paused ? "Paused" : "Active"),
      paused
        ? h("button", { type: "button", class: "btn", onclick: () => act(`resume ${name}`, () => api("POST", `${path}/resume`)) }, "Resume")
        : h("button", { type: "button", class: "btn", onclick: () => act(`pause ${name}`, () => api("POST", `${path}/pause`)) }, "Pause"));
  }

  function render() {
    $("schedules").replaceChildren(...schedules.map(scheduleRow));
    $("schedules-empty").hidden = schedules.length > 0;
    $("workflow-list").replaceChildren(...workflows.workflows.map(workflowRow));
    const select = $("schedule-workflow");
    const chosen = select.value;
    const names = workflows.workflows;
    if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
      select.replaceChildren(...names.map((name) => h("option", { value: name }, name)));
      if (names.includes(chosen)) select.value = chosen;
    }
  }

  const form = $("schedule-form");
  const error = $("schedule-error");
  async function create(event) {
    event.preventDefault();
    error.hidden = true;
    const payload = parseJsonField($("schedule-payload").value);
    if (!payload.ok) {
      error.textContent = `The payload is not valid JSON: ${payload.message}`;
      error.hidden = false;
      return;
    }
    const body = {
      id: $("schedule-id").value.trim(),
      workflow: $("schedule-workflow").value,
      cron: $("schedule-cron").value.trim(),
      timezone: $("schedule-timezone").value.trim() || "UTC",
    };
    if (payload.value !== undefined) body.payload = payload.value;
    $("schedule-create").disabled = true;
    try {
      await api("POST", "api/schedules", JSON.stringify(body));
      $("schedule-id").value = "";
      await poll();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      $("schedule-create").disabled = false;
    }
  }
  form.addEventListener("submit", create);
  poll();

  return {
    tick() {},
    leave() {
      stopped = true;
      clearTimeout(timer);
      form.removeEventListener("submit", create);
    },
  };
}
