/** Unit tests: the host-gw route planner (pure data; no root needed). */
import assert from "node:assert/strict";
import { type Cidr, formatCidr, formatIp, parseCidr } from "../lib/addr.ts";
import type { KubeNode } from "../lib/kube.ts";
import {
  desiredRoutes,
  parseRouteTable,
  planChanges,
  podCidrsOf,
  ROUTE_PROTOCOL,
  routeCommands,
  type RouteTable,
} from "../lib/routes.ts";

const cidr = (text: string): Cidr => parseCidr(text)!;

function node(name: string, podCIDRs: string[] | undefined, ips: string[]): KubeNode {
  return {
    metadata: { name },
    spec: podCIDRs ? { podCIDR: podCIDRs[0], podCIDRs } : {},
    status: {
      addresses: [...ips.map((address) => ({ type: "InternalIP", address })), { type: "Hostname", address: name }],
    },
  };
}

/** A table as `ip -json route show table all` prints it on a node with underlay 192.168.50.0/24 and fd50::/64. */
function table(extra: Record<string, string>[] = []): RouteTable {
  return parseRouteTable([
    { dst: "default", gateway: "192.168.50.254", dev: "eth0", protocol: "static" },
    { dst: "192.168.50.0/24", dev: "eth0", protocol: "kernel" },
    { dst: "fd50::/64", dev: "eth0", protocol: "kernel" },
    { dst: "10.1.0.0/24", dev: "pontoon0", protocol: "kernel" },
    { dst: "192.168.50.1", dev: "eth0", protocol: "kernel", table: "local", type: "local" },
    ...extra,
  ]);
}

const SELF = [cidr("10.1.0.0/24"), cidr("fd01::/64")];
const text = (r: { node: string; dst: Cidr; gateway: { family: 4 | 6; value: bigint } }) =>
  `${r.node} ${formatCidr(r.dst)} via ${formatIp(r.gateway)}`;

Deno.test("routes: one route per other node and family via its InternalIP, none to itself", () => {
  const nodes = [
    node("n1", ["10.1.0.0/24", "fd01::/64"], ["192.168.50.1", "fd50::1"]),
    node("n2", ["10.1.1.0/24", "fd01:0:0:1::/64"], ["192.168.50.2", "fd50::2"]),
    node("n3", ["10.1.2.0/24"], ["192.168.50.3"]),
  ];
  const want = desiredRoutes("n1", SELF, nodes, table());
  assert.deepEqual(want.routes.map(text), [
    "n2 10.1.1.0/24 via 192.168.50.2",
    "n2 fd01:0:0:1::/64 via fd50::2",
    "n3 10.1.2.0/24 via 192.168.50.3",
  ]);
  assert.deepEqual(want.problems, []);
});

Deno.test("routes: malformed and host-bit pod CIDRs get no route and a problem naming them", () => {
  const nodes = [
    node("bad", ["10.1.300.0/24"], ["192.168.50.4"]),
    node("bits", ["10.1.5.7/24"], ["192.168.50.5"]),
    node("text", ["not-a-cidr"], ["192.168.50.6"]),
  ];
  const want = desiredRoutes("n1", SELF, nodes, table());
  assert.deepEqual(want.routes, []);
  assert.equal(want.problems.length, 3);
  assert.match(want.problems.find((p) => p.node === "bad")!.problem, /"10\.1\.300\.0\/24" is not a CIDR/);
  assert.match(want.problems.find((p) => p.node === "bits")!.problem, /host bits/);
  assert.match(podCidrsOf(nodes[2]).problems[0], /not-a-cidr/);
});

Deno.test("routes: a pod CIDR overlapping this node's is refused", () => {
  const want = desiredRoutes("n1", SELF, [node("x", ["10.1.0.128/25"], ["192.168.50.9"])], table());
  assert.deepEqual(want.routes, []);
  assert.match(want.problems[0].problem, /overlaps this node's 10\.1\.0\.0\/24/);
});

Deno.test("routes: of two overlapping peers the routed one keeps its route; unrouted ones get none", () => {
  const nodes = [node("n2", ["10.1.1.0/24"], ["192.168.50.2"]), node("n9", ["10.1.0.0/16"], ["192.168.50.9"])];
  const fresh = desiredRoutes("n1", [cidr("10.2.0.0/24")], nodes, table());
  assert.deepEqual(fresh.routes, []);
  assert.equal(fresh.problems.length, 2);
  const routed = table([{ dst: "10.1.1.0/24", gateway: "192.168.50.2", dev: "eth0", protocol: "158" }]);
  const kept = desiredRoutes("n1", [cidr("10.2.0.0/24")], nodes, routed);
  assert.deepEqual(kept.routes.map(text), ["n2 10.1.1.0/24 via 192.168.50.2"]);
  assert.match(kept.problems[0].problem, /n9|n2 keeps its route/);
  assert.deepEqual(planChanges(kept.routes, routed), { put: [], remove: [] });
});

Deno.test("routes: a node without an InternalIP (or of the CIDR's family) gets no route and a problem", () => {
  const nodes = [
    node("noip", ["10.1.7.0/24"], []),
    node("v4only", ["10.1.8.0/24", "fd01:0:0:8::/64"], ["192.168.50.8"]),
  ];
  const want = desiredRoutes("n1", SELF, nodes, table());
  assert.deepEqual(want.routes.map(text), ["v4only 10.1.8.0/24 via 192.168.50.8"]);
  assert.match(want.problems.find((p) => p.node === "noip")!.problem, /no InternalIP/);
  assert.match(want.problems.find((p) => p.node === "v4only")!.problem, /no IPv6 InternalIP/);
});

Deno.test("routes: an InternalIP not on a local subnet is reported, not given a broken route", () => {
  const want = desiredRoutes("n1", SELF, [node("far", ["10.1.9.0/24"], ["172.31.0.9"])], table());
  assert.deepEqual(want.routes, []);
  assert.match(want.problems[0].problem, /172\.31\.0\.9 is not on a local subnet/);
});

Deno.test("routes: a multipath route is not a connected subnet", () => {
  const t = table([{ dst: "172.31.0.0/16", protocol: "static", nexthops: [] } as unknown as Record<string, string>]);
  const want = desiredRoutes("n1", SELF, [node("far", ["10.1.9.0/24"], ["172.31.0.9"])], t);
  assert.deepEqual(want.routes, []);
  assert.match(want.problems[0].problem, /not on a local subnet/);
});

Deno.test("routes: a node without a pod CIDR yet is neither routed nor a problem", () => {
  const want = desiredRoutes("n1", SELF, [node("new", undefined, ["192.168.50.7"])], table());
  assert.deepEqual(want, { routes: [], problems: [] });
});

Deno.test("routes: a route to the same destination that Pontoon does not own is left alone", () => {
  const t = table([{ dst: "10.1.1.0/24", gateway: "192.168.50.100", dev: "eth0", protocol: "static" }]);
  const want = desiredRoutes("n1", SELF, [node("n2", ["10.1.1.0/24"], ["192.168.50.2"])], t);
  assert.deepEqual(want.routes, []);
  assert.match(want.problems[0].problem, /proto static.*left alone/);
});

Deno.test("routes: planning adds missing, replaces wrong gateways, removes unowned, keeps correct ones", () => {
  const t = table([
    { dst: "10.1.1.0/24", gateway: "192.168.50.2", dev: "eth0", protocol: "158" },
    { dst: "10.1.2.0/24", gateway: "192.168.50.99", dev: "eth0", protocol: "158" },
    { dst: "10.1.3.0/24", gateway: "192.168.50.3", dev: "eth0", protocol: "158" },
  ]);
  const nodes = [
    node("n2", ["10.1.1.0/24"], ["192.168.50.2"]),
    node("n3", ["10.1.2.0/24"], ["192.168.50.3"]),
    node("n4", ["10.1.4.0/24"], ["192.168.50.4"]),
  ];
  const changes = planChanges(desiredRoutes("n1", SELF, nodes, t).routes, t);
  assert.deepEqual(changes.put.map(text), ["n3 10.1.2.0/24 via 192.168.50.3", "n4 10.1.4.0/24 via 192.168.50.4"]);
  assert.deepEqual(changes.remove.map((r) => formatCidr(r.dst)), ["10.1.3.0/24"]);
  const proto = String(ROUTE_PROTOCOL);
  assert.deepEqual(routeCommands(changes), [
    ["route", "del", "10.1.3.0/24", "table", "main", "proto", proto],
    ["route", "replace", "10.1.2.0/24", "via", "192.168.50.3", "table", "main", "proto", proto],
    ["route", "replace", "10.1.4.0/24", "via", "192.168.50.4", "table", "main", "proto", proto],
  ]);
});

Deno.test("routes: parsing the table keeps main-table unicast routes and splits Pontoon's from the rest", () => {
  const t = parseRouteTable([
    { dst: "10.1.1.0/24", gateway: "192.168.50.2", dev: "eth0", protocol: "158" },
    { dst: "fd01:0:0:1::/64", gateway: "fd50::2", dev: "eth0", protocol: "158" },
    { dst: "192.168.50.0/24", dev: "eth0", protocol: "kernel" },
    { dst: "192.168.50.1", dev: "eth0", table: "local", type: "local", protocol: "kernel" },
    { dst: "ff00::/8", dev: "eth0", table: "local", type: "multicast", protocol: "kernel" },
    { dst: "10.9.0.0/16", dev: "eth0", table: "100", protocol: "158" },
    { dst: "default", gateway: "192.168.50.254", dev: "eth0", protocol: "static" },
  ]);
  assert.deepEqual(t.owned.map((r) => formatCidr(r.dst)), ["10.1.1.0/24", "fd01:0:0:1::/64"]);
  assert.deepEqual(t.foreign.map((r) => formatCidr(r.dst)), ["192.168.50.0/24"]);
});

Deno.test("routes: a peer whose InternalIP is this node's own address, or its subnet's network or broadcast address, gets no route", () => {
  const nodes = [
    node("copy", ["10.1.7.0/24"], ["192.168.50.1"]),
    node("net", ["10.1.8.0/24"], ["192.168.50.0"]),
    node("bcast", ["10.1.9.0/24"], ["192.168.50.255"]),
    node("ok", ["10.1.10.0/24"], ["192.168.50.10"]),
  ];
  const want = desiredRoutes("n1", SELF, nodes, table());
  assert.deepEqual(want.routes.map(text), ["ok 10.1.10.0/24 via 192.168.50.10"]);
  assert.match(want.problems.find((p) => p.node === "copy")!.problem, /192\.168\.50\.1 is this node's own address/);
  assert.match(
    want.problems.find((p) => p.node === "net")!.problem,
    /network or broadcast address of 192\.168\.50\.0\/24/,
  );
  assert.match(want.problems.find((p) => p.node === "bcast")!.problem, /network or broadcast address/);
});
