/**
 * `pontoon install`: puts the running program into a CNI bin dir so that
 * a runtime never execs a half-written file, and (without an agent)
 * writes the conflist from flags.
 *
 * Two shapes of program:
 * - the compiled binary (`make compile`, the release artifact and the
 *   container image): one file, copied to `BIN/.pontoon.tmp-PID`, fsynced,
 *   renamed to `BIN/pontoon`;
 * - the bundle (`make build`: launcher + `lib/*.js` + the `deno` runtime):
 *   the whole set is copied into `BIN/.pontoon/<content hash>/` (built under
 *   a temporary name, then renamed), and `BIN/pontoon` becomes a symlink
 *   to its launcher, replaced by rename. The launcher resolves symlinks to
 *   find its runtime. The previous set is kept (a runtime may be starting
 *   it right now); older ones are removed.
 *
 * @module
 */
import { type Cidr, formatCidr } from "./addr.ts";
import {
  buildConflist,
  CONFLIST_FILE,
  type CONFLIST_VERSIONS,
  hasPlugin,
  renderConflist,
  writeConflistIfChanged,
} from "./conflist.ts";
import { clusterMasqueradeScript, ensureClusterMasquerade } from "./firewall.ts";

/** The file name runtimes exec (the conflist's `type`). */
export const PLUGIN_NAME = "pontoon";
/** Where bundle sets live inside the bin dir. */
export const BUNDLE_DIR = ".pontoon";

/** The flock serializing bundle installs, inside `BUNDLE_DIR`. */
const LOCK_FILE = ".lock";

/** What the running program is made of. */
export type ProgramShape =
  | { kind: "binary"; path: string }
  | { kind: "bundle"; root: string; files: string[] };

/** The shape of the running program, from the runtime's path and the main module. */
export function detectProgram(execPath = Deno.execPath(), mainModule = Deno.mainModule): ProgramShape {
  const main = mainModule.startsWith("file://") ? decodeURIComponent(new URL(mainModule).pathname) : "";
  const root = execPath.slice(0, execPath.lastIndexOf("/"));
  if (execPath.endsWith("/deno") && main === `${root}/lib/main.js`) {
    const files = [
      "pontoon",
      "deno",
      ...[...Deno.readDirSync(`${root}/lib`)]
        .filter((e) => e.isFile && e.name.endsWith(".js"))
        .map((e) => `lib/${e.name}`)
        .sort(),
    ];
    return { kind: "bundle", root, files };
  }
  if (execPath.endsWith("/deno")) {
    throw new Error("pontoon install runs from the bundle (dist/pontoon) or the compiled binary, not from sources");
  }
  return { kind: "binary", path: execPath };
}

function syncPath(path: string): void {
  const f = Deno.openSync(path, { read: true });
  try {
    f.syncSync();
  } finally {
    f.close();
  }
}

function copyFileSynced(from: string, to: string, mode: number): void {
  Deno.copyFileSync(from, to);
  Deno.chmodSync(to, mode);
  syncPath(to);
}

async function contentTag(shape: Extract<ProgramShape, { kind: "bundle" }>): Promise<string> {
  const parts: string[] = [];
  for (const file of shape.files) {
    if (file === "deno") {
      const info = Deno.statSync(`${shape.root}/deno`);
      parts.push(`deno:${info.size}:${info.mtime?.getTime() ?? 0}`);
    } else {
      const digest = await crypto.subtle.digest("SHA-256", Deno.readFileSync(`${shape.root}/${file}`));
      parts.push(`${file}:${Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("")}`);
    }
  }
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(parts.join("\n")));
  return Array.from(new Uint8Array(digest).subarray(0, 6), (b) => b.toString(16).padStart(2, "0")).join("");
}

function removeQuietly(path: string): void {
  try {
    Deno.removeSync(path, { recursive: true });
  } catch { /* already gone */ }
}

/** Replaces `BIN/pontoon` by `tmp` (a file or symlink) in one rename. */
function publish(binDir: string, tmp: string): void {
  try {
    Deno.renameSync(tmp, `${binDir}/${PLUGIN_NAME}`);
  } catch (err) {
    removeQuietly(tmp);
    throw err;
  }
  syncPath(binDir);
}

/** What an install did. */
export interface InstallOutcome {
  /** `BIN/pontoon`. */
  path: string;
  /** "binary" or "bundle". */
  kind: ProgramShape["kind"];
  /** For a bundle: the set's folder. */
  target?: string;
  /** False when the same program was already installed. */
  changed: boolean;
}

/** Installs `shape` into `binDir` atomically. */
export async function installProgram(binDir: string, shape: ProgramShape): Promise<InstallOutcome> {
  Deno.mkdirSync(binDir, { recursive: true, mode: 0o755 });
  const dest = `${binDir}/${PLUGIN_NAME}`;
  if (shape.kind === "binary") {
    const tmp = `${binDir}/.${PLUGIN_NAME}.tmp-${Deno.pid}`;
    copyFileSynced(shape.path, tmp, 0o755);
    publish(binDir, tmp);
    return { path: dest, kind: "binary", changed: true };
  }
  const sets = `${binDir}/${BUNDLE_DIR}`;
  Deno.mkdirSync(sets, { recursive: true, mode: 0o755 });
  const tag = await contentTag(shape);
  // Installs at once (an init container and an operator, say) would remove
  // each other's staging and sets: one at a time, under a flock.
  const lock = Deno.openSync(`${sets}/${LOCK_FILE}`, { read: true, write: true, create: true, mode: 0o600 });
  try {
    lock.lockSync(true);
    return installBundle(binDir, sets, tag, shape);
  } finally {
    lock.close();
  }
}

function installBundle(
  binDir: string,
  sets: string,
  tag: string,
  shape: Extract<ProgramShape, { kind: "bundle" }>,
): InstallOutcome {
  const dest = `${binDir}/${PLUGIN_NAME}`;
  const target = `${sets}/${tag}`;
  let current: string | null = null;
  try {
    current = Deno.readLinkSync(dest);
  } catch { /* absent or not a symlink */ }
  const wanted = `${BUNDLE_DIR}/${tag}/${PLUGIN_NAME}`;
  let exists = false;
  try {
    exists = Deno.statSync(`${target}/${PLUGIN_NAME}`).isFile;
  } catch { /* not yet */ }
  if (exists && current === wanted) return { path: dest, kind: "bundle", target, changed: false };
  if (!exists) {
    const staging = `${sets}/.tmp-${tag}-${Deno.pid}`;
    removeQuietly(staging);
    Deno.mkdirSync(`${staging}/lib`, { recursive: true, mode: 0o755 });
    try {
      for (const file of shape.files) {
        copyFileSynced(`${shape.root}/${file}`, `${staging}/${file}`, file.endsWith(".js") ? 0o644 : 0o755);
      }
      syncPath(`${staging}/lib`);
      syncPath(staging);
      removeQuietly(target);
      Deno.renameSync(staging, target);
      syncPath(sets);
    } catch (err) {
      removeQuietly(staging);
      throw err;
    }
  }
  const link = `${binDir}/.${PLUGIN_NAME}.link-${Deno.pid}`;
  removeQuietly(link);
  Deno.symlinkSync(wanted, link);
  publish(binDir, link);
  pruneSets(sets, tag, current);
  return { path: dest, kind: "bundle", target, changed: true };
}

/** Removes bundle sets other than the installed one and the one it replaced. */
function pruneSets(sets: string, keepTag: string, previousLink: string | null): void {
  const previous = previousLink?.startsWith(`${BUNDLE_DIR}/`) ? previousLink.split("/")[1] : undefined;
  for (const entry of Deno.readDirSync(sets)) {
    if (entry.name === keepTag || entry.name === previous || entry.name === LOCK_FILE) continue;
    removeQuietly(`${sets}/${entry.name}`);
  }
}

/** Flags of `pontoon install` that shape the conflist. */
export interface StandaloneNetwork {
  podCidrs: Cidr[];
  clusterCidrs: Cidr[];
  cniConfDir: string;
  cniBinDir: string;
  ipamDataDir: string;
  bridge: string;
  mtu?: number;
  /** The conflist's `cniVersion` (default: `CONFLIST_VERSION`, 1.1.0). */
  conflistVersion?: (typeof CONFLIST_VERSIONS)[number];
}

/**
 * The conflist for a node without an agent. Without `--cluster-cidr` the
 * plugin masquerades egress leaving the pod CIDR itself (`ipMasq`); with it,
 * the cluster masquerade table is installed once (like the agent does),
 * so pod-to-pod traffic across nodes is not NATed.
 */
export function standaloneConflist(net: StandaloneNetwork): Record<string, unknown> {
  const doc = buildConflist({
    podCidrs: net.podCidrs,
    ipamDataDir: net.ipamDataDir,
    bridge: net.bridge,
    mtu: net.mtu,
    portmap: hasPlugin(net.cniBinDir, "portmap"),
    cniVersion: net.conflistVersion,
  });
  const plugins = doc.plugins as Record<string, unknown>[];
  plugins[0].ipMasq = net.clusterCidrs.length === 0;
  return doc;
}

/** Writes the standalone conflist (and the cluster masquerade table when asked); true when the file changed. */
export async function writeStandaloneNetwork(net: StandaloneNetwork): Promise<{ path: string; changed: boolean }> {
  if (net.clusterCidrs.length > 0) {
    await ensureClusterMasquerade(clusterMasqueradeScript(net.podCidrs, net.clusterCidrs));
  }
  const changed = writeConflistIfChanged(net.cniConfDir, renderConflist(standaloneConflist(net)));
  return { path: `${net.cniConfDir}/${CONFLIST_FILE}`, changed };
}

/** A one-line description of the network for logs. */
export function describeNetwork(net: StandaloneNetwork): string {
  return `pod CIDRs ${net.podCidrs.map(formatCidr).join(", ")} on bridge ${net.bridge}`;
}
