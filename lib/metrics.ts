/**
 * The agent's metrics and their Prometheus text exposition (format 0.0.4):
 * CNI verb outcomes and latencies as reported by the plugin and reconcile
 * durations (kept here), the agent's own counters (reconciles, errors,
 * route changes, watch restarts: `agentstate.ts`), plus gauges computed on
 * scrape (IPAM pools, routes owned, readiness).
 *
 * @module
 */
import type { AgentCounters } from "./agentstate.ts";

/** Latency buckets in seconds, for CNI verbs and reconciles. */
export const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

/** The verbs whose outcomes the plugin reports. */
export const REPORTED_VERBS = ["ADD", "DEL", "CHECK"] as const;

/** A cumulative histogram with fixed buckets. */
export class Histogram {
  readonly #counts = new Array<number>(LATENCY_BUCKETS.length).fill(0);
  #sum = 0;
  #count = 0;

  /** Records one observation of `seconds`. */
  observe(seconds: number): void {
    this.#sum += seconds;
    this.#count++;
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) if (seconds <= LATENCY_BUCKETS[i]) this.#counts[i]++;
  }

  /** Observations so far. */
  get count(): number {
    return this.#count;
  }

  /** Exposition lines for metric `name` with `labels` (a `k="v"` list, may be empty). */
  lines(name: string, labels: string): string[] {
    const sep = labels === "" ? "" : ",";
    const out = LATENCY_BUCKETS.map((le, i) => `${name}_bucket{${labels}${sep}le="${le}"} ${this.#counts[i]}`);
    out.push(`${name}_bucket{${labels}${sep}le="+Inf"} ${this.#count}`);
    const braces = labels === "" ? "" : `{${labels}}`;
    out.push(`${name}_sum${braces} ${round(this.#sum)}`, `${name}_count${braces} ${this.#count}`);
    return out;
  }
}

function round(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}

/** One IPAM range set's size and use, for the pool gauges. */
export interface PoolGauge {
  /** The set's ranges, e.g. "10.42.1.0/24". */
  range: string;
  size: number;
  used: number;
}

/** Values read at scrape time. */
export interface ScrapeGauges {
  ready: boolean;
  routesOwned: number;
  pools: PoolGauge[];
  /** The agent's counters since it started. */
  counters: AgentCounters;
}

/** A report datagram that is not a valid report. */
export class InvalidReportError extends Error {
  /** Makes an error with `message`. */
  constructor(message: string) {
    super(message);
    this.name = "InvalidReportError";
  }
}

/** What the agent counts. */
export class AgentMetrics {
  readonly #cniCounts = new Map<string, number>();
  readonly #cniLatency = new Map<string, Histogram>();
  readonly #reconcile = new Histogram();
  #invalidReports = 0;

  /** Records one plugin report (a JSON datagram); invalid ones are counted and rejected. */
  recordReport(bytes: Uint8Array): void {
    let doc: unknown;
    try {
      doc = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      this.#invalidReports++;
      throw new InvalidReportError("report is not JSON");
    }
    const r = doc as { verb?: unknown; code?: unknown; ms?: unknown };
    const verb = REPORTED_VERBS.find((v) => v === r?.verb);
    if (
      !verb || !Number.isInteger(r.code) || (r.code as number) < 0 || (r.code as number) > 999 ||
      typeof r.ms !== "number" || !Number.isFinite(r.ms) || r.ms < 0
    ) {
      this.#invalidReports++;
      throw new InvalidReportError(`report ${JSON.stringify(doc).slice(0, 200)} is not {verb, code, ms}`);
    }
    this.recordCni(verb, r.code as number, r.ms / 1000);
  }

  /** Records one CNI verb outcome (code 0 = success) and its latency. */
  recordCni(verb: string, code: number, seconds: number): void {
    const key = `${verb}\0${code === 0 ? "success" : "error"}`;
    this.#cniCounts.set(key, (this.#cniCounts.get(key) ?? 0) + 1);
    let h = this.#cniLatency.get(verb);
    if (!h) this.#cniLatency.set(verb, h = new Histogram());
    h.observe(seconds);
  }

  /** Records the duration of one reconcile pass. */
  recordReconcile(seconds: number): void {
    this.#reconcile.observe(seconds);
  }

  /** The whole exposition text. */
  render(gauges: ScrapeGauges): string {
    const out: string[] = [];
    const family = (name: string, type: string, help: string, lines: string[]) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
    };
    family(
      "pontoon_cni_operations_total",
      "counter",
      "CNI ADD/DEL/CHECK invocations reported by the plugin, by verb and result.",
      REPORTED_VERBS.flatMap((verb) =>
        ["success", "error"].map((result) =>
          `pontoon_cni_operations_total{verb="${verb}",result="${result}"} ${
            this.#cniCounts.get(`${verb}\0${result}`) ?? 0
          }`
        )
      ),
    );
    family(
      "pontoon_cni_operation_duration_seconds",
      "histogram",
      "Wall time of CNI verbs as measured by the plugin (excluding runtime start-up).",
      REPORTED_VERBS.flatMap((verb) =>
        (this.#cniLatency.get(verb) ?? new Histogram()).lines(
          "pontoon_cni_operation_duration_seconds",
          `verb="${verb}"`,
        )
      ),
    );
    family(
      "pontoon_cni_reports_invalid_total",
      "counter",
      "Report datagrams that were not valid reports.",
      [`pontoon_cni_reports_invalid_total ${this.#invalidReports}`],
    );
    family(
      "pontoon_ipam_pool_size",
      "gauge",
      "Addresses the IPAM range set can hand out.",
      gauges.pools.map((p) => `pontoon_ipam_pool_size{range="${escapeLabel(p.range)}"} ${p.size}`),
    );
    family(
      "pontoon_ipam_pool_used",
      "gauge",
      "Addresses of the IPAM range set that are reserved.",
      gauges.pools.map((p) => `pontoon_ipam_pool_used{range="${escapeLabel(p.range)}"} ${p.used}`),
    );
    family("pontoon_routes_owned", "gauge", "Routes to other nodes' pod CIDRs that the agent keeps.", [
      `pontoon_routes_owned ${gauges.routesOwned}`,
    ]);
    family(
      "pontoon_reconcile_duration_seconds",
      "histogram",
      "Duration of reconcile passes.",
      this.#reconcile.lines("pontoon_reconcile_duration_seconds", ""),
    );
    const c = gauges.counters;
    family("pontoon_reconciles_total", "counter", "Reconcile passes that ran to the end.", [
      `pontoon_reconciles_total ${c.reconciles}`,
    ]);
    family("pontoon_reconcile_errors_total", "counter", "Reconcile passes that failed.", [
      `pontoon_reconcile_errors_total ${c.reconcileErrors}`,
    ]);
    family("pontoon_route_changes_total", "counter", "Routes to other nodes added, replaced or removed.", [
      `pontoon_route_changes_total{change="added"} ${c.routesAdded}`,
      `pontoon_route_changes_total{change="replaced"} ${c.routesReplaced}`,
      `pontoon_route_changes_total{change="removed"} ${c.routesRemoved}`,
    ]);
    family("pontoon_route_failures_total", "counter", "Route changes that failed.", [
      `pontoon_route_failures_total ${c.routeFailures}`,
    ]);
    family(
      "pontoon_kube_watch_restarts_total",
      "counter",
      "Restarts of the Kubernetes Node watch: expired resource versions (410 Gone) and API errors.",
      [`pontoon_kube_watch_restarts_total ${c.expired + c.apiErrors}`],
    );
    family("pontoon_kube_watch_expired_total", "counter", "Node watches that expired with 410 Gone.", [
      `pontoon_kube_watch_expired_total ${c.expired}`,
    ]);
    family("pontoon_kube_api_errors_total", "counter", "Failed requests to the Kubernetes API.", [
      `pontoon_kube_api_errors_total ${c.apiErrors}`,
    ]);
    family("pontoon_kube_node_lists_total", "counter", "Full Node lists.", [
      `pontoon_kube_node_lists_total ${c.lists}`,
    ]);
    family("pontoon_kube_node_events_total", "counter", "Node watch events applied.", [
      `pontoon_kube_node_events_total ${c.events}`,
    ]);
    family("pontoon_conflist_writes_total", "counter", "Conflist writes (only when its content changed).", [
      `pontoon_conflist_writes_total ${c.conflistWrites}`,
    ]);
    family("pontoon_agent_ready", "gauge", "1 when the node is synced (what /readyz reports).", [
      `pontoon_agent_ready ${gauges.ready ? 1 : 0}`,
    ]);
    return out.join("\n") + "\n";
  }
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}
