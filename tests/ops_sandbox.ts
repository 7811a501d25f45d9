/**
 * A one-node sandbox for API and CLI tests: a network namespace with an
 * underlay veth to the host, the emulated Kubernetes API on the host side,
 * and `pontoon agent` (the built program) running inside the namespace
 * with every path in a private temp folder. Pods are added through the
 * plugin inside the node namespace, with the conflist the agent wrote.
 *
 * @module
 */
import { hostVethName } from "../lib/bridge.ts";
import { apiRequest } from "../lib/apiclient.ts";
import { PLUGIN, removeNamespaceMarkers, sh, uniq } from "./harness.ts";
import { KubeApiServer, testNode } from "./kubeapi.ts";

/** A running sandbox. */
export interface Sandbox {
  dir: string;
  socket: string;
  nodeNs: string;
  bridge: string;
  underlay: string;
  /** 198.18.X: the underlay's first three octets. */
  prefix: string;
  kube: KubeApiServer;
  tokenFile: string;
  token: string;
  /** The agent's TCP port inside the node namespace. */
  tcpPort: number;
  logPath: string;
  podNetns: string[];
}

/** Options: leave the node without a pod CIDR at first. */
export interface SandboxOptions {
  unassigned?: boolean;
}

/** Polls `check` until true or `ms` pass; throws with `what`. */
export async function eventually(what: string, check: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await Promise.resolve().then(check).catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** A `198.18.x` (/24) that no route of this namespace covers (other tests run on this machine too). */
async function freeUnderlayPrefix(): Promise<string> {
  const routes = JSON.parse(await must("ip", ["-4", "-json", "route", "show", "table", "all"])) as { dst: string }[];
  const used = routes.map((r) => r.dst);
  for (let i = 0; i < 100; i++) {
    const third = crypto.getRandomValues(new Uint8Array(1))[0] % 254 + 1;
    const prefix = `198.18.${third}`;
    if (!used.some((d) => d === `${prefix}.0/24` || d.startsWith(`${prefix}.`) || d === "198.18.0.0/15")) return prefix;
  }
  throw new Error("no free 198.18.x.0/24 for the sandbox underlay");
}

/** Self node `n1` (10.88.1.0/24), `n2` routable, `n3` with an InternalIP off every local subnet. */
export async function startSandbox(options: SandboxOptions = {}): Promise<{ sb: Sandbox; agent: Deno.ChildProcess }> {
  const tag = uniq("");
  const prefix = await freeUnderlayPrefix();
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-ops-" });
  const sb: Sandbox = {
    dir,
    socket: `${dir}/api.sock`,
    nodeNs: `on${tag}`.slice(0, 15),
    bridge: `ob${tag}`.slice(0, 15),
    underlay: `ou${tag}`.slice(0, 15),
    prefix,
    kube: undefined as unknown as KubeApiServer,
    tokenFile: `${dir}/token`,
    token: crypto.randomUUID(),
    tcpPort: 9650,
    logPath: `${dir}/agent.log`,
    podNetns: [],
  };
  let agent: Deno.ChildProcess | undefined;
  try {
    await must("ip", ["netns", "add", sb.nodeNs]);
    await must("ip", ["link", "add", sb.underlay, "type", "veth", "peer", "name", "eth0", "netns", sb.nodeNs]);
    await must("ip", ["addr", "add", `${prefix}.1/24`, "dev", sb.underlay]);
    await must("ip", ["link", "set", sb.underlay, "up"]);
    for (
      const cmd of [
        ["addr", "add", `${prefix}.2/24`, "dev", "eth0"],
        ["link", "set", "eth0", "up"],
        ["link", "set", "lo", "up"],
      ]
    ) await must("ip", ["-n", sb.nodeNs, ...cmd]);
    sb.kube = await KubeApiServer.start({ hostname: `${prefix}.1`, certIps: [`${prefix}.1`], bookmarkIntervalMs: 0 });
    sb.kube.setNode(
      testNode("n1", { podCIDRs: options.unassigned ? [] : ["10.88.1.0/24"], internalIPs: [`${prefix}.2`] }),
    );
    sb.kube.setNode(testNode("n2", { podCIDRs: ["10.88.2.0/24"], internalIPs: [`${prefix}.3`] }));
    sb.kube.setNode(testNode("n3", { podCIDRs: ["10.88.3.0/24"], internalIPs: ["203.0.113.9"] }));
    Deno.writeTextFileSync(`${dir}/kubeconfig`, sb.kube.kubeconfig());
    Deno.writeTextFileSync(sb.tokenFile, sb.token + "\n", { mode: 0o600 });
    Deno.chmodSync(sb.tokenFile, 0o600);
    const agentArgs = [
      "netns",
      "exec",
      sb.nodeNs,
      PLUGIN,
      "agent",
      "--node-name=n1",
      `--kubeconfig=${dir}/kubeconfig`,
      `--cni-conf-dir=${dir}/net.d`,
      `--cni-bin-dir=${dir}/bin`,
      `--ipam-data-dir=${dir}/ipam`,
      `--api-socket=${sb.socket}`,
      `--bridge=${sb.bridge}`,
      "--cluster-cidr=10.88.0.0/16",
      "--resync-interval=1",
      `--api-listen=127.0.0.1:${sb.tcpPort}`,
      `--api-token-file=${sb.tokenFile}`,
      "--log-level=debug",
    ];
    // The agent logs to stderr; keep it in a file for failure messages.
    const child = new Deno.Command("sh", {
      args: ["-c", 'exec "$@" >>"$LOG" 2>&1', "sh", "ip", ...agentArgs],
      env: { LOG: sb.logPath, PATH: Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin" },
      clearEnv: true,
      stdin: "null",
    }).spawn();
    agent = child;
    await eventually("the agent's socket", () => exists(sb.socket));
    return { sb, agent: child };
  } catch (err) {
    await stopSandbox(sb, agent);
    throw err;
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Waits until `/readyz` answers 200. */
export async function waitReady(sb: Sandbox): Promise<void> {
  await eventually("the agent to be ready", async () => (await apiRequest(sb.socket, "GET", "/readyz")).status === 200);
}

/** Stops the agent and removes everything the sandbox made. */
export async function stopSandbox(sb: Sandbox, agent: Deno.ChildProcess | undefined): Promise<void> {
  if (agent) {
    try {
      agent.kill("SIGTERM");
    } catch { /* already exited */ }
    const timer = setTimeout(() => {
      try {
        agent.kill("SIGKILL");
      } catch { /* exited */ }
    }, 5000);
    await agent.status;
    clearTimeout(timer);
  }
  for (const ns of sb.podNetns) await sh("ip", ["netns", "del", ns]);
  removeNamespaceMarkers(sb.nodeNs);
  await sh("ip", ["netns", "del", sb.nodeNs]);
  await sh("ip", ["link", "del", sb.underlay]);
  await sb.kube?.close();
  try {
    Deno.removeSync(sb.dir, { recursive: true });
  } catch { /* gone */ }
}

/** The agent's log so far (for failure messages). */
export function agentLog(sb: Sandbox): string {
  try {
    return Deno.readTextFileSync(sb.logPath).slice(-4000);
  } catch {
    return "(no log)";
  }
}

/** The plugin config the runtime would pass, from the agent's conflist. */
export function pluginConf(sb: Sandbox): Record<string, unknown> {
  const list = JSON.parse(Deno.readTextFileSync(`${sb.dir}/net.d/10-pontoon.conflist`));
  return { ...list.plugins[0], cniVersion: list.cniVersion, name: list.name };
}

/** Runs the plugin inside the node namespace. */
export async function plugin(
  sb: Sandbox,
  command: string,
  containerId: string,
  netns: string,
  options: { args?: string; conf?: Record<string, unknown> } = {},
) {
  const r = await sh("ip", ["netns", "exec", sb.nodeNs, PLUGIN], {
    stdin: JSON.stringify(options.conf ?? pluginConf(sb)),
    env: {
      CNI_COMMAND: command,
      CNI_CONTAINERID: containerId,
      CNI_NETNS: netns,
      CNI_IFNAME: "eth0",
      CNI_ARGS: options.args ?? "",
      CNI_PATH: "/usr/lib/cni",
    },
  });
  if (r.code !== 0) throw new Error(`plugin ${command} ${containerId}: ${r.stdout} ${r.stderr}`);
  return r.stdout.trim() === "" ? null : JSON.parse(r.stdout);
}

/** Adds a pod: a fresh netns and an ADD with K8S_POD_* args; returns its container id, netns path and result. */
export async function addPod(sb: Sandbox, namespace: string, name: string) {
  const ns = uniq("op");
  await must("ip", ["netns", "add", ns]);
  sb.podNetns.push(ns);
  const containerId = `c${crypto.randomUUID().replaceAll("-", "")}`;
  const netns = `/run/netns/${ns}`;
  const result = await plugin(sb, "ADD", containerId, netns, {
    args:
      `IgnoreUnknown=1;K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=${containerId}`,
  });
  return { ns, netns, containerId, result, hostVeth: hostVethName(containerId, "eth0") };
}

/** True when link `name` exists inside the node namespace. */
export async function nodeLinkExists(sb: Sandbox, name: string): Promise<boolean> {
  return (await sh("ip", ["-n", sb.nodeNs, "link", "show", name])).code === 0;
}
