/**
 * The CNI verbs, each a short pipeline: validate → reserve → wire → report,
 * with its undo beside it. `runPlugin` is the one place errors become the
 * spec's JSON error document.
 *
 * @module
 */
import { canonicalNetwork, type Cidr, type Family, formatIp, type Ip, parseCidr, parseIp } from "./addr.ts";
import {
  addVeth,
  bridgeAddresses,
  bridgePorts,
  configurePod,
  ensureBridge,
  HOST_VETH_PREFIX,
  hostVethAlias,
  hostVethName,
  inspectPod,
  randomMac,
  removeVeth,
  removeVeths,
} from "./bridge.ts";
import { type CniEnv, compareVersions, readCniEnv, SUPPORTED_VERSIONS } from "./cni.ts";
import { BUILTIN_IPAM, type BuiltinIpam, decodeConfig, isMac, loadNetConf, type NetConf } from "./config.ts";
import { findPlugin, runDelegate } from "./delegate.ts";
import { agentGet, agentSyncedThisBoot, reportToAgent } from "./agentclient.ts";
import { asCniError, CniError, ErrorCode } from "./errors.ts";
import { masqueradeInstalled, masqueradeScript, runNftScript } from "./firewall.ts";
import { addressesOf, collectGarbage, IpamStore, poolUsage, releaseAddresses, reserveAddresses } from "./ipam.ts";
import { configureLog, log, setLogContext } from "./log.ts";
import { isOwnNetns, netnsProblem } from "./netns.ts";
import { markerMatches, pruneMarker, withNodeLock, writeMarker } from "./nodestate.ts";
import { appendResult, fromAnyVersion, type Result, type ResultRoute, toVersion } from "./result.ts";
import { defaultRouteMtu, isBridge, linkExists, masterOf } from "./sysfs.ts";

/** What one invocation prints and its exit code. */
export interface PluginOutput {
  stdout: string;
  code: number;
}

/** Everything a verb needs: the validated env and config. */
interface Invocation {
  env: CniEnv;
  conf: NetConf;
}

/** Addresses and routes from IPAM, in the internal result shape. */
interface IpamOutcome {
  ips: { address: Cidr; gateway?: Ip }[];
  routes: { dst: Cidr; gw?: Ip }[];
  dns?: Result["dns"];
  /** Undoes the reservation (only when this ADD made it). */
  undo?: () => Promise<void>;
}

/** Test-only fault injection point (PONTOON_TEST_FAULT=<point>). */
function faultPoint(name: string): void {
  if (Deno.env.get("PONTOON_TEST_FAULT") === name) {
    throw new CniError(ErrorCode.SystemFailure, `injected fault at ${name}`);
  }
}

// ---------------------------------------------------------------- ADD

async function cmdAdd({ env, conf }: Invocation): Promise<Result> {
  requireUsableNetns(env);
  const host = hostVethName(env.containerId, env.ifname);
  if (linkExists(host)) {
    throw new CniError(
      ErrorCode.InterfaceExists,
      `${env.ifname} of container ${env.containerId} is already attached (host veth ${host})`,
    );
  }
  const podMac = chooseMac(env, conf);
  const undo: (() => void | Promise<void>)[] = [];
  try {
    const ipam = await reserveIpam(env, conf);
    if (ipam.undo) undo.push(ipam.undo);
    faultPoint("after-reserve");

    const mtu = conf.mtu ?? defaultRouteMtu();
    const families = [...new Set(ipam.ips.map((i) => i.address.family))];
    const bridgeMac = await ensureBridge({
      name: conf.bridge,
      mtu,
      gateways: conf.isGateway ? gatewayAddresses(ipam) : [],
      promisc: conf.promiscMode,
      forceAddress: conf.forceAddress,
      vlan: conf.vlan,
      forwardFamilies: conf.isGateway ? families : [],
    });
    if (conf.ipMasq) await ensureMasquerade(conf, ipam);

    const hostMac = randomMac();
    // Registered first: addVeth sets hairpin and VLANs after the link exists,
    // and a failure there must not leave the veth behind.
    undo.push(() => removeVeth(host));
    await addVeth({
      host,
      hostMac,
      pod: env.ifname,
      podMac,
      netns: env.netns,
      bridge: conf.bridge,
      network: conf.name,
      mtu,
      hairpin: conf.hairpinMode,
      vlan: conf.vlan,
    });
    faultPoint("after-veth");

    const routes = podRoutes(conf, ipam);
    configurePod({
      netns: env.netns,
      ifname: env.ifname,
      addresses: ipam.ips.map((i) => i.address),
      routes,
      dad: conf.enableDad,
    });
    faultPoint("after-pod");

    const result: Result = {
      cniVersion: conf.cniVersion,
      interfaces: [
        { name: conf.bridge, mac: bridgeMac, mtu },
        { name: host, mac: hostMac, mtu },
        { name: env.ifname, mac: podMac, mtu, sandbox: env.netns },
      ],
      ips: ipam.ips.map((i) => ({
        address: `${formatIp(i.address)}/${i.address.prefix}`,
        gateway: i.gateway ? formatIp(i.gateway) : undefined,
        interface: 2,
      })),
      routes: routes.map(toResultRoute),
      dns: { ...(conf.dns ?? {}), ...(ipam.dns ?? {}) },
    };
    return conf.prevResult ? appendResult(conf.prevResult, result) : result;
  } catch (err) {
    // 103 here means our veth was never created; if the host end exists, a
    // concurrent ADD of this same attachment owns it and the reservation.
    const raced = err instanceof CniError && err.code === ErrorCode.InterfaceExists && linkExists(host);
    for (const step of raced ? [] : undo.reverse()) {
      try {
        await step();
      } catch (e) {
        log("error", "undo step failed", { error: String(e) });
      }
    }
    throw err;
  }
}

function requireUsableNetns(env: CniEnv): void {
  const problem = netnsProblem(env.netns);
  if (problem) throw new CniError(ErrorCode.InvalidEnvironment, `CNI_NETNS ${env.netns} ${problem}`);
  if (!env.netnsOverride && isOwnNetns(env.netns)) {
    throw new CniError(ErrorCode.InvalidNetns, `CNI_NETNS ${env.netns} is the plugin's own network namespace`);
  }
}

function chooseMac(env: CniEnv, conf: NetConf): string {
  // CONVENTIONS: runtimeConfig (a capability) is preferred to CNI_ARGS.
  const requested = conf.requestedMac ?? env.args.mac;
  if (requested === undefined) return randomMac();
  if (!isMac(requested)) {
    throw new CniError(ErrorCode.InvalidEnvironment, `CNI_ARGS: MAC "${requested}" is not a unicast MAC address`);
  }
  return requested.toLowerCase();
}

function gatewayAddresses(ipam: IpamOutcome): Cidr[] {
  const seen = new Set<string>();
  const out: Cidr[] = [];
  for (const i of ipam.ips) {
    if (!i.gateway) continue;
    const gw = { ...i.gateway, prefix: i.address.prefix };
    const key = `${formatIp(gw)}/${gw.prefix}`;
    if (!seen.has(key)) {
      seen.add(key);
      out.push(gw);
    }
  }
  return out;
}

function podRoutes(conf: NetConf, ipam: IpamOutcome): { dst: Cidr; gw?: Ip }[] {
  const gatewayOf = (family: Family) => ipam.ips.find((i) => i.address.family === family && i.gateway)?.gateway;
  const routes = ipam.routes.map((r) => ({ dst: r.dst, gw: r.gw ?? gatewayOf(r.dst.family) }));
  if (conf.isDefaultGateway) {
    for (const family of new Set(ipam.ips.map((i) => i.address.family))) {
      const gw = gatewayOf(family);
      if (gw && !routes.some((r) => r.dst.prefix === 0 && r.dst.family === family)) {
        routes.push({ dst: { family, value: 0n, prefix: 0 }, gw });
      }
    }
  }
  return routes;
}

function toResultRoute(r: { dst: Cidr; gw?: Ip }): ResultRoute {
  const dst = r.dst.prefix === 0 ? (r.dst.family === 4 ? "0.0.0.0/0" : "::/0") : `${formatIp(r.dst)}/${r.dst.prefix}`;
  return r.gw ? { dst, gw: formatIp(r.gw) } : { dst };
}

async function ensureMasquerade(conf: NetConf, ipam: IpamOutcome): Promise<void> {
  const subnets = conf.ipam.type === BUILTIN_IPAM
    ? (conf.ipam as BuiltinIpam).rangeSets.flat().map((r) => r.subnet)
    : ipam.ips.map((i) => canonicalNetwork(i.address));
  const script = masqueradeScript(conf.name, subnets);
  if (markerMatches("masq", conf.name, script)) return;
  await withNodeLock("masq", conf.name, async () => {
    if (markerMatches("masq", conf.name, script)) return;
    await runNftScript(script);
    writeMarker("masq", conf.name, script);
  });
}

// ------------------------------------------------------------- IPAM

function builtinStore(conf: NetConf): IpamStore {
  return new IpamStore((conf.ipam as BuiltinIpam).dataDir, conf.name);
}

async function reserveIpam(env: CniEnv, conf: NetConf): Promise<IpamOutcome> {
  if (conf.ipam.type !== BUILTIN_IPAM) return await reserveDelegated(env, conf);
  const ipam = conf.ipam as BuiltinIpam;
  const store = builtinStore(conf);
  const attachment = { containerId: env.containerId, ifname: env.ifname };
  // CONVENTIONS: `args`/runtimeConfig win over CNI_ARGS.
  const requested = conf.requestedIps.length > 0 ? conf.requestedIps : env.args.ips;
  const before = addressesOf(store, attachment);
  const allocations = reserveAddresses(store, ipam.rangeSets, {
    attachment,
    requested,
    network: conf.name,
    podNamespace: env.args.podNamespace,
    podName: env.args.podName,
    netns: env.netns,
  });
  const reused = before.length > 0 && allocations.every((a) => before.includes(formatIp(a.ip)));
  return {
    ips: allocations.map((a) => ({ address: { ...a.ip, prefix: a.range.subnet.prefix }, gateway: a.range.gateway })),
    routes: ipam.routes,
    undo: reused ? undefined : () => Promise.resolve(void releaseAddresses(store, attachment)),
  };
}

async function reserveDelegated(env: CniEnv, conf: NetConf): Promise<IpamOutcome> {
  const plugin = findPlugin(conf.ipam.type, env.path);
  const raw = await runDelegate(plugin, "ADD", conf.raw);
  const undo = async () => void await runDelegate(plugin, "DEL", conf.raw);
  try {
    const result = fromAnyVersion(raw, `${conf.ipam.type} result`);
    const ips = (result.ips ?? []).map((i) => ({
      address: parseCidr(i.address)!,
      gateway: i.gateway ? parseIp(i.gateway)! : undefined,
    }));
    if (ips.length === 0) throw new CniError(ErrorCode.DelegateFailure, `${conf.ipam.type} returned no address`);
    const routes = (result.routes ?? []).map((r) => ({
      dst: canonicalNetwork(parseCidr(r.dst)!),
      gw: r.gw ? parseIp(r.gw)! : undefined,
    }));
    return { ips, routes, dns: result.dns, undo };
  } catch (err) {
    await undo().catch(() => {});
    throw err;
  }
}

async function releaseIpam(env: CniEnv, conf: NetConf): Promise<void> {
  if (conf.ipam.type !== BUILTIN_IPAM) {
    await runDelegate(findPlugin(conf.ipam.type, env.path), "DEL", conf.raw);
    return;
  }
  const released = releaseAddresses(builtinStore(conf), { containerId: env.containerId, ifname: env.ifname });
  if (released.length > 0) log("info", "released addresses", { ips: released });
}

// ---------------------------------------------------------------- DEL

async function cmdDel({ env, conf }: Invocation): Promise<void> {
  // Best effort and idempotent: the netns may be empty, gone or never
  // added; the host veth name and the IPAM index need none of it.
  removeVeth(hostVethName(env.containerId, env.ifname));
  faultPoint("del-after-veth");
  await releaseIpam(env, conf);
}

// -------------------------------------------------------------- CHECK

async function cmdCheck({ env, conf }: Invocation): Promise<void> {
  if (compareVersions(conf.cniVersion, "0.4.0") < 0) {
    throw new CniError(ErrorCode.IncompatibleVersion, `config version ${conf.cniVersion} does not allow CHECK`);
  }
  const prev = conf.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidConfig, "prevResult: required for CHECK but missing");
  requireUsableNetns(env);
  const failed = (what: string): never => {
    throw new CniError(ErrorCode.CheckFailed, what);
  };

  if (!isBridge(conf.bridge)) failed(`bridge ${conf.bridge} does not exist`);
  const host = hostVethName(env.containerId, env.ifname);
  if (!linkExists(host)) failed(`host veth ${host} does not exist`);
  if (masterOf(host) !== conf.bridge) failed(`host veth ${host} is not attached to bridge ${conf.bridge}`);

  const podIndex = (prev.interfaces ?? []).findIndex((i) => i.name === env.ifname && i.sandbox);
  if (podIndex < 0) failed(`prevResult has no interface ${env.ifname} in a sandbox`);
  const view = inspectPod(env.netns, env.ifname);
  if (!view.exists) failed(`interface ${env.ifname} does not exist in ${env.netns}`);
  const expected = podAddresses(prev, podIndex, env.ifname);
  for (const ip of expected) {
    const want = parseCidr(ip.address)!;
    if (!view.addresses.some((a) => a.family === want.family && a.value === want.value && a.prefix === want.prefix)) {
      failed(`address ${ip.address} is missing from ${env.ifname}`);
    }
  }
  for (const route of prev.routes ?? []) {
    const dst = parseCidr(route.dst)!;
    const present = view.routes.some((r) => {
      const rdst = r.dst === "default"
        ? { family: dst.family, value: 0n, prefix: 0 }
        : parseCidr(r.dst.includes("/") ? r.dst : `${r.dst}/${dst.family === 4 ? 32 : 128}`);
      const gwOk = !route.gw || (r.gateway !== undefined && parseIp(r.gateway)?.value === parseIp(route.gw)?.value);
      return rdst !== null && rdst.family === dst.family && rdst.value === dst.value && rdst.prefix === dst.prefix &&
        gwOk;
    });
    if (!present) failed(`route ${route.dst}${route.gw ? ` via ${route.gw}` : ""} is missing in ${env.netns}`);
  }
  if (conf.isGateway) checkGateways(conf, expected);
  await checkIpam(env, conf, expected.map((i) => i.address));
  if (conf.ipMasq) {
    const subnets = expected.map((i) => canonicalNetwork(parseCidr(i.address)!));
    if (!(await masqueradeInstalled(conf.name, subnets))) {
      failed(`masquerade table for network ${conf.name} is missing`);
    }
  }
}

/**
 * The prevResult addresses on the pod's interface. An index naming no
 * interface makes the result malformed (7: no CHECK could judge it); one
 * naming a host interface claims an address where ADD never puts one (104).
 */
function podAddresses(prev: Result, podIndex: number, ifname: string): NonNullable<Result["ips"]> {
  const interfaces = prev.interfaces ?? [];
  return (prev.ips ?? []).filter((ip, n) => {
    if (ip.interface === undefined) return true;
    const target = interfaces[ip.interface];
    if (!target) {
      throw new CniError(
        ErrorCode.InvalidConfig,
        `prevResult.ips[${n}].interface: ${ip.interface} names no entry of prevResult.interfaces (it has ${interfaces.length}), so prevResult is malformed`,
      );
    }
    if (!target.sandbox) {
      throw new CniError(
        ErrorCode.CheckFailed,
        `prevResult.ips[${n}] puts ${ip.address} on host interface ${target.name}; addresses belong on ${ifname} in the sandbox`,
      );
    }
    return ip.interface === podIndex;
  });
}

/** The gateway of each expected address must sit on the bridge (ADD put it there). */
function checkGateways(conf: NetConf, expected: { address: string; gateway?: string }[]): void {
  const present = bridgeAddresses(conf.bridge);
  for (const ip of expected) {
    if (!ip.gateway) continue;
    const gw = parseIp(ip.gateway)!;
    const prefix = parseCidr(ip.address)!.prefix;
    if (!present.some((p) => p.family === gw.family && p.value === gw.value && p.prefix === prefix)) {
      throw new CniError(
        ErrorCode.CheckFailed,
        `gateway ${ip.gateway}/${prefix} is missing from bridge ${conf.bridge}`,
      );
    }
  }
}

async function checkIpam(env: CniEnv, conf: NetConf, expected: string[]): Promise<void> {
  if (conf.ipam.type !== BUILTIN_IPAM) {
    await runDelegate(findPlugin(conf.ipam.type, env.path), "CHECK", conf.raw);
    return;
  }
  const held = addressesOf(builtinStore(conf), { containerId: env.containerId, ifname: env.ifname });
  for (const address of expected) {
    const ip = address.slice(0, address.indexOf("/"));
    if (!held.includes(formatIp(parseIp(ip)!))) {
      throw new CniError(
        ErrorCode.CheckFailed,
        `address ${ip} is not reserved for ${env.containerId}/${env.ifname} in network ${conf.name}`,
      );
    }
  }
}

// ------------------------------------------------------------- STATUS

async function cmdStatus({ env, conf }: Invocation): Promise<void> {
  requireVersion(conf, "1.1.0", "STATUS");
  const notAvailable = (why: string): never => {
    throw new CniError(ErrorCode.NotAvailable, why);
  };
  if (linkExists(conf.bridge) && !isBridge(conf.bridge)) {
    notAvailable(`link ${conf.bridge} exists and is not a bridge, so it cannot be created`);
  }
  if (conf.agentSocket) requireAgentReady(conf.agentSocket);
  if (conf.ipam.type !== BUILTIN_IPAM) {
    await runDelegate(findPlugin(conf.ipam.type, env.path), "STATUS", conf.raw);
    return;
  }
  const ipam = conf.ipam as BuiltinIpam;
  const store = builtinStore(conf);
  try {
    store.ensure();
    const probe = `${store.dir}/.status-${Deno.pid}`;
    Deno.writeFileSync(probe, new Uint8Array());
    Deno.removeSync(probe);
  } catch (err) {
    notAvailable(`IPAM store ${store.dir} is not writable: ${(err as Error).message}`);
  }
  for (const { set, used, total } of poolUsage(store, ipam.rangeSets)) {
    if (BigInt(used) >= total) {
      notAvailable(`network ${conf.name}: range set ${set} is exhausted (${used} of ${total} addresses in use)`);
    }
  }
}

/**
 * 50 until the node's agent has synced. Once an agent has synced on this
 * boot, its routes and conflist stay in force while it restarts, so an
 * agent that is down or re-syncing is logged, not reported: a DaemonSet
 * update must not flip the node's network to not-ready.
 */
function requireAgentReady(socket: string): void {
  let problem: string;
  try {
    const reply = agentGet(socket, "/readyz");
    if (reply.status === 200) return;
    problem = `node agent not ready: ${reply.body.trim() || `HTTP ${reply.status}`}`;
  } catch (err) {
    problem = `node agent not reachable at ${socket}: ${(err as Error).message}`;
  }
  if (!agentSyncedThisBoot(socket)) throw new CniError(ErrorCode.NotAvailable, problem);
  log("warn", `${problem}; it synced earlier on this boot, so the node's routes stay in force`);
}

function requireVersion(conf: NetConf, min: string, verb: string): void {
  if (compareVersions(conf.cniVersion, min) < 0) {
    throw new CniError(ErrorCode.IncompatibleVersion, `config version ${conf.cniVersion} does not allow ${verb}`);
  }
}

// ----------------------------------------------------------------- GC

async function cmdGc({ env, conf }: Invocation): Promise<void> {
  requireVersion(conf, "1.1.0", "GC");
  const keep = conf.validAttachments;
  if (!keep) throw new CniError(ErrorCode.InvalidConfig, "cni.dev/valid-attachments: required for GC but missing");
  const errors: string[] = [];
  // Host veths first: a port no valid attachment names is stale.
  const keepNames = new Set(keep.map((a) => hostVethName(a.containerId, a.ifname)));
  // A port with another network's alias belongs to that network's pods (a
  // shared bridge); one without an alias is an ADD killed between creating
  // the veth and naming it, garbage whoever collects it.
  const alias = hostVethAlias(conf.name);
  const stale = (await bridgePorts(conf.bridge))
    .filter((p) => p.name.startsWith(HOST_VETH_PREFIX) && (p.alias === undefined || p.alias === alias))
    .map((p) => p.name)
    .filter((name) => !keepNames.has(name));
  await removeVeths(stale).catch((e) => errors.push(String(e)));
  try {
    if (conf.ipam.type === BUILTIN_IPAM) {
      const released = collectGarbage(builtinStore(conf), keep);
      if (released.length > 0) log("info", "GC released attachments", { released });
    } else {
      await runDelegate(findPlugin(conf.ipam.type, env.path), "GC", conf.raw);
    }
  } catch (err) {
    errors.push(asCniError(err).details);
  }
  if (errors.length > 0) throw new CniError(ErrorCode.SystemFailure, `GC: ${errors.join("; ")}`);
  // A gone bridge's markers never match again (a new bridge has a new
  // ifindex): drop them here, not on DEL, which must not pay for it.
  const gone = () => !linkExists(conf.bridge);
  if (gone()) {
    pruneMarker("bridge", conf.bridge, gone);
    pruneMarker("masq", conf.name, gone);
  }
}

// ------------------------------------------------------------ VERSION

function cmdVersion(stdin: Uint8Array): string {
  let version = "1.1.0";
  try {
    const raw = JSON.parse(new TextDecoder().decode(stdin));
    if (typeof raw?.cniVersion === "string" && raw.cniVersion !== "") version = raw.cniVersion;
  } catch { /* VERSION needs no valid config */ }
  return JSON.stringify({ cniVersion: version, supportedVersions: SUPPORTED_VERSIONS });
}

// ----------------------------------------------------------- dispatch

function errorDocument(err: CniError, version: string): string {
  return JSON.stringify({ cniVersion: version, code: err.code, msg: err.msg, details: err.details });
}

/**
 * Runtimes may exec plugins with a PATH lacking the sbin directories that
 * hold ip, nft and bridge: search them after the runtime's own PATH (also
 * in the compiled binary, which has no launcher).
 */
function searchSbin(): void {
  const path = Deno.env.get("PATH");
  Deno.env.set("PATH", `${path ? `${path}:` : ""}/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin`);
}

/**
 * Runs one plugin invocation: validates env and config, runs the verb and
 * returns what to print. Never throws.
 */
export async function runPlugin(envVars: Record<string, string | undefined>, stdin: Uint8Array): Promise<PluginOutput> {
  searchSbin();
  let version = "1.1.0";
  let report: { socket: string; verb: string; started: number } | undefined;
  let code = 0;
  try {
    const env = readCniEnv(envVars);
    if (env.command === "VERSION") return { stdout: cmdVersion(stdin), code: 0 };
    const raw = decodeConfig(stdin);
    if (typeof raw.cniVersion === "string" && raw.cniVersion !== "") version = raw.cniVersion;
    const conf = loadNetConf(raw, { ignorePrevResult: env.command !== "ADD" && env.command !== "CHECK" });
    configureLog({ level: conf.logLevel ?? "warn", file: conf.logFile });
    setLogContext({
      command: env.command,
      network: conf.name,
      containerId: env.containerId || undefined,
      ifname: env.ifname || undefined,
    });
    const started = performance.now();
    if (conf.agentSocket && ["ADD", "DEL", "CHECK"].includes(env.command)) {
      report = { socket: conf.agentSocket, verb: env.command, started };
    }
    const inv = { env, conf };
    let stdout = "";
    switch (env.command) {
      case "ADD":
        stdout = JSON.stringify(toVersion(await cmdAdd(inv), conf.cniVersion));
        break;
      case "DEL":
        await cmdDel(inv);
        break;
      case "CHECK":
        await cmdCheck(inv);
        break;
      case "STATUS":
        await cmdStatus(inv);
        break;
      case "GC":
        await cmdGc(inv);
        break;
    }
    log("info", "done", { ms: Math.round(performance.now() - started) });
    return { stdout, code: 0 };
  } catch (thrown) {
    const err = asCniError(thrown);
    code = err.code;
    log(err.code === ErrorCode.SystemFailure ? "error" : "warn", err.message);
    return { stdout: errorDocument(err, version), code: 1 };
  } finally {
    if (report) reportToAgent(report.socket, { verb: report.verb, code, ms: performance.now() - report.started });
  }
}
