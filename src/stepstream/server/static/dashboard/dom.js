/** Building the page: elements, highlighted JSON, and the parts every view shares. */

import { api } from "./api.js";
import { STATE_LABELS } from "./format.js";

export const $ = (id) => document.getElementById(id);

/** Build an element: `h("span", {class: "x", dataset: {a: 1}}, "text", child)`. Never innerHTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Pretty JSON as highlighted spans (text nodes only, so any value is safe to show). */
export function jsonInto(pre, value, placeholder = "—") {
  pre.replaceChildren();
  if (value === undefined) {
    pre.append(h("span", { class: "placeholder" }, placeholder));
    return;
  }
  const text = JSON.stringify(value, null, 2) ?? String(value);
  const token = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (const match of text.matchAll(token)) {
    if (match.index > last) pre.append(text.slice(last, match.index));
    const kind = match[1] ? (match[2] ? "k" : "s") : match[3] ? "b" : "n";
    pre.append(h("span", { class: kind }, match[1] ?? match[0]));
    if (match[2]) pre.append(match[2]);
    last = match.index + match[0].length;
  }
  pre.append(text.slice(last));
}

export function setCrumbs(...items) {
  const crumbs = $("crumbs");
  crumbs.replaceChildren();
  items.forEach((item, i) => {
    if (i) crumbs.append(h("span", { class: "sep" }, "/"));
    crumbs.append(item);
  });
}

/** The page-wide error banner; an empty message hides it. */
export function showApiError(message) {
  const banner = $("api-error");
  banner.textContent = message;
  banner.hidden = !message;
}

/** A run's labels as chips; with `links`, each opens the runs list filtered by it. */
export function labelChips(labels, { links = false } = {}) {
  return h(
    "span",
    { class: "chips" },
    (labels ?? []).map((label) =>
      links
        ? h("a", { class: "chip", href: `#/?${new URLSearchParams({ label })}`, title: `Runs labelled “${label}”` }, label)
        : h("span", { class: "chip" }, label),
    ),
  );
}

export function setBadge(el, state) {
  el.dataset.state = state;
  el.textContent = STATE_LABELS[state] ?? (state || "…");
}

let workflowNames = null;

/** The workflow names, filled (once loaded) into the runs filter and the trigger form; `[]`
 * (and the banner) if they cannot be loaded, to be tried again on the next call. */
export async function loadWorkflows() {
  if (workflowNames) return workflowNames;
  try {
    workflowNames = (await api("GET", "api/workflows")).workflows ?? [];
  } catch (error) {
    showApiError(`Could not load workflows: ${error.message}`);
    return [];
  }
  const filter = $("filter-workflow");
  const select = $("trigger-workflow");
  const chosen = filter.value;
  filter.replaceChildren(h("option", { value: "" }, "All workflows"));
  select.replaceChildren();
  for (const name of workflowNames) {
    filter.append(h("option", { value: name }, name));
    select.append(h("option", { value: name }, name));
  }
  filter.value = chosen;
  return workflowNames;
}
