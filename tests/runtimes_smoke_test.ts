/**
 * Proves each fixture in runtimes.ts against the reference plugins in
 * /usr/lib/cni (bridge + host-local, chained portmap/bandwidth/tuning). The
 * same helpers later run Pontoon: only the bin dir and conflist change.
 *
 * Run: deno test -A tests/runtimes_smoke_test.ts (as root).
 */
import assert from "node:assert/strict";
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
  hostLocalAllocations,
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

/** Registers a test that is skipped (with a message) when binaries are absent. */
function smokeTest(
  name: string,
  bins: string[],
  fn: () => Promise<void>,
): void {
  const missing = missingBinaries(bins);
  const plugins = ["bridge", "host-local", "portmap", "bandwidth", "tuning"]
    .filter((p) => !exists(`${REFERENCE_PLUGINS}/${p}`));
  const absent = [...missing, ...plugins.map((p) => `${REFERENCE_PLUGINS}/${p}`)];
  if (absent.length > 0) {
    console.warn(`SKIP ${name}: missing ${absent.join(", ")}`);
  }
  Deno.test({
    name,
    ignore: absent.length > 0,
    fn,
  });
}

/** A unique reference-plugin network: temp dir, name, bridge, free subnet, and the dirs under the temp dir. */
async function smokeNet(namePrefix: string) {
  const tmp = await makeTempDir();
  return {
    tmp,
    net: uniqueName(namePrefix, 20),
    bridge: uniqueName("ptb"),
    ...(await freeSubnet()),
    dataDir: `${tmp}/ipam`,
    confDir: `${tmp}/conf`,
    cacheDir: `${tmp}/cache`,
    binDir: await makeCniBinDir(`${tmp}/bin`),
  };
}

/** A bridge + host-local conflist on a private bridge and IPAM data dir. */
function bridgeConflist(
  o: {
    name: string;
    bridge: string;
    subnet: string;
    dataDir: string;
    cniVersion?: string;
    chain?: Record<string, unknown>[];
  },
): { name: string } & Record<string, unknown> {
  return {
    cniVersion: o.cniVersion ?? "1.0.0",
    name: o.name,
    plugins: [
      {
        type: "bridge",
        bridge: o.bridge,
        isGateway: true,
        ipMasq: false,
        hairpinMode: true,
        ipam: {
          type: "host-local",
          ranges: [[{ subnet: o.subnet }]],
          routes: [{ dst: "0.0.0.0/0" }],
          dataDir: o.dataDir,
        },
      },
      ...(o.chain ?? []),
    ],
  };
}

function lastJsonLine(stderr: string): { code?: number; msg?: string } {
  const line = stderr.trim().split("\n").at(-1) ?? "";
  try {
    return JSON.parse(line);
  } catch {
    return {};
  }
}

function ok(r: CmdResult, what: string): CmdResult {
  assert.equal(r.code, 0, `${what} failed (${r.code}):\n${r.stderr}`);
  return r;
}

function inSubnet(ip: string, prefix: string): boolean {
  return ip.startsWith(`${prefix}.`);
}

async function waitFor(
  what: string,
  cond: () => Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---------------------------------------------------------------------------

smokeTest(
  "cnitool: add/check/del through bridge + portmap + bandwidth + tuning",
  ["go", "ip", "iptables", "tc", "busybox"],
  async () => {
    const bin = await buildCnitool();
    const { tmp, net, bridge, subnet, gateway, prefix, dataDir, confDir, cacheDir, binDir } = await smokeNet(
      "ptsmoke-",
    );
    let ns: Netns | undefined;
    let ifb: string | undefined;
    const hostPort = freePort();
    const capArgs = {
      portMappings: [{ hostPort, containerPort: 8080, protocol: "tcp" }],
      bandwidth: {
        ingressRate: 50_000_000,
        ingressBurst: 1_000_000,
        egressRate: 50_000_000,
        egressBurst: 1_000_000,
      },
    };
    try {
      await writeConflist(
        confDir,
        bridgeConflist({
          name: net,
          bridge,
          subnet,
          dataDir,
          chain: [
            { type: "portmap", capabilities: { portMappings: true } },
            { type: "bandwidth", capabilities: { bandwidth: true } },
            {
              type: "tuning",
              sysctl: { "net.ipv4.conf.eth0.arp_notify": "1" },
            },
          ],
        }),
      );
      ns = await createNetns();
      const base = {
        bin,
        net,
        netnsPath: ns.path,
        confDir,
        cniPath: binDir,
        cacheDir,
      };

      // ADD
      const add = ok(
        await runCnitool({ ...base, verb: "add", capArgs }),
        "cnitool add",
      );
      const result = JSON.parse(add.stdout);
      assert.equal(result.cniVersion, "1.0.0");
      const ip = result.ips[0].address.split("/")[0];
      assert.ok(inSubnet(ip, prefix), `${ip} not in ${subnet}`);
      assert.equal(result.ips[0].gateway, gateway);
      const names = result.interfaces.map((i: { name: string }) => i.name);
      assert.ok(names.includes(bridge), `bridge missing: ${names}`);
      ifb = names.find((n: string) => n.startsWith("bwp"));
      assert.ok(ifb, `bandwidth ifb missing from result: ${names}`);
      const hostVeth = result.interfaces[1].name;
      assert.equal(
        result.interfaces[result.ips[0].interface].sandbox,
        ns.path,
      );
      assert.deepEqual(await hostLocalAllocations(dataDir, net), [ip]);

      // tuning applied its sysctl inside the netns
      const sysctl = await ns.exec([
        "cat",
        "/proc/sys/net/ipv4/conf/eth0/arp_notify",
      ]);
      assert.equal(sysctl.stdout.trim(), "1");
      // bandwidth: tbf on the host veth (ingress) and on the ifb (egress)
      const tc = await run(["tc", "qdisc", "show", "dev", hostVeth]);
      assert.match(tc.stdout, /tbf/);
      assert.ok(await linkExists(ifb!));

      // portmap: hostPort on 127.0.0.1 (needs route_localnet, which portmap
      // sets on the bridge) and on the gateway address reaches the netns
      const www = `${tmp}/www`;
      await Deno.mkdir(www);
      const token = uniqueName("token-", 30);
      await Deno.writeTextFile(`${www}/index.html`, token);
      ns.spawn(["busybox", "httpd", "-f", "-p", "8080", "-h", www]);
      const localnet = await Deno.readTextFile(
        `/proc/sys/net/ipv4/conf/${bridge}/route_localnet`,
      );
      assert.equal(localnet.trim(), "1");
      // (busybox 1.35 wget segfaults with -T; the timeout is ours instead)
      for (const host of ["127.0.0.1", gateway]) {
        let got: CmdResult | undefined;
        await waitFor(`httpd via ${host}:${hostPort}`, async () => {
          got = await run([
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            `http://${host}:${hostPort}/index.html`,
          ], { timeoutMs: 5_000 });
          return got.code === 0;
        });
        assert.equal(got!.stdout, token);
      }

      // CHECK. Reference portmap 1.1.1 CHECK wrongly looks for its IPv4 rules
      // in ip6tables (containernetworking/plugins#819, fixed in 1.2.0), so
      // the full CHECK may fail there; a CHECK with runtimeConfig lacking
      // portMappings exercises bridge/host-local/bandwidth/tuning CHECK.
      const fullCheck = await runCnitool({ ...base, verb: "check" });
      if (fullCheck.code !== 0) {
        console.log("note: reference portmap CHECK failed (plugins#819)");
        assert.match(fullCheck.stderr, /could not check ipv6 dnat/);
        assert.equal(lastJsonLine(fullCheck.stderr).code, 999);
      }
      ok(
        await runCnitool({
          ...base,
          verb: "check",
          capArgs: { bandwidth: capArgs.bandwidth },
        }),
        "cnitool check (no portMappings)",
      );

      // DEL, with CAP_ARGS taken from libcni's cache; twice (idempotent)
      ok(await runCnitool({ ...base, verb: "del" }), "cnitool del");
      assert.deepEqual(await hostLocalAllocations(dataDir, net), []);
      assert.equal(await cleanupPortmap(net), 0, "portmap DEL left rules");
      assert.ok(!(await linkExists(hostVeth)), "host veth left");
      assert.ok(!(await linkExists(ifb!)), "ifb left");
      assert.notEqual((await ns.exec(["ip", "link", "show", "eth0"])).code, 0);
      assert.deepEqual([...Deno.readDirSync(`${cacheDir}/results`)], []);
      ok(await runCnitool({ ...base, verb: "del" }), "second cnitool del");
    } finally {
      if (ns) {
        await runCnitool({
          bin,
          verb: "del",
          net,
          netnsPath: ns.path,
          confDir,
          cniPath: binDir,
          cacheDir,
        });
        await ns.delete();
      }
      await cleanupPortmap(net);
      if (ifb) await deleteLink(ifb);
      await deleteLink(bridge);
      await removeDir(tmp);
    }
  },
);

smokeTest(
  "cnitool: gc DELs cached attachments not in the valid list",
  ["go", "ip", "iptables"],
  async () => {
    const bin = await buildCnitool();
    const { tmp, net, bridge, subnet, dataDir, confDir, cacheDir, binDir } = await smokeNet("ptgc-");
    const namespaces: Netns[] = [];
    try {
      await writeConflist(
        confDir,
        bridgeConflist({
          name: net,
          bridge,
          subnet,
          dataDir,
          chain: [{ type: "portmap", capabilities: { portMappings: true } }],
        }),
      );
      const base = { bin, net, confDir, cniPath: binDir, cacheDir };
      const ips: Record<string, string> = {};
      const [idA, idB] = [`${net}-a`, `${net}-b`];
      for (const id of [idA, idB]) {
        const ns = await createNetns();
        namespaces.push(ns);
        const r = ok(
          await runCnitool({
            ...base,
            verb: "add",
            netnsPath: ns.path,
            containerId: id,
            capArgs: {
              portMappings: [{
                hostPort: freePort(),
                containerPort: 80,
                protocol: "tcp",
              }],
            },
          }),
          `add ${id}`,
        );
        ips[id] = JSON.parse(r.stdout).ips[0].address.split("/")[0];
      }
      assert.deepEqual(
        await hostLocalAllocations(dataDir, net),
        Object.values(ips).sort(),
      );
      // spec 1.0.0 list: STATUS is not sent (libcni 1.2 semantics) → exit 0
      ok(
        await runCnitool({ ...base, verb: "status", netnsPath: "" }),
        "status",
      );
      // keep B: only A is DELeted (with its cached portMappings)
      ok(
        await runCnitool({
          ...base,
          verb: "gc",
          netnsPath: "",
          validAttachments: [{ containerID: idB, ifname: "eth0" }],
        }),
        "gc keeping B",
      );
      assert.deepEqual(await hostLocalAllocations(dataDir, net), [ips[idB]]);
      const rules = await run(["iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"]);
      assert.doesNotMatch(rules.stdout, new RegExp(`id: \\\\"${idA}\\\\"`));
      assert.match(rules.stdout, new RegExp(`id: \\\\"${idB}\\\\"`));
      // empty valid list: everything goes
      ok(
        await runCnitool({ ...base, verb: "gc", netnsPath: "" }),
        "gc all",
      );
      assert.deepEqual(await hostLocalAllocations(dataDir, net), []);
      assert.equal(await cleanupPortmap(net), 0, "gc left portmap rules");
    } finally {
      for (const ns of namespaces) await ns.delete();
      await cleanupPortmap(net);
      await deleteLink(bridge);
      await removeDir(tmp);
    }
  },
);

smokeTest(
  "cnitool: GC and STATUS verbs for a spec 1.1.0 conflist reach every plugin",
  ["go", "sh"],
  async () => {
    // The reference plugins (1.1.1) predate spec 1.1.0, so a recording fake
    // plugin checks what cnitool sends for GC/STATUS.
    const bin = await buildCnitool();
    const tmp = await makeTempDir();
    const binDir = `${tmp}/bin`;
    const confDir = `${tmp}/conf`;
    const log = `${tmp}/calls.log`;
    try {
      await Deno.mkdir(binDir);
      await Deno.writeTextFile(
        `${binDir}/ptrecord`,
        `#!/bin/sh
in=$(cat)
printf '%s %s\\n' "$CNI_COMMAND" "$in" >> ${log}
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}' ;;
STATUS) if [ -e ${tmp}/not-ready ]; then
  echo '{"cniVersion":"1.1.0","code":50,"msg":"not ready"}'; exit 1; fi ;;
esac
exit 0
`,
        { mode: 0o755 },
      );
      await writeConflist(confDir, {
        cniVersion: "1.1.0",
        name: "ptrec",
        plugins: [{ type: "ptrecord", n: 1 }, { type: "ptrecord", n: 2 }],
      });
      const base = {
        bin,
        net: "ptrec",
        netnsPath: "",
        confDir,
        cniPath: binDir,
        cacheDir: `${tmp}/cache`,
      };
      const calls = async () => {
        const text = await Deno.readTextFile(log).catch(() => "");
        await Deno.remove(log).catch(() => {});
        return text.trim().split("\n").filter(Boolean).map((l) => {
          const i = l.indexOf(" ");
          return { cmd: l.slice(0, i), conf: JSON.parse(l.slice(i + 1)) };
        });
      };

      ok(await runCnitool({ ...base, verb: "status" }), "status");
      let c = await calls();
      assert.deepEqual(c.map((x) => [x.cmd, x.conf.n]), [
        ["STATUS", 1],
        ["STATUS", 2],
      ]);
      assert.equal(c[0].conf.cniVersion, "1.1.0");
      assert.equal(c[0].conf.name, "ptrec");

      await Deno.writeTextFile(`${tmp}/not-ready`, "");
      const st = await runCnitool({ ...base, verb: "status" });
      assert.equal(st.code, 1);
      assert.equal(lastJsonLine(st.stderr).code, 50);
      assert.equal((await calls()).length, 1, "STATUS stops at first error");

      const valid = [{ containerID: "c1", ifname: "eth0" }];
      ok(
        await runCnitool({ ...base, verb: "gc", validAttachments: valid }),
        "gc",
      );
      c = await calls();
      assert.deepEqual(c.map((x) => [x.cmd, x.conf.n]), [["GC", 1], ["GC", 2]]);
      assert.deepEqual(c[0].conf["cni.dev/valid-attachments"], valid);
      assert.deepEqual(c[0].conf["cni.dev/attachments"], valid);
    } finally {
      await removeDir(tmp);
    }
  },
);

smokeTest(
  "podman: two busybox containers on a CNI network ping each other; rm releases IPs",
  ["podman", "runc", "conmon", "ip", "tar", "busybox"],
  async () => {
    const { tmp, net, bridge, subnet, prefix, dataDir, confDir, binDir } = await smokeNet("ptpod-");
    let env: PodmanEnv | undefined;
    try {
      env = await podmanEnv(tmp, {
        cniConfDir: confDir,
        cniPluginDirs: [binDir],
      });
      await writeConflist(
        confDir,
        bridgeConflist({ name: net, bridge, subnet, dataDir }),
      );
      const image = await podmanImportBusybox(env);
      const nets = ok(await podman(env, "network", "ls", "--format", "{{.Name}}"), "network ls");
      assert.ok(nets.stdout.split("\n").includes(net), nets.stdout);

      const ips: string[] = [];
      for (const name of ["a", "b"]) {
        ok(
          await podman(
            env,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net,
            "--cap-add",
            "NET_RAW",
            image,
            "sleep",
            "600",
          ),
          `podman run ${name}`,
        );
        const ipr = ok(
          await podman(
            env,
            "inspect",
            "-f",
            `{{(index .NetworkSettings.Networks "${net}").IPAddress}}`,
            name,
          ),
          "inspect",
        );
        const ip = ipr.stdout.trim();
        assert.ok(inSubnet(ip, prefix), `${ip} not in ${subnet}`);
        ips.push(ip);
      }
      assert.deepEqual(await hostLocalAllocations(dataDir, net), [...ips].sort());
      ok(await podman(env, "exec", "a", "ping", "-c", "1", "-W", "5", ips[1]), "a→b ping");
      ok(await podman(env, "exec", "b", "ping", "-c", "1", "-W", "5", ips[0]), "b→a ping");

      ok(await podman(env, "rm", "-f", "-t", "0", "a", "b"), "podman rm");
      assert.deepEqual(await hostLocalAllocations(dataDir, net), []);
      const left = await run(["ip", "-o", "link", "show", "master", bridge]);
      assert.equal(left.stdout.trim(), "", "veths left on the bridge");
    } finally {
      if (env) await podmanCleanup(env);
      await deleteLink(bridge);
      await removeDir(tmp);
    }
  },
);

smokeTest(
  "containerd: ctr run --rm --cni gets an address and DEL releases it",
  [
    "containerd",
    "ctr",
    "runc",
    "containerd-shim-runc-v2",
    "unshare",
    "mount",
    "tar",
    "ip",
    "busybox",
  ],
  async () => {
    const { tmp, net, bridge, subnet, prefix, dataDir, confDir, binDir } = await smokeNet("ptctr-");
    let cd: Containerd | undefined;
    let child: Deno.ChildProcess | undefined;
    try {
      cd = await startContainerd(tmp);
      await writeConflist(
        confDir,
        bridgeConflist({ name: net, bridge, subnet, dataDir }),
      );
      const image = await containerdImportBusybox(cd);
      child = spawnCtrRunCni(cd, {
        image,
        confDir,
        binDir,
        cmd: ["sh", "-c", "ip -4 -o addr show dev eth0; read x; echo bye"],
      });
      const stderrText = new Response(child.stderr).text();
      const reader = child.stdout.pipeThrough(new TextDecoderStream())
        .getReader();
      let out = "";
      const deadline = Date.now() + 60_000;
      while (!/inet (\S+)\//.test(out)) {
        const chunk = await Promise.race([
          reader.read(),
          new Promise<never>((_, rej) =>
            setTimeout(
              () => rej(new Error(`no address; stdout so far: ${out}`)),
              Math.max(0, deadline - Date.now()),
            )
          ),
        ]);
        if (chunk.done) {
          throw new Error(
            `ctr exited early: ${out}\n${await stderrText}`,
          );
        }
        out += chunk.value;
      }
      const ip = out.match(/inet (\S+)\//)![1];
      assert.ok(inSubnet(ip, prefix), `${ip} not in ${subnet}`);
      assert.deepEqual(await hostLocalAllocations(dataDir, net), [ip]);

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
      // DEL (CNI_NETNS="") ran before ctr returned
      assert.deepEqual(await hostLocalAllocations(dataDir, net), []);
    } finally {
      if (child) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
        await child.status;
      }
      await cd?.stop();
      await deleteLink(bridge);
      await removeDir(tmp);
    }
  },
);
