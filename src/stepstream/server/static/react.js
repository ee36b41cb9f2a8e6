/**
 * React hooks for stepstream realtime channels, built on `./stepstream.js`.
 *
 * Import this file through your bundler (it imports `react`), e.g. copy it next to
 * `stepstream.js` into your app, or point an import alias at the installed package's
 * `stepstream/server/static/` directory.
 *
 * @example
 *   import { useWorkflowRun } from "./stepstream/react.js";
 *
 *   function RunView({ runId }) {
 *     const { status, run, steps } = useWorkflowRun(runId);
 *     return (
 *       <ul>
 *         {steps.map((step, i) => <li key={i}>{step.stepName}: {step.status}</li>)}
 *         <li>{run ? run.status : status}</li>
 *       </ul>
 *     );
 *   }
 *
 * @module stepstream/react
 */
import { useEffect, useReducer, useRef, useState } from "react";
import { compareCursors, subscribe } from "./stepstream.js";

/**
 * Subscribe while mounted; resubscribes when `url`, `channels`, `events` or `history` change.
 * `onData` may change on every render (the latest one is called).
 *
 * @param {object} options
 * @param {string} [options.url="/api/realtime"]
 * @param {(string | null | undefined)[]} [options.channels=["default"]]  falsy entries are
 *   ignored, so `[runId]` can be passed before `runId` exists
 * @param {string[]} [options.events]
 * @param {boolean | number} [options.history]
 * @param {(message: import("./stepstream.js").Message) => void} [options.onData]
 * @param {boolean} [options.enabled=true]
 * @returns {{status: import("./stepstream.js").Status}}
 */
export function useRealtime({
  url = "/api/realtime",
  channels = ["default"],
  events,
  history,
  onData,
  enabled = true,
} = {}) {
  const [status, setStatus] = useState("disconnected");
  const onDataRef = useRef(onData);
  onDataRef.current = onData;
  const names = channels.filter(Boolean);
  const key = JSON.stringify([url, names, events ?? null, history ?? null]);

  useEffect(() => {
    if (!enabled || names.length === 0) {
      setStatus("disconnected");
      return undefined;
    }
    const subscription = subscribe({
      url,
      channels: names,
      events,
      history,
      onData: (message) => onDataRef.current?.(message),
      onStatus: setStatus,
    });
    return () => subscription.close();
  }, [key, enabled]); // eslint-disable-line react-hooks/exhaustive-deps

  return { status };
}

/**
 * @typedef {object} WorkflowStep
 * @property {string} stepName
 * @property {"running" | "completed" | "failed"} status
 * @property {number} timestamp   when the step (last) started, epoch ms
 * @property {number} [finishedAt]
 * @property {number} attempts    starts seen for this step (retries start it again)
 * @property {unknown} [result]
 * @property {string} [error]
 */

/**
 * @typedef {object} WorkflowRunState
 * @property {string | null} runId
 * @property {string | null} lastId  id of the last folded event (to ignore repeats)
 * @property {object[]} events       every `workflow.update` payload, in order
 * @property {WorkflowStep[]} steps
 * @property {{status: "running" | "success" | "failed" | "canceled", error?: string,
 *   startedAt?: number, finishedAt?: number} | null} run
 */

/**
 * The empty state for a run.
 * @param {string | null} runId
 * @returns {WorkflowRunState}
 */
export function initialRunState(runId = null) {
  return { runId, lastId: null, events: [], steps: [], run: null };
}

/**
 * Fold one `workflow.update` message into a run's state (pure; exported for tests and for
 * apps that keep the state elsewhere). Repeated or older ids are ignored.
 * @param {WorkflowRunState} state
 * @param {import("./stepstream.js").Message} message
 * @returns {WorkflowRunState}
 */
export function foldWorkflowUpdate(state, message) {
  if (state.lastId !== null && compareCursors(message.id, state.lastId) <= 0) return state;
  const update = /** @type {Record<string, any>} */ (message.data);
  const next = { ...state, lastId: message.id, events: [...state.events, update] };
  switch (update.type) {
    case "runStart":
      next.run = { status: "running", startedAt: update.timestamp };
      break;
    case "runFinish":
      next.run = {
        ...state.run,
        status: update.status,
        error: update.error,
        finishedAt: update.timestamp,
      };
      break;
    case "stepStart":
      next.steps = startStep(state.steps, update);
      break;
    case "stepFinish":
      next.steps = updateStep(state.steps, update.stepName, {
        status: "completed",
        result: update.result,
        finishedAt: update.timestamp,
      });
      break;
    case "stepFail":
      next.steps = updateStep(state.steps, update.stepName, {
        status: "failed",
        error: update.error,
        finishedAt: update.timestamp,
      });
      break;
    default:
      break;
  }
  return next;
}

/** A retried step restarts its unfinished entry; a finished name seen again is a new step. */
function startStep(steps, update) {
  const index = findOpenStep(steps, update.stepName);
  if (index === -1) {
    const step = { stepName: update.stepName, status: "running", timestamp: update.timestamp };
    return [...steps, { ...step, attempts: 1 }];
  }
  const retried = steps[index];
  return updateAt(steps, index, {
    status: "running",
    timestamp: update.timestamp,
    attempts: retried.attempts + 1,
    error: undefined,
    finishedAt: undefined,
  });
}

function updateStep(steps, stepName, changes) {
  const index = findOpenStep(steps, stepName);
  return index === -1 ? steps : updateAt(steps, index, changes);
}

/** The latest step of that name that has not completed. */
function findOpenStep(steps, stepName) {
  for (let i = steps.length - 1; i >= 0; i -= 1) {
    if (steps[i].stepName === stepName) return steps[i].status === "completed" ? -1 : i;
  }
  return -1;
}

function updateAt(steps, index, changes) {
  return steps.map((step, i) => (i === index ? { ...step, ...changes } : step));
}

function reduceRun(state, action) {
  if (action.type === "reset") return initialRunState(action.runId);
  return foldWorkflowUpdate(state, action.message);
}

/**
 * Follow a workflow run: its full history, then live `workflow.update` events, folded into a
 * step list (the seed guide's `useWorkflowWithRealtime`, without the trigger).
 *
 * @param {string | null | undefined} runId  nothing is subscribed until it is set
 * @param {{url?: string}} [options]
 * @returns {{status: import("./stepstream.js").Status, run: WorkflowRunState["run"],
 *   steps: WorkflowStep[], events: object[]}}  `status` is the connection's; `run.status` is
 *   the run's (`null` until `runStart` arrives)
 */
export function useWorkflowRun(runId, { url = "/api/realtime" } = {}) {
  const [state, dispatch] = useReducer(reduceRun, runId ?? null, initialRunState);
  // A new run id starts from an empty state; events of the previous run may still be in flight,
  // so they are dropped by channel below.
  if (state.runId !== (runId ?? null)) dispatch({ type: "reset", runId: runId ?? null });

  const { status } = useRealtime({
    url,
    channels: [runId],
    events: ["workflow.update"],
    history: true,
    enabled: Boolean(runId),
    onData: (message) => {
      if (message.channel === runId) dispatch({ type: "message", message });
    },
  });
  return { status, run: state.run, steps: state.steps, events: state.events };
}
