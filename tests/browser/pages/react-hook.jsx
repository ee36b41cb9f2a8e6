// stepstream's own React hook (src/stepstream/server/static/react.js): useWorkflowRun folds
// the run's history and live workflow.update events into a step list.
import { createRoot } from "react-dom/client";
import { useWorkflowRun } from "stepstream-static/react.js";

function RunPage() {
  const runId = new URLSearchParams(location.search).get("run");
  const { status, run, steps, events } = useWorkflowRun(runId);
  return (
    <div>
      <p id="connection">{status}</p>
      <div id="run-status">{run ? run.status : ""}</div>
      <div id="steps">
        {steps.map((step, index) => (
          <div key={index} className="step">
            <strong>{step.stepName}</strong>: {step.status}
          </div>
        ))}
      </div>
      <ol id="log">
        {events.map((data, index) => (
          <li key={index} data-channel={runId} data-json={JSON.stringify(data)} />
        ))}
      </ol>
    </div>
  );
}

createRoot(document.getElementById("root")).render(<RunPage />);
