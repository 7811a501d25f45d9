/**
 * IP addresses and prefixes as plain data.
 *
 * Addresses are kept as bigints so range arithmetic (next address,
 * containment, size) is exact for IPv4 and IPv6 alike. Parsing and
 * formatting are written out here rather than taken from `ipaddr.js`: that
 * package is CommonJS, and bundling it pulls Deno's Node layer
 * (`node:module`) into the plugin's start-up, about 13 ms on every call.
 *
 * @module
 */

/** 4 for IPv4, 6 for IPv6. */
export type Family = 4 | 6;

/** An address of a family, as a number. */
export interface Ip {
  family: Family;
  value: bigint;
}

/** An address with a prefix length, e.g. `10.1.2.3/24`. */
export interface Cidr extends Ip {
  prefix: number;
}

const BITS: Record<Family, number> = { 4: 32, 6: 128 };

/** Number of bits in an address of `family`. */
export function familyBits(family: Family): number {
  return BITS[family];
}

const DOTTED_QUAD = /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

function parseIpv4(text: string): bigint | null {
  const m = DOTTED_QUAD.exec(text);
  if (!m) return null;
  let value = 0n;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i]);
    if (octet > 255) return null;
    value = (value << 8n) | BigInt(octet);
  }
  return value;
}

/** 16-bit groups of one side of `::`; a trailing dotted quad counts as two. */
function ipv6Groups(text: string, last: boolean): number[] | null {
  if (text === "") return [];
  const parts = text.split(":");
  const groups: number[] = [];
  for (const [i, part] of parts.entries()) {
    if (last && i === parts.length - 1 && part.includes(".")) {
      const v4 = parseIpv4(part);
      if (v4 === null) return null;
      groups.push(Number(v4 >> 16n), Number(v4 & 0xffffn));
    } else if (HEX_GROUP.test(part)) {
      groups.push(parseInt(part, 16));
    } else {
      return null;
    }
  }
  return groups;
}

function parseIpv6(text: string): bigint | null {
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const head = ipv6Groups(halves[0], halves.length === 1);
  const tail = halves.length === 2 ? ipv6Groups(halves[1], true) : [];
  if (head === null || tail === null) return null;
  const missing = 8 - head.length - tail.length;
  // Without `::` there must be exactly 8 groups; `::` stands for at least one.
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  let value = 0n;
  for (const g of [...head, ...new Array(halves.length === 2 ? missing : 0).fill(0), ...tail]) {
    value = (value << 16n) | BigInt(g);
  }
  return value;
}

/** Parses a strict dotted-quad IPv4 or an IPv6 address; null when invalid. */
export function parseIp(text: string): Ip | null {
  if (typeof text !== "string") return null;
  if (text.includes(":")) {
    const value = parseIpv6(text);
    return value === null ? null : { family: 6, value };
  }
  const value = parseIpv4(text);
  return value === null ? null : { family: 4, value };
}

/** Parses `addr/prefix`; null when either part is invalid. */
export function parseCidr(text: string): Cidr | null {
  if (typeof text !== "string") return null;
  const slash = text.indexOf("/");
  if (slash < 0) return null;
  const ip = parseIp(text.slice(0, slash));
  const prefixText = text.slice(slash + 1);
  if (!ip || !/^\d{1,3}$/.test(prefixText)) return null;
  const prefix = Number(prefixText);
  if (prefix > BITS[ip.family]) return null;
  return { ...ip, prefix };
}

/** Formats an address in its canonical text form (RFC 5952 for IPv6). */
export function formatIp(ip: Ip): string {
  if (ip.family === 4) {
    return [24n, 16n, 8n, 0n].map((shift) => String((ip.value >> shift) & 0xffn)).join(".");
  }
  const groups: number[] = [];
  for (let shift = 112n; shift >= 0n; shift -= 16n) groups.push(Number((ip.value >> shift) & 0xffffn));
  // RFC 5952 4.2: the first longest run of two or more zero groups becomes `::`.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(":");
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}

/** Formats `addr/prefix`. */
export function formatCidr(cidr: Cidr): string {
  return `${formatIp(cidr)}/${cidr.prefix}`;
}

function hostMask(family: Family, prefix: number): bigint {
  return (1n << BigInt(BITS[family] - prefix)) - 1n;
}

/** The first address of the prefix (host bits cleared). */
export function networkAddress(cidr: Cidr): Ip {
  return { family: cidr.family, value: cidr.value & ~hostMask(cidr.family, cidr.prefix) };
}

/** The last address of the prefix (host bits set). */
export function lastAddress(cidr: Cidr): Ip {
  return { family: cidr.family, value: cidr.value | hostMask(cidr.family, cidr.prefix) };
}

/** The prefix with host bits cleared, e.g. `10.1.2.0/24` for `10.1.2.3/24`. */
export function canonicalNetwork(cidr: Cidr): Cidr {
  return { ...networkAddress(cidr), prefix: cidr.prefix };
}

/** True when `ip` lies inside `cidr`. */
export function contains(cidr: Cidr, ip: Ip): boolean {
  if (cidr.family !== ip.family) return false;
  const mask = hostMask(cidr.family, cidr.prefix);
  return (cidr.value & ~mask) === (ip.value & ~mask);
}

/** True when two prefixes share at least one address. */
export function overlaps(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false;
  const shorter = a.prefix <= b.prefix ? a : b;
  const other = shorter === a ? b : a;
  return contains(shorter, other);
}

/** True when two addresses are equal. */
export function sameIp(a: Ip, b: Ip): boolean {
  return a.family === b.family && a.value === b.value;
}
