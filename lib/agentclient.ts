/**
 * The plugin's side of talking to the node agent over its unix socket: a
 * bounded HTTP/1.1 exchange with no HTTP library (the plugin's import graph
 * stays small) and no Deno network permission (see `libc.ts`).
 *
 * @module
 */
import { LibcError, unixExchange } from "./libc.ts";

/** An agent's answer: HTTP status and body text. */
export interface AgentReply {
  status: number;
  body: string;
}

const ERRNO_TEXT: Record<number, string> = {
  2: "no such socket",
  11: "timed out",
  13: "permission denied",
  111: "connection refused (agent not running)",
};

/**
 * Sends `GET path` to the agent's unix socket and returns its reply; throws
 * an Error with a readable cause when the agent is not reachable within
 * `timeoutMs`.
 */
export function agentGet(socket: string, path: string, timeoutMs = 1000): AgentReply {
  let raw: Uint8Array;
  try {
    raw = unixExchange(
      socket,
      new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: pontoon\r\nConnection: close\r\n\r\n`),
      timeoutMs,
    );
  } catch (err) {
    if (err instanceof LibcError) throw new Error(ERRNO_TEXT[err.errno] ?? err.message);
    throw err;
  }
  const text = new TextDecoder().decode(raw);
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(text);
  if (!match) throw new Error("agent sent no HTTP response");
  const sep = text.indexOf("\r\n\r\n");
  return { status: Number(match[1]), body: sep < 0 ? "" : text.slice(sep + 4) };
}
