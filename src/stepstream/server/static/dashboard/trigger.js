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

  // A paused workflow still accepts runs: say so, and offer to resume it. Each workflow's
  // declared example payload (example=) fills the payload box until the user types in it.
  let paused = [];
  let examples = {};
  let edited = false;
  const showPaused = () => {
    $("trigger-paused").hidden = !paused.includes($("trigger-workflow").value);
  };
  const showExample = () => {
    if (edited) return;
    const example = examples[$("trigger-workflow").value];
    payload.value = example === undefined ? "" : JSON.stringify(example, null, 2);
  };
  const readPaused = async () => {
    try {
      const reply = await api("GET", "api/workflows");
      paused = reply.paused ?? [];
      examples = reply.examples ?? {};
    } catch {
      paused = [];
    }
    showPaused();
    showExample();
  };

  const open = async () => {
    edited = false; // a new run: offer the chosen workflow's example again
    error.hidden = true;
    payload.removeAttribute("aria-invalid");
    if (!dialog.open) dialog.showModal();
    const names = await loadWorkflows();
    if (!names.length) showError("This server has no workflows registered (GET api/workflows).");
    await readPaused();
    $("trigger-workflow").focus();
  };
  $("trigger-workflow").addEventListener("change", () => {
    showPaused();
    showExample();
  });
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
    edited = payload.value.trim() !== "";
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
