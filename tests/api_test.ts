/**
 * The REST API's request handling with a plain source object: routing,
 * JSON errors and status codes, body limits, the OpenAPI document against
 * the real route table, the token comparison, the metrics exposition, and
 * the plugin's outcome reports over the datagram socket.
 */
import assert from "node:assert/strict";
import { reportToAgent } from "../lib/agentclient.ts";
import {
  API_ROUTES,
  type ApiSource,
  handleApiRequest,
  MAX_BODY_BYTES,
  startApiServer,
  tokenMatches,
} from "../lib/api.ts";
import { apiRequest } from "../lib/apiclient.ts";
import { UnixDatagramReceiver } from "../lib/libc.ts";
import { logLevel } from "../lib/log.ts";
import { zeroCounters } from "../lib/agentstate.ts";
import { AgentMetrics } from "../lib/metrics.ts";
import { allRefs, resolveRef } from "./openapi_check.ts";
import { parsePrometheusText, sampleValue } from "./promtext.ts";

const OPENAPI_PATH = new URL("../lib/openapi.json", import.meta.url).pathname;

function plainSource(metrics = new AgentMetrics()): ApiSource {
  return {
    readiness: () => ({ ready: false, reason: "waiting for a pod CIDR" }),
    status: () => ({ node: "n1", ready: false }),
    nodes: () => [{ name: "n1" }],
    routes: () => [{ node: "n2", dst: "10.2.0.0/24", via: "192.0.2.2" }],
    config: () => ({ nodeName: "n1" }),
    ipam: () => null,
    counters: () => zeroCounters(),
    metrics: () => metrics,
  };
}

function req(method: string, path: string, body?: BodyInit, headers: Record<string, string> = {}): Request {
  return new Request(`http://pontoon${path}`, { method, body, headers });
}

async function errorOf(response: Response): Promise<{ code: string; message: string }> {
  assert.match(response.headers.get("content-type") ?? "", /application\/json/);
  const doc = await response.json();
  assert.equal(typeof doc.error?.code, "string", JSON.stringify(doc));
  assert.equal(typeof doc.error?.message, "string");
  return doc.error;
}

Deno.test("api: unknown route is 404 with a JSON error", async () => {
  const r = await handleApiRequest(req("GET", "/v1/nope"), plainSource());
  assert.equal(r.status, 404);
  assert.equal((await errorOf(r)).code, "not_found");
});

Deno.test("api: wrong method is 405 with an Allow header", async () => {
  const r = await handleApiRequest(req("DELETE", "/v1/status"), plainSource());
  assert.equal(r.status, 405);
  assert.equal(r.headers.get("allow"), "GET");
  assert.equal((await errorOf(r)).code, "method_not_allowed");
  const gc = await handleApiRequest(req("GET", "/v1/gc"), plainSource());
  assert.equal(gc.status, 405);
  assert.equal(gc.headers.get("allow"), "POST");
  await gc.body?.cancel();
});

Deno.test("api: HEAD is answered like GET, without a body", async () => {
  const r = await handleApiRequest(req("HEAD", "/healthz"), plainSource());
  assert.equal(r.status, 200);
  assert.equal(await r.text(), "");
});

Deno.test("api: bad JSON, a non-object and an unknown level are 400", async () => {
  for (const body of ["{not json", "[1,2]", JSON.stringify({ level: "loud" })]) {
    const r = await handleApiRequest(req("PUT", "/v1/config/log-level", body), plainSource());
    assert.equal(r.status, 400, body);
    await errorOf(r);
  }
});

Deno.test("api: a body over the limit is 413, whether declared or streamed", async () => {
  const big = "x".repeat(MAX_BODY_BYTES + 1);
  const declared = await handleApiRequest(req("PUT", "/v1/config/log-level", big), plainSource());
  assert.equal(declared.status, 413);
  assert.equal((await errorOf(declared)).code, "payload_too_large");
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < 20; i++) c.enqueue(new Uint8Array(8 * 1024));
      c.close();
    },
  });
  const gc = await handleApiRequest(
    req("POST", "/v1/gc", big, { "content-length": String(big.length) }),
    plainSource(),
  );
  assert.equal(gc.status, 413, "every endpoint refuses an oversized body");
  await gc.body?.cancel();
  const streamed = await handleApiRequest(req("PUT", "/v1/config/log-level", stream), plainSource());
  assert.equal(streamed.status, 413);
  await streamed.body?.cancel();
});

Deno.test("api: PUT /v1/config/log-level changes the process's level", async () => {
  const before = logLevel();
  try {
    const r = await handleApiRequest(req("PUT", "/v1/config/log-level", '{"level":"debug"}'), plainSource());
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { level: "debug", was: before });
    assert.equal(logLevel(), "debug");
  } finally {
    await handleApiRequest(req("PUT", "/v1/config/log-level", JSON.stringify({ level: before })), plainSource());
  }
});

Deno.test("api: readyz is 503 until ready; allocations and gc are 503 without an IPAM store; bad apply is 400", async () => {
  const ready = await handleApiRequest(req("GET", "/readyz"), plainSource());
  assert.equal(ready.status, 503);
  assert.equal((await ready.json()).reason, "waiting for a pod CIDR");
  const alloc = await handleApiRequest(req("GET", "/v1/allocations"), plainSource());
  assert.equal(alloc.status, 503);
  assert.equal((await errorOf(alloc)).code, "not_ready");
  const gc = await handleApiRequest(req("POST", "/v1/gc?apply=maybe"), plainSource());
  assert.equal(gc.status, 400);
  await gc.body?.cancel();
});

Deno.test("api: the OpenAPI document in the repo describes exactly the served routes", async () => {
  const doc = JSON.parse(Deno.readTextFileSync(OPENAPI_PATH));
  const documented = Object.entries(doc.paths as Record<string, Record<string, unknown>>)
    .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)).sort();
  assert.deepEqual(documented, [...API_ROUTES].sort());
  for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, { responses: object }>>)) {
    for (const [method, op] of Object.entries(ops)) {
      assert.ok(Object.keys(op.responses).length > 0, `${method} ${path} documents no response`);
    }
  }
  for (const ref of allRefs(doc)) resolveRef(doc, ref);
  const served = await handleApiRequest(req("GET", "/v1/openapi.json"), plainSource());
  assert.deepEqual(await served.json(), doc);
});

Deno.test("api: token comparison accepts only the exact token", async () => {
  const want = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode("s3cret-token-0123456789")),
  );
  assert.equal(await tokenMatches("s3cret-token-0123456789", want), true);
  assert.equal(await tokenMatches("s3cret-token-012345678", want), false);
  assert.equal(await tokenMatches("", want), false);
});

Deno.test("metrics: exposition parses, histograms are consistent, reports are validated", () => {
  const m = new AgentMetrics();
  m.recordReport(new TextEncoder().encode('{"verb":"ADD","code":0,"ms":12.5}'));
  m.recordReport(new TextEncoder().encode('{"verb":"ADD","code":7,"ms":3}'));
  m.recordReport(new TextEncoder().encode('{"verb":"DEL","code":0,"ms":900}'));
  for (const bad of ["nope", '{"verb":"STATUS","code":0,"ms":1}', '{"verb":"ADD","code":-1,"ms":1}', "{}"]) {
    assert.throws(() => m.recordReport(new TextEncoder().encode(bad)));
  }
  m.recordReconcile(0.02);
  m.recordReconcile(0.3);
  const counters = { ...zeroCounters(), reconciles: 1, reconcileErrors: 1, expired: 1, apiErrors: 2, routesAdded: 3 };
  const families = parsePrometheusText(
    m.render({ ready: true, routesOwned: 2, pools: [{ range: "10.1.0.0/24", size: 253, used: 4 }], counters }),
  );
  assert.equal(sampleValue(families, "pontoon_cni_operations_total", { verb: "ADD", result: "success" }), 1);
  assert.equal(sampleValue(families, "pontoon_cni_operations_total", { verb: "ADD", result: "error" }), 1);
  assert.equal(sampleValue(families, "pontoon_cni_operations_total", { verb: "CHECK", result: "success" }), 0);
  assert.equal(sampleValue(families, "pontoon_cni_operation_duration_seconds_count", { verb: "ADD" }), 2);
  assert.equal(sampleValue(families, "pontoon_cni_operation_duration_seconds_bucket", { verb: "DEL", le: "0.5" }), 0);
  assert.equal(sampleValue(families, "pontoon_cni_operation_duration_seconds_bucket", { verb: "DEL", le: "1" }), 1);
  assert.equal(sampleValue(families, "pontoon_cni_reports_invalid_total"), 4);
  assert.equal(sampleValue(families, "pontoon_ipam_pool_size", { range: "10.1.0.0/24" }), 253);
  assert.equal(sampleValue(families, "pontoon_ipam_pool_used", { range: "10.1.0.0/24" }), 4);
  assert.equal(sampleValue(families, "pontoon_routes_owned"), 2);
  assert.equal(sampleValue(families, "pontoon_reconcile_duration_seconds_count"), 2);
  assert.equal(sampleValue(families, "pontoon_reconcile_errors_total"), 1);
  assert.equal(sampleValue(families, "pontoon_kube_watch_restarts_total"), 3);
  assert.equal(sampleValue(families, "pontoon_route_changes_total", { change: "added" }), 3);
  assert.equal(families.get("pontoon_cni_operation_duration_seconds")?.type, "histogram");
});

Deno.test("api server: socket is 0600, plugin reports arrive over the datagram socket, a live socket is not stolen", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-api-" });
  const socket = `${dir}/api.sock`;
  const metrics = new AgentMetrics();
  const server = await startApiServer(socket, plainSource(metrics));
  try {
    assert.equal(Deno.statSync(socket).mode! & 0o777, 0o600);
    assert.equal(Deno.statSync(`${socket}.report`).mode! & 0o777, 0o600);
    reportToAgent(socket, { verb: "CHECK", code: 0, ms: 4.2 });
    reportToAgent(socket, { verb: "CHECK", code: 110, ms: 1 });
    const reply = await apiRequest(socket, "GET", "/metrics");
    assert.equal(reply.status, 200);
    assert.match(reply.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const families = parsePrometheusText(reply.body);
    assert.equal(sampleValue(families, "pontoon_cni_operations_total", { verb: "CHECK", result: "success" }), 1);
    assert.equal(sampleValue(families, "pontoon_cni_operations_total", { verb: "CHECK", result: "error" }), 1);
    await assert.rejects(startApiServer(socket, plainSource()), /another running process/);
  } finally {
    await server.close();
    Deno.removeSync(dir, { recursive: true });
  }
  // With the agent gone, reporting is silently dropped.
  reportToAgent(socket, { verb: "ADD", code: 0, ms: 1 });
});

Deno.test("plugin reports never block: thousands sent to a socket nobody reads return at once", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-api-" });
  const socket = `${dir}/api.sock`;
  const receiver = new UnixDatagramReceiver(`${socket}.report`);
  try {
    // The queue fills after a few hundred; the rest are dropped, not waited on.
    for (let i = 0; i < 5000; i++) reportToAgent(socket, { verb: "ADD", code: 0, ms: 1 });
    let queued = 0;
    while (receiver.receive() !== null) queued++;
    assert.ok(queued > 0 && queued < 5000, `queued ${queued}`);
  } finally {
    receiver.close();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("api server: running out of file descriptors (a flood of TCP connections) does not kill it", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-api-" });
  const socket = `${dir}/api.sock`;
  const tokenFile = `${dir}/token`;
  const token = crypto.randomUUID();
  Deno.writeTextFileSync(tokenFile, token + "\n", { mode: 0o600 });
  Deno.chmodSync(tokenFile, 0o600);
  const fixture = new URL("./fixtures/api_server.ts", import.meta.url).pathname;
  // 128 descriptors: the flood below takes them all.
  const child = new Deno.Command("prlimit", {
    args: ["--nofile=128", Deno.execPath(), "run", "--allow-all", fixture, socket, tokenFile],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const conns: Deno.TcpConn[] = [];
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const port = Number((await reader.read()).value?.trim());
    assert.ok(port > 0, "the fixture prints its port");
    for (let i = 0; i < 200; i++) {
      try {
        conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      } catch {
        break; // the listener's backlog is full or it is gone
      }
    }
    await new Promise((r) => setTimeout(r, 1000));
    for (const c of conns.splice(0)) c.close();
    await new Promise((r) => setTimeout(r, 1500));
    const alive = await Promise.race([
      child.status.then(() => false),
      new Promise((r) => setTimeout(() => r(true), 500)),
    ]);
    if (!alive) {
      const err = await new Response(child.stderr).text();
      assert.fail(`the API server process died of the connection flood: ${err.slice(-2000)}`);
    }
    const reply = await apiRequest(socket, "GET", "/healthz");
    assert.equal(reply.status, 200);
    const tcp = await fetch(`http://127.0.0.1:${port}/healthz`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(tcp.status, 200);
    await tcp.body?.cancel();
    reader.releaseLock();
  } finally {
    for (const c of conns) c.close();
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await child.stdout.cancel().catch(() => {});
    await child.stderr.cancel().catch(() => {});
    Deno.removeSync(dir, { recursive: true });
  }
});
