/**
 * The CLI's client for the agent's REST API over its unix socket: one
 * HTTP/1.1 request per connection (`Connection: close`), fixed-length or
 * chunked replies, a deadline on the whole exchange.
 *
 * @module
 */
import { concatBytes } from "./bytes.ts";

/** The default API socket. */
export const DEFAULT_API_SOCKET = "/run/pontoon/api.sock";

/** An answer from the agent. */
export interface ApiReply {
  status: number;
  headers: Headers;
  body: string;
}

/** The agent could not be reached; the message says why in words for people. */
export class AgentUnreachableError extends Error {
  /** Makes an error for `socket` with a readable `why`. */
  constructor(socket: string, why: string) {
    super(`cannot reach the Pontoon agent at ${socket}: ${why}`);
    this.name = "AgentUnreachableError";
  }
}

function describeConnectError(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "no such socket (is `pontoon agent` running? see --api-socket)";
  if (err instanceof Deno.errors.ConnectionRefused) return "connection refused (the agent is not running)";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied (the socket is root-only; use sudo)";
  return (err as Error).message;
}

function decodeChunked(raw: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  const text = new TextDecoder("latin1");
  let pos = 0;
  for (;;) {
    let end = pos;
    while (end + 1 < raw.length && !(raw[end] === 13 && raw[end + 1] === 10)) end++;
    const size = parseInt(text.decode(raw.subarray(pos, end)).split(";")[0], 16);
    if (!Number.isFinite(size) || size === 0) break;
    parts.push(raw.subarray(end + 2, end + 2 + size));
    pos = end + 2 + size + 2;
    if (pos >= raw.length) break;
  }
  return concatBytes(parts);
}

/** Parses a complete HTTP/1.1 response. */
export function parseHttpResponse(raw: Uint8Array): ApiReply {
  let sep = -1;
  for (let i = 0; i + 3 < raw.length; i++) {
    if (raw[i] === 13 && raw[i + 1] === 10 && raw[i + 2] === 13 && raw[i + 3] === 10) {
      sep = i;
      break;
    }
  }
  if (sep < 0) throw new Error("the agent sent an incomplete HTTP response");
  const head = new TextDecoder().decode(raw.subarray(0, sep)).split("\r\n");
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(head[0]);
  if (!match) throw new Error("the agent sent no HTTP response");
  const headers = new Headers();
  for (const line of head.slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  let body = raw.subarray(sep + 4);
  if ((headers.get("transfer-encoding") ?? "").toLowerCase().includes("chunked")) body = decodeChunked(body);
  return { status: Number(match[1]), headers, body: new TextDecoder().decode(body) };
}

/** Sends one request to the agent's socket and returns the reply; throws AgentUnreachableError. */
export async function apiRequest(
  socket: string,
  method: string,
  path: string,
  options: { body?: string; timeoutMs?: number } = {},
): Promise<ApiReply> {
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path: socket });
  } catch (err) {
    throw new AgentUnreachableError(socket, describeConnectError(err));
  }
  const timer = setTimeout(() => conn.close(), options.timeoutMs ?? 10_000);
  try {
    const body = new TextEncoder().encode(options.body ?? "");
    const head = `${method} ${path} HTTP/1.1\r\nHost: pontoon\r\nConnection: close\r\n` +
      (options.body !== undefined ? `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n` : "") +
      "\r\n";
    const request = concatBytes([new TextEncoder().encode(head), body]);
    for (let sent = 0; sent < request.length;) sent += await conn.write(request.subarray(sent));
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    return parseHttpResponse(concatBytes(chunks));
  } catch (err) {
    if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted) {
      throw new AgentUnreachableError(socket, "no answer in time");
    }
    throw err;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}
