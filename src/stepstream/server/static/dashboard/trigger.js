/** The "New run" dialog: choose a workflow, give a JSON payload, trigger, open the new run. */

import { api } from "./api.js";
import { $, loadWorkflows } from "./dom.js";
import { parseJsonField } from "./format.js";
import { runHref } from "./runs.js";

export function setupTrigger() {
  const dialog = $("trigger-dialog");
  const form = $("trigger-form");
  const payload = $("trigger-payload");
  const error = $("trigger-error");
  const submit = $("trigger-submit");
  const showError = (message) => {
    error.textContent = message;
    error.hidden = false;
  };

  // A paused workflow still accepts runs: say so, and offer to resume it.
  let paused = [];
  const showPaused = () => {
    $("trigger-paused").hidden = !paused.includes($("trigger-workflow").value);
  };
  const readPaused = async () => {
    try {
      paused = (await api("GET", "api/workflows")).paused ?? [];
    } catch {
      paused = [];
    }
    showPaused();
  };

  const open = async () => {
    error.hidden = true;
    payload.removeAttribute("aria-invalid");
    if (!dialog.open) dialog.showModal();
    const names = await loadWorkflows();
    if (!names.length) showError("This server has no workflows registered (GET api/workflows).");
    await readPaused();
    $("trigger-workflow").focus();
  };
  $("trigger-workflow").addEventListener("change", showPaused);
  $("trigger-resume").addEventListener("click", async () => {
    const name = $("trigger-workflow").value;
    try {
      await api("POST", `api/workflows/${encodeURIComponent(name)}/resume`);
    } catch (err) {
      showError(`Could not resume “${name}”: ${err.message}`);
    }
    await readPaused();
  });
  const close = () => dialog.close();

  $("new-run").addEventListener("click", open);
  $("empty-new-run").addEventListener("click", open);
  $("trigger-close").addEventListener("click", close);
  $("trigger-cancel").addEventListener("click", close);
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) close(); // backdrop
  });
  payload.addEventListener("input", () => {
    payload.removeAttribute("aria-invalid");
    error.hidden = true;
  });
  payload.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.metaKey || event.ctrlKey)) form.requestSubmit();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const name = $("trigger-workflow").value;
    if (!name) return showError("Choose a workflow.");
    const parsed = parseJsonField(payload.value);
    if (!parsed.ok) {
      showError(`The payload is not valid JSON: ${parsed.message}`);
      payload.setAttribute("aria-invalid", "true");
      payload.focus();
      return;
    }
    submit.disabled = true;
    try {
      const body = parsed.value === undefined ? undefined : JSON.stringify(parsed.value);
      const { workflowRunId } = await api("POST", `api/workflows/${encodeURIComponent(name)}`, body);
      close();
      location.hash = runHref(workflowRunId);
    } catch (err) {
      showError(`Could not trigger “${name}”: ${err.message}`);
    } finally {
      submit.disabled = false;
    }
  });
}
