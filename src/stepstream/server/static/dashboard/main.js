/**
 * The stepstream dashboard: the runs list (`#/`), one run live (`#/runs/<id>`), trigger,
 * cancel and notify. Plain ES modules, loaded by `static/dashboard.html`:
 *
 *   api.js       the API client; every URL relative to where the app is mounted
 *   dom.js       building elements, highlighted JSON, the parts every view shares
 *   format.js    durations, times, labels
 *   runs.js      the runs list            run.js       one run (eventlog.js, timeline.js)
 *   trigger.js   the "New run" dialog  schedules.js  schedules, and pausing workflows
 *
 * The run state comes from `../run-state.js` (shared with react.js), events from
 * `../stepstream.js`.
 */

import { $ } from "./dom.js";
import { showRun } from "./run.js";
import { showRuns } from "./runs.js";
import { showSchedules } from "./schedules.js";
import { setupTrigger } from "./trigger.js";

const TICK_MS = 200;

let active = null; // the view shown: {tick(), leave()}

function currentRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const match = /^\/runs\/([^/]+)$/.exec(path);
  if (match) return { view: "run", runId: decodeURIComponent(match[1]) };
  if (path === "/schedules") return { view: "schedules" };
  return { view: "runs", params: new URLSearchParams(query) };
}

function route() {
  active?.leave();
  const target = currentRoute();
  for (const id of ["runs-view", "run-view", "schedules-view", "notfound-view"]) $(id).hidden = true;
  $("api-error").hidden = true;
  if (target.view === "run") active = showRun(target.runId);
  else if (target.view === "schedules") active = showSchedules();
  else active = showRuns(target.params);
}

setupTrigger();
window.addEventListener("hashchange", route);
setInterval(() => active?.tick(), TICK_MS);
route();
