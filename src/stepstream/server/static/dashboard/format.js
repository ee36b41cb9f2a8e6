/** Text for people: durations, times, state names, JSON in and out. */

export const STATE_LABELS = {
  RUN_STARTED: "Running",
  RUN_SUCCESS: "Succeeded",
  RUN_FAILED: "Failed",
  RUN_CANCELED: "Canceled",
};

/** A finished run's status in its events (`runFinish.status`) -> its state in the API. */
export const FINISH_STATES = { success: "RUN_SUCCESS", failed: "RUN_FAILED", canceled: "RUN_CANCELED" };

export function formatDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  ms = Math.max(0, ms);
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

/** The time of day (with milliseconds if asked), and the date too if it is not today. */
export function formatTime(ms, { millis = false } = {}) {
  if (!ms) return "—";
  const date = new Date(ms);
  const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const withMs = millis ? `${time}.${String(date.getMilliseconds()).padStart(3, "0")}` : time;
  if (date.toDateString() === new Date().toDateString()) return withMs;
  return `${date.toLocaleDateString(undefined, { month: "short", day: "numeric" })}, ${withMs}`;
}

/** How long ago, for today's times ("5m ago"); the date and time for any other day. */
export function formatRelative(ms) {
  if (!ms) return "—";
  const date = new Date(ms);
  const delta = Date.now() - ms;
  if (date.toDateString() !== new Date().toDateString()) return formatDay(date);
  if (delta < 5_000) return "just now";
  if (delta < 60_000) return `${Math.floor(delta / 1000)}s ago`;
  if (delta < 3_600_000) return `${Math.floor(delta / 60_000)}m ago`;
  return `${Math.floor(delta / 3_600_000)}h ago`;
}

/** "May 3, 14:05" (with the year when it is not this year's). */
function formatDay(date) {
  const options = { month: "short", day: "numeric" };
  if (date.getFullYear() !== new Date().getFullYear()) options.year = "numeric";
  const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });
  return `${date.toLocaleDateString(undefined, options)}, ${time}`;
}

export function fullDate(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

/** A round tick interval (1, 2 or 5 times a power of ten) of at least `raw` ms. */
export function niceStep(raw) {
  let base = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
  for (;;) {
    for (const m of [1, 2, 5]) if (m * base >= raw) return m * base;
    base *= 10;
  }
}

/** An axis label for `ms` on an axis ticked every `step` ms. */
export function formatAxis(ms, step) {
  if (step < 1000) return `${(ms / 1000).toFixed(step < 100 ? 2 : 1)}s`;
  if (ms < 60_000) return `${Math.round(ms / 1000)}s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m${ms % 60_000 ? ` ${Math.round((ms % 60_000) / 1000)}s` : ""}`;
  return `${Math.floor(ms / 3_600_000)}h${ms % 3_600_000 ? ` ${Math.round((ms % 3_600_000) / 60_000)}m` : ""}`;
}

export function compactJson(value) {
  if (value === undefined) return "";
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/** Parse a JSON textarea: `{ok, value}` (blank means no payload) or `{ok: false, message}`. */
export function parseJsonField(text) {
  if (!text.trim()) return { ok: true, value: undefined };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (error) {
    return { ok: false, message: error.message };
  }
}
