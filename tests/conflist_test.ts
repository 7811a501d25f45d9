/** Unit tests: conflist rendering and the atomic, change-only write; agent flags. */
import assert from "node:assert/strict";
import { parseCidr } from "../lib/addr.ts";
import { parseAgentArgs } from "../lib/agent.ts";
import { loadNetConf } from "../lib/config.ts";
import { buildConflist, CONFLIST_FILE, renderConflist, writeConflistIfChanged } from "../lib/conflist.ts";

Deno.test("conflist: dual stack, IPv4 first, agent socket and IPAM dir written, portmap chained when asked", () => {
  const doc = buildConflist({
    podCidrs: [parseCidr("fd01::/64")!, parseCidr("10.1.0.0/24")!],
    ipamDataDir: "/var/lib/x",
    agentSocket: "/run/x/api.sock",
    bridge: "pnt0",
    mtu: 1400,
    portmap: true,
  });
  assert.equal(doc.cniVersion, "1.1.0");
  const [pontoon, portmap] = doc.plugins as Record<string, unknown>[];
  assert.equal(pontoon.type, "pontoon");
  assert.equal(pontoon.ipMasq, false);
  assert.equal(pontoon.agentSocket, "/run/x/api.sock");
  assert.deepEqual(pontoon.ipam, {
    type: "pontoon-ipam",
    ranges: [[{ subnet: "10.1.0.0/24" }], [{ subnet: "fd01::/64" }]],
    dataDir: "/var/lib/x",
  });
  assert.equal(portmap.type, "portmap");
  const single = buildConflist({ podCidrs: [parseCidr("10.1.0.0/24")!], ipamDataDir: "/d" });
  assert.equal((single.plugins as unknown[]).length, 1);
  // The plugin accepts what the agent writes.
  const conf = loadNetConf({ ...pontoon, cniVersion: "1.1.0", name: "pontoon" });
  assert.equal(conf.bridge, "pnt0");
});

Deno.test("conflist: written atomically once; an identical rewrite is skipped, a change rewrites", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-conflist-" });
  try {
    const text = renderConflist(buildConflist({ podCidrs: [parseCidr("10.1.0.0/24")!], ipamDataDir: "/d" }));
    assert.equal(writeConflistIfChanged(`${dir}/net.d`, text), true);
    assert.equal(Deno.readTextFileSync(`${dir}/net.d/${CONFLIST_FILE}`), text);
    const mtime = Deno.statSync(`${dir}/net.d/${CONFLIST_FILE}`).mtime;
    assert.equal(writeConflistIfChanged(`${dir}/net.d`, text), false);
    assert.deepEqual(Deno.statSync(`${dir}/net.d/${CONFLIST_FILE}`).mtime, mtime);
    assert.equal(writeConflistIfChanged(`${dir}/net.d`, text.replace("10.1.0.0", "10.2.0.0")), true);
    assert.deepEqual([...Deno.readDirSync(`${dir}/net.d`)].map((e) => e.name), [CONFLIST_FILE]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("agent flags: every path is a flag, cluster CIDRs repeat, bad values are precise usage errors", () => {
  const o = parseAgentArgs([
    "--node-name=n1",
    "--cni-conf-dir=/a",
    "--cni-bin-dir=/b",
    "--ipam-data-dir=/c",
    "--api-socket=/d/api.sock",
    "--cluster-cidr=10.0.0.0/16",
    "--cluster-cidr=fd00::/48",
  ], {});
  assert.equal(o.nodeName, "n1");
  assert.deepEqual([o.cniConfDir, o.cniBinDir, o.ipamDataDir, o.apiSocket], ["/a", "/b", "/c", "/d/api.sock"]);
  assert.equal(o.clusterCidrs.length, 2);
  assert.equal(o.conflistVersion, "1.1.0");
  assert.equal(parseAgentArgs([], { NODE_NAME: "from-env" }).nodeName, "from-env");
  const bad: [string[], RegExp][] = [
    [["--node-name=Bad_Name"], /not a Kubernetes node name/],
    [["--node-name=n", "--cni-conf-dir=rel"], /must be an absolute path/],
    [["--node-name=n", "--cluster-cidr=10.0.0.0"], /not a CIDR/],
    [["--node-name=n", "--cluster-cidr=10.42.0.1/16"], /host bits set/],
    [["--node-name=n", "--cluster-cidr=10.42.0.0/16", "--cluster-cidr=10.43.0.0/16"], /one CIDR per address family/],
    [["--node-name=n", "--ipam-data-dir=/var/../etc"], /absolute path without \.\./],
    [["--node-name=n", "--resync-interval=0"], /resync-interval/],
    [["--node-name=n", "--bogus"], /bogus/],
    [["--node-name=n", "--conflist-version=0.4.0"], /--conflist-version: 0\.4\.0 is not one of 1\.0\.0, 1\.1\.0/],
  ];
  for (const [args, pattern] of bad) assert.throws(() => parseAgentArgs(args, {}), pattern);
});
