/**
 * The network config list kubelet reads (`10-pontoon.conflist`): built as
 * data from the node's pod CIDRs, written atomically, and rewritten only
 * when its content would change (the runtime reloads on every write).
 *
 * Used by the agent and, later, by `pontoon install`.
 *
 * @module
 */
import { type Cidr, formatCidr } from "./addr.ts";

/** The conflist's file name (sorted first among typical CNI configs). */
export const CONFLIST_FILE = "10-pontoon.conflist";
/** The CNI network's name. */
export const NETWORK_NAME = "pontoon";
/** The spec version the conflist declares by default. */
export const CONFLIST_VERSION = "1.1.0";
/**
 * Versions the agent may declare. 1.0.0 is for runtimes whose libcni
 * predates CNI 1.1 (libcni < 1.2, e.g. containerd 1.7), which refuse a
 * 1.1.0 list; they never send STATUS or GC anyway.
 */
export const CONFLIST_VERSIONS = ["1.0.0", "1.1.0"] as const;

/** What goes into the conflist. */
export interface ConflistOptions {
  /** The node's pod CIDRs (one per family; IPv4 first is conventional). */
  podCidrs: Cidr[];
  /** The IPAM store's directory. */
  ipamDataDir: string;
  /** The agent's unix socket; the plugin asks it whether the node is ready. */
  agentSocket?: string;
  /** Bridge name; default "pontoon0". */
  bridge?: string;
  /** Pod MTU; default: the plugin uses the default route's MTU. */
  mtu?: number;
  /** Chain the reference `portmap` plugin (when it is in the CNI bin dir). */
  portmap?: boolean;
  /** The declared `cniVersion`; default {@link CONFLIST_VERSION}. */
  cniVersion?: (typeof CONFLIST_VERSIONS)[number];
}

/**
 * The conflist as a plain object: Pontoon first, `portmap` chained when
 * asked for. Pod CIDRs are ordered IPv4 first so results are stable.
 *
 * @example
 * ```ts
 * const doc = buildConflist({ podCidrs: [parseCidr("10.42.3.0/24")!], ipamDataDir: "/var/lib/cni/networks" });
 * ```
 */
export function buildConflist(options: ConflistOptions): Record<string, unknown> {
  const cidrs = [...options.podCidrs].sort((a, b) => a.family - b.family);
  const pontoon: Record<string, unknown> = {
    type: "pontoon",
    bridge: options.bridge ?? "pontoon0",
    isGateway: true,
    isDefaultGateway: true,
    // The agent keeps one cluster-wide masquerade table (egress leaving the
    // cluster CIDR is NATed, pod-to-pod across nodes is not). The plugin's
    // per-network table would masquerade everything leaving this node's pod
    // CIDR, including traffic to other nodes' pods, so it stays off here.
    ipMasq: false,
    hairpinMode: true,
  };
  if (options.mtu !== undefined) pontoon.mtu = options.mtu;
  if (options.agentSocket !== undefined) pontoon.agentSocket = options.agentSocket;
  pontoon.ipam = {
    type: "pontoon-ipam",
    ranges: cidrs.map((c) => [{ subnet: formatCidr(c) }]),
    dataDir: options.ipamDataDir,
  };
  const plugins: Record<string, unknown>[] = [pontoon];
  if (options.portmap) plugins.push({ type: "portmap", capabilities: { portMappings: true }, snat: true });
  return { cniVersion: options.cniVersion ?? CONFLIST_VERSION, name: NETWORK_NAME, plugins };
}

/** The file text for a conflist object (stable formatting, final newline). */
export function renderConflist(doc: Record<string, unknown>): string {
  return JSON.stringify(doc, null, 2) + "\n";
}

/** True when an executable file `name` is in `binDir`. */
export function hasPlugin(binDir: string, name: string): boolean {
  try {
    const info = Deno.statSync(`${binDir}/${name}`);
    return info.isFile && ((info.mode ?? 0o755) & 0o111) !== 0;
  } catch {
    return false;
  }
}

/**
 * Writes `text` to `dir/CONFLIST_FILE` unless it already holds exactly
 * that. Atomic: temporary file, fsync, rename, fsync of the folder.
 * Returns true when the file was written.
 */
export function writeConflistIfChanged(dir: string, text: string): boolean {
  const path = `${dir}/${CONFLIST_FILE}`;
  try {
    if (Deno.readTextFileSync(path) === text) return false;
  } catch { /* absent or unreadable: write it */ }
  Deno.mkdirSync(dir, { recursive: true, mode: 0o755 });
  // A dot name: runtimes load only *.conf, *.conflist and *.json.
  const tmp = `${dir}/.${CONFLIST_FILE}.tmp-${Deno.pid}`;
  const file = Deno.openSync(tmp, { write: true, create: true, truncate: true, mode: 0o644 });
  try {
    const bytes = new TextEncoder().encode(text);
    for (let done = 0; done < bytes.length;) done += file.writeSync(bytes.subarray(done));
    file.syncSync();
  } finally {
    file.close();
  }
  try {
    Deno.renameSync(tmp, path);
  } catch (err) {
    try {
      Deno.removeSync(tmp);
    } catch { /* nothing to clean */ }
    throw err;
  }
  const folder = Deno.openSync(dir, { read: true });
  try {
    folder.syncSync();
  } finally {
    folder.close();
  }
  return true;
}
