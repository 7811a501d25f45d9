/**
 * IP addresses and prefixes as plain data.
 *
 * Addresses are kept as bigints so range arithmetic (next address,
 * containment, size) is exact for IPv4 and IPv6 alike. Parsing is
 * `ipaddr.js`'s; formatting (RFC 5952) and the arithmetic are here. In the
 * plugin bundle `ipaddr.js` is inlined as plain JS (no Node layer); it adds
 * about 1 ms to the plugin's start-up.
 *
 * @module
 */
import ipaddr from "ipaddr.js";

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

function fromBytes(bytes: number[]): bigint {
  let value = 0n;
  for (const b of bytes) value = (value << 8n) | BigInt(b);
  return value;
}

/**
 * True for a `::` that stands for no group at all (`1::2:3:4:5:6:7:8`):
 * `ipaddr.js` takes it, inet_pton and Go's net.ParseIP refuse it.
 */
function emptyDoubleColon(text: string): boolean {
  if (!text.includes("::")) return false;
  const groups = text.split(":").filter((g) => g !== "");
  const explicit = groups.length + (groups.at(-1)?.includes(".") ? 1 : 0);
  return explicit >= 8;
}

/**
 * Parses a strict dotted-quad IPv4 or an IPv6 address (no zone); null when
 * invalid. Validation is `ipaddr.js`'s: its four-part-decimal check refuses
 * the octal, hex and short forms `inet_aton` would take.
 */
export function parseIp(text: string): Ip | null {
  if (typeof text !== "string") return null;
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) {
    return { family: 4, value: fromBytes(ipaddr.IPv4.parse(text).toByteArray()) };
  }
  if (text.includes(":") && !text.includes("%") && ipaddr.IPv6.isValid(text) && !emptyDoubleColon(text)) {
    return { family: 6, value: fromBytes(ipaddr.IPv6.parse(text).toByteArray()) };
  }
  return null;
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
