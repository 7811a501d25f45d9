/**
 * Pontoon's address store: lockfile-based IPAM on disk, compatible in
 * spirit with host-local.
 *
 * Layout of `<dataDir>/<network>/`:
 *
 * | file | content |
 * |---|---|
 * | `lock` | empty; `flock`ed around every change |
 * | `<address>` | `<containerId>\r\n<ifname>` (host-local's format) |
 * | `last_reserved_ip.<set>` | the last address handed out from range set `<set>` |
 * | `attachments/<containerId>:<ifname>` | JSON index of the attachment's addresses |
 *
 * Every file is written to a temporary name and renamed into place, so a
 * process killed at any moment leaves either the old or the new content.
 * The attachment index is written before the address files it names and
 * removed after them, and every removal checks the address file's owner,
 * so a crash between steps leaves nothing that DEL or GC cannot clean.
 *
 * @module
 */
import { formatCidr, formatIp, type Ip, parseIp } from "./addr.ts";
import type { Attachment, IpRange, RangeSet } from "./config.ts";
import { CniError, ErrorCode } from "./errors.ts";
import { pathExists } from "./libc.ts";

const LAST_RESERVED = "last_reserved_ip.";
const INDEX_DIR = "attachments";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What the index remembers about an attachment. */
export interface AttachmentRecord {
  containerId: string;
  ifname: string;
  ips: string[];
  podNamespace?: string;
  podName?: string;
  /** The netns path of the ADD (GC by the agent: released only when it is gone). */
  netns?: string;
}

/** One address handed to an attachment, with the range it came from. */
export interface Allocation {
  ip: Ip;
  range: IpRange;
}

/** The on-disk store of one network. */
export class IpamStore {
  /** `<dataDir>/<network>`. */
  readonly dir: string;
  #lock?: Deno.FsFile;

  /** Opens (creating when absent) the store of `network` under `dataDir`. */
  constructor(dataDir: string, network: string) {
    this.dir = `${dataDir}/${network}`;
  }

  /** Creates the directories; throws code 102 when the store is not writable. */
  ensure(): void {
    try {
      Deno.mkdirSync(`${this.dir}/${INDEX_DIR}`, { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new CniError(ErrorCode.SystemFailure, `IPAM store ${this.dir}: ${(err as Error).message}`);
    }
  }

  /** Takes the store's exclusive lock (blocking), held until `unlock`. */
  lock(): void {
    this.ensure();
    const file = Deno.openSync(`${this.dir}/lock`, { read: true, write: true, create: true, mode: 0o600 });
    file.lockSync(true);
    this.#lock = file;
  }

  /** Releases the lock. */
  unlock(): void {
    this.#lock?.close();
    this.#lock = undefined;
  }

  /** Runs `fn` holding the lock. */
  locked<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }

  /** The owner recorded in an address file, or null when the address is free. */
  ownerOf(ip: string): Attachment | null {
    const bytes = readIfPresent(`${this.dir}/${ip}`);
    if (bytes === null) return null;
    const text = decoder.decode(bytes);
    const [containerId = "", ifname = ""] = text.split(/\r?\n/);
    return { containerId: containerId.trim(), ifname: ifname.trim() };
  }

  /** Records `ip` as held by `owner`. */
  writeAddress(ip: string, owner: Attachment): void {
    this.#atomicWrite(ip, `${owner.containerId}\r\n${owner.ifname}`);
  }

  /** Removes `ip` when `owner` holds it (a legacy record naming only the container counts). */
  releaseAddress(ip: string, owner: Attachment): boolean {
    const holder = this.ownerOf(ip);
    if (!holder || !ownedBy(holder, owner)) return false;
    removeIfPresent(`${this.dir}/${ip}`);
    return true;
  }

  /** The index record of an attachment, or null. */
  readIndex(att: Attachment): AttachmentRecord | null {
    const bytes = readIfPresent(this.#indexPath(att));
    if (bytes === null) return null;
    try {
      const record = JSON.parse(decoder.decode(bytes));
      // Its addresses become file names: anything but a list of addresses is not ours.
      const ips: unknown = record?.ips;
      return Array.isArray(ips) && ips.every((ip) => parseIp(ip) !== null) ? record : null;
    } catch (err) {
      if (err instanceof SyntaxError) return null;
      throw err;
    }
  }

  /** Writes an attachment's index record. */
  writeIndex(record: AttachmentRecord): void {
    this.#atomicWrite(`${INDEX_DIR}/${indexName(record)}`, JSON.stringify(record));
  }

  /** Removes an attachment's index record. */
  removeIndex(att: Attachment): void {
    removeIfPresent(this.#indexPath(att));
  }

  /** The last address reserved from range set `set`, if recorded. */
  lastReserved(set: number): Ip | null {
    try {
      return parseIp(decoder.decode(Deno.readFileSync(`${this.dir}/${LAST_RESERVED}${set}`)).trim());
    } catch {
      return null;
    }
  }

  /** Records the last address reserved from range set `set`. */
  setLastReserved(set: number, ip: Ip): void {
    this.#atomicWrite(`${LAST_RESERVED}${set}`, formatIp(ip));
  }

  /** Every address file in the store with its owner (GC and listings). */
  listAddresses(): { ip: string; owner: Attachment }[] {
    const out: { ip: string; owner: Attachment }[] = [];
    for (const entry of readDirOrEmpty(this.dir)) {
      if (!entry.isFile || !parseIp(entry.name)) continue;
      const owner = this.ownerOf(entry.name);
      if (owner) out.push({ ip: entry.name, owner });
    }
    return out;
  }

  /** Every attachment index record in the store. */
  listIndex(): AttachmentRecord[] {
    const out: AttachmentRecord[] = [];
    for (const entry of readDirOrEmpty(`${this.dir}/${INDEX_DIR}`)) {
      if (!entry.isFile || entry.name.startsWith(".")) continue;
      const sep = entry.name.indexOf(":");
      if (sep < 0) continue;
      const record = this.readIndex({ containerId: entry.name.slice(0, sep), ifname: entry.name.slice(sep + 1) });
      if (record) out.push(record);
    }
    return out;
  }

  /** When the attachment's reservation was last written (newest of its index and address files), or null. */
  reservedAt(att: Attachment, ips: string[]): Date | null {
    let newest: Date | null = null;
    for (const path of [this.#indexPath(att), ...ips.map((ip) => `${this.dir}/${ip}`)]) {
      try {
        const mtime = Deno.statSync(path).mtime;
        if (mtime && (!newest || mtime > newest)) newest = mtime;
      } catch { /* absent */ }
    }
    return newest;
  }

  /** Removes temporary files left by a process killed mid-write. */
  removeStaleTemporaries(): void {
    for (const dir of [this.dir, `${this.dir}/${INDEX_DIR}`]) {
      for (const entry of readDirOrEmpty(dir)) {
        if (entry.isFile && entry.name.startsWith(".tmp-")) removeIfPresent(`${dir}/${entry.name}`);
      }
    }
  }

  #indexPath(att: Attachment): string {
    return `${this.dir}/${INDEX_DIR}/${indexName(att)}`;
  }

  #atomicWrite(name: string, content: string): void {
    const slash = name.lastIndexOf("/");
    const dir = slash < 0 ? this.dir : `${this.dir}/${name.slice(0, slash)}`;
    const tmp = `${dir}/.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    Deno.writeFileSync(tmp, encoder.encode(content), { mode: 0o644 });
    Deno.renameSync(tmp, `${this.dir}/${name}`);
  }
}

function indexName(att: Attachment): string {
  // ':' appears in neither a valid container id nor a valid ifname.
  return `${att.containerId}:${att.ifname}`;
}

function ownedBy(holder: Attachment, att: Attachment): boolean {
  return holder.containerId === att.containerId && (holder.ifname === "" || holder.ifname === att.ifname);
}

/**
 * A file's bytes, or null when it does not exist. Absence is the common
 * case on ADD (no index yet, free candidate addresses), so it is checked
 * first rather than caught: the first error a Deno process throws costs
 * about 2 ms, a sizeable share of a plugin call.
 */
function readIfPresent(path: string): Uint8Array | null {
  if (!pathExists(path)) return null;
  try {
    return Deno.readFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

function removeIfPresent(path: string): void {
  if (!pathExists(path)) return;
  try {
    Deno.removeSync(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}

function readDirOrEmpty(dir: string): Deno.DirEntry[] {
  try {
    return [...Deno.readDirSync(dir)];
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
}

/** The set index and range holding `ip`, or null. */
export function findRange(rangeSets: RangeSet[], ip: Ip): { set: number; range: IpRange } | null {
  for (let set = 0; set < rangeSets.length; set++) {
    for (const range of rangeSets[set]) {
      if (range.subnet.family === ip.family && ip.value >= range.start.value && ip.value <= range.end.value) {
        return { set, range };
      }
    }
  }
  return null;
}

/** How many addresses range set `set` can hand out. */
export function capacity(set: RangeSet): bigint {
  let total = 0n;
  for (const r of set) {
    total += r.end.value - r.start.value + 1n;
    if (r.gateway.value >= r.start.value && r.gateway.value <= r.end.value) total -= 1n;
  }
  return total;
}

function describeSet(set: RangeSet): string {
  return set.map((r) => `${formatIp(r.start)}-${formatIp(r.end)}`).join(", ");
}

/** Walks a range set round-robin from just after `after`, yielding candidate addresses. */
function* candidates(set: RangeSet, after: Ip | null): Generator<{ ip: Ip; range: IpRange }> {
  let startRange = 0;
  let startValue = set[0].start.value;
  if (after) {
    const idx = set.findIndex((r) =>
      r.subnet.family === after.family && after.value >= r.start.value && after.value <= r.end.value
    );
    if (idx >= 0) {
      startRange = idx;
      startValue = after.value + 1n;
    }
  }
  // Visit every address exactly once: the tail of the starting range, the
  // other ranges, then the head of the starting range.
  for (let step = 0; step <= set.length; step++) {
    const i = (startRange + step) % set.length;
    const range = set[i];
    let from = range.start.value;
    let to = range.end.value;
    if (step === 0) from = startValue;
    if (step === set.length) {
      if (i !== startRange) break;
      to = startValue - 1n;
    }
    for (let v = from; v <= to; v++) {
      if (v === range.gateway.value) continue;
      yield { ip: { family: range.subnet.family, value: v }, range };
    }
  }
}

/** Who asks for addresses and what they asked for. */
export interface ReserveRequest {
  attachment: Attachment;
  /** Specific addresses requested (CNI_ARGS IP=, args.cni.ips, runtimeConfig.ips). */
  requested: string[];
  /** Network name, for error messages. */
  network: string;
  podNamespace?: string;
  podName?: string;
  netns?: string;
}

/**
 * Reserves one address per range set for an attachment. An attachment that
 * already holds a full set of addresses gets the same ones back.
 */
export function reserveAddresses(store: IpamStore, rangeSets: RangeSet[], req: ReserveRequest): Allocation[] {
  const wanted = parseRequested(rangeSets, req.requested);
  return store.locked(() => {
    const existing = existingAllocation(store, rangeSets, req.attachment);
    if (existing && wanted.every((w) => existing.some((a) => a.ip.value === w.ip.value))) return existing;
    // A partial or different earlier reservation (an ADD killed midway) is dropped first.
    releaseUnlocked(store, req.attachment);

    const chosen: Allocation[] = [];
    for (let set = 0; set < rangeSets.length; set++) {
      const want = wanted.find((w) => w.set === set);
      if (want) {
        const ipText = formatIp(want.ip);
        const holder = store.ownerOf(ipText);
        if (holder && !ownedBy(holder, req.attachment)) {
          throw new CniError(
            ErrorCode.AddressInUse,
            `requested address ${ipText} in network ${req.network} is held by container ${holder.containerId} (${holder.ifname})`,
          );
        }
        chosen.push({ ip: want.ip, range: want.range });
        continue;
      }
      const free = firstFree(store, rangeSets[set], store.lastReserved(set));
      if (!free) {
        throw new CniError(
          ErrorCode.PoolExhausted,
          `network ${req.network}: no free address in range set ${set} (${describeSet(rangeSets[set])})`,
        );
      }
      chosen.push(free);
    }
    const ips = chosen.map((a) => formatIp(a.ip));
    store.writeIndex({
      ...req.attachment,
      ips,
      podNamespace: req.podNamespace,
      podName: req.podName,
      netns: req.netns,
    });
    for (const ip of ips) store.writeAddress(ip, req.attachment);
    chosen.forEach((a) => {
      const set = rangeSets.findIndex((s) => s.includes(a.range));
      store.setLastReserved(set, a.ip);
    });
    return chosen;
  });
}

function firstFree(store: IpamStore, set: RangeSet, after: Ip | null): Allocation | null {
  for (const c of candidates(set, after)) {
    if (store.ownerOf(formatIp(c.ip)) === null) return c;
  }
  return null;
}

function parseRequested(rangeSets: RangeSet[], requested: string[]): { ip: Ip; set: number; range: IpRange }[] {
  const out: { ip: Ip; set: number; range: IpRange }[] = [];
  for (const text of requested) {
    const ip = parseIp(text.includes("/") ? text.slice(0, text.indexOf("/")) : text);
    if (!ip) throw new CniError(ErrorCode.InvalidConfig, `requested address "${text}" is not an IP address`);
    const gatewayOf = rangeSets.flat().find((r) => r.gateway.family === ip.family && r.gateway.value === ip.value);
    if (gatewayOf) {
      throw new CniError(
        ErrorCode.InvalidConfig,
        `requested address ${text} is the gateway of range ${formatCidr(gatewayOf.subnet)}, which no pod can hold`,
      );
    }
    const found = findRange(rangeSets, ip);
    if (!found) {
      throw new CniError(ErrorCode.InvalidConfig, `requested address ${text} is outside every range of the network`);
    }
    if (out.some((o) => o.set === found.set)) {
      throw new CniError(ErrorCode.InvalidConfig, `requested addresses name range set ${found.set} twice`);
    }
    out.push({ ip, ...found });
  }
  return out;
}

function existingAllocation(store: IpamStore, rangeSets: RangeSet[], att: Attachment): Allocation[] | null {
  const record = store.readIndex(att);
  if (!record) return null;
  const out: Allocation[] = [];
  for (const text of record.ips) {
    const ip = parseIp(text);
    const holder = ip ? store.ownerOf(text) : null;
    const found = ip ? findRange(rangeSets, ip) : null;
    if (!ip || !holder || !ownedBy(holder, att) || !found) return null;
    out.push({ ip, range: found.range });
  }
  return out.length === rangeSets.length ? out : null;
}

/** Releases every address of an attachment; returns what was released. Idempotent. */
export function releaseAddresses(store: IpamStore, att: Attachment): string[] {
  // Only the index names what to release. Without a record (never added,
  // already released, or no store at all) there is nothing to do, and DEL
  // must not fail on a store it cannot create. The spec runs no two
  // operations on one attachment at once, so reading it unlocked is safe.
  if (!store.readIndex(att)) return [];
  return store.locked(() => releaseUnlocked(store, att));
}

function releaseUnlocked(store: IpamStore, att: Attachment): string[] {
  const record = store.readIndex(att);
  const released = (record?.ips ?? []).filter((ip) => store.releaseAddress(ip, att));
  store.removeIndex(att);
  return released;
}

/** The addresses an attachment holds, per the index (empty when none). */
export function addressesOf(store: IpamStore, att: Attachment): string[] {
  const record = store.readIndex(att);
  if (!record) return [];
  return record.ips.filter((ip) => {
    const holder = store.ownerOf(ip);
    return holder !== null && ownedBy(holder, att);
  });
}

/**
 * Releases every reservation of an attachment not in `keep` (GC). An empty
 * `keep` releases everything. Returns the attachments released.
 */
export function collectGarbage(store: IpamStore, keep: Attachment[]): Attachment[] {
  const kept = (a: Attachment) =>
    keep.some((k) => k.containerId === a.containerId && (a.ifname === "" || k.ifname === a.ifname));
  return store.locked(() => {
    const released = new Map<string, Attachment>();
    for (const record of store.listIndex()) {
      if (!kept(record)) {
        releaseUnlocked(store, record);
        released.set(indexName(record), record);
      }
    }
    for (const { ip, owner } of store.listAddresses()) {
      if (!kept(owner)) {
        store.releaseAddress(ip, owner);
        released.set(indexName(owner), owner);
      }
    }
    store.removeStaleTemporaries();
    return [...released.values()];
  });
}

/** Used and total addresses per range set (STATUS, metrics). */
export function poolUsage(store: IpamStore, rangeSets: RangeSet[]): { set: number; used: number; total: bigint }[] {
  const held = store.listAddresses().map((a) => parseIp(a.ip)!);
  return rangeSets.map((set, i) => ({
    set: i,
    used: held.filter((ip) => findRange([set], ip) !== null).length,
    total: capacity(set),
  }));
}
