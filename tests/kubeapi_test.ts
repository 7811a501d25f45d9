/**
 * The emulated API server against Pontoon's Kubernetes client (lib/kube.ts):
 * TLS with the generated CA, bearer-token auth, list paging, watch replay,
 * bookmarks, 410 Gone and relist, stop/start on the same port.
 */
import assert from "node:assert/strict";
import {
  KubeApiError,
  KubeClient,
  kubeconfigTarget,
  type KubeNode,
  listNodes,
  type NodeEvent,
  runNodeInformer,
  watchNodes,
} from "../lib/kube.ts";
import { KubeApiServer, makeTestPki, testNode } from "./kubeapi.ts";

function clientFor(api: KubeApiServer, overrides: { token?: string; caCert?: string } = {}): KubeClient {
  const yaml = api.kubeconfig(overrides);
  return new KubeClient(kubeconfigTarget(yaml, "/nonexistent/kubeconfig"));
}

/** Polls `check` until it returns true or `ms` pass. */
async function eventually(what: string, check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

Deno.test("kubeapi: list over TLS with the generated CA and the bearer token, paged by limit/continue", async () => {
  const api = await KubeApiServer.start();
  const client = clientFor(api);
  try {
    for (let i = 0; i < 5; i++) api.setNode(testNode(`n${i}`, { podCIDRs: [`10.9.${i}.0/24`] }));
    const list = await listNodes(client, undefined, 2);
    assert.deepEqual(list.nodes.map((n) => n.metadata.name), ["n0", "n1", "n2", "n3", "n4"]);
    assert.equal(list.resourceVersion, api.resourceVersion);
    assert.equal(api.count("list", 200), 3);
    const one = await client.getJson<KubeNode>("/api/v1/nodes/n3");
    assert.equal(one.spec?.podCIDR, "10.9.3.0/24");
    await assert.rejects(client.getJson("/api/v1/nodes/nope"), (e: KubeApiError) => e.status === 404);
  } finally {
    client.close();
    await api.close();
  }
});

Deno.test("kubeapi: a wrong token gets 401 and a wrong CA fails TLS verification", async () => {
  const api = await KubeApiServer.start();
  const other = await makeTestPki(Deno.makeTempDirSync({ prefix: "pontoon-otherca-" }), { caName: "other" });
  const badToken = clientFor(api, { token: "wrong" });
  const badCa = clientFor(api, { caCert: other.caCert });
  try {
    await assert.rejects(listNodes(badToken), (e: KubeApiError) => e.status === 401 && /rejected/.test(e.message));
    await assert.rejects(listNodes(badCa), (e: KubeApiError) => e.status === 0 && /TLS verification/.test(e.message));
  } finally {
    badToken.close();
    badCa.close();
    Deno.removeSync(other.dir, { recursive: true });
    await api.close();
  }
});

Deno.test("kubeapi: watch replays events after the resource version, then streams live ones and bookmarks", async () => {
  const api = await KubeApiServer.start({ bookmarkIntervalMs: 0 });
  const client = clientFor(api);
  const abort = new AbortController();
  try {
    api.setNode(testNode("a"));
    const rv = api.resourceVersion;
    api.setNode(testNode("b"));
    api.updateNode("a", (n) => n.spec = { podCIDR: "10.1.0.0/24", podCIDRs: ["10.1.0.0/24"] });
    const seen: NodeEvent[] = [];
    const done = (async () => {
      for await (const e of watchNodes(client, rv, { signal: abort.signal })) seen.push(e);
    })().catch(() => {});
    await eventually("replay", () => seen.length === 2);
    assert.deepEqual(seen.map((e) => `${e.type} ${e.node.metadata.name}`), ["ADDED b", "MODIFIED a"]);
    api.deleteNode("b");
    api.sendBookmarks();
    await eventually("live events", () => seen.length === 4);
    assert.equal(seen[2].type, "DELETED");
    assert.equal(seen[3].type, "BOOKMARK");
    assert.equal(seen[3].node.metadata.resourceVersion, api.resourceVersion);
    abort.abort();
    await done;
  } finally {
    client.close();
    await api.close();
  }
});

Deno.test("kubeapi: a stale resource version gets 410 (ERROR event and HTTP) and the informer relists", async () => {
  for (const expiredAs of ["event", "http"] as const) {
    const api = await KubeApiServer.start({ expiredAs, bookmarkIntervalMs: 0 });
    const client = clientFor(api);
    try {
      api.setNode(testNode("a"));
      const old = api.resourceVersion;
      api.setNode(testNode("b"));
      api.compact();
      await assert.rejects(
        (async () => {
          for await (const _ of watchNodes(client, old)) { /* nothing */ }
        })(),
        (e: KubeApiError) => e.expired,
      );
      const abort = new AbortController();
      let lists = 0;
      let expired = 0;
      const running = runNodeInformer(client, {
        onList: () => lists++,
        onEvent: () => {},
        onError: () => {},
        onExpired: () => expired++,
      }, { signal: abort.signal, minBackoffMs: 50 });
      await eventually("first list and watch", () => lists === 1 && api.openWatches === 1);
      api.expireWatches();
      await eventually("relist", () => lists === 2 && expired === 1);
      abort.abort();
      await running;
    } finally {
      client.close();
      await api.close();
    }
  }
});

Deno.test("kubeapi: stop refuses connections, start serves again on the same port with the same nodes", async () => {
  const api = await KubeApiServer.start();
  const client = clientFor(api);
  try {
    api.setNode(testNode("a"));
    const port = api.port;
    await api.stop();
    await assert.rejects(listNodes(client), (e: KubeApiError) => e.status === 0);
    await api.startServing();
    assert.equal(api.port, port);
    assert.equal((await listNodes(client)).nodes.length, 1);
  } finally {
    client.close();
    await api.close();
  }
});

Deno.test("kubeapi: the informer retries server errors with growing delays and recovers", async () => {
  const api = await KubeApiServer.start({ bookmarkIntervalMs: 0 });
  const client = clientFor(api);
  const abort = new AbortController();
  try {
    api.setNode(testNode("a"));
    api.failRequests(503, 3);
    const delays: number[] = [];
    const listed: string[][] = [];
    const running = runNodeInformer(client, {
      onList: (nodes) => listed.push(nodes.map((n) => n.metadata.name)),
      onEvent: () => {},
      onError: (err, retryInMs) => {
        assert.match(err.message, /HTTP 503/);
        delays.push(retryInMs);
      },
    }, { signal: abort.signal, minBackoffMs: 20, maxBackoffMs: 1000 });
    await eventually("recovery", () => listed.length === 1);
    assert.deepEqual(listed, [["a"]]);
    assert.equal(delays.length, 3);
    assert.ok(delays[0] < delays[1] && delays[1] < delays[2], `delays grow: ${delays}`);
    assert.equal(api.count("list", 503), 3);
    abort.abort();
    await running;
  } finally {
    client.close();
    await api.close();
  }
});

Deno.test("client: a server that accepts but never answers times out with a clear message", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) held.push(conn);
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  const client = new KubeClient({ server: `https://127.0.0.1:${port}`, token: "t", source: "test" });
  try {
    await assert.rejects(
      client.get("/api/v1/nodes", undefined, 300),
      (e: KubeApiError) => e.status === 0 && /did not answer within 0\.3s/.test(e.message),
    );
  } finally {
    client.close();
    listener.close();
    for (const c of held) c.close();
    await accepting;
  }
});
