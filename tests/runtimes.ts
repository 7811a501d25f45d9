/**
 * Fixtures that drive a CNI plugin through real CNI clients nobody on the
 * team wrote: a libcni-based `cnitool`, podman 4.3 (CNI backend) and
 * containerd 1.6 (`ctr run --cni`).
 *
 * Every helper takes the CNI plugin directory and conflist (directory) as
 * parameters, so the same code runs the reference `bridge` plugin or Pontoon
 * (`dist/pontoon`, symlinked into a temp bin dir with {@link makeCniBinDir}).
 *
 * Nothing here touches the machine's podman/containerd state, `/etc/cni/net.d`
 * or `/opt/cni/bin`: podman gets a private containers.conf + storage.conf,
 * containerd a private config/root/state/socket, and `ctr` runs in a private
 * mount namespace with bind mounts over the two CNI directories.
 *
 * @module
 */

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Absolute path of the repository root (the directory holding `tests/`). */
export function repoRoot(): string {
  return decodeURIComponent(new URL("../", import.meta.url).pathname)
    .replace(/\/$/, "");
}

/** `tests/.work`, the gitignored cache for built binaries and images. */
export function defaultWorkDir(): string {
  return `${repoRoot()}/tests/.work`;
}

/** Exit code and decoded output of a finished command. */
export interface CmdResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for {@link run}. */
export interface RunOptions {
  /** Extra environment variables (merged over the inherited environment). */
  env?: Record<string, string>;
  /** Working directory. */
  cwd?: string;
  /** Text written to the command's stdin (stdin is /dev/null otherwise). */
  stdin?: string;
  /** SIGKILL the command after this many milliseconds. */
  timeoutMs?: number;
}

const SBIN_DIRS = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/**
 * Finds an executable on `PATH` plus the sbin directories (CI's PATH may lack
 * them). Returns its absolute path, or null when it is absent.
 */
export function which(name: string): string | null {
  if (name.includes("/")) return name;
  const dirs = [
    ...(Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":"),
    ...SBIN_DIRS,
  ];
  for (const dir of dirs) {
    if (!dir) continue;
    try {
      const st = Deno.statSync(`${dir}/${name}`);
      if (st.isFile && (st.mode ?? 0o111) & 0o111) return `${dir}/${name}`;
    } catch { /* not here */ }
  }
  return null;
}

/** True when `path` exists (following symlinks). */
export function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Returns the names in `names` that {@link which} cannot find. */
export function missingBinaries(names: string[]): string[] {
  return names.filter((n) => which(n) === null);
}

/**
 * Runs a command to completion and returns its exit code and output. The
 * program is looked up with {@link which}. Never throws on a non-zero exit.
 */
export async function run(
  cmd: string[],
  opts: RunOptions = {},
): Promise<CmdResult> {
  const child = new Deno.Command(which(cmd[0]) ?? cmd[0], {
    args: cmd.slice(1),
    env: opts.env,
    cwd: opts.cwd,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, opts.timeoutMs);
  try {
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(encoder.encode(opts.stdin));
      await w.close();
    }
    const out = await child.output();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

/** Like {@link run}, but throws (with stderr) when the exit code is not 0. */
export async function mustRun(
  cmd: string[],
  opts: RunOptions = {},
): Promise<CmdResult> {
  const r = await run(cmd, opts);
  if (r.code !== 0) {
    throw new Error(
      `${cmd.join(" ")} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
    );
  }
  return r;
}

/**
 * A random name `prefix` + hex, at most `maxLen` characters (15 by default,
 * the kernel's interface-name limit).
 */
export function uniqueName(prefix: string, maxLen = 15): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
  return (prefix + hex).slice(0, Math.max(maxLen, prefix.length + 4));
}

/** Creates a fresh temp directory (under /tmp: short paths for sockets). */
export function makeTempDir(prefix = "pontoon-"): Promise<string> {
  return Deno.makeTempDir({ prefix });
}

/**
 * Unmounts everything mounted at or below `dir` (deepest first, lazily), so a
 * state directory can be removed after a runtime left mounts behind.
 */
export async function unmountUnder(dir: string): Promise<void> {
  const mounts = (await Deno.readTextFile("/proc/self/mountinfo"))
    .split("\n")
    .map((l) => l.split(" ")[4])
    .filter((p): p is string => p !== undefined)
    .map((p) => p.replace(/\\(\d{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(dir + "/"))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await run(["umount", "-l", m]);
}

/** Unmounts leftovers under `dir` and removes it; never throws. */
export async function removeDir(dir: string): Promise<void> {
  try {
    await unmountUnder(dir);
    await Deno.remove(dir, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      console.warn(`removeDir(${dir}): ${e}`);
    }
  }
}

/**
 * Removes cgroup `name` (a path relative to the cgroup root, e.g. a private
 * parent like `pontoon-1234`) and its empty children from every mounted
 * hierarchy (cgroup v1 controllers, v1 "unified" and pure v2). Non-empty
 * cgroups are left alone; never throws.
 */
export async function removeCgroup(name: string): Promise<void> {
  const root = "/sys/fs/cgroup";
  const candidates = [`${root}/${name}`];
  try {
    for await (const e of Deno.readDir(root)) {
      if (e.isDirectory) candidates.push(`${root}/${e.name}/${name}`);
    }
  } catch { /* no cgroupfs */ }
  const rmTree = async (dir: string): Promise<void> => {
    try {
      for await (const e of Deno.readDir(dir)) {
        if (e.isDirectory) await rmTree(`${dir}/${e.name}`);
      }
      await Deno.remove(dir); // rmdir; fails while tasks remain
    } catch { /* absent or busy */ }
  };
  for (const c of candidates) await rmTree(c);
}

// ---------------------------------------------------------------------------
// Network helpers

/** A named network namespace under /run/netns. */
export interface Netns {
  name: string;
  /** `/run/netns/<name>`, what CNI_NETNS gets. */
  path: string;
  /** Runs a command inside the namespace (`ip netns exec`). */
  exec(cmd: string[], opts?: RunOptions): Promise<CmdResult>;
  /** Starts a long-running command inside the namespace (output
   * discarded); kill it and await `status`, or let `delete()` kill it. */
  spawn(cmd: string[]): Deno.ChildProcess;
  /** Kills the namespace's processes and deletes it; never throws. */
  delete(): Promise<void>;
}

/**
 * Creates a network namespace with a unique name (`ip netns add`) and brings
 * its `lo` up. Delete it with {@link Netns.delete} in a `finally`.
 */
export async function createNetns(prefix = "ptns"): Promise<Netns> {
  const name = uniqueName(prefix, 24);
  await mustRun(["ip", "netns", "add", name]);
  await mustRun(["ip", "-n", name, "link", "set", "lo", "up"]);
  const ip = which("ip") ?? "ip";
  return {
    name,
    path: `/run/netns/${name}`,
    exec: (cmd, opts) => run([ip, "netns", "exec", name, ...cmd], opts),
    spawn: (cmd) =>
      new Deno.Command(ip, {
        args: ["netns", "exec", name, ...cmd],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn(),
    async delete() {
      const pids = await run(["ip", "netns", "pids", name]);
      for (const pid of pids.stdout.split(/\s+/).filter(Boolean)) {
        try {
          Deno.kill(Number(pid), "SIGKILL");
        } catch { /* gone */ }
      }
      await run(["ip", "netns", "del", name]);
    },
  };
}

/** Deletes a host link (bridge, veth, ifb) if it exists; never throws. */
export async function deleteLink(name: string): Promise<void> {
  await run(["ip", "link", "del", name]);
}

/** True when a link with that name exists in the host namespace. */
export async function linkExists(name: string): Promise<boolean> {
  return (await run(["ip", "link", "show", "dev", name])).code === 0;
}

function ipv4ToInt(ip: string): number {
  return ip.split(".").reduce((acc, o) => acc * 256 + Number(o), 0);
}

/**
 * Picks a random IPv4 /24 in 10.100.0.0–10.249.255.0 that overlaps no route
 * (any table) or address on the host, so tests do not collide with other
 * users' networks. Returns the CIDR, the `.1` gateway and the `a.b.c` prefix.
 */
export async function freeSubnet(): Promise<
  { subnet: string; gateway: string; prefix: string }
> {
  const text = (await mustRun(["ip", "-4", "route", "show", "table", "all"]))
    .stdout + (await mustRun(["ip", "-4", "addr"])).stdout;
  const used = [...text.matchAll(/(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?/g)]
    .map((m) => {
      const bits = m[2] === undefined ? 32 : Number(m[2]);
      const size = 2 ** (32 - bits);
      const start = Math.floor(ipv4ToInt(m[1]) / size) * size;
      return [start, start + size] as const;
    });
  for (let i = 0; i < 200; i++) {
    const [a, b] = crypto.getRandomValues(new Uint8Array(2));
    const prefix = `10.${100 + (a % 150)}.${b}`;
    const lo = ipv4ToInt(`${prefix}.0`);
    const hi = lo + 256;
    // (routes as broad as 10.0.0.0/8 or wider are ignored: our /24 on the
    // bridge is more specific)
    if (used.every(([s, e]) => e <= lo || s >= hi || e - s >= 2 ** 24)) {
      return { subnet: `${prefix}.0/24`, gateway: `${prefix}.1`, prefix };
    }
  }
  throw new Error("no free 10.x.y.0/24 found");
}

/** Returns a TCP port that nothing listens on right now. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/**
 * Lists the addresses host-local currently holds for network `netName` in
 * `dataDir` (ignoring its `lock` and `last_reserved_ip.*` files).
 */
export async function hostLocalAllocations(
  dataDir: string,
  netName: string,
): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(`${dataDir}/${netName}`)) {
      if (e.name === "lock" || e.name.startsWith("last_reserved_ip")) continue;
      out.push(e.name);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

/** Splits an `iptables -S` line into arguments (handles "..." and \"). */
function shellSplit(line: string): string[] {
  const out: string[] = [];
  let cur = "";
  let inQuote = false;
  let any = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === "\\" && i + 1 < line.length) {
      cur += line[++i];
      any = true;
    } else if (c === '"') {
      inQuote = !inQuote;
      any = true;
    } else if (c === " " && !inQuote) {
      if (any) out.push(cur);
      cur = "";
      any = false;
    } else {
      cur += c;
      any = true;
    }
  }
  if (any) out.push(cur);
  return out;
}

/**
 * Removes portmap's per-container iptables state left for CNI network
 * `netName` (rules in nat `CNI-HOSTPORT-DNAT` whose comment names the
 * network, and the `CNI-DN-*` chains they jump to), for IPv4 and IPv6. The
 * shared `CNI-HOSTPORT-*` chains stay, as portmap itself leaves them. Returns
 * how many rules were removed (0 when portmap's DEL already cleaned up).
 */
export async function cleanupPortmap(netName: string): Promise<number> {
  let removed = 0;
  for (const tool of ["iptables", "ip6tables"]) {
    if (!which(tool)) continue;
    const r = await run([tool, "-w", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"]);
    if (r.code !== 0) continue;
    for (const line of r.stdout.split("\n")) {
      if (!line.includes(`dnat name: \\"${netName}\\"`)) continue;
      const args = shellSplit(line);
      if (args[0] !== "-A") continue;
      const target = args[args.indexOf("-j") + 1];
      await run([tool, "-w", "-t", "nat", "-D", ...args.slice(1)]);
      removed++;
      if (target?.startsWith("CNI-DN-")) {
        await run([tool, "-w", "-t", "nat", "-F", target]);
        await run([tool, "-w", "-t", "nat", "-X", target]);
      }
    }
  }
  return removed;
}

// ---------------------------------------------------------------------------
// CNI directories

/**
 * Fills `binDir` with symlinks to every plugin in `pluginDirs` (first one
 * wins; default the reference plugins in /usr/lib/cni), plus `extra`
 * name → path links, e.g. `{ pontoon: repoRoot() + "/dist/pontoon" }`.
 * Returns `binDir`.
 */
export async function makeCniBinDir(
  binDir: string,
  opts: { pluginDirs?: string[]; extra?: Record<string, string> } = {},
): Promise<string> {
  await Deno.mkdir(binDir, { recursive: true });
  const seen = new Set<string>();
  const link = async (name: string, target: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    try {
      await Deno.remove(`${binDir}/${name}`);
    } catch { /* absent */ }
    await Deno.symlink(target, `${binDir}/${name}`);
  };
  for (const [name, target] of Object.entries(opts.extra ?? {})) {
    await link(name, target);
  }
  for (const dir of opts.pluginDirs ?? ["/usr/lib/cni"]) {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile || e.isSymlink) await link(e.name, `${dir}/${e.name}`);
    }
  }
  return binDir;
}

/**
 * Writes `conflist` as JSON into `confDir` (created if needed) as `file`
 * (default `10-<name>.conflist`) and returns the file path.
 */
export async function writeConflist(
  confDir: string,
  conflist: { name: string } & Record<string, unknown>,
  file?: string,
): Promise<string> {
  await Deno.mkdir(confDir, { recursive: true });
  const path = `${confDir}/${file ?? `10-${conflist.name}.conflist`}`;
  await Deno.writeTextFile(path, JSON.stringify(conflist, null, 2) + "\n");
  return path;
}

// ---------------------------------------------------------------------------
// cnitool (libcni)

const cnitoolBuilds = new Map<string, Promise<string>>();

async function newestMtime(dir: string): Promise<number> {
  let newest = 0;
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile) continue;
    newest = Math.max(
      newest,
      (await Deno.stat(`${dir}/${e.name}`)).mtime?.getTime() ?? 0,
    );
  }
  return newest;
}

/**
 * Builds `tests/cnitool` offline against Debian's libcni
 * (`GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off`, CGO off when
 * there is no C compiler) into `<workDir>/bin/cnitool` and returns that path. Rebuilds only
 * when a source file is newer than the binary; safe across parallel test
 * processes (flock + rename).
 */
export function buildCnitool(workDir = defaultWorkDir()): Promise<string> {
  let p = cnitoolBuilds.get(workDir);
  if (!p) {
    p = doBuildCnitool(workDir);
    cnitoolBuilds.set(workDir, p);
    p.catch(() => cnitoolBuilds.delete(workDir));
  }
  return p;
}

async function doBuildCnitool(workDir: string): Promise<string> {
  const src = `${repoRoot()}/tests/cnitool`;
  const binDir = `${workDir}/bin`;
  const out = `${binDir}/cnitool`;
  await Deno.mkdir(binDir, { recursive: true });
  using lock = await Deno.open(`${binDir}/.cnitool.lock`, {
    create: true,
    write: true,
  });
  await lock.lock(true);
  try {
    const built = await Deno.stat(out).then((s) => s.mtime?.getTime() ?? 0)
      .catch(() => 0);
    if (built > 0 && built >= await newestMtime(src)) return out;
    const go = which("go");
    if (!go) throw new Error("go not found (apt-get install golang-go)");
    const tmp = `${out}.tmp.${Deno.pid}`;
    await mustRun([go, "build", "-o", tmp, "."], {
      cwd: src,
      env: {
        GO111MODULE: "off",
        GOPATH: "/usr/share/gocode",
        GOPROXY: "off",
        GOFLAGS: "",
        GOENV: "off",
        // Debian ships std prebuilt with cgo: ~2 s cold with gcc; without a C
        // compiler, CGO off (std rebuilt into GOCACHE once, ~5-10 s).
        CGO_ENABLED: which("gcc") ? "1" : "0",
        GOCACHE: `${workDir}/gocache`,
      },
    });
    await Deno.rename(tmp, out);
    return out;
  } finally {
    await lock.unlock();
  }
}

/** Parameters of one {@link runCnitool} call. */
export interface CnitoolRun {
  /** Path returned by {@link buildCnitool}. */
  bin: string;
  verb: "add" | "check" | "del" | "gc" | "status";
  /** Network name (the conflist's `name`). */
  net: string;
  /** CNI_NETNS; may be "" for del (as containerd sends) and gc/status. */
  netnsPath: string;
  /** Directory holding the conflist (NETCONFPATH). */
  confDir: string;
  /** CNI plugin directory, or several (CNI_PATH). */
  cniPath: string | string[];
  /** libcni result cache dir (use a temp dir, not /var/lib/cni). */
  cacheDir: string;
  /** Capability args (runtimeConfig), e.g. `{portMappings: [...]}`. For
   * check/del, omit to reuse what add cached. */
  capArgs?: Record<string, unknown>;
  /** CNI_ARGS string `K=V;K2=V2`. For check/del, omit to reuse add's. */
  cniArgs?: string;
  /** CNI_CONTAINERID (default derived from netnsPath). */
  containerId?: string;
  /** CNI_IFNAME (default eth0). */
  ifname?: string;
  /** gc only: attachments to keep (default none: everything is collected). */
  validAttachments?: { containerID: string; ifname: string }[];
  /** Extra environment for cnitool and, through it, the plugins. */
  env?: Record<string, string>;
  /** Kill after this many ms (default 60 s). */
  timeoutMs?: number;
}

/**
 * Runs the libcni client once. `add` prints the result JSON on stdout; on
 * failure the exit code is 1 and stderr's last line is the CNI error JSON
 * (`{"code":N,"msg":...}`) when a plugin returned one.
 */
export function runCnitool(o: CnitoolRun): Promise<CmdResult> {
  const env: Record<string, string> = {
    NETCONFPATH: o.confDir,
    CNI_PATH: Array.isArray(o.cniPath) ? o.cniPath.join(":") : o.cniPath,
    CNI_CACHE_DIR: o.cacheDir,
    CNI_IFNAME: o.ifname ?? "eth0",
    CNI_CONTAINERID: o.containerId ?? "",
    ...o.env,
  };
  if (o.capArgs !== undefined) env.CAP_ARGS = JSON.stringify(o.capArgs);
  if (o.cniArgs !== undefined) env.CNI_ARGS = o.cniArgs;
  if (o.validAttachments !== undefined) {
    env.CNI_VALID_ATTACHMENTS = JSON.stringify(o.validAttachments);
  }
  // CAP_ARGS/CNI_ARGS must be *unset* (not inherited) to reuse the cache.
  const inherited = Deno.env.toObject();
  delete inherited.CAP_ARGS;
  delete inherited.CNI_ARGS;
  delete inherited.CNI_VALID_ATTACHMENTS;
  return runClean([o.bin, o.verb, o.net, o.netnsPath], {
    ...inherited,
    ...env,
  }, o.timeoutMs ?? 60_000);
}

function runClean(
  cmd: string[],
  env: Record<string, string>,
  timeoutMs: number,
): Promise<CmdResult> {
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  return outputWithin(child, timeoutMs);
}

/**
 * Waits for a spawned child (stdout and stderr piped) and decodes its
 * output; SIGKILLs it if it is still running after `timeoutMs`.
 */
export async function outputWithin(
  child: Deno.ChildProcess,
  timeoutMs: number,
): Promise<CmdResult> {
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, timeoutMs);
  try {
    const out = await child.output();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// busybox images

/** Throws unless `path` is a statically linked ELF (no PT_INTERP). */
async function assertStaticElf(path: string): Promise<void> {
  const b = await Deno.readFile(path);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (v.getUint32(0) !== 0x7f454c46 || b[4] !== 2) {
    throw new Error(`${path} is not a 64-bit ELF`);
  }
  const phoff = Number(v.getBigUint64(0x20, true));
  const phentsize = v.getUint16(0x36, true);
  const phnum = v.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    if (v.getUint32(phoff + i * phentsize, true) === 3) {
      throw new Error(
        `${path} is dynamically linked; install busybox-static`,
      );
    }
  }
}

/**
 * Returns a rootfs directory (`<workDir>/busybox-rootfs`) holding the static
 * `/bin/busybox` from busybox-static plus a `/bin` symlink for every applet
 * (sh, ping, ip, sleep, nc, ifconfig, cat, wget, httpd, ...), minimal
 * `/etc/passwd` and `/etc/group`, and empty mount points. Built once and
 * reused while the busybox binary is unchanged.
 */
export async function busyboxRootfs(
  workDir = defaultWorkDir(),
): Promise<string> {
  const busybox = "/bin/busybox";
  const dest = `${workDir}/busybox-rootfs`;
  const src = await Deno.stat(busybox).catch(() => null);
  if (!src) throw new Error("/bin/busybox missing: install busybox-static");
  const stamp = `${src.size}:${src.mtime?.getTime()}`;
  const have = await Deno.readTextFile(`${dest}/.stamp`).catch(() => "");
  if (have === stamp) return dest;
  await assertStaticElf(busybox);
  await Deno.mkdir(workDir, { recursive: true });
  using lock = await Deno.open(`${workDir}/.busybox-rootfs.lock`, {
    create: true,
    write: true,
  });
  await lock.lock(true);
  // Another process may have built it while we waited for the lock.
  if (await Deno.readTextFile(`${dest}/.stamp`).catch(() => "") === stamp) {
    return dest;
  }
  const tmp = await Deno.makeTempDir({ dir: workDir, prefix: ".rootfs-" });
  for (
    const d of ["bin", "dev", "etc", "proc", "root", "run", "sys", "var/www"]
  ) await Deno.mkdir(`${tmp}/${d}`, { recursive: true });
  await Deno.mkdir(`${tmp}/tmp`, { mode: 0o1777 });
  await Deno.chmod(`${tmp}/tmp`, 0o1777);
  await Deno.copyFile(busybox, `${tmp}/bin/busybox`);
  await Deno.chmod(`${tmp}/bin/busybox`, 0o755);
  const list = (await mustRun([busybox, "--list"])).stdout.split("\n");
  for (const applet of list.map((s) => s.trim()).filter(Boolean)) {
    if (applet === "busybox") continue;
    await Deno.symlink("busybox", `${tmp}/bin/${applet}`);
  }
  await Deno.writeTextFile(`${tmp}/etc/passwd`, "root:x:0:0:root:/root:/bin/sh\n");
  await Deno.writeTextFile(`${tmp}/etc/group`, "root:x:0:\n");
  await Deno.writeTextFile(`${tmp}/var/www/index.html`, "pontoon\n");
  await Deno.writeTextFile(`${tmp}/.stamp`, stamp);
  await Deno.remove(dest, { recursive: true }).catch(() => {});
  await Deno.rename(tmp, dest);
  return dest;
}

/** Tars `rootfs` (owner 0, numeric ids) into `out` and returns `out`. */
async function tarRootfs(rootfs: string, out: string): Promise<string> {
  await mustRun([
    "tar",
    "--numeric-owner",
    "--owner=0",
    "--group=0",
    "--exclude=./.stamp",
    "-C",
    rootfs,
    "-cf",
    out,
    ".",
  ]);
  return out;
}

async function sha256Hex(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Writes a hand-made OCI image layout archive (oci-layout, index.json,
 * blobs: the busybox rootfs as one uncompressed layer) to `out`, annotated
 * with `io.containerd.image.name` = `ref`, and returns `out`.
 */
export async function busyboxOciArchive(
  out: string,
  ref: string,
  workDir = defaultWorkDir(),
): Promise<string> {
  const rootfs = await busyboxRootfs(workDir);
  const layout = await Deno.makeTempDir({ prefix: "pontoon-oci-" });
  try {
    const blobs = `${layout}/blobs/sha256`;
    await Deno.mkdir(blobs, { recursive: true });
    const put = async (data: Uint8Array<ArrayBuffer>, mediaType: string) => {
      const hex = await sha256Hex(data);
      await Deno.writeFile(`${blobs}/${hex}`, data);
      return { mediaType, digest: `sha256:${hex}`, size: data.length };
    };
    const layerTar = await tarRootfs(rootfs, `${layout}/layer.tar`);
    const layerBytes = await Deno.readFile(layerTar);
    await Deno.remove(layerTar);
    const layer = await put(
      layerBytes,
      "application/vnd.oci.image.layer.v1.tar",
    );
    const config = await put(
      encoder.encode(JSON.stringify({
        architecture: "amd64",
        os: "linux",
        config: {
          Env: ["PATH=/bin"],
          Cmd: ["/bin/sh"],
          WorkingDir: "/",
        },
        rootfs: { type: "layers", diff_ids: [layer.digest] },
      })),
      "application/vnd.oci.image.config.v1+json",
    );
    const manifest = await put(
      encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config,
        layers: [layer],
      })),
      "application/vnd.oci.image.manifest.v1+json",
    );
    const tag = ref.includes(":") ? ref.slice(ref.lastIndexOf(":") + 1) : "latest";
    await Deno.writeTextFile(
      `${layout}/index.json`,
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{
          ...manifest,
          platform: { architecture: "amd64", os: "linux" },
          annotations: {
            "io.containerd.image.name": ref,
            "org.opencontainers.image.ref.name": tag,
          },
        }],
      }),
    );
    await Deno.writeTextFile(
      `${layout}/oci-layout`,
      JSON.stringify({ imageLayoutVersion: "1.0.0" }),
    );
    await mustRun([
      "tar",
      "--numeric-owner",
      "--owner=0",
      "--group=0",
      "-C",
      layout,
      "-cf",
      out,
      "oci-layout",
      "index.json",
      "blobs",
    ]);
    return out;
  } finally {
    await Deno.remove(layout, { recursive: true });
  }
}

// ---------------------------------------------------------------------------
// podman

/** A private podman configuration; pass it to {@link podman}. */
export interface PodmanEnv {
  /** Directory holding all of this podman's state. */
  dir: string;
  /** Environment to run podman with (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF). */
  env: Record<string, string>;
  containersConf: string;
  storageConf: string;
  cniConfDir: string;
  cniPluginDirs: string[];
  /** Private cgroupfs parent that {@link podman} adds to run/create. */
  cgroupParent: string;
}

/** Hard limit `name` ("Max open files", ...) of this process, capped. */
async function hardLimit(name: string): Promise<number> {
  const limits = await Deno.readTextFile("/proc/self/limits");
  const line = limits.split("\n").find((l) => l.startsWith(name));
  const hard = line?.slice(26).trim().split(/\s+/)[1];
  if (!hard || hard === "unlimited") return 1048576;
  return Math.min(Number(hard), 1048576);
}

/**
 * Writes a private containers.conf and storage.conf under `<workDir>/podman`
 * and returns the environment that makes podman use only them: runc,
 * cgroupfs, file events logger and file locks, `default_ulimits` at this
 * process's hard limits (nproc also capped at kernel.pid_max), CNI backend
 * with `network_config_dir` =
 * `cniConfDir` and `cni_plugin_dirs` = `cniPluginDirs`, vfs storage (no
 * mounts to leak) with graphroot/runroot/tmp_dir under the work dir.
 */
export async function podmanEnv(
  workDir: string,
  opts: { cniConfDir: string; cniPluginDirs: string[] },
): Promise<PodmanEnv> {
  const dir = `${workDir}/podman`;
  for (const d of ["storage", "run", "tmp"]) {
    await Deno.mkdir(`${dir}/${d}`, { recursive: true });
  }
  const q = (s: string) => JSON.stringify(s);
  const nofile = await hardLimit("Max open files");
  // podman caps its own RLIMIT_NPROC at kernel.pid_max (32768 here), and
  // runc cannot raise it back: use the smaller of the two.
  const pidMax = Number(
    (await Deno.readTextFile("/proc/sys/kernel/pid_max")).trim(),
  );
  const nproc = Math.min(await hardLimit("Max processes"), pidMax);
  const containersConf = `${dir}/containers.conf`;
  await Deno.writeTextFile(
    containersConf,
    `[containers]
default_ulimits = [${q(`nofile=${nofile}:${nofile}`)}, ${q(`nproc=${nproc}:${nproc}`)}]
default_sysctls = ["net.ipv4.ping_group_range=0 0"]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = ${q(`${dir}/events.log`)}
runtime = "runc"
tmp_dir = ${q(`${dir}/tmp`)}
static_dir = ${q(`${dir}/storage/libpod`)}
volume_path = ${q(`${dir}/storage/volumes`)}
lock_type = "file"

[network]
network_backend = "cni"
network_config_dir = ${q(opts.cniConfDir)}
cni_plugin_dirs = [${opts.cniPluginDirs.map(q).join(", ")}]
`,
  );
  const storageConf = `${dir}/storage.conf`;
  await Deno.writeTextFile(
    storageConf,
    `[storage]
driver = "vfs"
graphroot = ${q(`${dir}/storage`)}
runroot = ${q(`${dir}/run`)}
`,
  );
  return {
    dir,
    env: {
      CONTAINERS_CONF: containersConf,
      CONTAINERS_STORAGE_CONF: storageConf,
    },
    containersConf,
    storageConf,
    cniConfDir: opts.cniConfDir,
    cniPluginDirs: opts.cniPluginDirs,
    cgroupParent: `/${uniqueName("pontoon-podman-", 32)}`,
  };
}

/**
 * Runs `podman ...args` with the private configuration `env`. For `run` and
 * `create` it inserts `--cgroup-parent=<env.cgroupParent>` so containers do
 * not land in the shared `/libpod_parent` cgroup.
 */
export function podman(env: PodmanEnv, ...args: string[]): Promise<CmdResult> {
  const argv = args[0] === "run" || args[0] === "create"
    ? [args[0], `--cgroup-parent=${env.cgroupParent}`, ...args.slice(1)]
    : args;
  return run(["podman", ...argv], { env: env.env, timeoutMs: 120_000 });
}

/**
 * Imports the busybox rootfs as image `ref` into the private podman storage
 * (`podman import`, in a private mount namespace so that even the blob-info
 * cache stays out of /var/lib/containers) and returns `ref`.
 */
export async function podmanImportBusybox(
  env: PodmanEnv,
  ref = "localhost/pontoon/busybox:latest",
  workDir = defaultWorkDir(),
): Promise<string> {
  const tar = await tarRootfs(
    await busyboxRootfs(workDir),
    `${env.dir}/busybox.tar`,
  );
  // In a private mount ns so that containers/image's blob-info cache goes to
  // our dir instead of /var/lib/containers/cache.
  const r = await run(
    withPrivateMounts(env.dir, [{
      source: `${env.dir}/blob-info-cache`,
      target: "/var/lib/containers/cache",
    }], [which("podman") ?? "podman", "import", "--change", "CMD=/bin/sh", tar, ref]),
    { env: env.env, timeoutMs: 120_000 },
  );
  if (r.code !== 0) throw new Error(`podman import failed: ${r.stderr}`);
  await Deno.remove(tar);
  return ref;
}

/**
 * Removes every container of this private podman (`rm -af -t 0`, which runs
 * CNI DEL), then its state directory and cgroup parent. Never throws.
 */
export async function podmanCleanup(env: PodmanEnv): Promise<void> {
  const r = await podman(env, "rm", "-a", "-f", "-t", "0");
  if (r.code !== 0) console.warn(`podman rm -af: ${r.stderr}`);
  await removeDir(env.dir);
  await removeCgroup(env.cgroupParent.slice(1));
}

// ---------------------------------------------------------------------------
// containerd

/** A private containerd started by {@link startContainerd}. */
export interface Containerd {
  /** Directory holding config, root, state, socket and log. */
  dir: string;
  /** gRPC socket path. */
  address: string;
  /** containerd namespace used by {@link Containerd.ctr} (unique). */
  namespace: string;
  /** containerd's stdout/stderr log file. */
  logFile: string;
  /** Runs `ctr --address … -n … ...args`. */
  ctr(...args: string[]): Promise<CmdResult>;
  /** Kills tasks, stops containerd, unmounts and removes `dir`, removes the
   * namespace's cgroup. */
  stop(): Promise<void>;
}

/**
 * Starts a private containerd (own config, root, state, sockets, `opt` dir;
 * CRI plugin disabled) in a new temp dir under `workDir` and waits until it
 * answers. Always call `stop()` in a `finally`.
 */
export async function startContainerd(workDir: string): Promise<Containerd> {
  await Deno.mkdir(workDir, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: workDir, prefix: "containerd-" });
  const address = `${dir}/c.sock`;
  const namespace = uniqueName("pontoon-", 24);
  const q = (s: string) => JSON.stringify(s);
  const config = `${dir}/config.toml`;
  await Deno.writeTextFile(
    config,
    `version = 2
root = ${q(`${dir}/root`)}
state = ${q(`${dir}/state`)}
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = ${q(address)}

[ttrpc]
  address = ${q(`${address}.ttrpc`)}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = ${q(`${dir}/opt`)}
`,
  );
  const logFile = `${dir}/containerd.log`;
  const log = await Deno.open(logFile, { create: true, write: true });
  const bin = which("containerd") ?? "containerd";
  const proc = new Deno.Command(bin, {
    args: ["--config", config],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Both streams into one log file.
  const pumps = Promise.all([
    proc.stdout.pipeTo(log.writable, { preventClose: true }),
    proc.stderr.pipeTo(log.writable, { preventClose: true }),
  ]).catch(() => {}).finally(() => log.close());
  let exited = false;
  const status = proc.status.then((s) => {
    exited = true;
    return s;
  });

  const ctr = (...args: string[]) =>
    run(["ctr", "--address", address, "-n", namespace, ...args], {
      timeoutMs: 120_000,
    });
  const stop = async () => {
    if (!exited) {
      const tasks = await ctr("tasks", "ls", "-q");
      for (const t of tasks.stdout.split("\n").filter(Boolean)) {
        await ctr("tasks", "kill", "-s", "SIGKILL", t);
        await ctr("tasks", "delete", "-f", t);
      }
      const cs = await ctr("containers", "ls", "-q");
      for (const c of cs.stdout.split("\n").filter(Boolean)) {
        await ctr("containers", "delete", c);
      }
      try {
        proc.kill("SIGTERM");
      } catch { /* gone */ }
      const t = setTimeout(() => {
        try {
          proc.kill("SIGKILL");
        } catch { /* gone */ }
      }, 10_000);
      await status;
      clearTimeout(t);
    }
    await pumps;
    await removeDir(dir);
    // containerd puts containers under a cgroup named after the namespace.
    await removeCgroup(namespace);
  };

  const deadline = Date.now() + 20_000;
  while (true) {
    if (exited) {
      await pumps;
      const tail = await Deno.readTextFile(logFile).catch(() => "");
      await removeDir(dir);
      throw new Error(`containerd exited early:\n${tail.slice(-3000)}`);
    }
    const v = await run(["ctr", "--address", address, "version"], {
      timeoutMs: 5_000,
    });
    if (v.code === 0) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`containerd did not come up: ${v.stderr}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { dir, address, namespace, logFile, ctr, stop };
}

/**
 * Imports the busybox image as `ref` into the private containerd from a
 * hand-made OCI layout archive (`ctr images import`) and returns `ref`.
 */
export async function containerdImportBusybox(
  cd: Containerd,
  ref = "docker.io/pontoon/busybox:latest",
  workDir = defaultWorkDir(),
): Promise<string> {
  const tar = await busyboxOciArchive(`${cd.dir}/busybox-oci.tar`, ref, workDir);
  const r = await cd.ctr("images", "import", tar);
  if (r.code !== 0) throw new Error(`ctr images import failed: ${r.stderr}`);
  await Deno.remove(tar);
  return ref;
}

/** Parameters of {@link ctrRunCni} / {@link spawnCtrRunCni}. */
export interface CtrRunCni {
  /** Image reference, from {@link containerdImportBusybox}. */
  image: string;
  /** Container id (default a unique `ptc-…`). */
  id?: string;
  /** Command and arguments to run in the container. */
  cmd: string[];
  /** Bind-mounted over /etc/cni/net.d: ctr loads its first conflist. */
  confDir: string;
  /** Bind-mounted over /opt/cni/bin (ctr also falls back to /usr/lib/cni). */
  binDir: string;
  /** Bind-mounted over /var/lib/cni, libcni's result cache (default
   * `<containerd dir>/cni-cache`). */
  cniCacheDir?: string;
  /** Extra `ctr run` flags, e.g. `["--cap-add", "CAP_NET_RAW"]`. */
  extraArgs?: string[];
}

// Bind-mounts pairs of (source, target) given as arguments, then runs the
// command after "--". A missing target (e.g. /opt/cni/bin on a fresh machine)
// is created inside an overlay over its nearest existing ancestor, so the
// host filesystem is never written.
const PRIVATE_MOUNTS_SCRIPT = `set -e
work=$1; shift
while [ "$1" != -- ]; do
  s=$1; t=$2; shift 2
  mkdir -p "$s"
  if [ ! -d "$t" ]; then
    a=$t
    while [ ! -d "$a" ]; do a=$(dirname "$a"); done
    if [ "$a" = / ]; then echo "cannot create $t privately" >&2; exit 97; fi
    o=$(mktemp -d "$work/ovl.XXXXXX"); mkdir "$o/u" "$o/w"
    mount -t overlay overlay -o "lowerdir=$a,upperdir=$o/u,workdir=$o/w" "$a"
    mkdir -p "$t"
  fi
  mount --bind "$s" "$t"
done
shift
exec "$@"
`;

/**
 * Returns an argv that runs `cmd` in a private mount namespace
 * (`unshare --mount --propagation private`) in which each `target` directory
 * is replaced by a bind mount of `source` (created if missing). Missing
 * targets are created in an overlay over their nearest existing ancestor
 * (upper dir under `scratchDir`), so the host never sees any of it. Only for
 * clients that create no mounts other processes must see (ctr, podman
 * import; not podman run, whose /run/netns mounts must stay visible).
 */
export function withPrivateMounts(
  scratchDir: string,
  mounts: { source: string; target: string }[],
  cmd: string[],
): string[] {
  return [
    which("unshare") ?? "unshare",
    "--mount",
    "--propagation",
    "private",
    "--",
    which("sh") ?? "/bin/sh",
    "-c",
    PRIVATE_MOUNTS_SCRIPT,
    "sh",
    scratchDir,
    ...mounts.flatMap((m) => [m.source, m.target]),
    "--",
    ...cmd,
  ];
}

function ctrRunCommand(cd: Containerd, o: CtrRunCni): Deno.Command {
  const argv = withPrivateMounts(cd.dir, [
    { source: o.confDir, target: "/etc/cni/net.d" },
    { source: o.binDir, target: "/opt/cni/bin" },
    { source: o.cniCacheDir ?? `${cd.dir}/cni-cache`, target: "/var/lib/cni" },
  ], [
    which("ctr") ?? "ctr",
    "--address",
    cd.address,
    "-n",
    cd.namespace,
    "run",
    "--rm",
    "--cni",
    "--fifo-dir",
    `${cd.dir}/fifo`,
    "--runc-root",
    `${cd.dir}/runc`,
    ...(o.extraArgs ?? []),
    o.image,
    o.id ?? uniqueName("ptc-", 20),
    ...o.cmd,
  ]);
  return new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  });
}

/**
 * Starts `ctr run --rm --cni` (in `unshare --mount` with `confDir` over
 * /etc/cni/net.d, `binDir` over /opt/cni/bin and `cniCacheDir` over
 * /var/lib/cni) and returns the process with
 * stdin/stdout/stderr piped. ADD runs with CNI_NETNS=/proc/PID/ns/net before
 * the command starts; DEL (CNI_NETNS="") runs when the command exits and
 * before this process exits. Close stdin when you do not use it.
 */
export function spawnCtrRunCni(cd: Containerd, o: CtrRunCni): Deno.ChildProcess {
  return ctrRunCommand(cd, o).spawn();
}

/** {@link spawnCtrRunCni} to completion (stdin closed, 120 s timeout). */
export async function ctrRunCni(cd: Containerd, o: CtrRunCni): Promise<CmdResult> {
  const child = spawnCtrRunCni(cd, o);
  await child.stdin.close();
  return outputWithin(child, 120_000);
}
