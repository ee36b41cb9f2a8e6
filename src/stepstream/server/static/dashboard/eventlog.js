/** The run page's event log: each `workflow.update` of the run, once, expandable to its JSON. */

import { $, h, jsonInto } from "./dom.js";
import { compactJson, formatTime } from "./format.js";

/** Empty the log. */
export function clearEvents() {
  $("events").replaceChildren();
  $("events-empty").hidden = false;
  $("event-count").textContent = "0 events";
}

/** Append one message (`{id, event, data}`) to the log. */
export function appendEvent(message) {
  const list = $("events");
  const data = message.data && typeof message.data === "object" ? message.data : {};
  const stickToBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
  const item = h(
    "li",
    {
      class: `ev${list.childElementCount ? " new" : ""}`,
      tabindex: "0",
      dataset: { id: message.id, type: data.type ?? message.event, json: JSON.stringify(message.data) },
    },
    h("span", { class: "ev-time", title: message.id }, formatTime(data.timestamp ?? Number(message.id.split("-")[0]), { millis: true }).split(", ").at(-1)),
    h("span", { class: "ev-type" }, data.type ?? message.event),
    h("span", { class: "ev-step" }, data.stepName ?? ""),
    h("span", { class: "ev-attempt" }, data.attempt ? `#${data.attempt}` : ""),
    h("span", { class: "ev-detail", title: detail(data) }, detail(data)),
  );
  const toggle = (event) => {
    if (event.type === "keydown" && event.key !== "Enter") return;
    const open = item.querySelector(".ev-full");
    if (open) open.remove();
    else {
      const pre = h("pre", { class: "json ev-full" });
      jsonInto(pre, message.data);
      item.append(pre);
    }
  };
  item.addEventListener("click", toggle);
  item.addEventListener("keydown", toggle);
  list.append(item);
  if (stickToBottom) list.scrollTop = list.scrollHeight;
  const count = list.childElementCount;
  $("events-empty").hidden = true;
  $("event-count").textContent = `${count} event${count === 1 ? "" : "s"}`;
}

/** The one-line summary of an update: a result, an error, the final status, a step's type. */
function detail(data) {
  switch (data.type) {
    case "stepFinish":
      return compactJson(data.result);
    case "stepFail":
      return `${data.error ?? ""}${data.willRetry ? " · will retry" : ""}`;
    case "runFinish":
      return `${data.status}${data.error ? ` · ${data.error}` : ""}`;
    case "stepStart":
      return data.stepType && data.stepType !== "Run" ? data.stepType : "";
    case "runStart":
      return data.resumed ? "resumed" : "";
    default:
      return "";
  }
}
