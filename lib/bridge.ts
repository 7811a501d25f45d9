/**
 * The node's bridge and each pod's veth pair: naming, creation, pod-side
 * addressing and inspection. The per-pod steps (veth pair, pod side,
 * CHECK's inspection, DEL) are rtnetlink requests through `netlink.ts`,
 * with no process spawned; the once-per-node bridge set-up and GC are
 * built as data and sent through `ip.ts`. Link facts are read from sysfs.
 *
 * @module
 */
import { type Cidr, contains, formatCidr, formatIp, type Ip } from "./addr.ts";
import { CniError, ErrorCode } from "./errors.ts";
import { type IpCommand, runBatch, runBatchOrThrow, runBridgeBatch, showJson } from "./ip.ts";
import {
  addAddress,
  addRoute,
  createVeth,
  deleteLink,
  linkAddresses,
  mainRoutes,
  NetlinkError,
  RtnlSocket,
  setLinkAlias,
  setLinkUp,
} from "./netlink.ts";
import { inNetns, withNetnsFd } from "./netns.ts";
import { markerMatches, withNodeLock, writeMarker } from "./nodestate.ts";
import { ensureSysctl, isBridge, linkExists, linkIndex, linkMac, setHairpin, vlanFiltering } from "./sysfs.ts";

/** Prefix of every host-side veth Pontoon creates. */
export const HOST_VETH_PREFIX = "pn";

/** 64-bit FNV-1a of a string, as 16 hex digits. */
function fnv1a64(text: string): string {
  let hash = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(text)) {
    hash ^= BigInt(byte);
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash.toString(16).padStart(16, "0");
}

/** The host-side veth name for an attachment: deterministic, 14 bytes. */
export function hostVethName(containerId: string, ifname: string): string {
  return HOST_VETH_PREFIX + fnv1a64(`${containerId}\n${ifname}`).slice(0, 12);
}

/**
 * The alias every host veth of `network` carries, so GC on a bridge that
 * several networks share removes only its own network's ports.
 */
export function hostVethAlias(network: string): string {
  return `pontoon:${network}`;
}

/** A stable, locally administered unicast MAC derived from `seed`. */
export function stableMac(seed: string): string {
  const hex = fnv1a64(seed);
  const bytes = [0x02, ...[0, 2, 4, 6, 8].map((i) => parseInt(hex.slice(i, i + 2), 16))];
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/** A random locally administered unicast MAC. */
export function randomMac(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  bytes[0] = (bytes[0] & 0xfc) | 0x02;
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/** How the node's bridge must look. */
export interface BridgeSpec {
  name: string;
  mtu: number;
  /** Gateway addresses with their subnet prefix (empty when not a gateway). */
  gateways: Cidr[];
  promisc: boolean;
  forceAddress: boolean;
  vlan?: number;
  /** Turn on IPv4/IPv6 forwarding for these families. */
  forwardFamilies: (4 | 6)[];
}

/**
 * Makes sure the bridge exists, is up and holds the gateway addresses; sets
 * node sysctls. Fast when a marker says this was already done for the same
 * bridge (same ifindex) and spec. When many ADDs race on a fresh node, one
 * sets the bridge up under a node lock; the others wait and find the
 * marker. Returns the bridge's MAC.
 */
export async function ensureBridge(spec: BridgeSpec): Promise<string> {
  const key = JSON.stringify({ ...spec, gateways: spec.gateways.map(formatCidr) });
  const done = () => {
    const index = linkIndex(spec.name);
    return index !== null && markerMatches("bridge", spec.name, `${index} ${key}`);
  };
  if (!done()) await withNodeLock("bridge", spec.name, () => done() ? Promise.resolve() : setUpBridge(spec, key));
  return linkMac(spec.name) ?? "";
}

async function setUpBridge(spec: BridgeSpec, key: string): Promise<void> {
  const index = linkIndex(spec.name);
  if (index === null) await createBridge(spec);
  if (!(await becomesBridge(spec.name))) {
    throw new CniError(ErrorCode.SystemFailure, `link ${spec.name} exists and is not a bridge`);
  }
  if (spec.vlan) await requireVlanFiltering(spec.name, spec.vlan);
  const commands: IpCommand[] = [["link", "set", "dev", spec.name, "up"]];
  if (spec.promisc) commands.push(["link", "set", "dev", spec.name, "promisc", "on"]);
  commands.push(...gatewayCommands(spec));
  await runBatchOrThrow(commands);
  if (spec.vlan) {
    await runBridgeBatch([["vlan", "add", "dev", spec.name, "vid", String(spec.vlan), "self", "pvid", "untagged"]]);
  }
  setNodeSysctls(spec.forwardFamilies);
  writeMarker("bridge", spec.name, `${linkIndex(spec.name)} ${key}`);
}

/**
 * A bridge made before `vlan` was set may not filter VLANs; turn filtering
 * on, and fail rather than attach pods to a VLAN that isolates nothing.
 */
async function requireVlanFiltering(name: string, vlan: number): Promise<void> {
  if (vlanFiltering(name) === true) return;
  const result = await runBatch([["link", "set", "dev", name, "type", "bridge", "vlan_filtering", "1"]]);
  if (vlanFiltering(name) === true) return;
  const why = vlanFiltering(name) === null
    ? "this kernel cannot filter VLANs (CONFIG_BRIDGE_VLAN_FILTERING is off)"
    : `turning it on failed: ${result.stderr.trim() || "it stayed off"}`;
  throw new CniError(
    ErrorCode.SystemFailure,
    `vlan: bridge ${name} has vlan_filtering off and ${why}, so VLAN ${vlan} would not isolate its pods`,
  );
}

/**
 * True when `name` is (or within 200 ms turns out to be) a bridge: a bridge
 * another ADD has just registered shows its sysfs `bridge/` directory a
 * moment after the link itself.
 */
async function becomesBridge(name: string): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    if (isBridge(name)) return true;
    if (!linkExists(name)) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return false;
}

async function createBridge(spec: BridgeSpec): Promise<void> {
  const add = [
    "link",
    "add",
    "name",
    spec.name,
    "address",
    stableMac(`bridge:${spec.name}`),
    "mtu",
    String(spec.mtu),
    "type",
    "bridge",
  ];
  if (spec.vlan) add.push("vlan_filtering", "1");
  const result = await runBatch([add]);
  // Another ADD may have created it a moment ago: that is success too.
  if (!result.ok && !linkExists(spec.name)) {
    if (spec.vlan && /not supported/i.test(result.stderr)) {
      throw new CniError(
        ErrorCode.SystemFailure,
        `vlan: this kernel cannot filter VLANs on bridge ${spec.name} (CONFIG_BRIDGE_VLAN_FILTERING is off)`,
      );
    }
    throw new CniError(ErrorCode.SystemFailure, `cannot create bridge ${spec.name}: ${result.stderr.trim()}`);
  }
}

function gatewayCommands(spec: BridgeSpec): IpCommand[] {
  if (spec.gateways.length === 0) return [];
  const present = bridgeAddresses(spec.name);
  const commands: IpCommand[] = [];
  for (const gw of spec.gateways) {
    if (present.some((p) => p.family === gw.family && p.value === gw.value && p.prefix === gw.prefix)) continue;
    for (const other of present) {
      if (other.family !== gw.family || !(contains(other, gw) || contains(gw, other))) continue;
      if (!spec.forceAddress) {
        throw new CniError(
          ErrorCode.SystemFailure,
          `bridge ${spec.name} already has address ${formatCidr(other)}, not ${
            formatCidr(gw)
          } (set forceAddress to replace it)`,
        );
      }
      commands.push(["addr", "del", formatCidr(other), "dev", spec.name]);
    }
    commands.push(["addr", "replace", formatCidr(gw), "dev", spec.name, ...(gw.family === 6 ? ["nodad"] : [])]);
  }
  return commands;
}

function setNodeSysctls(families: (4 | 6)[]): void {
  if (families.includes(4)) ensureSysctl("net.ipv4.ip_forward", "1");
  if (families.includes(6)) ensureSysctl("net.ipv6.conf.all.forwarding", "1");
  // Present only when br_netfilter is loaded; kube-proxy needs bridged
  // traffic to traverse iptables.
  ensureSysctl("net.bridge.bridge-nf-call-iptables", "1");
  ensureSysctl("net.bridge.bridge-nf-call-ip6tables", "1");
}

/** One veth pair between the bridge and a pod. */
export interface VethSpec {
  host: string;
  hostMac: string;
  pod: string;
  podMac: string;
  netns: string;
  bridge: string;
  /** The network's name, written into the host end's alias (`hostVethAlias`). */
  network: string;
  mtu: number;
  hairpin: boolean;
  vlan?: number;
}

let hostSocket: RtnlSocket | undefined;

/** The rtnetlink socket of the node's netns, opened on first use. */
function nodeSocket(): RtnlSocket {
  hostSocket ??= RtnlSocket.open();
  return hostSocket;
}

/**
 * Creates the veth pair in one netlink request: host end on the bridge and
 * up, pod end named `pod` inside the netns. Fails with code 103 when the
 * pod already has an interface of that name.
 */
export async function addVeth(spec: VethSpec): Promise<void> {
  const master = linkIndex(spec.bridge);
  if (master === null) {
    throw new CniError(ErrorCode.SystemFailure, `cannot create veth ${spec.host}: bridge ${spec.bridge} is gone`);
  }
  try {
    withNetnsFd(spec.netns, (netnsFd) =>
      createVeth(nodeSocket(), {
        host: spec.host,
        hostMac: spec.hostMac,
        mtu: spec.mtu,
        masterIndex: master,
        pod: spec.pod,
        podMac: spec.podMac,
        netnsFd,
      }));
    setLinkAlias(nodeSocket(), spec.host, hostVethAlias(spec.network));
  } catch (err) {
    if (err instanceof NetlinkError && err.errno === 17) {
      throw new CniError(
        ErrorCode.InterfaceExists,
        linkExists(spec.host)
          ? `host interface ${spec.host} already exists`
          : `interface ${spec.pod} already exists in ${spec.netns}`,
      );
    }
    throw new CniError(ErrorCode.SystemFailure, `cannot create veth ${spec.host}: ${(err as Error).message}`);
  }
  if (spec.hairpin) setHairpin(spec.host, true);
  if (spec.vlan) {
    const vid = String(spec.vlan);
    await runBridgeBatch([
      ["vlan", "add", "dev", spec.host, "vid", vid, "pvid", "untagged"],
      ["vlan", "del", "dev", spec.host, "vid", "1"],
    ]);
  }
}

/** Deletes a host veth (its pod end goes with it); absent is fine. */
export function removeVeth(host: string): void {
  if (!linkExists(host)) return;
  try {
    deleteLink(nodeSocket(), host);
  } catch (err) {
    if (linkExists(host)) {
      throw new CniError(ErrorCode.SystemFailure, `cannot delete ${host}: ${(err as Error).message}`);
    }
  }
}

/** A port of a bridge: its name and alias (`ip link set … alias`), if any. */
export interface BridgePort {
  name: string;
  alias?: string;
}

/** The bridge's ports (empty when the bridge is absent). */
export async function bridgePorts(bridge: string): Promise<BridgePort[]> {
  if (!linkExists(bridge)) return [];
  const links = await showJson<{ ifname: string; ifalias?: string }>(["link", "show", "master", bridge]);
  return links.map((l) => ({ name: l.ifname, alias: l.ifalias }));
}

/** Deletes several host veths in one spawn, tolerating ones already gone. */
export async function removeVeths(hosts: string[]): Promise<void> {
  const present = hosts.filter(linkExists);
  if (present.length === 0) return;
  await runBatch(present.map((h) => ["link", "del", h]), { force: true });
  const left = present.filter(linkExists);
  if (left.length > 0) throw new CniError(ErrorCode.SystemFailure, `cannot delete ${left.join(", ")}`);
}

/** A route for the pod's routing table. */
export interface PodRouteSpec {
  dst: Cidr;
  gw?: Ip;
}

/** What to configure inside the pod. */
export interface PodSpec {
  netns: string;
  ifname: string;
  addresses: Cidr[];
  routes: PodRouteSpec[];
  /** Run duplicate address detection on IPv6 addresses. */
  dad: boolean;
}

/**
 * Configures the pod side (addresses, link up, routes, in that order)
 * through a netlink socket opened inside the pod's netns.
 */
export function configurePod(spec: PodSpec): void {
  const sock = inNetns(spec.netns, () => RtnlSocket.open());
  try {
    const index = sock.linkIndex(spec.ifname);
    for (const a of spec.addresses) addAddress(sock, index, a, a.family === 6 && !spec.dad);
    setLinkUp(sock, index, spec.ifname);
    for (const r of spec.routes) {
      const dst = r.dst.prefix === 0 ? (r.dst.family === 4 ? "0.0.0.0/0" : "::/0") : formatCidr(r.dst);
      addRoute(sock, index, r.dst, r.gw, `add route ${dst}${r.gw ? ` via ${formatIp(r.gw)}` : ""} dev ${spec.ifname}`);
    }
  } catch (err) {
    const message = (err as Error).message;
    throw new CniError(ErrorCode.SystemFailure, `configuring ${spec.ifname} in ${spec.netns}: ${message}`);
  } finally {
    sock.close();
  }
}

/** What CHECK sees inside the pod. */
export interface PodView {
  exists: boolean;
  mac?: string;
  addresses: Cidr[];
  routes: { dst: string; gateway?: string; dev?: string }[];
}

/** Reads the pod interface's addresses and the pod's main-table routes over netlink inside its netns. */
export function inspectPod(netns: string, ifname: string): PodView {
  const sock = inNetns(netns, () => RtnlSocket.open());
  try {
    const link = sock.link(ifname);
    if (!link) return { exists: false, addresses: [], routes: [] };
    return {
      exists: true,
      mac: link.mac,
      addresses: linkAddresses(sock, link.index),
      routes: mainRoutes(sock).map((r) => ({
        dst: r.dst.prefix === 0 ? "default" : formatCidr(r.dst),
        gateway: r.gateway ? formatIp(r.gateway) : undefined,
        dev: r.oif === link.index ? ifname : undefined,
      })),
    };
  } catch (err) {
    throw new CniError(ErrorCode.SystemFailure, `inspecting ${ifname} in ${netns}: ${(err as Error).message}`);
  } finally {
    sock.close();
  }
}

/** The bridge's global (not link-local) addresses with their prefix, over netlink; empty when it is absent. */
export function bridgeAddresses(bridge: string): Cidr[] {
  const index = linkIndex(bridge);
  return index === null ? [] : linkAddresses(nodeSocket(), index, { globalOnly: true });
}
