/**
 * CNI results: the types, and conversion between the 0.3.x/0.4.0 and
 * 1.x shapes (SPEC §5, CNI-SPEC.md §13).
 *
 * Internally a result is always kept in the 1.1.0 shape (no
 * `ips[].version`); `toVersion` produces exactly what a config version asks
 * for, and `fromAnyVersion` reads a `prevResult` or delegated IPAM result of
 * any supported version.
 *
 * @module
 */
import { compareVersions } from "./cni.ts";
import { CniError, ErrorCode } from "./errors.ts";
import { parseCidr, parseIp } from "./addr.ts";

/** One interface of a result. */
export interface ResultInterface {
  name: string;
  mac?: string;
  /** 1.1.0 only. */
  mtu?: number;
  /** The netns path for interfaces inside a container; absent for host ones. */
  sandbox?: string;
  /** 1.1.0 only. */
  socketPath?: string;
  /** 1.1.0 only. */
  pciID?: string;
}

/** One address of a result. */
export interface ResultIp {
  address: string;
  gateway?: string;
  /** Index into `interfaces` of the interface holding the address. */
  interface?: number;
}

/** One route of a result. */
export interface ResultRoute {
  dst: string;
  gw?: string;
  /** 1.1.0 only (mtu, advmss, priority, table, scope). */
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

/** DNS settings of a result. */
export interface ResultDns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

/** A result in Pontoon's internal (1.1.0) shape. */
export interface Result {
  cniVersion: string;
  interfaces?: ResultInterface[];
  ips?: ResultIp[];
  routes?: ResultRoute[];
  dns?: ResultDns;
}

function dnsIsEmpty(dns: ResultDns | undefined): boolean {
  return !dns ||
    ((dns.nameservers ?? []).length === 0 && !dns.domain &&
      (dns.search ?? []).length === 0 && (dns.options ?? []).length === 0);
}

function familyOf(address: string): "4" | "6" {
  return address.includes(":") ? "6" : "4";
}

/**
 * Renders `result` as the JSON object for `version`: 0.3.x/0.4.0 get
 * `ips[].version` and lose 1.1-only fields; 1.0.0 loses 1.1-only fields;
 * empty `dns` is omitted.
 */
export function toVersion(result: Result, version: string): Record<string, unknown> {
  const legacy = compareVersions(version, "1.0.0") < 0;
  const modern = compareVersions(version, "1.1.0") >= 0;
  const out: Record<string, unknown> = { cniVersion: version };
  if (result.interfaces) {
    out.interfaces = result.interfaces.map((i) => {
      const o: Record<string, unknown> = { name: i.name };
      if (i.mac) o.mac = i.mac;
      if (modern && i.mtu) o.mtu = i.mtu;
      if (i.sandbox) o.sandbox = i.sandbox;
      if (modern && i.socketPath) o.socketPath = i.socketPath;
      if (modern && i.pciID) o.pciID = i.pciID;
      return o;
    });
  }
  out.ips = (result.ips ?? []).map((ip) => {
    const o: Record<string, unknown> = {};
    if (legacy) o.version = familyOf(ip.address);
    if (ip.interface !== undefined) o.interface = ip.interface;
    o.address = ip.address;
    if (ip.gateway) o.gateway = ip.gateway;
    return o;
  });
  if (result.routes && result.routes.length > 0) {
    out.routes = result.routes.map((r) => {
      const o: Record<string, unknown> = { dst: r.dst };
      if (r.gw) o.gw = r.gw;
      if (modern) {
        for (const k of ["mtu", "advmss", "priority", "table", "scope"] as const) {
          if (r[k] !== undefined) o[k] = r[k];
        }
      }
      return o;
    });
  }
  if (!dnsIsEmpty(result.dns)) out.dns = result.dns;
  return out;
}

function fail(what: string): never {
  throw new CniError(ErrorCode.DecodingFailure, what);
}

function optString(o: Record<string, unknown>, key: string, where: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null || v === "") return undefined;
  if (typeof v !== "string") fail(`${where}.${key} must be a string`);
  return v;
}

function optNumber(o: Record<string, unknown>, key: string, where: string): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
    fail(`${where}.${key} must be a non-negative integer`);
  }
  return v;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Reads a result of any supported version (a `prevResult`, or a delegated
 * IPAM plugin's output) into the internal shape, checking field types and
 * addresses. `where` names the field in error messages.
 */
export function fromAnyVersion(raw: unknown, where: string): Result {
  if (!isObject(raw)) fail(`${where} must be an object`);
  const version = typeof raw.cniVersion === "string" ? raw.cniVersion : "";
  if (version !== "" && compareVersions(version, "0.3.0") < 0) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `${where} has cniVersion ${version}; results before 0.3.0 are not supported`,
    );
  }
  const result: Result = { cniVersion: version };
  if (raw.interfaces !== undefined && raw.interfaces !== null) {
    if (!Array.isArray(raw.interfaces)) fail(`${where}.interfaces must be a list`);
    result.interfaces = raw.interfaces.map((i, n) => {
      const at = `${where}.interfaces[${n}]`;
      if (!isObject(i) || typeof i.name !== "string") fail(`${at} needs a name`);
      const out: ResultInterface = { name: i.name };
      const mac = optString(i, "mac", at);
      if (mac) out.mac = mac;
      const sandbox = optString(i, "sandbox", at);
      if (sandbox) out.sandbox = sandbox;
      const mtu = optNumber(i, "mtu", at);
      if (mtu) out.mtu = mtu;
      return out;
    });
  }
  if (raw.ips !== undefined && raw.ips !== null) {
    if (!Array.isArray(raw.ips)) fail(`${where}.ips must be a list`);
    result.ips = raw.ips.map((ip, n) => {
      const at = `${where}.ips[${n}]`;
      if (!isObject(ip) || typeof ip.address !== "string" || !parseCidr(ip.address)) {
        fail(`${at}.address must be an address with a prefix length`);
      }
      const out: ResultIp = { address: ip.address };
      const gw = optString(ip, "gateway", at);
      if (gw !== undefined) {
        if (!parseIp(gw)) fail(`${at}.gateway "${gw}" is not an IP address`);
        out.gateway = gw;
      }
      const index = optNumber(ip, "interface", at);
      if (index !== undefined) out.interface = index;
      return out;
    });
  }
  if (raw.routes !== undefined && raw.routes !== null) {
    if (!Array.isArray(raw.routes)) fail(`${where}.routes must be a list`);
    result.routes = raw.routes.map((r, n) => {
      const at = `${where}.routes[${n}]`;
      if (!isObject(r) || typeof r.dst !== "string" || !parseCidr(r.dst)) {
        fail(`${at}.dst must be a prefix`);
      }
      const out: ResultRoute = { dst: r.dst };
      const gw = optString(r, "gw", at);
      if (gw !== undefined) {
        if (!parseIp(gw)) fail(`${at}.gw "${gw}" is not an IP address`);
        out.gw = gw;
      }
      for (const k of ["mtu", "advmss", "priority", "table", "scope"] as const) {
        const v = optNumber(r, k, at);
        if (v !== undefined) out[k] = v;
      }
      return out;
    });
  }
  if (raw.dns !== undefined && raw.dns !== null) result.dns = readDns(raw.dns, `${where}.dns`);
  return result;
}

/**
 * Checks a `dns` object (a config's or a result's): `nameservers`, `search`
 * and `options` lists of strings, `domain` a string. Throws code 6 naming
 * the field; use `onError` to report another code.
 */
export function readDns(raw: unknown, where: string, onError: (what: string) => never = fail): ResultDns {
  if (!isObject(raw)) onError(`${where} must be an object`);
  const out: ResultDns = {};
  for (const key of ["nameservers", "search", "options"] as const) {
    const v = raw[key];
    if (v === undefined || v === null) continue;
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) onError(`${where}.${key} must be a list of strings`);
    out[key] = v as string[];
  }
  if (raw.domain !== undefined && raw.domain !== null) {
    if (typeof raw.domain !== "string") onError(`${where}.domain must be a string`);
    out.domain = raw.domain;
  }
  return out;
}

/**
 * Passes a chained plugin's `prevResult` through ADD (SPEC §2 ADD): its
 * interfaces, addresses and routes come first, and the interface indexes
 * of `ours` are shifted past them.
 */
export function appendResult(prev: Result, ours: Result): Result {
  const offset = prev.interfaces?.length ?? 0;
  const dns = { ...(prev.dns ?? {}), ...(ours.dns ?? {}) };
  return {
    cniVersion: ours.cniVersion,
    interfaces: [...(prev.interfaces ?? []), ...(ours.interfaces ?? [])],
    ips: [
      ...(prev.ips ?? []),
      ...(ours.ips ?? []).map((ip) => ip.interface === undefined ? ip : { ...ip, interface: ip.interface + offset }),
    ],
    routes: [...(prev.routes ?? []), ...(ours.routes ?? [])],
    dns: dnsIsEmpty(dns) ? undefined : dns,
  };
}
