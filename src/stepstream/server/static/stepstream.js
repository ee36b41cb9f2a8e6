/**
 * stepstream browser client: subscribe to realtime channels over Server-Sent Events.
 *
 * Speaks the `native` dialect of docs/sse-protocol.md and resumes by itself: it keeps, per
 * channel, the highest event id it has delivered and reconnects with `last_ack_<channel>` for
 * every channel it has a cursor for, so a dropped connection, a server restart or the server's
 * periodic `reconnect` never loses or repeats an event. No dependencies; one ES module.
 *
 * @example
 *   import { subscribe } from "/static/stepstream.js";
 *   const sub = subscribe({
 *     channels: ["wfr_123"],
 *     history: true,
 *     onData: ({ id, event, channel, data }) => console.log(channel, event, data),
 *     onStatus: (status) => console.log(status),
 *   });
 *   // later: sub.close();
 *
 * @module stepstream
 */

/** Watchdog: the server pings every 15 s, so 45 s of silence means the connection is dead. */
const WATCHDOG_MS = 45_000;
/** First retry delay; doubles per failed attempt, capped at {@link MAX_BACKOFF_MS}. */
const BASE_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10_000;
/** A `reconnect` this soon after the stream opened is followed after a pause, not at once. */
const QUICK_RECONNECT_MS = 250;

/**
 * @typedef {"connecting" | "connected" | "disconnected" | "error"} Status
 *   `connecting`: a connection is being opened. `connected`: the stream is open.
 *   `disconnected`: an open stream dropped (a retry is scheduled) or `close()` was called.
 *   `error`: the last attempt failed before the stream opened (server unreachable or the
 *   request refused); retrying continues with backoff until `close()`.
 */

/**
 * @typedef {object} Message
 * @property {string} id       the event id, `<ms>-<seq>`, strictly increasing per channel
 * @property {string} event    the dotted event name, e.g. `workflow.update`
 * @property {string} channel
 * @property {unknown} data
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {string} [url="/api/realtime"]  the SSE endpoint
 * @property {string[]} [channels=["default"]]  falsy entries are ignored
 * @property {string[]} [events]  only these dotted event names (filtered on the server)
 * @property {boolean | number} [history]  replay all (`true`) or the latest N stored events
 *   before live ones, on channels the client has no cursor for yet
 * @property {(message: Message) => void} [onData]  each event exactly once, in id order per channel
 * @property {(status: Status) => void} [onStatus]
 * @property {(event: {type: string} & Record<string, unknown>) => void} [onSystem]  system frames
 *   (`connected`, `ping`, `reconnect`, `gap`, `error`)
 */

/**
 * Parse an event id `<ms>-<seq>` into BigInts, or return null if it is not one.
 * @param {string} id
 * @returns {{ms: bigint, seq: bigint} | null}
 */
export function parseCursor(id) {
  const match = /^(\d+)-(\d+)$/.exec(String(id));
  return match ? { ms: BigInt(match[1]), seq: BigInt(match[2]) } : null;
}

/**
 * Compare two event ids numerically (`"9-0" < "10-0"`, unlike string order).
 * @param {string} a
 * @param {string} b
 * @returns {-1 | 0 | 1}
 * @throws {TypeError} if either is not an id `<ms>-<seq>`
 */
export function compareCursors(a, b) {
  const x = parseCursor(a);
  const y = parseCursor(b);
  if (!x || !y) throw new TypeError(`not an event id: ${x ? b : a}`);
  if (x.ms !== y.ms) return x.ms < y.ms ? -1 : 1;
  if (x.seq !== y.seq) return x.seq < y.seq ? -1 : 1;
  return 0;
}

/**
 * Subscribe to channels; history (optional) then live events, resumed across reconnects.
 * @param {SubscribeOptions} [options]
 * @returns {{close(): void}}  `close()` ends the subscription: it reports `disconnected`, then
 *   no callback fires again.
 */
export function subscribe({
  url = "/api/realtime",
  channels = ["default"],
  events,
  history,
  onData,
  onStatus,
  onSystem,
} = {}) {
  const names = [...new Set(channels.filter(Boolean))];
  /** @type {Map<string, string>} channel -> highest id delivered (or known to be caught up to) */
  const cursors = new Map();
  /** @type {EventSource | null} */
  let source = null;
  let retryTimer = null;
  let watchdogTimer = null;
  let attempt = 0;
  let openedAt = 0;
  let quickReconnects = 0; // `reconnect`s in a row told as soon as the stream opened
  let closed = false;

  const setStatus = (status) => closed || onStatus?.(status);

  function connect() {
    teardown();
    setStatus("connecting");
    const es = new EventSource(buildUrl());
    let opened = false;
    source = es;
    es.onopen = () => {
      opened = true;
      openedAt = Date.now();
      setStatus("connected");
      armWatchdog();
    };
    es.onmessage = (frame) => {
      if (es !== source) return;
      attempt = 0; // a frame arrived: the server is healthy, so reset the backoff
      armWatchdog();
      let payload;
      try {
        payload = JSON.parse(frame.data);
      } catch {
        return;
      }
      if (payload && typeof payload.type === "string" && !("event" in payload)) {
        handleSystem(payload);
      } else if (payload && typeof payload.id === "string") {
        handleMessage(payload);
      }
    };
    // Never leave the retry to the browser: it would replay the original URL (stale cursors).
    es.onerror = () => {
      if (es !== source) return;
      retry(opened ? "disconnected" : "error");
    };
  }

  function buildUrl() {
    const target = new URL(url, globalThis.location?.href);
    const params = target.searchParams;
    for (const name of names) params.append("channel", name);
    params.set("dialect", "native");
    if (events?.length) params.set("events", events.join(","));
    // The server applies `history` only to channels sent without a cursor.
    if (history && names.some((name) => !cursors.has(name))) {
      params.set("history", history === true ? "true" : String(history));
    }
    for (const [name, cursor] of cursors) params.set(`last_ack_${name}`, cursor);
    return target.href;
  }

  /** @param {Message} message */
  function handleMessage(message) {
    const seen = cursors.get(message.channel);
    if (parseCursor(message.id) === null) return;
    if (seen !== undefined && compareCursors(message.id, seen) <= 0) return; // duplicate
    cursors.set(message.channel, message.id);
    if (events?.length && !events.includes(message.event)) return;
    try {
      onData?.(message);
    } catch (error) {
      console.error("stepstream: onData threw", error);
    }
  }

  function handleSystem(event) {
    // When nothing is replayed, `cursor` is where live delivery starts: adopt it so that a
    // reconnect before the first event still resumes without a gap. When history is replayed,
    // `cursor` may be the *last* replayed id (docs/sse-protocol.md), which only becomes ours
    // once that event has arrived.
    if (event.type === "connected" && !cursors.has(event.channel)) {
      const nothingReplayed = !history || event.cursor === "0-0";
      if (nothingReplayed && names.includes(event.channel) && parseCursor(event.cursor)) {
        cursors.set(event.channel, event.cursor);
      }
    }
    if (!closed) onSystem?.(event);
    if (event.type === "reconnect") {
      // At once, unless the stream was told so as soon as it opened: a server shutting down
      // says it to every new stream until it stops listening, so come back after a pause.
      if (Date.now() - openedAt < QUICK_RECONNECT_MS) {
        attempt = quickReconnects++; // every frame resets `attempt`: back off by this count
        retry("disconnected");
      } else {
        quickReconnects = 0;
        attempt = 0;
        connect();
      }
    }
  }

  function retry(status) {
    teardown();
    setStatus(status);
    // Exponential backoff, each delay drawn between half and all of it, so that a restarted
    // server is not hit by all of its clients at the same instant.
    const ceiling = Math.min(MAX_BACKOFF_MS, BASE_BACKOFF_MS * 2 ** attempt);
    attempt += 1;
    retryTimer = setTimeout(connect, ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  function armWatchdog() {
    clearTimeout(watchdogTimer);
    watchdogTimer = setTimeout(() => retry("disconnected"), WATCHDOG_MS);
  }

  function teardown() {
    source?.close();
    source = null;
    clearTimeout(retryTimer);
    clearTimeout(watchdogTimer);
  }

  if (names.length > 0) connect();
  return {
    close() {
      if (closed) return;
      setStatus("disconnected");
      closed = true;
      teardown();
    },
  };
}
