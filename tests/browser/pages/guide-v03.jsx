// The seed guide's hook and page (hooks/useWorkflowWithRealtime.ts), against
// @upstash/realtime 0.3.0. The useRealtime call is the guide's, unchanged; the run id comes
// from the page's URL (?run=...) instead of a trigger, and every onData call is also logged
// into #log so the test can check each event arrived exactly once, in order.
import { useRealtime } from "@upstash/realtime/client";
import { useState } from "react";
import { createRoot } from "react-dom/client";

function useWorkflowWithRealtime(initialRunId) {
  const [workflowRunId] = useState(initialRunId);
  const [steps, setSteps] = useState([]);
  const [runStatus, setRunStatus] = useState(null);
  const [log, setLog] = useState([]);

  const { status } = useRealtime({
    enabled: !!workflowRunId,
    channels: workflowRunId ? [workflowRunId] : [],
    event: "workflow.update",
    history: true, // Fetch past events on connection
    onData(data, channel) {
      setLog((prev) => [...prev, { channel, data }]);
      if (data.type === "runStart") {
        setRunStatus({ status: "running" });
      } else if (data.type === "runFinish") {
        setRunStatus({ status: data.status, error: data.error });
      } else if (data.type === "stepStart") {
        setSteps((prev) => [
          ...prev,
          { stepName: data.stepName, status: "running", timestamp: data.timestamp },
        ]);
      } else if (data.type === "stepFinish") {
        setSteps((prev) =>
          prev.map((step) =>
            step.stepName === data.stepName
              ? { ...step, status: "completed", result: data.result }
              : step,
          ),
        );
      } else if (data.type === "stepFail") {
        setSteps((prev) =>
          prev.map((step) =>
            step.stepName === data.stepName
              ? { ...step, status: "failed", error: data.error }
              : step,
          ),
        );
      }
    },
  });

  return { status, workflowRunId, steps, runStatus, log };
}

function WorkflowPage() {
  const runId = new URLSearchParams(location.search).get("run");
  const { status, steps, runStatus, log } = useWorkflowWithRealtime(runId);
  return (
    <div>
      <p id="connection">{status}</p>
      <h3>Run Status:</h3>
      <div id="run-status">{runStatus ? runStatus.status : ""}</div>
      <h3>Workflow Steps:</h3>
      <div id="steps">
        {steps.map((step, index) => (
          <div key={index} className="step">
            <strong>{step.stepName}</strong>: {step.status}
            {step.error && <span> - {step.error}</span>}
          </div>
        ))}
      </div>
      <ol id="log">
        {log.map((entry, index) => (
          <li key={index} data-channel={entry.channel} data-json={JSON.stringify(entry.data)} />
        ))}
      </ol>
    </div>
  );
}

createRoot(document.getElementById("root")).render(<WorkflowPage />);
