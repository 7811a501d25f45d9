/** Unit tests: kubeconfig and in-cluster parsing, watch lines, backoff (no network). */
import assert from "node:assert/strict";
import {
  backoffDelay,
  inClusterTarget,
  KubeApiError,
  KubeClient,
  KubeConfigError,
  kubeconfigTarget,
  loadKubeTarget,
  parseWatchLine,
  watchNodes,
} from "../lib/kube.ts";
import { kubeconfigYaml } from "./kubeapi.ts";

const PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

Deno.test("kubeconfig: server, inline CA and token from the current context", () => {
  const t = kubeconfigTarget(kubeconfigYaml({ server: "https://10.0.0.1:6443/", caCert: PEM, token: "abc" }), "/k/c");
  assert.equal(t.server, "https://10.0.0.1:6443");
  assert.equal(t.caCert, PEM);
  assert.equal(t.token, "abc");
  assert.match(t.source, /kubeconfig \/k\/c \(context test\)/);
});

Deno.test("kubeconfig: CA and token files are read relative to the kubeconfig's folder", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-kubecfg-" });
  try {
    Deno.writeTextFileSync(`${dir}/ca.crt`, PEM);
    Deno.writeTextFileSync(`${dir}/token`, "tok\n");
    const t = kubeconfigTarget(
      kubeconfigYaml({ server: "https://k:6443", caFile: "ca.crt", tokenFile: "token" }),
      `${dir}/config`,
    );
    assert.equal(t.caCert, PEM);
    assert.equal(t.tokenFile, `${dir}/token`);
    assert.throws(
      () => kubeconfigTarget(kubeconfigYaml({ server: "https://k:6443", caFile: "missing.crt" }), `${dir}/config`),
      (e: Error) => e instanceof KubeConfigError && /cannot read .*missing\.crt/.test(e.message),
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("kubeconfig: insecure-skip-tls-verify, exec plugins, half a client cert and broken YAML are refused", () => {
  const base = kubeconfigYaml({ server: "https://k:6443", token: "t" });
  const cases: [string, RegExp][] = [
    [base.replace("    server:", "    insecure-skip-tls-verify: true\n    server:"), /insecure-skip-tls-verify/],
    [base.replace("    token: t", "    exec:\n      command: aws"), /exec is not supported/],
    [base.replace("    token: t", "    client-certificate-data: QUJD"), /both client-certificate and client-key/],
    [base.replace("current-context: test", "current-context: other"), /context "other" not found/],
    ["clusters: [", /not valid YAML/],
    ["- just\n- a list\n", /not a mapping/],
  ];
  for (const [text, pattern] of cases) {
    assert.throws(
      () => kubeconfigTarget(text, "/k/c"),
      (e: Error) => e instanceof KubeConfigError && pattern.test(e.message),
    );
  }
});

Deno.test("in-cluster: service host/port and the mounted token and CA; clear error outside a pod", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-sa-" });
  try {
    Deno.writeTextFileSync(`${dir}/token`, "tok");
    Deno.writeTextFileSync(`${dir}/ca.crt`, PEM);
    const t = inClusterTarget({ KUBERNETES_SERVICE_HOST: "fd00::1", KUBERNETES_SERVICE_PORT: "443" }, dir);
    assert.equal(t.server, "https://[fd00::1]:443");
    assert.equal(t.tokenFile, `${dir}/token`);
    assert.throws(() => inClusterTarget({}, dir), /not in a cluster/);
    assert.throws(() => loadKubeTarget(undefined, {}), /pass --kubeconfig/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("client: a bearer token is never sent over plain http to a non-loopback host", () => {
  assert.throws(
    () => new KubeClient({ server: "http://10.0.0.1:8080", token: "t", source: "test" }),
    /refusing to send a bearer token over plain http/,
  );
  assert.throws(() => new KubeClient({ server: "ftp://x", source: "test" }), /only https/);
});

Deno.test("watch lines: events parse; ERROR events become KubeApiErrors with the Status code", () => {
  const e = parseWatchLine(
    JSON.stringify({ type: "MODIFIED", object: { metadata: { name: "n1", resourceVersion: "7" } } }),
  );
  assert.equal(e.type, "MODIFIED");
  assert.equal(e.node.metadata.name, "n1");
  const b = parseWatchLine(JSON.stringify({ type: "BOOKMARK", object: { metadata: { resourceVersion: "9" } } }));
  assert.equal(b.node.metadata.resourceVersion, "9");
  const gone = JSON.stringify({
    type: "ERROR",
    object: { kind: "Status", status: "Failure", code: 410, reason: "Expired", message: "too old resource version" },
  });
  assert.throws(() => parseWatchLine(gone), (err: KubeApiError) => err.expired && err.reason === "Expired");
  assert.throws(() => parseWatchLine("{not json"), /not JSON/);
  assert.throws(() => parseWatchLine(JSON.stringify({ type: "SURPRISE", object: {} })), /unknown event type/);
  assert.throws(() => parseWatchLine(JSON.stringify({ type: "ADDED", object: { metadata: {} } })), /without metadata/);
});

Deno.test("backoff: doubles from the minimum, caps at the maximum, with ±20 % jitter", () => {
  assert.equal(backoffDelay(1, 500, 30_000, () => 0.5), 500);
  assert.equal(backoffDelay(3, 500, 30_000, () => 0.5), 2000);
  assert.equal(backoffDelay(20, 500, 30_000, () => 0.5), 30_000);
  assert.equal(backoffDelay(1, 500, 30_000, () => 0), 400);
  assert.equal(backoffDelay(1, 500, 30_000, () => 1), 600);
});

Deno.test("watch: a stream sending a line that never ends is given up at the line limit, not buffered without bound", async () => {
  let sent = 0;
  const abort = new AbortController();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, signal: abort.signal, onListen() {} }, () => {
    const chunk = new TextEncoder().encode("x".repeat(64 * 1024));
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent >= 64 * 1024 * 1024) return c.close();
        sent += chunk.length;
        c.enqueue(chunk);
      },
    });
    return new Response(body, { headers: { "content-type": "application/json" } });
  });
  const client = new KubeClient({ server: `http://127.0.0.1:${server.addr.port}`, token: "t", source: "test" });
  try {
    await assert.rejects(
      async () => {
        for await (const _ of watchNodes(client, "1", { maxLineLength: 1024 * 1024 })) { /* none */ }
      },
      (err: KubeApiError) => err instanceof KubeApiError && /line longer than 1048576/.test(err.message),
    );
    assert.ok(sent < 8 * 1024 * 1024, `read ${sent} bytes before giving up`);
  } finally {
    client.close();
    abort.abort();
    await server.finished;
  }
});
