/**
 * A simulated cluster on one machine, for the multi-node test and `make
 * demo-cluster`: an underlay (a bridge in its own network namespace, IPv4 +
 * IPv6), "nodes" that are network namespaces each with an underlay
 * interface `eth0` and their own CNI/IPAM/socket folders, `pontoon agent`
 * running inside each node namespace (`ip netns exec`) against the
 * emulated API server, and pods added through the real libcni client
 * (tests/cnitool) inside a node, from the conflist the agent wrote.
 *
 * The test process's own namespace joins the underlay through one veth
 * (`.254` / `::fe`) so agents reach the API server it serves. Everything is
 * uniquely named and `destroy()` removes it all.
 *
 * @module
 */
import { type ApiNode, KubeApiServer, testNode } from "./kubeapi.ts";
import { type Cidr, overlaps, parseCidr } from "../lib/addr.ts";
import { agentGet } from "../lib/agentclient.ts";
import { outputWithin } from "./runtimes.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** The built launcher under test. */
export const PONTOON = `${ROOT}/dist/pontoon`;
const decoder = new TextDecoder();

/** The outcome of a command. */
export interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (argument array, no shell); never throws on a non-zero exit. */
export function exec(
  args: string[],
  options: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<Output> {
  const child = new Deno.Command(args[0], {
    args: args.slice(1),
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  return outputWithin(child, options.timeoutMs ?? 60_000);
}

/** Runs a command and throws with its stderr when it fails. */
export async function mustExec(args: string[], options: { env?: Record<string, string> } = {}): Promise<string> {
  const out = await exec(args, options);
  if (out.code !== 0) throw new Error(`${args.join(" ")}: exit ${out.code}: ${out.stderr.trim()}`);
  return out.stdout;
}

/** Polls `check` every 100 ms until it returns true; throws after `ms` with `what`. */
export async function eventually(
  what: string | (() => string),
  check: () => boolean | Promise<boolean>,
  ms = 30_000,
): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) {
      throw new Error(`timed out after ${ms / 1000}s waiting for ${typeof what === "string" ? what : what()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A random `10.x.y` (/24) for the underlay that no address or route of the
 * test's namespace overlaps (other people's tests run on this machine too).
 */
async function freeUnderlayPrefix(): Promise<string> {
  const routes = JSON.parse(await mustExec(["ip", "-4", "-json", "route", "show", "table", "all"])) as {
    dst: string;
  }[];
  const addrs = JSON.parse(await mustExec(["ip", "-4", "-json", "addr", "show"])) as {
    addr_info?: { local: string; prefixlen: number }[];
  }[];
  const used = [
    ...routes.map((r) => r.dst.includes("/") ? r.dst : `${r.dst}/32`),
    ...addrs.flatMap((l) => (l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`)),
  ].map((text) => parseCidr(text)).filter((c): c is Cidr => c !== null && c.prefix >= 9); // 10/8 and wider: ours is more specific
  for (let i = 0; i < 100; i++) {
    const [a, b] = crypto.getRandomValues(new Uint8Array(2));
    const prefix = `10.${100 + (a % 150)}.${b}`;
    const mine = parseCidr(`${prefix}.0/24`)!;
    if (!used.some((c) => overlaps(c, mine))) return prefix;
  }
  throw new Error("no free 10.x.y.0/24 for the underlay");
}

function tag(): string {
  return `${(Deno.pid % 1296).toString(36)}${(Date.now() % 1679616).toString(36)}`;
}

/** A `pontoon agent` process running inside a node namespace. */
export class AgentProcess {
  readonly #child: Deno.ChildProcess;
  readonly #lines: string[] = [];
  readonly #pump: Promise<void>;
  /** Resolves with the exit code. */
  readonly exited: Promise<number>;
  #exitCode: number | undefined;

  /** Starts `pontoon agent args...` in netns `netns` (a name under /run/netns). */
  constructor(netns: string, args: string[]) {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", netns, PONTOON, "agent", ...args],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#pump = (async () => {
      let buffer = "";
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        buffer += chunk;
        let nl: number;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          this.#lines.push(buffer.slice(0, nl));
          buffer = buffer.slice(nl + 1);
        }
      }
      if (buffer) this.#lines.push(buffer);
    })();
    this.exited = child.status.then((s) => this.#exitCode = s.code);
  }

  /** Log lines so far (JSON text, one per line). */
  get lines(): string[] {
    return this.#lines;
  }

  /** True while the process runs. */
  get running(): boolean {
    return this.#exitCode === undefined;
  }

  /** The messages (`msg` of each JSON log line; other lines as they are). */
  get messages(): string[] {
    return this.#lines.map((l) => {
      try {
        return String(JSON.parse(l).msg);
      } catch {
        return l;
      }
    });
  }

  /** Log messages that match `pattern`. */
  grep(pattern: RegExp): string[] {
    return this.messages.filter((l) => pattern.test(l));
  }

  /** Waits until a log message matches `pattern`; returns it. */
  async waitForLog(pattern: RegExp, ms = 30_000): Promise<string> {
    let found: string | undefined;
    await eventually(() => `agent log ${pattern}\n--- log:\n${this.#lines.slice(-15).join("\n")}`, () => {
      found = this.messages.find((l) => pattern.test(l));
      return found !== undefined;
    }, ms);
    return found!;
  }

  /** Sends SIGTERM and waits for the exit code (SIGKILL after `ms`). */
  async stop(ms = 15_000): Promise<number> {
    if (this.running) {
      try {
        this.#child.kill("SIGTERM");
      } catch { /* already gone */ }
      const timer = setTimeout(() => {
        try {
          this.#child.kill("SIGKILL");
        } catch { /* gone */ }
      }, ms);
      await this.exited;
      clearTimeout(timer);
    }
    await this.#pump.catch(() => {});
    return this.#exitCode!;
  }
}

/** One simulated node. */
export interface SimNode {
  /** Kubernetes node name. */
  name: string;
  /** Network namespace name (under /run/netns). */
  netns: string;
  /** Its underlay addresses (v4, v6). */
  ip4: string;
  ip6: string;
  /** Pod CIDRs to assign (v4, v6). */
  podCidr4: string;
  podCidr6: string;
  /** Its private folder: net.d, ipam, api.sock, cni cache. */
  dir: string;
  confDir: string;
  ipamDir: string;
  apiSocket: string;
  /** The running agent, when started. */
  agent?: AgentProcess;
}

/** A pod: a network namespace attached through the plugin on one node. */
export interface SimPod {
  name: string;
  netns: string;
  node: SimNode;
  ip4: string;
  ip6: string;
}

/** Options for {@link SimCluster.create}. */
export interface SimClusterOptions {
  /** Node count (default 3). */
  nodes?: number;
  /** The agents' `--resync-interval` (default 2 s). */
  resyncSeconds?: number;
}

/**
 * The simulated cluster. `create()` builds the underlay, the node
 * namespaces and the API server (Nodes registered with InternalIPs but no
 * pod CIDRs yet); `destroy()` removes everything, in `finally`.
 */
export class SimCluster {
  /** The emulated API server. */
  readonly api: KubeApiServer;
  /** The nodes, in order. */
  readonly nodes: SimNode[] = [];
  /** Pods made so far. */
  readonly pods: SimPod[] = [];
  /** The kubeconfig every agent uses. */
  readonly kubeconfig: string;
  /** Working folder. */
  readonly dir: string;
  /** The underlay namespace (holds the bridge `br0`). */
  readonly underlay: string;
  /** The underlay's v4 prefix `a.b.c` and v6 prefix `fdxx:yyyy::`. */
  readonly prefix4: string;
  readonly prefix6: string;
  /** Cluster CIDRs (v4, v6). */
  readonly clusterCidrs: [string, string];
  readonly #hostLink: string;
  readonly #resync: number;
  readonly #tag: string;
  readonly #extraNetns: string[] = [];

  private constructor(
    fields: {
      api: KubeApiServer;
      dir: string;
      underlay: string;
      hostLink: string;
      prefix4: string;
      prefix6: string;
      tag: string;
      resync: number;
    },
  ) {
    this.api = fields.api;
    this.dir = fields.dir;
    this.underlay = fields.underlay;
    this.#hostLink = fields.hostLink;
    this.prefix4 = fields.prefix4;
    this.prefix6 = fields.prefix6;
    this.#tag = fields.tag;
    this.#resync = fields.resync;
    this.clusterCidrs = ["10.244.0.0/16", "fd44::/48"];
    this.kubeconfig = `${fields.dir}/kubeconfig`;
  }

  /** Builds the underlay, the nodes (namespaces only; no agents yet) and the API server. */
  static async create(options: SimClusterOptions = {}): Promise<SimCluster> {
    const t = tag();
    const dir = Deno.makeTempDirSync({ prefix: "pontoon-cluster-" });
    const underlay = `pul${t}`.slice(0, 15);
    const hostLink = `puh${t}`.slice(0, 15);
    const prefix = await freeUnderlayPrefix();
    const rnd = crypto.getRandomValues(new Uint16Array(1))[0].toString(16);
    const prefix6 = `fd7a:${rnd}::`;
    let cluster: SimCluster | undefined;
    try {
      await mustExec(["ip", "netns", "add", underlay]);
      await mustExec(["ip", "-n", underlay, "link", "add", "br0", "type", "bridge"]);
      await mustExec(["ip", "-n", underlay, "link", "set", "br0", "up"]);
      await mustExec(["ip", "-n", underlay, "link", "set", "lo", "up"]);
      await mustExec(["ip", "link", "add", hostLink, "type", "veth", "peer", "name", "host", "netns", underlay]);
      await mustExec(["ip", "-n", underlay, "link", "set", "host", "master", "br0", "up"]);
      await mustExec(["ip", "addr", "add", `${prefix}.254/24`, "dev", hostLink]);
      await mustExec(["ip", "addr", "add", `${prefix6}fe/64`, "dev", hostLink, "nodad"]);
      await mustExec(["ip", "link", "set", hostLink, "up"]);
      const api = await KubeApiServer.start({
        dir: `${dir}/pki`,
        hostname: `${prefix}.254`,
        certIps: [`${prefix}.254`],
        bookmarkIntervalMs: 2000,
      });
      cluster = new SimCluster({
        api,
        dir,
        underlay,
        hostLink,
        prefix4: prefix,
        prefix6,
        tag: t,
        resync: options.resyncSeconds ?? 2,
      });
      Deno.writeTextFileSync(cluster.kubeconfig, api.kubeconfig());
      for (let i = 1; i <= (options.nodes ?? 3); i++) await cluster.#addNode(i);
      return cluster;
    } catch (err) {
      if (cluster) await cluster.destroy();
      else {
        await exec(["ip", "link", "del", hostLink]);
        await exec(["ip", "netns", "del", underlay]);
        Deno.removeSync(dir, { recursive: true });
      }
      throw err;
    }
  }

  async #addNode(i: number): Promise<void> {
    const netns = `pn${i}${this.#tag}`.slice(0, 15);
    const dir = `${this.dir}/node${i}`;
    const node: SimNode = {
      name: `node${i}`,
      netns,
      ip4: `${this.prefix4}.${i}`,
      ip6: `${this.prefix6}${i}`,
      podCidr4: `10.244.${i}.0/24`,
      podCidr6: `fd44:0:0:${i}::/64`,
      dir,
      confDir: `${dir}/net.d`,
      ipamDir: `${dir}/ipam`,
      apiSocket: `${dir}/run/api.sock`,
    };
    Deno.mkdirSync(`${dir}/bin`, { recursive: true });
    await mustExec(["ip", "netns", "add", netns]);
    this.nodes.push(node);
    await mustExec([
      "ip",
      "link",
      "add",
      "eth0",
      "netns",
      netns,
      "type",
      "veth",
      "peer",
      "name",
      `n${i}`,
      "netns",
      this.underlay,
    ]);
    await mustExec(["ip", "-n", this.underlay, "link", "set", `n${i}`, "master", "br0", "up"]);
    await mustExec(["ip", "-n", netns, "link", "set", "lo", "up"]);
    await mustExec(["ip", "-n", netns, "addr", "add", `${node.ip4}/24`, "dev", "eth0"]);
    await mustExec(["ip", "-n", netns, "addr", "add", `${node.ip6}/64`, "dev", "eth0", "nodad"]);
    await mustExec(["ip", "-n", netns, "link", "set", "eth0", "up"]);
    this.api.setNode(testNode(node.name, { internalIPs: [node.ip4, node.ip6] }));
  }

  /** The agent flags for `node` (every path its own). */
  agentArgs(node: SimNode, extra: string[] = []): string[] {
    return [
      `--node-name=${node.name}`,
      `--kubeconfig=${this.kubeconfig}`,
      `--cni-conf-dir=${node.confDir}`,
      `--cni-bin-dir=${node.dir}/bin`,
      `--ipam-data-dir=${node.ipamDir}`,
      `--api-socket=${node.apiSocket}`,
      `--cluster-cidr=${this.clusterCidrs[0]}`,
      `--cluster-cidr=${this.clusterCidrs[1]}`,
      `--resync-interval=${this.#resync}`,
      ...extra,
    ];
  }

  /** Starts (or restarts) the agent of `node`. */
  startAgent(node: SimNode, extra: string[] = []): AgentProcess {
    node.agent = new AgentProcess(node.netns, this.agentArgs(node, extra));
    return node.agent;
  }

  /** Assigns `node` its pod CIDRs in the API (dual stack). */
  assignPodCidrs(node: SimNode): void {
    this.api.updateNode(node.name, (n: ApiNode) => {
      n.spec = { podCIDR: node.podCidr4, podCIDRs: [node.podCidr4, node.podCidr6] };
    });
  }

  /** The agent's `/readyz` answer (status and parsed body). */
  readiness(node: SimNode): { status: number; body: Record<string, unknown> } {
    const reply = agentGet(node.apiSocket, "/readyz", 2000);
    return { status: reply.status, body: JSON.parse(reply.body) };
  }

  /** True when the agent of `node` answers `/readyz` with 200. */
  isReady(node: SimNode): boolean {
    try {
      return this.readiness(node).status === 200;
    } catch {
      return false; // no socket yet
    }
  }

  /** Pontoon's routes in `node`'s main table, as "dst via gw" strings, sorted. */
  async routes(node: SimNode): Promise<string[]> {
    const out: string[] = [];
    for (const family of ["-4", "-6"]) {
      const text = await mustExec(["ip", family, "-n", node.netns, "-json", "route", "show", "proto", "158"]);
      for (const r of JSON.parse(text || "[]") as { dst: string; gateway?: string }[]) {
        out.push(`${r.dst} via ${r.gateway ?? "-"}`);
      }
    }
    return out.sort();
  }

  /** The routes `node` should hold to `peers` (dual stack), sorted like {@link routes}. */
  expectedRoutes(peers: SimNode[]): string[] {
    return peers.flatMap((p) => [`${p.podCidr4} via ${p.ip4}`, `${p.podCidr6} via ${p.ip6}`]).sort();
  }

  /**
   * Adds a pod on `node` by running the plugin inside the node namespace
   * with the conflist the agent wrote, exactly as a runtime's libcni does
   * for a one-plugin list (the list's name and cniVersion, the plugin's
   * fields). Debian's libcni (1.1.2) predates CNI 1.1.0 results, so
   * tests/cnitool cannot read the agent's 1.1.0 conflist.
   */
  async addPod(node: SimNode): Promise<SimPod> {
    const name = `pp${this.pods.length + 1}${this.#tag}`.slice(0, 15);
    await mustExec(["ip", "netns", "add", name]);
    const pod: SimPod = { name, netns: name, node, ip4: "", ip6: "" };
    this.pods.push(pod);
    const out = await this.cni(node, "ADD", pod);
    if (out.code !== 0) throw new Error(`ADD on ${node.name}: ${out.stdout}${out.stderr}`);
    const result = JSON.parse(out.stdout) as { ips: { address: string }[] };
    for (const { address } of result.ips) {
      const ip = address.split("/")[0];
      if (ip.includes(":")) pod.ip6 = ip;
      else pod.ip4 = ip;
    }
    return pod;
  }

  /** The network config the runtime hands the plugin, from `node`'s conflist. */
  pluginConfig(node: SimNode): Record<string, unknown> {
    const list = JSON.parse(Deno.readTextFileSync(`${node.confDir}/10-pontoon.conflist`));
    return { cniVersion: list.cniVersion, name: list.name, ...list.plugins[0] };
  }

  /** Runs the plugin with `command` inside `node`'s namespace for `pod` (or without one). */
  async cni(node: SimNode, command: string, pod?: SimPod, conf = this.pluginConfig(node)): Promise<Output> {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", node.netns, PONTOON],
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: pod?.name ?? "",
        CNI_NETNS: pod ? `/run/netns/${pod.netns}` : "",
        CNI_IFNAME: "eth0",
        CNI_PATH: `${ROOT}/dist:/usr/lib/cni`,
        PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      },
      clearEnv: true,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(JSON.stringify(conf)));
    await w.close();
    const out = await child.output();
    return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
  }

  /** Pings `address` from `pod` (`count` echoes); true when all were answered. */
  async ping(pod: SimPod, address: string, count = 2): Promise<boolean> {
    const out = await exec(["ip", "netns", "exec", pod.netns, "ping", "-n", "-c", String(count), "-W", "2", address]);
    return out.code === 0;
  }

  /** The test namespace's link into the underlay (its addresses are `prefix4.254` and `prefix6 + "fe"`). */
  get hostLink(): string {
    return this.#hostLink;
  }

  /** Makes one more bare namespace (removed by destroy), for tests that need a throwaway node. */
  async extraNetns(prefix: string): Promise<string> {
    const name = `${prefix}${this.#tag}`.slice(0, 15);
    await mustExec(["ip", "netns", "add", name]);
    this.#extraNetns.push(name);
    return name;
  }

  /**
   * Removes everything: stops agents, DELs pods through libcni, deletes
   * the pod, node and underlay namespaces (their links, bridges and nft
   * tables go with them), the host link, plugin markers and the folder.
   */
  async destroy(): Promise<void> {
    for (const node of this.nodes) await node.agent?.stop().catch(() => {});
    for (const pod of this.pods) {
      await this.cni(pod.node, "DEL", pod).catch(() => {});
      await exec(["ip", "netns", "del", pod.netns]);
    }
    for (const ns of [...this.nodes.map((n) => n.netns), ...this.#extraNetns]) {
      // The plugin's per-node markers are keyed by the namespace's inode.
      try {
        const ino = Deno.statSync(`/run/netns/${ns}`).ino;
        for (const e of Deno.readDirSync("/run/pontoon/state")) {
          if (e.name.startsWith(`${ino}-`)) Deno.removeSync(`/run/pontoon/state/${e.name}`);
        }
      } catch { /* no markers */ }
      await exec(["ip", "netns", "del", ns]);
    }
    await exec(["ip", "link", "del", this.#hostLink]);
    await exec(["ip", "netns", "del", this.underlay]);
    await this.api.close();
    try {
      Deno.removeSync(this.dir, { recursive: true });
    } catch { /* already gone */ }
  }
}

/** Records route changes in a namespace (`ip monitor route`) until stopped. */
export class RouteMonitor {
  readonly #child: Deno.ChildProcess;
  readonly #text: Promise<string>;

  /** Starts monitoring routes in netns `netns`. */
  constructor(netns: string) {
    this.#child = new Deno.Command("ip", {
      args: ["-n", netns, "monitor", "route"],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#text = new Response(this.#child.stdout).text();
  }

  /** Stops and returns the lines seen. */
  async stop(): Promise<string[]> {
    // Give the last netlink messages a moment to be printed.
    await new Promise((r) => setTimeout(r, 200));
    try {
      this.#child.kill("SIGTERM");
    } catch { /* gone */ }
    await this.#child.status;
    return (await this.#text).split("\n").filter((l) => l.trim() !== "");
  }
}

/**
 * Captures one packet matching `filter` on interface `iface` of netns
 * `netns` (null: the test's own namespace) with tcpdump, started before
 * `trigger` runs; returns tcpdump's line for it, or null.
 */
export async function capture(
  netns: string | null,
  iface: string,
  filter: string,
  trigger: () => Promise<unknown>,
): Promise<string | null> {
  const tcpdump = ["tcpdump", "-n", "-l", "-i", iface, "-c", "1", filter];
  const args = netns === null ? tcpdump : ["ip", "netns", "exec", netns, ...tcpdump];
  const child = new Deno.Command(args[0], { args: args.slice(1), stdin: "null", stdout: "piped", stderr: "piped" })
    .spawn();
  const out = new Response(child.stdout).text();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let err = "";
  while (!err.includes("listening on")) {
    const { value, done } = await reader.read();
    if (done) break;
    err += value;
  }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
  }, 10_000);
  await trigger();
  const status = await child.status;
  clearTimeout(timer);
  reader.cancel().catch(() => {});
  const text = (await out).trim();
  return status.success && text !== "" ? text : null;
}
