/**
 * The node agent's state as plain data: what `/readyz` answers and what
 * the REST API and metrics read. One snapshot type, no behaviour, so the
 * API module depends on this file and not on the agent's internals.
 *
 * @module
 */

/** A route the agent holds to another node's pod CIDR. */
export interface AgentRoute {
  /** The node owning `dst`. */
  node: string;
  /** The pod CIDR, e.g. "10.244.2.0/24". */
  dst: string;
  /** The node's InternalIP the route goes via. */
  via: string;
}

/** A Node as the agent last saw it in the API. */
export interface AgentNode {
  name: string;
  /** `spec.podCIDRs` as given (not validated; see `problems`). */
  podCIDRs: string[];
  /** InternalIP addresses as given. */
  internalIPs: string[];
}

/** Something wrong with a Node that keeps it (or one of its CIDRs) from a route. */
export interface AgentProblem {
  node: string;
  problem: string;
}

/** Monotonic counters since the agent started (for metrics). */
export interface AgentCounters {
  /** Reconcile passes that ran to the end. */
  reconciles: number;
  /** Reconcile passes that threw. */
  reconcileErrors: number;
  /** Routes added, replaced (gateway moved or put back) and removed. */
  routesAdded: number;
  routesReplaced: number;
  routesRemoved: number;
  /** `ip route` changes that failed. */
  routeFailures: number;
  /** Full lists of Nodes (first one, after 410 Gone, after errors). */
  lists: number;
  /** Watch events applied (ADDED, MODIFIED, DELETED). */
  events: number;
  /** Watches that expired with 410 Gone. */
  expired: number;
  /** Failed requests to the Kubernetes API. */
  apiErrors: number;
  /** Conflist writes (only when its content changed). */
  conflistWrites: number;
}

/**
 * A snapshot of the agent. `ready` is true once the conflist is written
 * and routes have been reconciled at least once; it stays true while the
 * API is away (the last view stays in force), with `apiError` saying why.
 */
export type AgentState = {
  ready: boolean;
  /** "synced", or why the node is not ready. */
  reason: string;
  /** This node's name. */
  node: string;
  /** The API server URL the agent talks to. */
  apiServer: string;
  /** This node's pod CIDRs (once known). */
  podCIDRs: string[];
  /** The conflist path once written, else null. */
  conflist: string | null;
  /** Routes to other nodes, as last reconciled. */
  routes: AgentRoute[];
  /** Nodes that get no route, and why. */
  problems: AgentProblem[];
  /** How many Nodes the agent knows (including itself). */
  nodesKnown: number;
  /** The Nodes the agent knows, sorted by name. */
  nodes: AgentNode[];
  /** The last Kubernetes API failure, cleared once it answers again. */
  apiError: string | null;
  /** ISO time of the last complete reconcile, else null. */
  lastSync: string | null;
  /** ISO time the agent started. */
  startedAt: string;
  counters: AgentCounters;
};

/** What the REST API reads the agent through. */
export interface AgentStateSource {
  /** A fresh snapshot (cheap: no system calls). */
  state(): AgentState;
}

/** Counters all at zero. */
export function zeroCounters(): AgentCounters {
  return {
    reconciles: 0,
    reconcileErrors: 0,
    routesAdded: 0,
    routesReplaced: 0,
    routesRemoved: 0,
    routeFailures: 0,
    lists: 0,
    events: 0,
    expired: 0,
    apiErrors: 0,
    conflistWrites: 0,
  };
}
