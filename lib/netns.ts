/**
 * Network namespaces through Deno FFI: validating a netns path and running
 * a process inside one.
 *
 * `setns(2)` changes only the calling thread. Pontoon enters a namespace
 * only inside a fully synchronous window (enter, spawn, leave) so no async
 * operation ever runs on a thread that is in the wrong namespace; the
 * spawned child inherits the namespace it was forked in.
 *
 * @module
 */

const O_RDONLY_CLOEXEC = 0o2000000;
const CLONE_NEWNET = 0x40000000;
const NS_GET_NSTYPE = 0xb703n;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  setns: { parameters: ["i32", "i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

let libc: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

function lib(): Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] {
  libc ??= Deno.dlopen("libc.so.6", SYMBOLS);
  return libc.symbols;
}

function cString(text: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(text + "\0");
}

function errno(): number {
  const ptr = lib().__errno_location();
  return ptr ? new Deno.UnsafePointerView(ptr).getInt32() : 0;
}

/** An error from a namespace system call, with the errno. */
export class NetnsError extends Error {
  /** The errno reported by the failing call. */
  readonly errno: number;
  /** Makes an error for `call` on `path` with `errno`. */
  constructor(call: string, path: string, code: number) {
    super(`${call} ${path}: errno ${code}`);
    this.name = "NetnsError";
    this.errno = code;
  }
}

function openNs(path: string): number {
  const fd = lib().open(cString(path), O_RDONLY_CLOEXEC);
  if (fd < 0) throw new NetnsError("open", path, errno());
  return fd;
}

/**
 * Why `path` is not a usable network namespace, or null when it is one.
 * Reads only: opens the path and asks the kernel for its namespace type.
 */
export function netnsProblem(path: string): string | null {
  let fd: number;
  try {
    fd = openNs(path);
  } catch (err) {
    const code = (err as NetnsError).errno;
    return code === 2 ? "does not exist" : `cannot be opened (errno ${code})`;
  }
  try {
    const type = lib().ioctl(fd, NS_GET_NSTYPE);
    if (type === CLONE_NEWNET) return null;
    return type < 0 ? "is not a namespace file (e.g. a regular file)" : "is a namespace, but not a network namespace";
  } finally {
    lib().close(fd);
  }
}

/** True when `path` names the namespace this process runs in. */
export function isOwnNetns(path: string): boolean {
  try {
    const mine = Deno.statSync("/proc/thread-self/ns/net");
    const theirs = Deno.statSync(path);
    return mine.ino === theirs.ino && mine.dev === theirs.dev;
  } catch {
    return false;
  }
}

/**
 * Spawns `command` inside the network namespace at `path`. The calling
 * thread enters the namespace, forks the child and returns, all
 * synchronously.
 */
export function spawnInNetns(path: string, command: Deno.Command): Deno.ChildProcess {
  const c = lib();
  const home = openNs("/proc/thread-self/ns/net");
  let target = -1;
  try {
    target = openNs(path);
    if (c.setns(target, CLONE_NEWNET) !== 0) throw new NetnsError("setns", path, errno());
    let child: Deno.ChildProcess | undefined;
    let spawnError: unknown;
    try {
      child = command.spawn();
    } catch (err) {
      spawnError = err;
    }
    if (c.setns(home, CLONE_NEWNET) !== 0) {
      // Staying in the pod's namespace would corrupt every later step.
      throw new Error(`cannot return to the host network namespace (errno ${errno()})`);
    }
    if (!child) throw spawnError;
    return child;
  } finally {
    if (target >= 0) c.close(target);
    c.close(home);
  }
}
