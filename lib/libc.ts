/**
 * The few libc calls Pontoon makes through Deno FFI: namespace switching
 * and raw file access to /proc and /sys.
 *
 * Why raw file access: Deno asks for `--allow-all` before it lets a
 * program touch /proc or /sys, and the plugin must read sysfs and write
 * sysctls. Going through libc for those few paths lets the plugin keep an
 * explicit permission list (no network, among others). The same holds for
 * the agent's unix socket, whose path is configurable: Deno's network
 * permission can only name fixed socket paths.
 *
 * @module
 */
import { concatBytes } from "./bytes.ts";

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  readlink: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  access: { parameters: ["buffer", "i32"], result: "i32" },
  setns: { parameters: ["i32", "i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  flock: { parameters: ["i32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

/** `O_RDONLY | O_CLOEXEC`. */
export const O_RDONLY = 0o2000000;
/** `O_WRONLY | O_CLOEXEC`. */
export const O_WRONLY = 0o2000001;

let library: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

/** The libc symbols, loaded on first use. */
export function libc(): Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] {
  library ??= Deno.dlopen("libc.so.6", SYMBOLS);
  return library.symbols;
}

/** A NUL-terminated copy of `text` for a C `const char *`. */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(text + "\0");
}

/** The calling thread's errno. */
export function errno(): number {
  const ptr = libc().__errno_location();
  return ptr ? new Deno.UnsafePointerView(ptr).getInt32() : 0;
}

/** Name and text of the errno values Pontoon's system calls commonly meet (Linux numbering). */
const ERRNO_NAMES: Record<number, [name: string, text: string]> = {
  1: ["EPERM", "Operation not permitted"],
  2: ["ENOENT", "No such file or directory"],
  4: ["EINTR", "Interrupted system call"],
  5: ["EIO", "Input/output error"],
  6: ["ENXIO", "No such device or address"],
  9: ["EBADF", "Bad file descriptor"],
  11: ["EAGAIN", "Resource temporarily unavailable"],
  12: ["ENOMEM", "Cannot allocate memory"],
  13: ["EACCES", "Permission denied"],
  16: ["EBUSY", "Device or resource busy"],
  17: ["EEXIST", "File exists"],
  19: ["ENODEV", "No such device"],
  20: ["ENOTDIR", "Not a directory"],
  21: ["EISDIR", "Is a directory"],
  22: ["EINVAL", "Invalid argument"],
  24: ["EMFILE", "Too many open files"],
  28: ["ENOSPC", "No space left on device"],
  30: ["EROFS", "Read-only file system"],
  32: ["EPIPE", "Broken pipe"],
  34: ["ERANGE", "Numerical result out of range"],
  36: ["ENAMETOOLONG", "File name too long"],
  40: ["ELOOP", "Too many levels of symbolic links"],
  88: ["ENOTSOCK", "Socket operation on non-socket"],
  95: ["EOPNOTSUPP", "Operation not supported"],
  98: ["EADDRINUSE", "Address already in use"],
  99: ["EADDRNOTAVAIL", "Cannot assign requested address"],
  101: ["ENETUNREACH", "Network is unreachable"],
  105: ["ENOBUFS", "No buffer space available"],
  110: ["ETIMEDOUT", "Connection timed out"],
  111: ["ECONNREFUSED", "Connection refused"],
};

/** An errno for people: `EEXIST (File exists)`, or `errno 200` for one not in the table. */
export function errnoText(code: number): string {
  const known = ERRNO_NAMES[code];
  return known ? `${known[0]} (${known[1]})` : `errno ${code}`;
}

/** A failed libc call, with its errno. */
export class LibcError extends Error {
  /** The errno reported by the failing call. */
  readonly errno: number;
  /** Makes an error for `call` on `path` with `code`. */
  constructor(call: string, path: string, code: number) {
    super(`${call} ${path}: ${errnoText(code)}`);
    this.name = "LibcError";
    this.errno = code;
  }
}

/** Opens `path` with `flags` (and `mode` for a file it creates); throws LibcError. */
export function openFd(path: string, flags: number, mode = 0): number {
  const fd = libc().open(cString(path), flags, mode);
  if (fd < 0) throw new LibcError("open", path, errno());
  return fd;
}

/** Writes all of `bytes` to `fd` in one call, or throws LibcError naming `path`. */
function writeAll(fd: number, bytes: Uint8Array<ArrayBuffer>, path: string): void {
  if (Number(libc().write(fd, bytes, BigInt(bytes.length))) !== bytes.length) {
    throw new LibcError("write", path, errno());
  }
}

const O_RDWR_CREAT_CLOEXEC = 0o2000102;
const LOCK_EX_NB = 2 | 4;
const EWOULDBLOCK = 11;

/**
 * Takes an exclusive `flock` on `path` (created 0600) without waiting.
 * Returns the descriptor holding it (close it to release), or null when
 * another open file holds the lock; throws LibcError otherwise.
 */
export function tryLockFile(path: string): number | null {
  const fd = openFd(path, O_RDWR_CREAT_CLOEXEC, 0o600);
  if (libc().flock(fd, LOCK_EX_NB) === 0) return fd;
  const code = errno();
  libc().close(fd);
  if (code === EWOULDBLOCK) return null;
  throw new LibcError("flock", path, code);
}

/** Closes a descriptor from {@link tryLockFile}, releasing its lock. */
export function closeFd(fd: number): void {
  libc().close(fd);
}

/** Reads a small file (sysfs/procfs) as text; null when it cannot be read. */
export function readSmallFile(path: string): string | null {
  const c = libc();
  const fd = c.open(cString(path), O_RDONLY, 0);
  if (fd < 0) return null;
  try {
    const buf = new Uint8Array(64 * 1024);
    let total = 0;
    for (;;) {
      const n = Number(c.read(fd, buf.subarray(total), BigInt(buf.length - total)));
      if (n < 0) return null;
      if (n === 0 || total + n >= buf.length) {
        total += Math.max(n, 0);
        break;
      }
      total += n;
    }
    return new TextDecoder().decode(buf.subarray(0, total));
  } finally {
    c.close(fd);
  }
}

/** Writes `text` to an existing file (a sysctl or sysfs attribute); throws LibcError. */
export function writeSmallFile(path: string, text: string): void {
  const fd = openFd(path, O_WRONLY);
  try {
    writeAll(fd, new TextEncoder().encode(text), path);
  } finally {
    libc().close(fd);
  }
}

/** `O_WRONLY | O_CREAT | O_NOCTTY | O_APPEND | O_NONBLOCK | O_CLOEXEC`. */
const O_APPEND_NONBLOCK = 0o1 | 0o100 | 0o400 | 0o2000 | 0o4000 | 0o2000000;

/**
 * Appends `bytes` to `path` (created 0600) without ever blocking: the file
 * is opened O_NONBLOCK, so a FIFO with no reader fails at once (ENXIO) and
 * one whose reader stalls fails the write (EAGAIN). Throws LibcError.
 */
export function appendNonBlocking(path: string, bytes: Uint8Array<ArrayBuffer>): void {
  const fd = openFd(path, O_APPEND_NONBLOCK, 0o600);
  try {
    writeAll(fd, bytes, path);
  } finally {
    libc().close(fd);
  }
}

/** True when `path` exists. */
export function pathExists(path: string): boolean {
  return libc().access(cString(path), 0) === 0;
}

/** The target of symlink `path`, or null. */
export function readLink(path: string): string | null {
  const buf = new Uint8Array(4096);
  const n = Number(libc().readlink(cString(path), buf, BigInt(buf.length)));
  return n < 0 ? null : new TextDecoder().decode(buf.subarray(0, n));
}

const AF_UNIX = 1;
const SOCK_STREAM_CLOEXEC = 1 | 0o2000000;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const SO_SNDTIMEO = 21;
const SOCK_DGRAM_NONBLOCK_CLOEXEC = 2 | 0o4000 | 0o2000000;
const MSG_DONTWAIT = 0x40;
const EAGAIN = 11;

/** A `struct sockaddr_un` for `path`; throws LibcError when the path is too long. */
function unixAddress(path: string, call: string): Uint8Array<ArrayBuffer> {
  const pathBytes = new TextEncoder().encode(path);
  if (pathBytes.length > 107) throw new LibcError(call, path, 36 /* ENAMETOOLONG */);
  const addr = new Uint8Array(110);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(pathBytes, 2);
  return addr;
}

/**
 * Sends `request` over a unix stream socket and reads until the peer
 * closes, blocking at most `timeoutMs` per read or write. Synchronous: the
 * plugin uses it for short exchanges with its node agent.
 */
export function unixExchange(path: string, request: Uint8Array<ArrayBuffer>, timeoutMs: number): Uint8Array {
  const c = libc();
  const fd = c.socket(AF_UNIX, SOCK_STREAM_CLOEXEC, 0);
  if (fd < 0) throw new LibcError("socket", path, errno());
  try {
    const timeval = new BigInt64Array([BigInt(Math.floor(timeoutMs / 1000)), BigInt((timeoutMs % 1000) * 1000)]);
    const tv = new Uint8Array(timeval.buffer);
    c.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16);
    c.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, tv, 16);
    const addr = unixAddress(path, "connect");
    if (c.connect(fd, addr, addr.length) !== 0) throw new LibcError("connect", path, errno());
    for (let sent = 0; sent < request.length;) {
      const n = Number(c.write(fd, request.subarray(sent), BigInt(request.length - sent)));
      if (n <= 0) throw new LibcError("write", path, errno());
      sent += n;
    }
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(16 * 1024);
    let total = 0;
    while (total < 256 * 1024) {
      const n = Number(c.read(fd, buf, BigInt(buf.length)));
      if (n < 0) throw new LibcError("read", path, errno());
      if (n === 0) break;
      chunks.push(buf.slice(0, n));
      total += n;
    }
    return concatBytes(chunks);
  } finally {
    c.close(fd);
  }
}

/**
 * Sends one datagram to the unix datagram socket `path` without ever
 * blocking: a missing socket, a full queue or any other failure drops the
 * message. Returns true when the kernel accepted it.
 */
export function unixDatagramSend(path: string, message: Uint8Array<ArrayBuffer>): boolean {
  const c = libc();
  let addr: Uint8Array<ArrayBuffer>;
  try {
    addr = unixAddress(path, "sendto");
  } catch {
    return false;
  }
  const fd = c.socket(AF_UNIX, SOCK_DGRAM_NONBLOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  try {
    return Number(c.sendto(fd, message, BigInt(message.length), MSG_DONTWAIT, addr, addr.length)) === message.length;
  } finally {
    c.close(fd);
  }
}

/** A bound, non-blocking unix datagram socket (the agent's side of plugin reports). */
export class UnixDatagramReceiver {
  readonly #fd: number;
  readonly #buf = new Uint8Array(4096);

  /** Binds a new socket at `path` (which must not exist). */
  constructor(path: string) {
    const c = libc();
    const addr = unixAddress(path, "bind");
    const fd = c.socket(AF_UNIX, SOCK_DGRAM_NONBLOCK_CLOEXEC, 0);
    if (fd < 0) throw new LibcError("socket", path, errno());
    if (c.bind(fd, addr, addr.length) !== 0) {
      const code = errno();
      c.close(fd);
      throw new LibcError("bind", path, code);
    }
    this.#fd = fd;
  }

  /** The next queued datagram, or null when none is waiting. */
  receive(): Uint8Array | null {
    const n = Number(libc().recv(this.#fd, this.#buf, BigInt(this.#buf.length), MSG_DONTWAIT));
    if (n >= 0) return this.#buf.slice(0, n);
    const code = errno();
    if (code === EAGAIN) return null;
    throw new LibcError("recv", "datagram socket", code);
  }

  /** Closes the socket (the path stays until removed). */
  close(): void {
    libc().close(this.#fd);
  }
}
