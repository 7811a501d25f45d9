/**
 * IP addresses and prefixes as plain data, on top of `ipaddr.js`.
 *
 * Addresses are kept as bigints so range arithmetic (next address,
 * containment, size) is exact for IPv4 and IPv6 alike.
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

/** Parses a strict dotted-quad IPv4 or an IPv6 address; null when invalid. */
export function parseIp(text: string): Ip | null {
  if (typeof text !== "string") return null;
  let bytes: number[];
  let family: Family;
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) {
    bytes = ipaddr.IPv4.parse(text).toByteArray();
    family = 4;
  } else if (text.includes(":") && ipaddr.IPv6.isValid(text) && !text.includes("%")) {
    bytes = ipaddr.IPv6.parse(text).toByteArray();
    family = 6;
  } else {
    return null;
  }
  let value = 0n;
  for (const b of bytes) value = (value << 8n) | BigInt(b);
  return { family, value };
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
  const count = BITS[ip.family] / 8;
  const bytes: number[] = new Array(count);
  let v = ip.value;
  for (let i = count - 1; i >= 0; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return ipaddr.fromByteArray(bytes).toString();
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
