/**
 * Acting on many runs from the list: a checkbox per row, "Cancel selected" / "Resume selected"
 * (`POST api/runs/cancel|resume` with `{"ids"}`), and while a filter is set, "Cancel all
 * matching…" / "Resume all matching…" (`{"filter"}`: the server picks the runs, at most 1000 per
 * request). Each asks first where it ends runs, and reports how many it changed.
 */

import { api } from "./api.js";
import { $, h, showApiError } from "./dom.js";
import { STATE_LABELS, formatTime } from "./format.js";

const BULK_LIMIT = 1000; // runs one bulk request acts on at most (DESIGN §14)
const RESUMABLE = new Set(["RUN_FAILED", "RUN_CANCELED"]);

/**
 * The bulk bar for a list shown with `filters` (`{state, workflow, label, createdAfter,
 * createdBefore}`, "" when unset); `refresh()` reloads the list after an action.
 * @returns {{checkbox(runId): HTMLElement, sync(runIds: string[]): void, leave(): void}}
 */
export function createBulk(filters, refresh) {
  const selected = new Set();
  let shown = [];
  const filtered = Object.values(filters).some(Boolean);
  const all = $("runs-select-all");
  const result = $("bulk-result");
  result.hidden = true;

  /** The row's checkbox (outside its link, so that ticking it does not open the run). */
  function checkbox(runId) {
    const box = h("input", { type: "checkbox", class: "run-select", "aria-label": `Select run ${runId}` });
    box.checked = selected.has(runId);
    box.addEventListener("change", () => {
      if (box.checked) selected.add(runId);
      else selected.delete(runId);
      update();
    });
    return h("label", { class: "run-check" }, box);
  }

  /** The rows now shown: a selected run no longer shown is not selected any more. */
  function sync(runIds) {
    shown = runIds;
    const visible = new Set(runIds);
    for (const id of selected) if (!visible.has(id)) selected.delete(id);
    update();
  }

  function update() {
    const n = selected.size;
    $("bulk-bar").hidden = !n && !filtered;
    $("bulk-selected").hidden = !n;
    $("bulk-hint").hidden = n > 0;
    $("bulk-count").textContent = `${n} selected`;
    $("bulk-matching").hidden = !filtered;
    // A state filter no run of which can be canceled (or resumed) would match nothing.
    $("bulk-cancel-matching").disabled = Boolean(filters.state) && filters.state !== "RUN_STARTED";
    $("bulk-resume-matching").disabled = Boolean(filters.state) && !RESUMABLE.has(filters.state);
    all.checked = n > 0 && n === shown.length;
    all.indeterminate = n > 0 && n < shown.length;
    all.disabled = !shown.length;
    for (const box of document.querySelectorAll("#runs .run-select")) {
      const id = box.closest(".run-item").dataset.runId;
      box.checked = selected.has(id);
      box.closest(".run-item").classList.toggle("selected", box.checked);
    }
  }

  async function act(action, body, question, describe) {
    if (question && !window.confirm(question)) return;
    const buttons = document.querySelectorAll("#bulk-bar button");
    buttons.forEach((button) => (button.disabled = true));
    result.hidden = true;
    try {
      const reply = await api("POST", `api/runs/${action}`, JSON.stringify(body));
      const n = (action === "cancel" ? reply?.canceled : reply?.resumed) ?? 0;
      const done = `${action === "cancel" ? "Canceled" : "Resumed"} ${n} run${n === 1 ? "" : "s"}`;
      result.textContent = `${done}${describe(n)}.`;
      result.hidden = false;
      showApiError("");
      selected.clear();
    } catch (error) {
      showApiError(`Could not ${action} runs: ${error.message}`);
    } finally {
      buttons.forEach((button) => (button.disabled = false));
      update();
      refresh();
    }
  }

  function actOnSelected(action) {
    const ids = [...selected];
    const count = `${ids.length} selected run${ids.length === 1 ? "" : "s"}`;
    const question =
      action === "cancel" ? `Cancel ${count}? Those still running end now as canceled; their failure functions do not run.` : null;
    const others = action === "cancel" ? "not running" : "neither failed nor canceled";
    act(action, { ids }, question, (n) => (n < ids.length ? ` (${ids.length - n} of the selected ${ids.length - n === 1 ? "was" : "were"} ${others})` : ""));
  }

  function actOnMatching(action) {
    const which = action === "cancel" ? "running run" : "failed or canceled run";
    const then = action === "cancel" ? "They end now as canceled." : "Each continues where it stopped.";
    const verb = action === "cancel" ? "canceled" : "resumed";
    const question =
      `${action === "cancel" ? "Cancel" : "Resume"} every ${which} matching ${describeFilters(filters)}? ${then}\n\n` +
      `At most ${BULK_LIMIT} runs are ${verb} per click: click again for more.`;
    act(action, { filter: bulkFilter(filters) }, question, (n) =>
      n >= BULK_LIMIT ? ` (the most one click acts on: there may be more, click again)` : ` matching ${describeFilters(filters)}`,
    );
  }

  const handlers = {
    "bulk-cancel": () => actOnSelected("cancel"),
    "bulk-resume": () => actOnSelected("resume"),
    "bulk-clear": () => {
      selected.clear();
      update();
    },
    "bulk-cancel-matching": () => actOnMatching("cancel"),
    "bulk-resume-matching": () => actOnMatching("resume"),
  };
  for (const [id, handler] of Object.entries(handlers)) $(id).onclick = handler;
  all.onchange = () => {
    if (all.checked) shown.forEach((id) => selected.add(id));
    else selected.clear();
    update();
  };
  update();

  return {
    checkbox,
    sync,
    leave() {
      for (const id of Object.keys(handlers)) $(id).onclick = null;
      all.onchange = null;
    },
  };
}

/** The list's filters as a bulk request's `filter` (only those set; times as numbers). */
function bulkFilter(filters) {
  const filter = {};
  for (const [key, value] of Object.entries(filters)) {
    if (value) filter[key] = key.startsWith("created") ? Number(value) : value;
  }
  return filter;
}

/** `workflow basic, label “eu”, created after May 3, 14:05:00`. */
export function describeFilters(filters) {
  const parts = [];
  if (filters.state) parts.push(`state ${STATE_LABELS[filters.state]?.toLowerCase() ?? filters.state}`);
  if (filters.workflow) parts.push(`workflow ${filters.workflow}`);
  if (filters.label) parts.push(`label “${filters.label}”`);
  if (filters.createdAfter) parts.push(`created after ${formatTime(Number(filters.createdAfter))}`);
  if (filters.createdBefore) parts.push(`created before ${formatTime(Number(filters.createdBefore))}`);
  return parts.join(", ");
}
