/**
 * What a bench run produces: figures per scenario for each plugin, the
 * correctness checks made along the way, and the table and JSON they are
 * printed as.
 *
 * @module
 */

/** Slot names, in table column order. */
export const SLOTS = ["pontoon", "reference"] as const;

/** A plugin slot in the table. */
export type Slot = typeof SLOTS[number];

/** One table row: a figure for each plugin and their ratio. */
export interface Row {
  /** Scenario id (`sequential`, `concurrent`, …). */
  scenario: string;
  /** What is measured, with the masquerade mode where it applies. */
  metric: string;
  unit: string;
  pontoon?: number;
  reference?: number;
  /** `pontoon / reference`. */
  ratio?: number;
}

/** One correctness check made while measuring. */
export interface Check {
  scenario: string;
  plugin: string;
  what: string;
  ok: boolean;
  detail?: string;
}

/**
 * A target from issue 4: a bound on the ratio (pontoon / reference) of the
 * rows matching `metric`, or on Pontoon's own figure with `own`.
 */
export interface Target {
  scenario: string;
  metric: RegExp;
  /** Upper bound (latency-like) or lower bound (throughput-like). */
  max?: number;
  min?: number;
  /** Judge Pontoon's own figure (e.g. its growth factor), not the ratio. */
  own?: boolean;
}

/** The issue's targets, in the order the closing note lists them. */
export const TARGETS: Target[] = [
  { scenario: "sequential", metric: /^ADD p50, .*masq on$/, max: 0.6 },
  { scenario: "sequential", metric: /^ADD p50, .*masq off$/, max: 1.0 },
  { scenario: "sequential", metric: /^DEL p50, /, max: 1.0 },
  { scenario: "concurrent", metric: /^ADD wall, /, max: 0.8 },
  { scenario: "many", metric: /^ADD growth last\/first, /, max: 1.2, own: true },
  { scenario: "throughput", metric: /^pod→pod over the bridge, /, min: 1.0 },
];

/** One target judged against one row. */
export interface TargetResult {
  row: string;
  value?: number;
  bound: string;
  met: boolean;
}

/** Judges every target against the rows it matches. */
export function judgeTargets(rows: readonly Row[], targets: readonly Target[] = TARGETS): TargetResult[] {
  const out: TargetResult[] = [];
  for (const t of targets) {
    for (const r of rows.filter((r) => r.scenario === t.scenario && t.metric.test(r.metric))) {
      const value = t.own ? r.pontoon : r.ratio;
      const what = t.own ? "pontoon" : "ratio";
      const bound = t.max !== undefined ? `${what} ≤ ${t.max}` : `${what} ≥ ${t.min}`;
      const met = value !== undefined && Number.isFinite(value) &&
        (t.max === undefined || value <= t.max) && (t.min === undefined || value >= t.min);
      out.push({ row: `${r.scenario}: ${r.metric}`, value, bound, met });
    }
  }
  return out;
}

/** The JSON document a run writes under the results directory. */
export interface Report {
  startedAt: string;
  durationSeconds: number;
  options: Record<string, unknown>;
  host: Record<string, string>;
  plugins: Record<string, { label: string; available: boolean; note?: string }>;
  rows: Row[];
  checks: Check[];
  /** Failed checks and errors, one line each; empty on a clean run. */
  problems: string[];
  notes: string[];
  /** Raw latency samples in ms, keyed `scenario/metric/plugin`. */
  samples: Record<string, number[]>;
  /** Anything of this run still on the host after clean-up. */
  residue: string[];
  /** The issue's targets, judged on this run. */
  targets: TargetResult[];
}

/** Nearest-rank percentile of `values` (0 < p ≤ 100). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}

/** Median, averaging the middle pair of an even count. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Collects rows, checks, samples and notes during a run. */
export class Recorder {
  readonly rows: Row[] = [];
  readonly checks: Check[] = [];
  readonly problems: string[] = [];
  readonly notes: string[] = [];
  readonly samples: Record<string, number[]> = {};

  /** Sets one plugin's figure for a row, creating the row on first use. */
  figure(
    scenario: string,
    metric: string,
    unit: string,
    slot: Slot,
    value: number,
  ): void {
    let row = this.rows.find((r) => r.scenario === scenario && r.metric === metric);
    if (!row) {
      row = { scenario, metric, unit };
      this.rows.push(row);
    }
    row[slot] = value;
    const { pontoon, reference } = row;
    row.ratio = Number.isFinite(pontoon) && Number.isFinite(reference) && reference !== 0
      ? pontoon! / reference!
      : undefined;
  }

  /** Records a check; a failed one is also a problem. */
  check(
    scenario: string,
    plugin: string,
    what: string,
    ok: boolean,
    detail?: string,
  ): boolean {
    this.checks.push({ scenario, plugin, what, ok, detail });
    if (!ok) {
      this.problems.push(
        `${scenario} [${plugin}] ${what}${detail ? `: ${detail}` : ""}`,
      );
    }
    return ok;
  }

  /** Records an error that stopped part of a scenario. */
  problem(scenario: string, plugin: string, message: string): void {
    this.problems.push(`${scenario} [${plugin}] ${message}`);
  }

  /** Adds a note shown under the table (deduplicated). */
  note(text: string): void {
    if (!this.notes.includes(text)) this.notes.push(text);
  }

  /** Appends raw samples under `scenario/metric/plugin`. */
  sample(key: string, values: number[]): void {
    (this.samples[key] ??= []).push(...values);
  }
}

function formatValue(value: number | undefined, unit: string): string {
  if (value === undefined || Number.isNaN(value)) return "—";
  const digits = unit === "ms" ? (value < 10 ? 2 : 1) : value < 10 ? 2 : 1;
  return value.toFixed(digits);
}

/** Renders the rows as an aligned text table with a ratio column. */
export function formatTable(
  rows: readonly Row[],
  missing: Partial<Record<Slot, string>> = {},
): string {
  const header = ["scenario", "pontoon", "reference", "ratio"];
  const body = rows.map((r) => [
    `${r.scenario}: ${r.metric} (${r.unit})`,
    missing.pontoon && r.pontoon === undefined ? missing.pontoon : formatValue(r.pontoon, r.unit),
    missing.reference && r.reference === undefined ? missing.reference : formatValue(r.reference, r.unit),
    r.ratio === undefined ? "—" : `${r.ratio.toFixed(2)}x`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join(" | ");
  return [
    line(header),
    widths.map((w) => "-".repeat(w)).join("-|-"),
    ...body.map(line),
  ].join("\n");
}
