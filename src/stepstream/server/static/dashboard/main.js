/**
 * The stepstream dashboard: the runs list (`#/`), one run live (`#/runs/<id>`), trigger,
 * cancel, notify, and recovery (resume, restart, fork, delete, bulk cancel / resume). Plain ES
 * modules, loaded by `static/dashboard.html`:
 *
 *   api.js       the API client; every URL relative to where the app is mounted
 *   dom.js       building elements, highlighted JSON, the parts every view shares
 *   format.js    durations, times, labels
 *   runs.js      the runs list (bulk.js: selecting runs, acting on many at once)
 *   run.js       one run (eventlog.js, timeline.js; recovery.js: the fork dialog)
 *   trigger.js   the "New run" dialog  schedules.js  schedules, and pausing workflows
 *
 * The run state comes from `../run-state.js` (shared with react.js), events from
 * `../stepstream.js`.
 */

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { showRun } from "./run.js";
import { showRuns } from "./runs.js";
import { showSchedules } from "./schedules.js";
import { setupTrigger } from "./trigger.js";

const TICK_MS = 200;
const WORKERS_MS = 10_000; // how often the dashboard looks whether any worker is alive

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

/** A banner while no worker has been heard from: runs would stay queued, and say nothing. */
async function checkWorkers() {
  let banner = $("no-worker");
  if (!banner) {
    banner = h("div", {
      id: "no-worker",
      class: "banner",
      role: "status",
      style: "color: var(--amber); border: 1px solid color-mix(in srgb, var(--amber) 35%, transparent); margin-bottom: 12px",
      hidden: true,
    });
    $("api-error").before(banner);
  }
  try {
    const { workers } = await api("GET", "api/workers");
    banner.textContent =
      "No worker is running: new runs stay queued until one starts " +
      "(stepstream worker app:workflows, or a server with --workers 1).";
    banner.hidden = workers.length > 0;
  } catch {
    banner.hidden = true; // the runs list reports an unreachable server itself
  }
}

setupTrigger();
checkWorkers();
setInterval(checkWorkers, WORKERS_MS);
window.addEventListener("hashchange", route);
setInterval(() => active?.tick(), TICK_MS);
route();
