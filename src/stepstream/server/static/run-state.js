/**
 * A workflow run's state, folded from the `workflow.update` events of its channel. The one
 * reducer behind the dashboard and `react.js`'s `useWorkflowRun`; the terminal follower
 * (`stepstream.console.RunProgress`) is its Python twin, and tests/test_run_state.py feeds
 * both the same events and compares what they make of them.
 *
 * - Events are applied in id order, each once: an id not above the last one applied (a
 *   duplicate, or an event older than one already seen) changes nothing.
 * - The run is `null` until its first event, then `running` until `runFinish` says `success`,
 *   `failed` or `canceled`. A run that finishes closes its open steps as `canceled`.
 * - A `runStart` with `resumed: true` after `runFinish` reopens the run (DESIGN §14): `running`
 *   again, no finish time or error, and its `failed` and `canceled` steps become `retrying`, so
 *   the step that runs again continues its own row. Any other `runStart` changes nothing.
 * - Steps are listed in the order they first appear. A step is open while it is `running`,
 *   `waiting` (a `Wait`, `SleepFor`, `SleepUntil` or `Invoke` step) or `retrying` (it failed and
 *   will run again). A `stepStart` for the name of an open step is its next attempt; any other
 *   `stepStart` begins a new step, so a name used again after it completed or failed is a step
 *   of its own.
 * - A `stepFinish` / `stepFail` whose `stepStart` was never seen (trimmed from history) still
 *   shows its step, with an attempt that starts and ends at that event.
 *
 * @example
 *   let state = initialRunState("wfr_123");
 *   for (const message of messages) state = foldWorkflowUpdate(state, message);
 *   state.run?.status;                      // "running" | "success" | "failed" | "canceled"
 *   state.steps.map((s) => s.status);       // "completed", "retrying", ...
 *
 * @module stepstream/run-state
 */
import { compareCursors, parseCursor } from "./stepstream.js";

/**
 * @typedef {"running" | "waiting" | "retrying" | "completed" | "failed" | "canceled"} StepStatus
 * @typedef {"running" | "retrying" | "completed" | "failed" | "canceled"} AttemptStatus
 *   `retrying`: this attempt failed, or was cut short, and another one followed or will follow
 */

/**
 * @typedef {object} Attempt
 * @property {number} attempt       its number, as the engine counts it (1 for the first)
 * @property {AttemptStatus} status
 * @property {number | null} startedAt   epoch ms
 * @property {number | null} finishedAt
 * @property {string | null} error
 */

/**
 * @typedef {object} WorkflowStep
 * @property {string} stepName
 * @property {string | null} stepType   `Run`, `SleepFor`, `Wait`, ... (`null` if not sent)
 * @property {boolean} failureFunction  a step of the workflow's failure function
 * @property {StepStatus} status
 * @property {number | null} timestamp  when its latest attempt started
 * @property {number | null} finishedAt when its latest attempt ended (`null` while open)
 * @property {number} attempts          `tries.length`
 * @property {Attempt[]} tries          every attempt, oldest first
 * @property {unknown} result           once completed (`null` before)
 * @property {string | null} error      the latest attempt's error
 */

/**
 * @typedef {object} WorkflowRun
 * @property {"running" | "success" | "failed" | "canceled"} status
 * @property {number | null} startedAt   the first event's timestamp (`runStart`'s, unless trimmed)
 * @property {number | null} finishedAt
 * @property {string | null} error
 */

/**
 * @typedef {object} WorkflowRunState
 * @property {string | null} runId
 * @property {string | null} lastId      id of the last event applied
 * @property {unknown[]} events          every applied event's payload, in order
 * @property {WorkflowRun | null} run
 * @property {WorkflowStep[]} steps
 */

const OPEN = new Set(["running", "waiting", "retrying"]);
// Steps that wait rather than run while open: an event, a sleep, a child run.
const WAITING = new Set(["Wait", "SleepFor", "SleepUntil", "Invoke"]);
const REOPENED = new Set(["failed", "canceled"]); // a resumed run's steps that run again
const KINDS = new Set(["runStart", "stepStart", "stepFinish", "stepFail", "runFinish"]);

/**
 * The state of a run no event has been applied to.
 * @param {string | null} [runId]
 * @returns {WorkflowRunState}
 */
export function initialRunState(runId = null) {
  return { runId, lastId: null, events: [], run: null, steps: [] };
}

/**
 * Apply one message (`{id, data}`, as `stepstream.js` delivers it) to a run's state. Pure: the
 * state passed in is never changed, and a message that changes nothing returns it as it is.
 * @param {WorkflowRunState} state
 * @param {{id: string, data: unknown}} message
 * @returns {WorkflowRunState}
 */
export function foldWorkflowUpdate(state, message) {
  if (parseCursor(message.id) === null) return state;
  if (state.lastId !== null && compareCursors(message.id, state.lastId) <= 0) return state;
  const next = { ...state, lastId: message.id, events: [...state.events, message.data] };
  const update = /** @type {Record<string, any>} */ (
    message.data !== null && typeof message.data === "object" ? message.data : {}
  );
  if (!KINDS.has(update.type)) return next;
  const at = update.timestamp ?? null;
  const run = state.run ?? { status: "running", startedAt: at, finishedAt: null, error: null };
  next.run = run;
  switch (update.type) {
    case "runStart":
      if (update.resumed && run.status !== "running") {
        next.run = { ...run, status: "running", finishedAt: null, error: null };
        next.steps = state.steps.map((step) => (REOPENED.has(step.status) ? reopenStep(step) : step));
      }
      break;
    case "stepStart":
      next.steps = startStep(state.steps, update, at);
      break;
    case "stepFinish":
      next.steps = endStep(state.steps, update, at, "completed");
      break;
    case "stepFail":
      next.steps = endStep(state.steps, update, at, update.willRetry ? "retrying" : "failed");
      break;
    case "runFinish":
      next.run = { ...run, status: update.status, finishedAt: at, error: update.error ?? null };
      next.steps = state.steps.map((step) => (OPEN.has(step.status) ? cancelStep(step, at) : step));
      break;
    default:
      break;
  }
  return next;
}

/** Whether a step can still change: running, waiting, or about to be retried. */
export function isOpen(step) {
  return OPEN.has(step.status);
}

function startStep(steps, update, at) {
  const [list, index, step] = stepFor(steps, update, at);
  // An attempt still running was cut short (its worker was lost): it is tried again.
  const tries = step.tries.map((t) => (t.status === "running" ? { ...t, status: "retrying", finishedAt: at } : t));
  tries.push(attempt(update, tries.length + 1, "running", at));
  const status = WAITING.has(step.stepType) ? "waiting" : "running";
  return replaceAt(list, index, { ...step, status, timestamp: at, finishedAt: null, attempts: tries.length, tries, error: null });
}

/** `stepFinish` (`completed`) or `stepFail` (`retrying` / `failed`) of the step's attempt. */
function endStep(steps, update, at, status) {
  const [list, index, step] = stepFor(steps, update, at);
  const tries = [...step.tries];
  // Its start was not seen (trimmed from history): an attempt that starts as it ends.
  if (tries.at(-1)?.status !== "running") tries.push(attempt(update, tries.length + 1, status, at));
  const error = status === "completed" ? null : (update.error ?? null);
  const ended = { status, finishedAt: at, error };
  tries[tries.length - 1] = { ...tries.at(-1), ...ended };
  const result = status === "completed" ? (update.result ?? null) : step.result;
  return replaceAt(list, index, { ...step, ...ended, attempts: tries.length, tries, result });
}

function cancelStep(step, at) {
  const tries = step.tries.map((t) => (t.status === "running" ? { ...t, status: "canceled", finishedAt: at } : t));
  return { ...step, status: "canceled", finishedAt: step.finishedAt ?? at, tries };
}

/** A failed or canceled step of a resumed run: open again, its last attempt one that was retried. */
function reopenStep(step) {
  const tries = step.tries.map((t) => (REOPENED.has(t.status) ? { ...t, status: "retrying" } : t));
  return { ...step, status: "retrying", tries };
}

/**
 * `[steps, index, step]`: the event's step is the open step of its name, or a new one at the
 * end of the list; `step` is that step with its type, if the event says it first.
 */
function stepFor(steps, update, at) {
  let index = openStepIndex(steps, update.stepName);
  if (index === -1) {
    const step = { stepName: update.stepName, stepType: null, failureFunction: false, status: "running", timestamp: at, finishedAt: null, attempts: 0, tries: [], result: null, error: null };
    steps = [...steps, step];
    index = steps.length - 1;
  }
  const step = steps[index];
  const failureFunction = step.failureFunction || update.failureFunction === true;
  return [steps, index, { ...step, stepType: step.stepType ?? update.stepType ?? null, failureFunction }];
}

/** The latest step of that name, if it is open; else -1. */
function openStepIndex(steps, stepName) {
  for (let i = steps.length - 1; i >= 0; i -= 1) {
    if (steps[i].stepName === stepName) return OPEN.has(steps[i].status) ? i : -1;
  }
  return -1;
}

function attempt(update, number, status, at) {
  return { attempt: update.attempt ?? number, status, startedAt: at, finishedAt: null, error: null };
}

function replaceAt(steps, index, step) {
  const copy = steps.slice();
  copy[index] = step;
  return copy;
}
