/**
 * The stepstream API as the dashboard calls it. Every URL is resolved against `appBase`, the
 * URL the app is mounted at, found from where this module was loaded
 * (`<app>/static/dashboard/api.js`): the same page works at `/`, under a `Mount("/prefix")` or
 * behind a proxy that adds a path, with nothing to configure.
 */

/** The app's root, ending in `/` (e.g. `http://host/stepstream/`). */
const appBase = new URL("../../", import.meta.url);

/** An app URL from a path relative to its root: `appUrl("api/runs")`. */
function appUrl(path) {
  return new URL(path, appBase).href;
}

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// With STEPSTREAM_TOKEN set on the server, the API wants "Authorization: Bearer <token>". The
// dashboard asks for it at the first 401 of a page load, once (its first requests go out
// together: one question answers all of them), and keeps it in this browser's localStorage,
// one per mount point: two apps on one origin may have different tokens. A dismissed question
// or a wrong token leaves the page's error banner saying so; reloading asks again.
const TOKEN_KEY = appBase.pathname === "/" ? "stepstream.apiToken" : `stepstream.apiToken@${appBase.pathname}`;
let asked = false;

/** After a 401 for `rejected` (the token sent, or null): whether there is a token to retry with. */
function askForToken(rejected) {
  const stored = localStorage.getItem(TOKEN_KEY);
  if (stored !== rejected) return stored !== null; // answered meanwhile, for another request
  if (asked) return false;
  asked = true;
  const token = window.prompt("This stepstream server needs its API token (STEPSTREAM_TOKEN):")?.trim();
  if (!token) return false;
  localStorage.setItem(TOKEN_KEY, token);
  return true;
}

/** fetch() of an app path with the stored API token; on 401 ask for a token and retry once. */
export async function authorizedFetch(path, init = {}) {
  const send = (token) => {
    const auth = token ? { authorization: `Bearer ${token}` } : {};
    return fetch(appUrl(path), { ...init, headers: { ...(init.headers ?? {}), ...auth } });
  };
  const token = localStorage.getItem(TOKEN_KEY);
  let response = await send(token);
  if (response.status === 401 && askForToken(token)) response = await send(localStorage.getItem(TOKEN_KEY));
  return response;
}

/** What to tell the page's user of a refused request: the server's message, except for a
 * 401, whose words are for API clients (which header to send): a browser's user can only
 * enter the token again, which reloading the page offers. */
export function failureMessage(response, data) {
  if (response.status === 401) {
    return (
      "this server needs its API token (STEPSTREAM_TOKEN) and did not get the right one: " +
      "reload the page to enter it"
    );
  }
  return data?.error?.message ?? `${response.status} ${response.statusText || "error"}`;
}

/** Call the JSON API: the parsed reply, or an `ApiError` with the server's message. */
export async function api(method, path, body) {
  const init = { method, headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = body;
  }
  let response;
  try {
    response = await authorizedFetch(path, init);
  } catch (error) {
    throw new ApiError(`cannot reach the server (${error.message})`, 0, "network");
  }
  let data = null;
  const text = await response.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const code = data?.error?.code ?? "http_error";
    throw new ApiError(failureMessage(response, data), response.status, code);
  }
  return data;
}

/** The SSE endpoint for `channels`, with a subscription token scoped to them (EventSource
 * cannot send an Authorization header; a server without STEPSTREAM_TOKEN ignores it). */
export async function realtimeUrl(channels) {
  const minted = await api("POST", "api/realtime/token", JSON.stringify({ channels, ttl: 86400 }));
  return appUrl(`api/realtime?token=${encodeURIComponent(minted.token)}`);
}
