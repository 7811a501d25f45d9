/**
 * Structured logging to stderr and, when configured, a log file.
 *
 * Never writes to stdout: in plugin mode stdout carries only the CNI result.
 *
 * @module
 */
import { appendNonBlocking, pathExists } from "./libc.ts";

/** Log levels in increasing severity. */
export type LogLevel = "debug" | "info" | "warn" | "error";

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Where log lines go and which are kept. */
export interface LogOptions {
  /** Lowest level written. Default "info". */
  level?: LogLevel;
  /** Append JSON lines to this file as well as stderr. */
  file?: string;
  /** Write to stderr. Default true. */
  stderr?: boolean;
}

const encoder = new TextEncoder();
let current: Required<Omit<LogOptions, "file">> & { file?: string } = {
  level: "info",
  stderr: true,
};
const fields: Record<string, unknown> = {};

/**
 * Why `path` cannot be a log file, or null when it can (a regular file, or
 * nothing yet). A FIFO, device, socket or directory is refused: writing
 * to one could block the plugin or feed something that is not a log.
 */
export function logFileProblem(path: string): string | null {
  // access(2) first: a missing file is the common case, and a thrown NotFound costs ~2 ms (see DESIGN.md).
  if (!pathExists(path)) return null;
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (err) {
    return err instanceof Deno.errors.NotFound ? null : `cannot be examined: ${(err as Error).message}`;
  }
  if (info.isFile) return null;
  const kind = info.isDirectory
    ? "a directory"
    : info.isFifo
    ? "a FIFO"
    : info.isSocket
    ? "a socket"
    : info.isCharDevice || info.isBlockDevice
    ? "a device"
    : "not a file";
  return `is ${kind}, not a regular file`;
}

/** Returns true when `value` names a log level. */
export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === "string" && value in LEVELS;
}

/** Sets the level, the log file and stderr output for this process. */
export function configureLog(options: LogOptions): void {
  current = { ...current, ...options };
}

/** The lowest level currently written. */
export function logLevel(): LogLevel {
  return current.level;
}

/** Adds fields (such as the container id) to every later log line. */
export function setLogContext(extra: Record<string, unknown>): void {
  Object.assign(fields, extra);
}

/** Writes one log line at `level` with a message and optional fields. */
export function log(level: LogLevel, msg: string, extra?: Record<string, unknown>): void {
  if (LEVELS[level] < LEVELS[current.level]) return;
  const line = JSON.stringify({
    time: new Date().toISOString(),
    level,
    msg,
    ...fields,
    ...extra,
  }) + "\n";
  const bytes = encoder.encode(line);
  if (current.stderr) {
    try {
      Deno.stderr.writeSync(bytes);
    } catch { /* stderr closed: nothing useful to do */ }
  }
  if (current.file) {
    try {
      appendNonBlocking(current.file, bytes);
    } catch { /* an unwritable log file must not fail the operation */ }
  }
}
