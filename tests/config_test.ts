/** Unit tests: network config defaults and validation. */
import assert from "node:assert/strict";
import { type BuiltinIpam, decodeConfig, loadNetConf } from "../lib/config.ts";
import { CniError } from "../lib/errors.ts";
import { formatIp } from "../lib/addr.ts";

const BASE = {
  cniVersion: "1.1.0",
  name: "net1",
  type: "pontoon",
  ipam: { type: "pontoon-ipam", ranges: [[{ subnet: "10.10.0.0/24" }], [{ subnet: "fd10::/64" }]] },
};

function rejects(raw: Record<string, unknown>, code: number, pattern: RegExp): void {
  assert.throws(() => loadNetConf(raw), (e) => {
    assert.ok(e instanceof CniError, String(e));
    assert.equal(e.code, code, e.message);
    assert.match(e.details, pattern);
    return true;
  });
}

Deno.test("defaults: bridge, gateway, hairpin on, DAD off, dataDir, range bounds", () => {
  const conf = loadNetConf(BASE);
  assert.equal(conf.bridge, "pontoon0");
  assert.equal(conf.isGateway, true);
  assert.equal(conf.isDefaultGateway, false);
  assert.equal(conf.hairpinMode, true);
  assert.equal(conf.promiscMode, false);
  assert.equal(conf.enableDad, false);
  assert.equal(conf.ipMasq, false);
  assert.equal(conf.mtu, undefined);
  const ipam = conf.ipam as BuiltinIpam;
  assert.equal(ipam.dataDir, "/var/lib/cni/networks");
  const [v4] = ipam.rangeSets[0];
  assert.equal(formatIp(v4.start), "10.10.0.1");
  assert.equal(formatIp(v4.end), "10.10.0.254");
  assert.equal(formatIp(v4.gateway), "10.10.0.1");
  const [v6] = ipam.rangeSets[1];
  assert.equal(formatIp(v6.end), "fd10::ffff:ffff:ffff:ffff");
});

Deno.test("host-local's flat subnet form, and promiscMode turning hairpin off by default", () => {
  const conf = loadNetConf({
    ...BASE,
    promiscMode: true,
    ipam: { type: "pontoon-ipam", subnet: "10.3.0.0/16", rangeStart: "10.3.1.10", rangeEnd: "10.3.1.20" },
  });
  assert.equal(conf.hairpinMode, false);
  const [r] = (conf.ipam as BuiltinIpam).rangeSets[0];
  assert.equal(formatIp(r.start), "10.3.1.10");
  assert.equal(formatIp(r.end), "10.3.1.20");
});

Deno.test("isDefaultGateway implies isGateway; enabledad is accepted as the reference spells it", () => {
  const conf = loadNetConf({ ...BASE, isGateway: false, isDefaultGateway: true, enabledad: true });
  assert.equal(conf.isGateway, true);
  assert.equal(conf.enableDad, true);
});

Deno.test("invalid fields are named in code 7 errors", () => {
  rejects({ ...BASE, name: "" }, 7, /^name: is required/);
  rejects({ ...BASE, name: "a/b" }, 7, /^name: /);
  rejects({ ...BASE, mtu: 67 }, 7, /^mtu:/);
  rejects({ ...BASE, vlan: 4095 }, 7, /^vlan:/);
  rejects({ ...BASE, ipam: undefined }, 7, /^ipam: is required/);
  rejects({ ...BASE, ipam: { type: "../evil" } }, 7, /^ipam.type:/);
  rejects({ ...BASE, ipam: { type: "pontoon-ipam" } }, 7, /^ipam: needs ranges or a subnet/);
  rejects(
    { ...BASE, ipam: { type: "pontoon-ipam", subnet: "10.1.2.3/24" } },
    7,
    /host bits set; did you mean 10\.1\.2\.0\/24/,
  );
  rejects({ ...BASE, ipam: { type: "pontoon-ipam", subnet: "fd00::/127" } }, 7, /too small/);
  rejects(
    { ...BASE, ipam: { type: "pontoon-ipam", subnet: "10.1.0.0/24", rangeStart: "10.1.0.9", rangeEnd: "10.1.0.3" } },
    7,
    /after rangeEnd/,
  );
  rejects(
    { ...BASE, ipam: { type: "pontoon-ipam", ranges: [[{ subnet: "10.1.0.0/24" }, { subnet: "fd00::/64" }]] } },
    7,
    /mixes IPv4 and IPv6/,
  );
  rejects(
    { ...BASE, ipam: { type: "pontoon-ipam", subnet: "10.1.0.0/24", routes: [{ dst: "0.0.0.0/0", gw: "fd00::1" }] } },
    7,
    /routes\[0\].gw/,
  );
  rejects({ ...BASE, runtimeConfig: { mac: "01:00:00:00:00:01" } }, 7, /runtimeConfig.mac: .* not a unicast/);
  rejects({ ...BASE, logLevel: "loud" }, 7, /^logLevel:/);
  rejects({ ...BASE, "cni.dev/valid-attachments": [{ containerID: 1 }] }, 7, /valid-attachments\[0\]/);
  rejects({ ...BASE, dns: "8.8.8.8" }, 7, /^dns must be an object/);
  rejects({ ...BASE, dns: { nameservers: "8.8.8.8" } }, 7, /^dns.nameservers must be a list of strings/);
  rejects({ ...BASE, dns: { domain: 5 } }, 7, /^dns.domain must be a string/);
});

Deno.test("dns is checked and kept; prevResult is read for ADD and CHECK but may be skipped (DEL)", () => {
  const dns = { nameservers: ["10.96.0.10"], search: ["svc.cluster.local"], domain: "cluster.local" };
  assert.deepEqual(loadNetConf({ ...BASE, dns }).dns, dns);
  const mangled = { ...BASE, prevResult: { cniVersion: "1.1.0", ips: [{ address: "not-an-address" }] } };
  assert.throws(() => loadNetConf(mangled), (e) => (e as CniError).code === 6);
  assert.equal(loadNetConf(mangled, { ignorePrevResult: true }).prevResult, undefined);
});

Deno.test("stdin decoding: malformed JSON and non-objects are code 6", () => {
  for (const text of ["{", "[]", "42", "\xff"]) {
    assert.throws(() => decodeConfig(new TextEncoder().encode(text)), (e) => (e as CniError).code === 6);
  }
});
