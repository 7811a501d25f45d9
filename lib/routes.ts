/**
 * Routes between nodes (host-gw): for every other node with a pod CIDR and
 * an InternalIP on a local subnet, a route `podCIDR via nodeIP` in the main
 * table, marked with Pontoon's own route protocol number.
 *
 * Planning is pure data: Nodes and the current routing table in, the routes
 * wanted, the changes and the problems out. Only routes carrying
 * `ROUTE_PROTOCOL` are ever replaced or deleted; a route someone else put
 * to the same destination is reported and left alone. System effects go
 * through `ip.ts`.
 *
 * @module
 */
import {
  canonicalNetwork,
  type Cidr,
  contains,
  type Family,
  formatCidr,
  formatIp,
  type Ip,
  lastAddress,
  networkAddress,
  overlaps,
  parseCidr,
  parseIp,
} from "./addr.ts";
import { type IpCommand, runBatch, showJson } from "./ip.ts";
import type { KubeNode } from "./kube.ts";

/** The route protocol number marking Pontoon's routes (`ip route ... proto 158`). */
export const ROUTE_PROTOCOL = 158;

/** A route to another node's pod CIDR. */
export interface PeerRoute {
  /** The node that owns `dst`. */
  node: string;
  dst: Cidr;
  gateway: Ip;
}

/** Something wrong with a node that keeps it (or one of its CIDRs) from getting a route. */
export interface NodeProblem {
  node: string;
  problem: string;
}

/** One route of the main table, as far as planning cares. */
export interface TableRoute {
  dst: Cidr;
  gateway?: Ip;
  /** The route's protocol as `ip` prints it ("kernel", "static", "158"). */
  protocol: string;
  dev?: string;
}

/** The main table split the way planning needs it. */
export interface RouteTable {
  /** Routes carrying Pontoon's protocol number. */
  owned: TableRoute[];
  /** Every other route with a concrete destination (not default). */
  foreign: TableRoute[];
  /** This host's own addresses (the local table's `local` routes). */
  local?: Ip[];
}

/** A node's pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`), parsed, with the entries that are not CIDRs. */
export function podCidrsOf(node: KubeNode): { cidrs: Cidr[]; problems: string[] } {
  const texts = node.spec?.podCIDRs?.length ? node.spec.podCIDRs : node.spec?.podCIDR ? [node.spec.podCIDR] : [];
  const cidrs: Cidr[] = [];
  const problems: string[] = [];
  for (const text of texts) {
    const cidr = typeof text === "string" ? parseCidr(text) : null;
    if (!cidr) {
      problems.push(`pod CIDR ${JSON.stringify(text)} is not a CIDR`);
    } else if (canonicalNetwork(cidr).value !== cidr.value) {
      problems.push(`pod CIDR ${text} has host bits set`);
    } else if (cidrs.some((c) => c.family === cidr.family)) {
      problems.push(`pod CIDR ${text} is a second CIDR of the same family; ignored`);
    } else {
      cidrs.push(cidr);
    }
  }
  return { cidrs, problems };
}

/** A node's InternalIP addresses (parsed; text that is no address is skipped). */
export function internalIpsOf(node: KubeNode): Ip[] {
  return (node.status?.addresses ?? [])
    .filter((a) => a?.type === "InternalIP" && typeof a.address === "string")
    .map((a) => parseIp(a.address))
    .filter((ip): ip is Ip => ip !== null);
}

/** What the routes to other nodes should be, and why some nodes get none. */
export interface DesiredRoutes {
  routes: PeerRoute[];
  problems: NodeProblem[];
}

/**
 * The routes this node (`self`, with pod CIDRs `selfCidrs`) should hold to
 * every other node, given the main table's directly connected subnets.
 * A CIDR that is malformed, overlaps this node's or another node's, has no
 * InternalIP of its family, or whose InternalIP is not on a local subnet,
 * gets no route and a problem instead.
 */
export function desiredRoutes(self: string, selfCidrs: Cidr[], nodes: KubeNode[], table: RouteTable): DesiredRoutes {
  const problems: NodeProblem[] = [];
  const candidates: PeerRoute[] = [];
  const connected = connectedSubnets(table);
  for (const node of [...nodes].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))) {
    const name = node.metadata.name;
    if (name === self) continue;
    const { cidrs, problems: bad } = podCidrsOf(node);
    for (const problem of bad) problems.push({ node: name, problem });
    if (cidrs.length === 0) continue; // not allocated yet: nothing to route
    const ips = internalIpsOf(node);
    if (ips.length === 0) {
      problems.push({ node: name, problem: "has no InternalIP address; no route to its pods" });
      continue;
    }
    for (const dst of cidrs) {
      const mine = selfCidrs.find((c) => overlaps(c, dst));
      if (mine) {
        problems.push({ node: name, problem: `pod CIDR ${formatCidr(dst)} overlaps this node's ${formatCidr(mine)}` });
        continue;
      }
      const gateway = ips.find((ip) => ip.family === dst.family);
      if (!gateway) {
        problems.push({ node: name, problem: `has no IPv${dst.family} InternalIP for pod CIDR ${formatCidr(dst)}` });
        continue;
      }
      const subnet = connected.find((s) => contains(s, gateway));
      if (subnet && table.local?.some((a) => sameIp(a, gateway))) {
        problems.push({
          node: name,
          problem: `InternalIP ${formatIp(gateway)} is this node's own address (a Node copied from this one?); ` +
            `no route to ${formatCidr(dst)}`,
        });
        continue;
      }
      if (subnet && gateway.family === 4 && subnet.prefix < 31 && isNetworkOrBroadcast(subnet, gateway)) {
        problems.push({
          node: name,
          problem: `InternalIP ${formatIp(gateway)} is the network or broadcast address of ${
            formatCidr(canonicalNetwork(subnet))
          }; no route to ${formatCidr(dst)}`,
        });
        continue;
      }
      if (!subnet) {
        problems.push({
          node: name,
          problem: `InternalIP ${formatIp(gateway)} is not on a local subnet (not directly reachable); ` +
            `no route to ${formatCidr(dst)}`,
        });
        continue;
      }
      candidates.push({ node: name, dst, gateway });
    }
  }
  return withoutConflicts(candidates, table, problems);
}

function isNetworkOrBroadcast(subnet: Cidr, ip: Ip): boolean {
  return sameIp(networkAddress(subnet), ip) || sameIp(lastAddress(subnet), ip);
}

/**
 * Connected subnets: routes straight out of an interface (a device, no
 * gateway; multipath routes name no device at the top) that are not
 * Pontoon's and not default.
 */
function connectedSubnets(table: RouteTable): Cidr[] {
  return table.foreign.filter((r) => !r.gateway && r.dev !== undefined && r.dev !== "lo").map((r) => r.dst);
}

function withoutConflicts(candidates: PeerRoute[], table: RouteTable, problems: NodeProblem[]): DesiredRoutes {
  const routes: PeerRoute[] = [];
  // Of two nodes claiming overlapping pod CIDRs, the one already routed
  // keeps its route (a newcomer never takes traffic away); when neither
  // is routed yet, neither gets a route, since there is no telling which is right.
  const routed = (r: PeerRoute) => table.owned.some((o) => sameCidr(o.dst, r.dst) && sameIp(o.gateway, r.gateway));
  for (const route of candidates) {
    const clash = candidates.find((o) => o !== route && o.node !== route.node && overlaps(o.dst, route.dst));
    if (clash && !(routed(route) && !routed(clash))) {
      problems.push({
        node: route.node,
        problem: `pod CIDR ${formatCidr(route.dst)} overlaps node ${clash.node}'s ${formatCidr(clash.dst)}; ` +
          (routed(clash) ? `node ${clash.node} keeps its route` : `neither gets a route`),
      });
      continue;
    }
    const foreign = table.foreign.find((r) => sameCidr(r.dst, route.dst));
    if (foreign) {
      problems.push({
        node: route.node,
        problem: `a route to ${formatCidr(route.dst)} (proto ${foreign.protocol}) exists that Pontoon does not own; ` +
          `left alone`,
      });
      continue;
    }
    routes.push(route);
  }
  return { routes, problems };
}

function sameCidr(a: Cidr, b: Cidr): boolean {
  return a.family === b.family && a.value === b.value && a.prefix === b.prefix;
}

function sameIp(a: Ip | undefined, b: Ip | undefined): boolean {
  return a !== undefined && b !== undefined && a.family === b.family && a.value === b.value;
}

/** What to change in the table. */
export interface RouteChanges {
  /** Routes missing or with the wrong gateway: `ip route replace`. */
  put: PeerRoute[];
  /** Pontoon's routes no node wants any more. */
  remove: TableRoute[];
}

/** The changes that turn `table` into `desired` (only Pontoon's routes are touched). */
export function planChanges(desired: PeerRoute[], table: RouteTable): RouteChanges {
  const put = desired.filter((want) => {
    const have = table.owned.filter((r) => sameCidr(r.dst, want.dst));
    return !(have.length === 1 && sameIp(have[0].gateway, want.gateway));
  });
  const remove = table.owned.filter((r) => !desired.some((want) => sameCidr(want.dst, r.dst)));
  return { put, remove };
}

/** The `ip` commands for `changes` (deletions first, so a moved CIDR never has two routes). */
export function routeCommands(changes: RouteChanges): IpCommand[] {
  const proto = String(ROUTE_PROTOCOL);
  return [
    ...changes.remove.map((r) => ["route", "del", formatCidr(r.dst), "table", "main", "proto", proto]),
    ...changes.put.map((r) => [
      "route",
      "replace",
      formatCidr(r.dst),
      "via",
      formatIp(r.gateway),
      "table",
      "main",
      "proto",
      proto,
    ]),
  ];
}

/** One entry of `ip -json route show table all`. */
interface JsonRoute {
  dst?: string;
  gateway?: string;
  dev?: string;
  protocol?: string;
  table?: string;
  type?: string;
}

/** Reads `ip -json route show table all` output into the main table's view. */
export function parseRouteTable(entries: JsonRoute[]): RouteTable {
  const owned: TableRoute[] = [];
  const foreign: TableRoute[] = [];
  const local: Ip[] = [];
  for (const e of entries) {
    if (e.table === "local" && e.type === "local" && e.dst) {
      const ip = parseIp(e.dst);
      if (ip) local.push(ip);
      continue;
    }
    if (e.table !== undefined && e.table !== "main") continue;
    if (e.type !== undefined && e.type !== "unicast") continue;
    if (!e.dst || e.dst === "default") continue;
    const dst = parseCidr(e.dst.includes("/") ? e.dst : `${e.dst}/${e.dst.includes(":") ? 128 : 32}`);
    if (!dst) continue;
    const gateway = e.gateway ? parseIp(e.gateway) ?? undefined : undefined;
    const route: TableRoute = { dst, gateway, protocol: e.protocol ?? "boot", dev: e.dev };
    (route.protocol === String(ROUTE_PROTOCOL) ? owned : foreign).push(route);
  }
  return { owned, foreign, local };
}

/** Reads the main routing table (both families) in one `ip` spawn. */
export async function readRouteTable(): Promise<RouteTable> {
  return parseRouteTable(await showJson<JsonRoute>(["route", "show", "table", "all"]));
}

/** A change that failed, with ip's message. */
export interface RouteFailure {
  command: IpCommand;
  error: string;
}

/**
 * Applies `changes` in one `ip -batch -force` run; returns the commands
 * that failed (the others are applied).
 */
export async function applyRouteChanges(changes: RouteChanges): Promise<RouteFailure[]> {
  const commands = routeCommands(changes);
  if (commands.length === 0) return [];
  const result = await runBatch(commands, { force: true });
  if (result.ok) return [];
  // With -force, ip prints each failure's message followed by "Command failed -:N".
  const failures: RouteFailure[] = [];
  let message: string[] = [];
  for (const line of result.stderr.split("\n")) {
    const failed = /^Command failed -:(\d+)/.exec(line);
    if (failed) {
      failures.push({ command: commands[Number(failed[1]) - 1] ?? [], error: message.join(" ").trim() || "failed" });
      message = [];
    } else if (line.trim() !== "") {
      message.push(line.trim());
    }
  }
  if (failures.length === 0) failures.push({ command: commands[0], error: result.stderr.trim() || "ip failed" });
  return failures;
}

/** Families present among `cidrs`. */
export function familiesOf(cidrs: Cidr[]): Family[] {
  return [...new Set(cidrs.map((c) => c.family))].sort();
}
