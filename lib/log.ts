/**
 * Structured logging to stderr and, when configured, a log file.
 *
 * Never writes to stdout: in plugin mode stdout carries only the CNI result.
 *
 * @module
 */

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
      Deno.writeFileSync(current.file, bytes, { append: true, create: true, mode: 0o600 });
    } catch { /* an unwritable log file must not fail the operation */ }
  }
}
