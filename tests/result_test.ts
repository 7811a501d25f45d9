/** Unit tests: result conversion between 0.3.x/0.4.0 and 1.x shapes. */
import assert from "node:assert/strict";
import { CniError } from "../lib/errors.ts";
import { appendResult, fromAnyVersion, type Result, toVersion } from "../lib/result.ts";

const RESULT: Result = {
  cniVersion: "1.1.0",
  interfaces: [
    { name: "br0", mac: "02:00:00:00:00:01", mtu: 1500 },
    { name: "pn0", mac: "02:00:00:00:00:02", mtu: 1500 },
    { name: "eth0", mac: "02:00:00:00:00:03", mtu: 1500, sandbox: "/run/netns/p" },
  ],
  ips: [
    { address: "10.1.0.5/24", gateway: "10.1.0.1", interface: 2 },
    { address: "fd00:1::5/64", gateway: "fd00:1::1", interface: 2 },
  ],
  routes: [{ dst: "0.0.0.0/0", gw: "10.1.0.1", mtu: 1400 }, { dst: "::/0" }],
  dns: {},
};

Deno.test("0.3.x and 0.4.0 results carry ips[].version and no 1.1-only fields", () => {
  for (const v of ["0.3.0", "0.3.1", "0.4.0"]) {
    const out = toVersion(RESULT, v) as { cniVersion: string; ips: { version: string }[]; interfaces: object[] };
    assert.equal(out.cniVersion, v);
    assert.deepEqual(out.ips.map((i) => i.version), ["4", "6"]);
    assert.ok(!("mtu" in out.interfaces[0]));
    assert.ok(!("dns" in out), "empty dns is omitted");
  }
});

Deno.test("1.0.0 drops version and 1.1-only fields; 1.1.0 keeps interface and route mtu", () => {
  const v100 = toVersion(RESULT, "1.0.0") as { ips: object[]; interfaces: object[]; routes: object[] };
  assert.ok(v100.ips.every((i) => !("version" in i)));
  assert.ok(!("mtu" in v100.interfaces[0]));
  assert.ok(!("mtu" in v100.routes[0]));
  const v110 = toVersion(RESULT, "1.1.0") as { interfaces: { mtu: number }[]; routes: { mtu?: number }[] };
  assert.equal(v110.interfaces[0].mtu, 1500);
  assert.equal(v110.routes[0].mtu, 1400);
});

Deno.test("a 0.4.0 prevResult reads back into the internal shape; garbage is a decoding error", () => {
  const legacy = toVersion(RESULT, "0.4.0");
  const back = fromAnyVersion(legacy, "prevResult");
  assert.deepEqual(back.ips, [
    { address: "10.1.0.5/24", gateway: "10.1.0.1", interface: 2 },
    { address: "fd00:1::5/64", gateway: "fd00:1::1", interface: 2 },
  ]);
  assert.equal(back.interfaces?.[2].sandbox, "/run/netns/p");
  for (const bad of [[], { ips: [{ address: "10.1.0.5" }] }, { routes: [{ dst: "x" }] }, { ips: "no" }]) {
    assert.throws(() => fromAnyVersion(bad, "prevResult"), (e) => e instanceof CniError && e.code === 6);
  }
  assert.throws(() => fromAnyVersion({ cniVersion: "0.2.0" }, "prevResult"), (e) => (e as CniError).code === 1);
});

Deno.test("a chained prevResult passes through ADD: its entries first, our interface indexes shifted", () => {
  const prev: Result = {
    cniVersion: "1.1.0",
    interfaces: [{ name: "lo", sandbox: "/run/netns/p" }],
    ips: [{ address: "127.0.0.1/8", interface: 0 }],
    routes: [{ dst: "10.0.0.0/8" }],
    dns: { nameservers: ["10.96.0.10"] },
  };
  const merged = appendResult(prev, RESULT);
  assert.deepEqual(merged.interfaces?.map((i) => i.name), ["lo", "br0", "pn0", "eth0"]);
  assert.deepEqual(merged.ips?.map((i) => i.interface), [0, 3, 3]);
  assert.deepEqual(merged.routes?.map((r) => r.dst), ["10.0.0.0/8", "0.0.0.0/0", "::/0"]);
  assert.deepEqual(merged.dns, { nameservers: ["10.96.0.10"] });
  assert.equal(appendResult({ cniVersion: "1.1.0" }, RESULT).dns, undefined);
});
