/**
 * The run page's timeline: one row per step, one bar per attempt, on an axis from the run's
 * start. Rows are keyed by step and bars by attempt, so a live update changes only what moved;
 * while the run is running only positions change, once per tick. A bar is never narrower than
 * `--bar-min` (dashboard.css), so a 5 ms step stays visible next to a long wait; its title and
 * the row's duration say exactly how long it took.
 */

import { h, jsonInto } from "./dom.js";
import { formatAxis, formatDuration, formatTime, niceStep } from "./format.js";

const TYPE_LABELS = { Run: "run", SleepFor: "sleep", SleepUntil: "sleep", Wait: "wait", Call: "call", Invoke: "invoke" };
// run-state.js's words -> the page's (data-state / data-status and the CSS classes)
const STEP_SHOWN = { completed: "success" };
const ATTEMPT_SHOWN = { completed: "success", retrying: "retry" };
const LOG_STATUS = { STEP_SUCCESS: "completed", STEP_FAILED: "failed", STEP_CANCELED: "canceled", STEP_RETRY: "retrying" };

/**
 * The steps to draw, as `{key, step}` in the order they started: those of the events
 * (run-state.js), then those only the run's log has (history trimmed, or a run older than its
 * events). A step of the events borrows its type and result from the log when its events lacked
 * them; the n-th step of a name in one is the n-th of that name in the other.
 */
export function timelineSteps(steps, logSteps = []) {
  const entries = keyed(steps).map(({ key, item }) => ({ key, step: item }));
  const byKey = new Map(entries.map((entry) => [entry.key, entry]));
  for (const { key, item: log } of keyed(logSteps)) {
    const entry = byKey.get(key);
    if (entry) {
      const { stepType, result, failureFunction } = entry.step;
      entry.step = {
        ...entry.step,
        stepType: stepType ?? log.stepType,
        result: result ?? log.out ?? null,
        failureFunction: failureFunction || log.stepId >= FAILURE_STEP_IDS,
      };
    } else if (log.startedAt) {
      entries.push({ key, step: fromLog(log) });
    }
  }
  const first = ({ step }) => step.tries[0]?.startedAt ?? Infinity;
  return entries.sort((a, b) => first(a) - first(b)); // stable: ties keep their order
}

/** `{key: "<name>#<n>", item}`: the n-th item of its name. */
function keyed(items) {
  const count = new Map();
  return items.map((item) => {
    const n = count.get(item.stepName) ?? 0;
    count.set(item.stepName, n + 1);
    return { key: `${item.stepName}#${n}`, item };
  });
}

// A failure function's steps are numbered from here in a run's log (records.FAILURE_POSITIONS).
const FAILURE_STEP_IDS = 1_000_000;
// Steps that wait rather than run while open, as run-state.js has them.
const WAITING_TYPES = new Set(["Wait", "SleepFor", "SleepUntil", "Invoke"]);

function fromLog(log) {
  const status = LOG_STATUS[log.state] ?? (WAITING_TYPES.has(log.stepType) ? "waiting" : "running");
  const attempt = {
    attempt: log.attempts || 1,
    status: status === "waiting" ? "running" : status,
    startedAt: log.startedAt,
    finishedAt: log.finishedAt,
    error: log.error,
  };
  return {
    stepName: log.stepName,
    stepType: log.stepType,
    failureFunction: log.stepId >= FAILURE_STEP_IDS,
    status,
    timestamp: log.startedAt,
    finishedAt: log.finishedAt,
    attempts: 1,
    tries: [attempt],
    result: log.out ?? null,
    error: log.error,
  };
}

/**
 * A timeline drawn into `box`. `times()` says `{startedAt, completedAt, running}` of the run;
 * `actions(step, key)`, if given, the buttons an expanded step offers (or `null`); `key` is
 * `<name>#<n>`, the n-th step of that name.
 * @returns {{render(entries): void, position(now: number): void}}
 */
export function createTimeline(box, times, actions = () => null) {
  const rows = new Map(); // key -> {row, bars, step}
  const expanded = new Set();
  let last = [];

  function frame(now) {
    const { startedAt, completedAt, running } = times();
    if (!startedAt) return null;
    let end = running ? now : completedAt ?? now;
    for (const { step } of rows.values()) for (const t of step.tries) end = Math.max(end, t.finishedAt ?? t.startedAt);
    return { t0: startedAt, width: Math.max(end - startedAt, 1000) };
  }

  function render(entries) {
    last = entries;
    if (!entries.length) {
      rows.clear();
      const text = times().running ? "No step has started yet…" : "This run has no steps.";
      box.replaceChildren(h("div", { class: "tl-empty" }, text));
      return;
    }
    let list = box.querySelector(".tl-rows");
    if (!list) {
      list = h("div", { class: "tl-rows" });
      box.replaceChildren(h("div", { class: "tl-grid" }), list);
    }
    let previous = null;
    for (const { key, step } of entries) {
      const entry = rows.get(key) ?? newRow(key, step.stepName);
      entry.step = step;
      updateRow(entry, expanded.has(key));
      const expected = previous ? previous.nextSibling : list.firstChild;
      if (expected !== entry.row) list.insertBefore(entry.row, expected);
      previous = entry.row;
    }
    position(Date.now());
  }

  function newRow(key, name) {
    const row = h(
      "div",
      { class: "tl-row", role: "button", tabindex: "0", dataset: { step: name } },
      h("div", { class: "tl-label" },
        h("span", { class: "dot" }),
        h("span", { class: "name", title: name }, name),
        h("span", { class: "type" }),
        h("span", { class: "type copied-tag", title: "copied from the run this one was forked from, not executed" }, "copied"),
        h("span", { class: "type failure-tag", title: "a step of the workflow's failure function, run after the run failed" }, "failure fn"),
        h("span", { class: "tries" }),
        h("span", { class: "d" })),
      h("div", { class: "tl-track" }),
    );
    const toggle = (event) => {
      if (event.target.closest(".tl-detail")) return;
      if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
      event.preventDefault();
      if (expanded.has(key)) expanded.delete(key);
      else expanded.add(key);
      render(last);
    };
    row.addEventListener("click", toggle);
    row.addEventListener("keydown", toggle);
    const entry = { row, bars: [], step: null, key };
    rows.set(key, entry);
    return entry;
  }

  function updateRow(entry, open) {
    const { row, step } = entry;
    const n = step.tries.length;
    row.dataset.state = STEP_SHOWN[step.status] ?? step.status;
    // A forked run's copied steps finished before it was created (their original times).
    const t0 = times().startedAt;
    const copied = step.status === "completed" && Boolean(t0) && step.finishedAt !== null && step.finishedAt < t0;
    row.classList.toggle("copied", copied);
    entry.copied = copied;
    row.querySelector(".copied-tag").hidden = !copied;
    row.querySelector(".failure-tag").hidden = !step.failureFunction;
    row.dataset.attempts = String(n);
    const type = row.querySelector(".type");
    type.textContent = TYPE_LABELS[step.stepType] ?? String(step.stepType).toLowerCase();
    type.hidden = !step.stepType || step.stepType === "Run";
    const tries = row.querySelector(".tries");
    tries.textContent = n > 1 ? `×${n}` : "";
    tries.title = n > 1 ? `${n} attempts` : "";
    const track = row.querySelector(".tl-track");
    while (entry.bars.length < n) {
      const bar = h("div", { class: "bar" });
      track.append(bar);
      entry.bars.push(bar);
    }
    const kind = step.stepType === "Wait" ? "wait" : step.stepType === "SleepFor" || step.stepType === "SleepUntil" ? "sleep" : null;
    step.tries.forEach((t, i) => {
      const bar = entry.bars[i];
      const status = ATTEMPT_SHOWN[t.status] ?? t.status;
      bar.className = `bar ${kind && (status === "running" || status === "success") ? `${kind}${t.finishedAt === null ? " open" : ""}` : status}`;
      bar.dataset.status = status;
      bar.dataset.attempt = String(t.attempt);
      const took = t.finishedAt === null ? "in progress" : formatDuration(t.finishedAt - t.startedAt);
      const how = copied ? "copied, not executed" : `attempt ${t.attempt} · ${status}`;
      bar.title = `${step.stepName} · ${how} · ${took}${t.error ? ` · ${t.error}` : ""}`;
    });
    let detail = row.querySelector(".tl-detail");
    if (!open) {
      detail?.remove();
      return;
    }
    if (!detail) {
      detail = h("div", { class: "tl-detail" });
      row.append(detail);
    }
    fillDetail(detail, step);
    const buttons = actions(step, entry.key);
    if (buttons) detail.append(h("div", { class: "tl-actions" }, buttons));
  }

  function position(now) {
    const span = frame(now);
    if (!span) return;
    const { t0, width } = span;
    const { completedAt, running } = times();
    const openEnd = running ? now : completedAt ?? now;
    for (const { step, bars, row, copied } of rows.values()) {
      step.tries.forEach((t, i) => {
        // A copied step took no time in this run: a mark at its start, however long it took.
        const end = copied ? t.startedAt : t.finishedAt ?? openEnd;
        // Kept inside the track when its minimum width is more than the time left after it.
        bars[i].style.left = `min(${(Math.max(0, t.startedAt - t0) / width) * 100}%, 100% - var(--bar-min))`;
        bars[i].style.width = `${(Math.max(0, end - t.startedAt) / width) * 100}%`;
      });
      const first = step.tries[0]?.startedAt;
      const end = step.tries.at(-1)?.finishedAt ?? (running ? now : completedAt);
      row.querySelector(".d").textContent = first && end ? formatDuration(end - first) : "";
    }
    drawAxis(box.querySelector(".tl-grid"), width);
  }

  return { render, position };
}

function fillDetail(detail, step) {
  detail.replaceChildren(
    h("ul", {},
      step.tries.map((t) => {
        const status = ATTEMPT_SHOWN[t.status] ?? t.status;
        return h("li", {},
          h("span", { class: "mono" }, `attempt ${t.attempt}`),
          h("span", { class: `st-${status}` }, status),
          h("span", { class: "muted" }, `${formatTime(t.startedAt, { millis: true })} · ${t.finishedAt ? formatDuration(t.finishedAt - t.startedAt) : "in progress"}`),
          t.error ? h("span", { class: "st-failed" }, t.error) : null);
      })),
  );
  if (step.status === "completed") {
    const pre = h("pre", { class: "json" });
    jsonInto(pre, step.result);
    detail.append(pre);
  }
}

/** Axis ticks at a round interval, about five across. */
function drawAxis(grid, width) {
  if (!grid) return;
  const stepMs = niceStep(width / 5);
  const labels = [];
  for (let i = 0; i <= Math.floor(width / stepMs); i++) labels.push(i * stepMs);
  if (grid.childElementCount !== labels.length) {
    grid.replaceChildren(...labels.map(() => h("div", { class: "tl-tick" }, h("span"))));
  }
  labels.forEach((ms, i) => {
    const tick = grid.children[i];
    tick.style.left = `${(ms / width) * 100}%`;
    tick.firstChild.textContent = ms === 0 ? "0" : formatAxis(ms, stepMs);
    tick.classList.toggle("last", ms / width > 0.93 && i > 0);
  });
}
