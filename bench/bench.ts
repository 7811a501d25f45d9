/**
 * `make bench`: Pontoon against the reference CNI plugins (Go `bridge` +
 * `host-local` from Debian's containernetworking-plugins), interleaved in
 * one run, each invoked directly per the CNI protocol on fresh network
 * namespaces. Prints a table (scenario | pontoon | reference | ratio) and
 * writes the full report as JSON under the results directory.
 *
 * ```sh
 * deno run -A bench/bench.ts                 # defaults, under 5 min on 2 cores
 * deno run -A bench/bench.ts --smoke         # tiny counts, a few seconds
 * deno run -A bench/bench.ts --only sequential,startup --pods 20
 * deno run -A bench/bench.ts --pontoon reference   # reference in both slots
 * ```
 *
 * Must run as root. Everything it creates is named after a random run id
 * and removed in `finally`, also on Ctrl-C.
 *
 * @module
 */

import {
  listLinks,
  listNetns,
  prefixFor,
  readRuleset,
  removeFirewall,
  run,
  runStateFiles,
  SubnetAllocator,
} from "./host.ts";
import { GNU_TIME, type Plugin, pontoonPlugin, REFERENCE_DIR, referencePlugin } from "./plugins.ts";
import { formatTable, judgeTargets, Recorder, type Report, type Slot } from "./report.ts";
import {
  type BenchContext,
  type BenchOptions,
  concurrentScenario,
  manyScenario,
  rssScenario,
  type ScenarioId,
  SCENARIOS,
  sequentialScenario,
  type SlotPlugin,
  startupScenario,
  throughputScenario,
} from "./scenarios.ts";

/** Everything `runBench` needs: counts plus where things are. */
export interface RunOptions extends BenchOptions {
  /** Directory the JSON report goes to; created if missing. */
  resultsDir: string;
  /** Pontoon's executable, or `reference` to put the reference in its slot. */
  pontoon: string;
  /** Directory of the reference plugins. */
  referenceDir: string;
  /** Progress lines (stderr by default). */
  log?: (message: string) => void;
  /** Stops the run at the next step; clean-up still happens. */
  signal?: AbortSignal;
}

/** A finished run: the report, its table, and where the JSON went. */
export interface BenchResult {
  report: Report;
  table: string;
  resultsFile: string;
}

/** Default counts; a full run with them takes well under 5 minutes. */
export const DEFAULTS: BenchOptions = {
  pods: 100,
  concurrency: 10,
  many: 250,
  manyConcurrency: 25,
  window: 50,
  calls: 50,
  iperfSeconds: 5,
  iperfReps: 2,
  rssSamples: 5,
  reps: 3,
  masq: [false, true],
  only: [...SCENARIOS],
};

/** Counts for `--smoke`: every scenario once, in seconds. */
export const SMOKE: BenchOptions = {
  pods: 3,
  concurrency: 2,
  many: 6,
  manyConcurrency: 3,
  window: 2,
  calls: 3,
  iperfSeconds: 1,
  iperfReps: 1,
  rssSamples: 1,
  reps: 1,
  masq: [false, true],
  only: [...SCENARIOS],
};

/** Root of the repository (this file lives in `bench/`). */
export const REPO_ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

async function isExecutable(path: string): Promise<boolean> {
  try {
    const info = await Deno.stat(path);
    return info.isFile && ((info.mode ?? 0) & 0o111) !== 0;
  } catch {
    return false;
  }
}

/** Resolves the two slots; Pontoon's is `undefined` with a note if missing. */
export async function resolvePlugins(
  options: Pick<RunOptions, "pontoon" | "referenceDir">,
): Promise<{ pontoon?: Plugin; reference: Plugin; note?: string }> {
  const reference = referencePlugin({ binDir: options.referenceDir });
  if (!await isExecutable(`${options.referenceDir}/bridge`)) {
    throw new Error(
      `reference plugins not found in ${options.referenceDir} (apt package containernetworking-plugins)`,
    );
  }
  if (options.pontoon === "reference") {
    const standIn = referencePlugin({ binDir: options.referenceDir, name: "pontoon" });
    standIn.label = `stand-in: ${standIn.label}`;
    return { pontoon: standIn, reference };
  }
  if (!await isExecutable(options.pontoon)) {
    return {
      reference,
      note: `${options.pontoon} does not exist yet (run \`make build\`); Pontoon skipped.`,
    };
  }
  return { pontoon: pontoonPlugin(options.pontoon), reference };
}

function randomId(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(3)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

async function tableNames(): Promise<Set<string>> {
  const lines = await readRuleset();
  return new Set(lines.filter((l) => l.text.startsWith("table ")).map((l) => `${l.family} ${l.table}`));
}

/**
 * Final sweep and residue check for a run: removes firewall objects that
 * still carry the run's markers and Pontoon tables the run created and left
 * empty, then lists anything of the run still on the host.
 */
export async function sweepRun(
  ctx: Pick<BenchContext, "runId" | "markers" | "tmpDir">,
  tablesBefore: Set<string>,
): Promise<{ residue: string[]; notes: string[] }> {
  const notes: string[] = [];
  const residue: string[] = [];
  const left = await removeFirewall(ctx.markers);
  residue.push(
    ...left.map((l) => `firewall: ${l.family} ${l.table} ${l.chain ?? l.set ?? ""}: ${l.text}`),
  );
  const lines = await readRuleset();
  for (const l of lines.filter((l) => l.text.startsWith("table "))) {
    const key = `${l.family} ${l.table}`;
    if (tablesBefore.has(key) || !/pontoon/i.test(l.table)) continue;
    const inside = lines.filter((x) => `${x.family} ${x.table}` === key && x !== l);
    const hasContent = inside.some((x) => x.handle !== undefined || /elements/.test(x.text));
    if (!hasContent) {
      await run("nft", ["delete", "table", l.family, l.table], { allowFail: true });
      notes.push(`Deleted nft table ${key}: created during the run, left empty.`);
    } else {
      notes.push(`nft table ${key} was created during the run and still has content (not ours to judge).`);
    }
  }
  const prefix = `pbench-${ctx.runId}`;
  residue.push(
    ...(await listNetns()).filter((n) => n.startsWith(prefix)).map((n) => `netns: ${n}`),
    ...(await listLinks()).filter((n) => n.startsWith(`pb${ctx.runId}`)).map((n) => `link: ${n}`),
    ...(await runStateFiles(ctx.runId)).map((f) => `pontoon state: ${f}`),
  );
  try {
    await Deno.stat(ctx.tmpDir);
    residue.push(`dir: ${ctx.tmpDir}`);
  } catch {
    // Removed, as it should be.
  }
  return { residue, notes };
}

/** Runs the selected scenarios and writes the report. */
export async function runBench(options: RunOptions): Promise<BenchResult> {
  const log = options.log ?? ((m: string) => console.error(m));
  const started = new Date();
  const t0 = performance.now();
  if (Deno.uid() !== 0) throw new Error("the bench must run as root");
  const resolved = await resolvePlugins(options);
  const rec = new Recorder();
  if (resolved.note) rec.note(resolved.note);
  if (resolved.pontoon?.label.startsWith("stand-in")) {
    rec.note(`The pontoon slot runs the reference (${resolved.pontoon.label}).`);
  }
  const plugins: SlotPlugin[] = [];
  if (resolved.pontoon) plugins.push({ slot: "pontoon", plugin: resolved.pontoon });
  plugins.push({ slot: "reference", plugin: resolved.reference });

  let only = options.only;
  if (only.includes("rss") && !await isExecutable(GNU_TIME)) {
    rec.note(`${GNU_TIME} missing (Debian package \`time\`); rss skipped.`);
    only = only.filter((s) => s !== "rss");
  }
  const runId = randomId();
  const tmpDir = await Deno.makeTempDir({ prefix: `pbench-${runId}-` });
  const maxPods = Math.max(
    only.includes("sequential") || only.includes("concurrent") ? options.pods : 0,
    only.includes("many") ? options.many : 0,
    only.includes("rss") ? options.rssSamples : 0,
    2,
  );
  const ctx: BenchContext = {
    runId,
    tmpDir,
    subnets: await SubnetAllocator.create(prefixFor(maxPods)),
    rec,
    options: { ...options, only },
    plugins,
    markers: { words: [`pbench-${runId}`, `pb${runId}`], ips: [], names: [] },
    log,
    aborted: options.signal?.aborted ?? false,
    serial: 0,
  };
  options.signal?.addEventListener("abort", () => ctx.aborted = true, { once: true });
  const tablesBefore = await tableNames();
  const forwardBefore = (await Deno.readTextFile("/proc/sys/net/ipv4/ip_forward")).trim();
  log(
    `pbench ${runId}: ${plugins.map((p) => `${p.slot}=${p.plugin.label}`).join(", ")}; ` +
      `scenarios ${only.join(",")}; subnets /${ctx.subnets.prefix}`,
  );
  let residue: string[] = [];
  try {
    const step = async (name: string, fn: () => Promise<void>) => {
      if (ctx.aborted) return;
      const t = performance.now();
      log(`  ${name} …`);
      await fn();
      log(`  ${name} done in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    };
    const masqModes = options.masq;
    for (const id of SCENARIOS) {
      if (!only.includes(id)) continue;
      if (id === "startup") await step(id, () => startupScenario(ctx));
      else if (id === "rss") await step(id, () => rssScenario(ctx));
      else {
        for (const [i, masq] of masqModes.entries()) {
          const label = `${id}, masq ${masq ? "on" : "off"}`;
          if (id === "sequential") await step(label, () => sequentialScenario(ctx, masq));
          if (id === "concurrent") await step(label, () => concurrentScenario(ctx, masq, i));
          if (id === "many") await step(label, () => manyScenario(ctx, masq, i));
          if (id === "throughput") await step(label, () => throughputScenario(ctx, masq, i));
        }
      }
    }
    if (ctx.aborted) rec.problem("bench", "bench", "interrupted");
  } finally {
    await Deno.remove(tmpDir, { recursive: true }).catch(() => {});
    const sweep = await sweepRun(ctx, tablesBefore);
    residue = sweep.residue;
    sweep.notes.forEach((n) => rec.note(n));
  }
  const forwardAfter = (await Deno.readTextFile("/proc/sys/net/ipv4/ip_forward")).trim();
  if (forwardBefore !== forwardAfter) {
    rec.note(
      `net.ipv4.ip_forward went ${forwardBefore}→${forwardAfter} (isGateway turns it on; the bench leaves it).`,
    );
  }
  for (const r of residue) rec.problem("bench", "bench", `left behind: ${r}`);

  const pkg = await run("dpkg-query", ["-W", "-f", "${Version}", "containernetworking-plugins"], {
    allowFail: true,
  });
  const report: Report = {
    startedAt: started.toISOString(),
    durationSeconds: (performance.now() - t0) / 1000,
    options: { ...options, only, log: undefined, signal: undefined },
    host: {
      kernel: Deno.osRelease(),
      cpus: String(navigator.hardwareConcurrency),
      loadavg: Deno.loadavg().map((l) => l.toFixed(2)).join(" "),
      referencePackage: `containernetworking-plugins ${pkg.stdout.trim()}`,
      runId,
    },
    plugins: {
      pontoon: {
        label: resolved.pontoon?.label ?? options.pontoon,
        available: resolved.pontoon !== undefined,
        note: resolved.note,
      },
      reference: { label: resolved.reference.label, available: true },
    },
    rows: rec.rows,
    checks: rec.checks,
    problems: rec.problems,
    notes: rec.notes,
    samples: rec.samples,
    residue,
    targets: resolved.pontoon ? judgeTargets(rec.rows) : [],
  };
  const missing: Partial<Record<Slot, string>> = resolved.pontoon ? {} : { pontoon: "skipped" };
  const table = formatTable(rec.rows, missing);
  await Deno.mkdir(options.resultsDir, { recursive: true });
  const resultsFile = `${options.resultsDir}/${started.toISOString().replace(/[:.]/g, "-")}.json`;
  await Deno.writeTextFile(resultsFile, JSON.stringify(report, null, 2) + "\n");
  return { report, table, resultsFile };
}

/** Renders the table with checks, notes and problems below it. */
export function formatSummary(result: BenchResult): string {
  const { report } = result;
  const passed = report.checks.filter((c) => c.ok).length;
  const out = [
    result.table,
    "",
    `ratio = pontoon / reference (latency, wall, RSS: lower is better; Gbit/s, %: higher is better)`,
    `checks: ${passed}/${report.checks.length} passed; ${report.durationSeconds.toFixed(1)} s; ${result.resultsFile}`,
  ];
  for (const t of report.targets) {
    const value = t.value === undefined || !Number.isFinite(t.value) ? "—" : t.value.toFixed(2);
    out.push(`target ${t.met ? "met   " : "MISSED"} ${t.bound.padEnd(14)} ${value.padStart(5)}  ${t.row}`);
  }
  for (const n of report.notes) out.push(`note: ${n}`);
  for (const p of report.problems) out.push(`PROBLEM: ${p}`);
  return out.join("\n");
}

const USAGE = `usage: deno run -A bench/bench.ts [options]
  --pods N              pods for the sequential and concurrent scenarios (${DEFAULTS.pods})
  --concurrency N       parallel calls, concurrent scenario (${DEFAULTS.concurrency})
  --many N              pods on one node, many scenario (${DEFAULTS.many})
  --many-concurrency N  parallel calls, many scenario (${DEFAULTS.manyConcurrency})
  --window N            first/last pods compared in the many scenario (${DEFAULTS.window})
  --calls N             STATUS and VERSION calls per plugin (${DEFAULTS.calls})
  --iperf-seconds N     iperf3 test length (${DEFAULTS.iperfSeconds})
  --iperf-reps N        iperf3 rounds per path, alternating, median (${DEFAULTS.iperfReps})
  --rss-samples N       ADD/DEL calls measured for peak RSS (${DEFAULTS.rssSamples})
  --reps N              repetitions of the concurrent scenario (${DEFAULTS.reps})
  --masq off,on         masquerade modes for pod scenarios (off,on)
  --only LIST           scenarios: ${SCENARIOS.join(",")}
  --results-dir DIR     where the JSON goes (bench/results)
  --pontoon PATH        Pontoon's executable (dist/pontoon), or "reference"
  --reference-dir DIR   reference plugins (${REFERENCE_DIR})
  --smoke               tiny counts for a quick check (explicit options win)
  --help`;

const STRING_FLAGS = [
  "pods",
  "concurrency",
  "many",
  "many-concurrency",
  "window",
  "calls",
  "iperf-seconds",
  "iperf-reps",
  "rss-samples",
  "reps",
  "masq",
  "only",
  "results-dir",
  "pontoon",
  "reference-dir",
] as const;
const BOOLEAN_FLAGS = ["smoke", "help"] as const;

type Flags =
  & Partial<Record<typeof STRING_FLAGS[number], string>>
  & Partial<Record<typeof BOOLEAN_FLAGS[number], boolean>>;

/**
 * Strict `--name value` / `--name=value` / `--flag` parsing, the subset of
 * `node:util` `parseArgs` the bench needs. (A `node:` import would make
 * `deno check`/`deno test` require `@types/node`, which this repo's
 * `nodeModulesDir: "manual"` does not install.)
 */
export function parseFlags(args: string[]): Flags {
  const flags: Record<string, string | boolean> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] === "-h" ? "--help" : args[i];
    const m = /^--([a-z-]+)(?:=(.*))?$/s.exec(arg);
    if (!m) throw new Error(`unexpected argument ${arg}`);
    const [, name, inline] = m;
    if ((BOOLEAN_FLAGS as readonly string[]).includes(name)) {
      if (inline !== undefined) throw new Error(`--${name} takes no value`);
      flags[name] = true;
    } else if ((STRING_FLAGS as readonly string[]).includes(name)) {
      const value = inline ?? args[++i];
      if (value === undefined) throw new Error(`--${name} needs a value`);
      flags[name] = value;
    } else {
      throw new Error(`unknown option --${name}`);
    }
  }
  return flags as Flags;
}

/** Parses command-line arguments into run options; throws on bad input. */
export function parseOptions(args: string[]): RunOptions | "help" {
  const values = parseFlags(args);
  if (values.help) return "help";
  const base = values.smoke ? SMOKE : DEFAULTS;
  const count = (name: typeof STRING_FLAGS[number], fallback: number, min = 1): number => {
    const raw = values[name];
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}`);
    return n;
  };
  const only = values.only === undefined ? base.only : values.only.split(",").map((s) => s.trim());
  for (const s of only) {
    if (!(SCENARIOS as readonly string[]).includes(s)) {
      throw new Error(`--only: unknown scenario ${s} (know ${SCENARIOS.join(",")})`);
    }
  }
  const masq = values.masq === undefined ? base.masq : values.masq.split(",").map((m) => {
    if (m !== "on" && m !== "off") throw new Error("--masq takes off, on or off,on");
    return m === "on";
  });
  const options: RunOptions = {
    pods: count("pods", base.pods),
    concurrency: count("concurrency", base.concurrency),
    many: count("many", base.many, 2),
    manyConcurrency: count("many-concurrency", base.manyConcurrency),
    window: count("window", base.window),
    calls: count("calls", base.calls),
    iperfSeconds: count("iperf-seconds", base.iperfSeconds),
    iperfReps: count("iperf-reps", base.iperfReps),
    rssSamples: count("rss-samples", base.rssSamples),
    reps: count("reps", base.reps),
    masq,
    only: only as ScenarioId[],
    resultsDir: values["results-dir"] ?? `${REPO_ROOT}/bench/results`,
    pontoon: values.pontoon ?? `${REPO_ROOT}/dist/pontoon`,
    referenceDir: values["reference-dir"] ?? REFERENCE_DIR,
  };
  if (Math.max(options.pods, options.many) > 65000) throw new Error("at most 65000 pods");
  return options;
}

/** CLI entry: exit 0 on a clean run, 1 on problems, 2 on bad usage. */
export async function main(args: string[]): Promise<number> {
  let options: RunOptions | "help";
  try {
    options = parseOptions(args);
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (options === "help") {
    console.log(USAGE);
    return 0;
  }
  const controller = new AbortController();
  const onSignal = () => {
    console.error("interrupted: cleaning up …");
    controller.abort();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    const result = await runBench({ ...options, signal: controller.signal });
    console.log(formatSummary(result));
    return result.report.problems.length === 0 ? 0 : 1;
  } catch (e) {
    console.error(`bench failed: ${(e as Error).message}`);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
