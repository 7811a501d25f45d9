/**
 * The REST API and the CLI against a running `pontoon agent` in a
 * namespace sandbox (emulated Kubernetes API, real plugin, real netns):
 * every endpoint, readiness, metrics fed by real plugin calls, GC dry run
 * vs apply, root-only socket (a `nobody` client is refused), bearer token
 * on TCP, bad requests over the real socket.
 */
import assert from "node:assert/strict";
import { apiRequest } from "../lib/apiclient.ts";
import { addNetns, assertOk, cni, delNetns, PLUGIN, sh, testNet, uniq } from "./harness.ts";
import {
  addPod,
  agentLog,
  eventually,
  nodeLinkExists,
  plugin,
  pluginConf,
  type Sandbox,
  startSandbox,
  stopSandbox,
  waitReady,
} from "./ops_sandbox.ts";
import { schemaProblems } from "./openapi_check.ts";
import { parsePrometheusText, sampleValue } from "./promtext.ts";

const OPENAPI = JSON.parse(Deno.readTextFileSync(new URL("../lib/openapi.json", import.meta.url)));

/** Asserts `doc` is what the OpenAPI document promises for `method path` answering `status`. */
function assertDocumented(method: string, path: string, status: number, doc: unknown): void {
  const schema = OPENAPI.paths[path]?.[method.toLowerCase()]?.responses[String(status)]?.content?.["application/json"]
    ?.schema;
  assert.ok(schema, `${method} ${path} ${status} is not documented`);
  assert.deepEqual(schemaProblems(OPENAPI, schema, doc), [], `${method} ${path} ${status}`);
}

async function get(sb: Sandbox, path: string) {
  const r = await apiRequest(sb.socket, "GET", path);
  return { status: r.status, doc: JSON.parse(r.body), headers: r.headers };
}

async function cli(sb: Sandbox | null, ...args: string[]) {
  const withSocket = sb ? [...args, "--api-socket", sb.socket] : args;
  return await sh(PLUGIN, withSocket);
}

/** Runs a test body in a fresh sandbox, with the agent's log on failure. */
async function inSandbox(fn: (sb: Sandbox) => Promise<void>, options = {}): Promise<void> {
  const { sb, agent } = await startSandbox(options);
  try {
    await fn(sb);
  } catch (err) {
    (err as Error).message += `\n--- agent log ---\n${agentLog(sb)}`;
    throw err;
  } finally {
    await stopSandbox(sb, agent);
  }
}

Deno.test("ops: readyz is 503 and `pontoon status` exits 3 until the pod CIDR is assigned, then 200 / 0", async () => {
  await inSandbox(async (sb) => {
    await eventually("a first reconcile", async () => /pod CIDR/.test((await get(sb, "/readyz")).doc.reason));
    const before = await get(sb, "/readyz");
    assert.equal(before.status, 503);
    assert.match(before.doc.reason, /pod CIDR/);
    const status = await cli(sb, "status");
    assert.equal(status.code, 3, status.stdout + status.stderr);
    assert.match(status.stdout, /ready:\s+no: .*pod CIDR/);
    const noIpam = await get(sb, "/v1/allocations");
    assert.equal(noIpam.status, 503);
    assertDocumented("GET", "/v1/allocations", 503, noIpam.doc);
    assertDocumented("GET", "/readyz", 503, (await get(sb, "/readyz")).doc);
    sb.kube.updateNode("n1", (n) => n.spec = { podCIDR: "10.88.1.0/24", podCIDRs: ["10.88.1.0/24"] });
    await waitReady(sb);
    const after = await cli(sb, "status");
    assert.equal(after.code, 0, after.stderr);
    assert.match(after.stdout, /ready:\s+yes/);
  }, { unassigned: true });
});

Deno.test("ops: every GET endpoint answers with the agent's view; CLI tables and -o json agree", async () => {
  await inSandbox(async (sb) => {
    await waitReady(sb);
    assert.deepEqual((await get(sb, "/healthz")).doc, { status: "ok" });
    const status = (await get(sb, "/v1/status")).doc;
    assert.equal(status.node, "n1");
    assert.equal(status.ready, true);
    assert.deepEqual(status.podCIDRs, ["10.88.1.0/24"]);
    assert.equal(status.bridge, sb.bridge);
    assert.equal(typeof status.mtu, "number");
    assert.equal(status.conflist, `${sb.dir}/net.d/10-pontoon.conflist`);

    const routes = (await get(sb, "/v1/routes")).doc.routes;
    assert.deepEqual(routes, [{ node: "n2", dst: "10.88.2.0/24", via: `${sb.prefix}.3` }]);
    const nodes = (await get(sb, "/v1/nodes")).doc.nodes;
    assert.deepEqual(nodes.map((n: { name: string }) => n.name), ["n1", "n2", "n3"]);
    assert.equal(nodes[0].self, true);
    assert.deepEqual(nodes[1].internalIPs, [`${sb.prefix}.3`]);
    assert.equal(nodes[2].problems.length, 1, JSON.stringify(nodes[2]));
    const config = (await get(sb, "/v1/config")).doc;
    assert.equal(config.apiSocket, sb.socket);
    assert.equal(config.ipamDataDir, `${sb.dir}/ipam`);
    assert.deepEqual(config.clusterCIDRs, ["10.88.0.0/16"]);
    assert.equal(config.logLevel, "debug");
    const openapi = (await get(sb, "/v1/openapi.json")).doc;
    assert.equal(openapi.openapi, "3.0.3");

    const pod = await addPod(sb, "default", "web-a");
    const alloc = (await get(sb, "/v1/allocations")).doc;
    assert.equal(alloc.network, "pontoon");
    assert.equal(alloc.allocations.length, 1);
    const a = alloc.allocations[0];
    assert.equal(a.containerId, pod.containerId);
    assert.equal(a.podNamespace, "default");
    assert.equal(a.podName, "web-a");
    assert.equal(a.netns, pod.netns);
    assert.equal(a.hostVeth, pod.hostVeth);
    assert.deepEqual(a.ips, [pod.result.ips[0].address.split("/")[0]]);

    // Every JSON answer conforms to the documented schema.
    for (const [path, ops] of Object.entries(openapi.paths as Record<string, Record<string, unknown>>)) {
      // deno-lint-ignore no-explicit-any
      const op = ops.get as any;
      if (!op) continue;
      const reply = await apiRequest(sb.socket, "GET", path);
      const content = op.responses[String(reply.status)]?.content;
      assert.ok(content, `GET ${path}: status ${reply.status} is not documented`);
      const schema = content["application/json"]?.schema;
      if (!schema) continue;
      assert.deepEqual(schemaProblems(openapi, schema, JSON.parse(reply.body)), [], `GET ${path}`);
    }

    // The CLI reads the same things.
    const ls = await cli(sb, "ipam", "ls");
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /^ADDRESS\s+POD\s+CONTAINER/);
    assert.match(ls.stdout, new RegExp(`${a.ips[0].replaceAll(".", "\\.")}\\s+default/web-a\\s+`));
    const lsJson = JSON.parse((await cli(sb, "ipam", "ls", "-o", "json")).stdout);
    assert.deepEqual(lsJson, alloc);
    const rt = await cli(sb, "routes");
    assert.match(rt.stdout, new RegExp(`10\\.88\\.2\\.0/24\\s+${sb.prefix.replaceAll(".", "\\.")}\\.3\\s+n2`));
    assert.deepEqual(JSON.parse((await cli(sb, "routes", "-o", "json")).stdout).routes, routes);
    const nd = await cli(sb, "nodes");
    assert.match(nd.stdout, /n1 \(this node\)/);
    assert.match(nd.stdout, /n3 .*203\.0\.113\.9/);
    const st = JSON.parse((await cli(sb, "status", "-o", "json")).stdout);
    assert.equal(st.node, "n1");
    const live = await cli(sb, "status", "--live");
    assert.equal(live.code, 0);
    await plugin(sb, "DEL", pod.containerId, pod.netns);
  });
});

Deno.test("ops: /metrics counts the plugin's ADD/DEL/CHECK outcomes, pool use, routes and reconciles", async () => {
  await inSandbox(async (sb) => {
    await waitReady(sb);
    const a = await addPod(sb, "default", "m-a");
    const b = await addPod(sb, "default", "m-b");
    await plugin(sb, "CHECK", a.containerId, a.netns, { conf: { ...pluginConf(sb), prevResult: a.result } });
    // A failing CHECK (no prevResult) is reported as an error.
    await assert.rejects(plugin(sb, "CHECK", a.containerId, a.netns));
    await plugin(sb, "DEL", b.containerId, b.netns);
    const reply = await apiRequest(sb.socket, "GET", "/metrics");
    assert.equal(reply.status, 200);
    const m = parsePrometheusText(reply.body);
    assert.equal(sampleValue(m, "pontoon_cni_operations_total", { verb: "ADD", result: "success" }), 2);
    assert.equal(sampleValue(m, "pontoon_cni_operations_total", { verb: "CHECK", result: "success" }), 1);
    assert.equal(sampleValue(m, "pontoon_cni_operations_total", { verb: "CHECK", result: "error" }), 1);
    assert.equal(sampleValue(m, "pontoon_cni_operations_total", { verb: "DEL", result: "success" }), 1);
    assert.equal(sampleValue(m, "pontoon_cni_operation_duration_seconds_count", { verb: "ADD" }), 2);
    assert.ok(sampleValue(m, "pontoon_cni_operation_duration_seconds_sum", { verb: "ADD" }) > 0);
    assert.equal(sampleValue(m, "pontoon_ipam_pool_size", { range: "10.88.1.0/24" }), 253);
    assert.equal(sampleValue(m, "pontoon_ipam_pool_used", { range: "10.88.1.0/24" }), 1);
    assert.equal(sampleValue(m, "pontoon_routes_owned"), 1);
    assert.ok(sampleValue(m, "pontoon_reconcile_duration_seconds_count") >= 1);
    assert.equal(sampleValue(m, "pontoon_reconcile_errors_total"), 0);
    assert.equal(sampleValue(m, "pontoon_agent_ready"), 1);
    // The watch restarting (expired resource version) is counted.
    sb.kube.compact();
    sb.kube.expireWatches();
    await eventually("a counted watch restart", async () => {
      const text = (await apiRequest(sb.socket, "GET", "/metrics")).body;
      return sampleValue(parsePrometheusText(text), "pontoon_kube_watch_restarts_total") >= 1;
    });
    await plugin(sb, "DEL", a.containerId, a.netns);
  });
});

Deno.test("ops: GC is a dry run by default and releases only reservations whose netns and veth are gone", async () => {
  await inSandbox(async (sb) => {
    await waitReady(sb);
    const gone = await addPod(sb, "default", "gone");
    const alive = await addPod(sb, "default", "alive");
    await sh("ip", ["netns", "del", gone.ns]);
    await eventually("the vanished pod's veth to go", async () => !(await nodeLinkExists(sb, gone.hostVeth)));

    // By default a reservation this young is left alone (an ADD in progress has no veth yet).
    const young = JSON.parse((await apiRequest(sb.socket, "POST", "/v1/gc")).body);
    assert.equal(young.minAgeSeconds, 60);
    assert.deepEqual(young.stale, []);
    const dry = await apiRequest(sb.socket, "POST", "/v1/gc?minAge=0");
    assert.equal(dry.status, 200);
    const dryDoc = JSON.parse(dry.body);
    assertDocumented("POST", "/v1/gc", 200, dryDoc);
    assert.equal(dryDoc.applied, false);
    assert.deepEqual(dryDoc.stale.map((s: { containerId: string }) => s.containerId), [gone.containerId]);
    assert.deepEqual(dryDoc.released, []);
    assert.equal((await get(sb, "/v1/allocations")).doc.allocations.length, 2, "a dry run released something");
    const cliDry = await cli(sb, "gc", "--min-age", "0");
    assert.equal(cliDry.code, 0, cliDry.stderr);
    assert.match(cliDry.stdout, /1 stale; run `pontoon gc --apply`/);

    const applied = await cli(sb, "gc", "--apply", "--min-age=0", "-o", "json");
    assert.equal(applied.code, 0, applied.stderr);
    const doc = JSON.parse(applied.stdout);
    assert.equal(doc.applied, true);
    assert.deepEqual(doc.released.map((s: { containerId: string }) => s.containerId), [gone.containerId]);
    const left = (await get(sb, "/v1/allocations")).doc.allocations;
    assert.deepEqual(left.map((s: { containerId: string }) => s.containerId), [alive.containerId]);
    const again = JSON.parse((await apiRequest(sb.socket, "POST", "/v1/gc?apply=true&minAge=0")).body);
    assert.deepEqual(again.stale, []);
    await plugin(sb, "DEL", alive.containerId, alive.netns);
  });
});

Deno.test("ops: the socket is root-only (nobody is refused) and TCP needs the bearer token", async () => {
  await inSandbox(async (sb) => {
    await waitReady(sb);
    const mode = Deno.statSync(sb.socket).mode! & 0o777;
    assert.equal(mode, 0o600);
    const asRoot = await sh("curl", ["-sS", "--unix-socket", sb.socket, "http://pontoon/healthz"]);
    assert.equal(asRoot.code, 0, asRoot.stderr);
    const asNobody = await sh("setpriv", [
      "--reuid=65534",
      "--regid=65534",
      "--clear-groups",
      "curl",
      "-sS",
      "--unix-socket",
      sb.socket,
      "http://pontoon/healthz",
    ]);
    assert.equal(asNobody.code, 7, `nobody connected: ${asNobody.stdout} ${asNobody.stderr}`);
    assert.equal(asNobody.stdout, "");
    // The CLI run as nobody says why.
    const cliNobody = await sh("setpriv", [
      "--reuid=65534",
      "--regid=65534",
      "--clear-groups",
      PLUGIN,
      "status",
      "--api-socket",
      sb.socket,
    ]);
    assert.equal(cliNobody.code, 1);
    assert.match(cliNobody.stderr, /permission denied \(the socket is root-only; use sudo\)/);

    const tcp = (extra: string[]) =>
      sh("ip", [
        "netns",
        "exec",
        sb.nodeNs,
        "curl",
        "-sS",
        "-w",
        "\n%{http_code}",
        ...extra,
        `http://127.0.0.1:${sb.tcpPort}/v1/status`,
      ]);
    for (
      const extra of [[], ["-H", "Authorization: Bearer wrong-token-0123456789"], ["-H", "Authorization: Basic x"]]
    ) {
      const r = await tcp(extra);
      const [body, code] = [
        r.stdout.slice(0, r.stdout.lastIndexOf("\n")),
        r.stdout.slice(r.stdout.lastIndexOf("\n") + 1),
      ];
      assert.equal(code, "401", `${extra.join(" ")}: ${r.stdout} ${r.stderr}`);
      assert.equal(JSON.parse(body).error.code, "unauthorized");
    }
    const ok = await tcp(["-H", `Authorization: Bearer ${sb.token}`]);
    assert.ok(ok.stdout.endsWith("\n200"), ok.stdout + ok.stderr);
    assert.equal(JSON.parse(ok.stdout.slice(0, ok.stdout.lastIndexOf("\n"))).node, "n1");
  });
});

Deno.test("ops: bad requests over the real socket get JSON errors: 404, 405, 400, 413; log level changes", async () => {
  await inSandbox(async (sb) => {
    await waitReady(sb);
    const call = async (method: string, path: string, body?: string) => {
      const r = await apiRequest(sb.socket, method, path, { body });
      return { status: r.status, doc: JSON.parse(r.body), allow: r.headers.get("allow") };
    };
    const nf = await call("GET", "/v2/everything");
    assert.equal(nf.status, 404);
    assert.equal(nf.doc.error.code, "not_found");
    const na = await call("POST", "/v1/routes", "{}");
    assert.equal(na.status, 405);
    assert.equal(na.allow, "GET");
    const bad = await call("PUT", "/v1/config/log-level", "{level: warn");
    assert.equal(bad.status, 400);
    assertDocumented("PUT", "/v1/config/log-level", 400, bad.doc);
    assert.equal(bad.doc.error.code, "bad_json");
    const big = await call("PUT", "/v1/config/log-level", JSON.stringify({ level: "warn", pad: "x".repeat(70_000) }));
    assert.equal(big.status, 413);
    assert.equal(big.doc.error.code, "payload_too_large");
    assert.equal((await call("POST", "/v1/gc", "x".repeat(70_000))).status, 413);
    const set = await call("PUT", "/v1/config/log-level", '{"level":"warn"}');
    assert.equal(set.status, 200);
    assert.deepEqual(set.doc, { level: "warn", was: "debug" });
    assertDocumented("PUT", "/v1/config/log-level", 200, set.doc);
    assert.equal((await call("GET", "/v1/config")).doc.logLevel, "warn");
  });
});

Deno.test("ops: CLI without an agent fails clearly; --help works on every subcommand; bad flags are usage errors", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-cli-" });
  try {
    const missing = await sh(PLUGIN, ["status", "--api-socket", `${dir}/none.sock`]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /cannot reach the Pontoon agent at .*none\.sock: no such socket/);
    // A path nobody serves (connect() is refused, as for a dead agent's socket).
    Deno.writeTextFileSync(`${dir}/dead.sock`, "");
    const refused = await sh(PLUGIN, ["ipam", "ls", "--api-socket", `${dir}/dead.sock`]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /cannot reach the Pontoon agent.*connection refused/);
    for (const cmd of [["status"], ["ipam", "ls"], ["routes"], ["nodes"], ["gc"], ["version"], ["install"]]) {
      const r = await sh(PLUGIN, [...cmd, "--help"]);
      assert.equal(r.code, 0, `${cmd.join(" ")} --help: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^Usage: pontoon ${cmd.join(" ")}`));
    }
    const usage = await sh(PLUGIN, ["gc", "--frobnicate"]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /pontoon gc: .*frobnicate.*see pontoon gc --help/);
    const output = await sh(PLUGIN, ["routes", "-o", "yaml"]);
    assert.equal(output.code, 2);
    const version = JSON.parse((await sh(PLUGIN, ["version", "-o", "json"])).stdout);
    assert.ok(version.cniVersions.includes("1.1.0"));
    const listen = await sh(PLUGIN, ["agent", "--node-name", "x", "--api-listen", "127.0.0.1:9650"]);
    assert.equal(listen.code, 2);
    assert.match(listen.stderr, /--api-listen: needs --api-token-file/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("ops: ADD, CHECK and DEL are unaffected when the agent named in agentSocket is not running", async () => {
  const net = testNet();
  const ns = uniq("opn");
  try {
    const [path] = await addNetns(ns);
    const conf = net.conf("1.1.0", { agentSocket: `${net.dataDir}/no-agent/api.sock` });
    const add = await cni({ command: "ADD", conf, containerId: ns, netns: path });
    assertOk(add, "ADD");
    assertOk(await cni({ command: "CHECK", conf: { ...conf, prevResult: add.json }, containerId: ns, netns: path }));
    assertOk(await cni({ command: "DEL", conf, containerId: ns, netns: path }), "DEL");
  } finally {
    await delNetns(ns);
    await net.cleanup();
  }
});
