/**
 * Integration tests: the built plugin on real network namespaces, bridges
 * and veths, for every supported CNI version.
 */
import assert from "node:assert/strict";
import {
  addNetns,
  assertCniError,
  assertOk,
  cni,
  delNetns,
  hostPart,
  IP,
  must,
  ping,
  sh,
  snapshot,
  testNet,
  uniq,
} from "./harness.ts";

const VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

function linkExists(name: string): boolean {
  try {
    Deno.statSync(`/sys/class/net/${name}`);
    return true;
  } catch {
    return false;
  }
}

for (const version of VERSIONS) {
  Deno.test(`cniVersion ${version}: two pods get addresses, ping each other and the gateway over IPv4 and IPv6`, async () => {
    const net = testNet({ v6: true });
    const [a, b] = [uniq("tpa"), uniq("tpb")];
    try {
      const [pa, pb] = await addNetns(a, b);
      const conf = net.conf(version);
      const ra = await cni({ command: "ADD", conf, containerId: a, netns: pa });
      assertOk(ra, "ADD a");
      const rb = await cni({ command: "ADD", conf, containerId: b, netns: pb });
      assertOk(rb, "ADD b");

      // Result shape per the spec for this version.
      const res = ra.json;
      assert.equal(res.cniVersion, version);
      assert.equal(res.interfaces.length, 3);
      assert.equal(res.interfaces[0].name, net.bridge);
      assert.ok(!res.interfaces[0].sandbox && !res.interfaces[1].sandbox);
      assert.equal(res.interfaces[2].name, "eth0");
      assert.equal(res.interfaces[2].sandbox, pa);
      for (const i of res.interfaces) assert.match(i.mac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
      assert.equal(res.ips.length, 2);
      for (const ip of res.ips) {
        assert.equal(ip.interface, 2);
        if (version.startsWith("0.")) assert.equal(ip.version, ip.address.includes(":") ? "6" : "4");
        else assert.equal(ip.version, undefined);
      }
      if (version !== "1.1.0") assert.equal(res.interfaces[0].mtu, undefined);
      assert.deepEqual(res.routes.map((r: { dst: string }) => r.dst).sort(), ["0.0.0.0/0", "::/0"]);

      // The pod's MAC in the result is the real one.
      const link = JSON.parse(await must("ip", ["-n", a, "-j", "link", "show", "eth0"]))[0];
      assert.equal(link.address, res.interfaces[2].mac);

      const [b4, b6] = rb.json.ips.map((i: { address: string }) => hostPart(i.address));
      const [g4, g6] = res.ips.map((i: { gateway: string }) => i.gateway);
      assert.ok(await ping(a, b4), `ping ${b4}`);
      assert.ok(await ping(a, b6), `ping ${b6}`);
      assert.ok(await ping(a, g4), `ping gateway ${g4}`);
      assert.ok(await ping(a, g6), `ping gateway ${g6}`);

      if (version !== "0.3.0" && version !== "0.3.1") {
        const check = await cni({ command: "CHECK", conf: { ...conf, prevResult: res }, containerId: a, netns: pa });
        assertOk(check, "CHECK");
        assert.equal(check.stdout, "");
      }
      for (const [id, path] of [[a, pa], [b, pb]]) {
        assertOk(await cni({ command: "DEL", conf: { ...conf, prevResult: res }, containerId: id, netns: path }));
        assertOk(await cni({ command: "DEL", conf, containerId: id, netns: path }), "second DEL");
      }
      const after = await snapshot(net);
      assert.deepEqual(after.links, [net.bridge]);
      assert.deepEqual(after.ipamFiles.filter((f) => !f.includes("last_reserved")), [
        `${net.name}/`,
        `${net.name}/attachments/`,
      ]);
    } finally {
      await delNetns(a, b);
      await net.cleanup();
    }
  });
}

Deno.test("CHECK fails with a specific error after the pod's address, the bridge's gateway or the host veth is removed", async () => {
  const net = testNet({ v6: true });
  const a = uniq("tpc");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0");
    const add = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(add);
    const withPrev = { ...conf, prevResult: add.json };
    assertOk(await cni({ command: "CHECK", conf: withPrev, containerId: a, netns: pa }));

    const v4 = add.json.ips[0].address;
    await must("ip", ["-n", a, "addr", "del", v4, "dev", "eth0"]);
    assertCniError(
      await cni({ command: "CHECK", conf: withPrev, containerId: a, netns: pa }),
      104,
      new RegExp(`address ${v4.replace(/\./g, "\\.")} is missing`),
    );
    await must("ip", ["-n", a, "addr", "add", v4, "dev", "eth0"]);
    await must("ip", ["-n", a, "route", "add", "default", "via", add.json.ips[0].gateway]);
    assertOk(await cni({ command: "CHECK", conf: withPrev, containerId: a, netns: pa }), "CHECK after repair");

    const gw6 = `${add.json.ips[1].gateway}/64`;
    await must("ip", ["addr", "del", gw6, "dev", net.bridge]);
    assertCniError(
      await cni({ command: "CHECK", conf: withPrev, containerId: a, netns: pa }),
      104,
      new RegExp(`gateway ${gw6} is missing from bridge ${net.bridge}`),
    );
    await must("ip", ["addr", "add", gw6, "dev", net.bridge, "nodad"]);
    assertOk(
      await cni({ command: "CHECK", conf: withPrev, containerId: a, netns: pa }),
      "CHECK after the gateway is back",
    );

    await must("ip", ["link", "del", add.json.interfaces[1].name]);
    assertCniError(
      await cni({ command: "CHECK", conf: withPrev, containerId: a, netns: pa }),
      104,
      /host veth .* does not exist/,
    );
    assertOk(await cni({ command: "DEL", conf: withPrev, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("CHECK fails when the reservation is gone, when prevResult is missing, and with a 0.3.1 config", async () => {
  const net = testNet();
  const a = uniq("tpr");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.0.0");
    const add = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(add);
    assertCniError(await cni({ command: "CHECK", conf, containerId: a, netns: pa }), 7, /prevResult/);
    assertCniError(
      await cni({ command: "CHECK", conf: { ...net.conf("0.3.1"), prevResult: add.json }, containerId: a, netns: pa }),
      1,
    );
    await Deno.remove(`${net.dataDir}/${net.name}/${hostPart(add.json.ips[0].address)}`);
    assertCniError(
      await cni({ command: "CHECK", conf: { ...conf, prevResult: add.json }, containerId: a, netns: pa }),
      104,
      /not reserved/,
    );
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("CHECK refuses a prevResult whose ips[].interface names no interface (7) or a host interface (104)", async () => {
  const net = testNet();
  const a = uniq("tci");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0");
    const add = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(add);
    // A second address CHECK would otherwise never look for: it is on no pod interface.
    const extra = (index: number) => ({
      ...add.json,
      ips: [...add.json.ips, { address: "192.0.2.9/24", interface: index }],
    });
    const check = (prevResult: unknown) =>
      cni({ command: "CHECK", conf: { ...conf, prevResult }, containerId: a, netns: pa });
    assertCniError(
      await check(extra(7)),
      7,
      /^prevResult\.ips\[1\]\.interface: 7 names no entry of prevResult\.interfaces \(it has 3\), so prevResult is malformed$/,
    );
    assertCniError(
      await check(extra(1)),
      104,
      new RegExp(`^prevResult\\.ips\\[1\\] puts 192\\.0\\.2\\.9/24 on host interface ${add.json.interfaces[1].name};`),
    );
    assertOk(await check(add.json), "CHECK of the untouched result");
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

/** This process's markers (the node's netns) for the network's bridge and masquerade table. */
function markersOf(net: { bridge: string; name: string }): string[] {
  const ns = Deno.readLinkSync("/proc/self/ns/net").replace(/\D/g, "");
  const mine = [`${ns}-bridge-${net.bridge}`, `${ns}-masq-${net.name}`].flatMap((m) => [m, `${m}.lock`]);
  return [...Deno.readDirSync("/run/pontoon/state")].map((e) => e.name).filter((n) => mine.includes(n)).sort();
}

Deno.test("GC prunes the node markers of its bridge and network once the bridge is gone; DEL leaves them", async () => {
  const net = testNet();
  const a = uniq("tgm");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0", { ipMasq: true });
    const gc = { ...conf, "cni.dev/valid-attachments": [] };
    assertOk(await cni({ command: "ADD", conf, containerId: a, netns: pa }));
    const made = markersOf(net);
    assert.equal(made.length, 4, `bridge and masq markers with their locks: ${made}`);
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
    assertOk(await cni({ command: "GC", conf: gc }));
    assert.deepEqual(markersOf(net), made, "DEL or GC removed the markers of a bridge that still exists");
    await must("ip", ["link", "del", net.bridge]);
    assertOk(await cni({ command: "GC", conf: gc }));
    assert.deepEqual(markersOf(net), [], "GC left the markers of a gone bridge");
    // The next ADD simply does the work again.
    const again = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(again);
    assert.ok(linkExists(net.bridge), "the bridge was not re-created");
    assert.equal(markersOf(net).length, 4);
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("DEL succeeds with CNI_NETNS empty, with a deleted netns, and for a container never added", async () => {
  const net = testNet({ v6: true });
  const [a, b] = [uniq("tpd"), uniq("tpe")];
  try {
    const [pa, pb] = await addNetns(a, b);
    const conf = net.conf("1.1.0");
    const ra = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    const rb = await cni({ command: "ADD", conf, containerId: b, netns: pb });
    assertOk(ra);
    assertOk(rb);
    await delNetns(a, b);
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: "" }), "DEL with empty netns");
    assertOk(await cni({ command: "DEL", conf, containerId: b, netns: pb }), "DEL with deleted netns");
    assertOk(await cni({ command: "DEL", conf, containerId: "never-added", netns: "" }), "DEL never added");
    const after = await snapshot(net);
    assert.deepEqual(after.links, [net.bridge]);
    assert.ok(!after.ipamFiles.some((f) => /\d+\.\d+\.\d+\.\d+$|:/.test(f.split("/").pop()!)), String(after.ipamFiles));
  } finally {
    await delNetns(a, b);
    await net.cleanup();
  }
});

Deno.test("ADD for an attachment that already exists is an error that changes nothing", async () => {
  const net = testNet();
  const a = uniq("tpx");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0");
    assertOk(await cni({ command: "ADD", conf, containerId: a, netns: pa }));
    const before = await snapshot(net);
    assertCniError(await cni({ command: "ADD", conf, containerId: a, netns: pa }), 103, /already attached/);
    // Same pod interface name from another container id: the pod side exists.
    assertCniError(await cni({ command: "ADD", conf, containerId: `${a}-other`, netns: pa }), 103, /already exists/);
    assert.deepEqual(await snapshot(net), before);
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("a fault injected after reservation, after the veth or after pod setup leaves no link and no reservation", async () => {
  const net = testNet({ v6: true });
  const a = uniq("tpf");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0");
    // Create the bridge first so the snapshot compares pod state only.
    assertOk(await cni({ command: "ADD", conf, containerId: "warmup", netns: pa }));
    assertOk(await cni({ command: "DEL", conf, containerId: "warmup", netns: pa }));
    const before = await snapshot(net);
    for (const point of ["after-reserve", "after-veth", "after-pod"]) {
      const out = await cni({
        command: "ADD",
        conf,
        containerId: a,
        netns: pa,
        env: { PONTOON_TEST_FAULT: point },
      });
      assertCniError(out, 102, new RegExp(`injected fault at ${point}`));
      const now = await snapshot(net);
      assert.deepEqual(now.links, before.links, point);
      assert.deepEqual(
        now.ipamFiles.filter((f) => !f.startsWith(`${net.name}/last_reserved`)),
        before.ipamFiles.filter((f) => !f.startsWith(`${net.name}/last_reserved`)),
        point,
      );
      const podLinks = JSON.parse(await must("ip", ["-n", a, "-j", "link", "show"])) as { ifname: string }[];
      assert.deepEqual(podLinks.map((l) => l.ifname), ["lo"], point);
    }
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("50 ADDs in parallel on a node without the bridge all succeed with distinct addresses", async () => {
  // A /22 per test process: other engineers run this suite on the same machine.
  const net = testNet({ subnet: `10.199.${(Deno.pid % 64) * 4}.0/22` });
  const names = Array.from({ length: 50 }, (_, i) => uniq(`tq${i}`));
  try {
    const paths = await addNetns(...names);
    const conf = net.conf("1.1.0", { ipMasq: true });
    assert.ok(!linkExists(net.bridge));
    const results = await Promise.all(
      names.map((n, i) => cni({ command: "ADD", conf, containerId: n, netns: paths[i] })),
    );
    results.forEach((r, i) => assertOk(r, `ADD ${i}`));
    const addresses = results.map((r) => r.json.ips[0].address);
    assert.equal(new Set(addresses).size, 50, "duplicate address handed out");
    assert.ok(await ping(names[0], hostPart(addresses[49])));
    const dels = await Promise.all(
      names.map((n, i) => cni({ command: "DEL", conf, containerId: n, netns: paths[i] })),
    );
    dels.forEach((r, i) => assertOk(r, `DEL ${i}`));
    const after = await snapshot(net);
    assert.deepEqual(after.links, [net.bridge]);
  } finally {
    await delNetns(...names);
    await net.cleanup();
  }
});

Deno.test("GC keeps listed attachments and frees the rest; an empty list frees everything", async () => {
  const net = testNet({ v6: true });
  const names = [uniq("tg1"), uniq("tg2"), uniq("tg3")];
  try {
    const paths = await addNetns(...names);
    const conf = net.conf("1.1.0");
    const adds = [];
    for (let i = 0; i < 3; i++) adds.push(await cni({ command: "ADD", conf, containerId: names[i], netns: paths[i] }));
    adds.forEach((r) => assertOk(r));
    const keep = [{ containerID: names[0], ifname: "eth0" }];
    assertOk(await cni({ command: "GC", conf: { ...conf, "cni.dev/valid-attachments": keep } }), "GC");
    assert.ok(linkExists(adds[0].json.interfaces[1].name), "kept veth removed");
    assert.ok(!linkExists(adds[1].json.interfaces[1].name), "stale veth kept");
    const files = (await snapshot(net)).ipamFiles;
    assert.ok(files.includes(`${net.name}/${hostPart(adds[0].json.ips[0].address)}`));
    assert.ok(!files.includes(`${net.name}/${hostPart(adds[1].json.ips[0].address)}`));
    assert.ok(await ping(names[0], adds[0].json.ips[0].gateway), "kept pod lost connectivity");
    // The legacy key is read too.
    assertOk(await cni({ command: "GC", conf: { ...conf, "cni.dev/attachments": [] } }), "GC empty");
    const after = await snapshot(net);
    assert.deepEqual(after.links, [net.bridge]);
    assert.deepEqual(after.ipamFiles.filter((f) => !f.includes("last_reserved")), [
      `${net.name}/`,
      `${net.name}/attachments/`,
    ]);
    assertCniError(await cni({ command: "GC", conf }), 7, /valid-attachments/);
  } finally {
    await delNetns(...names);
    await net.cleanup();
  }
});

Deno.test("GC on a bridge shared by two networks removes only its own network's ports", async () => {
  const netA = testNet();
  const netB = testNet();
  const [a, b] = [uniq("tga"), uniq("tgb")];
  try {
    const [pa, pb] = await addNetns(a, b);
    const confA = netA.conf("1.1.0");
    const confB = netB.conf("1.1.0", { bridge: netA.bridge });
    const addA = await cni({ command: "ADD", conf: confA, containerId: a, netns: pa });
    const addB = await cni({ command: "ADD", conf: confB, containerId: b, netns: pb });
    assertOk(addA, "ADD a");
    assertOk(addB, "ADD b");
    const vethB = addB.json.interfaces[1].name;
    const [link] = JSON.parse(await must(IP, ["-j", "link", "show", "dev", vethB]));
    assert.equal(link.ifalias, `pontoon:${netB.name}`, "host veth names its network in its alias");

    assertOk(await cni({ command: "GC", conf: { ...confA, "cni.dev/valid-attachments": [] } }), "GC of network A");
    assert.ok(!linkExists(addA.json.interfaces[1].name), "network A's stale veth kept");
    assert.ok(linkExists(vethB), "GC of network A removed network B's pod");
    assert.ok(await ping(b, addB.json.ips[0].gateway), "network B's pod lost connectivity");

    assertOk(await cni({ command: "GC", conf: { ...confB, "cni.dev/valid-attachments": [] } }), "GC of network B");
    assert.ok(!linkExists(vethB), "network B's stale veth kept");
  } finally {
    await delNetns(a, b);
    await netA.cleanup();
    await netB.cleanup();
  }
});

Deno.test("STATUS is 0 when ADD would succeed and 50 when the pool is exhausted", async () => {
  const net = testNet({ subnet: "10.198.7.0/30" });
  const a = uniq("tps");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0");
    const ok = await cni({ command: "STATUS", conf });
    assertOk(ok);
    assert.equal(ok.stdout, "");
    assertOk(await cni({ command: "ADD", conf, containerId: a, netns: pa }));
    // A /30 has one allocatable address besides the gateway.
    assertCniError(await cni({ command: "STATUS", conf }), 50, /exhausted/);
    const b = await cni({ command: "ADD", conf, containerId: `${a}b`, netns: pa, ifname: "eth1" });
    assertCniError(b, 100, new RegExp(`network ${net.name}.*10\\.198\\.7\\.1-10\\.198\\.7\\.2`));
    assertCniError(await cni({ command: "STATUS", conf: net.conf("1.0.0") }), 1);
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
    assertOk(await cni({ command: "STATUS", conf }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("VERSION echoes the config's version and works without a config", async () => {
  const out = await cni({ command: "VERSION", conf: { cniVersion: "0.4.0" } });
  assertOk(out);
  assert.deepEqual(out.json, { cniVersion: "0.4.0", supportedVersions: VERSIONS });
  const bare = await cni({ command: "VERSION", conf: {}, rawStdin: "" });
  assertOk(bare);
  assert.equal(bare.json.cniVersion, "1.1.0");
});

Deno.test("requested addresses from CNI_ARGS, args.cni.ips and runtimeConfig.ips are honoured", async () => {
  const net = testNet();
  const names = [uniq("ti1"), uniq("ti2"), uniq("ti3")];
  try {
    const paths = await addNetns(...names);
    const base = net.conf("1.1.0");
    const subnet = (base.ipam as { ranges: { subnet: string }[][] }).ranges[0][0].subnet;
    const prefix = subnet.split(".").slice(0, 3).join(".");
    const r1 = await cni({
      command: "ADD",
      conf: base,
      containerId: names[0],
      netns: paths[0],
      args: `IP=${prefix}.50`,
    });
    assertOk(r1);
    assert.equal(r1.json.ips[0].address, `${prefix}.50/24`);
    const r2 = await cni({
      command: "ADD",
      conf: { ...base, args: { cni: { ips: [`${prefix}.51`] } } },
      containerId: names[1],
      netns: paths[1],
    });
    assert.equal(r2.json.ips[0].address, `${prefix}.51/24`);
    const r3 = await cni({
      command: "ADD",
      conf: { ...base, runtimeConfig: { ips: [`${prefix}.52/24`], mac: "02:11:22:33:44:55" } },
      containerId: names[2],
      netns: paths[2],
    });
    assert.equal(r3.json.ips[0].address, `${prefix}.52/24`);
    assert.equal(r3.json.interfaces[2].mac, "02:11:22:33:44:55");
    for (let i = 0; i < 3; i++) {
      assertOk(await cni({ command: "DEL", conf: base, containerId: names[i], netns: paths[i] }));
    }
  } finally {
    await delNetns(...names);
    await net.cleanup();
  }
});

Deno.test("ipMasq installs one table per network that names no pod, and pod traffic leaving the subnet is masqueraded", async () => {
  const net = testNet();
  const a = uniq("tpm");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0", { ipMasq: true });
    const add = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(add);
    const table = await must("nft", ["list", "table", "inet", `pontoon-${net.name}`]);
    assert.match(table, /masquerade/);
    assert.ok(!table.includes(hostPart(add.json.ips[0].address) + " "), "rule names the pod");
    assertOk(await cni({ command: "CHECK", conf: { ...conf, prevResult: add.json }, containerId: a, netns: pa }));
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: "" }));
    const after = await sh("nft", ["list", "table", "inet", `pontoon-${net.name}`]);
    assert.ok(!after.stdout.includes(hostPart(add.json.ips[0].address) + " "));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("host-local works as a delegated IPAM plugin from CNI_PATH", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "pontoon-hl-" });
  const net = testNet({ ipam: { type: "host-local", ranges: [[{ subnet: "10.197.3.0/24" }]], dataDir } });
  const a = uniq("tph");
  try {
    const [pa] = await addNetns(a);
    // Debian's host-local speaks up to 1.0.0.
    const conf = net.conf("1.0.0");
    const add = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(add);
    assert.equal(add.json.ips[0].address, "10.197.3.2/24");
    assert.equal(add.json.ips[0].interface, 2);
    assertOk(await cni({ command: "CHECK", conf: { ...conf, prevResult: add.json }, containerId: a, netns: pa }));
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
    const left = [...Deno.readDirSync(`${dataDir}/${net.name}`)].map((e) => e.name);
    assert.ok(!left.includes("10.197.3.2"), `host-local kept the address: ${left}`);
  } finally {
    await delNetns(a);
    await net.cleanup();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("STATUS under an agent is 50 until the agent has synced on this boot, then stays 0 while it restarts", async () => {
  const net = testNet();
  const socket = `/tmp/pontoon-agent-${uniq("s")}.sock`;
  let ready = false;
  const server = Deno.serve(
    { path: socket, transport: "unix", onListen() {} },
    () =>
      ready ? new Response("ok") : new Response(JSON.stringify({ reason: "routes not reconciled" }), { status: 503 }),
  );
  try {
    const conf = net.conf("1.1.0", { agentSocket: socket });
    assertCniError(await cni({ command: "STATUS", conf }), 50, /not ready: .*routes not reconciled/);
    ready = true;
    assertOk(await cni({ command: "STATUS", conf }));
    assertCniError(
      await cni({ command: "STATUS", conf: { ...conf, agentSocket: "/tmp/pontoon-no-such.sock" } }),
      50,
      /not reachable/,
    );
    // An agent that synced on this boot leaves <socket>.synced with the boot id:
    // while it restarts (down, or re-syncing) STATUS stays 0.
    ready = false;
    const bootId = Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
    Deno.writeTextFileSync(`${socket}.synced`, "00000000-0000-0000-0000-000000000000\n");
    assertCniError(await cni({ command: "STATUS", conf }), 50, /not ready/);
    Deno.writeTextFileSync(`${socket}.synced`, `${bootId}\n`);
    const restarting = await cni({ command: "STATUS", conf });
    assertOk(restarting, "STATUS while a synced agent re-syncs");
    assert.match(restarting.stderr, /synced earlier on this boot/);
  } finally {
    await server.shutdown();
    await Deno.remove(socket).catch(() => {});
    await Deno.remove(`${socket}.synced`).catch(() => {});
    await net.cleanup();
  }
});

Deno.test("mtu and promiscMode reach the bridge and both veth ends", async () => {
  const net = testNet();
  const a = uniq("tmu");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0", { mtu: 1300, promiscMode: true });
    const ra = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(ra);
    const br = JSON.parse(await must("ip", ["-j", "-d", "link", "show", net.bridge]))[0];
    assert.equal(br.mtu, 1300);
    assert.ok(br.flags.includes("PROMISC") || br.promiscuity > 0, JSON.stringify(br.flags));
    const host = JSON.parse(await must("ip", ["-j", "-d", "link", "show", ra.json.interfaces[1].name]))[0];
    assert.equal(host.mtu, 1300);
    assert.equal(host.linkinfo.info_slave_data.hairpin, false, "hairpin must be off with promiscMode");
    const pod = JSON.parse(await must("ip", ["-n", a, "-j", "link", "show", "eth0"]))[0];
    assert.equal(pod.mtu, 1300);
    assert.equal(ra.json.interfaces[2].mtu, 1300);
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("hairpin is on by default on the pod's bridge port", async () => {
  const net = testNet();
  const a = uniq("thp");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0");
    const ra = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(ra);
    const host = JSON.parse(await must("ip", ["-j", "-d", "link", "show", ra.json.interfaces[1].name]))[0];
    assert.equal(host.linkinfo.info_slave_data.hairpin, true);
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

/** True when this kernel can filter VLANs on a bridge. */
async function kernelFiltersVlans(): Promise<boolean> {
  const name = uniq("tvk");
  const r = await sh("ip", ["link", "add", "name", name, "type", "bridge", "vlan_filtering", "1"]);
  await sh("ip", ["link", "del", name]);
  return r.code === 0;
}

Deno.test("vlan makes the pod port an untagged VLAN member, or fails cleanly where the kernel cannot filter VLANs", async () => {
  const net = testNet();
  const [a, b] = [uniq("tva"), uniq("tvb")];
  try {
    const [pa, pb] = await addNetns(a, b);
    const conf = net.conf("1.1.0", { vlan: 100 });
    if (!(await kernelFiltersVlans())) {
      const out = await cni({ command: "ADD", conf, containerId: a, netns: pa });
      assertCniError(out, 102, /^vlan: this kernel cannot filter VLANs/);
      const after = await snapshot(net);
      assert.deepEqual(after.links, []);
      assert.ok(!after.ipamFiles.some((f) => /\d+\.\d+\.\d+\.\d+$/.test(f)), "reservation left behind");
      return;
    }
    const ra = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(ra);
    const rb = await cni({ command: "ADD", conf, containerId: b, netns: pb });
    assertOk(rb);
    const vlans = JSON.parse(await must("bridge", ["-j", "vlan", "show", "dev", ra.json.interfaces[1].name]));
    const entry = vlans[0].vlans.find((v: { vlan: number }) => v.vlan === 100);
    assert.ok(entry?.flags?.includes("PVID") && entry.flags.includes("Egress Untagged"), JSON.stringify(vlans));
    assert.ok(!vlans[0].vlans.some((v: { vlan: number }) => v.vlan === 1), "default VLAN 1 still on the port");
    assert.ok(await ping(a, hostPart(rb.json.ips[0].address)), "pods on the VLAN cannot reach each other");
    assert.ok(await ping(a, ra.json.ips[0].gateway), "gateway not reachable on the VLAN");
    for (const [id, p] of [[a, pa], [b, pb]]) assertOk(await cni({ command: "DEL", conf, containerId: id, netns: p }));
  } finally {
    await delNetns(a, b);
    await net.cleanup();
  }
});

Deno.test("vlan on a bridge that existed without VLAN filtering turns filtering on, or fails and leaves the bridge alone", async () => {
  const net = testNet();
  const a = uniq("tvx");
  try {
    const [pa] = await addNetns(a);
    await must("ip", ["link", "add", "name", net.bridge, "type", "bridge"]);
    const conf = net.conf("1.1.0", { vlan: 100 });
    const bridgeState = async () => {
      const [l] = JSON.parse(await must("ip", ["-j", "-d", "link", "show", net.bridge]));
      return { flags: l.flags, filtering: l.linkinfo.info_data.vlan_filtering };
    };
    const before = { ...(await snapshot(net)), bridge: await bridgeState() };
    const out = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    if (!(await kernelFiltersVlans())) {
      assertCniError(
        out,
        102,
        new RegExp(`^vlan: bridge ${net.bridge} has vlan_filtering off and this kernel cannot filter VLANs`),
      );
      const after = { ...(await snapshot(net)), bridge: await bridgeState() };
      assert.deepEqual(after.links, before.links);
      assert.deepEqual(after.addresses, before.addresses);
      assert.deepEqual(after.bridge, before.bridge);
      assert.ok(!after.ipamFiles.some((f) => /\d+\.\d+\.\d+\.\d+$/.test(f)), "reservation left behind");
      return;
    }
    assertOk(out);
    assert.equal((await bridgeState()).filtering, 1, "vlan_filtering still off on the existing bridge");
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("logs go to stderr and the log file, never stdout: ADD prints one result document, other verbs nothing", async () => {
  const net = testNet();
  const a = uniq("tlg");
  const logFile = `${net.dataDir}/pontoon.log`;
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0", { logLevel: "debug", logFile });
    const add = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(add);
    assert.equal(add.stdout, JSON.stringify(add.json) + "\n", "ADD printed more than its result");
    const outputs = [
      await cni({ command: "CHECK", conf: { ...conf, prevResult: add.json }, containerId: a, netns: pa }),
      await cni({ command: "STATUS", conf }),
      await cni({
        command: "GC",
        conf: { ...conf, "cni.dev/valid-attachments": [{ containerID: a, ifname: "eth0" }] },
      }),
      await cni({ command: "DEL", conf, containerId: a, netns: pa }),
    ];
    for (const out of [add, ...outputs]) {
      assertOk(out);
      const lines = out.stderr.trim().split("\n");
      assert.ok(lines.length > 0 && lines.every((l) => typeof JSON.parse(l).level === "string"), out.stderr);
    }
    for (const out of outputs) assert.equal(out.stdout, "");
    const logged = (await Deno.readTextFile(logFile)).trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual([...new Set(logged.map((l) => l.command))].sort(), ["ADD", "CHECK", "DEL", "GC", "STATUS"]);
    // An error is a JSON document on stdout, and the log on stderr says the same.
    const bad = await cni({ command: "ADD", conf: { ...conf, mtu: 1 }, containerId: a, netns: pa });
    assertCniError(bad, 7, /^mtu:/);
    assert.equal(bad.stdout, JSON.stringify(bad.json) + "\n");
    assert.match(bad.stderr, /mtu: 1 is outside/);
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("ADD passes a chained prevResult through in the config's version; DEL ignores a mangled prevResult", async () => {
  const net = testNet();
  const a = uniq("tpr");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("0.4.0");
    const prevResult = {
      cniVersion: "0.4.0",
      interfaces: [{ name: "lo", sandbox: pa }],
      ips: [{ version: "4", address: "127.0.0.1/8", interface: 0 }],
      dns: { nameservers: ["10.96.0.10"] },
    };
    const add = await cni({ command: "ADD", conf: { ...conf, prevResult }, containerId: a, netns: pa });
    assertOk(add);
    assert.equal(add.json.cniVersion, "0.4.0");
    assert.deepEqual(add.json.interfaces.map((i: { name: string }) => i.name), [
      "lo",
      net.bridge,
      add.json.interfaces[2].name,
      "eth0",
    ]);
    assert.deepEqual(add.json.ips.map((i: { interface: number; version: string }) => [i.interface, i.version]), [[
      0,
      "4",
    ], [3, "4"]]);
    assert.deepEqual(add.json.dns, { nameservers: ["10.96.0.10"] });
    assertOk(
      await cni({ command: "CHECK", conf: { ...conf, prevResult: add.json }, containerId: a, netns: pa }),
      "CHECK",
    );
    const mangled = { cniVersion: "0.4.0", ips: [{ version: "4", address: "garbage" }], routes: "nope" };
    assertOk(await cni({ command: "DEL", conf: { ...conf, prevResult: mangled }, containerId: a, netns: pa }), "DEL");
    const after = await snapshot(net);
    assert.deepEqual(after.links, [net.bridge]);
    assert.ok(!after.ipamFiles.some((f) => /\d+\.\d+\.\d+\.\d+$/.test(f)), String(after.ipamFiles));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});
