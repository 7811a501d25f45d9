/**
 * A hostile or buggy runtime: valid but extreme configs, an environment
 * without the sbin directories, and the same attachment ADDed twice at
 * once. Each case either works or fails cleanly, and never undoes what
 * another invocation made.
 */
import assert from "node:assert/strict";
import {
  addNetns,
  assertCniError,
  assertOk,
  cni,
  delNetns,
  delNftTables,
  removeMarkers,
  sh,
  snapshot,
  testNet,
  uniq,
} from "./harness.ts";

Deno.test("ipMasq works for a network name of the longest accepted length (200)", async () => {
  const net = testNet();
  const name = net.name.padEnd(200, "x");
  const a = uniq("thl");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0", { name, ipMasq: true });
    const add = await cni({ command: "ADD", conf, containerId: a, netns: pa });
    assertOk(add, "ADD with a 200-character network name");
    const table = await sh("nft", ["list", "table", "inet", `pontoon-${name}`]);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /masquerade/);
    assertOk(await cni({ command: "CHECK", conf: { ...conf, prevResult: add.json }, containerId: a, netns: pa }));
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
  } finally {
    await delNetns(a);
    await delNftTables(`pontoon-${name}`);
    removeMarkers(net.bridge, name);
    await net.cleanup();
  }
});

Deno.test("ADD and masquerade work when the runtime's PATH lacks the sbin directories", async () => {
  const net = testNet();
  const a = uniq("thp");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0", { ipMasq: true });
    const env = { PATH: "/usr/bin:/bin" };
    assertOk(await cni({ command: "ADD", conf, containerId: a, netns: pa, env }), "ADD with PATH=/usr/bin:/bin");
    assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa, env }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("two ADDs of one attachment at once: one wins, the loser leaves the winner's veth and addresses alone", async () => {
  const net = testNet();
  const a = uniq("thr");
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0");
    const empty = await snapshot(net, [a]);
    for (let round = 0; round < 4; round++) {
      const outs = await Promise.all([1, 2].map(() => cni({ command: "ADD", conf, containerId: a, netns: pa })));
      const won = outs.filter((o) => o.code === 0);
      assert.equal(won.length, 1, `round ${round}: ${outs.map((o) => o.stdout).join(" / ")}`);
      assertCniError(outs.find((o) => o.code !== 0)!, 103, /already/);
      // The winner's pod is intact: veth, addresses, reservation.
      const check = await cni({
        command: "CHECK",
        conf: { ...conf, prevResult: won[0].json },
        containerId: a,
        netns: pa,
      });
      assertOk(check, `round ${round}: CHECK of the winner`);
      assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa }));
      const after = await snapshot(net, [a]);
      assert.deepEqual(after.pods, empty.pods, `round ${round}: the pod keeps an interface`);
      const held = after.ipamFiles.filter((f) => !f.endsWith("/") && !f.includes("last_reserved_ip."));
      assert.deepEqual(held, [], `round ${round}: reservations left after DEL`);
    }
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});

Deno.test("interface names that are ip keywords (up, help, dev) work as CNI_IFNAME", async () => {
  const net = testNet();
  const a = uniq("thk");
  const names = ["up", "help", "dev"];
  try {
    const [pa] = await addNetns(a);
    const conf = net.conf("1.1.0", { isDefaultGateway: false });
    for (const ifname of names) {
      const add = await cni({ command: "ADD", conf, containerId: a, netns: pa, ifname });
      assertOk(add, `ADD with CNI_IFNAME=${ifname}`);
      assertOk(
        await cni({ command: "CHECK", conf: { ...conf, prevResult: add.json }, containerId: a, netns: pa, ifname }),
      );
    }
    for (const ifname of names) assertOk(await cni({ command: "DEL", conf, containerId: a, netns: pa, ifname }));
  } finally {
    await delNetns(a);
    await net.cleanup();
  }
});
