/**
 * The host side of the bench: running `ip`, `nft` and friends, making and
 * removing network namespaces, picking free subnets, finding what a plugin
 * left behind and removing it. Everything the bench creates carries the
 * run's id, so it never touches objects of anyone else on the machine.
 *
 * @module
 */

/** Output of a finished command. */
export interface CommandOutput {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command and returns its output; throws when it fails unless
 * `allowFail` is set.
 */
export async function run(
  cmd: string,
  args: string[],
  options: { stdin?: string; allowFail?: boolean } = {},
): Promise<CommandOutput> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const out = await child.output();
  const result = {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
  if (result.code !== 0 && !options.allowFail) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${result.code}): ${result.stderr.trim()}`,
    );
  }
  return result;
}

/** Runs `fn` over `items` with at most `limit` in flight, in start order. */
export async function pool<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      await fn(items[index], index);
    }
  };
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker),
  );
}

/** Path of a named network namespace. */
export function netnsPath(name: string): string {
  return `/var/run/netns/${name}`;
}

/** Creates named network namespaces with one `ip -batch`. */
export async function addNetns(names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  await run("ip", ["-batch", "-"], {
    stdin: names.map((n) => `netns add ${n}\n`).join(""),
  });
}

/** Deletes named network namespaces that exist; ignores the ones that don't. */
export async function deleteNetns(names: readonly string[]): Promise<void> {
  const existing = new Set(await listNetns());
  const doomed = names.filter((n) => existing.has(n));
  if (doomed.length === 0) return;
  await run("ip", ["-force", "-batch", "-"], {
    stdin: doomed.map((n) => `netns del ${n}\n`).join(""),
    allowFail: true,
  });
}

/** Names of all named network namespaces. */
export async function listNetns(): Promise<string[]> {
  const out = await run("ip", ["netns", "list"], { allowFail: true });
  return out.stdout.split("\n").map((l) => l.split(" ")[0]).filter(Boolean);
}

/** Names of all links in the host netns. */
export async function listLinks(): Promise<string[]> {
  const out = await run("ip", ["-j", "link", "show"]);
  return (JSON.parse(out.stdout) as { ifname: string }[]).map((l) => l.ifname);
}

/** Names of the links enslaved to `bridge` (its ports). */
export async function bridgePorts(bridge: string): Promise<string[]> {
  const out = await run("ip", ["-j", "link", "show", "master", bridge], {
    allowFail: true,
  });
  if (out.code !== 0 || out.stdout.trim() === "") return [];
  return (JSON.parse(out.stdout) as { ifname: string }[]).map((l) => l.ifname);
}

/** Deletes a link if it exists. */
export async function deleteLink(name: string): Promise<void> {
  await run("ip", ["link", "del", name], { allowFail: true });
}

/** IPv4 addresses (`a.b.c.d/len`) on `ifname` inside netns `ns`. */
export async function netnsAddresses(
  ns: string,
  ifname: string,
): Promise<string[] | undefined> {
  const out = await run("ip", ["-n", ns, "-4", "-j", "addr", "show", "dev", ifname], {
    allowFail: true,
  });
  if (out.code !== 0) return undefined;
  const links = JSON.parse(out.stdout || "[]") as {
    addr_info?: { local: string; prefixlen: number }[];
  }[];
  return links.flatMap((l) => (l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`));
}

/** Whether `ifname` exists inside netns `ns`. */
export async function netnsHasLink(ns: string, ifname: string): Promise<boolean> {
  const out = await run("ip", ["-n", ns, "link", "show", "dev", ifname], {
    allowFail: true,
  });
  return out.code === 0;
}

/** Whether one ping from netns `ns` to `ip` is answered. */
export async function ping(ns: string, ip: string): Promise<boolean> {
  const out = await run(
    "ip",
    ["netns", "exec", ns, "ping", "-c", "1", "-W", "2", "-q", ip],
    { allowFail: true },
  );
  return out.code === 0;
}

/** Parses `a.b.c.d` into a 32-bit number. */
export function ipToInt(ip: string): number {
  return ip.split(".").reduce((acc, octet) => acc * 256 + Number(octet), 0);
}

/** Formats a 32-bit number as `a.b.c.d`. */
export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
}

/** Whether `ip` lies inside `cidr`. */
export function inSubnet(ip: string, cidr: string): boolean {
  const [base, len] = cidr.split("/");
  const size = 2 ** (32 - Number(len));
  const start = ipToInt(base);
  const n = ipToInt(ip);
  return n >= start && n < start + size;
}

/** The smallest prefix length whose subnet holds `hosts` plus gateway. */
export function prefixFor(hosts: number): number {
  // network + broadcast + gateway, and keep at least a /24 like a node CIDR.
  let len = 24;
  while (2 ** (32 - len) - 3 < hosts) len--;
  return len;
}

/**
 * Hands out IPv4 subnets of one size from 10.128.0.0/9 that overlap no
 * route or address on the host, starting at a random block so parallel runs
 * rarely collide.
 */
export class SubnetAllocator {
  #used: [number, number][] = [];
  #next: number;
  readonly prefix: number;

  private constructor(prefix: number, taken: [number, number][]) {
    this.prefix = prefix;
    this.#used = taken;
    const blocks = 2 ** (23 - (32 - prefix));
    this.#next = Math.floor(Math.random() * blocks);
  }

  /** Reads the host's routes and addresses and returns an allocator. */
  static async create(prefix: number): Promise<SubnetAllocator> {
    const taken: [number, number][] = [];
    const out = await run("ip", ["-4", "-j", "route", "show", "table", "all"], {
      allowFail: true,
    });
    for (const r of JSON.parse(out.stdout || "[]") as { dst: string }[]) {
      if (!/^\d/.test(r.dst)) continue;
      const [base, len = "32"] = r.dst.split("/");
      const start = ipToInt(base);
      taken.push([start, start + 2 ** (32 - Number(len))]);
    }
    return new SubnetAllocator(prefix, taken);
  }

  /** The next free subnet as `a.b.c.d/len`. */
  allocate(): string {
    const size = 2 ** (32 - this.prefix);
    const base = ipToInt("10.128.0.0");
    const blocks = 2 ** 23 / size;
    for (let tries = 0; tries < blocks; tries++) {
      const start = base + ((this.#next++ % blocks) * size);
      const end = start + size;
      if (this.#used.some(([s, e]) => start < e && s < end)) continue;
      this.#used.push([start, end]);
      return `${intToIp(start)}/${this.prefix}`;
    }
    throw new Error("no free subnet in 10.128.0.0/9");
  }
}

/** A line of `nft -a list ruleset` with where it sits. */
export interface RulesetLine {
  family: string;
  table: string;
  chain?: string;
  set?: string;
  /** Rule handle, for rule lines. */
  handle?: number;
  text: string;
}

/** Reads the whole nftables ruleset (iptables-nft rules included). */
export async function readRuleset(): Promise<RulesetLine[]> {
  const out = await run("nft", ["-a", "list", "ruleset"], { allowFail: true });
  const lines: RulesetLine[] = [];
  let family = "";
  let table = "";
  let chain: string | undefined;
  let set: string | undefined;
  for (const raw of out.stdout.split("\n")) {
    const text = raw.trim();
    let m;
    if ((m = /^table (\S+) (\S+) \{/.exec(text))) {
      [family, table, chain, set] = [m[1], m[2], undefined, undefined];
      lines.push({ family, table, text });
    } else if ((m = /^chain (\S+) \{/.exec(text))) {
      [chain, set] = [m[1], undefined];
      lines.push({ family, table, chain, text });
    } else if ((m = /^(?:set|map) (\S+) \{/.exec(text))) {
      [chain, set] = [undefined, m[1]];
      lines.push({ family, table, set, text });
    } else if (text === "}" || text === "") {
      continue;
    } else if (table) {
      const h = /# handle (\d+)$/.exec(text);
      lines.push({
        family,
        table,
        chain,
        set,
        handle: chain && h ? Number(h[1]) : undefined,
        text,
      });
    }
  }
  return lines;
}

/** What identifies one network's objects in the firewall. */
export interface Markers {
  /** Plain substrings: network name, bridge, subnet, container ids. */
  words: string[];
  /** Pod IPv4 addresses (matched as whole addresses). */
  ips: string[];
  /** Per-pod object names the plugin is known to create. */
  names: string[];
}

function ipPattern(ips: string[]): RegExp | undefined {
  if (ips.length === 0) return undefined;
  const alt = ips.map((ip) => ip.replaceAll(".", "\\.")).join("|");
  return new RegExp(`(?<![\\d.])(?:${alt})(?!\\d|\\.\\d)`);
}

/** The ruleset lines that mention any of `markers`. */
export function matchRuleset(
  lines: RulesetLine[],
  markers: Markers,
): RulesetLine[] {
  const ipRe = ipPattern(markers.ips);
  const words = [...markers.words, ...markers.names].filter(Boolean);
  return lines.filter((l) => words.some((w) => l.text.includes(w)) || (ipRe?.test(l.text) ?? false));
}

/**
 * Removes the firewall objects that belong to one network: rules that
 * mention it, chains/sets/tables named after it, and pod addresses in sets.
 * Tolerant: it removes what it can and returns what is still there.
 */
export async function removeFirewall(markers: Markers): Promise<RulesetLine[]> {
  const named = (name?: string) =>
    name !== undefined &&
    [...markers.words, ...markers.names].some((w) => w && name.includes(w));
  const lines = await readRuleset();
  const cmds: string[] = [];
  for (const l of matchRuleset(lines, markers)) {
    if (l.handle !== undefined && l.chain) {
      cmds.push(`delete rule ${l.family} ${l.table} ${l.chain} handle ${l.handle}`);
    }
  }
  const ipRe = ipPattern(markers.ips);
  const seen = new Set<string>();
  for (const l of lines) {
    const key = `${l.family} ${l.table}`;
    if (l.chain && !l.handle && named(l.chain) && !seen.has(key + l.chain)) {
      seen.add(key + l.chain);
      cmds.push(`flush chain ${key} ${l.chain}`, `delete chain ${key} ${l.chain}`);
    }
    if (l.set && named(l.set) && !seen.has(key + l.set)) {
      seen.add(key + l.set);
      cmds.push(`delete set ${key} ${l.set}`);
    }
    if (l.set && !named(l.set) && ipRe) {
      for (const ip of markers.ips) {
        if (ipPattern([ip])!.test(l.text)) {
          cmds.push(`delete element ${key} ${l.set} { ${ip} }`);
        }
      }
    }
    if (!l.chain && !l.set && l.text.startsWith("table") && named(l.table)) {
      cmds.push(`delete table ${key}`);
    }
  }
  // One command per nft call: a batch aborts as a whole on its first error,
  // and some of these may already be gone.
  for (const cmd of cmds) {
    await run("nft", cmd.split(" "), { allowFail: true });
  }
  return matchRuleset(await readRuleset(), markers);
}

/** Every file under `dir`, recursively, with its content (small files). */
export async function readTree(
  dir: string,
): Promise<{ path: string; content: string }[]> {
  const files: { path: string; content: string }[] = [];
  const walk = async (d: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(d));
    } catch {
      return;
    }
    for (const e of entries) {
      const path = `${d}/${e.name}`;
      if (e.isDirectory) await walk(path);
      else if (e.isFile) {
        const info = await Deno.stat(path);
        const content = info.size < 65536 ? await Deno.readTextFile(path).catch(() => "") : "";
        files.push({ path, content });
      }
    }
  };
  await walk(dir);
  return files;
}

/**
 * IPAM records under `dataDir` that still name one of the pods: a file
 * named after a pod address, or a file whose name or content holds a pod's
 * container id.
 */
export async function ipamLeftovers(
  dataDir: string,
  pods: { id: string; ip?: string }[],
): Promise<string[]> {
  const files = await readTree(dataDir);
  const ips = new Set(pods.map((p) => p.ip).filter((ip) => ip !== undefined));
  const found: string[] = [];
  for (const f of files) {
    const base = f.path.slice(f.path.lastIndexOf("/") + 1);
    if (ips.has(base)) {
      found.push(f.path);
      continue;
    }
    const owner = pods.find((p) => base.includes(p.id) || f.content.includes(p.id));
    if (owner) found.push(f.path);
  }
  return found;
}

/** Where Pontoon keeps its per-node markers and node locks (`lib/nodestate.ts`). */
export const PONTOON_STATE_DIR = "/run/pontoon/state";

/**
 * Pontoon's marker and lock files for one bridge and one network name
 * (`<netns inode>-bridge-<bridge>`, `<netns inode>-masq-<network>`, each
 * with a `.lock` beside it).
 */
export async function nodeStateFiles(bridge: string, network: string): Promise<string[]> {
  const wanted = [`-bridge-${bridge}`, `-masq-${network}`];
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(PONTOON_STATE_DIR)) {
      const base = e.name.replace(/\.lock$/, "");
      if (wanted.some((w) => base.endsWith(w) && /^\d+$/.test(base.slice(0, base.length - w.length)))) {
        out.push(`${PONTOON_STATE_DIR}/${e.name}`);
      }
    }
  } catch {
    // No state directory: nothing to list.
  }
  return out;
}

/** Every Pontoon state file naming something of run `runId`. */
export async function runStateFiles(runId: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(PONTOON_STATE_DIR)) {
      if (e.name.includes(`-bridge-pb${runId}`) || e.name.includes(`-masq-pbench-${runId}-`)) {
        out.push(`${PONTOON_STATE_DIR}/${e.name}`);
      }
    }
  } catch {
    // No state directory.
  }
  return out;
}
