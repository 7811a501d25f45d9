/**
 * The scenarios. Each one drives every plugin the same way, interleaved so
 * that machine noise lands on both, records figures, and checks correctness
 * as it goes: unique addresses that really sit on the pods' `eth0`, pods
 * that reach each other, and nothing of a pod left after its DEL.
 *
 * @module
 */

import {
  addNetns,
  bridgePorts,
  deleteLink,
  deleteNetns,
  inSubnet,
  ipamLeftovers,
  type Markers,
  matchRuleset,
  netnsAddresses,
  netnsHasLink,
  netnsPath,
  nodeStateFiles,
  ping,
  pool,
  readRuleset,
  removeFirewall,
  run,
  type SubnetAllocator,
} from "./host.ts";
import {
  type CniCall,
  type CniOutcome,
  describeFailure,
  invokePlugin,
  type NetworkSpec,
  type Plugin,
  requestConfig,
} from "./plugins.ts";
import { median, percentile, type Recorder, type Slot } from "./report.ts";

/** Scenario ids, in run order; `--only` takes a comma list of these. */
export const SCENARIOS = [
  "sequential",
  "concurrent",
  "many",
  "startup",
  "throughput",
  "rss",
] as const;

/** A scenario id. */
export type ScenarioId = typeof SCENARIOS[number];

/** Counts and switches for a run. */
export interface BenchOptions {
  /** Pods ADDed one at a time (sequential) and in the concurrent scenario. */
  pods: number;
  /** Parallel calls in the concurrent scenario. */
  concurrency: number;
  /** Pods on one node in the `many` scenario. */
  many: number;
  /** Parallel calls in the `many` scenario. */
  manyConcurrency: number;
  /** Pods in each of the first/last windows of the `many` scenario. */
  window: number;
  /** STATUS and VERSION calls per plugin. */
  calls: number;
  /** iperf3 test length. */
  iperfSeconds: number;
  /** iperf3 rounds per path (plugins' bridges and the veth pair alternate); medians are reported. */
  iperfReps: number;
  /** ADD/DEL calls measured for peak RSS, per plugin. */
  rssSamples: number;
  /** Repetitions of the concurrent wall-time scenario, per plugin. */
  reps: number;
  /** Masquerade modes to run the pod scenarios in. */
  masq: boolean[];
  /** Scenarios to run. */
  only: ScenarioId[];
}

/** A plugin in its table slot. */
export interface SlotPlugin {
  slot: Slot;
  plugin: Plugin;
}

/** Shared state of one run. */
export interface BenchContext {
  runId: string;
  tmpDir: string;
  subnets: SubnetAllocator;
  rec: Recorder;
  options: BenchOptions;
  plugins: SlotPlugin[];
  /** Everything the run created, for the final clean-up and residue check. */
  markers: Markers;
  log: (message: string) => void;
  /** Set by SIGINT; scenarios stop at their next step. */
  aborted: boolean;
  /** Counter for unique names. */
  serial: number;
}

/** A pod: a fresh named netns and what the plugin gave it. */
export interface Pod {
  /** Container id, also the netns name. */
  id: string;
  netns: string;
  /** The ADD result, once added. */
  result?: unknown;
  /** Pod IPv4 address without prefix. */
  ip?: string;
  added: boolean;
}

/** Alternates the order per repetition so neither plugin always goes first. */
export function ordered<T>(items: readonly T[], repetition: number): T[] {
  return repetition % 2 === 0 ? [...items] : [...items].reverse();
}

function checkAbort(ctx: BenchContext): void {
  if (ctx.aborted) throw new Error("interrupted");
}

function masqLabel(masq: boolean): string {
  return masq ? "masq on" : "masq off";
}

function firstAddress(result: unknown): { ip?: string; gateway?: string } {
  const ips = (result as { ips?: { address?: string; gateway?: string }[] })
    ?.ips;
  const first = Array.isArray(ips) ? ips[0] : undefined;
  return { ip: first?.address?.split("/")[0], gateway: first?.gateway };
}

/**
 * One plugin's network for one scenario: its bridge, subnet, IPAM dir and
 * pods. `destroy()` removes all of it whatever state it is in.
 */
export class TestNetwork {
  readonly ctx: BenchContext;
  readonly slot: Slot;
  readonly plugin: Plugin;
  readonly spec: NetworkSpec;
  readonly scenario: string;
  readonly pods: Pod[] = [];
  readonly #tag: string;

  private constructor(
    ctx: BenchContext,
    sp: SlotPlugin,
    scenario: string,
    spec: NetworkSpec,
    tag: string,
  ) {
    this.ctx = ctx;
    this.slot = sp.slot;
    this.plugin = sp.plugin;
    this.scenario = scenario;
    this.spec = spec;
    this.#tag = tag;
  }

  /** Allocates names, a subnet and an empty IPAM dir. */
  static async create(
    ctx: BenchContext,
    sp: SlotPlugin,
    scenario: string,
    ipMasq: boolean,
  ): Promise<TestNetwork> {
    const n = ++ctx.serial;
    const tag = `${sp.slot[0]}${n}`;
    const spec: NetworkSpec = {
      name: `pbench-${ctx.runId}-${tag}`,
      bridge: `pb${ctx.runId}${tag}`,
      subnet: ctx.subnets.allocate(),
      ipMasq,
      dataDir: `${ctx.tmpDir}/${tag}`,
    };
    await Deno.mkdir(spec.dataDir, { recursive: true });
    ctx.markers.words.push(spec.subnet);
    return new TestNetwork(ctx, sp, scenario, spec, tag);
  }

  /** The conflist both the plugin and the report see. */
  get conflist() {
    return this.plugin.conflist(this.spec);
  }

  /** Creates `count` pods with fresh netns (one `ip -batch`). */
  async makePods(count: number): Promise<Pod[]> {
    const start = this.pods.length;
    const made: Pod[] = Array.from({ length: count }, (_, i) => {
      const id = `pbench-${this.ctx.runId}-${this.#tag}-${String(start + i).padStart(4, "0")}`;
      return { id, netns: netnsPath(id), added: false };
    });
    this.pods.push(...made);
    for (const p of made) this.ctx.markers.words.push(p.id);
    await addNetns(made.map((p) => p.id));
    for (const p of made) {
      this.ctx.markers.names.push(
        ...await this.plugin.podFirewallNames(this.spec, p.id),
      );
    }
    return made;
  }

  #call(command: CniCall["command"], pod: Pod, prevResult?: unknown): CniCall {
    return {
      command,
      config: requestConfig(this.conflist, prevResult),
      containerId: pod.id,
      netns: pod.netns,
      ifname: "eth0",
    };
  }

  #fail(call: CniCall, outcome: CniOutcome): void {
    this.ctx.rec.problem(this.scenario, this.plugin.name, describeFailure(call, outcome));
  }

  /** ADDs a pod; returns the outcome (failures are recorded as problems). */
  async add(pod: Pod, options: { rss?: boolean } = {}): Promise<CniOutcome> {
    const call = this.#call("ADD", pod);
    const outcome = await invokePlugin(this.plugin, call, options);
    if (!outcome.ok || outcome.json === undefined) {
      this.#fail(call, outcome);
      return { ...outcome, ok: false };
    }
    pod.added = true;
    pod.result = outcome.json;
    pod.ip = firstAddress(outcome.json).ip;
    if (pod.ip) this.ctx.markers.ips.push(pod.ip);
    return outcome;
  }

  /** CHECKs a pod against its ADD result. */
  async check(pod: Pod): Promise<CniOutcome> {
    const call = this.#call("CHECK", pod, pod.result);
    const outcome = await invokePlugin(this.plugin, call);
    if (!outcome.ok) this.#fail(call, outcome);
    return outcome;
  }

  /** DELs a pod, with its netns still present and its ADD result. */
  async del(pod: Pod, options: { rss?: boolean } = {}): Promise<CniOutcome> {
    const call = this.#call("DEL", pod, pod.result);
    const outcome = await invokePlugin(this.plugin, call, options);
    if (outcome.ok) pod.added = false;
    else this.#fail(call, outcome);
    return outcome;
  }

  /**
   * After ADD: addresses are unique, inside the subnet, not the gateway,
   * and really on each pod's eth0; every pod reaches the next one (a ring,
   * so each pod both sends and answers).
   */
  async verifyAdded(): Promise<void> {
    const { rec } = this.ctx;
    const name = this.plugin.name;
    const added = this.pods.filter((p) => p.added);
    rec.check(
      this.scenario,
      name,
      `all ${this.pods.length} ADDs succeeded`,
      added.length === this.pods.length,
      `${this.pods.length - added.length} failed`,
    );
    const seen = new Map<string, string>();
    const dups: string[] = [];
    const bad: string[] = [];
    for (const p of added) {
      const { ip, gateway } = firstAddress(p.result);
      if (!ip) {
        bad.push(`${p.id}: no address in result`);
        continue;
      }
      if (seen.has(ip)) dups.push(`${ip} (${seen.get(ip)}, ${p.id})`);
      seen.set(ip, p.id);
      if (!inSubnet(ip, this.spec.subnet) || ip === gateway) {
        bad.push(`${p.id}: ${ip} outside ${this.spec.subnet} or the gateway`);
      }
    }
    rec.check(this.scenario, name, "no duplicate addresses", dups.length === 0, dups.slice(0, 5).join(", "));
    const missing: string[] = [];
    await pool(added, 10, async (p) => {
      const addrs = await netnsAddresses(p.id, "eth0");
      if (!addrs?.some((a) => a.split("/")[0] === p.ip)) {
        missing.push(`${p.id}: eth0 has ${JSON.stringify(addrs)}, result says ${p.ip}`);
      }
    });
    bad.push(...missing);
    rec.check(
      this.scenario,
      name,
      "result addresses are on the pods' eth0",
      bad.length === 0,
      bad.slice(0, 5).join("; "),
    );
    const withIp = added.filter((p) => p.ip);
    const unreachable: string[] = [];
    if (withIp.length >= 2) {
      await pool(withIp, 10, async (p, i) => {
        const peer = withIp[(i + 1) % withIp.length];
        if (!await ping(p.id, peer.ip!)) unreachable.push(`${p.ip}→${peer.ip}`);
      });
    } else if (withIp.length === 1) {
      const gw = firstAddress(withIp[0].result).gateway;
      if (gw && !await ping(withIp[0].id, gw)) unreachable.push(`→${gw}`);
    }
    rec.check(
      this.scenario,
      name,
      "pods reach each other (ping ring)",
      unreachable.length === 0,
      `${unreachable.length} unreachable: ${unreachable.slice(0, 5).join(", ")}`,
    );
  }

  /**
   * After DEL: no port left on the bridge, no eth0 left in any pod netns,
   * no IPAM record naming a pod, no firewall object naming a pod.
   */
  async verifyDeleted(): Promise<void> {
    const { rec } = this.ctx;
    const name = this.plugin.name;
    const notDeleted = this.pods.filter((p) => p.added).length;
    rec.check(this.scenario, name, "all DELs succeeded", notDeleted === 0, `${notDeleted} failed`);
    const ports = await bridgePorts(this.spec.bridge);
    rec.check(this.scenario, name, "no veth left on the bridge", ports.length === 0, ports.slice(0, 5).join(", "));
    const stale: string[] = [];
    await pool(this.pods, 10, async (p) => {
      if (await netnsHasLink(p.id, "eth0")) stale.push(p.id);
    });
    rec.check(this.scenario, name, "no eth0 left in pod netns", stale.length === 0, stale.slice(0, 5).join(", "));
    const ipam = await ipamLeftovers(this.spec.dataDir, this.pods);
    rec.check(this.scenario, name, "no IPAM reservation left", ipam.length === 0, ipam.slice(0, 5).join(", "));
    const names = (await Promise.all(
      this.pods.map((p) => this.plugin.podFirewallNames(this.spec, p.id)),
    )).flat();
    const rules = matchRuleset(await readRuleset(), {
      words: this.pods.map((p) => p.id),
      ips: this.pods.map((p) => p.ip).filter((ip): ip is string => !!ip),
      names,
    });
    rec.check(
      this.scenario,
      name,
      "no firewall rule left for a pod",
      rules.length === 0,
      rules.slice(0, 3).map((r) => `${r.family} ${r.table} ${r.chain ?? r.set ?? ""}: ${r.text}`).join("; "),
    );
  }

  /**
   * Removes everything: DELs pods still added (netns present, so the
   * plugin can clean its per-pod rules), deletes the netns, the firewall
   * objects naming this network or its pods, the bridge, the IPAM dir and
   * Pontoon's node markers for the bridge and network.
   */
  async destroy(): Promise<void> {
    await pool(this.pods.filter((p) => p.added), 10, async (p) => {
      await invokePlugin(this.plugin, this.#call("DEL", p, p.result)).catch(() => {});
    });
    await deleteNetns(this.pods.map((p) => p.id));
    const names = (await Promise.all(
      this.pods.map((p) => this.plugin.podFirewallNames(this.spec, p.id)),
    )).flat();
    await removeFirewall({
      words: [this.spec.name, this.spec.bridge, this.spec.subnet, ...this.pods.map((p) => p.id)],
      ips: this.pods.map((p) => p.ip).filter((ip): ip is string => !!ip),
      names,
    });
    await deleteLink(this.spec.bridge);
    await Deno.remove(this.spec.dataDir, { recursive: true }).catch(() => {});
    // Pontoon's markers for the bridge and network (harmless once the
    // bridge is gone, but the run should leave nothing).
    for (const f of await nodeStateFiles(this.spec.bridge, this.spec.name)) await Deno.remove(f).catch(() => {});
  }
}

/** Runs `body` on one network per plugin and always destroys them. */
async function withNetworks(
  ctx: BenchContext,
  plugins: SlotPlugin[],
  scenario: string,
  ipMasq: boolean,
  body: (nets: TestNetwork[]) => Promise<void>,
): Promise<void> {
  const nets: TestNetwork[] = [];
  try {
    for (const sp of plugins) nets.push(await TestNetwork.create(ctx, sp, scenario, ipMasq));
    await body(nets);
  } catch (e) {
    ctx.rec.problem(scenario, "bench", `aborted: ${(e as Error).message}`);
    if (ctx.aborted) throw e;
  } finally {
    for (const net of nets) await net.destroy();
  }
}

/**
 * ADD, CHECK and DEL latency over `pods` pods one at a time. The plugins
 * alternate per pod (ABBA…), each on its own bridge on the same host.
 */
export async function sequentialScenario(ctx: BenchContext, ipMasq: boolean): Promise<void> {
  const scenario = "sequential";
  const { pods } = ctx.options;
  await withNetworks(ctx, ctx.plugins, scenario, ipMasq, async (nets) => {
    const times = new Map<TestNetwork, Record<"ADD" | "CHECK" | "DEL", number[]>>(
      nets.map((n) => [n, { ADD: [], CHECK: [], DEL: [] }]),
    );
    for (const net of nets) await net.makePods(pods);
    for (let i = 0; i < pods; i++) {
      checkAbort(ctx);
      for (const net of ordered(nets, i)) {
        const pod = net.pods[i];
        const add = await net.add(pod);
        if (!add.ok) continue;
        times.get(net)!.ADD.push(add.ms);
        const check = await net.check(pod);
        if (check.ok) times.get(net)!.CHECK.push(check.ms);
      }
    }
    for (const net of nets) await net.verifyAdded();
    for (let i = 0; i < pods; i++) {
      checkAbort(ctx);
      for (const net of ordered(nets, i)) {
        if (!net.pods[i].added) continue;
        const del = await net.del(net.pods[i]);
        if (del.ok) times.get(net)!.DEL.push(del.ms);
      }
    }
    for (const net of nets) await net.verifyDeleted();
    for (const net of nets) {
      const t = times.get(net)!;
      for (const verb of ["ADD", "CHECK", "DEL"] as const) {
        ctx.rec.sample(`${scenario}/${verb} ${masqLabel(ipMasq)}/${net.slot}`, t[verb]);
        for (const p of [50, 95]) {
          ctx.rec.figure(
            scenario,
            `${verb} p${p}, ${pods} pods one at a time, ${masqLabel(ipMasq)}`,
            "ms",
            net.slot,
            percentile(t[verb], p),
          );
        }
      }
    }
  });
}

/**
 * Brings `count` pods up and down on a fresh network at `concurrency`;
 * returns wall times and per-ADD latencies in start order.
 */
async function burst(
  ctx: BenchContext,
  net: TestNetwork,
  count: number,
  concurrency: number,
): Promise<{ addWall: number; delWall: number; addMs: number[] }> {
  const pods = await net.makePods(count);
  const addMs: number[] = new Array(count).fill(NaN);
  checkAbort(ctx);
  let start = performance.now();
  await pool(pods, concurrency, async (pod, i) => {
    const out = await net.add(pod);
    if (out.ok) addMs[i] = out.ms;
  });
  const addWall = (performance.now() - start) / 1000;
  await net.verifyAdded();
  checkAbort(ctx);
  start = performance.now();
  await pool(pods, concurrency, async (pod) => {
    if (pod.added) await net.del(pod);
  });
  const delWall = (performance.now() - start) / 1000;
  await net.verifyDeleted();
  return { addWall, delWall, addMs };
}

/**
 * Wall time for `pods` pods at `concurrency`, ADD then DEL, `reps` times
 * (median). Which plugin goes first alternates per repetition and per
 * masquerade mode.
 */
export async function concurrentScenario(
  ctx: BenchContext,
  ipMasq: boolean,
  repetition: number,
): Promise<void> {
  const scenario = "concurrent";
  const { pods, concurrency, reps } = ctx.options;
  const walls = new Map<Slot, { add: number[]; del: number[] }>();
  for (let rep = 0; rep < reps; rep++) {
    for (const sp of ordered(ctx.plugins, repetition + rep)) {
      checkAbort(ctx);
      await withNetworks(ctx, [sp], scenario, ipMasq, async ([net]) => {
        const r = await burst(ctx, net, pods, concurrency);
        const w = walls.get(sp.slot) ?? { add: [], del: [] };
        w.add.push(r.addWall);
        w.del.push(r.delWall);
        walls.set(sp.slot, w);
      });
    }
  }
  for (const [slot, w] of walls) {
    const what = `${pods} pods at concurrency ${concurrency}, ${masqLabel(ipMasq)}`;
    ctx.rec.figure(scenario, `ADD wall, ${what}`, "s", slot, median(w.add));
    ctx.rec.figure(scenario, `DEL wall, ${what}`, "s", slot, median(w.del));
  }
}

/**
 * `many` pods on one node at `manyConcurrency`: wall time, and ADD p50 of
 * the last `window` pods against the first `window` (growth with pods on
 * the node).
 */
export async function manyScenario(
  ctx: BenchContext,
  ipMasq: boolean,
  repetition: number,
): Promise<void> {
  const scenario = "many";
  const { many, manyConcurrency } = ctx.options;
  const window = Math.max(1, Math.min(ctx.options.window, Math.floor(many / 2)));
  for (const sp of ordered(ctx.plugins, repetition)) {
    checkAbort(ctx);
    await withNetworks(ctx, [sp], scenario, ipMasq, async ([net]) => {
      const r = await burst(ctx, net, many, manyConcurrency);
      const first = r.addMs.slice(0, window).filter((v) => !Number.isNaN(v));
      const last = r.addMs.slice(-window).filter((v) => !Number.isNaN(v));
      const what = `${many} pods at concurrency ${manyConcurrency}, ${masqLabel(ipMasq)}`;
      ctx.rec.sample(`${scenario}/ADD ${masqLabel(ipMasq)}/${sp.slot}`, r.addMs);
      ctx.rec.figure(scenario, `ADD wall, ${what}`, "s", sp.slot, r.addWall);
      ctx.rec.figure(scenario, `DEL wall, ${what}`, "s", sp.slot, r.delWall);
      const p50First = percentile(first, 50);
      const p50Last = percentile(last, 50);
      ctx.rec.figure(scenario, `ADD p50 first ${window}, ${what}`, "ms", sp.slot, p50First);
      ctx.rec.figure(scenario, `ADD p50 last ${window}, ${what}`, "ms", sp.slot, p50Last);
      ctx.rec.figure(scenario, `ADD growth last/first, ${what}`, "x", sp.slot, p50Last / p50First);
    });
  }
}

/**
 * STATUS and VERSION latency: process start-up plus the least work a verb
 * does. Calls alternate between the plugins.
 */
export async function startupScenario(ctx: BenchContext): Promise<void> {
  const scenario = "startup";
  const { calls } = ctx.options;
  await withNetworks(ctx, ctx.plugins, scenario, false, async (nets) => {
    const times = new Map<TestNetwork, { VERSION: number[]; STATUS: number[] }>(
      nets.map((n) => [n, { VERSION: [], STATUS: [] }]),
    );
    const statusCodes = new Map<TestNetwork, Set<number>>(nets.map((n) => [n, new Set()]));
    const versionBad = new Map<TestNetwork, string[]>(nets.map((n) => [n, []]));
    for (let i = 0; i < calls; i++) {
      checkAbort(ctx);
      for (const net of ordered(nets, i)) {
        const version = await invokePlugin(net.plugin, {
          command: "VERSION",
          config: { cniVersion: net.conflist.cniVersion },
        });
        const supported = (version.json as { supportedVersions?: string[] })?.supportedVersions;
        if (version.ok && supported?.includes(net.conflist.cniVersion)) {
          times.get(net)!.VERSION.push(version.ms);
        } else {
          versionBad.get(net)!.push(`exit ${version.exitCode}: ${version.stdout.trim().slice(0, 200)}`);
        }
        const status = await invokePlugin(net.plugin, {
          command: "STATUS",
          config: requestConfig(net.conflist),
        });
        times.get(net)!.STATUS.push(status.ms);
        const code = status.ok ? 0 : (status.json as { code?: number })?.code ?? -status.exitCode;
        statusCodes.get(net)!.add(code);
      }
    }
    for (const net of nets) {
      const bad = versionBad.get(net)!;
      ctx.rec.check(
        scenario,
        net.plugin.name,
        `VERSION lists the config's cniVersion ${net.conflist.cniVersion}`,
        bad.length === 0,
        bad[0],
      );
      const codes = [...statusCodes.get(net)!];
      if (net.plugin.supportsStatus) {
        ctx.rec.check(
          scenario,
          net.plugin.name,
          "STATUS succeeds or reports code 50/51",
          codes.every((c) => c === 0 || c === 50 || c === 51),
          `codes ${codes.join(",")}`,
        );
        if (codes.some((c) => c !== 0)) {
          ctx.rec.note(`${net.plugin.name} STATUS answered code ${codes.join("/")} (not ready) in the bench.`);
        }
      } else {
        ctx.rec.note(
          `${net.plugin.name} (${net.plugin.label}) has no STATUS verb (CNI ≤ 1.0.0); its STATUS figure is start-up plus its error path (code ${
            codes.join("/")
          }).`,
        );
      }
      const t = times.get(net)!;
      for (const verb of ["STATUS", "VERSION"] as const) {
        ctx.rec.sample(`${scenario}/${verb}/${net.slot}`, t[verb]);
        for (const p of [50, 95]) {
          ctx.rec.figure(scenario, `${verb} p${p}, ${calls} calls`, "ms", net.slot, percentile(t[verb], p));
        }
      }
    }
  });
}

/** Runs one iperf3 TCP test from `clientNs` to a server in `serverNs`. */
export async function iperf(
  serverNs: string,
  serverIp: string,
  clientNs: string,
  seconds: number,
): Promise<number> {
  const server = new Deno.Command("ip", {
    args: ["netns", "exec", serverNs, "iperf3", "-s", "-1", "-B", serverIp],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    for (let attempt = 0; attempt < 50; attempt++) {
      const out = await run(
        "ip",
        ["netns", "exec", clientNs, "iperf3", "-c", serverIp, "-t", String(seconds), "-J"],
        { allowFail: true },
      );
      let json: { error?: string; end?: { sum_received?: { bits_per_second?: number } } } = {};
      try {
        json = JSON.parse(out.stdout);
      } catch {
        // Not JSON: judged by the exit code and text below.
      }
      const bps = json.end?.sum_received?.bits_per_second;
      if (out.code === 0 && bps !== undefined) return bps;
      if (!/refused|unable to connect/i.test(json.error ?? out.stdout + out.stderr)) {
        throw new Error(
          `iperf3 failed (exit ${out.code}): ${(json.error ?? out.stdout + out.stderr).trim().slice(0, 300)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("iperf3 server never came up");
  } finally {
    try {
      server.kill("SIGTERM");
    } catch {
      // Already exited after its one test (-1).
    }
    await server.status;
  }
}

/** Two namespaces joined by a plain veth pair: the baseline path. */
async function vethPair(
  ctx: BenchContext,
): Promise<{ server: string; serverIp: string; client: string; remove(): Promise<void> }> {
  const n = ++ctx.serial;
  const a = `pbench-${ctx.runId}-v${n}-a`;
  const b = `pbench-${ctx.runId}-v${n}-b`;
  ctx.markers.words.push(a, b);
  const [base] = ctx.subnets.allocate().split("/");
  const prefix = base.split(".").slice(0, 3).join(".");
  const remove = () => deleteNetns([a, b]);
  try {
    await addNetns([a, b]);
    await run("ip", ["link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0", "netns", b]);
    for (const [ns, host] of [[a, 1], [b, 2]] as const) {
      await run("ip", ["-n", ns, "-batch", "-"], {
        stdin: `addr add ${prefix}.${host}/24 dev eth0\nlink set eth0 up\nlink set lo up\n`,
      });
    }
  } catch (e) {
    await remove();
    throw e;
  }
  return { server: a, serverIp: `${prefix}.1`, client: b, remove };
}

/**
 * Pod-to-pod TCP throughput across one bridge per plugin, against a plain
 * veth pair: all three paths exist at once and take turns (`iperfReps`
 * rounds, order alternating), so machine noise lands on each; medians.
 */
export async function throughputScenario(
  ctx: BenchContext,
  ipMasq: boolean,
  repetition: number,
): Promise<void> {
  const scenario = "throughput";
  const secs = ctx.options.iperfSeconds;
  await withNetworks(ctx, ctx.plugins, scenario, ipMasq, async (nets) => {
    const paths: { slot?: Slot; server: string; serverIp: string; client: string; gbps: number[] }[] = [];
    for (const net of nets) {
      const [server, client] = await net.makePods(2);
      for (const pod of [server, client]) await net.add(pod);
      await net.verifyAdded();
      if (!server.ip || !client.ip) throw new Error(`${net.slot}: pods have no address`);
      paths.push({ slot: net.slot, server: server.id, serverIp: server.ip, client: client.id, gbps: [] });
    }
    const veth = await vethPair(ctx);
    try {
      paths.push({ ...veth, gbps: [] });
      for (let rep = 0; rep < ctx.options.iperfReps; rep++) {
        for (const path of ordered(paths, repetition + rep)) {
          checkAbort(ctx);
          path.gbps.push((await iperf(path.server, path.serverIp, path.client, secs)) / 1e9);
        }
      }
    } finally {
      await veth.remove();
    }
    for (const net of nets) {
      for (const pod of net.pods) await net.del(pod);
      await net.verifyDeleted();
    }
    const vethGbps = median(paths[paths.length - 1].gbps);
    const what = `iperf3 ${secs} s × ${ctx.options.iperfReps}, ${masqLabel(ipMasq)}`;
    for (const path of paths) {
      if (!path.slot) continue;
      const bridged = median(path.gbps);
      ctx.rec.sample(`${scenario}/Gbit/s ${masqLabel(ipMasq)}/${path.slot}`, path.gbps);
      ctx.rec.figure(scenario, `pod→pod over the bridge, ${what}`, "Gbit/s", path.slot, bridged);
      ctx.rec.figure(scenario, `plain veth pair, same rounds, ${what}`, "Gbit/s", path.slot, vethGbps);
      ctx.rec.figure(scenario, `bridge as % of veth, ${what}`, "%", path.slot, (100 * bridged) / vethGbps);
    }
    ctx.rec.sample(`${scenario}/Gbit/s ${masqLabel(ipMasq)}/veth`, paths[paths.length - 1].gbps);
  });
}

/** Peak RSS of one plugin process for ADD and DEL (under GNU time). */
export async function rssScenario(ctx: BenchContext): Promise<void> {
  const scenario = "rss";
  const samples = ctx.options.rssSamples;
  await withNetworks(ctx, ctx.plugins, scenario, false, async (nets) => {
    for (const net of nets) await net.makePods(samples);
    const peaks = new Map<TestNetwork, { ADD: number[]; DEL: number[] }>(
      nets.map((n) => [n, { ADD: [], DEL: [] }]),
    );
    for (let i = 0; i < samples; i++) {
      checkAbort(ctx);
      for (const net of ordered(nets, i)) {
        const add = await net.add(net.pods[i], { rss: true });
        if (add.ok && add.maxRssKiB !== undefined) peaks.get(net)!.ADD.push(add.maxRssKiB);
      }
    }
    for (const net of nets) await net.verifyAdded();
    for (let i = 0; i < samples; i++) {
      for (const net of ordered(nets, i)) {
        const del = await net.del(net.pods[i], { rss: true });
        if (del.ok && del.maxRssKiB !== undefined) peaks.get(net)!.DEL.push(del.maxRssKiB);
      }
    }
    for (const net of nets) {
      await net.verifyDeleted();
      const p = peaks.get(net)!;
      for (const verb of ["ADD", "DEL"] as const) {
        ctx.rec.figure(
          scenario,
          `peak RSS of one ${verb}, max of ${samples}, masq off`,
          "MiB",
          net.slot,
          p[verb].length ? Math.max(...p[verb]) / 1024 : NaN,
        );
      }
    }
  });
}
