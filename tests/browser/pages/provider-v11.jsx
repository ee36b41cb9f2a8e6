// @upstash/realtime 1.1.0: RealtimeProvider + useRealtime. 1.x has no client-side history, so
// the page does what its docs recommend: fetch the channel's history from a JSON route, render
// it, then subscribe for live events. Every event shown is logged into #log, in order.
import { RealtimeProvider, useRealtime } from "@upstash/realtime/client";
import { useEffect, useState } from "react";
import { createRoot } from "react-dom/client";

const channel = new URLSearchParams(location.search).get("channel");

function Live({ onEvent }) {
  const { status } = useRealtime({
    channels: [channel],
    events: ["workflow.update"],
    onData: ({ event, data, channel: from }) => onEvent({ event, data, channel: from }),
  });
  return <p id="connection">{status}</p>;
}

function Page() {
  const [log, setLog] = useState(null);
  useEffect(() => {
    fetch(`/api/realtime/history?channel=${encodeURIComponent(channel)}`)
      .then((response) => response.json())
      .then((body) => setLog(body.messages.map(({ event, data, channel: from }) => ({ event, data, channel: from }))));
  }, []);
  if (log === null) return <p id="connection">loading history</p>;
  return (
    <RealtimeProvider>
      <Live onEvent={(entry) => setLog((prev) => [...prev, entry])} />
      <ol id="log">
        {log.map((entry, index) => (
          <li key={index} data-channel={entry.channel} data-event={entry.event} data-json={JSON.stringify(entry.data)} />
        ))}
      </ol>
    </RealtimeProvider>
  );
}

createRoot(document.getElementById("root")).render(<Page />);
