/**
 * `make demo-cluster`: two nodes with pods pinging across them.
 *
 * Builds a simulated cluster on this machine (tests/cluster.ts): two node
 * network namespaces on an IPv4 + IPv6 underlay, the emulated Kubernetes
 * API server (HTTPS, generated CA, bearer token), and `pontoon agent` in
 * each node. It assigns the nodes their pod CIDRs, waits for the agents to
 * write their conflists and routes, adds one pod per node through the
 * plugin with that conflist, pings across the nodes, shows that the peer
 * sees the real pod address, then removes everything it made.
 */
import { capture, eventually, SimCluster } from "../tests/cluster.ts";

const say = (text: string) => console.log(`\n== ${text}`);
const c = await SimCluster.create({ nodes: 2 });
let failed = false;
try {
  const [n1, n2] = c.nodes;
  say(`API server ${c.api.url()} (underlay ${c.prefix4}.0/24, ${c.prefix6}/64); nodes ${n1.name}, ${n2.name}`);
  for (const n of c.nodes) c.startAgent(n);
  for (const n of c.nodes) await n.agent!.waitForLog(/waiting for node .* pod CIDR/);
  console.log("agents are up and waiting for pod CIDRs (no conflist yet)");
  for (const n of c.nodes) c.assignPodCidrs(n);
  for (const n of c.nodes) await eventually(`${n.name} ready`, () => c.isReady(n));
  for (const n of c.nodes) {
    say(`${n.name}: pod CIDRs ${n.podCidr4} ${n.podCidr6}; routes the agent installed (proto 158):`);
    for (const r of await c.routes(n)) console.log(`  ${r}`);
  }
  const p1 = await c.addPod(n1);
  const p2 = await c.addPod(n2);
  say(`pods: ${p1.name} on ${n1.name} = ${p1.ip4} ${p1.ip6}; ${p2.name} on ${n2.name} = ${p2.ip4} ${p2.ip6}`);
  for (const [src, dst] of [[p1, p2], [p2, p1]]) {
    for (const address of [dst.ip4, dst.ip6]) {
      const ok = await c.ping(src, address, 3);
      console.log(`ping ${src.ip4 === p1.ip4 ? n1.name : n2.name} pod -> ${address}: ${ok ? "ok" : "FAILED"}`);
      failed ||= !ok;
    }
  }
  const seen = await capture(
    p2.netns,
    "eth0",
    `icmp[icmptype] == icmp-echo and src host ${p1.ip4}`,
    () => c.ping(p1, p2.ip4, 2),
  );
  say(`what ${p2.name} sees arriving (no NAT between nodes):`);
  console.log(`  ${seen ?? "nothing!"}`);
  failed ||= seen === null;
} catch (err) {
  failed = true;
  console.error(`demo failed: ${(err as Error).message}`);
} finally {
  await c.destroy();
  console.log("\ncleaned up: agents stopped, pods deleted, namespaces and links removed");
}
Deno.exit(failed ? 1 : 0);
