/**
 * Network namespaces through Deno FFI: validating a netns path and running
 * synchronous work (opening a netlink socket) inside one.
 *
 * `setns(2)` changes only the calling thread. Pontoon enters a namespace
 * only inside a fully synchronous window (enter, work, leave) so no async
 * operation ever runs on a thread that is in the wrong namespace; a socket
 * opened there stays bound to that namespace after the thread leaves.
 *
 * @module
 */
import { errno, errnoText, libc, LibcError, O_RDONLY, openFd, readLink } from "./libc.ts";

const CLONE_NEWNET = 0x40000000;
/** Opening a FIFO (or a tty) to inspect it must neither block nor adopt it. */
const O_NONBLOCK_NOCTTY = 0o4000 | 0o400;
const NS_GET_NSTYPE = 0xb703n;
const OWN_NETNS = "/proc/thread-self/ns/net";

/**
 * Why `path` is not a usable network namespace, or null when it is one.
 * Reads only: opens the path and asks the kernel for its namespace type.
 */
export function netnsProblem(path: string): string | null {
  let fd: number;
  try {
    fd = openFd(path, O_RDONLY | O_NONBLOCK_NOCTTY);
  } catch (err) {
    const code = (err as LibcError).errno;
    return code === 2 ? "does not exist" : `cannot be opened: ${errnoText(code)}`;
  }
  try {
    const type = libc().ioctl(fd, NS_GET_NSTYPE);
    if (type === CLONE_NEWNET) return null;
    return type < 0 ? "is not a namespace file (e.g. a regular file)" : "is a namespace, but not a network namespace";
  } finally {
    libc().close(fd);
  }
}

/** An identifier of the network namespace this thread runs in (`net:[inode]`). */
export function ownNetnsId(): string {
  return readLink(OWN_NETNS) ?? "net:[unknown]";
}

/** True when `path` names the namespace this process runs in. */
export function isOwnNetns(path: string): boolean {
  const own = ownNetnsId();
  // /proc/<pid>/ns/net is a magic symlink naming the namespace.
  const link = readLink(path);
  if (link !== null && link.startsWith("net:[")) return link === own;
  try {
    return `net:[${Deno.statSync(path).ino}]` === own;
  } catch {
    return false;
  }
}

/**
 * Runs `fn` with the calling thread inside the network namespace at `path`
 * and returns to the node's namespace before returning. `fn` must be fully
 * synchronous (no await): async work would run on threads elsewhere.
 */
export function inNetns<T>(path: string, fn: () => T): T {
  const c = libc();
  const home = openFd(OWN_NETNS, O_RDONLY);
  let target = -1;
  try {
    target = openFd(path, O_RDONLY);
    if (c.setns(target, CLONE_NEWNET) !== 0) throw new LibcError("setns", path, errno());
    let value: T | undefined;
    let failure: unknown;
    let failed = false;
    try {
      value = fn();
    } catch (err) {
      failed = true;
      failure = err;
    }
    if (c.setns(home, CLONE_NEWNET) !== 0) {
      // Staying in the pod's namespace would corrupt every later step.
      throw new Error(`cannot return to the host network namespace: ${errnoText(errno())}`);
    }
    if (failed) throw failure;
    return value as T;
  } finally {
    if (target >= 0) c.close(target);
    c.close(home);
  }
}

/** Runs `fn` with an open fd of the netns file at `path` (closed afterwards). */
export function withNetnsFd<T>(path: string, fn: (fd: number) => T): T {
  const fd = openFd(path, O_RDONLY);
  try {
    return fn(fd);
  } finally {
    libc().close(fd);
  }
}
