/**
 * The plugin's side of talking to the node agent over its unix socket: a
 * bounded HTTP/1.1 exchange with no HTTP library (the plugin's import graph
 * stays small) and no Deno network permission (see `libc.ts`).
 *
 * @module
 */
import { LibcError, readSmallFile, unixDatagramSend, unixExchange } from "./libc.ts";

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

/** The agent's datagram socket for plugin reports, beside its API socket. */
export function reportSocketPath(apiSocket: string): string {
  return `${apiSocket}.report`;
}

/** What the plugin tells the agent about one ADD, DEL or CHECK. */
export interface OutcomeReport {
  verb: string;
  /** 0 on success, else the CNI error code. */
  code: number;
  /** Wall time of the verb in milliseconds. */
  ms: number;
}

/**
 * Tells the agent how one verb went: one non-blocking datagram, dropped
 * when the agent is down or busy, so the plugin never waits on it.
 */
export function reportToAgent(apiSocket: string, report: OutcomeReport): void {
  const body = JSON.stringify({ verb: report.verb, code: report.code, ms: Math.round(report.ms * 1000) / 1000 });
  try {
    unixDatagramSend(reportSocketPath(apiSocket), new TextEncoder().encode(body));
  } catch { /* reporting must never affect the verb */ }
}

/**
 * The file an agent leaves beside its socket once it has synced on this
 * boot; it holds the kernel's boot id, so one left from before a reboot
 * (when the socket is not under /run) does not count.
 */
export function syncedMarkerPath(apiSocket: string): string {
  return `${apiSocket}.synced`;
}

/** This boot's id (`/proc/sys/kernel/random/boot_id`), or null when unreadable. */
export function currentBootId(): string | null {
  try {
    return readSmallFile("/proc/sys/kernel/random/boot_id")?.trim() || null;
  } catch {
    return null;
  }
}

/**
 * True when an agent serving `apiSocket` has synced at least once since
 * this boot. An agent restart (a DaemonSet update) leaves the node's routes
 * and conflist in place, so the network stays usable while no agent answers.
 */
export function agentSyncedThisBoot(apiSocket: string): boolean {
  const boot = currentBootId();
  if (boot === null) return false;
  try {
    return readSmallFile(syncedMarkerPath(apiSocket))?.trim() === boot;
  } catch {
    return false;
  }
}
