/**
 * The command line for people: `pontoon status`, `ipam ls`, `routes`,
 * `nodes`, `gc`, `install`, `version` and `agent`. Loaded only when
 * `CNI_COMMAND` is unset, so the plugin path never pays for it (nor for
 * `node:util`).
 *
 * Commands that read the node ask the agent over its unix socket; each
 * prints a table, or the API's JSON with `-o json`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { AgentUnreachableError, type ApiReply, apiRequest, DEFAULT_API_SOCKET } from "./apiclient.ts";
import { SUPPORTED_VERSIONS } from "./cni.ts";
import { CONFLIST_VERSION } from "./conflist.ts";
import { absolutePathFlag, bridgeFlag, cidrsFlag, conflistVersionFlag, mtuFlag, UsageError } from "./flags.ts";
import { VERSION } from "./version.ts";

export { VERSION };

const USAGE = `pontoon ${VERSION}: a CNI bridge plugin for Kubernetes nodes

As a CNI plugin, pontoon is run by the container runtime with CNI_COMMAND
set (ADD, DEL, CHECK, STATUS, GC, VERSION) and the network config on stdin.
CNI spec versions: ${SUPPORTED_VERSIONS.join(", ")}.

Usage:
  pontoon agent [flags]     the node agent (pod CIDRs from Kubernetes, conflist, routes, REST API)
  pontoon install [flags]   copy pontoon into the CNI bin dir; with --pod-cidr also write the conflist
  pontoon status            the node: pod CIDRs, bridge, sync state (exit 3 when not ready)
  pontoon ipam ls           addresses reserved on this node, with their pods
  pontoon routes            routes to other nodes' pod CIDRs kept by the agent
  pontoon nodes             nodes known from the Kubernetes API
  pontoon gc [--apply]      reservations whose netns and veth are gone (released with --apply)
  pontoon version           the version and supported CNI versions

Every command takes --help. Commands that ask the agent take
--api-socket PATH (default ${DEFAULT_API_SOCKET}) and -o table|json.
`;

/** Exit codes. */
const EXIT = { ok: 0, failed: 1, usage: 2, notReady: 3 } as const;

function out(text: string): void {
  Deno.stdout.writeSync(new TextEncoder().encode(text.endsWith("\n") ? text : text + "\n"));
}

function err(text: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(text.endsWith("\n") ? text : text + "\n"));
}

/** Renders rows as a left-aligned table with a header line. */
export function renderTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (c ?? "").padEnd(widths[i])).join("  ").trimEnd();
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}

const CLIENT_OPTIONS = {
  "api-socket": { type: "string", default: DEFAULT_API_SOCKET },
  output: { type: "string", short: "o", default: "table" },
  help: { type: "boolean", short: "h", default: false },
} as const;

interface ClientFlags {
  socket: string;
  json: boolean;
  help: boolean;
}

function parseClient(
  args: string[],
  extra: Record<string, { type: "boolean" | "string"; default?: boolean | string; short?: string }> = {},
): { flags: ClientFlags; values: Record<string, unknown> } {
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args, strict: true, allowPositionals: false, options: { ...CLIENT_OPTIONS, ...extra } }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const output = values.output as string;
  if (output !== "table" && output !== "json") throw new UsageError(`-o ${output}: use table or json`);
  const socket = values["api-socket"] as string;
  if (!socket.startsWith("/")) throw new UsageError(`--api-socket ${socket}: must be an absolute path`);
  return { flags: { socket, json: output === "json", help: values.help as boolean }, values };
}

function ask(flags: ClientFlags, method: string, path: string, body?: string): Promise<ApiReply> {
  return apiRequest(flags.socket, method, path, { body });
}

function bodyJson(reply: ApiReply): Record<string, unknown> {
  try {
    return JSON.parse(reply.body);
  } catch {
    throw new Error(`the agent answered HTTP ${reply.status} with no JSON`);
  }
}

/** Fails with the API's error message unless the reply is 2xx (or one of `also`). */
function expectOk(reply: ApiReply, also: number[] = []): Record<string, unknown> {
  const doc = bodyJson(reply);
  if ((reply.status >= 200 && reply.status < 300) || also.includes(reply.status)) return doc;
  const e = (doc.error ?? {}) as { code?: string; message?: string };
  throw new Error(`agent: ${e.message ?? `HTTP ${reply.status}`}${e.code ? ` (${e.code})` : ""}`);
}

function text(value: unknown): string {
  if (value === null || value === undefined || value === "") return "-";
  if (Array.isArray(value)) return value.length === 0 ? "-" : value.map(text).join(",");
  return String(value);
}

// ------------------------------------------------------------ commands

const STATUS_HELP = `Usage: pontoon status [--api-socket PATH] [-o table|json] [--live]

Shows this node as the agent sees it: pod CIDRs, bridge, MTU, conflist,
routes and whether it is synced. Exit status: 0 synced, 3 not synced,
1 agent not reachable. With --live only asks whether the agent process
answers (/healthz): the DaemonSet's liveness probe.
`;

async function cmdStatus(args: string[]): Promise<number> {
  const { flags, values } = parseClient(args, { live: { type: "boolean", default: false } });
  if (flags.help) return help(STATUS_HELP);
  if (values.live) {
    const doc = expectOk(await ask(flags, "GET", "/healthz"));
    out(flags.json ? JSON.stringify(doc, null, 2) : "agent is alive");
    return EXIT.ok;
  }
  const doc = expectOk(await ask(flags, "GET", "/v1/status"));
  if (flags.json) {
    out(JSON.stringify(doc, null, 2));
  } else {
    const rows: [string, unknown][] = [
      ["node", doc.node],
      ["ready", doc.ready ? "yes" : `no: ${doc.reason}`],
      ["pod CIDRs", doc.podCIDRs],
      ["cluster CIDRs", doc.clusterCIDRs],
      ["bridge", doc.bridge],
      ["MTU", doc.mtu],
      ["conflist", doc.conflist],
      ["routes", doc.routes],
      ["last sync", doc.lastSync],
      ["API error", doc.apiError],
      ["version", doc.version],
    ];
    const width = Math.max(...rows.map(([k]) => k.length));
    out(rows.map(([k, v]) => `${(k + ":").padEnd(width + 1)}  ${text(v)}`).join("\n"));
    for (const p of (doc.problems as { node: string; problem: string }[] | undefined) ?? []) {
      out(`problem: node ${p.node}: ${p.problem}`);
    }
  }
  return doc.ready ? EXIT.ok : EXIT.notReady;
}

const IPAM_HELP = `Usage: pontoon ipam ls [--api-socket PATH] [-o table|json]

Lists the addresses reserved on this node: address, pod (namespace/name
when the runtime passed K8S_POD_*), container id, interface, host veth.
`;

async function cmdIpam(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === "--help" || sub === "-h" || sub === undefined) {
    if (sub === undefined) throw new UsageError("pontoon ipam: missing subcommand (ls)");
    return help(IPAM_HELP);
  }
  if (sub !== "ls") throw new UsageError(`pontoon ipam: unknown subcommand "${sub}" (use ls)`);
  const { flags } = parseClient(rest);
  if (flags.help) return help(IPAM_HELP);
  const doc = expectOk(await ask(flags, "GET", "/v1/allocations"));
  if (flags.json) {
    out(JSON.stringify(doc, null, 2));
    return EXIT.ok;
  }
  const rows = ((doc.allocations ?? []) as Record<string, unknown>[]).map((a) => [
    text(a.ips),
    a.podName ? `${a.podNamespace ?? "-"}/${a.podName}` : "-",
    shortId(String(a.containerId)),
    text(a.ifname),
    text(a.hostVeth),
  ]);
  out(renderTable(["ADDRESS", "POD", "CONTAINER", "IFNAME", "HOST VETH"], rows));
  return EXIT.ok;
}

function shortId(id: string): string {
  return id.length > 20 ? id.slice(0, 20) : id;
}

const ROUTES_HELP = `Usage: pontoon routes [--api-socket PATH] [-o table|json]

Lists the routes the agent keeps to other nodes' pod CIDRs (host-gw).
`;

async function cmdRoutes(args: string[]): Promise<number> {
  const { flags } = parseClient(args);
  if (flags.help) return help(ROUTES_HELP);
  const doc = expectOk(await ask(flags, "GET", "/v1/routes"));
  if (flags.json) {
    out(JSON.stringify(doc, null, 2));
    return EXIT.ok;
  }
  const rows = ((doc.routes ?? []) as Record<string, unknown>[]).map((r) => [text(r.dst), text(r.via), text(r.node)]);
  out(renderTable(["DESTINATION", "VIA", "NODE"], rows));
  return EXIT.ok;
}

const NODES_HELP = `Usage: pontoon nodes [--api-socket PATH] [-o table|json]

Lists the nodes the agent knows from the Kubernetes API, with their pod
CIDRs, InternalIPs and any problem that keeps them from getting a route.
`;

async function cmdNodes(args: string[]): Promise<number> {
  const { flags } = parseClient(args);
  if (flags.help) return help(NODES_HELP);
  const doc = expectOk(await ask(flags, "GET", "/v1/nodes"));
  if (flags.json) {
    out(JSON.stringify(doc, null, 2));
    return EXIT.ok;
  }
  const rows = ((doc.nodes ?? []) as Record<string, unknown>[]).map((n) => [
    `${n.name}${n.self ? " (this node)" : ""}`,
    text(n.podCIDRs),
    text(n.internalIPs),
    text(n.problems),
  ]);
  out(renderTable(["NODE", "POD CIDRS", "INTERNAL IPS", "PROBLEMS"], rows));
  return EXIT.ok;
}

const GC_HELP = `Usage: pontoon gc [--apply] [--min-age SECONDS] [--api-socket PATH] [-o table|json]

Finds IPAM reservations whose network namespace and host veth are both
gone (a runtime that never called DEL). A dry run by default: lists what
would be released. With --apply, releases them. Reservations younger
than --min-age (default 60 s) are left alone: an ADD in progress has no
veth yet.
`;

async function cmdGc(args: string[]): Promise<number> {
  const { flags, values } = parseClient(args, {
    apply: { type: "boolean", default: false },
    "min-age": { type: "string" },
  });
  if (flags.help) return help(GC_HELP);
  const minAge = values["min-age"] as string | undefined;
  if (minAge !== undefined && !/^\d{1,7}$/.test(minAge)) {
    throw new UsageError(`--min-age ${minAge}: must be whole seconds`);
  }
  const query = `apply=${values.apply ? "true" : "false"}${minAge === undefined ? "" : `&minAge=${minAge}`}`;
  const doc = expectOk(await ask(flags, "POST", `/v1/gc?${query}`));
  if (flags.json) {
    out(JSON.stringify(doc, null, 2));
    return EXIT.ok;
  }
  const list = (values.apply ? doc.released : doc.stale) as Record<string, unknown>[];
  if (list.length === 0) {
    out("no stale reservations");
    return EXIT.ok;
  }
  out(renderTable(
    ["ADDRESS", "CONTAINER", "IFNAME", "NETNS"],
    list.map((a) => [text(a.ips), shortId(String(a.containerId)), text(a.ifname), text(a.netns)]),
  ));
  out(values.apply ? `released ${list.length}` : `${list.length} stale; run \`pontoon gc --apply\` to release them`);
  return EXIT.ok;
}

const VERSION_HELP = `Usage: pontoon version [-o table|json]

Prints Pontoon's version and the CNI spec versions it supports.
`;

function cmdVersion(args: string[]): number {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      options: { output: { type: "string", short: "o", default: "table" }, help: { type: "boolean", short: "h" } },
    }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (values.help) return help(VERSION_HELP);
  if (values.output === "json") {
    out(JSON.stringify({ version: VERSION, cniVersions: SUPPORTED_VERSIONS }));
  } else if (values.output === "table") {
    out(`pontoon ${VERSION} (CNI ${SUPPORTED_VERSIONS.join(", ")})`);
  } else {
    throw new UsageError(`-o ${values.output}: use table or json`);
  }
  return EXIT.ok;
}

const INSTALL_HELP = `Usage: pontoon install [flags]

Copies this program into the CNI bin dir so that a runtime never runs a
half-written file (temporary name, fsync, rename). The compiled binary is
copied as one file; the bundle (launcher, lib/*.js and the deno runtime)
is copied as a set into BIN/.pontoon/<hash>/ and BIN/pontoon becomes a
symlink to it. With --pod-cidr (a node without an agent) it also writes
the conflist.

  --cni-bin-dir DIR     where runtimes find plugins (default /opt/cni/bin)
  --pod-cidr CIDR       this node's pod CIDR, repeatable (one per family); writes the conflist
  --cluster-cidr CIDR   the cluster pod CIDR, repeatable: egress leaving it is masqueraded
                        (without it, egress leaving the pod CIDR is masqueraded by the plugin)
  --cni-conf-dir DIR    where to write 10-pontoon.conflist (default /etc/cni/net.d)
  --ipam-data-dir DIR   the IPAM store (default /var/lib/cni/networks)
  --bridge NAME         bridge name (default pontoon0)
  --mtu N               pod MTU (default: the default route's MTU)
  --conflist-version V  cniVersion of the conflist: 1.1.0 (default) or 1.0.0 for runtimes whose
                        libcni predates CNI 1.1 (containerd 1.7 and older, podman 4)
  --skip-binary         do not copy the program (only the conflist and/or node settings)
  --node-settings       also set what routing pods needs on this node (ip_forward, br_netfilter,
                        rp_filter) for the families of --cluster-cidr: the DaemonSet's privileged
                        init step, so the agent itself needs no write access to /proc/sys
`;

async function cmdInstall(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        "cni-bin-dir": { type: "string", default: "/opt/cni/bin" },
        "pod-cidr": { type: "string", multiple: true, default: [] },
        "cluster-cidr": { type: "string", multiple: true, default: [] },
        "cni-conf-dir": { type: "string", default: "/etc/cni/net.d" },
        "ipam-data-dir": { type: "string", default: "/var/lib/cni/networks" },
        bridge: { type: "string", default: "pontoon0" },
        mtu: { type: "string" },
        "conflist-version": { type: "string", default: CONFLIST_VERSION },
        "skip-binary": { type: "boolean", default: false },
        "node-settings": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (values.help) return help(INSTALL_HELP);
  for (const flag of ["cni-bin-dir", "cni-conf-dir", "ipam-data-dir"] as const) absolutePathFlag(flag, values[flag]);
  bridgeFlag(values.bridge);
  const mtu = mtuFlag(values.mtu);
  const conflistVersion = conflistVersionFlag(values["conflist-version"]);
  const podCidrs = cidrsFlag("pod-cidr", values["pod-cidr"]);
  const clusterCidrs = cidrsFlag("cluster-cidr", values["cluster-cidr"]);
  if (values["node-settings"] && clusterCidrs.length === 0) {
    throw new UsageError("--node-settings: needs --cluster-cidr (its families say which sysctls to set)");
  }
  if (values["skip-binary"] && podCidrs.length === 0 && !values["node-settings"]) {
    throw new UsageError("--skip-binary: needs --pod-cidr or --node-settings (else there is nothing to do)");
  }
  if (podCidrs.length === 0 && clusterCidrs.length > 0 && !values["node-settings"]) {
    throw new UsageError("--cluster-cidr: needs --pod-cidr or --node-settings");
  }
  const install = await import("./install.ts");
  if (!values["skip-binary"]) {
    const done = await install.installProgram(values["cni-bin-dir"], install.detectProgram());
    out(
      done.changed
        ? `installed ${done.path}${done.target ? ` -> ${done.target}` : ""} (${done.kind})`
        : `${done.path} is already this version`,
    );
  }
  if (values["node-settings"]) {
    const { applyNodeSettings } = await import("./agent.ts");
    await applyNodeSettings([...new Set(clusterCidrs.map((c) => c.family))]);
    out("node settings applied (see the log above for what changed)");
  }
  if (podCidrs.length > 0) {
    const net = {
      podCidrs,
      clusterCidrs,
      cniConfDir: values["cni-conf-dir"],
      cniBinDir: values["cni-bin-dir"],
      ipamDataDir: values["ipam-data-dir"],
      bridge: values.bridge,
      mtu,
      conflistVersion,
    };
    const written = await install.writeStandaloneNetwork(net);
    out(`${written.changed ? "wrote" : "unchanged:"} ${written.path} (${install.describeNetwork(net)})`);
  }
  return EXIT.ok;
}

function help(text: string): number {
  out(text);
  return EXIT.ok;
}

/** Runs the command line; returns the exit code. */
export async function cliMain(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case "version":
      case "--version":
        return cmdVersion(rest);
      case "agent":
        return await import("./agent.ts").then(({ agentMain }) => agentMain(rest));
      case "install":
        return await cmdInstall(rest);
      case "status":
        return await cmdStatus(rest);
      case "ipam":
        return await cmdIpam(rest);
      case "routes":
        return await cmdRoutes(rest);
      case "nodes":
        return await cmdNodes(rest);
      case "gc":
        return await cmdGc(rest);
      case undefined:
      case "help":
      case "--help":
      case "-h":
        // Like the reference plugins' skel: an "about" text, exit 0.
        err(USAGE);
        return EXIT.ok;
      default:
        err(`pontoon: unknown command "${command}"\n\n${USAGE}`);
        return EXIT.usage;
    }
  } catch (e) {
    if (e instanceof UsageError) {
      err(`pontoon ${command}: ${e.message} (see pontoon ${command} --help)`);
      return EXIT.usage;
    }
    if (e instanceof AgentUnreachableError) {
      err(`pontoon ${command}: ${e.message}`);
      return EXIT.failed;
    }
    err(`pontoon ${command}: ${(e as Error).message}`);
    return EXIT.failed;
  }
}
