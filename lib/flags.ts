/**
 * Command-line flag values shared by `pontoon agent` and `pontoon install`,
 * checked once with the same messages. Never on the plugin path.
 *
 * @module
 */
import { canonicalNetwork, type Cidr, parseCidr } from "./addr.ts";
import { CONFLIST_VERSIONS } from "./conflist.ts";

/** A command line that cannot be used; the message says why. */
export class UsageError extends Error {
  /** Makes an error with `message`. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** `value` of `--flag` as an absolute path without `..`. */
export function absolutePathFlag(flag: string, value: string): string {
  if (!value.startsWith("/") || value.split("/").includes("..")) {
    throw new UsageError(`--${flag}: ${value} must be an absolute path without ..`);
  }
  return value;
}

/** `--flag CIDR`, repeatable: network addresses (no host bits), at most one per family. */
export function cidrsFlag(flag: string, texts: string[]): Cidr[] {
  const seen = new Set<number>();
  return texts.map((t) => {
    const cidr = parseCidr(t);
    if (!cidr) throw new UsageError(`--${flag}: ${JSON.stringify(t)} is not a CIDR`);
    if (canonicalNetwork(cidr).value !== cidr.value) throw new UsageError(`--${flag}: ${t} has host bits set`);
    if (seen.has(cidr.family)) throw new UsageError(`--${flag}: one CIDR per address family`);
    seen.add(cidr.family);
    return cidr;
  });
}

/** `--mtu N` (absent: undefined). */
export function mtuFlag(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const mtu = Number(value);
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw new UsageError(`--mtu: ${value} is not 68..65535`);
  return mtu;
}

/** `--bridge NAME`: a link name. */
export function bridgeFlag(value: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(value)) throw new UsageError(`--bridge: ${value} is not a link name`);
  return value;
}

/** `--conflist-version V`: a conflist version Pontoon writes. */
export function conflistVersionFlag(value: string): (typeof CONFLIST_VERSIONS)[number] {
  const version = CONFLIST_VERSIONS.find((v) => v === value);
  if (!version) throw new UsageError(`--conflist-version: ${value} is not one of ${CONFLIST_VERSIONS.join(", ")}`);
  return version;
}
