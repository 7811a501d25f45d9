/**
 * The node agent (`pontoon agent`): learns this node's pod CIDRs from the
 * Kubernetes API, writes the conflist, keeps routes to every other node's
 * pods (host-gw), masquerades pod egress leaving the cluster, sets the node
 * sysctls routing needs, and reports readiness on its unix socket.
 *
 * The loop: an informer keeps every Node in memory (list + watch); every
 * event and a periodic resync schedule one reconcile, and reconciles never
 * overlap. Routes are only changed from a complete view: before the first
 * list nothing is touched, and while the API is away the last view stays in
 * force (no flush, no flap). Shutdown leaves routes and conflist in place.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type Cidr, type Family, formatCidr, formatIp } from "./addr.ts";
import {
  type AgentCounters,
  type AgentNode,
  type AgentState,
  type AgentStateSource,
  zeroCounters,
} from "./agentstate.ts";
import { startApiServer, type TcpOptions } from "./api.ts";
import { agentApiSource } from "./agentapi.ts";
import { currentBootId, syncedMarkerPath } from "./agentclient.ts";
import { AgentMetrics } from "./metrics.ts";
import {
  buildConflist,
  CONFLIST_FILE,
  CONFLIST_VERSIONS,
  hasPlugin,
  renderConflist,
  writeConflistIfChanged,
} from "./conflist.ts";
import { clusterMasqueradeScript, ensureClusterMasquerade } from "./firewall.ts";
import { absolutePathFlag, bridgeFlag, cidrsFlag, conflistVersionFlag, mtuFlag, UsageError } from "./flags.ts";
import {
  type InformerHandlers,
  KubeClient,
  type KubeNode,
  listNodes,
  loadKubeTarget,
  type NodeEvent,
  runNodeInformer,
} from "./kube.ts";
import { configureLog, isLogLevel, log } from "./log.ts";
import {
  applyRouteChanges,
  desiredRoutes,
  familiesOf,
  type NodeProblem,
  type PeerRoute,
  planChanges,
  podCidrsOf,
  readRouteTable,
} from "./routes.ts";
import { ensureSysctl, readSysctl } from "./sysfs.ts";

/** The agent's settings, from the command line (every path a flag, so several agents can share a machine). */
export interface AgentOptions {
  /** This node's name in Kubernetes. */
  nodeName: string;
  /** A kubeconfig path; else in-cluster, else `$KUBECONFIG`. */
  kubeconfig?: string;
  /** Where the conflist is written. */
  cniConfDir: string;
  /** Where `portmap` is looked for. */
  cniBinDir: string;
  /** The IPAM store, written into the conflist. */
  ipamDataDir: string;
  /** Cluster pod CIDRs; egress leaving them is masqueraded. */
  clusterCidrs: Cidr[];
  /** The agent's unix socket, written into the conflist. */
  apiSocket: string;
  /** Bridge name written into the conflist. */
  bridge: string;
  /** Pod MTU written into the conflist. */
  mtu?: number;
  /** Periodic reconcile interval. */
  resyncSeconds: number;
  /** Sync once and exit. */
  once: boolean;
  /** The conflist's declared cniVersion. */
  conflistVersion: (typeof CONFLIST_VERSIONS)[number];
  /** Also serve the REST API on TCP (needs `apiTokenFile`). */
  apiListen?: { hostname: string; port: number };
  apiTokenFile?: string;
}

/** Usage text of `pontoon agent`. */
export const AGENT_USAGE = `Usage: pontoon agent [flags]

  --node-name NAME        this node's name in Kubernetes (default $NODE_NAME, else the hostname)
  --kubeconfig PATH       kubeconfig to use (default: in-cluster service account, else $KUBECONFIG)
  --cni-conf-dir DIR      where to write ${CONFLIST_FILE} (default /etc/cni/net.d)
  --cni-bin-dir DIR       CNI plugins; portmap is chained when present (default /opt/cni/bin)
  --ipam-data-dir DIR     IPAM store, written into the conflist (default /var/lib/cni/networks)
  --cluster-cidr CIDR     cluster pod CIDR, repeatable (one per family); egress leaving it is masqueraded
  --api-socket PATH       the agent's unix socket (default /run/pontoon/api.sock)
  --api-listen HOST:PORT  also serve the API on TCP (requires --api-token-file; off by default)
  --api-token-file PATH   bearer token for the TCP listener (first line, 16+ characters, mode 0600)
  --bridge NAME           bridge name written into the conflist (default pontoon0)
  --mtu N                 pod MTU written into the conflist (default: the default route's MTU)
  --conflist-version V    cniVersion of the conflist: 1.1.0 (default) or 1.0.0 for runtimes whose libcni
                          predates CNI 1.1 (containerd 1.7 and older)
  --resync-interval SEC   periodic reconcile (default 30)
  --log-level LEVEL       debug, info, warn or error (default info)
  --once                  sync once and exit (0 when synced)
`;

/** Parses `pontoon agent` flags; throws UsageError with a precise message. */
export function parseAgentArgs(args: string[], env: Record<string, string | undefined>): AgentOptions & {
  logLevel: string;
  help: boolean;
} {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        "node-name": { type: "string" },
        kubeconfig: { type: "string" },
        "cni-conf-dir": { type: "string", default: "/etc/cni/net.d" },
        "cni-bin-dir": { type: "string", default: "/opt/cni/bin" },
        "ipam-data-dir": { type: "string", default: "/var/lib/cni/networks" },
        "cluster-cidr": { type: "string", multiple: true, default: [] },
        "api-socket": { type: "string", default: "/run/pontoon/api.sock" },
        "api-listen": { type: "string" },
        "api-token-file": { type: "string" },
        bridge: { type: "string", default: "pontoon0" },
        mtu: { type: "string" },
        "conflist-version": { type: "string", default: "1.1.0" },
        "resync-interval": { type: "string", default: "30" },
        "log-level": { type: "string", default: "info" },
        once: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const nodeName = values["node-name"] ?? env.NODE_NAME ?? hostnameOrEmpty();
  if (!values.help && !/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(nodeName)) {
    throw new UsageError(`--node-name: ${JSON.stringify(nodeName)} is not a Kubernetes node name (set NODE_NAME)`);
  }
  for (const flag of ["cni-conf-dir", "cni-bin-dir", "ipam-data-dir", "api-socket"] as const) {
    absolutePathFlag(flag, values[flag]);
  }
  const clusterCidrs = cidrsFlag("cluster-cidr", values["cluster-cidr"]);
  const resync = Number(values["resync-interval"]);
  if (!Number.isFinite(resync) || resync < 0.1) {
    throw new UsageError(`--resync-interval: ${values["resync-interval"]} is not a number of seconds ≥ 0.1`);
  }
  const mtu = mtuFlag(values.mtu);
  const apiListen = values["api-listen"] === undefined ? undefined : parseListen(values["api-listen"]);
  if (apiListen && values["api-token-file"] === undefined) {
    throw new UsageError("--api-listen: needs --api-token-file (the TCP API is never served without a token)");
  }
  if (values["api-token-file"] !== undefined) absolutePathFlag("api-token-file", values["api-token-file"]);
  const conflistVersion = conflistVersionFlag(values["conflist-version"]);
  if (!isLogLevel(values["log-level"])) throw new UsageError(`--log-level: ${values["log-level"]} is not a level`);
  bridgeFlag(values.bridge);
  return {
    nodeName,
    kubeconfig: values.kubeconfig,
    cniConfDir: values["cni-conf-dir"],
    cniBinDir: values["cni-bin-dir"],
    ipamDataDir: values["ipam-data-dir"],
    clusterCidrs,
    apiSocket: values["api-socket"],
    bridge: values.bridge,
    mtu,
    resyncSeconds: resync,
    once: values.once,
    conflistVersion,
    apiListen,
    apiTokenFile: values["api-token-file"],
    logLevel: values["log-level"],
    help: values.help,
  };
}

/** `HOST:PORT` or `[V6]:PORT`. */
function parseListen(text: string): { hostname: string; port: number } {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) throw new UsageError(`--api-listen: ${JSON.stringify(text)} is not HOST:PORT`);
  return { hostname: match[1] ?? match[2], port };
}

function hostnameOrEmpty(): string {
  try {
    return Deno.hostname().toLowerCase();
  } catch {
    return "";
  }
}

// ------------------------------------------------------------ node settings

let modprobeTried = false;
let warnedBrNetfilter = false;

/**
 * Sets what routing pods between nodes needs: forwarding, bridged traffic
 * through netfilter (kube-proxy's Service rules), and reverse-path
 * filtering no stricter than loose. Cheap when all is set (reads only);
 * problems are logged, never thrown.
 */
export async function applyNodeSettings(families: Family[]): Promise<void> {
  setSysctl("net.ipv4.ip_forward", "1");
  if (families.includes(6)) setSysctl("net.ipv6.conf.all.forwarding", "1");
  if (readSysctl("net.bridge.bridge-nf-call-iptables") === null && !modprobeTried) {
    modprobeTried = true;
    await new Deno.Command("modprobe", { args: ["br_netfilter"], stdout: "null", stderr: "null" }).output()
      .catch(() => {});
  }
  if (readSysctl("net.bridge.bridge-nf-call-iptables") === null) {
    if (!warnedBrNetfilter) {
      log(
        "error",
        "br_netfilter is NOT loaded: traffic between pods on one bridge bypasses iptables/nftables, " +
          "so kube-proxy Services and NetworkPolicies do not apply to it; run `modprobe br_netfilter` " +
          "and add it to /etc/modules-load.d",
        { module: "br_netfilter" },
      );
    }
    warnedBrNetfilter = true;
  } else {
    setSysctl("net.bridge.bridge-nf-call-iptables", "1");
    if (families.includes(6)) setSysctl("net.bridge.bridge-nf-call-ip6tables", "1");
  }
  // The effective rp_filter of an interface is max(all, interface); strict
  // (1) in `all` drops pod traffic that arrives on another interface than
  // the kernel would route back on (nodes with several NICs). Loose (2)
  // still drops sources that are not routable at all.
  if (readSysctl("net.ipv4.conf.all.rp_filter") === "1") setSysctl("net.ipv4.conf.all.rp_filter", "2");
}

function setSysctl(key: string, value: string): void {
  try {
    const before = readSysctl(key);
    if (!ensureSysctl(key, value)) {
      log("warn", `sysctl ${key} does not exist`, { sysctl: key });
    } else if (before !== value) {
      log("info", `set sysctl ${key}=${value}`, { sysctl: key, was: before });
    }
  } catch (err) {
    log("error", `cannot set sysctl ${key}=${value}: ${(err as Error).message}`, { sysctl: key });
  }
}

// ------------------------------------------------------------ the agent

/** The agent's state: the Node view, what was last applied, and readiness. */
export class Agent implements AgentStateSource {
  readonly #options: AgentOptions;
  readonly #nodes = new Map<string, KubeNode>();
  #listed = false;
  #conflistWritten = false;
  #routesReconciled = false;
  #syncMarked = false;
  #reason = "waiting for the first node list from the Kubernetes API";
  #podCidrs: Cidr[] = [];
  #routes: PeerRoute[] = [];
  #problems: NodeProblem[] = [];
  #loggedProblems = new Set<string>();
  #apiError: string | undefined;
  #lastSync: string | undefined;
  #running: Promise<void> | null = null;
  #again = false;
  #warnedMasquerade = false;
  readonly #counters: AgentCounters = zeroCounters();
  readonly #startedAt = new Date().toISOString();
  readonly #apiServer: string;
  /** Reconcile durations and plugin reports, for the REST API's /metrics. */
  readonly metrics = new AgentMetrics();

  /** Makes an agent with `options`; nothing happens until events arrive. */
  constructor(options: AgentOptions, apiServer = "") {
    this.#options = options;
    this.#apiServer = apiServer;
  }

  /** Informer callbacks that feed this agent. */
  handlers(): InformerHandlers {
    return {
      onList: (nodes) => this.replaceNodes(nodes),
      onEvent: (event) => this.applyEvent(event),
      onError: (err, retryInMs) => {
        this.#apiError = err.message;
        this.#counters.apiErrors++;
        log("error", `Kubernetes API: ${err.message}; retrying in ${(retryInMs / 1000).toFixed(1)}s`);
      },
      onExpired: (err) => {
        this.#counters.expired++;
        log("info", `watch expired (${err.message}); listing nodes again`);
      },
    };
  }

  /** Takes a complete list of Nodes and reconciles. */
  replaceNodes(nodes: KubeNode[]): void {
    this.#nodes.clear();
    for (const node of nodes) if (node?.metadata?.name) this.#nodes.set(node.metadata.name, node);
    if (this.#apiError !== undefined) log("info", "Kubernetes API reachable again");
    this.#apiError = undefined;
    this.#listed = true;
    this.#counters.lists++;
    log("debug", "listed nodes", { count: nodes.length });
    void this.schedule();
  }

  /** Takes one watch event and reconciles. */
  applyEvent(event: NodeEvent): void {
    const name = event.node.metadata.name;
    if (event.type === "DELETED") this.#nodes.delete(name);
    else this.#nodes.set(name, event.node);
    this.#apiError = undefined;
    this.#counters.events++;
    log("debug", `node ${event.type.toLowerCase()}`, { node: name });
    void this.schedule();
  }

  /**
   * Runs a reconcile now, or once more after the running one (reconciles
   * never overlap; bursts of events collapse into one more run).
   */
  schedule(): Promise<void> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      do {
        this.#again = false;
        const started = performance.now();
        try {
          await this.reconcile();
        } catch (err) {
          this.#counters.reconcileErrors++;
          log("error", `reconcile failed: ${(err as Error).message}`);
        }
        this.metrics.recordReconcile((performance.now() - started) / 1000);
      } while (this.#again);
      this.#running = null;
    })();
    return this.#running;
  }

  /** True once the pod CIDR is known, the conflist written and routes reconciled. */
  get synced(): boolean {
    return this.#conflistWritten && this.#routesReconciled;
  }

  /** One pass: conflist, masquerade, routes, from the current Node view. */
  async reconcile(): Promise<void> {
    if (!this.#listed) return;
    const o = this.#options;
    const self = this.#nodes.get(o.nodeName);
    if (!self) {
      this.#notReady(`node ${o.nodeName} is not in the Kubernetes API (check --node-name)`);
      return;
    }
    const { cidrs, problems } = podCidrsOf(self);
    for (const p of problems) this.#reportOnce(`own:${p}`, `this node (${o.nodeName}): ${p}`);
    if (cidrs.length === 0) {
      this.#notReady(`waiting for node ${o.nodeName} to be assigned a pod CIDR (spec.podCIDRs)`);
      return;
    }
    this.#podCidrs = cidrs;
    await applyNodeSettings(familiesOf(cidrs));
    this.#writeConflist(cidrs);
    await this.#ensureMasquerade(cidrs);
    await this.#reconcileRoutes(cidrs);
    this.#lastSync = new Date().toISOString();
    this.#reason = "synced";
    this.#counters.reconciles++;
    this.#markSynced();
  }

  /** Leaves `<api-socket>.synced` (this boot's id) once: the plugin's STATUS reads it while no agent answers. */
  #markSynced(): void {
    if (this.#syncMarked || !this.synced) return;
    const path = syncedMarkerPath(this.#options.apiSocket);
    const boot = currentBootId();
    if (boot === null) return;
    try {
      const tmp = `${path}.tmp-${Deno.pid}`;
      Deno.writeTextFileSync(tmp, `${boot}\n`, { mode: 0o600 });
      Deno.renameSync(tmp, path);
      this.#syncMarked = true;
    } catch (err) {
      log("warn", `cannot write ${path}: ${(err as Error).message}`);
    }
  }

  #notReady(reason: string): void {
    if (reason !== this.#reason) log("info", reason);
    this.#reason = reason;
  }

  #writeConflist(cidrs: Cidr[]): void {
    const o = this.#options;
    const doc = buildConflist({
      podCidrs: cidrs,
      ipamDataDir: o.ipamDataDir,
      agentSocket: o.apiSocket,
      bridge: o.bridge,
      mtu: o.mtu,
      portmap: hasPlugin(o.cniBinDir, "portmap"),
      cniVersion: o.conflistVersion,
    });
    if (writeConflistIfChanged(o.cniConfDir, renderConflist(doc))) {
      this.#counters.conflistWrites++;
      log("info", `wrote ${o.cniConfDir}/${CONFLIST_FILE}`, { podCIDRs: cidrs.map(formatCidr) });
    }
    this.#conflistWritten = true;
  }

  async #ensureMasquerade(cidrs: Cidr[]): Promise<void> {
    const cluster = this.#options.clusterCidrs;
    const uncovered = cidrs.filter((c) => !cluster.some((k) => k.family === c.family));
    if (uncovered.length > 0 && !this.#warnedMasquerade) {
      this.#warnedMasquerade = true;
      log("warn", `no --cluster-cidr for ${uncovered.map(formatCidr).join(", ")}: egress from it is not masqueraded`);
    }
    if (cidrs.length === uncovered.length) return;
    if (await ensureClusterMasquerade(clusterMasqueradeScript(cidrs, cluster))) {
      log("info", "installed the masquerade table", { clusterCIDRs: cluster.map(formatCidr) });
    }
  }

  async #reconcileRoutes(cidrs: Cidr[]): Promise<void> {
    const table = await readRouteTable();
    const desired = desiredRoutes(this.#options.nodeName, cidrs, [...this.#nodes.values()], table);
    const changes = planChanges(desired.routes, table);
    for (const r of changes.remove) log("info", `removing route ${formatCidr(r.dst)}: no node owns it any more`);
    for (const r of changes.put) {
      const was = table.owned.find((o) => formatCidr(o.dst) === formatCidr(r.dst));
      log(
        "info",
        `${was ? "replacing" : "adding"} route ${formatCidr(r.dst)} via ${formatIp(r.gateway)} (node ${r.node})`,
        was?.gateway ? { was: formatIp(was.gateway) } : undefined,
      );
    }
    const failures = await applyRouteChanges(changes);
    this.#counters.routesRemoved += changes.remove.length;
    for (const r of changes.put) {
      if (table.owned.some((o) => formatCidr(o.dst) === formatCidr(r.dst))) this.#counters.routesReplaced++;
      else this.#counters.routesAdded++;
    }
    this.#counters.routeFailures += failures.length;
    for (const f of failures) log("error", `route change failed: ip ${f.command.join(" ")}: ${f.error}`);
    this.#routes = desired.routes;
    this.#problems = desired.problems;
    this.#logProblems(desired.problems);
    this.#routesReconciled = true;
  }

  #reportOnce(key: string, message: string): void {
    if (this.#loggedProblems.has(key)) return;
    this.#loggedProblems.add(key);
    log("warn", message);
  }

  #logProblems(problems: NodeProblem[]): void {
    const current = new Set(problems.map((p) => `${p.node}: ${p.problem}`));
    for (const text of current) {
      if (!this.#loggedProblems.has(text)) log("warn", `node ${text}`, { node: text.split(":")[0] });
    }
    for (const text of this.#loggedProblems) {
      if (!text.startsWith("own:") && !current.has(text)) log("info", `resolved: node ${text}`);
    }
    const own = [...this.#loggedProblems].filter((t) => t.startsWith("own:"));
    this.#loggedProblems = new Set([...current, ...own]);
  }

  /** A snapshot of the agent's state (what `/readyz`, the REST API and metrics report). */
  state(): AgentState {
    return {
      ready: this.synced,
      reason: this.synced ? "synced" : this.#reason,
      node: this.#options.nodeName,
      apiServer: this.#apiServer,
      podCIDRs: this.#podCidrs.map(formatCidr),
      conflist: this.#conflistWritten ? `${this.#options.cniConfDir}/${CONFLIST_FILE}` : null,
      routes: this.#routes.map((r) => ({ node: r.node, dst: formatCidr(r.dst), via: formatIp(r.gateway) })),
      problems: this.#problems.map((p) => ({ ...p })),
      nodesKnown: this.#nodes.size,
      nodes: [...this.#nodes.values()].map(describeNode).sort((a, b) => a.name.localeCompare(b.name)),
      apiError: this.#apiError ?? null,
      lastSync: this.#lastSync ?? null,
      startedAt: this.#startedAt,
      counters: { ...this.#counters },
    };
  }

  /** What `/readyz` answers: the state snapshot. */
  readiness(): AgentState {
    return this.state();
  }
}

function describeNode(node: KubeNode): AgentNode {
  const spec = node.spec ?? {};
  const cidrs = spec.podCIDRs?.length ? spec.podCIDRs : spec.podCIDR ? [spec.podCIDR] : [];
  return {
    name: node.metadata.name,
    podCIDRs: cidrs.map(String),
    internalIPs: (node.status?.addresses ?? []).filter((a) => a?.type === "InternalIP").map((a) => String(a.address)),
  };
}

// ------------------------------------------------------------ main

async function runOnce(agent: Agent, client: KubeClient, deadlineMs: number): Promise<number> {
  const deadline = Date.now() + deadlineMs;
  let delay = 500;
  for (;;) {
    try {
      agent.replaceNodes((await listNodes(client)).nodes);
      await agent.schedule();
      if (agent.synced) return 0;
      log("error", `not synced: ${agent.readiness().reason}`);
      return 1;
    } catch (err) {
      if (Date.now() + delay > deadline) {
        log("error", `giving up: ${(err as Error).message}`);
        return 1;
      }
      log("warn", `${(err as Error).message}; retrying in ${delay / 1000}s`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

async function runForever(agent: Agent, client: KubeClient, options: AgentOptions): Promise<number> {
  const stop = new AbortController();
  const onSignal = () => {
    log("info", "shutting down (routes and conflist stay in place)");
    stop.abort();
  };
  Deno.addSignalListener("SIGTERM", onSignal);
  Deno.addSignalListener("SIGINT", onSignal);
  const tcp: TcpOptions | undefined = options.apiListen && options.apiTokenFile
    ? { ...options.apiListen, tokenFile: options.apiTokenFile }
    : undefined;
  const server = await startApiServer(options.apiSocket, agentApiSource(agent, options), { tcp });
  const resync = setInterval(() => void agent.schedule(), options.resyncSeconds * 1000);
  try {
    await runNodeInformer(client, agent.handlers(), { signal: stop.signal });
    await agent.schedule(); // let a running reconcile finish
  } finally {
    clearInterval(resync);
    await server.close();
    Deno.removeSignalListener("SIGTERM", onSignal);
    Deno.removeSignalListener("SIGINT", onSignal);
  }
  return 0;
}

/** Runs `pontoon agent` with command-line `args`; returns the exit code. */
export async function agentMain(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseAgentArgs(args, Deno.env.toObject());
  } catch (err) {
    Deno.stderr.writeSync(new TextEncoder().encode(`pontoon agent: ${(err as Error).message}\n\n${AGENT_USAGE}`));
    return 2;
  }
  if (parsed.help) {
    Deno.stderr.writeSync(new TextEncoder().encode(AGENT_USAGE));
    return 0;
  }
  configureLog({ level: parsed.logLevel as "info" });
  let client: KubeClient;
  try {
    client = new KubeClient(loadKubeTarget(parsed.kubeconfig, Deno.env.toObject()));
  } catch (err) {
    log("error", (err as Error).message);
    return 2;
  }
  log("info", "agent starting", {
    node: parsed.nodeName,
    api: client.target.server,
    credentials: client.target.source,
    clusterCIDRs: parsed.clusterCidrs.map(formatCidr),
  });
  const agent = new Agent(parsed, client.target.server);
  try {
    return parsed.once ? await runOnce(agent, client, 60_000) : await runForever(agent, client, parsed);
  } catch (err) {
    log("error", (err as Error).message);
    return 1;
  } finally {
    client.close();
  }
}
