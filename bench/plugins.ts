/**
 * The plugins under test and the one way the bench talks to them: exec the
 * binary with the CNI environment and the request config on stdin, exactly
 * as a runtime would (no libcni in between, so nothing but the plugin is
 * timed).
 *
 * @module
 */

/** What a network under test looks like; both plugins get the same shape. */
export interface NetworkSpec {
  /** Network name (`name` in the conflist), unique per run. */
  name: string;
  /** Bridge device name, at most 15 bytes. */
  bridge: string;
  /** IPv4 pod subnet, e.g. `10.201.7.0/24`. */
  subnet: string;
  /** Whether pod egress is masqueraded (`ipMasq`). */
  ipMasq: boolean;
  /** Private IPAM data directory for this network. */
  dataDir: string;
}

/** A CNI network configuration list as a runtime reads it from disk. */
export interface Conflist {
  cniVersion: string;
  name: string;
  plugins: Record<string, unknown>[];
}

/** A plugin the bench can drive: where it lives and how to configure it. */
export interface Plugin {
  /** Slot name shown in the table: `pontoon` or `reference`. */
  name: string;
  /** Human description (binary path, version notes). */
  label: string;
  /** Directory holding the plugin and its IPAM plugin; also `CNI_PATH`. */
  binDir: string;
  /** Executable name of the main plugin inside `binDir` (the CNI `type`). */
  type: string;
  /** Whether the plugin implements STATUS (CNI 1.1.0). */
  supportsStatus: boolean;
  /** Builds the conflist for a network. */
  conflist(spec: NetworkSpec): Conflist;
  /**
   * Names of per-pod firewall objects the plugin creates (e.g. the
   * reference's `CNI-<hash>` nat chains), so the bench can prove they are
   * gone after DEL and remove them if a run is interrupted.
   */
  podFirewallNames(spec: NetworkSpec, containerId: string): Promise<string[]>;
}

/** Directory of Debian's containernetworking-plugins. */
export const REFERENCE_DIR = "/usr/lib/cni";

/**
 * The reference: Go `bridge` + `host-local` from Debian's
 * containernetworking-plugins (1.1.1 supports CNI up to 1.0.0, so its
 * conflist says 1.0.0 and it has no STATUS verb).
 */
export function referencePlugin(
  options: { binDir?: string; name?: string } = {},
): Plugin {
  const binDir = options.binDir ?? REFERENCE_DIR;
  return {
    name: options.name ?? "reference",
    label: `${binDir}/bridge + host-local`,
    binDir,
    type: "bridge",
    supportsStatus: false,
    conflist: (spec) => ({
      cniVersion: "1.0.0",
      name: spec.name,
      plugins: [{
        type: "bridge",
        bridge: spec.bridge,
        isGateway: true,
        ipMasq: spec.ipMasq,
        ipam: {
          type: "host-local",
          ranges: [[{ subnet: spec.subnet }]],
          dataDir: spec.dataDir,
        },
      }],
    }),
    podFirewallNames: async (spec, containerId) =>
      spec.ipMasq ? [await referenceChainName(spec.name, containerId)] : [],
  };
}

/**
 * Pontoon as built by `make build`: the executable `dist/pontoon`, CNI type
 * `pontoon`, with its IPAM `pontoon-ipam`.
 */
export function pontoonPlugin(binPath: string): Plugin {
  const slash = binPath.lastIndexOf("/");
  return {
    name: "pontoon",
    label: binPath,
    binDir: slash >= 0 ? binPath.slice(0, slash) || "/" : ".",
    type: binPath.slice(slash + 1),
    supportsStatus: true,
    conflist: (spec) => ({
      cniVersion: "1.1.0",
      name: spec.name,
      plugins: [{
        type: "pontoon",
        bridge: spec.bridge,
        isGateway: true,
        ipMasq: spec.ipMasq,
        ipam: {
          type: "pontoon-ipam",
          ranges: [[{ subnet: spec.subnet }]],
          dataDir: spec.dataDir,
        },
      }],
    }),
    // Pontoon keeps no per-pod chains; its rules are found by the pod IPs,
    // container ids, subnet, bridge and network name instead.
    podFirewallNames: () => Promise.resolve([]),
  };
}

/**
 * The nat chain the reference bridge creates per pod for `ipMasq`:
 * `"CNI-" + hex(sha512(name + id))[:24]` (plugins' `utils.FormatChainName`).
 */
export async function referenceChainName(
  network: string,
  containerId: string,
): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-512",
    new TextEncoder().encode(network + containerId),
  );
  const hex = Array.from(
    new Uint8Array(digest),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  return ("CNI-" + hex).slice(0, 28);
}

/**
 * The request config a runtime derives from a single-plugin conflist for
 * one call (§3 of the spec): the plugin object with `cniVersion` and `name`
 * inserted, plus `prevResult` where the verb takes one.
 */
export function requestConfig(
  conflist: Conflist,
  prevResult?: unknown,
): Record<string, unknown> {
  const config: Record<string, unknown> = {
    cniVersion: conflist.cniVersion,
    name: conflist.name,
    ...conflist.plugins[0],
  };
  if (prevResult !== undefined) config.prevResult = prevResult;
  return config;
}

/** The CNI verbs the bench issues. */
export type CniCommand = "ADD" | "DEL" | "CHECK" | "STATUS" | "VERSION";

/** One plugin invocation. */
export interface CniCall {
  command: CniCommand;
  /** Request config written to stdin. */
  config: Record<string, unknown>;
  containerId?: string;
  /** Absolute netns path (`/var/run/netns/NAME`). */
  netns?: string;
  ifname?: string;
}

/** What one invocation produced. */
export interface CniOutcome {
  /** Exit status 0. */
  ok: boolean;
  exitCode: number;
  /** Wall time from spawn to exit, in milliseconds. */
  ms: number;
  stdout: string;
  stderr: string;
  /** Parsed stdout, when it is JSON. */
  json?: unknown;
  /** Peak RSS in KiB, when measured (`rss: true`). */
  maxRssKiB?: number;
}

/** Where GNU time lives (Debian package `time`). */
export const GNU_TIME = "/usr/bin/time";

/**
 * The environment a runtime would give the plugin: ours minus any stray
 * `CNI_*`, plus the call's CNI variables (only those the verb takes).
 */
export function cniEnvironment(
  plugin: Plugin,
  call: CniCall,
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(Deno.env.toObject())) {
    if (!key.startsWith("CNI_")) env[key] = value;
  }
  env.CNI_COMMAND = call.command;
  if (call.command === "VERSION") return env;
  env.CNI_PATH = plugin.binDir;
  if (call.command === "STATUS") return env;
  env.CNI_CONTAINERID = call.containerId ?? "";
  env.CNI_IFNAME = call.ifname ?? "eth0";
  env.CNI_NETNS = call.netns ?? "";
  return env;
}

/**
 * Runs the plugin once and times it from spawn to exit. With `rss`, the
 * plugin runs under GNU time and `maxRssKiB` is the peak RSS of the plugin
 * process (the kernel's wait4 figure, which also covers the IPAM plugin it
 * execs and waits for).
 */
export async function invokePlugin(
  plugin: Plugin,
  call: CniCall,
  options: { rss?: boolean } = {},
): Promise<CniOutcome> {
  const bin = `${plugin.binDir}/${plugin.type}`;
  const stdin = new TextEncoder().encode(JSON.stringify(call.config));
  let rssFile: string | undefined;
  let cmd = bin;
  let args: string[] = [];
  if (options.rss) {
    rssFile = await Deno.makeTempFile({ prefix: "pbench-rss-" });
    cmd = GNU_TIME;
    args = ["-f", "%M", "-o", rssFile, bin];
  }
  try {
    const start = performance.now();
    const child = new Deno.Command(cmd, {
      args,
      env: cniEnvironment(plugin, call),
      clearEnv: true,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    try {
      await writer.write(stdin);
      await writer.close();
    } catch {
      // A plugin that exits without reading stdin closes the pipe early;
      // its exit status tells the story.
    }
    const out = await child.output();
    const ms = performance.now() - start;
    const stdout = new TextDecoder().decode(out.stdout);
    const outcome: CniOutcome = {
      ok: out.code === 0,
      exitCode: out.code,
      ms,
      stdout,
      stderr: new TextDecoder().decode(out.stderr),
    };
    if (stdout.trim() !== "") {
      try {
        outcome.json = JSON.parse(stdout);
      } catch {
        // Left unparsed; callers check `json` where they need it.
      }
    }
    if (rssFile) {
      const text = (await Deno.readTextFile(rssFile)).trim().split("\n");
      const kib = Number(text[text.length - 1]);
      if (Number.isFinite(kib)) outcome.maxRssKiB = kib;
    }
    return outcome;
  } finally {
    if (rssFile) await Deno.remove(rssFile).catch(() => {});
  }
}

/** A short, single-line description of a failed call for reports. */
export function describeFailure(call: CniCall, outcome: CniOutcome): string {
  const detail = (outcome.stdout.trim() || outcome.stderr.trim())
    .replace(/\s+/g, " ")
    .slice(0, 300);
  return `${call.command} ${call.containerId ?? ""} exit ${outcome.exitCode}: ${detail}`;
}
