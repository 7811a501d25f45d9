/**
 * Reading and writing the host's sysfs and procfs: link facts that need no
 * process spawn, and the sysctls a gateway node needs.
 *
 * These paths show the namespace this process runs in (the node's), never
 * a pod's; Pontoon reads pod state over netlink inside the pod's netns.
 * Access goes through libc (see `libc.ts` for why).
 *
 * @module
 */
import { pathExists, readLink, readSmallFile, writeSmallFile } from "./libc.ts";

function readText(path: string): string | null {
  return readSmallFile(path)?.trim() ?? null;
}

/** True when a link named `name` exists in this namespace. */
export function linkExists(name: string): boolean {
  return pathExists(`/sys/class/net/${name}`);
}

/** True when `name` is a bridge. */
export function isBridge(name: string): boolean {
  return pathExists(`/sys/class/net/${name}/bridge/`);
}

/** The bridge `name` is enslaved to, or null. */
export function masterOf(name: string): string | null {
  const target = readLink(`/sys/class/net/${name}/master`);
  return target === null ? null : target.slice(target.lastIndexOf("/") + 1);
}

/**
 * Whether bridge `name` filters VLANs: true or false, or null when sysfs
 * has no `vlan_filtering` (a kernel without CONFIG_BRIDGE_VLAN_FILTERING).
 */
export function vlanFiltering(name: string): boolean | null {
  const text = readText(`/sys/class/net/${name}/bridge/vlan_filtering`);
  return text === null ? null : text === "1";
}

/** A link's MAC address, or null. */
export function linkMac(name: string): string | null {
  return readText(`/sys/class/net/${name}/address`);
}

/** A link's ifindex, or null. */
export function linkIndex(name: string): number | null {
  const text = readText(`/sys/class/net/${name}/ifindex`);
  return text === null ? null : Number(text);
}

/** A link's MTU, or null. */
export function linkMtu(name: string): number | null {
  const text = readText(`/sys/class/net/${name}/mtu`);
  return text === null ? null : Number(text);
}

/** Sets a bridge port's hairpin mode (no spawn: a sysfs write). */
export function setHairpin(port: string, on: boolean): void {
  writeSmallFile(`/sys/class/net/${port}/brport/hairpin_mode`, on ? "1" : "0");
}

/**
 * The MTU of the interface holding the IPv4 (else IPv6) default route, or
 * 1500 when there is none. Reads /proc, no spawn.
 */
export function defaultRouteMtu(): number {
  const v4 = readText("/proc/net/route");
  for (const line of v4?.split("\n").slice(1) ?? []) {
    const [dev, dst, , , , , , mask] = line.trim().split(/\s+/);
    if (dst === "00000000" && mask === "00000000") return linkMtu(dev) ?? 1500;
  }
  const v6 = readText("/proc/net/ipv6_route");
  for (const line of v6?.split("\n") ?? []) {
    const f = line.trim().split(/\s+/);
    if (f[0] === "0".repeat(32) && f[1] === "00" && f[9] !== "lo") return linkMtu(f[9]) ?? 1500;
  }
  return 1500;
}

/** Reads a sysctl (`net.ipv4.ip_forward`), or null when absent. */
export function readSysctl(key: string): string | null {
  return readText(`/proc/sys/${key.replaceAll(".", "/")}`);
}

/** Sets a sysctl when it differs; returns false when the key does not exist. */
export function ensureSysctl(key: string, value: string): boolean {
  const current = readSysctl(key);
  if (current === null) return false;
  if (current !== value) {
    writeSmallFile(`/proc/sys/${key.replaceAll(".", "/")}`, value);
  }
  return true;
}
