/**
 * The network config: parse stdin, apply defaults in one place, reject
 * anything invalid with a message naming the field.
 *
 * Everything after `loadNetConf` reads a complete, valid `NetConf`.
 *
 * @module
 */
import {
  canonicalNetwork,
  type Cidr,
  contains,
  type Family,
  familyBits,
  formatCidr,
  formatIp,
  type Ip,
  lastAddress,
  networkAddress,
  overlaps,
  parseCidr,
  parseIp,
  sameIp,
} from "./addr.ts";
import { containerIdProblem, ifnameProblem, isSupportedVersion, printable, SUPPORTED_VERSIONS } from "./cni.ts";
import { CniError, ErrorCode } from "./errors.ts";
import { isLogLevel, logFileProblem, type LogLevel } from "./log.ts";
import { fromAnyVersion, readDns, type Result, type ResultDns } from "./result.ts";

/** The IPAM type served by Pontoon itself. */
export const BUILTIN_IPAM = "pontoon-ipam";
/** Default store directory, as host-local's. */
export const DEFAULT_DATA_DIR = "/var/lib/cni/networks";
/** Default bridge name. */
export const DEFAULT_BRIDGE = "pontoon0";

/** One allocatable range inside a subnet. */
export interface IpRange {
  subnet: Cidr;
  /** First allocatable address. */
  start: Ip;
  /** Last allocatable address. */
  end: Ip;
  /** Gateway of the subnet (never allocated). */
  gateway: Ip;
}

/** Ranges of one family; an attachment gets one address per set. */
export type RangeSet = IpRange[];

/** A route handed to the pod. */
export interface PodRoute {
  dst: Cidr;
  gw?: Ip;
}

/** Settings of the built-in IPAM (`pontoon-ipam`). */
export interface BuiltinIpam {
  type: typeof BUILTIN_IPAM;
  rangeSets: RangeSet[];
  routes: PodRoute[];
  dataDir: string;
}

/** A delegated IPAM plugin, run from `CNI_PATH`. */
export interface DelegatedIpam {
  type: string;
}

/** One attachment named by GC's valid list. */
export interface Attachment {
  containerId: string;
  ifname: string;
}

/** The complete, validated network config of one invocation. */
export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  bridge: string;
  isGateway: boolean;
  isDefaultGateway: boolean;
  forceAddress: boolean;
  ipMasq: boolean;
  /** Explicit MTU; undefined means "the default route's interface". */
  mtu?: number;
  hairpinMode: boolean;
  promiscMode: boolean;
  vlan?: number;
  enableDad: boolean;
  ipam: BuiltinIpam | DelegatedIpam;
  /** Addresses requested through `args.cni.ips` or `runtimeConfig.ips`. */
  requestedIps: string[];
  /** MAC requested through `runtimeConfig.mac`. */
  requestedMac?: string;
  prevResult?: Result;
  /** DNS settings for the result (`dns`). */
  dns?: ResultDns;
  logFile?: string;
  logLevel?: LogLevel;
  /** The node agent's socket, when the node runs one. */
  agentSocket?: string;
  /** GC's list of attachments to keep (undefined outside GC). */
  validAttachments?: Attachment[];
  /** The raw config, passed verbatim to a delegated IPAM plugin. */
  raw: Record<string, unknown>;
}

/** Throws code 7 naming `field`. */
function invalid(field: string, problem: string): never {
  throw new CniError(ErrorCode.InvalidConfig, `${field}: ${problem}`);
}

function invalidConfig(what: string): never {
  throw new CniError(ErrorCode.InvalidConfig, what);
}

/** A bad value as one short line: the error names it without echoing megabytes of input. */
function shown(v: unknown): string {
  try {
    return printable(JSON.stringify(v) ?? String(v));
  } catch {
    return typeof v; // too deeply nested to render
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function bool(o: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const v = o[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "boolean") invalid(key, `must be true or false, not ${shown(v)}`);
  return v;
}

function optString(o: Record<string, unknown>, key: string, field = key): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") invalid(field, `must be a string, not ${shown(v)}`);
  return v;
}

function optInt(o: Record<string, unknown>, key: string, min: number, max: number): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    invalid(key, `${shown(v)} is outside ${min}..${max}`);
  }
  return v;
}

/** Checks an absolute path field that reaches the filesystem. */
function absolutePath(field: string, v: string): string {
  if (!v.startsWith("/") || v.includes("\0") || v.split("/").includes("..")) {
    invalid(field, `"${printable(v)}" must be an absolute path without ".."`);
  }
  return v;
}

/** Parses stdin bytes as a JSON object; code 6 when malformed. */
export function decodeConfig(bytes: Uint8Array): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new CniError(
      ErrorCode.DecodingFailure,
      `network config on stdin is not valid JSON: ${(err as Error).message}`,
    );
  }
  if (!isObject(parsed)) {
    throw new CniError(ErrorCode.DecodingFailure, "network config on stdin must be a JSON object");
  }
  return parsed;
}

/** Checks `cniVersion`: code 1 when missing or unsupported. */
export function checkVersion(raw: Record<string, unknown>): string {
  const v = raw.cniVersion;
  if (v === undefined || v === "") {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `cniVersion is missing; plugin supports [${SUPPORTED_VERSIONS.join(", ")}]`,
    );
  }
  if (!isSupportedVersion(v)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `config is "${printable(String(v))}", plugin supports [${SUPPORTED_VERSIONS.join(", ")}]`,
    );
  }
  return v;
}

/** Blocks no pod address can come from: the kernel refuses them on a link or never routes them. */
const UNUSABLE = [
  ["0.0.0.0/8", "'this network'"],
  ["127.0.0.0/8", "loopback"],
  ["224.0.0.0/4", "multicast"],
  ["::ffff:0:0/96", "IPv4-mapped IPv6"],
  ["ff00::/8", "multicast"],
].map(([cidr, what]) => ({ block: parseCidr(cidr)!, text: `${what} addresses (${cidr})` }));

function parseRange(raw: unknown, field: string): IpRange {
  if (!isObject(raw)) invalid(field, "must be an object with a subnet");
  const subnetText = optString(raw, "subnet", `${field}.subnet`);
  if (!subnetText) invalid(`${field}.subnet`, "is required");
  const subnet = parseCidr(subnetText);
  if (!subnet) invalid(`${field}.subnet`, `"${printable(subnetText)}" is not a CIDR`);
  const network = canonicalNetwork(subnet);
  if (network.value !== subnet.value) {
    invalid(`${field}.subnet`, `${subnetText} has host bits set; did you mean ${formatCidr(network)}?`);
  }
  const unusable = UNUSABLE.find((u) => overlaps(subnet, u.block));
  if (unusable) invalid(`${field}.subnet`, `${subnetText} holds ${unusable.text}, unusable for pods`);
  const bits = familyBits(subnet.family);
  if (subnet.prefix > bits - 2) {
    invalid(`${field}.subnet`, `network ${subnetText} is too small to allocate from`);
  }
  const first: Ip = { family: subnet.family, value: network.value + 1n };
  const broadcast = lastAddress(subnet);
  const last: Ip = subnet.family === 4 ? { family: 4, value: broadcast.value - 1n } : broadcast;

  const addressIn = (key: string, fallback: Ip): Ip => {
    const text = optString(raw, key, `${field}.${key}`);
    if (text === undefined) return fallback;
    const ip = parseIp(text);
    if (!ip) invalid(`${field}.${key}`, `"${printable(text)}" is not an IP address`);
    if (!contains(subnet, ip)) invalid(`${field}.${key}`, `${text} is outside subnet ${subnetText}`);
    if (sameIp(ip, networkAddress(subnet)) || (subnet.family === 4 && sameIp(ip, broadcast))) {
      invalid(`${field}.${key}`, `${text} is the network or broadcast address of ${subnetText}`);
    }
    return ip;
  };
  const start = addressIn("rangeStart", first);
  const end = addressIn("rangeEnd", last);
  if (start.value > end.value) {
    invalid(`${field}.rangeStart`, `${formatIp(start)} is after rangeEnd ${formatIp(end)}`);
  }
  const gateway = addressIn("gateway", first);
  const allocatable = end.value - start.value + 1n -
    (gateway.value >= start.value && gateway.value <= end.value ? 1n : 0n);
  if (allocatable < 1n) invalid(field, `range ${formatIp(start)}-${formatIp(end)} has no address to allocate`);
  return { subnet, start, end, gateway };
}

function parseRangeSets(ipam: Record<string, unknown>): RangeSet[] {
  const sets: RangeSet[] = [];
  if (ipam.ranges !== undefined) {
    if (!Array.isArray(ipam.ranges) || ipam.ranges.length === 0) {
      invalid("ipam.ranges", "must be a non-empty list of range sets");
    }
    ipam.ranges.forEach((set, i) => {
      if (!Array.isArray(set) || set.length === 0) {
        invalid(`ipam.ranges[${i}]`, "must be a non-empty list of ranges");
      }
      sets.push(set.map((r, j) => parseRange(r, `ipam.ranges[${i}][${j}]`)));
    });
  }
  if (ipam.subnet !== undefined) {
    sets.unshift([parseRange(ipam, "ipam")]);
  }
  if (sets.length === 0) invalid("ipam", "needs ranges or a subnet");
  // One family per set; no address in two ranges anywhere.
  const all: { range: IpRange; field: string }[] = [];
  sets.forEach((set, i) => {
    const family: Family = set[0].subnet.family;
    set.forEach((range, j) => {
      const field = `ipam.ranges[${i}][${j}]`;
      if (range.subnet.family !== family) invalid(field, "mixes IPv4 and IPv6 in one range set");
      for (const other of all) {
        const a = range, b = other.range;
        if (a.subnet.family === b.subnet.family && a.start.value <= b.end.value && b.start.value <= a.end.value) {
          invalid(field, `${formatCidr(a.subnet)} overlaps ${other.field} ${formatCidr(b.subnet)}`);
        }
      }
      all.push({ range, field });
    });
  });
  return sets;
}

function parseRoutes(ipam: Record<string, unknown>): PodRoute[] {
  if (ipam.routes === undefined || ipam.routes === null) return [];
  if (!Array.isArray(ipam.routes)) invalid("ipam.routes", "must be a list");
  return ipam.routes.map((r, i) => {
    const field = `ipam.routes[${i}]`;
    if (!isObject(r)) invalid(field, "must be an object with dst");
    const dstText = optString(r, "dst", `${field}.dst`) ?? "";
    const dst = parseCidr(dstText);
    if (!dst) invalid(`${field}.dst`, `"${printable(dstText)}" is not a CIDR`);
    const gwText = optString(r, "gw", `${field}.gw`);
    if (gwText === undefined) return { dst: canonicalNetwork(dst) };
    const gw = parseIp(gwText);
    if (!gw || gw.family !== dst.family) {
      invalid(`${field}.gw`, `"${printable(gwText)}" is not an address of dst's family`);
    }
    return { dst: canonicalNetwork(dst), gw };
  });
}

function parseIpam(raw: unknown, needed: boolean): BuiltinIpam | DelegatedIpam {
  if (!isObject(raw)) {
    if (needed) invalid("ipam", "is required");
    return { type: "" };
  }
  const type = optString(raw, "type", "ipam.type");
  if (!type) invalid("ipam.type", "is required");
  if (type !== BUILTIN_IPAM) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.\-]*$/.test(type)) {
      invalid("ipam.type", `"${printable(type)}" is not a plugin name`);
    }
    return { type };
  }
  const dataDir = absolutePath("ipam.dataDir", optString(raw, "dataDir", "ipam.dataDir") ?? DEFAULT_DATA_DIR);
  const rangeSets = parseRangeSets(raw);
  const routes = parseRoutes(raw);
  checkRoutes(routes, rangeSets);
  return { type: BUILTIN_IPAM, rangeSets, routes, dataDir };
}

/** Rejects routes the kernel would refuse in the pod: duplicates, a range's own subnet, an unreachable gw. */
function checkRoutes(routes: PodRoute[], rangeSets: RangeSet[]): void {
  const subnets = rangeSets.flat().map((r) => r.subnet);
  const same = (a: Cidr, b: Cidr) => sameIp(a, b) && a.prefix === b.prefix;
  routes.forEach((r, i) => {
    const field = `ipam.routes[${i}]`;
    const twin = routes.findIndex((o) => same(o.dst, r.dst));
    if (twin < i) invalid(`${field}.dst`, `${formatCidr(r.dst)} is already ipam.routes[${twin}]`);
    if (subnets.some((s) => same(s, r.dst))) {
      invalid(`${field}.dst`, `${formatCidr(r.dst)} is a range's own subnet, which the pod reaches directly`);
    }
    if (r.gw && !subnets.some((s) => contains(s, r.gw!))) {
      invalid(`${field}.gw`, `${formatIp(r.gw)} is outside every range's subnet, so the pod cannot reach it`);
    }
  });
}

function parseRequestedIps(raw: Record<string, unknown>): string[] {
  const fromArgs = isObject(raw.args) && isObject(raw.args.cni) ? raw.args.cni.ips : undefined;
  const fromRuntime = isObject(raw.runtimeConfig) ? raw.runtimeConfig.ips : undefined;
  // CONVENTIONS: `args` wins over other sources; runtimeConfig next.
  const chosen = fromArgs ?? fromRuntime;
  const field = fromArgs !== undefined ? "args.cni.ips" : "runtimeConfig.ips";
  if (chosen === undefined || chosen === null) return [];
  if (!Array.isArray(chosen) || chosen.some((v) => typeof v !== "string")) {
    invalid(field, "must be a list of addresses");
  }
  return chosen as string[];
}

function parseAttachments(raw: Record<string, unknown>): Attachment[] | undefined {
  const list = raw["cni.dev/valid-attachments"] ?? raw["cni.dev/attachments"];
  if (list === undefined) return undefined;
  if (!Array.isArray(list)) invalid("cni.dev/valid-attachments", "must be a list");
  return list.map((a, i) => {
    const field = `cni.dev/valid-attachments[${i}]`;
    if (!isObject(a) || typeof a.containerID !== "string" || typeof a.ifname !== "string") {
      invalid(field, "needs containerID and ifname strings");
    }
    return { containerId: a.containerID, ifname: a.ifname };
  });
}

/** Options for `loadNetConf`. */
export interface LoadOptions {
  /** Whether IPAM settings are needed (false for VERSION-like uses). */
  needIpam?: boolean;
  /**
   * Skip `prevResult` (DEL, GC, STATUS use none): a result a chained plugin
   * mangled must not block a pod's teardown.
   */
  ignorePrevResult?: boolean;
}

/**
 * Validates a decoded config and fills in defaults.
 *
 * @example
 * ```ts
 * const conf = loadNetConf(decodeConfig(stdin));
 * conf.bridge; // "pontoon0" unless set
 * ```
 */
export function loadNetConf(raw: Record<string, unknown>, options: LoadOptions = {}): NetConf {
  const cniVersion = checkVersion(raw);
  const name = raw.name;
  if (name === undefined || name === "") invalid("name", "is required");
  if (typeof name !== "string") invalid("name", "must be a string");
  const nameProblem = containerIdProblem(name);
  if (nameProblem) invalid("name", nameProblem);
  const type = optString(raw, "type") ?? "pontoon";

  const bridge = optString(raw, "bridge") ?? DEFAULT_BRIDGE;
  const bridgeProblem = ifnameProblem(bridge);
  if (bridgeProblem) invalid("bridge", bridgeProblem);

  const promiscMode = bool(raw, "promiscMode", false);
  const hairpinMode = bool(raw, "hairpinMode", !promiscMode);
  if (hairpinMode && promiscMode) invalid("hairpinMode", "cannot be set together with promiscMode");
  const isDefaultGateway = bool(raw, "isDefaultGateway", false);
  const isGateway = bool(raw, "isGateway", true) || isDefaultGateway;

  const requestedMac = isObject(raw.runtimeConfig)
    ? optString(raw.runtimeConfig, "mac", "runtimeConfig.mac")
    : undefined;
  if (requestedMac !== undefined && !isMac(requestedMac)) {
    invalid("runtimeConfig.mac", `"${printable(requestedMac)}" is not a unicast MAC address`);
  }
  const logFileText = optString(raw, "logFile");
  const logFile = logFileText === undefined ? undefined : absolutePath("logFile", logFileText);
  const logProblem = logFile === undefined ? null : logFileProblem(logFile);
  if (logProblem) invalid("logFile", `${printable(logFile!)} ${logProblem}`);
  const logLevel = optString(raw, "logLevel");
  if (logLevel !== undefined && !isLogLevel(logLevel)) {
    invalid("logLevel", `"${printable(logLevel)}" is not debug, info, warn or error`);
  }
  const agentSocket = optString(raw, "agentSocket");

  const mtu = optInt(raw, "mtu", 68, 65535);
  const ipam = parseIpam(raw.ipam, options.needIpam ?? true);
  const hasV6 = "rangeSets" in ipam && ipam.rangeSets.some((set) => set[0].subnet.family === 6);
  if (mtu !== undefined && mtu < 1280 && hasV6) invalid("mtu", `${mtu} is below 1280, the minimum for IPv6 ranges`);

  let prevResult: Result | undefined;
  if (raw.prevResult !== undefined && raw.prevResult !== null && !options.ignorePrevResult) {
    prevResult = fromAnyVersion(raw.prevResult, "prevResult");
  }

  return {
    cniVersion,
    name,
    type,
    bridge,
    isGateway,
    isDefaultGateway,
    forceAddress: bool(raw, "forceAddress", false),
    ipMasq: bool(raw, "ipMasq", false),
    mtu,
    hairpinMode,
    promiscMode,
    vlan: optInt(raw, "vlan", 1, 4094),
    enableDad: bool(raw, "enableDad", bool(raw, "enabledad", false)),
    ipam,
    requestedIps: parseRequestedIps(raw),
    requestedMac,
    prevResult,
    dns: raw.dns === undefined || raw.dns === null ? undefined : readDns(raw.dns, "dns", invalidConfig),
    logFile,
    logLevel: logLevel as LogLevel | undefined,
    agentSocket: agentSocket === undefined ? undefined : absolutePath("agentSocket", agentSocket),
    validAttachments: parseAttachments(raw),
    raw,
  };
}

/** True for a unicast `xx:xx:xx:xx:xx:xx` MAC other than the all-zero one (the kernel refuses it). */
export function isMac(text: string): boolean {
  return /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(text) && (parseInt(text.slice(0, 2), 16) & 1) === 0 &&
    !/^(00:){5}00$/.test(text);
}
