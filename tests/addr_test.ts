/**
 * `addr.ts` parses through `ipaddr.js` and formats addresses itself. The oracle for the
 * canonical IPv6 form is the runtime's WHATWG URL parser, which serializes
 * IPv6 hosts as RFC 5952 does (first longest run of zero groups becomes
 * `::`, as in Go's net.IP and inet_ntop).
 */
import assert from "node:assert/strict";
import { formatIp, parseCidr, parseIp } from "../lib/addr.ts";

function randomV6(): bigint {
  // Mix zero runs of random length into random groups, so `::` lands
  // everywhere (start, middle, end, ties, single zero groups).
  let value = 0n;
  for (let i = 0; i < 8; i++) {
    const r = Math.random();
    const group = r < 0.45 ? 0 : r < 0.6 ? 1 : Math.floor(Math.random() * 0x10000);
    value = (value << 16n) | BigInt(group);
  }
  return value;
}

function bytesOf(value: bigint, count: number): number[] {
  const bytes = new Array(count);
  for (let i = count - 1; i >= 0; i--) {
    bytes[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  return bytes;
}

function groupsOf(value: bigint): number[] {
  const bytes = bytesOf(value, 16);
  return Array.from({ length: 8 }, (_, i) => bytes[2 * i] * 256 + bytes[2 * i + 1]);
}

Deno.test("IPv6 formatting matches the URL parser's RFC 5952 output and parses back, in every notation", () => {
  for (let n = 0; n < 5000; n++) {
    const value = randomV6();
    const groups = groupsOf(value);
    const full = groups.map((g) => g.toString(16).padStart(4, "0")).join(":");
    const text = formatIp({ family: 6, value });
    assert.equal(`[${text}]`, new URL(`http://[${full}]/`).hostname, `formatting ${full}`);
    for (const form of [text, full, groups.map((g) => g.toString(16)).join(":"), text.toUpperCase()]) {
      assert.deepEqual(parseIp(form), { family: 6, value }, `parsing ${form}`);
    }
  }
});

Deno.test("IPv4 formatting and parsing round-trip", () => {
  for (let n = 0; n < 2000; n++) {
    const value = BigInt(Math.floor(Math.random() * 2 ** 32));
    const text = formatIp({ family: 4, value });
    assert.equal(text, bytesOf(value, 4).join("."));
    assert.deepEqual(parseIp(text), { family: 4, value });
  }
  for (const text of ["0.0.0.0", "255.255.255.255", "10.0.0.1"]) {
    assert.equal(formatIp(parseIp(text)!), text);
  }
});

Deno.test("embedded IPv4 in IPv6 and edge forms", () => {
  assert.equal(formatIp(parseIp("::ffff:10.1.2.3")!), "::ffff:a01:203");
  assert.equal(formatIp(parseIp("64:ff9b::192.0.2.33")!), "64:ff9b::c000:221");
  assert.equal(formatIp(parseIp("::")!), "::");
  assert.equal(formatIp(parseIp("::1")!), "::1");
  assert.equal(formatIp(parseIp("1::")!), "1::");
  assert.equal(formatIp(parseIp("1:0:0:2:0:0:0:3")!), "1:0:0:2::3");
  assert.equal(formatIp(parseIp("1:0:2:0:3:0:4:0")!), "1:0:2:0:3:0:4:0");
  assert.equal(formatIp(parseIp("0:0:1:98:0:0:1:0")!), "::1:98:0:0:1:0", "ties go to the first run");
  assert.deepEqual(parseCidr("fd00::/64"), { family: 6, value: 0xfd00n << 112n, prefix: 64 });
  assert.deepEqual(parseCidr("10.1.0.0/16"), { family: 4, value: 0x0a010000n, prefix: 16 });
});

Deno.test("malformed addresses are rejected", () => {
  const bad = [
    "",
    "10.0.0",
    "10.0.0.1.2",
    "10.0.0.256",
    "010.0.0.1",
    "10.0.0.-1",
    "0x0a.0.0.1",
    " 10.0.0.1",
    "10.0.0.1 ",
    "1",
    ":::",
    "1:::2",
    "1::2::3",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9",
    "1::2:3:4:5:6:7:8",
    "12345::",
    "g::1",
    "fe80::1%eth0",
    ":1::",
    "1::2:",
    "::ffff:1.2.3",
    "::1.2.3.4:5",
    "1.2.3.4::",
  ];
  for (const text of bad) assert.equal(parseIp(text), null, JSON.stringify(text));
  for (const text of ["10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/024x", "10.0.0.0"]) {
    assert.equal(parseCidr(text), null, text);
  }
});
