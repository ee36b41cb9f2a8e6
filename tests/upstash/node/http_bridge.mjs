// node:http <-> fetch's Request/Response, for the test servers that host the SDK's `serve`
// (which takes a Request and answers a Response, as in a Next.js route handler).

export async function toRequest(incoming) {
  const chunks = [];
  for await (const chunk of incoming) chunks.push(chunk);
  const headers = new Headers();
  for (let i = 0; i < incoming.rawHeaders.length; i += 2) {
    headers.append(incoming.rawHeaders[i], incoming.rawHeaders[i + 1]);
  }
  const hasBody = !["GET", "HEAD"].includes(incoming.method);
  return new Request(`http://${incoming.headers.host}${incoming.url}`, {
    method: incoming.method,
    headers,
    body: hasBody ? Buffer.concat(chunks) : undefined,
  });
}

export async function reply(outgoing, response) {
  const text = Buffer.from(await response.arrayBuffer());
  outgoing.writeHead(response.status, Object.fromEntries(response.headers.entries()));
  outgoing.end(text);
}
