/** Unit tests: the on-disk IPAM store, on a temp dir. */
import assert from "node:assert/strict";
import { type BuiltinIpam, loadNetConf } from "../lib/config.ts";
import { formatIp } from "../lib/addr.ts";
import { CniError } from "../lib/errors.ts";
import { collectStale } from "../lib/allocations.ts";
import { addressesOf, collectGarbage, IpamStore, poolUsage, releaseAddresses, reserveAddresses } from "../lib/ipam.ts";

function setup(ranges: unknown[]) {
  const dataDir = Deno.makeTempDirSync({ prefix: "pontoon-ipam-unit-" });
  const conf = loadNetConf({ cniVersion: "1.1.0", name: "unit", ipam: { type: "pontoon-ipam", ranges, dataDir } });
  return { dataDir, sets: (conf.ipam as BuiltinIpam).rangeSets, store: new IpamStore(dataDir, "unit") };
}

function reserve(s: ReturnType<typeof setup>, id: string, requested: string[] = [], ifname = "eth0"): string[] {
  return reserveAddresses(s.store, s.sets, { attachment: { containerId: id, ifname }, requested, network: "unit" })
    .map((a) => formatIp(a.ip));
}

Deno.test("one address per range set, host-local's file format, and an index by attachment", () => {
  const s = setup([[{ subnet: "10.5.0.0/29" }], [{ subnet: "fd05::/120" }]]);
  try {
    assert.deepEqual(reserve(s, "c1"), ["10.5.0.2", "fd05::2"]);
    assert.equal(Deno.readTextFileSync(`${s.dataDir}/unit/10.5.0.2`), "c1\r\neth0");
    assert.deepEqual(JSON.parse(Deno.readTextFileSync(`${s.dataDir}/unit/attachments/c1:eth0`)).ips, [
      "10.5.0.2",
      "fd05::2",
    ]);
    assert.deepEqual(reserve(s, "c1"), ["10.5.0.2", "fd05::2"], "same attachment gets the same addresses");
    assert.deepEqual(reserve(s, "c1", [], "eth1"), ["10.5.0.3", "fd05::3"], "ifname is part of the key");
    assert.deepEqual(addressesOf(s.store, { containerId: "c1", ifname: "eth0" }), ["10.5.0.2", "fd05::2"]);
    assert.deepEqual(releaseAddresses(s.store, { containerId: "c1", ifname: "eth0" }), ["10.5.0.2", "fd05::2"]);
    assert.deepEqual(releaseAddresses(s.store, { containerId: "c1", ifname: "eth0" }), [], "release is idempotent");
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});

Deno.test("round-robin after the last reserved address, skipping the gateway, then a clear exhaustion error", () => {
  const s = setup([[{ subnet: "10.6.0.0/29" }]]); // .1 gateway, .2-.6 allocatable
  try {
    assert.deepEqual(reserve(s, "a"), ["10.6.0.2"]);
    assert.deepEqual(reserve(s, "b"), ["10.6.0.3"]);
    releaseAddresses(s.store, { containerId: "a", ifname: "eth0" });
    assert.deepEqual(reserve(s, "c"), ["10.6.0.4"], "does not reuse .2 right away");
    assert.deepEqual(reserve(s, "d"), ["10.6.0.5"]);
    assert.deepEqual(reserve(s, "e"), ["10.6.0.6"]);
    assert.deepEqual(reserve(s, "f"), ["10.6.0.2"], "wraps around");
    assert.throws(() => reserve(s, "g"), (e) => {
      assert.equal((e as CniError).code, 100);
      assert.match((e as CniError).details, /network unit: no free address in range set 0 \(10\.6\.0\.1-10\.6\.0\.6\)/);
      return true;
    });
    assert.deepEqual(poolUsage(s.store, s.sets), [{ set: 0, used: 5, total: 5n }]);
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});

Deno.test("several ranges in one set are walked in order", () => {
  // Each /30 has one allocatable address besides its gateway.
  const s = setup([[{ subnet: "10.7.0.0/30" }, { subnet: "10.7.1.0/30" }]]);
  try {
    assert.deepEqual(reserve(s, "a"), ["10.7.0.2"]);
    assert.deepEqual(reserve(s, "b"), ["10.7.1.2"]);
    assert.throws(() => reserve(s, "c"), (e) => (e as CniError).code === 100);
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});

Deno.test("requested addresses: honoured, refused when held by someone else or outside every range", () => {
  const s = setup([[{ subnet: "10.8.0.0/24" }]]);
  try {
    assert.deepEqual(reserve(s, "a", ["10.8.0.77"]), ["10.8.0.77"]);
    assert.throws(() => reserve(s, "b", ["10.8.0.77"]), (e) => (e as CniError).code === 101);
    assert.throws(() => reserve(s, "b", ["10.9.0.1"]), (e) => (e as CniError).code === 7);
    assert.throws(
      () => reserve(s, "b", ["10.8.0.1"]),
      (e) => (e as CniError).code === 7,
      "the gateway cannot be requested",
    );
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});

Deno.test("GC keeps listed attachments, honours legacy container-only records, removes stale temporaries", () => {
  const s = setup([[{ subnet: "10.9.0.0/24" }]]);
  try {
    reserve(s, "keep");
    reserve(s, "drop");
    Deno.writeTextFileSync(`${s.dataDir}/unit/10.9.0.200`, "legacy-keep"); // host-local before ifname was stored
    Deno.writeTextFileSync(`${s.dataDir}/unit/10.9.0.201`, "legacy-drop\r\neth0");
    Deno.writeTextFileSync(`${s.dataDir}/unit/.tmp-1-abc`, "torn");
    const released = collectGarbage(s.store, [
      { containerId: "keep", ifname: "eth0" },
      { containerId: "legacy-keep", ifname: "eth0" },
    ]);
    assert.deepEqual(released.map((a) => a.containerId).sort(), ["drop", "legacy-drop"]);
    const left = [...Deno.readDirSync(`${s.dataDir}/unit`)].map((e) => e.name).filter((n) => n.startsWith("10."));
    assert.deepEqual(left.sort(), ["10.9.0.2", "10.9.0.200"]);
    assert.ok(![...Deno.readDirSync(`${s.dataDir}/unit`)].some((e) => e.name.startsWith(".tmp-")));
    collectGarbage(s.store, []);
    assert.deepEqual([...Deno.readDirSync(`${s.dataDir}/unit`)].filter((e) => e.name.startsWith("10.")), []);
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});

Deno.test("a crash between writing the index and the address files leaves nothing DEL cannot clean", () => {
  const s = setup([[{ subnet: "10.11.0.0/24" }]]);
  try {
    // Index written, address files never written (process killed in between).
    s.store.ensure();
    s.store.writeIndex({ containerId: "k", ifname: "eth0", ips: ["10.11.0.9"] });
    reserve(s, "other", ["10.11.0.9"]);
    assert.deepEqual(
      releaseAddresses(s.store, { containerId: "k", ifname: "eth0" }),
      [],
      "must not free another's address",
    );
    assert.equal(Deno.readTextFileSync(`${s.dataDir}/unit/10.11.0.9`), "other\r\neth0");
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});

Deno.test("a corrupt or tampered index is ignored: DEL neither fails nor removes a file outside the store", () => {
  const s = setup([[{ subnet: "10.9.0.0/29" }]]);
  const att = { containerId: "c1", ifname: "eth0" };
  const index = `${s.dataDir}/unit/attachments/c1:eth0`;
  try {
    reserve(s, "c1");
    Deno.writeTextFileSync(index, '{"ips": 5}');
    assert.deepEqual(releaseAddresses(s.store, att), []);
    // A file outside the store that names the attachment as its owner.
    Deno.writeTextFileSync(`${s.dataDir}/victim`, "c1\r\neth0");
    Deno.writeTextFileSync(index, '{"ips": ["../victim"]}');
    assert.deepEqual(releaseAddresses(s.store, att), []);
    assert.equal(
      Deno.readTextFileSync(`${s.dataDir}/victim`),
      "c1\r\neth0",
      "a path from the index reached the filesystem",
    );
    assert.deepEqual(collectGarbage(s.store, []).map((a) => a.containerId), ["c1"], "GC still frees the address");
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});

Deno.test("many processes reserving at once never hand out one address twice", async () => {
  const s = setup([[{ subnet: "10.12.0.0/22" }]]);
  const workers = 8;
  const perWorker = 60;
  try {
    const worker = new URL("./fixtures/ipam_worker.ts", import.meta.url).pathname;
    const outs = await Promise.all(
      Array.from({ length: workers }, (_, w) =>
        new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", worker, s.dataDir, "unit", "10.12.0.0/22", String(w), String(perWorker)],
          stdout: "piped",
          stderr: "piped",
        }).output()),
    );
    const held: string[] = [];
    for (const o of outs) {
      assert.ok(o.success, new TextDecoder().decode(o.stderr));
      held.push(...JSON.parse(new TextDecoder().decode(o.stdout)));
    }
    assert.equal(new Set(held).size, held.length, "an address was handed out twice");
    const files = [...Deno.readDirSync(`${s.dataDir}/unit`)].filter((e) => e.name.startsWith("10.12.")).map((e) =>
      e.name
    );
    assert.deepEqual(files.sort(), [...held].sort(), "files on disk match the live reservations");
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});

Deno.test("agent GC never takes an ADD in progress: a reservation seen half-written is judged again under the lock", async () => {
  const s = setup([[{ subnet: "10.5.0.0/29" }]]);
  const att = { containerId: "mid-add", ifname: "eth0" };
  const view = { network: "unit", dataDir: s.dataDir, rangeSets: s.sets };
  const indexPath = `${s.dataDir}/unit/attachments/mid-add:eth0`;
  const staged = `${s.dataDir}/index.staged`;
  try {
    Deno.mkdirSync(`${s.dataDir}/unit/attachments`, { recursive: true });
    // What an ADD writes under the store's lock: the address file, then the index naming the pod's (live) netns.
    s.store.writeIndex({ ...att, ips: ["10.5.0.2"], netns: "/proc/self/ns/net" });
    Deno.renameSync(indexPath, staged);
    s.store.writeAddress("10.5.0.2", att);
    // The "ADD" holds the lock and writes the index a moment later.
    const add = new Deno.Command("flock", {
      args: ["-x", `${s.dataDir}/unit/lock`, "-c", `sleep 1.5; mv '${staged}' '${indexPath}'`],
    }).spawn();
    const held = async () =>
      (await new Deno.Command("flock", { args: ["-n", `${s.dataDir}/unit/lock`, "true"] }).output()).code !== 0;
    for (let i = 0; i < 50 && !(await held()); i++) await new Promise((r) => setTimeout(r, 20));
    const outcome = collectStale(view, true, 0);
    await add.status;
    assert.deepEqual(outcome.released, []);
    assert.deepEqual(s.store.ownerOf("10.5.0.2"), att);
    assert.ok(s.store.readIndex(att));
  } finally {
    Deno.removeSync(s.dataDir, { recursive: true });
  }
});
