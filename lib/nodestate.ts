/**
 * Markers for per-node work done once: "the bridge is set up like this",
 * "the masquerade table holds this". A marker lives in /run (gone after a
 * reboot) and is keyed by the node's network namespace, so several
 * simulated nodes on one machine never share one.
 *
 * A marker only skips work; when it is missing or different, the caller
 * does the work again, idempotently. `withNodeLock` makes the first wave of
 * racing ADDs on a fresh node do that work once: one builds, the others
 * wait and then find the marker.
 *
 * @module
 */
import { ownNetnsId } from "./netns.ts";

/** Directory holding the markers. */
export const STATE_DIR = "/run/pontoon/state";

const decoder = new TextDecoder();
let nsKey: string | undefined;

function namespaceKey(): string {
  nsKey ??= ownNetnsId().replace(/\D/g, "");
  return nsKey;
}

function markerPath(kind: string, name: string): string {
  return `${STATE_DIR}/${namespaceKey()}-${kind}-${name}`;
}

/** True when the marker `kind/name` holds exactly `value`. */
export function markerMatches(kind: string, name: string, value: string): boolean {
  try {
    return decoder.decode(Deno.readFileSync(markerPath(kind, name))) === value;
  } catch {
    return false;
  }
}

/** Records `value` for `kind/name` (atomically; failures only cost a redo). */
export function writeMarker(kind: string, name: string, value: string): void {
  try {
    Deno.mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 });
    const path = markerPath(kind, name);
    const tmp = `${path}.tmp-${Deno.pid}`;
    Deno.writeFileSync(tmp, new TextEncoder().encode(value), { mode: 0o600 });
    Deno.renameSync(tmp, path);
  } catch { /* a missing marker only means the work is redone next time */ }
}

/** Removes the marker `kind/name`. */
export function clearMarker(kind: string, name: string): void {
  try {
    Deno.removeSync(markerPath(kind, name));
  } catch { /* already gone */ }
}

/** True when the open `file` is still the one at `path` (not unlinked or replaced). */
function isCurrent(file: Deno.FsFile, path: string): boolean {
  try {
    return file.statSync().ino === Deno.statSync(path).ino;
  } catch {
    return false;
  }
}

/**
 * Runs `fn` holding an exclusive node-wide `flock` for `kind/name` (a lock
 * file beside the marker; a killed holder releases it). Callers re-check
 * the marker inside, since another process may have done the work while
 * this one waited. A lock file `pruneMarker` unlinked while this process
 * waited excludes no one, so the lock is taken again on the current file.
 */
export async function withNodeLock<T>(kind: string, name: string, fn: () => Promise<T>): Promise<T> {
  Deno.mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 });
  const path = `${markerPath(kind, name)}.lock`;
  for (;;) {
    const file = Deno.openSync(path, { read: true, write: true, create: true, mode: 0o600 });
    try {
      file.lockSync(true);
      if (!isCurrent(file, path)) continue;
      return await fn();
    } finally {
      file.close();
    }
  }
}

/**
 * Removes the marker `kind/name` and its lock file for good, holding the
 * lock (so no ADD is mid-way through the work it records) and only when
 * `stale()` still holds under it. Markers only skip work: removing one
 * costs at most a redo. Failures are ignored.
 */
export function pruneMarker(kind: string, name: string, stale: () => boolean = () => true): void {
  const path = `${markerPath(kind, name)}.lock`;
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true, write: true });
  } catch {
    if (stale()) clearMarker(kind, name); // no lock file: no ADD ever waited on one
    return;
  }
  try {
    file.lockSync(true);
    if (!isCurrent(file, path) || !stale()) return;
    clearMarker(kind, name);
    Deno.removeSync(path);
  } catch {
    /* left for the next GC */
  } finally {
    file.close();
  }
}
