/**
 * Node settings and readiness. The plugin runs inside a private network
 * namespace that plays the node (`ip netns exec NODE dist/pontoon`), so the
 * per-namespace sysctls it sets and the links it finds are that namespace's,
 * never the machine's other engineers share.
 */
import assert from "node:assert/strict";
import {
  addNetns,
  assertCniError,
  assertOk,
  cni,
  type CniCall,
  delNetns,
  hostPart,
  IP,
  must,
  ping,
  removeMarkers,
  sh,
  uniq,
} from "./harness.ts";

/** A simulated node: a netns in which the plugin runs, with its own sysctls. */
interface Node {
  name: string;
  sysctl(key: string): Promise<string>;
  setSysctl(key: string, value: string): Promise<void>;
  links(): Promise<string[]>;
  cleanup(): Promise<void>;
}

async function makeNode(): Promise<Node> {
  const name = uniq("tnode");
  await addNetns(name);
  const path = (key: string) => `/proc/sys/${key.replaceAll(".", "/")}`;
  return {
    name,
    sysctl: async (key) => (await must(IP, ["netns", "exec", name, "cat", path(key)])).trim(),
    setSysctl: async (key, value) =>
      void await must(IP, ["netns", "exec", name, "sh", "-c", `echo ${value} > ${path(key)}`]),
    links: async () =>
      (JSON.parse(await must(IP, ["-n", name, "-j", "link", "show"])) as { ifname: string }[]).map((l) => l.ifname)
        .sort(),
    async cleanup() {
      await delNetns(name);
    },
  };
}

let netCounter = 0;

/** A network config for a node; the bridge lives in the node's netns. */
function nodeConf(options: { v6?: boolean; isGateway?: boolean; dataDir: string }) {
  const name = uniq("tnn");
  const bridge = uniq("tnb");
  // Distinct per network of this process; the node netns has no other routes.
  const n = (Deno.pid + ++netCounter) % 250;
  const ranges: unknown[] = [[{ subnet: `10.196.${n}.0/24` }]];
  if (options.v6) ranges.push([{ subnet: `fd5f:${n.toString(16)}::/64` }]);
  return {
    name,
    bridge,
    conf: {
      cniVersion: "1.1.0",
      name,
      type: "pontoon",
      bridge,
      isGateway: options.isGateway ?? true,
      ipam: { type: "pontoon-ipam", ranges, dataDir: options.dataDir },
    },
  };
}

const FORWARD4 = "net.ipv4.ip_forward";
const FORWARD6 = "net.ipv6.conf.all.forwarding";
const NF4 = "net.bridge.bridge-nf-call-iptables";
const NF6 = "net.bridge.bridge-nf-call-ip6tables";

Deno.test("as gateway, ADD turns on IPv4 forwarding, IPv6 forwarding only for v6 ranges, and bridge-nf-call-iptables", async () => {
  const node = await makeNode();
  const pods = [uniq("tnp"), uniq("tnq"), uniq("tnr")];
  const dataDir = await Deno.makeTempDir({ prefix: "pontoon-node-" });
  const nets = [nodeConf({ dataDir }), nodeConf({ dataDir, v6: true }), nodeConf({ dataDir, isGateway: false })];
  try {
    const paths = await addNetns(...pods);
    const brNetfilter = (await sh(IP, ["netns", "exec", node.name, "test", "-e", "/proc/sys/net/bridge"])).code === 0;
    for (const key of [FORWARD4, FORWARD6, ...(brNetfilter ? [NF4, NF6] : [])]) await node.setSysctl(key, "0");
    const add = (i: number) =>
      cni({ command: "ADD", conf: nets[i].conf, containerId: pods[i], netns: paths[i], nodeNetns: node.name });

    // A network that is not the gateway leaves forwarding alone.
    assertOk(await add(2), "ADD isGateway=false");
    assert.equal(await node.sysctl(FORWARD4), "0", "ip_forward set without isGateway");

    // An IPv4-only gateway: IPv4 forwarding, not IPv6's.
    const v4 = await add(0);
    assertOk(v4, "ADD v4");
    assert.equal(await node.sysctl(FORWARD4), "1");
    assert.equal(await node.sysctl(FORWARD6), "0", "IPv6 forwarding set for an IPv4-only network");
    if (brNetfilter) {
      assert.equal(await node.sysctl(NF4), "1", "bridge-nf-call-iptables not set");
      assert.equal(await node.sysctl(NF6), "1", "bridge-nf-call-ip6tables not set");
    } else {
      console.warn("br_netfilter absent: bridge-nf-call-iptables not checked");
    }
    assert.ok(await ping(pods[0], v4.json.ips[0].gateway), "pod cannot reach the gateway in the node netns");

    // A dual-stack gateway: IPv6 forwarding too, and the v6 pod reaches its gateway.
    const v6 = await add(1);
    assertOk(v6, "ADD v6");
    assert.equal(await node.sysctl(FORWARD6), "1", "IPv6 forwarding not set for a v6 range");
    assert.ok(await ping(pods[1], v6.json.ips[1].gateway), "v6 pod cannot reach its gateway");

    for (let i = 0; i < 3; i++) {
      assertOk(await cni({ command: "DEL", conf: nets[i].conf, containerId: pods[i], nodeNetns: node.name }));
    }
  } finally {
    await delNetns(...pods);
    await node.cleanup();
    for (const n of nets) removeMarkers(n.bridge, n.name);
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("STATUS is 50 and ADD fails leaving no trace when a non-bridge link holds the bridge's name", async () => {
  const node = await makeNode();
  const pod = uniq("tns");
  const dataDir = await Deno.makeTempDir({ prefix: "pontoon-node-" });
  const net = nodeConf({ dataDir });
  try {
    const [path] = await addNetns(pod);
    const call = (c: Partial<CniCall>) => cni({ command: "STATUS", conf: net.conf, nodeNetns: node.name, ...c });
    assertOk(await call({}), "STATUS before");
    // This kernel has no dummy links: a veth takes the name.
    await must(IP, ["-n", node.name, "link", "add", net.bridge, "type", "veth", "peer", "name", `${net.bridge}p`]);
    const linksBefore = await node.links();
    assertCniError(await call({}), 50, new RegExp(`link ${net.bridge} exists and is not a bridge`));
    const add = await call({ command: "ADD", containerId: pod, netns: path });
    assertCniError(add, 102, /not a bridge/);
    assert.deepEqual(await node.links(), linksBefore, "failed ADD left links in the node");
    const podLinks = JSON.parse(await must(IP, ["-n", pod, "-j", "link", "show"])) as { ifname: string }[];
    assert.deepEqual(podLinks.map((l) => l.ifname), ["lo"], "failed ADD left an interface in the pod");
    const store = [...Deno.readDirSync(`${dataDir}/${net.name}`)].map((e) => e.name);
    assert.ok(!store.some((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)), `failed ADD left a reservation: ${store}`);
    assert.deepEqual([...Deno.readDirSync(`${dataDir}/${net.name}/attachments`)], []);

    await must(IP, ["-n", node.name, "link", "del", net.bridge]);
    assertOk(await call({}), "STATUS once the name is free");
  } finally {
    await delNetns(pod);
    await node.cleanup();
    removeMarkers(net.bridge, net.name);
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("STATUS is 50 and ADD fails leaving no trace when the IPAM store is not writable", async () => {
  const node = await makeNode();
  const pod = uniq("tnw");
  const tmp = await Deno.makeTempDir({ prefix: "pontoon-node-" });
  const readOnly = `${tmp}/ro`;
  let mounted = false;
  try {
    const [path] = await addNetns(pod);
    await Deno.mkdir(readOnly);
    await must("mount", ["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", readOnly]);
    mounted = true;
    await Deno.writeTextFile(`${tmp}/file`, "");
    // A read-only filesystem, and a dataDir below a regular file.
    for (const dataDir of [readOnly, `${tmp}/file/ipam`]) {
      const net = nodeConf({ dataDir });
      try {
        const status = await cni({ command: "STATUS", conf: net.conf, nodeNetns: node.name });
        assertCniError(status, 50, /IPAM store .* is not writable/);
        const linksBefore = await node.links();
        const add = await cni({ command: "ADD", conf: net.conf, containerId: pod, netns: path, nodeNetns: node.name });
        assertCniError(add, 102, /IPAM store|Read-only|Not a directory/i);
        assert.deepEqual(await node.links(), linksBefore, `ADD with ${dataDir} left links`);
        const podLinks = JSON.parse(await must(IP, ["-n", pod, "-j", "link", "show"])) as { ifname: string }[];
        assert.deepEqual(podLinks.map((l) => l.ifname), ["lo"]);
        // DEL after the failed ADD: nothing was reserved, so nothing stops it.
        const del = await cni({ command: "DEL", conf: net.conf, containerId: pod, netns: path, nodeNetns: node.name });
        assertOk(del, `DEL with ${dataDir}`);
      } finally {
        removeMarkers(net.bridge, net.name);
      }
    }
  } finally {
    if (mounted) await sh("umount", [readOnly]);
    await delNetns(pod);
    await node.cleanup();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
});

Deno.test("a pod on a simulated node reaches a pod on the same node; the node's links are its own", async () => {
  const node = await makeNode();
  const pods = [uniq("tnx"), uniq("tny")];
  const dataDir = await Deno.makeTempDir({ prefix: "pontoon-node-" });
  const net = nodeConf({ dataDir });
  try {
    const paths = await addNetns(...pods);
    const results = [];
    for (let i = 0; i < 2; i++) {
      const r = await cni({
        command: "ADD",
        conf: net.conf,
        containerId: pods[i],
        netns: paths[i],
        nodeNetns: node.name,
      });
      assertOk(r);
      results.push(r.json);
    }
    assert.ok((await node.links()).includes(net.bridge));
    assert.ok(!(await sh(IP, ["link", "show", net.bridge])).stdout.includes(net.bridge), "bridge leaked to the host");
    assert.ok(await ping(pods[0], hostPart(results[1].ips[0].address)));
    for (let i = 0; i < 2; i++) {
      assertOk(await cni({ command: "DEL", conf: net.conf, containerId: pods[i], nodeNetns: node.name }));
    }
    assert.deepEqual((await node.links()).filter((l) => l.startsWith("pn")), []);
  } finally {
    await delNetns(...pods);
    await node.cleanup();
    removeMarkers(net.bridge, net.name);
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
