/**
 * Pontoon under real CNI clients nobody on the team wrote: libcni (through
 * `tests/cnitool`), the reference `portmap`, `bandwidth` and `tuning`
 * plugins chained after Pontoon, podman 4.3 (CNI backend) and containerd 1.6
 * (`ctr run --rm --cni`).
 *
 * `dist/pontoon` is symlinked as `pontoon` into a temp CNI bin dir together
 * with the reference plugins from /usr/lib/cni. Every test uses a unique
 * network, bridge, subnet and IPAM dir and removes all of it in `finally`.
 * (runtimes_smoke_test.ts runs the same fixtures against the reference
 * bridge plugin, so a fixture break shows up there too.)
 */
import assert from "node:assert/strict";
import { cni as callPlugin, PLUGIN, removeMarkers } from "./harness.ts";
import {
  buildCnitool,
  cleanupPortmap,
  type CmdResult,
  type Containerd,
  containerdImportBusybox,
  createNetns,
  deleteLink,
  exists,
  freePort,
  freeSubnet,
  linkExists,
  makeCniBinDir,
  makeTempDir,
  missingBinaries,
  type Netns,
  podman,
  podmanCleanup,
  type PodmanEnv,
  podmanEnv,
  podmanImportBusybox,
  removeDir,
  run,
  runCnitool,
  spawnCtrRunCni,
  startContainerd,
  uniqueName,
  writeConflist,
} from "./runtimes.ts";

const REFERENCE_PLUGINS = "/usr/lib/cni";

/** Registers a test, skipped with a message when a binary or reference plugin is absent. */
function runtimeTest(name: string, bins: string[], fn: () => Promise<void>): void {
  const plugins = ["portmap", "bandwidth", "tuning", "loopback"].map((p) => `${REFERENCE_PLUGINS}/${p}`);
  const absent = [...missingBinaries(bins), ...plugins.filter((p) => !exists(p))];
  if (absent.length > 0) console.warn(`SKIP ${name}: missing ${absent.join(", ")}`);
  Deno.test({ name, ignore: absent.length > 0, fn });
}

/** A unique Pontoon network: names, subnet, dirs, and the cleanup of all of it. */
interface RuntimeNet {
  tmp: string;
  name: string;
  bridge: string;
  subnet: string;
  gateway: string;
  prefix: string;
  dataDir: string;
  confDir: string;
  cacheDir: string;
  binDir: string;
  /** The Pontoon plugin object of a conflist. */
  plugin(extra?: Record<string, unknown>): Record<string, unknown>;
  cleanup(): Promise<void>;
}

async function runtimeNet(prefix: string): Promise<RuntimeNet> {
  const tmp = await makeTempDir();
  const name = uniqueName(prefix, 20);
  const bridge = uniqueName("ptr");
  const sub = await freeSubnet();
  const dataDir = `${tmp}/ipam`;
  const binDir = await makeCniBinDir(`${tmp}/bin`, { extra: { pontoon: PLUGIN } });
  return {
    tmp,
    name,
    bridge,
    ...sub,
    dataDir,
    confDir: `${tmp}/conf`,
    cacheDir: `${tmp}/cache`,
    binDir,
    plugin: (extra = {}) => ({
      type: "pontoon",
      bridge,
      isDefaultGateway: true,
      ipam: { type: "pontoon-ipam", ranges: [[{ subnet: sub.subnet }]], dataDir },
      ...extra,
    }),
    async cleanup() {
      await cleanupPortmap(name);
      await deleteLink(bridge);
      await run(["nft", "delete", "table", "inet", `pontoon-${name}`]);
      removeMarkers(bridge, name);
      await removeDir(tmp);
    },
  };
}

function readDirNames(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch {
    return [];
  }
}

/** What Pontoon's store holds for a network: address files and attachment index entries. */
function held(net: RuntimeNet): { ips: string[]; attachments: string[] } {
  const dir = `${net.dataDir}/${net.name}`;
  const ips = readDirNames(dir).filter((n) => /^[0-9.]+$|:/.test(n)).sort();
  return { ips, attachments: readDirNames(`${dir}/attachments`).filter((n) => !n.startsWith(".")).sort() };
}

async function bridgePorts(bridge: string): Promise<string[]> {
  const r = await run(["ip", "-j", "link", "show", "master", bridge]);
  if (r.code !== 0 || r.stdout.trim() === "") return [];
  return (JSON.parse(r.stdout) as { ifname: string }[]).map((l) => l.ifname);
}

function ok(r: CmdResult, what: string): CmdResult {
  assert.equal(r.code, 0, `${what} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** The CNI error document cnitool prints as the last line of stderr. */
function cniErrorOf(r: CmdResult): { code?: number; msg?: string; details?: string } {
  try {
    return JSON.parse(r.stderr.trim().split("\n").at(-1) ?? "");
  } catch {
    return {};
  }
}

function hostPart(cidr: string): string {
  return cidr.slice(0, cidr.indexOf("/"));
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function podPing(ns: Netns, address: string): Promise<boolean> {
  return (await ns.exec(["ping", "-c", "1", "-W", "3", address])).code === 0;
}

/** For `finally`: a best-effort cnitool DEL of the pod in `ns` (its result ignored), then the netns itself. */
async function delPodAndNetns(bin: string, net: RuntimeNet, ns: Netns): Promise<void> {
  await runCnitool({
    bin,
    verb: "del",
    net: net.name,
    netnsPath: ns.path,
    confDir: net.confDir,
    cniPath: net.binDir,
    cacheDir: net.cacheDir,
  });
  await ns.delete();
}

// ---------------------------------------------------------------------------

runtimeTest(
  "libcni: add (CAP_ARGS ips and mac), check, del, gc and status drive Pontoon",
  ["go", "ip"],
  async () => {
    const bin = await buildCnitool();
    const net = await runtimeNet("ptlib-");
    const namespaces: Netns[] = [];
    try {
      // libcni 1.1.2 speaks up to 1.0.0 for add/check/del; cnitool takes
      // 1.1.0 from cniVersions for gc and status, as libcni 1.2 would.
      await writeConflist(net.confDir, {
        cniVersion: "1.0.0",
        cniVersions: ["1.0.0", "1.1.0"],
        name: net.name,
        plugins: [net.plugin({ capabilities: { ips: true, mac: true } })],
      });
      const [a, b, c] = [await createNetns("ptla"), await createNetns("ptlb"), await createNetns("ptlc")];
      namespaces.push(a, b, c);
      const base = { bin, net: net.name, confDir: net.confDir, cniPath: net.binDir, cacheDir: net.cacheDir };
      const ids = { a: `${net.name}-a`, b: `${net.name}-b`, c: `${net.name}-c` };

      // ADD with the `ips` and `mac` capabilities: libcni turns CAP_ARGS into runtimeConfig.
      const wantIp = `${net.prefix}.77`;
      const wantMac = "02:42:ac:11:00:77";
      const addA = ok(
        await runCnitool({
          ...base,
          verb: "add",
          netnsPath: a.path,
          containerId: ids.a,
          capArgs: { ips: [`${wantIp}/24`], mac: wantMac },
        }),
        "add a",
      );
      const ra = JSON.parse(addA.stdout);
      assert.equal(ra.cniVersion, "1.0.0");
      assert.equal(ra.ips[0].address, `${wantIp}/24`);
      assert.equal(ra.ips[0].gateway, net.gateway);
      assert.equal(ra.interfaces[ra.ips[0].interface].name, "eth0");
      assert.equal(ra.interfaces[ra.ips[0].interface].sandbox, a.path);
      assert.equal(ra.interfaces[ra.ips[0].interface].mac, wantMac);
      const linkA = JSON.parse((await a.exec(["ip", "-j", "link", "show", "eth0"])).stdout)[0];
      assert.equal(linkA.address, wantMac);

      // ADD with Kubernetes-style CNI_ARGS and no capability args: the next free address.
      const addB = ok(
        await runCnitool({
          ...base,
          verb: "add",
          netnsPath: b.path,
          containerId: ids.b,
          cniArgs: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=b;K8S_POD_INFRA_CONTAINER_ID=${ids.b}`,
        }),
        "add b",
      );
      const ipB = hostPart(JSON.parse(addB.stdout).ips[0].address);
      assert.notEqual(ipB, wantIp);
      assert.deepEqual(held(net).ips, [wantIp, ipB].sort());
      assert.ok(await podPing(a, ipB), `a cannot ping b at ${ipB}`);

      // CHECK with the prevResult libcni cached; then a broken pod is reported by code.
      ok(await runCnitool({ ...base, verb: "check", netnsPath: a.path, containerId: ids.a }), "check a");
      ok(await runCnitool({ ...base, verb: "check", netnsPath: b.path, containerId: ids.b }), "check b");
      await a.exec(["ip", "addr", "del", `${wantIp}/24`, "dev", "eth0"]);
      const broken = await runCnitool({ ...base, verb: "check", netnsPath: a.path, containerId: ids.a });
      assert.notEqual(broken.code, 0, "check passed with the address removed");
      assert.equal(cniErrorOf(broken).code, 104, broken.stderr);
      assert.match(cniErrorOf(broken).details ?? "", new RegExp(`${wantIp.replaceAll(".", "\\.")}/24 is missing`));

      // DEL (twice) releases A's address and removes its veth.
      const hostA = ra.interfaces[1].name;
      ok(await runCnitool({ ...base, verb: "del", netnsPath: a.path, containerId: ids.a }), "del a");
      ok(await runCnitool({ ...base, verb: "del", netnsPath: a.path, containerId: ids.a }), "second del a");
      assert.ok(!(await linkExists(hostA)), "host veth of a left");
      assert.deepEqual(held(net).ips, [ipB]);

      // STATUS through libcni (1.1.0 list): ready.
      ok(await runCnitool({ ...base, verb: "status", netnsPath: "" }), "status");

      // C is attached behind libcni's back (not in its cache): only Pontoon's GC verb can free it.
      const addC = await callPlugin({
        command: "ADD",
        conf: { cniVersion: "1.1.0", name: net.name, ...net.plugin() },
        containerId: ids.c,
        netns: c.path,
        path: net.binDir,
      });
      assert.equal(addC.code, 0, addC.stdout + addC.stderr);
      const ipC = hostPart(addC.json.ips[0].address);
      ok(
        await runCnitool({
          ...base,
          verb: "gc",
          netnsPath: "",
          validAttachments: [{ containerID: ids.b, ifname: "eth0" }],
        }),
        "gc keeping b",
      );
      assert.deepEqual(held(net).ips, [ipB], `gc kept ${ipC}`);
      assert.deepEqual(held(net).attachments, [`${ids.b}:eth0`]);
      assert.ok(!(await linkExists(addC.json.interfaces[1].name)), "gc left c's veth");
      assert.ok(await podPing(b, net.gateway), "gc broke the kept pod");

      // An empty valid list: libcni DELs B from its cache, Pontoon's GC has nothing left.
      ok(await runCnitool({ ...base, verb: "gc", netnsPath: "" }), "gc all");
      assert.deepEqual(held(net), { ips: [], attachments: [] });
      assert.deepEqual(await bridgePorts(net.bridge), []);
    } finally {
      for (const ns of namespaces) await delPodAndNetns(bin, net, ns);
      await net.cleanup();
    }
  },
);

runtimeTest(
  "libcni: every config version up to 1.0.0 round-trips Pontoon's result through libcni",
  ["go", "ip"],
  async () => {
    const bin = await buildCnitool();
    const net = await runtimeNet("ptver-");
    let ns: Netns | undefined;
    try {
      ns = await createNetns("ptlv");
      const base = { bin, net: net.name, confDir: net.confDir, cniPath: net.binDir, cacheDir: net.cacheDir };
      for (const version of ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]) {
        await writeConflist(net.confDir, { cniVersion: version, name: net.name, plugins: [net.plugin()] });
        const add = ok(await runCnitool({ ...base, verb: "add", netnsPath: ns.path }), `add ${version}`);
        const result = JSON.parse(add.stdout);
        assert.equal(result.cniVersion, version);
        assert.equal(result.interfaces[result.ips[0].interface].name, "eth0");
        if (version !== "0.3.0" && version !== "0.3.1") {
          ok(await runCnitool({ ...base, verb: "check", netnsPath: ns.path }), `check ${version}`);
        }
        ok(await runCnitool({ ...base, verb: "del", netnsPath: ns.path }), `del ${version}`);
        assert.deepEqual(held(net), { ips: [], attachments: [] }, version);
      }
    } finally {
      if (ns) await delPodAndNetns(bin, net, ns);
      await net.cleanup();
    }
  },
);

runtimeTest(
  "portmap chained after Pontoon: a hostPort reaches a listener inside the pod, and DEL removes its rules",
  ["go", "ip", "iptables", "busybox"],
  async () => {
    const bin = await buildCnitool();
    const net = await runtimeNet("ptpm-");
    let ns: Netns | undefined;
    let httpd: Deno.ChildProcess | undefined;
    const hostPort = freePort();
    try {
      await writeConflist(net.confDir, {
        cniVersion: "1.0.0",
        name: net.name,
        plugins: [
          net.plugin({ ipMasq: true }),
          { type: "portmap", capabilities: { portMappings: true } },
        ],
      });
      ns = await createNetns("ptpm");
      const base = {
        bin,
        net: net.name,
        netnsPath: ns.path,
        confDir: net.confDir,
        cniPath: net.binDir,
        cacheDir: net.cacheDir,
      };
      const add = ok(
        await runCnitool({
          ...base,
          verb: "add",
          capArgs: { portMappings: [{ hostPort, containerPort: 8080, protocol: "tcp" }] },
        }),
        "add",
      );
      const result = JSON.parse(add.stdout);
      const podIp = hostPart(result.ips[0].address);

      const www = `${net.tmp}/www`;
      await Deno.mkdir(www);
      const token = uniqueName("token-", 30);
      await Deno.writeTextFile(`${www}/index.html`, token);
      httpd = ns.spawn(["busybox", "httpd", "-f", "-p", "8080", "-h", www]);
      // Nothing on the host listens on hostPort: only portmap's DNAT to the pod answers.
      for (const host of ["127.0.0.1", net.gateway]) {
        let got: CmdResult | undefined;
        await waitFor(`httpd in the pod via ${host}:${hostPort}`, async () => {
          got = await run(["busybox", "wget", "-q", "-O", "-", `http://${host}:${hostPort}/index.html`], {
            timeoutMs: 5_000,
          });
          return got.code === 0;
        });
        assert.equal(got!.stdout, token);
      }
      // Direct to the pod works too, so the token is the pod's.
      const direct = await run(["busybox", "wget", "-q", "-O", "-", `http://${podIp}:8080/index.html`], {
        timeoutMs: 5_000,
      });
      assert.equal(direct.stdout, token);

      // Reference portmap 1.1.1's CHECK looks for IPv4 rules in ip6tables
      // (containernetworking/plugins#819): accept only that failure, and
      // prove Pontoon's own CHECK in the chain without portMappings.
      const full = await runCnitool({ ...base, verb: "check" });
      if (full.code !== 0) assert.match(full.stderr, /could not check ipv6 dnat/, full.stderr);
      ok(await runCnitool({ ...base, verb: "check", capArgs: {} }), "check without portMappings");

      ok(await runCnitool({ ...base, verb: "del" }), "del");
      assert.equal(await cleanupPortmap(net.name), 0, "portmap DEL left rules");
      assert.deepEqual(held(net), { ips: [], attachments: [] });
      assert.deepEqual(await bridgePorts(net.bridge), []);
      const gone = await run(["busybox", "wget", "-q", "-O", "-", `http://127.0.0.1:${hostPort}/index.html`], {
        timeoutMs: 3_000,
      });
      assert.notEqual(gone.code, 0, "hostPort still answers after DEL");
      ok(await runCnitool({ ...base, verb: "del" }), "second del");
    } finally {
      if (httpd) {
        try {
          httpd.kill("SIGKILL");
        } catch { /* gone */ }
        await httpd.status;
      }
      if (ns) await delPodAndNetns(bin, net, ns);
      await net.cleanup();
    }
  },
);

runtimeTest(
  "bandwidth and tuning chained after Pontoon accept its result: tbf qdiscs, a pod sysctl and a new MAC",
  ["go", "ip", "tc"],
  async () => {
    const bin = await buildCnitool();
    const net = await runtimeNet("ptbw-");
    let ns: Netns | undefined;
    let ifb: string | undefined;
    const tunedMac = "02:54:55:4e:45:44";
    try {
      await writeConflist(net.confDir, {
        cniVersion: "1.0.0",
        name: net.name,
        plugins: [
          net.plugin(),
          { type: "bandwidth", capabilities: { bandwidth: true } },
          { type: "tuning", mac: tunedMac, sysctl: { "net.ipv4.conf.eth0.arp_notify": "1" } },
        ],
      });
      ns = await createNetns("ptbw");
      const base = {
        bin,
        net: net.name,
        netnsPath: ns.path,
        confDir: net.confDir,
        cniPath: net.binDir,
        cacheDir: net.cacheDir,
      };
      const bandwidth = { ingressRate: 8_000_000, ingressBurst: 400_000, egressRate: 16_000_000, egressBurst: 800_000 };
      const add = ok(await runCnitool({ ...base, verb: "add", capArgs: { bandwidth } }), "add");
      const result = JSON.parse(add.stdout);
      const hostVeth = result.interfaces[1].name;
      const names = result.interfaces.map((i: { name: string }) => i.name);
      ifb = names.find((n: string) => n.startsWith("bwp"));
      assert.ok(ifb, `bandwidth added no ifb to Pontoon's result: ${names}`);

      // bandwidth: ingress shaping is a tbf on Pontoon's host veth; egress an ingress
      // qdisc on it redirecting to an ifb that carries its own tbf.
      const onVeth = (await run(["tc", "qdisc", "show", "dev", hostVeth])).stdout;
      assert.match(onVeth, /qdisc tbf .* rate 8Mbit/, onVeth);
      assert.match(onVeth, /qdisc ingress/, onVeth);
      const onIfb = (await run(["tc", "qdisc", "show", "dev", ifb!])).stdout;
      assert.match(onIfb, /qdisc tbf .* rate 16Mbit/, onIfb);

      // tuning: the sysctl inside the pod, and the MAC on the pod's interface and in the result.
      assert.equal((await ns.exec(["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"])).stdout.trim(), "1");
      const link = JSON.parse((await ns.exec(["ip", "-j", "link", "show", "eth0"])).stdout)[0];
      assert.equal(link.address, tunedMac);
      const pod = result.interfaces.find((i: { name: string; sandbox?: string }) => i.name === "eth0" && i.sandbox);
      assert.equal(pod.mac, tunedMac);
      assert.ok(await podPing(ns, net.gateway), "pod cannot reach the gateway after tuning");

      // CHECK across the chain: Pontoon tolerates the MAC tuning changed.
      ok(await runCnitool({ ...base, verb: "check" }), "check");

      ok(await runCnitool({ ...base, verb: "del" }), "del");
      assert.ok(!(await linkExists(ifb!)), "ifb left after DEL");
      assert.ok(!(await linkExists(hostVeth)), "host veth left after DEL");
      assert.deepEqual(held(net), { ips: [], attachments: [] });
    } finally {
      if (ns) await delPodAndNetns(bin, net, ns);
      if (ifb) await deleteLink(ifb);
      await net.cleanup();
    }
  },
);

runtimeTest(
  "podman: two busybox containers on a Pontoon network ping each other; podman rm releases their addresses",
  ["podman", "runc", "conmon", "ip", "tar", "busybox"],
  async () => {
    const net = await runtimeNet("ptpod-");
    let env: PodmanEnv | undefined;
    try {
      env = await podmanEnv(net.tmp, { cniConfDir: net.confDir, cniPluginDirs: [net.binDir] });
      await writeConflist(net.confDir, { cniVersion: "1.0.0", name: net.name, plugins: [net.plugin()] });
      const image = await podmanImportBusybox(env);
      // podman calls VERSION on every plugin while loading networks: a
      // Pontoon that failed it would make the network vanish.
      const nets = ok(await podman(env, "network", "ls", "--format", "{{.Name}}"), "network ls");
      assert.ok(nets.stdout.split("\n").includes(net.name), nets.stdout);

      const ips: string[] = [];
      const [ca, cb] = [uniqueName("pta-", 20), uniqueName("ptb-", 20)];
      for (const name of [ca, cb]) {
        ok(
          await podman(
            env,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net.name,
            "--cap-add",
            "NET_RAW",
            image,
            "sleep",
            "600",
          ),
          `podman run ${name}`,
        );
        const inspect = ok(
          await podman(env, "inspect", "-f", `{{(index .NetworkSettings.Networks "${net.name}").IPAddress}}`, name),
          "inspect",
        );
        const ip = inspect.stdout.trim();
        assert.ok(ip.startsWith(`${net.prefix}.`), `${ip} not in ${net.subnet}`);
        ips.push(ip);
      }
      assert.deepEqual(held(net).ips, [...ips].sort());
      assert.equal(held(net).attachments.length, 2);
      assert.equal((await bridgePorts(net.bridge)).length, 2);
      ok(await podman(env, "exec", ca, "ping", "-c", "1", "-W", "5", ips[1]), "a → b ping");
      ok(await podman(env, "exec", cb, "ping", "-c", "1", "-W", "5", ips[0]), "b → a ping");
      ok(await podman(env, "exec", ca, "ping", "-c", "1", "-W", "5", net.gateway), "a → gateway ping");

      ok(await podman(env, "rm", "-f", "-t", "0", ca, cb), "podman rm");
      assert.deepEqual(held(net), { ips: [], attachments: [] });
      assert.deepEqual(await bridgePorts(net.bridge), [], "veths left on the bridge");
    } finally {
      if (env) await podmanCleanup(env);
      await net.cleanup();
    }
  },
);

runtimeTest(
  "containerd: ctr run --rm --cni gets a Pontoon address, reaches the gateway, and DEL releases it",
  ["containerd", "ctr", "runc", "containerd-shim-runc-v2", "unshare", "mount", "tar", "ip", "busybox"],
  async () => {
    const net = await runtimeNet("ptctr-");
    let cd: Containerd | undefined;
    let child: Deno.ChildProcess | undefined;
    try {
      cd = await startContainerd(net.tmp);
      await writeConflist(net.confDir, { cniVersion: "1.0.0", name: net.name, plugins: [net.plugin()] });
      const image = await containerdImportBusybox(cd);
      child = spawnCtrRunCni(cd, {
        image,
        confDir: net.confDir,
        binDir: net.binDir,
        cmd: [
          "sh",
          "-c",
          `ip -4 -o addr show dev eth0; if ping -c 1 -W 5 ${net.gateway} >/dev/null 2>&1; ` +
          "then echo ping-ok; else echo ping-failed; fi; read x; echo bye",
        ],
      });
      const stderrText = new Response(child.stderr).text();
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let out = "";
      const deadline = Date.now() + 60_000;
      while (!/ping-(ok|failed)/.test(out)) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const chunk = await Promise.race([
          reader.read(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`no address or ping; stdout so far: ${out}`)),
              Math.max(0, deadline - Date.now()),
            );
          }),
        ]).finally(() => clearTimeout(timer));
        if (chunk.done) throw new Error(`ctr exited early: ${out}\n${await stderrText}`);
        out += chunk.value;
      }
      const ip = out.match(/inet (\S+)\//)?.[1];
      assert.ok(ip && ip.startsWith(`${net.prefix}.`), `no Pontoon address in: ${out}`);
      assert.deepEqual(held(net).ips, [ip]);
      assert.equal((await bridgePorts(net.bridge)).length, 1);
      assert.match(out, /ping-ok/, "the container could not ping the gateway");

      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode("\n"));
      await w.close();
      while (true) {
        const chunk = await reader.read();
        if (chunk.done) break;
        out += chunk.value;
      }
      const status = await child.status;
      child = undefined;
      assert.equal(status.code, 0, `ctr run failed: ${await stderrText}`);
      assert.match(out, /bye/);
      // DEL (with CNI_NETNS="") ran before ctr returned.
      assert.deepEqual(held(net), { ips: [], attachments: [] });
      assert.deepEqual(await bridgePorts(net.bridge), []);
    } finally {
      if (child) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
        await child.status;
      }
      await cd?.stop();
      await net.cleanup();
    }
  },
);
