/**
 * React hooks for stepstream realtime channels, built on `./stepstream.js`.
 *
 * Import this file through your bundler (it imports `react`), e.g. copy it next to
 * `stepstream.js` and `run-state.js` into your app, or point an import alias at the installed
 * package's `stepstream/server/static/` directory.
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
import { foldWorkflowUpdate, initialRunState } from "./run-state.js";
import { subscribe } from "./stepstream.js";

// The reducer (and its state's shape) live in run-state.js, shared with the dashboard.
export { foldWorkflowUpdate, initialRunState };

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
 * @returns {{status: import("./stepstream.js").Status,
 *   run: import("./run-state.js").WorkflowRun | null,
 *   steps: import("./run-state.js").WorkflowStep[], events: unknown[]}}  `status` is the
 *   connection's; `run.status` is the run's (`run` is `null` until its first event); each step's
 *   `status` is `running`, `waiting` (a wait for an event, a sleep or a child run: its
 *   `stepType` says which), `retrying`, `completed`, `failed` or `canceled`
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
