/**
 * Smoke test for the bench: every scenario with tiny counts, against
 * `dist/pontoon` when it is built (the reference stands in for it
 * otherwise, or when `BENCH_PONTOON=reference`), asserting a table with a ratio for every scenario, passing
 * correctness checks, and nothing of the run left on the host.
 *
 * @module
 */

import { formatSummary, REPO_ROOT, runBench, SMOKE } from "../bench/bench.ts";
import { listLinks, listNetns, readRuleset } from "../bench/host.ts";
import { REFERENCE_DIR } from "../bench/plugins.ts";
import { SCENARIOS } from "../bench/scenarios.ts";

const pontoonBin = `${REPO_ROOT}/dist/pontoon`;

/** Throws with `message` unless `ok`. */
function assert(ok: unknown, message: string): asserts ok {
  if (!ok) throw new Error(message);
}

async function pontoonBuilt(): Promise<boolean> {
  try {
    return (await Deno.stat(pontoonBin)).isFile;
  } catch {
    return false;
  }
}

Deno.test({
  name: "bench smoke run produces a ratio for every scenario and leaves nothing behind",
  ignore: Deno.uid() !== 0,
  async fn() {
    const resultsDir = await Deno.makeTempDir({ prefix: "pbench-smoke-" });
    try {
      // BENCH_PONTOON=reference tests the harness alone while Pontoon is
      // broken; otherwise the built plugin is benched when it exists.
      const pontoon = Deno.env.get("BENCH_PONTOON") ??
        (await pontoonBuilt() ? pontoonBin : "reference");
      const result = await runBench({
        ...SMOKE,
        resultsDir,
        pontoon,
        referenceDir: REFERENCE_DIR,
        log: () => {},
      });
      const { report, table } = result;
      const summary = formatSummary(result);
      assert(report.problems.length === 0, `problems:\n${summary}`);
      assert(report.residue.length === 0, `residue:\n${summary}`);
      for (const scenario of SCENARIOS) {
        const rows = report.rows.filter((r) => r.scenario === scenario);
        assert(rows.length > 0, `no rows for ${scenario}\n${summary}`);
        for (const row of rows) {
          assert(
            Number.isFinite(row.pontoon) && Number.isFinite(row.reference) &&
              Number.isFinite(row.ratio),
            `${scenario}: ${row.metric} lacks a figure or ratio\n${summary}`,
          );
        }
        assert(
          new RegExp(`^${scenario}: .*\\d\\.\\d\\dx$`, "m").test(table),
          `table has no ${scenario} row with a ratio\n${table}`,
        );
      }
      assert(
        report.checks.length > 0 && report.checks.every((c) => c.ok),
        `failed checks\n${summary}`,
      );
      const written = JSON.parse(await Deno.readTextFile(result.resultsFile));
      assert(written.rows.length === report.rows.length, "JSON rows differ");

      const run = report.host.runId;
      const netns = (await listNetns()).filter((n) => n.includes(run));
      assert(netns.length === 0, `netns left: ${netns.join(", ")}`);
      const links = (await listLinks()).filter((n) => n.includes(run));
      assert(links.length === 0, `links left: ${links.join(", ")}`);
      const rules = (await readRuleset()).filter((l) => l.text.includes(run));
      assert(rules.length === 0, `rules left: ${JSON.stringify(rules)}`);
    } finally {
      await Deno.remove(resultsDir, { recursive: true });
    }
  },
});
