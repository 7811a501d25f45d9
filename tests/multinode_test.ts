/**
 * The multi-node simulation: three nodes (network namespaces on a shared
 * IPv4 + IPv6 underlay), each running `pontoon agent` against the emulated
 * API server, with pods added through the plugin from the conflist each
 * agent wrote. Proves host-gw routing without NAT, that routes follow the
 * cluster (node removal, InternalIP change, hand-deleted routes), that the
 * API going away and answering 410 leads to convergence without removing a
 * route, that an agent restart does not disturb traffic, readiness
 * (conflist and STATUS), and that bad Nodes and bad credentials are
 * logged, never fatal, and never touch existing routes.
 */
import assert from "node:assert/strict";
import {
  AgentProcess,
  capture,
  eventually,
  exec,
  mustExec,
  PONTOON,
  RouteMonitor,
  SimCluster,
  type SimNode,
} from "./cluster.ts";
import { KubeApiServer, makeTestPki, testNode } from "./kubeapi.ts";
import { buildCnitool, exists } from "./runtimes.ts";

const CONFLIST = "10-pontoon.conflist";

/** The tcpdump filter for an ICMP (v4) or ICMPv6 echo request sent from `src`. */
function echoFrom(src: string): string {
  return src.includes(":")
    ? `icmp6[icmp6type] == icmp6-echo and src host ${src}`
    : `icmp[icmptype] == icmp-echo and src host ${src}`;
}

/** A STATUS config pointing at the node's agent, usable before the agent wrote its conflist. */
function statusConf(node: SimNode): Record<string, unknown> {
  return {
    cniVersion: "1.1.0",
    name: "pontoon",
    type: "pontoon",
    agentSocket: node.apiSocket,
    ipam: { type: "pontoon-ipam", ranges: [[{ subnet: node.podCidr4 }]], dataDir: node.ipamDir },
  };
}

/** Waits until every node holds exactly the routes to `peersOf(node)`. */
async function routesConverge(c: SimCluster, peersOf: (n: SimNode) => SimNode[], nodes = c.nodes): Promise<void> {
  for (const node of nodes) {
    const want = c.expectedRoutes(peersOf(node));
    try {
      await eventually(
        `routes on ${node.name}`,
        async () => JSON.stringify(await c.routes(node)) === JSON.stringify(want),
      );
    } catch {
      const have = await c.routes(node);
      throw new Error(`routes on ${node.name}: want ${JSON.stringify(want)}, have ${JSON.stringify(have)}`);
    }
  }
}

Deno.test({
  name: "multi-node: three agents route pods across nodes (v4+v6, no NAT) and follow the cluster",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const c = await SimCluster.create({ nodes: 3 });
    const [n1, n2, n3] = c.nodes;
    const others = (n: SimNode) => c.nodes.filter((o) => o !== n);
    try {
      await t.step("the conflist appears only after the pod CIDR is assigned; STATUS is 50 until synced", async () => {
        // A strict reverse-path filter, as some distributions ship; the agent relaxes it to loose.
        await mustExec(["ip", "netns", "exec", n1.netns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"]);
        for (const n of c.nodes) c.startAgent(n);
        for (const n of c.nodes) await n.agent!.waitForLog(/waiting for node node\d to be assigned a pod CIDR/);
        for (const n of c.nodes) {
          assert.equal(exists(`${n.confDir}/${CONFLIST}`), false, `${n.name} wrote a conflist without a pod CIDR`);
          const status = await c.cni(n, "STATUS", undefined, statusConf(n));
          assert.notEqual(status.code, 0);
          assert.equal(JSON.parse(status.stdout).code, 50, status.stdout);
          assert.match(status.stdout, /not ready.*pod CIDR/);
          assert.equal(c.readiness(n).status, 503);
        }
        for (const n of c.nodes) c.assignPodCidrs(n);
        for (const n of c.nodes) {
          await eventually(`${n.name}'s conflist`, () => exists(`${n.confDir}/${CONFLIST}`));
          await eventually(`${n.name} ready`, () => c.isReady(n));
          const status = await c.cni(n, "STATUS");
          assert.equal(status.code, 0, status.stdout + status.stderr);
          const conf = c.pluginConfig(n);
          assert.equal(conf.cniVersion, "1.1.0");
          assert.equal(conf.agentSocket, n.apiSocket);
          assert.deepEqual(conf.ipam, {
            type: "pontoon-ipam",
            ranges: [[{ subnet: n.podCidr4 }], [{ subnet: n.podCidr6 }]],
            dataDir: n.ipamDir,
          });
        }
      });

      await t.step("the agent sets forwarding, bridge netfilter and a loose rp_filter in its node", async () => {
        const sysctl = async (key: string) =>
          (await mustExec(["ip", "netns", "exec", n1.netns, "sysctl", "-n", key])).trim();
        assert.equal(await sysctl("net.ipv4.ip_forward"), "1");
        assert.equal(await sysctl("net.ipv6.conf.all.forwarding"), "1");
        assert.equal(await sysctl("net.ipv4.conf.all.rp_filter"), "2");
        if (exists("/proc/sys/net/bridge/bridge-nf-call-iptables")) {
          assert.equal(await sysctl("net.bridge.bridge-nf-call-iptables"), "1");
        } else {
          await n1.agent!.waitForLog(/br_netfilter is NOT loaded/);
        }
      });

      await t.step("every node routes to every other node's pod CIDRs via its InternalIP (proto 158)", async () => {
        await routesConverge(c, others);
        const state = c.readiness(n1).body as {
          routes: unknown[];
          counters: Record<string, number>;
          nodesKnown: number;
        };
        assert.equal(state.routes.length, 4);
        assert.equal(state.nodesKnown, 3);
        assert.deepEqual((state as unknown as { nodes: unknown[] }).nodes[1], {
          name: "node2",
          podCIDRs: [n2.podCidr4, n2.podCidr6],
          internalIPs: [n2.ip4, n2.ip6],
        });
        assert.ok(state.counters.routesAdded >= 4 && state.counters.lists >= 1, JSON.stringify(state.counters));
      });

      const pods = [await c.addPod(n1), await c.addPod(n2), await c.addPod(n3)];
      const [p1, p2, p3] = pods;

      await t.step("a pod on node 1 pings pods on nodes 2 and 3, IPv4 and IPv6", async () => {
        for (const dst of [p2, p3]) {
          assert.ok(await c.ping(p1, dst.ip4), `ping ${dst.ip4} from ${p1.ip4}`);
          assert.ok(await c.ping(p1, dst.ip6), `ping ${dst.ip6} from ${p1.ip6}`);
        }
      });

      await t.step("the other pod sees the sender's real address (no NAT across nodes)", async () => {
        for (const [src, dst] of [[p1.ip4, p2.ip4], [p1.ip6, p2.ip6]]) {
          const filter = echoFrom(src);
          const seen = await capture(p2.netns, "eth0", filter, () => c.ping(p1, dst, 3));
          assert.ok(seen, `${p2.name} saw no packet matching "${filter}"`);
        }
        const seen3 = await capture(p3.netns, "eth0", echoFrom(p1.ip4), () => c.ping(p1, p3.ip4, 3));
        assert.ok(seen3, "node 3's pod saw no packet from node 1's pod address");
      });

      await t.step("egress leaving the cluster CIDR is masqueraded to the node's address (v4 and v6)", async () => {
        const outside4 = `${c.prefix4}.254`;
        const outside6 = `${c.prefix6}fe`;
        for (const [family, src, dst] of [["IPv4", n1.ip4, outside4], ["IPv6", n1.ip6, outside6]]) {
          const seen = await capture(null, c.hostLink, echoFrom(src), () => c.ping(p1, dst, 3));
          assert.ok(seen, `the outside saw no ${family} packet from node 1's address ${src}`);
        }
      });

      await t.step("a route deleted by hand comes back", async () => {
        await mustExec(["ip", "-n", n1.netns, "route", "del", n2.podCidr4]);
        await mustExec(["ip", "-n", n1.netns, "-6", "route", "del", n2.podCidr6]);
        await routesConverge(c, others, [n1]);
        assert.ok(await c.ping(p1, p2.ip4));
        await n1.agent!.waitForLog(/adding route 10\.244\.2\.0\/24/);
      });

      await t.step("changing a node's InternalIP moves the route to the new address", async () => {
        const newIp4 = `${c.prefix4}.33`;
        const newIp6 = `${c.prefix6}33`;
        await mustExec(["ip", "-n", n3.netns, "addr", "add", `${newIp4}/24`, "dev", "eth0"]);
        await mustExec(["ip", "-n", n3.netns, "addr", "add", `${newIp6}/64`, "dev", "eth0", "nodad"]);
        c.api.updateNode(n3.name, (n) => {
          n.status!.addresses = [{ type: "InternalIP", address: newIp4 }, { type: "InternalIP", address: newIp6 }];
        });
        n3.ip4 = newIp4;
        n3.ip6 = newIp6;
        await routesConverge(c, others, [n1, n2]);
        assert.ok(await c.ping(p1, p3.ip4), "ping across the moved IPv4 route");
        assert.ok(await c.ping(p1, p3.ip6), "ping across the moved IPv6 route");
      });

      await t.step("API down, then back answering 410: convergence, and no route removed in between", async () => {
        const monitors = c.nodes.map((n) => new RouteMonitor(n.netns));
        const listsBefore = c.api.count("list", 200);
        await c.api.stop();
        for (const n of c.nodes) await n.agent!.waitForLog(/Kubernetes API: .*(refused|broke)/);
        // While the API is away the cluster changes, and the history the
        // agents' resource versions point into is compacted away.
        c.api.setNode(testNode("node4", { podCIDRs: ["10.244.4.0/24"], internalIPs: [`${c.prefix4}.4`] }));
        c.api.compact();
        await c.api.startServing();
        for (const n of c.nodes) {
          await eventually(
            `${n.name} routes node4`,
            async () => (await c.routes(n)).includes(`10.244.4.0/24 via ${c.prefix4}.4`),
          );
        }
        assert.ok(c.api.count("list", 200) >= listsBefore + 3, "every agent listed again");
        assert.ok(c.api.count("watch", 200) > 0);
        // A stale watch gets 410; the agents relist from it as well.
        c.api.deleteNode("node4");
        c.api.expireWatches();
        for (const n of c.nodes) await n.agent!.waitForLog(/watch expired .*410|too old resource version/);
        await routesConverge(c, others);
        for (const [i, m] of monitors.entries()) {
          const lines = await m.stop();
          const removed = lines.filter((l) => l.startsWith("Deleted") && !l.includes("10.244.4.0/24"));
          assert.deepEqual(removed, [], `routes removed on ${c.nodes[i].name} during the outage`);
        }
        assert.ok(await c.ping(p1, p2.ip4));
      });

      await t.step("restarting agents keeps traffic flowing and no route is flushed", async () => {
        const monitors = [new RouteMonitor(n1.netns), new RouteMonitor(n2.netns)];
        const mtimes = [n1, n2].map((n) => Deno.statSync(`${n.confDir}/${CONFLIST}`).mtime?.getTime());
        const pinging = exec([
          "ip",
          "netns",
          "exec",
          p1.netns,
          "ping",
          "-n",
          "-c",
          "25",
          "-i",
          "0.2",
          "-W",
          "1",
          p2.ip4,
        ]);
        for (const n of [n1, n2]) {
          assert.equal(await n.agent!.stop(), 0, `${n.name}'s agent exits 0 on SIGTERM`);
          assert.equal(exists(`${n.confDir}/${CONFLIST}`), true, "the conflist stays on shutdown");
          assert.deepEqual(await c.routes(n), c.expectedRoutes(others(n)), "routes stay on shutdown");
        }
        assert.ok(await c.ping(p1, p2.ip6), "traffic flows with no agent running");
        // The agents synced on this boot, so a restart must not flip the network to not-ready.
        for (const n of [n1, n2]) {
          const status = await c.cni(n, "STATUS");
          assert.equal(status.code, 0, `STATUS while ${n.name}'s agent restarts: ${status.stdout}`);
          assert.match(status.stderr, /not reachable.*synced earlier on this boot/);
        }
        for (const n of [n1, n2]) c.startAgent(n);
        for (const n of [n1, n2]) await eventually(`${n.name} ready again`, () => c.isReady(n));
        const result = await pinging;
        assert.equal(result.code, 0, result.stdout);
        assert.match(result.stdout, / 0% packet loss/);
        for (const m of monitors) assert.deepEqual((await m.stop()).filter((l) => l.startsWith("Deleted")), []);
        for (const n of [n1, n2]) assert.deepEqual(n.agent!.grep(/adding route|replacing route|removing route/), []);
        for (const [i, n] of [n1, n2].entries()) {
          assert.equal(Deno.statSync(`${n.confDir}/${CONFLIST}`).mtime?.getTime(), mtimes[i], "conflist not rewritten");
          const counters = c.readiness(n).body.counters as Record<string, number>;
          assert.equal(counters.conflistWrites, 0);
          assert.equal(counters.routesAdded + counters.routesReplaced + counters.routesRemoved, 0);
        }
      });

      await t.step("what changed while an agent was down is reconciled when it starts again", async () => {
        assert.equal(await n1.agent!.stop(), 0);
        await mustExec(["ip", "-n", n1.netns, "route", "del", n3.podCidr4]);
        await mustExec(["ip", "-n", n1.netns, "route", "add", "10.244.99.0/24", "via", n2.ip4, "proto", "158"]);
        c.startAgent(n1);
        await routesConverge(c, others, [n1]);
        await n1.agent!.waitForLog(/removing route 10\.244\.99\.0\/24: no node owns it/);
      });

      await t.step("bad Nodes are logged and reported; none crashes an agent or touches existing routes", async () => {
        const before = await Promise.all(c.nodes.map((n) => c.routes(n)));
        c.api.setNode(testNode("bad-cidr", { podCIDRs: ["10.244.300.0/24"], internalIPs: [`${c.prefix4}.50`] }));
        c.api.setNode(testNode("overlap-own", { podCIDRs: ["10.244.1.128/25"], internalIPs: [`${c.prefix4}.51`] }));
        c.api.setNode(testNode("overlap-peer", { podCIDRs: ["10.244.2.0/23"], internalIPs: [`${c.prefix4}.52`] }));
        c.api.setNode(testNode("no-ip", { podCIDRs: ["10.244.53.0/24"] }));
        c.api.setNode(testNode("far-away", { podCIDRs: ["10.244.54.0/24"], internalIPs: ["203.0.113.54"] }));
        await n1.agent!.waitForLog(/node bad-cidr: pod CIDR "10\.244\.300\.0\/24" is not a CIDR/);
        await n1.agent!.waitForLog(/node overlap-own: pod CIDR 10\.244\.1\.128\/25 overlaps this node's/);
        await n1.agent!.waitForLog(
          /node overlap-peer: pod CIDR 10\.244\.2\.0\/23 overlaps node node2's .*keeps its route/,
        );
        await n1.agent!.waitForLog(/node no-ip: has no InternalIP/);
        await n1.agent!.waitForLog(/node far-away: InternalIP 203\.0\.113\.54 is not on a local subnet/);
        const problems = c.readiness(n1).body.problems as { node: string }[];
        assert.deepEqual(
          [...new Set(problems.map((p) => p.node))].sort(),
          ["bad-cidr", "far-away", "no-ip", "overlap-own", "overlap-peer"],
        );
        await new Promise((r) => setTimeout(r, 2500)); // one resync more
        for (const [i, n] of c.nodes.entries()) {
          assert.ok(n.agent!.running, `${n.name}'s agent is still running`);
          assert.deepEqual(await c.routes(n), before[i], `routes on ${n.name} unchanged`);
        }
        assert.ok(await c.ping(p1, p2.ip4));
        for (const name of ["bad-cidr", "overlap-own", "overlap-peer", "no-ip", "far-away"]) c.api.deleteNode(name);
      });

      await t.step("removing node 3 from the API removes its routes on the others", async () => {
        c.api.deleteNode(n3.name);
        await routesConverge(c, (n) => others(n).filter((o) => o !== n3), [n1, n2]);
        assert.equal(await c.ping(p1, p3.ip4, 1), false, "node 3's pods are unreachable without its route");
        assert.ok(await c.ping(p1, p2.ip4), "node 2 is still reachable");
        await n3.agent!.waitForLog(/node node3 is not in the Kubernetes API/);
        assert.ok(n3.agent!.running);
      });

      await t.step("SIGTERM stops every agent cleanly", async () => {
        for (const n of c.nodes) assert.equal(await n.agent!.stop(), 0);
        for (const n of c.nodes) assert.equal(exists(n.apiSocket), false, "the API socket is removed");
      });
    } finally {
      await c.destroy();
    }
  },
});

Deno.test({
  name: "agent: an unreachable API server and a wrong CA are logged and retried; existing routes stay",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const c = await SimCluster.create({ nodes: 1 });
    const [n1] = c.nodes;
    const other = await makeTestPki(`${c.dir}/other-pki`, { caName: "someone-else" });
    const agents: AgentProcess[] = [];
    try {
      // A route the agent owns from an earlier run, via a neighbour on the underlay.
      await mustExec(["ip", "-n", n1.netns, "route", "add", "10.244.9.0/24", "via", `${c.prefix4}.9`, "proto", "158"]);
      const wrongCa = `${c.dir}/wrong-ca.kubeconfig`;
      Deno.writeTextFileSync(wrongCa, c.api.kubeconfig({ caCert: other.caCert }));
      const unreachable = `${c.dir}/unreachable.kubeconfig`;
      // The underlay's .254 with a port nothing listens on.
      const closed = await KubeApiServer.start({ dir: `${c.dir}/closed`, hostname: `${c.prefix4}.254` });
      Deno.writeTextFileSync(unreachable, closed.kubeconfig());
      await closed.close();
      // An address on the underlay where no host answers ARP.
      const noHost = `${c.dir}/no-host.kubeconfig`;
      Deno.writeTextFileSync(noHost, c.api.kubeconfig({ host: `${c.prefix4}.77` }));
      const cases = [
        [wrongCa, /TLS verification of .* failed \(is the CA right/],
        [unreachable, /refused the connection/],
        [noHost, /is unreachable|did not answer/],
      ] as const;
      for (const [kubeconfig, pattern] of cases) {
        const agent = new AgentProcess(n1.netns, [...c.agentArgs(n1), `--kubeconfig=${kubeconfig}`]);
        agents.push(agent);
        await agent.waitForLog(pattern);
        await agent.waitForLog(/retrying in/);
        await new Promise((r) => setTimeout(r, 1500));
        assert.ok(agent.running, `agent with ${kubeconfig} still runs`);
        assert.deepEqual(await c.routes(n1), [`10.244.9.0/24 via ${c.prefix4}.9`]);
        assert.equal(exists(`${n1.confDir}/${CONFLIST}`), false);
        assert.equal(c.readiness(n1).status, 503);
        assert.match(String(c.readiness(n1).body.apiError), pattern);
        assert.equal(await agent.stop(), 0);
      }
      // A wrong token: 401, logged with a hint, retried.
      const badToken = `${c.dir}/bad-token.kubeconfig`;
      Deno.writeTextFileSync(badToken, c.api.kubeconfig({ token: "not-the-token" }));
      const agent = new AgentProcess(n1.netns, [...c.agentArgs(n1), `--kubeconfig=${badToken}`]);
      agents.push(agent);
      await agent.waitForLog(/HTTP 401 \(the token or client certificate was rejected\)/);
      assert.ok(agent.running);
      assert.equal(await agent.stop(), 0);
      assert.deepEqual(await c.routes(n1), [`10.244.9.0/24 via ${c.prefix4}.9`]);
    } finally {
      for (const a of agents) await a.stop();
      await c.destroy();
    }
  },
});

Deno.test({
  name: "agent --once: syncs (conflist and routes) and exits 0; exits 1 when the node has no pod CIDR",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const c = await SimCluster.create({ nodes: 2 });
    const [n1, n2] = c.nodes;
    try {
      const unassigned = await exec([
        "ip",
        "netns",
        "exec",
        n1.netns,
        PONTOON,
        "agent",
        ...c.agentArgs(n1, ["--once"]),
      ]);
      assert.equal(unassigned.code, 1, unassigned.stderr);
      assert.match(unassigned.stderr, /not synced: waiting for node node1 to be assigned a pod CIDR/);
      c.assignPodCidrs(n1);
      c.assignPodCidrs(n2);
      const synced = await exec(["ip", "netns", "exec", n1.netns, PONTOON, "agent", ...c.agentArgs(n1, ["--once"])]);
      assert.equal(synced.code, 0, synced.stderr);
      assert.equal(exists(`${n1.confDir}/${CONFLIST}`), true);
      assert.deepEqual(await c.routes(n1), c.expectedRoutes([n2]));
      assert.equal(exists(n1.apiSocket), false, "--once serves no socket");
    } finally {
      await c.destroy();
    }
  },
});

Deno.test({
  name: "agent: a 1.0.0 conflist with portmap chained is read by the real libcni client (cnitool) inside the node",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const c = await SimCluster.create({ nodes: 2 });
    const [n1, n2] = c.nodes;
    const cnitool = await buildCnitool();
    const pod = await c.extraNetns("ppl");
    const env = {
      NETCONFPATH: n1.confDir,
      CNI_PATH: `${new URL("../dist", import.meta.url).pathname}:/usr/lib/cni`,
      CNI_CACHE_DIR: `${n1.dir}/cache`,
      CNI_IFNAME: "eth0",
      CNI_CONTAINERID: pod,
      PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    };
    try {
      Deno.symlinkSync("/usr/lib/cni/portmap", `${n1.dir}/bin/portmap`);
      c.assignPodCidrs(n1);
      c.assignPodCidrs(n2);
      const synced = await exec([
        "ip",
        "netns",
        "exec",
        n1.netns,
        PONTOON,
        "agent",
        ...c.agentArgs(n1, ["--once", "--conflist-version=1.0.0"]),
      ]);
      assert.equal(synced.code, 0, synced.stderr);
      const list = JSON.parse(Deno.readTextFileSync(`${n1.confDir}/${CONFLIST}`));
      assert.equal(list.cniVersion, "1.0.0");
      assert.deepEqual(list.plugins.map((p: { type: string }) => p.type), ["pontoon", "portmap"]);
      const add = await exec(["ip", "netns", "exec", n1.netns, cnitool, "add", "pontoon", `/run/netns/${pod}`], {
        env,
      });
      assert.equal(add.code, 0, add.stdout + add.stderr);
      const result = JSON.parse(add.stdout);
      assert.equal(result.cniVersion, "1.0.0");
      assert.match(result.ips[0].address, /^10\.244\.1\.\d+\/24$/);
      const del = await exec(["ip", "netns", "exec", n1.netns, cnitool, "del", "pontoon", `/run/netns/${pod}`], {
        env,
      });
      assert.equal(del.code, 0, del.stdout + del.stderr);
    } finally {
      await c.destroy();
    }
  },
});
