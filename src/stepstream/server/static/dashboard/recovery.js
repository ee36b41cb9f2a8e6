/**
 * Forking a finished run from one of its steps (`POST api/runs/<id>/fork?fromStep=NAME`): the
 * dialog that chooses the step and shows, for each step of the run, whether the new run copies
 * it or runs it; then the new run's page.
 */

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { runHref } from "./runs.js";

const FAILURE_POSITIONS = 1_000_000; // stepId of the failure function's steps and after

/** The run's own steps (not its failure function's), in order. */
function runSteps(log) {
  return (log?.steps ?? []).filter((step) => step.stepId < FAILURE_POSITIONS);
}

/** The names a run can be forked from, each once, in the order they first ran. */
export function forkableSteps(log) {
  return [...new Set(runSteps(log).map((step) => step.stepName))];
}

/** Open the fork dialog for run `log`, with `stepName` chosen (else its failed step, else its first). */
export function openForkDialog(log, stepName) {
  const dialog = $("fork-dialog");
  const select = $("fork-step");
  const error = $("fork-error");
  const submit = $("fork-submit");
  const names = forkableSteps(log);
  const failed = runSteps(log).find((step) => step.state === "STEP_FAILED")?.stepName;
  $("fork-workflow").textContent = log.workflowName;
  select.replaceChildren(...names.map((name) => h("option", { value: name }, name)));
  select.value = stepName ?? failed ?? names[0] ?? "";
  error.hidden = true;

  // What the new run does with each step: those before the first of the chosen name that
  // completed are copied; every other one runs.
  const plan = () => {
    const steps = runSteps(log);
    const at = steps.findIndex((step) => step.stepName === select.value);
    $("fork-plan").replaceChildren(
      ...steps.map((step, i) => {
        const copied = i < at && step.state === "STEP_SUCCESS";
        return h("li", { dataset: { plan: copied ? "copied" : "runs" } },
          h("span", { class: "name" }, step.stepName),
          h("span", { class: "plan" }, copied ? "copied" : "runs"));
      }),
    );
  };
  plan();
  select.onchange = plan;

  const close = () => dialog.close();
  $("fork-close").onclick = close;
  $("fork-cancel").onclick = close;
  dialog.onclick = (event) => {
    if (event.target === dialog) close(); // backdrop
  };
  $("fork-form").onsubmit = async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      const q = new URLSearchParams({ fromStep: select.value });
      const reply = await api("POST", `api/runs/${encodeURIComponent(log.workflowRunId)}/fork?${q}`);
      close();
      location.hash = runHref(reply.workflowRunId);
    } catch (err) {
      error.textContent = `Could not fork: ${err.message}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  };
  if (!dialog.open) dialog.showModal();
  select.focus();
}
