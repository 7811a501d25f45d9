/**
 * Bad input: every invalid env var or config field is rejected with the
 * spec's code and a message naming the field, and the node is left exactly
 * as it was (links, addresses, reservations, nft tables).
 */
import assert from "node:assert/strict";
import {
  addNetns,
  assertCniError,
  assertOk,
  cni,
  type CniCall,
  delNetns,
  must,
  snapshot,
  testNet,
  uniq,
} from "./harness.ts";

interface BadCase {
  name: string;
  code: number;
  pattern: RegExp;
  call: (
    base: { conf: Record<string, unknown>; netns: string; id: string; subnet: string; fifo: string; loop: string },
  ) => Partial<CniCall>;
}

const CASES: BadCase[] = [
  { name: "malformed JSON", code: 6, pattern: /not valid JSON/, call: () => ({ rawStdin: '{"cniVersion": "1.1.0",' }) },
  {
    name: "unknown cniVersion",
    code: 1,
    pattern: /config is "9\.9\.9"/,
    call: ({ conf }) => ({ conf: { ...conf, cniVersion: "9.9.9" } }),
  },
  {
    name: "missing cniVersion",
    code: 1,
    pattern: /cniVersion is missing/,
    call: ({ conf }) => ({ conf: { ...conf, cniVersion: undefined } }),
  },
  {
    name: "missing name",
    code: 7,
    pattern: /^name: is required/,
    call: ({ conf }) => ({ conf: { ...conf, name: undefined } }),
  },
  ...["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"].map((v) => ({
    name: `${v} missing`,
    code: 4,
    pattern: new RegExp(`\\[${v}\\] missing`),
    call: () => ({ env: { [v]: undefined } }),
  })),
  {
    name: "CNI_COMMAND unknown",
    code: 4,
    pattern: /CNI_COMMAND: unknown command "FROB"/,
    call: () => ({ command: "FROB" }),
  },
  {
    name: "CNI_IFNAME of 16 bytes",
    code: 4,
    pattern: /CNI_IFNAME .* 16 bytes/,
    call: () => ({ ifname: "eth0123456789abc" }),
  },
  { name: "CNI_IFNAME ..", code: 4, pattern: /CNI_IFNAME "\.\."/, call: () => ({ ifname: ".." }) },
  { name: "CNI_IFNAME with /", code: 4, pattern: /CNI_IFNAME "a\/b"/, call: () => ({ ifname: "a/b" }) },
  {
    name: "container id ../../etc",
    code: 4,
    pattern: /CNI_CONTAINERID "\.\.\/\.\.\/etc"/,
    call: () => ({ containerId: "../../etc" }),
  },
  {
    name: "CNI_NETNS is a regular file",
    code: 4,
    pattern: /CNI_NETNS .* is not a namespace file/,
    call: () => ({ netns: "/etc/hostname" }),
  },
  {
    name: "CNI_NETNS is a FIFO (must not block the plugin)",
    code: 4,
    pattern: /CNI_NETNS .* is not a namespace file/,
    call: ({ fifo }) => ({ netns: fifo, timeoutMs: 20_000 }),
  },
  {
    name: "CNI_NETNS that cannot be opened names the errno, not its number",
    code: 4,
    pattern: /CNI_NETNS .* cannot be opened: ELOOP \(Too many levels of symbolic links\)$/,
    call: ({ loop }) => ({ netns: loop }),
  },
  {
    name: "logFile is a FIFO (must not block the plugin)",
    code: 7,
    pattern: /^logFile: \S+\/fifo is a FIFO, not a regular file$/,
    call: ({ conf, fifo }) => ({ conf: { ...conf, logLevel: "debug", logFile: fifo }, timeoutMs: 20_000 }),
  },
  {
    name: "logFile is a directory",
    code: 7,
    pattern: /^logFile: \/tmp is a directory, not a regular file$/,
    call: ({ conf }) => ({ conf: { ...conf, logFile: "/tmp" } }),
  },
  {
    name: "CNI_NETNS is relative",
    code: 4,
    pattern: /CNI_NETNS .* must be an absolute path/,
    call: () => ({ netns: "run/netns/x" }),
  },
  {
    name: "CNI_ARGS malformed",
    code: 4,
    pattern: /CNI_ARGS: "a=b=c" is not KEY=VALUE/,
    call: () => ({ args: "IgnoreUnknown=1;a=b=c" }),
  },
  {
    name: "subnet too small",
    code: 7,
    pattern: /ipam.ranges\[0\]\[0\].subnet: network 10\.9\.9\.0\/31 is too small/,
    call: ({ conf }) => ({ conf: withRanges(conf, [[{ subnet: "10.9.9.0/31" }]]) }),
  },
  {
    name: "rangeStart outside its subnet",
    code: 7,
    pattern: /rangeStart: 10\.8\.0\.5 is outside subnet/,
    call: ({ conf, subnet }) => ({ conf: withRanges(conf, [[{ subnet, rangeStart: "10.8.0.5" }]]) }),
  },
  {
    name: "gateway outside its subnet",
    code: 7,
    pattern: /gateway: 10\.8\.0\.1 is outside subnet/,
    call: ({ conf, subnet }) => ({ conf: withRanges(conf, [[{ subnet, gateway: "10.8.0.1" }]]) }),
  },
  {
    name: "overlapping ranges",
    code: 7,
    pattern: /ipam.ranges\[1\]\[0\]: .* overlaps ipam.ranges\[0\]\[0\]/,
    call: ({ conf, subnet }) => ({ conf: withRanges(conf, [[{ subnet }], [{ subnet }]]) }),
  },
  {
    name: "MTU 0",
    code: 7,
    pattern: /^mtu: 0 is outside 68\.\.65535/,
    call: ({ conf }) => ({ conf: { ...conf, mtu: 0 } }),
  },
  {
    name: "MTU 70000",
    code: 7,
    pattern: /^mtu: 70000 is outside/,
    call: ({ conf }) => ({ conf: { ...conf, mtu: 70000 } }),
  },
  {
    name: "MTU below IPv6's 1280 with an IPv6 range",
    code: 7,
    pattern: /^mtu: 1000 is below 1280, the minimum for IPv6 ranges/,
    call: ({ conf, subnet }) => ({
      conf: { ...withRanges(conf, [[{ subnet }], [{ subnet: "fd5e:ffff:1::/64" }]]), mtu: 1000 },
    }),
  },
  {
    name: "the same route twice",
    code: 7,
    pattern: /^ipam.routes\[1\].dst: 10\.99\.0\.0\/16 is already ipam.routes\[0\]/,
    call: ({ conf }) => ({ conf: withRoutes(conf, [{ dst: "10.99.0.0/16" }, { dst: "10.99.0.0/16" }]) }),
  },
  {
    name: "a route to a range's own subnet",
    code: 7,
    pattern: /^ipam.routes\[0\].dst: .* is a range's own subnet/,
    call: ({ conf, subnet }) => ({ conf: withRoutes(conf, [{ dst: subnet }]) }),
  },
  {
    name: "a route via a gateway outside every subnet",
    code: 7,
    pattern: /^ipam.routes\[0\].gw: 192\.0\.2\.1 is outside every range's subnet/,
    call: ({ conf }) => ({ conf: withRoutes(conf, [{ dst: "10.99.0.0/16", gw: "192.0.2.1" }]) }),
  },
  {
    name: "bridge name longer than 15 bytes",
    code: 7,
    pattern: /^bridge: .* 16 bytes/,
    call: ({ conf }) => ({ conf: { ...conf, bridge: "pontoonbridge16b" } }),
  },
  {
    name: "requested IP outside every range",
    code: 7,
    pattern: /requested address 10\.1\.1\.1 is outside every range/,
    call: () => ({ args: "IgnoreUnknown=1;IP=10.1.1.1" }),
  },
  ...([
    ["CNI_ARGS IP", (gw: string) => ({ args: `IgnoreUnknown=1;IP=${gw}` })],
    [
      "args.cni.ips",
      (gw: string, conf: Record<string, unknown>) => ({ conf: { ...conf, args: { cni: { ips: [gw] } } } }),
    ],
    [
      "runtimeConfig.ips",
      (gw: string, conf: Record<string, unknown>) => ({ conf: { ...conf, runtimeConfig: { ips: [gw] } } }),
    ],
  ] as const).map(([source, request]): BadCase => ({
    name: `the range's gateway requested through ${source}`,
    code: 7,
    pattern: /requested address \S+ is the gateway of range \S+\/24, which no pod can hold/,
    call: ({ conf, subnet }) => request(subnet.replace(/0\/24$/, "1"), conf),
  })),
  {
    name: "hairpinMode together with promiscMode",
    code: 7,
    pattern: /hairpinMode: cannot be set together with promiscMode/,
    call: ({ conf }) => ({ conf: { ...conf, hairpinMode: true, promiscMode: true } }),
  },
  {
    name: "a boolean field of the wrong type",
    code: 7,
    pattern: /^ipMasq: must be true or false/,
    call: ({ conf }) => ({ conf: { ...conf, ipMasq: "yes" } }),
  },
  {
    name: "an IPv4-mapped IPv6 subnet",
    code: 7,
    pattern: /ipam.ranges\[0\]\[0\].subnet: ::ffff:10\.9\.9\.0\/120 .*IPv4-mapped/,
    call: ({ conf }) => ({ conf: withRanges(conf, [[{ subnet: "::ffff:10.9.9.0/120" }]]) }),
  },
  {
    name: "a multicast subnet",
    code: 7,
    pattern: /ipam.ranges\[0\]\[0\].subnet: 224\.0\.0\.0\/24 holds multicast addresses/,
    call: ({ conf }) => ({ conf: withRanges(conf, [[{ subnet: "224.0.0.0/24" }]]) }),
  },
  {
    name: "the all-zero MAC in CNI_ARGS",
    code: 4,
    pattern: /CNI_ARGS: MAC "00:00:00:00:00:00" is not a unicast MAC address/,
    call: () => ({ args: "MAC=00:00:00:00:00:00" }),
  },
  {
    name: "a huge value of the wrong type is named, not echoed",
    code: 7,
    pattern: /^mtu: "x{1,100}… is outside 68\.\.65535$/,
    call: ({ conf }) => ({ conf: { ...conf, mtu: "x".repeat(1 << 20) } }),
  },
  {
    name: "dataDir with ..",
    code: 7,
    pattern: /ipam.dataDir: .* must be an absolute path without "\.\."/,
    call: ({ conf }) => ({ conf: { ...conf, ipam: { ...(conf.ipam as object), dataDir: "/tmp/../etc" } } }),
  },
];

function withRanges(conf: Record<string, unknown>, ranges: unknown[]): Record<string, unknown> {
  return { ...conf, ipam: { ...(conf.ipam as object), ranges } };
}

function withRoutes(conf: Record<string, unknown>, routes: unknown[]): Record<string, unknown> {
  return { ...conf, ipam: { ...(conf.ipam as object), routes } };
}

Deno.test("bad input is rejected with the spec's code, a message naming the field, and no change to the node", async (t) => {
  const net = testNet();
  const [existing, probe] = [uniq("tbx"), uniq("tby")];
  const scratch = Deno.makeTempDirSync({ prefix: "pontoon-bad-" });
  const fifo = `${scratch}/fifo`;
  const loop = `${scratch}/loop`;
  try {
    await must("mkfifo", [fifo]);
    Deno.symlinkSync(loop, loop);
    const [pe, pp] = await addNetns(existing, probe);
    const conf = net.conf("1.1.0", { ipMasq: true });
    const subnet = (conf.ipam as { ranges: { subnet: string }[][] }).ranges[0][0].subnet;
    // One live pod, so the store, bridge and masquerade table exist.
    const live = await cni({ command: "ADD", conf, containerId: existing, netns: pe });
    assertOk(live);
    const before = await snapshot(net, [probe]);
    assert.ok(before.nftRules.some((r) => r.includes("masquerade")), "the snapshot sees no masquerade rule");
    assert.ok(before.pods.some((p) => p.endsWith(" lo")), "the snapshot sees no pod link");
    for (const bad of CASES) {
      await t.step(bad.name, async () => {
        const call: CniCall = {
          command: "ADD",
          conf,
          containerId: probe,
          netns: pp,
          ...bad.call({ conf, netns: pp, id: probe, subnet, fifo, loop }),
        };
        assertCniError(await cni(call), bad.code, bad.pattern);
        assert.deepEqual(await snapshot(net, [probe]), before, `${bad.name} changed the node`);
      });
    }
    await t.step("requested IP already taken by another container", async () => {
      const taken = live.json.ips[0].address.split("/")[0];
      const out = await cni({ command: "ADD", conf, containerId: probe, netns: pp, args: `IP=${taken}` });
      assertCniError(out, 101, new RegExp(`${taken.replace(/\./g, "\\.")} .* held by container ${existing}`));
      assert.deepEqual(await snapshot(net, [probe]), before);
    });
    assertOk(await cni({ command: "DEL", conf, containerId: existing, netns: pe }));
  } finally {
    await delNetns(existing, probe);
    await net.cleanup();
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
});
