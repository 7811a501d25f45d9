/**
 * Test harness: runs the built plugin (`dist/pontoon`) through the CNI
 * protocol on real network namespaces, and snapshots the node state a test
 * must leave unchanged.
 *
 * @module
 */
import assert from "node:assert/strict";

/** The plugin under test, as a runtime would exec it. */
export const PLUGIN = new URL("../dist/pontoon", import.meta.url).pathname;
/** Where the reference plugins live (Debian's containernetworking-plugins). */
export const REFERENCE_DIR = "/usr/lib/cni";

/** The `ip` binary (CI's PATH may lack the sbin directories). */
export const IP = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}) ?? "ip";

const decoder = new TextDecoder();
let counter = 0;

/** A short unique name (≤ 15 bytes with the prefix) for links and netns. */
export function uniq(prefix: string): string {
  counter++;
  const tag = `${(Deno.pid % 1296).toString(36)}${(Date.now() % 46656).toString(36)}${counter.toString(36)}`;
  return `${prefix}${tag}`.slice(0, 15);
}

/** Runs a command; returns code, stdout, stderr. Never throws on failure. */
export async function sh(cmd: string, args: string[], options: { stdin?: string; env?: Record<string, string> } = {}) {
  const child = new Deno.Command(cmd, {
    args,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
  }).spawn();
  if (options.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(options.stdin));
    await w.close();
  }
  const out = await child.output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** Runs a command and throws when it fails. */
export async function must(cmd: string, args: string[]): Promise<string> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** Creates named network namespaces; returns their paths. */
export async function addNetns(...names: string[]): Promise<string[]> {
  for (const n of names) await must("ip", ["netns", "add", n]);
  return names.map((n) => `/run/netns/${n}`);
}

/** Deletes network namespaces, ignoring ones already gone. */
export async function delNetns(...names: string[]): Promise<void> {
  for (const n of names) await sh("ip", ["netns", "del", n]);
}

/** Deletes links, ignoring ones already gone. */
export async function delLinks(...names: string[]): Promise<void> {
  for (const n of names) await sh("ip", ["link", "del", n]);
}

/** Deletes nft tables (`inet NAME`), ignoring absent ones. */
export async function delNftTables(...names: string[]): Promise<void> {
  for (const n of names) await sh("nft", ["delete", "table", "inet", n]);
}

/** One plugin invocation. */
export interface CniCall {
  command: string;
  conf: Record<string, unknown>;
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  path?: string;
  /** Extra or overriding env vars; a value of undefined removes the var. */
  env?: Record<string, string | undefined>;
  /** Send this text on stdin instead of the JSON of `conf`. */
  rawStdin?: string;
  /** Binary to run; defaults to the plugin under test. */
  binary?: string;
  /** Run the plugin inside this named netns (`ip netns exec`), as if it were the node. */
  nodeNetns?: string;
  /** Kill the plugin after this many ms (a hang then shows as a failed call, not a stuck test). */
  timeoutMs?: number;
}

/** What an invocation produced. */
export interface CniOutput {
  code: number;
  stdout: string;
  stderr: string;
  // deno-lint-ignore no-explicit-any
  json: any;
}

/** Runs the plugin with the CNI environment and config on stdin. */
export async function cni(call: CniCall): Promise<CniOutput> {
  const env: Record<string, string | undefined> = {
    CNI_COMMAND: call.command,
    CNI_CONTAINERID: call.containerId,
    CNI_NETNS: call.netns,
    CNI_IFNAME: call.ifname ?? (call.containerId ? "eth0" : undefined),
    CNI_ARGS: call.args,
    CNI_PATH: call.path ?? REFERENCE_DIR,
    ...call.env,
  };
  const clean: Record<string, string> = { PATH: Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
  for (const [k, v] of Object.entries(env)) if (v !== undefined) clean[k] = v;
  const binary = call.binary ?? PLUGIN;
  const child = new Deno.Command(call.nodeNetns ? IP : binary, {
    args: call.nodeNetns ? ["netns", "exec", call.nodeNetns, binary] : [],
    env: clean,
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = call.timeoutMs === undefined ? undefined : setTimeout(() => child.kill("SIGKILL"), call.timeoutMs);
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(call.rawStdin ?? JSON.stringify(call.conf)));
  await w.close();
  const out = await child.output();
  clearTimeout(timer);
  const stdout = decoder.decode(out.stdout);
  let json = null;
  try {
    json = stdout.trim() === "" ? null : JSON.parse(stdout);
  } catch { /* the test decides whether that matters */ }
  return { code: out.code, stdout, stderr: decoder.decode(out.stderr), json };
}

/** Asserts an invocation succeeded, showing its output when not. */
export function assertOk(out: CniOutput, what = "plugin call"): void {
  assert.equal(out.code, 0, `${what} failed: ${out.stdout} ${out.stderr}`);
}

/** Asserts an invocation failed with `code` and a details text matching `pattern`. */
export function assertCniError(out: CniOutput, code: number, pattern?: RegExp): void {
  assert.notEqual(out.code, 0, `expected error ${code}, got success: ${out.stdout}`);
  assert.ok(out.json, `error output is not JSON: ${out.stdout} / ${out.stderr}`);
  assert.equal(out.json.code, code, `expected code ${code}: ${out.stdout}`);
  assert.equal(typeof out.json.msg, "string");
  if (pattern) assert.match(String(out.json.details), pattern);
}

/** A test network: unique name, bridge, data dir and a builtin-IPAM config. */
export interface TestNet {
  name: string;
  bridge: string;
  dataDir: string;
  conf(version?: string, extra?: Record<string, unknown>): Record<string, unknown>;
  /** Removes the bridge, the data dir and the masquerade table. */
  cleanup(): Promise<void>;
}

let subnetCounter = 0;

/** Makes a test network with an IPv4 (and optionally IPv6) range. */
export function testNet(options: { v6?: boolean; subnet?: string; ipam?: Record<string, unknown> } = {}): TestNet {
  const name = uniq("tn");
  const bridge = uniq("tb");
  const dataDir = Deno.makeTempDirSync({ prefix: "pontoon-ipam-" });
  subnetCounter++;
  const third = (Deno.pid + subnetCounter * 7) % 250;
  const subnet = options.subnet ?? `10.${200 + (subnetCounter % 50)}.${third}.0/24`;
  const ranges: unknown[] = [[{ subnet }]];
  if (options.v6) ranges.push([{ subnet: `fd5e:${third.toString(16)}:${subnetCounter.toString(16)}::/64` }]);
  return {
    name,
    bridge,
    dataDir,
    conf(version = "1.1.0", extra = {}) {
      return {
        cniVersion: version,
        name,
        type: "pontoon",
        bridge,
        isDefaultGateway: true,
        ipam: options.ipam ?? { type: "pontoon-ipam", ranges, dataDir },
        ...extra,
      };
    },
    async cleanup() {
      await delLinks(bridge);
      await delNftTables(`pontoon-${name}`);
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
      removeMarkers(bridge, name);
    },
  };
}

const STATE_DIR = "/run/pontoon/state";

/**
 * Removes Pontoon's per-node markers (/run/pontoon/state) for a bridge and
 * a network, in every node namespace, with their lock and temporary files.
 */
export function removeMarkers(bridge: string, network: string): void {
  const dir = STATE_DIR;
  const ours = (n: string, kind: string, name: string) => {
    const i = n.indexOf(`-${kind}-${name}`);
    const rest = i < 0 ? undefined : n.slice(i + kind.length + name.length + 2);
    return rest === "" || rest === ".lock" || rest?.startsWith(".tmp-");
  };
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (ours(e.name, "bridge", bridge) || ours(e.name, "masq", network)) {
        try {
          Deno.removeSync(`${dir}/${e.name}`);
        } catch { /* raced */ }
      }
    }
  } catch { /* no state dir */ }
}

/**
 * Removes every marker the plugin made while running inside the named
 * netns (markers are keyed by the namespace's inode); call before deleting it.
 */
export function removeNamespaceMarkers(netns: string): void {
  try {
    const ino = Deno.statSync(`/run/netns/${netns}`).ino;
    for (const e of Deno.readDirSync(STATE_DIR)) {
      if (e.name.startsWith(`${ino}-`)) Deno.removeSync(`${STATE_DIR}/${e.name}`);
    }
  } catch { /* no netns or no markers */ }
}

/** Node state the plugin could have changed for a network. */
export interface NodeSnapshot {
  links: string[];
  addresses: string[];
  nftTables: string[];
  /** The rules of the network's masquerade table (empty when absent). */
  nftRules: string[];
  ipamFiles: string[];
  /** Links and addresses inside the named pod netns given to `snapshot`. */
  pods: string[];
}

function listTree(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (e.name === "lock") continue; // the lock file may stay; it holds nothing
      const rel = `${prefix}${e.name}`;
      if (e.isDirectory) out.push(`${rel}/`, ...listTree(`${dir}/${e.name}`, `${rel}/`));
      else out.push(rel);
    }
  } catch { /* absent */ }
  return out.sort();
}

/**
 * Snapshots what a plugin call may touch: the network's bridge and its
 * ports, their addresses, the network's nft table and its rules, the IPAM
 * store, and the links and addresses in the given pod netns.
 */
export async function snapshot(net: TestNet, pods: string[] = []): Promise<NodeSnapshot> {
  const links = JSON.parse(await must("ip", ["-j", "-d", "addr", "show"])) as {
    ifname: string;
    master?: string;
    addr_info?: { local: string; prefixlen: number }[];
  }[];
  const ours = links.filter((l) => l.ifname === net.bridge || l.master === net.bridge);
  // Only this network's table: other engineers' tests add and remove theirs meanwhile.
  const tables = (await must("nft", ["list", "tables"])).split("\n")
    .filter((l) => l.trim() === `table inet pontoon-${net.name}`);
  const rules = await sh("nft", ["list", "table", "inet", `pontoon-${net.name}`]);
  const podState: string[] = [];
  for (const pod of pods) {
    const podLinks = JSON.parse(await must("ip", ["-n", pod, "-j", "addr", "show"])) as typeof links;
    for (const l of podLinks) {
      podState.push(
        `${pod} ${l.ifname}`,
        ...(l.addr_info ?? []).map((a) => `${pod} ${l.ifname} ${a.local}/${a.prefixlen}`),
      );
    }
  }
  return {
    links: ours.map((l) => l.ifname).sort(),
    addresses: ours.flatMap((l) => (l.addr_info ?? []).map((a) => `${l.ifname} ${a.local}/${a.prefixlen}`)).sort(),
    nftTables: tables.sort(),
    nftRules: rules.code === 0 ? rules.stdout.split("\n").map((l) => l.trim()).filter((l) => l !== "") : [],
    ipamFiles: listTree(net.dataDir),
    pods: podState.sort(),
  };
}

/** Pings `address` from inside netns `name` (one packet, 2 s timeout). */
export async function ping(name: string, address: string): Promise<boolean> {
  const r = await sh("ip", ["netns", "exec", name, "ping", "-c", "1", "-W", "2", address]);
  return r.code === 0;
}

/** The address part of a result address (`10.1.2.3/24` → `10.1.2.3`). */
export function hostPart(cidr: string): string {
  return cidr.slice(0, cidr.indexOf("/"));
}
