/**
 * One run, live (`#/runs/<id>`). `GET api/runs/<id>` gives payload, result and error; the run's
 * channel, subscribed with `history: true`, gives its `workflow.update` events, each exactly
 * once, folded by run-state.js into the timeline and appended to the event log: a reload
 * mid-run loses nothing. Cancel and Send event act on a running run; Resume, Restart, Fork and
 * Delete on a finished one (forking is recovery.js's). The channel stays followed after the run
 * finishes: a resumed run (from here or anywhere) goes on live on the same page.
 */

import { foldWorkflowUpdate, initialRunState } from "../run-state.js";
import { subscribe } from "../stepstream.js";
import { api, realtimeUrl } from "./api.js";
import { appendEvent, clearEvents } from "./eventlog.js";
import { $, h, jsonInto, labelChips, setBadge, setCrumbs } from "./dom.js";
import { FINISH_STATES, STATE_LABELS, formatDuration, formatTime, fullDate, parseJsonField } from "./format.js";
import { forkableSteps, openForkDialog } from "./recovery.js";
import { runHref } from "./runs.js";
import { createTimeline, timelineSteps } from "./timeline.js";

const RETRY_MS = 2000;
const REFRESH_MS = 3000; // the log of a running run, for what it waits for (not in its events)
// Events after which a running run's log says something new: what it waits for, its status.
const LOG_EVENTS = new Set(["stepStart", "stepFinish", "stepFail"]);
// What a running run is doing (its log's `status`), on its badge.
const STATUS_LABELS = { queued: "Queued", scheduled: "Scheduled", running: "Running", retrying: "Retrying", waiting: "Waiting" };
const CONN_LABELS = { connecting: "connecting…", connected: "live", disconnected: "reconnecting…", error: "offline, retrying…" };
const FINISHED = new Set(Object.values(FINISH_STATES));
const RESUMABLE = new Set(["RUN_FAILED", "RUN_CANCELED"]);

/** Show run `runId`; returns the view (`tick`, `leave`). */
export function showRun(runId) {
  $("run-view").hidden = false;
  document.title = `${runId} · stepstream`;
  setCrumbs(h("a", { href: "#/" }, "Runs"), h("span", { class: "current" }, runId));

  let live = initialRunState(runId); // from the run's events
  let log = null; // GET api/runs/<id>
  let stopped = false;
  let logTimer = null;
  let loading = null; // the log request in flight, if any
  let loadAgain = false;
  let lastWaitDefault = "";
  const timeline = createTimeline(
    $("timeline"),
    () => ({ startedAt: startedAt(), completedAt: completedAt(), running: state() === "RUN_STARTED" }),
    forkHere,
  );

  resetPage(runId);

  function state() {
    return FINISH_STATES[live.run?.status] ?? log?.workflowState ?? (live.run ? "RUN_STARTED" : "");
  }

  function startedAt() {
    return log?.workflowRunCreatedAt ?? live.run?.startedAt ?? null;
  }

  function completedAt() {
    return log?.workflowRunCompletedAt ?? live.run?.finishedAt ?? null;
  }

  let loadFailure = null; // the banner of the last failed read of the log, until one succeeds

  async function loadLog() {
    clearTimeout(logTimer);
    try {
      const reply = await api("GET", `api/runs/${encodeURIComponent(runId)}`);
      if (stopped) return;
      log = reply;
      if (loadFailure !== null) {
        // Read again after a failure: its banner goes, unless an action's error replaced it.
        if ($("run-banner").textContent === loadFailure) banner("");
        loadFailure = null;
      }
      render();
      if (log.workflowState === "RUN_STARTED") logTimer = setTimeout(loadLog, REFRESH_MS);
    } catch (error) {
      if (stopped) return;
      if (error.status === 404 && !live.events.length) {
        notFound(error.message);
        return;
      }
      loadFailure = `Could not load the run: ${error.message}`;
      banner(loadFailure);
      logTimer = setTimeout(loadLog, RETRY_MS);
    }
  }

  /** The log again, now, without waiting for the next refresh: one request at a time, and at
   * most one more after it however many events came meanwhile (a history of hundreds). */
  function refreshLog() {
    if (loading) {
      loadAgain = true;
      return;
    }
    loading = loadLog().finally(() => {
      loading = null;
      if (loadAgain && !stopped) {
        loadAgain = false;
        refreshLog();
      }
    });
  }

  function notFound(message) {
    $("run-view").hidden = true;
    $("notfound-view").hidden = false;
    $("notfound-title").textContent = "Run not found";
    $("notfound-text").textContent = message;
    subscription.close();
  }

  function onData(message) {
    if (stopped) return;
    const next = foldWorkflowUpdate(live, message);
    if (next === live) return; // seen already
    live = next;
    appendEvent(message);
    const type = message.data?.type;
    if (type === "runStart" && message.data.resumed && log && FINISHED.has(log.workflowState)) {
      // Resumed: the log that said it finished is out of date until it is read again.
      log = { ...log, workflowState: "RUN_STARTED", workflowRunCompletedAt: null, error: null };
      loadLog();
    }
    if (type === "runFinish") loadLog(); // result, error and completion time
    else if (LOG_EVENTS.has(type) && log?.workflowState === "RUN_STARTED") refreshLog();
    scheduleRender();
  }

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
    const running = runState === "RUN_STARTED";
    $("run-workflow").textContent = log?.displayName ?? log?.workflowName ?? "…";
    setBadge($("run-state"), runState);
    if (running && log?.status && STATUS_LABELS[log.status]) $("run-state").textContent = STATUS_LABELS[log.status];
    document.title = `${log?.displayName ?? log?.workflowName ?? runId} · ${STATE_LABELS[runState] ?? "…"} · stepstream`;
    $("run-started").textContent = formatTime(startedAt());
    $("run-started").title = fullDate(startedAt());
    $("run-finished").textContent = running ? "—" : formatTime(completedAt());
    $("run-finished").title = fullDate(completedAt());
    renderActions(runState);
    renderTags();
    $("conn").hidden = FINISHED.has(runState);
    renderStatus(running);
    if (log) renderOutcome(runState, log.error ?? live.run?.error);

    const entries = timelineSteps(live.steps, log?.steps);
    const steps = entries.map((entry) => entry.step);
    renderNotify(running, steps.find((step) => step.status === "waiting" && step.stepType === "Wait"));
    const done = steps.filter((step) => step.status === "completed").length;
    $("run-steps").textContent = steps.length ? `${done} / ${steps.length} done` : "—";
    timeline.render(entries);
    tick();
  }

  function renderOutcome(runState, error) {
    jsonInto($("run-payload"), log.requestPayload ?? undefined, "no payload");
    const outcome = $("run-result");
    const card = $("outcome-card");
    // Canceled is an operator's decision, not an error: shown plainly, not in red.
    const failed = runState === "RUN_FAILED" || (runState === "RUN_CANCELED" && error && error !== "canceled");
    outcome.classList.toggle("error", Boolean(failed));
    card.classList.toggle("failed", Boolean(failed));
    $("outcome-title").textContent = failed ? (runState === "RUN_FAILED" ? "Error" : "Canceled") : "Result";
    if (failed) outcome.textContent = error ?? "failed";
    else if (runState === "RUN_SUCCESS") jsonInto(outcome, log.workflowRunResponse ?? null);
    else if (runState === "RUN_CANCELED") jsonInto(outcome, undefined, "The run was canceled.");
    else jsonInto(outcome, undefined, "Running… the result appears here when the run finishes.");
  }

  /** Cancel while it runs; once finished Resume (failed or canceled), Restart, Fork, Delete. */
  function renderActions(runState) {
    const finished = Boolean(log) && FINISHED.has(runState);
    $("cancel-run").hidden = runState !== "RUN_STARTED" || !log;
    $("resume-run").hidden = !finished || !RESUMABLE.has(runState);
    for (const id of ["restart-run", "fork-run", "delete-run"]) $(id).hidden = !finished;
    $("fork-run").disabled = !forkableSteps(log).length;
  }

  /** Labels as chips (each a link to the runs with it), and the run it was restarted or forked from. */
  function renderTags() {
    const tags = $("run-tags");
    const key = JSON.stringify([log?.labels, log?.restartedFrom, log?.forkedFrom]);
    if (tags.dataset.key === key) return;
    tags.dataset.key = key;
    const from = (text, id) => id && h("span", { class: "lineage" }, `${text} `, h("a", { href: runHref(id) }, h("code", {}, id)));
    const parts = [
      log?.labels?.length ? labelChips(log.labels, { links: true }) : null,
      from("restarted from", log?.restartedFrom),
      from("forked from", log?.forkedFrom),
    ].filter(Boolean);
    tags.replaceChildren(...parts);
    tags.hidden = !parts.length;
  }

  /** "Fork from here" in an expanded step of a finished run (the first step of its name). */
  function forkHere(step, key) {
    if (!log || !FINISHED.has(state()) || !key.endsWith("#0") || !forkableSteps(log).includes(step.stepName)) return null;
    return h("button", { type: "button", class: "btn fork-here", onclick: () => openForkDialog(log, step.stepName) }, "Fork from here");
  }

  /** What a running run is doing, from its log: queued, waiting for what, retrying. */
  function renderStatus(running) {
    let note = $("run-status-note");
    if (!note) {
      note = h("span", { id: "run-status-note", class: "status-note", style: "margin-left: 10px; font-size: 13px; color: var(--muted)" });
      $("run-state").after(note);
    }
    note.textContent = running && log ? statusText(log) : "";
    note.hidden = !note.textContent;
  }

  /** Send event: offered while running; defaults to the event a Wait step waits for. */
  function renderNotify(running, waiting) {
    const card = $("notify-card");
    const open = log?.steps?.find((step) => step.waitEventId && step.state === "STEP_PROGRESS");
    card.hidden = !running || !log || !(open || waiting);
    card.classList.toggle("waiting", Boolean(waiting));
    $("notify-hint").textContent = waiting
      ? `“${waiting.stepName}” is waiting for an event.`
      : "Notify a waiting step of this run.";
    const input = $("notify-event");
    const suggested = open?.waitEventId ?? "";
    if (suggested && (input.value === "" || input.value === lastWaitDefault)) {
      input.value = suggested;
      lastWaitDefault = suggested;
    }
  }

  function tick() {
    const now = Date.now();
    const running = state() === "RUN_STARTED";
    const t0 = startedAt();
    const end = running ? now : completedAt();
    $("run-duration").textContent = t0 && end ? formatDuration(end - t0) : "—";
    if (running) timeline.position(now);
  }

  function banner(message) {
    $("run-banner").textContent = message;
    $("run-banner").hidden = !message;
  }

  // --- actions --------------------------------------------------------------------------------

  async function cancelRun() {
    const name = log?.displayName ?? log?.workflowName ?? "this run";
    if (!window.confirm(`Cancel ${name} (${runId})? It ends now as canceled; its failure function does not run.`)) return;
    const button = $("cancel-run");
    button.disabled = true;
    banner("");
    try {
      await api("POST", `api/runs/${encodeURIComponent(runId)}/cancel`);
      await loadLog();
    } catch (error) {
      banner(`Could not cancel: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  /** Call the API for an action of the run's header; its error goes to the run's banner. */
  async function act(button, what, call) {
    button.disabled = true;
    banner("");
    try {
      return await call();
    } catch (error) {
      banner(`Could not ${what}: ${error.message}`);
      return undefined;
    } finally {
      button.disabled = false;
    }
  }

  const path = `api/runs/${encodeURIComponent(runId)}`;

  async function resumeRun() {
    const reply = await act($("resume-run"), "resume", () => api("POST", `${path}/resume`));
    if (reply) loadLog(); // its events (a new runStart, then its steps) follow live
  }

  async function restartRun() {
    const name = log?.displayName ?? log?.workflowName ?? "this workflow";
    const question = `Restart ${name}? A new run starts with the same payload and labels; this one is kept.`;
    if (!window.confirm(question)) return;
    const reply = await act($("restart-run"), "restart", () => api("POST", `${path}/restart`));
    if (reply) location.hash = runHref(reply.workflowRunId);
  }

  async function deleteRun() {
    const name = log?.displayName ?? log?.workflowName ?? "this run";
    if (!window.confirm(`Delete ${name} (${runId})? Its log and its events are removed for good.`)) return;
    const reply = await act($("delete-run"), "delete", () => api("DELETE", path));
    if (reply) location.hash = "#/";
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
    const invalid = (input, message) => {
      error.textContent = message;
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
    };
    const eventId = eventInput.value.trim();
    if (!eventId) return invalid(eventInput, "Enter the event id the step waits for.");
    const parsed = parseJsonField(dataInput.value);
    if (!parsed.ok) return invalid(dataInput, `The data is not valid JSON: ${parsed.message}`);
    const button = $("notify-send");
    button.disabled = true;
    try {
      const body = parsed.value === undefined ? undefined : JSON.stringify(parsed.value);
      const q = new URLSearchParams({ workflowRunId: runId });
      const result = await api("POST", `api/events/${encodeURIComponent(eventId)}?${q}`, body);
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
  $("resume-run").onclick = resumeRun;
  $("restart-run").onclick = restartRun;
  $("fork-run").onclick = () => log && openForkDialog(log);
  $("delete-run").onclick = deleteRun;
  $("notify-form").onsubmit = sendEvent;
  $("copy-id").onclick = copyId;

  // Closed when the page is left or the run is not found: a finished run may be resumed.
  const subscription = follow(runId, onData, (status) => stopped || setConn(status), banner);
  loadLog();

  return {
    tick,
    leave() {
      stopped = true;
      clearTimeout(logTimer);
      subscription.close();
      $("fork-dialog").close(); // it forks this run: not another page's
    },
  };
}

/** Subscribe to the run's channel, history first, once a channel token is minted. */
function follow(runId, onData, onStatus, onError) {
  let closed = false;
  let sub = null;
  realtimeUrl([runId])
    .then((url) => {
      if (closed) return;
      sub = subscribe({ url, channels: [runId], events: ["workflow.update"], history: true, onData, onStatus });
    })
    .catch((error) => onError(`Live updates unavailable: ${error.message}`));
  return {
    close() {
      closed = true;
      sub?.close();
    },
  };
}

/** A running run's `status` and `waitingFor` (its log), in words. */
export function statusText(log) {
  const flow = log.flowControl;
  switch (log.status) {
    case "queued":
      return log.queuedBecause ? `Queued: ${log.queuedBecause}` : "Queued: waiting for a worker to claim it";
    case "scheduled":
      return "Scheduled: not due yet";
    case "retrying":
      return "Retrying: a step failed and waits for its next attempt";
    case "waiting":
      if (log.waitingFor === "flowControl" && flow) {
        const limits = [
          flow.parallelism ? `at most ${flow.parallelism} at once` : "",
          flow.rate ? `${flow.rate} per ${flow.period} s` : "",
        ].filter(Boolean);
        return `Waiting for flow control: key “${flow.key}” (${limits.join(", ")})`;
      }
      if (log.waitingFor === "event") {
        const step = log.steps.find((s) => s.waitEventId && s.state === "STEP_PROGRESS");
        return step ? `Waiting for event “${step.waitEventId}”` : "Waiting for an event";
      }
      if (log.waitingFor === "sleep") return "Sleeping";
      if (log.waitingFor === "childRun") return "Waiting for a child run";
      return "Waiting";
    default:
      return "";
  }
}

function resetPage(runId) {
  $("run-id").textContent = runId;
  $("run-workflow").textContent = "…";
  setBadge($("run-state"), "");
  $("run-banner").hidden = true;
  clearEvents();
  $("timeline").replaceChildren();
  jsonInto($("run-payload"), undefined, "loading…");
  jsonInto($("run-result"), undefined, "loading…");
  $("notify-error").hidden = true;
  $("notify-result").hidden = true;
  $("notify-event").value = "";
  $("notify-event").dataset.auto = "";
  $("run-tags").hidden = true;
  $("run-tags").dataset.key = "";
  for (const id of ["cancel-run", "resume-run", "restart-run", "fork-run", "delete-run"]) $(id).hidden = true;
  setConn("connecting");
  $("conn").hidden = false;
}

function setConn(status) {
  const el = $("conn");
  el.dataset.status = status;
  el.textContent = CONN_LABELS[status] ?? status;
}
