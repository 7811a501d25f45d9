/**
 * The IPAM store as the agent shows it to people: who holds which address,
 * how full each pool is, and which reservations are stale (their netns and
 * their host veth are both gone, so no runtime will ever DEL them).
 *
 * Reads the same store the plugin writes (`ipam.ts`); GC releases through
 * the store's own locked release.
 *
 * @module
 */
import { formatCidr } from "./addr.ts";
import { hostVethName } from "./bridge.ts";
import type { RangeSet } from "./config.ts";
import { IpamStore, poolUsage } from "./ipam.ts";
import { pathExists } from "./libc.ts";
import { linkExists } from "./sysfs.ts";

/** Where a network's addresses live and what they may be. */
export interface IpamView {
  network: string;
  dataDir: string;
  rangeSets: RangeSet[];
}

/** One attachment's reservation. */
export interface AllocationRow {
  containerId: string;
  ifname: string;
  ips: string[];
  podNamespace: string | null;
  podName: string | null;
  netns: string | null;
  /** The host side veth the plugin made for it. */
  hostVeth: string;
  /** When the reservation was written (ISO time), or null. */
  reservedAt: string | null;
}

/** Every reservation in the store, by attachment, sorted by address. */
export function listAllocations(view: IpamView): AllocationRow[] {
  const store = new IpamStore(view.dataDir, view.network);
  const rows = new Map<string, AllocationRow>();
  const rowOf = (containerId: string, ifname: string) => {
    const key = `${containerId}:${ifname}`;
    let row = rows.get(key);
    if (!row) {
      row = {
        containerId,
        ifname,
        ips: [],
        podNamespace: null,
        podName: null,
        netns: null,
        hostVeth: hostVethName(containerId, ifname),
        reservedAt: null,
      };
      rows.set(key, row);
    }
    return row;
  };
  for (const record of store.listIndex()) {
    const row = rowOf(record.containerId, record.ifname);
    row.podNamespace = record.podNamespace ?? null;
    row.podName = record.podName ?? null;
    row.netns = record.netns ?? null;
  }
  for (const { ip, owner } of store.listAddresses()) rowOf(owner.containerId, owner.ifname).ips.push(ip);
  for (const row of rows.values()) {
    row.reservedAt = store.reservedAt({ containerId: row.containerId, ifname: row.ifname }, row.ips)?.toISOString() ??
      null;
  }
  return [...rows.values()].filter((r) => r.ips.length > 0 || r.netns !== null)
    .sort((a, b) => (a.ips[0] ?? "").localeCompare(b.ips[0] ?? "", "en", { numeric: true }));
}

/** Size and use of each range set. */
export function poolGauges(view: IpamView): { range: string; size: number; used: number }[] {
  const store = new IpamStore(view.dataDir, view.network);
  return poolUsage(store, view.rangeSets).map((p) => ({
    range: view.rangeSets[p.set].map((r) => formatCidr(r.subnet)).join(","),
    size: Number(p.total),
    used: p.used,
  }));
}

/** How old a reservation must be before GC may take it (default): an ADD in progress has no veth yet. */
export const DEFAULT_GC_MIN_AGE_SECONDS = 60;

/**
 * True when nothing of the attachment is left on the node (no netns, no
 * host veth) and the reservation is at least `minAgeMs` old, so an ADD
 * still wiring its pod is never taken.
 */
export function isStale(row: AllocationRow, minAgeMs: number, now = Date.now()): boolean {
  if (row.reservedAt !== null && now - Date.parse(row.reservedAt) < minAgeMs) return false;
  if (row.netns !== null && pathExists(row.netns)) return false;
  return !linkExists(row.hostVeth);
}

/** What a GC pass found (and, when applied, released). */
export interface GcOutcome {
  applied: boolean;
  /** Reservations younger than this were not considered. */
  minAgeSeconds: number;
  stale: AllocationRow[];
  released: AllocationRow[];
}

/**
 * Finds stale reservations and, with `apply`, releases them. Each is
 * read and checked again under the store's lock right before release, so
 * an attachment an ADD was writing (or that came back) meanwhile is kept.
 */
export function collectStale(
  view: IpamView,
  apply: boolean,
  minAgeSeconds = DEFAULT_GC_MIN_AGE_SECONDS,
): GcOutcome {
  const minAgeMs = minAgeSeconds * 1000;
  const stale = listAllocations(view).filter((row) => isStale(row, minAgeMs));
  const released: AllocationRow[] = [];
  if (apply) {
    const store = new IpamStore(view.dataDir, view.network);
    for (const row of stale) {
      const att = { containerId: row.containerId, ifname: row.ifname };
      store.locked(() => {
        // The listing was read without the lock: an ADD may have been
        // writing this very reservation. Judge it again as it is now.
        const now = listAllocations(view).find((r) => r.containerId === att.containerId && r.ifname === att.ifname);
        if (!now || !isStale(now, minAgeMs)) return;
        // Address files without an index record (a crash mid-ADD) are released too.
        for (const ip of now.ips) store.releaseAddress(ip, att);
        store.removeIndex(att);
        released.push(now);
      });
    }
  }
  return { applied: apply, minAgeSeconds, stale, released };
}
