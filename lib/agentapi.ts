/**
 * What the agent shows through its REST API: plain JSON views built from
 * the agent's state and options (`api.ts` serves them). Kept apart from
 * the control loop so the API can grow without touching it.
 *
 * @module
 */
import { type Cidr, formatCidr, parseCidr } from "./addr.ts";
import type { IpamView } from "./allocations.ts";
import type { AgentState } from "./agentstate.ts";
import type { ApiSource } from "./api.ts";
import type { BuiltinIpam } from "./config.ts";
import { loadNetConf } from "./config.ts";
import { buildConflist, CONFLIST_FILE } from "./conflist.ts";
import type { AgentMetrics } from "./metrics.ts";
import { defaultRouteMtu } from "./sysfs.ts";
import { VERSION } from "./version.ts";
import type { AgentOptions } from "./agent.ts";

/** The parts of the agent the API reads. */
export interface AgentView {
  state(): AgentState;
  readonly metrics: AgentMetrics;
}

/** The API source for an agent with `options`. */
export function agentApiSource(agent: AgentView, options: AgentOptions): ApiSource {
  return {
    readiness: () => agent.state(),
    status: () => {
      const r = agent.state();
      let mtu: number | null = options.mtu ?? null;
      if (mtu === null) {
        try {
          mtu = defaultRouteMtu();
        } catch { /* no default route */ }
      }
      return {
        version: VERSION,
        node: options.nodeName,
        ready: r.ready,
        reason: r.reason,
        podCIDRs: r.podCIDRs,
        clusterCIDRs: options.clusterCidrs.map(formatCidr),
        bridge: options.bridge,
        mtu,
        conflist: r.conflist,
        routes: r.routes.length,
        problems: r.problems,
        nodesKnown: r.nodesKnown,
        apiServer: r.apiServer,
        apiError: r.apiError,
        lastSync: r.lastSync,
        startedAt: r.startedAt,
      };
    },
    nodes: () => {
      const { nodes, problems } = agent.state();
      return nodes.map((node) => ({
        ...node,
        self: node.name === options.nodeName,
        problems: problems.filter((p) => p.node === node.name).map((p) => p.problem),
      }));
    },
    routes: () => agent.state().routes,
    config: () => ({
      nodeName: options.nodeName,
      kubeconfig: options.kubeconfig ?? null,
      cniConfDir: options.cniConfDir,
      cniBinDir: options.cniBinDir,
      conflist: `${options.cniConfDir}/${CONFLIST_FILE}`,
      ipamDataDir: options.ipamDataDir,
      clusterCIDRs: options.clusterCidrs.map(formatCidr),
      apiSocket: options.apiSocket,
      bridge: options.bridge,
      mtu: options.mtu ?? null,
      resyncSeconds: options.resyncSeconds,
      conflistVersion: options.conflistVersion,
      apiListen: options.apiListen ? `${options.apiListen.hostname}:${options.apiListen.port}` : null,
    }),
    ipam: () => ipamViewOf(agent.state().podCIDRs, options),
    counters: () => agent.state().counters,
    metrics: () => agent.metrics,
  };
}

/** The IPAM store and ranges the plugin uses under this agent's conflist; null without pod CIDRs. */
export function ipamViewOf(podCidrTexts: string[], options: AgentOptions): IpamView | null {
  if (podCidrTexts.length === 0) return null;
  const doc = buildConflist({
    podCidrs: podCidrTexts.map((t) => parseCidrOrThrow(t)),
    ipamDataDir: options.ipamDataDir,
    bridge: options.bridge,
  });
  const plugin = (doc.plugins as Record<string, unknown>[])[0];
  const conf = loadNetConf({ ...plugin, cniVersion: doc.cniVersion, name: doc.name });
  const ipam = conf.ipam as BuiltinIpam;
  return { network: conf.name, dataDir: ipam.dataDir, rangeSets: ipam.rangeSets };
}

function parseCidrOrThrow(text: string): Cidr {
  const cidr = parseCidr(text);
  if (!cidr) throw new Error(`pod CIDR ${text} is not a CIDR`);
  return cidr;
}
